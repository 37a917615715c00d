#!/usr/bin/env bash
# Launch a diffmpi training with mpirun on this machine (or inside any
# allocation), resuming automatically when OUT already holds checkpoints.
#
# usage: jobs/run-mpirun.sh CONFIG OUT [NP] [--set KEY=VALUE ...]
#   CONFIG  an INI file (jobs/configs/*.ini)
#   OUT     output directory (checkpoints/, log.h5, samples.h5, PNGs)
#   NP      number of ranks (default 2)
# Environment: DIFFMPI (binary, default build/diffmpi), MPIRUN_ARGS.
# Exit code: diffmpi's (3 = stopped by a signal after a checkpoint). Stop a
# run with `kill PID` (TERM) or `kill -USR1 PID` of this script: both reach
# the ranks as USR1 (a TERM sent to mpirun itself would end them mid-step).
set -euo pipefail
if [[ $# -lt 2 || "$1" == "--help" || "$1" == "-h" ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    [[ $# -ge 1 && ( "$1" == "--help" || "$1" == "-h" ) ]] && exit 0 || exit 2
fi
config=$1 out=$2
shift 2
np=2
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then np=$1; shift; fi
bin=${DIFFMPI:-build/diffmpi}
[[ -x "$bin" ]] || { echo "run-mpirun: $bin not found; run tools/setup.sh first" >&2; exit 2; }

# Open MPI refuses to run as root without these; more ranks than cores need
# oversubscription; no ssh is needed on one node.
if [[ $(id -u) -eq 0 ]]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_plm_rsh_agent=${OMPI_MCA_plm_rsh_agent:-false}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

resume=()
compgen -G "$out/checkpoints/ckpt-*.h5" >/dev/null && resume=(--resume auto)
# Several threads per rank (--set threads=N, N > 1): let them leave the
# core Open MPI would bind the rank to.
bind=()
for a in "$@"; do [[ $a =~ ^threads=([0-9]+)$ ]] && ((BASH_REMATCH[1] > 1)) && bind=(--bind-to none); done
# A TERM or USR1 to this script reaches the ranks as USR1: the run finishes
# its step, checkpoints and exits 3, as under Slurm (jobs/launch.sh).
# shellcheck source=jobs/launch.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch.sh"
# shellcheck disable=SC2086
dm_launch mpirun ${MPIRUN_ARGS:-} "${bind[@]}" -np "$np" "$bin" train --config "$config" --out "$out" "${resume[@]}" "$@"
exit "$DM_RC"
