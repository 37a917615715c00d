#!/usr/bin/env bash
# The body of every jobs/slurm/*.sbatch script (they `exec` it, so Slurm's
# warning signal reaches this shell): resume when OUT holds checkpoints,
# run mpirun in the background and forward USR1/TERM to it (mpirun passes
# them on to every rank, which checkpoints at the next step and exits 3),
# and on exit code 3 requeue the job so it continues from that checkpoint.
#
# usage: jobs/slurm/train-job.sh CONFIG OUT [--set KEY=VALUE ...]
# Environment: DIFFMPI (binary, default build/diffmpi), LAUNCH (default
# "mpirun"; "srun --mpi=pmix" also works inside an allocation).
#
# The layout comes from the allocation: one rank per task (--ntasks, or
# --nodes with --ntasks-per-node), and --cpus-per-task threads per rank
# (`threads`, unless the command line sets it), each rank bound to its own
# cores and its threads spread over them. diffmpi prints the layout and
# refuses one with more workers than micro-batches, naming the limit.
set -uo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: jobs/slurm/train-job.sh CONFIG OUT [--set KEY=VALUE ...]" >&2
    exit 2
fi
config=$1 out=$2
shift 2
bin=${DIFFMPI:-build/diffmpi}
if [[ ! -x "$bin" ]]; then
    echo "train-job: $bin not found; build first (tools/setup.sh) and submit from the repository root" >&2
    exit 2
fi
# jobs/launch.sh: beside this script, or (when sbatch ran a copy of it from
# its spool directory) under the directory the job was submitted from.
launch_lib=$(dirname "${BASH_SOURCE[0]}")/../launch.sh
[[ -f $launch_lib ]] || launch_lib=${SLURM_SUBMIT_DIR:-.}/jobs/launch.sh
if [[ ! -f $launch_lib ]]; then
    echo "train-job: jobs/launch.sh not found; submit from the repository root" >&2
    exit 2
fi
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
if [[ $(id -u) -eq 0 ]]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

resume=()
compgen -G "$out/checkpoints/ckpt-*.h5" >/dev/null && resume=(--resume auto)

# Threads per rank: the allocation's cpus per task, unless --set threads=N.
launch=${LAUNCH:-mpirun}
layout=()
cpus=${SLURM_CPUS_PER_TASK:-1}
set_threads=0
for a in "$@"; do [[ $a == threads=* ]] && set_threads=1; done
if ((!set_threads && cpus > 1)); then
    layout=(--set "threads=$cpus")
fi
if ((cpus > 1)); then
    # Each rank on cpus cores of its own, its OpenMP threads one per core.
    export OMP_PLACES=cores OMP_PROC_BIND=close
    export SRUN_CPUS_PER_TASK=$cpus # srun (Slurm >= 22.05) no longer takes it from sbatch
    if [[ $launch == mpirun* ]]; then
        launch="$launch --map-by slot:PE=$cpus --bind-to core"
    else
        launch="$launch --cpu-bind=cores"
    fi
fi
echo "diffmpi job ${SLURM_JOB_ID:-local} restart ${SLURM_RESTART_COUNT:-0}, launch $launch: $config -> $out ${resume[*]} ${layout[*]} $*"
echo "allocation: ${SLURM_NTASKS:-?} task(s) on ${SLURM_JOB_NUM_NODES:-?} node(s), $cpus cpu(s) per task"

# A TERM or USR1 to this shell (Slurm's warning) reaches the ranks as
# USR1: they checkpoint and exit 3 (jobs/launch.sh).
# shellcheck source=jobs/launch.sh
source "$launch_lib"
# shellcheck disable=SC2086
dm_launch $launch "$bin" train --config "$config" --out "$out" "${resume[@]}" "${layout[@]}" "$@"
rc=$DM_RC
if [[ $rc -eq 3 && -n "${SLURM_JOB_ID:-}" ]]; then
    echo "diffmpi: checkpointed on a signal; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
