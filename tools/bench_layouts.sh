#!/usr/bin/env bash
# Training speed of several ranks x threads layouts, interleaved, by
# `diffmpi bench` (docs/performance.md): one line of images/s per run.
#
#   tools/bench_layouts.sh [--configs "class-ddpm denoise"] [--precisions "fp32 bf16"]
#                          [--layouts "2x1 1x2"] [--rounds 2] [--steps 4] [--bin build/diffmpi]
#
# Layouts are RANKSxTHREADS; ranks beyond the cores need nothing more
# (--oversubscribe is passed), threads run with --bind-to none. conv_algo is
# fixed to im2col so that no start-up timing differs between layouts.
set -euo pipefail
cd "$(dirname "$0")/.."
configs="class-ddpm denoise" precisions="fp32 bf16" layouts="2x1 1x2" rounds=2 steps=4
bin=build/diffmpi
while [ $# -gt 0 ]; do
  case "$1" in
    --configs) configs=$2; shift 2 ;;
    --precisions) precisions=$2; shift 2 ;;
    --layouts) layouts=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "bench_layouts.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "bench_layouts.sh: $bin: no such executable" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
echo "# $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(date -u +%F\ %H:%M) UTC"
for round in $(seq "$rounds"); do
  for cfg in $configs; do
    for prec in $precisions; do
      for lay in $layouts; do
        r=${lay%x*} t=${lay#*x}
        out=$(mpirun --oversubscribe --bind-to none -np "$r" "$bin" bench \
              --config "jobs/configs/$cfg.ini" --steps "$steps" --set precision="$prec" \
              --set conv_algo=im2col --set threads="$t" 2>&1) || {
          echo "round $round $cfg $prec $lay: failed"; echo "$out" | tail -3; continue; }
        echo "round $round $cfg $prec $lay: $(echo "$out" | grep -o '[0-9.]* images/s' | head -1)"
      done
    done
  done
done
