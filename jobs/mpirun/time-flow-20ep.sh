#!/usr/bin/env bash
# The time-conditioned flow model (D=128, batch 128, 20 epochs) with mpirun on this machine.
# usage: jobs/mpirun/time-flow-20ep.sh [NP] [--set KEY=VALUE ...]   (NP default 2)
exec bash "$(dirname "$0")/../run-mpirun.sh" jobs/configs/time-flow.ini runs/time-flow-20ep "$@" --set epochs=20
