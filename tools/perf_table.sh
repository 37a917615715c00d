#!/usr/bin/env bash
# Run the benchmark cases of docs/performance.md on this machine: first
# diffmpi (fp32 on OpenBLAS and on oneDNN with im2col, fp32 with
# conv_algo = auto as the jobs run: Winograd F(4x4) or F(2x2) per image
# width where a start-up timing finds it pays, bf16 on oneDNN) against PyTorch
# (tools/bench_torch.py, the same UNet, fp32 and bf16 autocast, 2 threads)
# side by side, printed as ratios from this one run; then diffmpi's own
# cases. About 15 minutes on 2 cores; run it on a
# quiet machine.
#
# usage: tools/perf_table.sh [STEPS] [--vs-torch-only]   (timed steps, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
steps=${1:-3}
only_torch=0
[[ "${2:-}" == "--vs-torch-only" ]] && only_torch=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm_rsh_agent=false
export OMPI_MCA_pml=ob1 OPENBLAS_NUM_THREADS=1
b=build/diffmpi
[[ -x $b ]] || { echo "perf_table.sh: $b not found (run tools/setup.sh)" >&2; exit 1; }
run() { # title, ranks, args...
    local title=$1 np=$2
    shift 2
    echo "=== $title"
    # --bind-to none: Open MPI binds each rank to one core by default, which
    # would put a rank's second BLAS thread on the same core.
    mpirun --bind-to none -np "$np" "$b" bench "$@"
    echo
}
rate() { grep -o '[0-9.]* images/s' | head -1 | cut -d' ' -f1; }

echo "=== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)," \
     "$(nproc) cores; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
# The job configs say precision = auto (bf16 where the CPU has the units and
# a product timed at start-up runs faster in bf16); say what it picks here.
# Every fp32 row below sets precision = fp32, every bf16 row bf16.
echo "=== precision = auto here: $(mpirun -np 1 "$b" bench --set hidden=8 --set batch=4 \
    --set micro_batch=4 --steps 1 --set precision=auto 2>&1 |
    grep -m1 -E 'auto chose|convolution products' || echo '(bench failed)')"
