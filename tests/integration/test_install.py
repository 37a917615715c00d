#!/usr/bin/python3
"""`cmake --install` as a cluster module or a Spack recipe would run it.

usage: /usr/bin/python3 test_install.py PATH/TO/diffmpi SOURCE_DIR

Installs the build that holds the binary into a temporary prefix and checks:
  - PREFIX/bin/diffmpi --version prints the version, the git commit and the
    libraries, exit 0 (and --version with an argument is a usage error);
  - PREFIX/share/diffmpi holds the job scripts, configs, tools and docs,
    and no installed job script names a path of the source checkout
    (build/diffmpi, a relative jobs/...): each names the installed ones;
  - an installed job script (jobs/mpirun/judge.sh, tiny overrides), run from
    a directory outside both trees, trains with the installed binary and
    configs; its outputs record the installed binary's version and
    libraries beside the configuration (log.h5, checkpoints).
Removes the prefix at the end.
"""
import glob
import os
import shutil
import subprocess
import tempfile

import h5py

from common import check, finish, BIN, SRC, DATA

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_plm_rsh_agent="false", OPENBLAS_NUM_THREADS="1")
ENV.pop("DIFFMPI", None)


def main():
    build = os.path.dirname(os.path.abspath(BIN))
    tmp = tempfile.mkdtemp(prefix="diffmpi-install.")
    try:
        prefix = os.path.join(tmp, "prefix")
        r = subprocess.run(["cmake", "--install", build, "--prefix", prefix],
                           capture_output=True, text=True, timeout=300)
        check(r.returncode == 0, "cmake --install exits 0 (%d: %s)"
              % (r.returncode, r.stderr.strip()[-300:]))
        exe = os.path.join(prefix, "bin", "diffmpi")
        check(os.access(exe, os.X_OK), "PREFIX/bin/diffmpi installed")
        if not os.access(exe, os.X_OK):
            return
        v = subprocess.run([exe, "--version"], capture_output=True, text=True, env=ENV,
                           timeout=60)
        lines = v.stdout.splitlines()
        check(v.returncode == 0 and len(lines) == 2 and lines[0].startswith("diffmpi ")
              and "(git " in lines[0] and lines[1].startswith("libraries: ")
              and all(x in lines[1] for x in ("Open MPI", "HDF5", "OpenBLAS", "libpng", "zlib")),
              "--version: version, git commit and libraries (%r)" % v.stdout)
        bad = subprocess.run([exe, "--version", "x"], capture_output=True, text=True, env=ENV,
                             timeout=60)
        check(bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1,
              "--version x: one usage line, exit 2 (%d, %r)" % (bad.returncode, bad.stderr))
        share = os.path.join(prefix, "share", "diffmpi")
        for rel in ("jobs/run-mpirun.sh", "jobs/launch.sh", "jobs/slurm/train-job.sh",
                    "jobs/slurm/class-ddpm-5ep.sbatch", "jobs/mpirun/judge.sh",
                    "jobs/configs/judge.ini", "tools/figures.py", "docs/configuration.md"):
            check(os.path.isfile(os.path.join(share, rel)), "installed: share/diffmpi/" + rel)
        scripts = [p for p in glob.glob(os.path.join(share, "jobs", "**", "*"), recursive=True)
                   if p.endswith((".sh", ".sbatch"))]
        leftovers = []
        for p in scripts:
            # the commands, not the comments (which name paths as a user types them)
            text = "\n".join(l for l in open(p).read().splitlines()
                             if not l.lstrip().startswith("#"))
            for bad_path in ("build/diffmpi", "jobs/configs/", "bash jobs/", "-.}/jobs/",
                             "jobs/slurm/train-job.sh"):
                if bad_path in text.replace(share + "/jobs/", "@"):
                    leftovers.append("%s: %r" % (os.path.relpath(p, share), bad_path))
            if not os.access(p, os.X_OK):
                leftovers.append(os.path.relpath(p, share) + ": not executable")
        check(len(scripts) >= 20 and not leftovers,
              "%d installed job scripts name only installed paths (%s)"
              % (len(scripts), "; ".join(leftovers[:4])))
        text = open(os.path.join(share, "jobs", "run-mpirun.sh")).read()
        check("${DIFFMPI:-%s}" % exe in text, "run-mpirun.sh defaults to PREFIX/bin/diffmpi")

        # A job from the installed tree, in a directory of its own.
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        job = subprocess.run(
            ["bash", os.path.join(share, "jobs", "mpirun", "judge.sh"), "1",
             "--set", "hidden=8", "--set", "train_limit=96", "--set", "eval_limit=32",
             "--set", "batch=32", "--set", "micro_batch=16", "--set", "epochs=1",
             "--set", "log_every=1000", "--set", "data_dir=" + DATA],
            cwd=work, capture_output=True, text=True, env=ENV, timeout=600)
        check(job.returncode == 0, "installed jobs/mpirun/judge.sh trains from another "
              "directory, exit 0 (%d: %s)" % (job.returncode, (job.stderr or job.stdout)[-400:]))
        log = os.path.join(work, "runs", "judge", "log.h5")
        ckpts = sorted(glob.glob(os.path.join(work, "runs", "judge", "checkpoints", "ckpt-*.h5")))
        check(os.path.isfile(log) and ckpts, "its log and checkpoints are in the working "
              "directory's runs/judge")
        want_v = lines[0][len("diffmpi "):] if lines else None
        want_l = lines[1][len("libraries: "):] if len(lines) > 1 else None
        for path in [log] + ckpts[-1:]:
            if not os.path.isfile(path):
                continue
            with h5py.File(path, "r") as f:
                got_v = f.attrs.get("diffmpi_version")
                got_l = f.attrs.get("libraries")
                got_v = got_v.decode() if isinstance(got_v, bytes) else got_v
                got_l = got_l.decode() if isinstance(got_l, bytes) else got_l
                check(got_v == want_v and got_l == want_l and "config" in f.attrs,
                      "%s records the installed binary's version and libraries beside "
                      "config (%r, %r)" % (os.path.basename(path), got_v, got_l))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
    finish()
