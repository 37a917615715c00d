#!/usr/bin/env bash
# The class-conditioned flow model (D=128, batch 128, 20 epochs) with mpirun on this machine.
# usage: jobs/mpirun/class-flow-20ep.sh [NP] [--set KEY=VALUE ...]   (NP default 2)
exec bash "$(dirname "$0")/../run-mpirun.sh" jobs/configs/class-flow.ini runs/class-flow-20ep "$@" --set epochs=20
