"""Running the diffmpi executable from the tools (sampler_sweep.py,
inversion.py): under mpirun with the environment Open MPI needs as root, one
rank per core, and a failure as one line naming the command."""
import os
import subprocess
import sys


def environment():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def run(tool, binary, nprocs, args):
    """stdout of `mpirun -np NPROCS BINARY ARGS...`; exits naming it on failure."""
    cmd = ["mpirun", "--bind-to", "none", "-np", str(nprocs), binary] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=environment())
    if r.returncode != 0:
        sys.exit(f"{tool}: {' '.join(cmd)} failed ({r.returncode}):\n"
                 f"{r.stderr.strip()[-800:]}")
    return r.stdout
