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
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
if [[ $(id -u) -eq 0 ]]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

resume=()
compgen -G "$out/checkpoints/ckpt-*.h5" >/dev/null && resume=(--resume auto)
echo "diffmpi job ${SLURM_JOB_ID:-local} restart ${SLURM_RESTART_COUNT:-0}, launch ${LAUNCH:-mpirun}: $config -> $out ${resume[*]} $*"

# shellcheck disable=SC2086
${LAUNCH:-mpirun} "$bin" train --config "$config" --out "$out" "${resume[@]}" "$@" &
pid=$!
trap 'caught=1; kill -USR1 "$pid" 2>/dev/null' USR1 TERM
# A trapped signal makes `wait` return 128+N at once: wait again for the
# run's own exit code. Not `while kill -0 "$pid"`: a run that ends as the
# signal arrives is already reaped, and its code (0) would be lost to 138.
while :; do
    caught=0
    wait "$pid"
    rc=$?
    ((caught && rc > 128)) || break
done
if [[ $rc -eq 3 && -n "${SLURM_JOB_ID:-}" ]]; then
    echo "diffmpi: checkpointed on a signal; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
