#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for diffmpi: install the Debian packages
# the build, the tests and the tools need, build diffmpi into build/, and
# fetch MNIST into data/mnist. Safe to run again (skips what is done).
#
# usage: tools/setup.sh [--no-data]
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

# slurmd slurmctld slurm-client: the Slurm tests run a private instance
# (tests/integration/slurm.py, auth/none); with no /etc/slurm/slurm.conf the
# system slurmctld/slurmd do not start (munged may; the tests do not use it).
# python3-torch python3-scipy: the golden test against PyTorch
# (tests/golden, tools/diffmpi_torch.py).
# libdnnl-dev: oneDNN 2.6, the onednn engine and precision = bf16 (gemm.h).
# iproute2 vde2: the namespace hosts of the multi-host tests and
# tools/scaling.py (tools/nshosts.py: veth links shaped by tc tbf, or VDE
# wires with delay and loss, as this kernel has no netem); python3-mpi4py:
# scaling.py's MPI ping-pong over those links.
PKGS=(cmake make gcc pkg-config libopenmpi-dev openmpi-bin libopenblas-dev
      libhdf5-dev libpng-dev libinih-dev librandom123-dev libdnnl-dev
      python3 python3-h5py python3-numpy python3-matplotlib
      python3-torch python3-scipy
      slurmd slurmctld slurm-client iproute2 vde2 python3-mpi4py)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDM_WERROR=ON >/dev/null
cmake --build build -j "$(nproc)"

if [[ "${1:-}" != "--no-data" ]]; then
    tools/fetch_mnist.sh data/mnist
fi
echo "setup: done (binary: build/diffmpi)"
