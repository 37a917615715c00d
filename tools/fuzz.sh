#!/usr/bin/env bash
# Fuzz the IDX reader (data_load) and the configuration parser
# (config_load_string, config_set, config_validate, config_to_string round
# trip) with libFuzzer under AddressSanitizer + UndefinedBehaviorSanitizer.
# A separate, manual command: not part of CI or ctest. Needs clang with its
# libFuzzer runtime (Debian 12: apt-get install clang libclang-rt-14-dev).
#
# usage: tools/fuzz.sh [SECONDS_PER_TARGET]  fuzz each target (default 300)
#        tools/fuzz.sh --replay              run every stored corpus input
#                                            once (a quick regression check)
#        tools/fuzz.sh --help
#
# Builds build-fuzz/fuzz_idx and build-fuzz/fuzz_config, seeds the working
# corpora build-fuzz/corpus/<target>/ from tests/fuzz/corpus/<target>/ (and
# jobs/configs/*.ini), then runs each target for SECONDS_PER_TARGET on one
# core (-jobs=1 -workers=1; log in build-fuzz/run/<target>/fuzz-0.log) and
# prints executions, exec/s, new corpus units and the path of every crash,
# leak, timeout or OOM input written to build-fuzz/artifacts/<target>/.
# Replay one with build-fuzz/fuzz_<target> FILE. Each run also appends a
# line to build-fuzz/history.tsv.
# Exit status: 0 nothing found, 1 a finding (or a fuzzer failed), 2 usage.
# Environment: CC (default clang), FUZZ_TARGETS (default "idx config"),
# FUZZ_RSS_MB (default 2048), TMPDIR for fuzz_idx's files (default
# /dev/shm when writable).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

SECONDS_PER_TARGET=300
REPLAY=0
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --replay) REPLAY=1 ;;
    "") ;;
    *)
        if [[ ! "$1" =~ ^[0-9]+$ ]] || (( $1 < 1 )); then
            echo "fuzz.sh: SECONDS_PER_TARGET must be a whole number >= 1" \
                 "(got '$1'); see tools/fuzz.sh --help" >&2
            exit 2
        fi
        SECONDS_PER_TARGET=$1 ;;
esac
if (( $# > 1 )); then
    echo "fuzz.sh: too many arguments; see tools/fuzz.sh --help" >&2
    exit 2
fi

CC=${CC:-clang}
TARGETS=${FUZZ_TARGETS:-idx config}
RSS_MB=${FUZZ_RSS_MB:-2048}
OUT=$ROOT/build-fuzz
mkdir -p "$OUT"

# --- build -----------------------------------------------------------------
if ! command -v "$CC" >/dev/null 2>&1 ||
   ! printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n)
{ (void)d; (void)n; return 0; }\n' |
     "$CC" -fsanitize=fuzzer,address,undefined -x c - -o "$OUT/.probe" \
        >/dev/null 2>&1; then
    echo "fuzz.sh: '$CC' cannot build a libFuzzer target; on Debian 12:" \
         "apt-get install clang libclang-rt-14-dev" >&2
    exit 1
fi
rm -f "$OUT/.probe"
for tool in mpicc pkg-config; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "fuzz.sh: $tool not found (run tools/setup.sh)" >&2; exit 1; }
done

CFLAGS=(-std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -fno-omit-frame-pointer
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
        -Wall -Wextra -Wno-unused-parameter -I"$ROOT/include"
        -DDM_NO_CLONES)  # clang's target_clones do not link under the sanitizers
read -r -a MPI_CFLAGS <<<"$(mpicc -showme:compile)"
read -r -a MPI_LIBS <<<"$(mpicc -showme:link)"
read -r -a INIH_CFLAGS <<<"$(pkg-config --cflags inih)"
read -r -a INIH_LIBS <<<"$(pkg-config --libs inih)"
# src/common.c (dm_error, dm_fatal, dm_malloc) calls MPI only when MPI is
# initialised, which it never is here; it still needs libmpi to link. The
# config key table takes the objective and normalisation names from their
# tables (objective.c, norm.c), which bring their kernels along.
CORE=("$ROOT/src/common.c" "$ROOT/src/rng.c" "$ROOT/src/io/data.c" "$ROOT/src/io/config.c"
      "$ROOT/src/model/objective.c" "$ROOT/src/model/norm.c" "$ROOT/src/nn/bn2d.c"
      "$ROOT/src/nn/bn_gelu.c" "$ROOT/src/nn/gn_gelu.c")

for t in $TARGETS; do
    echo "== building build-fuzz/fuzz_$t"
    "$CC" "${CFLAGS[@]}" "${MPI_CFLAGS[@]}" "${INIH_CFLAGS[@]}" \
        "$ROOT/tests/fuzz/fuzz_$t.c" "${CORE[@]}" -o "$OUT/fuzz_$t" \
        "${MPI_LIBS[@]}" "${INIH_LIBS[@]}" -lm || exit 1
