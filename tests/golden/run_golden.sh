#!/usr/bin/env bash
# golden.torch: diffmpi's training step against PyTorch (test_golden.c,
# golden_ref.py, tools/diffmpi_torch.py), then proof that the comparison
# fails when either side is deliberately wrong.
#
# usage: tests/golden/run_golden.sh TEST_GOLDEN_BINARY SOURCE_DIR
#
# Five tiny models (D=4; plain BatchNorm, time additive, time
# multiplicative, class FiLM, plain GroupNorm with 2 groups), one batch of 5
# images in micro-batches of 2, 2, 1, three Adam steps at lr 1e-3; every
# tensor compared as max|diffmpi - torch| / max|torch|, and each entry of at
# least 1e-3 of that largest as |diffmpi - torch| / |torch|, against a
# tolerance per quantity (output, loss, gradients, BatchNorm running statistics,
# eval-mode output, Adam's updates), listed with their reasons above the
# quantity table in test_golden.c, which prints the worst value of each per
# case.
#
# The self-test: each of these must make `test_golden check` fail, naming
# the tensor that is wrong:
#   --perturb grad       one gradient entry of up1/0/weight off by 1e-3 of
#                        the tensor's largest entry
#   --perturb small      one small entry of that gradient 4 % off (within
#                        the tensor bound: caught by the per-entry bound)
#   --perturb momentum   BatchNorm momentum 0.2 instead of 0.1
#   --perturb adam       Adam without bias correction
#   reference with tanh GELU (golden_ref.py --mutate gelu_tanh)
#   reference reading unflatten's ConvTranspose2d weight as [out,in]
#     (--mutate convt_layout; the tensor is square, so it loads silently)
#
# Fails (never skips) when python3-torch is missing: tools/setup.sh
# installs it.
set -uo pipefail
bin=${1:?usage: run_golden.sh TEST_GOLDEN SOURCE_DIR}
src=${2:?usage: run_golden.sh TEST_GOLDEN SOURCE_DIR}
py=/usr/bin/python3
# No __pycache__ in the source tree from importing tools/diffmpi_torch.py.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
start=$SECONDS

if ! "$py" -c 'import torch, h5py' 2>/dev/null; then
    echo "golden: $py cannot import torch and h5py: install python3-torch and" \
         "python3-h5py (tools/setup.sh does)" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/golden.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
ref="$src/tests/golden/golden_ref.py"

"$bin" init "$work" || { echo "golden: test_golden init failed" >&2; exit 1; }
"$py" "$ref" "$work" || { echo "golden: golden_ref.py failed" >&2; exit 1; }

echo "== diffmpi against PyTorch"
"$bin" check "$work" || { echo "golden: FAILED: diffmpi differs from PyTorch" >&2; exit 1; }
# The same step with the products on OpenBLAS (the default is oneDNN).
DM_GOLDEN_ENGINE=openblas "$bin" check "$work" ||
    { echo "golden: FAILED on engine openblas: diffmpi differs from PyTorch" >&2; exit 1; }

# must_fail WHAT PATTERN ARGS...: test_golden check ARGS must exit 1 and
# name PATTERN in a mismatch line.
bad=0
must_fail() {
    local what=$1 pattern=$2
    shift 2
    "$bin" check "$work" "$@" >"$work/out" 2>"$work/err"
    local rc=$?
    local n
    n=$(grep -c '^golden: .*relative' "$work/err")
    if [[ $rc -ne 1 ]] || ! grep -q -- "$pattern" "$work/err"; then
        echo "golden: SELF-TEST FAILED: $what was not caught (exit $rc; expected a" \
             "mismatch naming '$pattern')" >&2
        cat "$work/err" >&2
        bad=1
    else
        echo "self-test: $what: caught ($n mismatching tensors), e.g."
        grep -m1 -- "$pattern" "$work/err" | sed 's/^/    /'
    fi
}

echo "== self-test: deliberate errors must fail"
must_fail "one perturbed gradient entry" "grad up1/0/weight" --perturb grad
must_fail "one small gradient entry 4 % off" "grad up1/0/weight: entry" --perturb small
must_fail "BatchNorm momentum 0.2" "bn1 inc/0/bn_running_mean" --perturb momentum
must_fail "Adam without bias correction" "adam inc/0/weight (step 1)" --perturb adam
"$py" "$ref" "$work" --name ref_tanh --mutate gelu_tanh >/dev/null || exit 1
must_fail "a reference with tanh GELU" "y output" --ref ref_tanh
"$py" "$ref" "$work" --name ref_convt --mutate convt_layout >/dev/null || exit 1
must_fail "a reference reading ConvTranspose2d as [out,in]" "y output" --ref ref_convt

echo "golden: $((SECONDS - start)) s"
if [[ $bad -ne 0 ]]; then
    echo "golden: FAILED: the comparison cannot tell a deliberate error" >&2
    exit 1
fi
echo "golden: passed"
