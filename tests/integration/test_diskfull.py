"""Disk full: a small tmpfs that fills up with the run's own checkpoints, and
one that another process fills in the middle of a run (the log and the
checkpoints are then open or due): one clear error line, exit code 1, no
partial checkpoint under a final name, the previous checkpoints intact, and
the run resumed elsewhere ends bit-identical to an uninterrupted one."""
import glob
import os
import shutil
import subprocess
import time

import h5py

from common import check, compare_h5, finish, tmpdir, train

base = tmpdir()
ref = os.path.join(base, "ref")
check(train(2, ref, ["keep=20"]).returncode == 0, "uninterrupted reference run")


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                       capture_output=True, text=True)
    check(r.returncode == 0, f"mount a {size} tmpfs (root): {r.stderr.strip()}")
    return r.returncode == 0


def after_failure(name, mnt, r):
    out = os.path.join(mnt, "run")
    lines = [l for l in r.stderr.splitlines() if l.startswith("diffmpi:")]
    check(r.returncode == 1, f"{name}: exit code 1 (rc {r.returncode})")
    check(len(lines) == 1 and "disk full" in lines[0], f"{name}: one error line ({lines})")
    cks = sorted(glob.glob(os.path.join(out, "checkpoints", "ckpt-*.h5")))
    ok = bool(cks)
    for ck in cks:
        try:
            with h5py.File(ck, "r") as f:
                ok &= f["model/head/weight"].shape == (1, 8, 3, 3)
        except OSError:
            ok = False
    check(ok, f"{name}: the checkpoints on disk are complete ({[os.path.basename(c) for c in cks]})")
    check(not glob.glob(os.path.join(out, "checkpoints", ".*.tmp")),
          f"{name}: no temporary checkpoint left behind")
    # Move the run to a roomy disk and finish it there.
    moved = os.path.join(base, name + "-moved")
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("*.tmp"))
    r = train(2, moved, ["keep=20"], resume="auto")
    check(r.returncode == 0, f"{name}: resumed elsewhere ({r.stderr[-200:]})")
    bad = compare_h5(os.path.join(ref, "checkpoints", "ckpt-44.h5"),
                     os.path.join(moved, "checkpoints", "ckpt-44.h5"))
    check(not bad, f"{name}: final checkpoint bitwise equal ({bad[:3]})")


# 1. Disk full: 1.6 MB holds the log, the samples and about two checkpoints.
mnt = os.path.join(base, "small")
if mount_tmpfs(mnt, "1600k"):
    try:
        r = train(2, os.path.join(mnt, "run"), ["keep=20"])
        after_failure("disk-full", mnt, r)
    finally:
        subprocess.run(["umount", "-l", mnt])

# 2. Another process fills the file system after the first checkpoint.
mnt = os.path.join(base, "filled")
if mount_tmpfs(mnt, "64m"):
    try:
        out = os.path.join(mnt, "run")
        env = dict(os.environ, DIFFMPI_TEST_CKPT_DELAY="0.3")
        from common import BIN, TINY
        args = ["mpirun", "--oversubscribe", "-np", "2", BIN, "train", "--out", out]
        for kv in TINY + ["keep=20"]:
            args += ["--set", kv]
        p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        t0 = time.time()
        while not os.path.exists(os.path.join(out, "checkpoints", "ckpt-5.h5")) \
                and p.poll() is None and time.time() - t0 < 120:
            time.sleep(0.02)
        rr = subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/filler", "bs=1M"],
                            capture_output=True, text=True)
        check("No space left" in rr.stderr, "the disk is full")
        so, se = p.communicate(timeout=300)
        after_failure("filled", mnt, subprocess.CompletedProcess(args, p.returncode, so, se))
    finally:
        subprocess.run(["umount", "-l", mnt])
finish()
