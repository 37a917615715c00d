#!/usr/bin/env bash
# Run the whole test suite: the warnings-as-errors build with every unit and
# integration test, then the unit tests, the PyTorch golden test, the
# malformed-input battery and the output checks again under AddressSanitizer
# and UndefinedBehaviorSanitizer.
# Expects tools/setup.sh to have run.
#
# usage: tools/run_tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDM_WERROR=ON >/dev/null
cmake --build build -j "$(nproc)"
echo "== tests (build/)"
(cd build && ctest --output-on-failure -j 2)

echo "== unit tests, the PyTorch golden test, bad inputs and outputs under ASan + UBSan (build-asan/)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DDM_WERROR=ON -DDM_SANITIZE=ON >/dev/null
cmake --build build-asan -j "$(nproc)"
# Open MPI's own allocations are not ours to judge: leak checking off.
(cd build-asan && ASAN_OPTIONS=detect_leaks=0 ctest --output-on-failure \
    -R '^(unit\.|golden\.torch$|integration\.(bad_inputs|outputs)$)')
