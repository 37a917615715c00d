#!/usr/bin/env bash
# The Part 1 denoiser (D=128, batch 256, sigma 0.5, 5 epochs) with mpirun on this machine.
# usage: jobs/mpirun/denoise-5ep.sh [NP] [--set KEY=VALUE ...]   (NP default 2)
exec bash "$(dirname "$0")/../run-mpirun.sh" jobs/configs/denoise.ini runs/denoise-5ep "$@" --set epochs=5
