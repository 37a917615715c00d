#!/usr/bin/env bash
# The README's first run: train the judge of `diffmpi score` once
# (jobs/configs/judge.ini into runs/judge, its final checkpoint linked as
# runs/judge/judge.h5), then the small class-conditioned flow model of
# jobs/configs/quickstart.ini, which scores its samples with that judge
# after every sampling epoch and prints the last score at the end.
#
# usage: jobs/quickstart.sh [OUT] [NP] [--set KEY=VALUE ...]
#   OUT  output directory of the flow model (default runs/quickstart)
#   NP   ranks (default 2)
# Environment: JUDGE (a judge checkpoint to use instead of training one),
# DIFFMPI, MPIRUN_ARGS (as jobs/run-mpirun.sh).
set -euo pipefail
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
out=runs/quickstart np=2
if [[ $# -gt 0 && "$1" != --* ]]; then out=$1; shift; fi
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then np=$1; shift; fi

judge=${JUDGE:-runs/judge/judge.h5}
if [[ -z "${JUDGE:-}" && ! -f "$judge" ]]; then
    echo "quickstart: training the judge first (jobs/configs/judge.ini, about 3 minutes)"
    bash jobs/mpirun/judge.sh "$np"
fi
[[ -f "$judge" ]] || { echo "quickstart: judge $judge not found" >&2; exit 2; }
exec bash jobs/run-mpirun.sh jobs/configs/quickstart.ini "$out" "$np" --set "judge=$judge" "$@"
