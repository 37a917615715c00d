#!/usr/bin/env bash
# The heavy crash-safety campaign (not part of CI's time budget): SIGKILL a
# rank at every fault point at several steps on both ranks, resume, and
# compare with an uninterrupted run bit for bit. The test suite runs a
# 26-point subset of the same test (integration.kill).
#
# usage: tools/fault_campaign.sh        (after tools/setup.sh; ~15 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm_rsh_agent=false
export OMPI_MCA_pml=ob1 OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1
DIFFMPI_FULL_CAMPAIGN=1 exec /usr/bin/python3 tests/integration/test_kill.py \
    "$PWD/build/diffmpi" "$PWD"
