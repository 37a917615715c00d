#!/usr/bin/env bash
# The judge of `diffmpi score` (jobs/configs/judge.ini: the UNet's encoder as a
# classifier, 3 epochs, 2-3 minutes on 2 ranks) into runs/judge, then linked as
# runs/judge/judge.h5 (its last checkpoint), the path the runs are given with
# `--set judge=runs/judge/judge.h5`. Run again, it resumes or only relinks.
# usage: jobs/mpirun/judge.sh [NP] [--set KEY=VALUE ...]   (NP default 2), from
# the repository root (runs/judge is relative to the working directory)
set -euo pipefail
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
bash "$(dirname "$0")/../run-mpirun.sh" jobs/configs/judge.ini runs/judge "$@"
last=$(ls runs/judge/checkpoints/ckpt-*.h5 | sed 's/.*ckpt-\([0-9]*\)\.h5/\1/' | sort -n | tail -1)
ln -sfn "checkpoints/ckpt-$last.h5" runs/judge/judge.h5
echo "judge ready: runs/judge/judge.h5 -> runs/judge/checkpoints/ckpt-$last.h5"