# diffmpi on 2 ranks x 1 thread against PyTorch on 2 threads, same global
# batch, same model, one after the other so that drift hits all alike:
# diffmpi fp32 on OpenBLAS (with this environment's OPENBLAS_CORETYPE) and
# on oneDNN with im2col, fp32 on oneDNN with conv_algo = auto (Winograd
# where a start-up timing finds it pays), bf16 on oneDNN (where the CPU has
# the units), PyTorch fp32 and bf16 autocast.
side_by_side() { # title, diffmpi args, torch args
    local title=$1 dargs=$2 targs=$3 out blas d dw d16 t32 t16
    out=$(mpirun --bind-to none -np 2 "$b" bench $dargs --set engine=openblas --set precision=fp32 \
          --set conv_algo=im2col --steps "$steps")
    echo "$out"; blas=$(rate <<<"$out")
    out=$(mpirun --bind-to none -np 2 "$b" bench $dargs --set engine=onednn --set precision=fp32 \
          --set conv_algo=im2col --steps "$steps")
    echo "$out"; d=$(rate <<<"$out")
    # conv_algo = auto, as the job configs run it: Winograd where it pays here
    out=$(mpirun --bind-to none -np 2 "$b" bench $dargs --set engine=onednn --set precision=fp32 \
          --set conv_algo=auto --steps "$steps")
    echo "$out"; dw=$(rate <<<"$out")
    if out=$(mpirun --bind-to none -np 2 "$b" bench $dargs --set precision=bf16 \
             --steps "$steps" 2>&1); then
        echo "$out"; d16=$(rate <<<"$out")
    else
        echo "$out" | grep -m1 'diffmpi:' || true; d16=0
    fi
    out=$(/usr/bin/python3 tools/bench_torch.py $targs --threads 2 --steps "$steps"); echo "$out"
    t32=$(rate <<<"$out")
    out=$(/usr/bin/python3 tools/bench_torch.py $targs --threads 2 --steps "$steps" --bf16)
    echo "$out"
    t16=$(rate <<<"$out")
    summary+=$(/usr/bin/python3 -c 'import sys
t, blas, d, dw, d16, a, b = sys.argv[1:]
blas, d, dw, d16, a, b = map(float, (blas, d, dw, d16, a, b))
pad = " " * 28
bf = (f"diffmpi bf16 {d16:7.2f}; " if d16 else "diffmpi bf16     n/a; ")
r16 = (f", bf16/torch bf16 {d16 / b:.2f}x, bf16/own fp32 {d16 / dw:.2f}x" if d16 else "")
print(f"{t:<28} images/s: openblas fp32 {blas:7.2f}, onednn fp32 im2col {d:7.2f}, "
      f"conv_algo auto {dw:7.2f}, {bf}torch fp32 {a:7.2f}, torch bf16 {b:7.2f}\n{pad} ratios: "
      f"fp32 auto/torch fp32 {dw / a:.2f}x (im2col {d / a:.2f}x, openblas {blas / a:.2f}x), "
      f"auto/im2col {dw / d:.2f}x{r16}")' "$title" "$blas" "$d" "$dw" "$d16" "$t32" "$t16")$'\n'
}
summary=""
echo "=== diffmpi (2 ranks x 1 thread) against PyTorch (2 threads), same model and batch"
side_by_side "denoiser D=128 batch 256" "--config jobs/configs/denoise.ini" \
    "--hidden 128 --batch 256 --mix none"
side_by_side "class DDPM D=128 batch 128" "--config jobs/configs/class-ddpm.ini" \
    "--hidden 128 --batch 128 --mix film"
side_by_side "denoiser D=32 batch 256" "--config jobs/configs/denoise.ini --set hidden=32" \
    "--hidden 32 --batch 256 --mix none"
echo "=== side by side, from this run"
printf '%s' "$summary"
echo
(( only_torch )) && exit 0

run "denoiser D=128 batch 256, 2 ranks x 1 thread" 2 --config jobs/configs/denoise.ini --set precision=fp32 --steps "$steps"
run "denoiser D=128 batch 128, 1 rank x 1 thread (same per-rank batch)" 1 --config jobs/configs/denoise.ini --set precision=fp32 --set batch=128 --steps "$steps"
run "denoiser D=128 batch 256, 1 rank x 2 threads" 1 --config jobs/configs/denoise.ini --set precision=fp32 --set threads=2 --steps "$steps"
run "class DDPM D=128 batch 128, 2 ranks" 2 --config jobs/configs/class-ddpm.ini --set precision=fp32 --steps "$steps"
run "class DDPM D=128 batch 128, 1 rank" 1 --config jobs/configs/class-ddpm.ini --set precision=fp32 --set batch=64 --steps "$steps"
run "denoiser D=64 batch 256, 2 ranks" 2 --config jobs/configs/denoise.ini --set precision=fp32 --set hidden=64 --steps "$steps"
run "denoiser D=32 batch 256, 2 ranks" 2 --config jobs/configs/denoise.ini --set precision=fp32 --set hidden=32 --steps "$steps"
for m in 8 16 32 64; do
    run "denoiser D=128 batch 64, micro_batch $m, 1 rank" 1 --config jobs/configs/denoise.ini --set precision=fp32 --set batch=64 --set micro_batch=$m --steps "$steps"
done
run "sampling: 40 CFG images at D=128, 30 of 300 steps, 2 ranks" 2 --config jobs/configs/class-ddpm.ini --set precision=fp32 --sample --steps 30
run "sampling in bf16: 40 CFG images at D=128, 30 of 300 steps, 2 ranks" 2 --config jobs/configs/class-ddpm.ini --set precision=bf16 --sample --steps 30 || true
run "denoiser D=128 batch 256 in bf16, 2 ranks" 2 --config jobs/configs/denoise.ini --set precision=bf16 --steps "$steps" || true
run "denoiser D=32 batch 256 in bf16, 2 ranks" 2 --config jobs/configs/denoise.ini --set hidden=32 --set precision=bf16 --steps "$steps" || true
run "denoiser D=64 batch 256 in bf16, 2 ranks" 2 --config jobs/configs/denoise.ini --set hidden=64 --set precision=bf16 --steps "$steps" || true
