#!/usr/bin/env bash
# Run the benchmark cases of docs/performance.md on this machine and print
# their reports (about 10 minutes on 2 cores; run it on a quiet machine).
#
# usage: tools/perf_table.sh [STEPS]      (timed steps per case, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
steps=${1:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm_rsh_agent=false
export OMPI_MCA_pml=ob1 OPENBLAS_NUM_THREADS=1
b=build/diffmpi
run() { # title, ranks, args...
    local title=$1 np=$2
    shift 2
    echo "=== $title"
    # --bind-to none: Open MPI binds each rank to one core by default, which
    # would put a rank's second BLAS thread on the same core.
    mpirun --bind-to none -np "$np" "$b" bench "$@"
    echo
}
run "denoiser D=128 batch 256, 2 ranks x 1 thread" 2 --config jobs/configs/denoise.ini --steps "$steps"
run "denoiser D=128 batch 128, 1 rank x 1 thread (same per-rank batch)" 1 --config jobs/configs/denoise.ini --set batch=128 --steps "$steps"
run "denoiser D=128 batch 256, 1 rank x 2 threads" 1 --config jobs/configs/denoise.ini --set threads=2 --steps "$steps"
run "class DDPM D=128 batch 128, 2 ranks" 2 --config jobs/configs/class-ddpm.ini --steps "$steps"
run "class DDPM D=128 batch 128, 1 rank" 1 --config jobs/configs/class-ddpm.ini --set batch=64 --steps "$steps"
run "denoiser D=64 batch 256, 2 ranks" 2 --config jobs/configs/denoise.ini --set hidden=64 --steps "$steps"
run "denoiser D=32 batch 256, 2 ranks" 2 --config jobs/configs/denoise.ini --set hidden=32 --steps "$steps"
for m in 8 16 32 64; do
    run "denoiser D=128 batch 64, micro_batch $m, 1 rank" 1 --config jobs/configs/denoise.ini --set batch=64 --set micro_batch=$m --steps "$steps"
done
run "sampling: 40 CFG images at D=128, 30 of 300 steps, 2 ranks" 2 --config jobs/configs/class-ddpm.ini --sample --steps 30
