#!/usr/bin/env bash
# The class-conditioned ddpm model (D=128, batch 128, 5 epochs) with mpirun on this machine.
# usage: jobs/mpirun/class-ddpm-5ep.sh [NP] [--set KEY=VALUE ...]   (NP default 2)
exec bash "$(dirname "$0")/../run-mpirun.sh" jobs/configs/class-ddpm.ini runs/class-ddpm-5ep "$@" --set epochs=5