done

# The configuration dictionary: fixed tokens plus every key in the table.
{
    cat "$ROOT/tests/fuzz/config.dict"
    grep -o '\.name = "[a-z_0-9]*"' "$ROOT/src/io/config.c" | sed 's/.*= //'
} >"$OUT/config.dict"

if [[ -z "${TMPDIR:-}" && -d /dev/shm && -w /dev/shm ]]; then
    export TMPDIR=/dev/shm  # fuzz_idx writes two files per input
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

seed_dirs() {
    echo "$ROOT/tests/fuzz/corpus/$1"
    [[ $1 == config ]] && echo "$ROOT/jobs/configs"
}

# --- replay ------------------------------------------------------------------
if (( REPLAY )); then
    status=0
    for t in $TARGETS; do
        mapfile -t files < <(find $(seed_dirs "$t") -maxdepth 1 -type f | sort)
        printf '== replaying %d inputs through fuzz_%s: ' "${#files[@]}" "$t"
        if "$OUT/fuzz_$t" "${files[@]}" >"$OUT/replay-$t.log" 2>&1; then
            echo "ok"
        else
            echo "FAILED (see build-fuzz/replay-$t.log)"
            grep -m1 -E 'ERROR|invariant violated|runtime error' \
                "$OUT/replay-$t.log"
            status=1
        fi
    done
    exit $status
fi

# --- fuzz --------------------------------------------------------------------
max_len() { [[ $1 == idx ]] && echo 16384 || echo 4096; }

stat_of() { # stat_of NAME LOG: libFuzzer's final "stat::NAME: value"
    grep -o "stat::$1: *[0-9]*" "$2" 2>/dev/null | tail -1 | grep -o '[0-9]*$'
}

declare -A EXECS RATE NEW CORPUS RESULT
status=0
for t in $TARGETS; do
    work=$OUT/run/$t art=$OUT/artifacts/$t corpus=$OUT/corpus/$t
    mkdir -p "$work" "$art" "$corpus"
    rm -f "$work/fuzz-0.log"
    touch "$work/.start"
    echo "== fuzzing fuzz_$t for ${SECONDS_PER_TARGET} s" \
         "(log: build-fuzz/run/$t/fuzz-0.log)"
    dict=$ROOT/tests/fuzz/idx.dict
    [[ $t == config ]] && dict=$OUT/config.dict
    mapfile -t seeds < <(seed_dirs "$t")
    # The first corpus directory receives the new units; the seed
    # directories in the repository are only read.
    (cd "$work" && "$OUT/fuzz_$t" -jobs=1 -workers=1 \
        -max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len "$t")" \
        -timeout=10 -rss_limit_mb="$RSS_MB" -print_final_stats=1 \
        -close_fd_mask=2 -dict="$dict" -artifact_prefix="$art/" \
        "$corpus" "${seeds[@]}" >"$work/driver.log" 2>&1)
    rc=$?
    log=$work/fuzz-0.log
    execs=$(stat_of number_of_executed_units "$log")
    if [[ -z $execs ]]; then  # no final stats: take the last status line
        execs=$(grep -oE '^#[0-9]+' "$log" 2>/dev/null | tail -1 | tr -d '#')
    fi
    EXECS[$t]=${execs:-?}
    RATE[$t]=$(stat_of average_exec_per_sec "$log")
    NEW[$t]=$(stat_of new_units_added "$log")
    CORPUS[$t]=$(find "$corpus" -type f | wc -l)
    mapfile -t found < <(find "$art" -type f -newer "$work/.start" \
        \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
           -o -name 'oom-*' \) | sort)
    if (( ${#found[@]} )); then
        RESULT[$t]="FOUND ${#found[@]}: ${found[*]#$ROOT/}"
        status=1
    elif (( rc != 0 )); then
        RESULT[$t]="fuzzer exited with $rc (see build-fuzz/run/$t/)"
        status=1
    else
        RESULT[$t]="no crash, leak, timeout or OOM"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$t" \
        "$SECONDS_PER_TARGET" "${EXECS[$t]}" "${RATE[$t]:-?}" \
        "${RESULT[$t]}" >>"$OUT/history.tsv"
done

echo
echo "== fuzz summary (${SECONDS_PER_TARGET} s per target)"
printf '%-8s %12s %8s %10s %8s  %s\n' target executions exec/s "new units" \
    corpus result
for t in $TARGETS; do
    printf '%-8s %12s %8s %10s %8s  %s\n' "$t" "${EXECS[$t]}" \
        "${RATE[$t]:-?}" "${NEW[$t]:-?}" "${CORPUS[$t]}" "${RESULT[$t]}"
done
if (( status )); then
    echo "replay a finding with: build-fuzz/fuzz_<target> FILE"
fi
exit $status
