"""Shared helpers for the integration tests: run diffmpi under mpirun on a
tiny configuration and compare HDF5 outputs bit for bit."""
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

BIN = sys.argv[1]
SRC = sys.argv[2]
DATA = os.path.join(SRC, "data", "mnist")

# D=8, 512 images, batch 24 of micro-batches of 4: 22 steps per epoch, the
# last batch has 8 images = 2 micro-batches, so at 3 and 4 ranks some ranks
# own no micro-batch in it.
TINY = ["hidden=8", "train_limit=512", "eval_limit=64", "batch=24",
        "micro_batch=4", "epochs=2", "lr=1e-3", "checkpoint_every=5",
        "keep=20", "log_every=1000", "data_dir=" + DATA]

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def finish():
    n = len(failures)
    print(f"{n == 0 and 'all checks passed' or 'failures: ' + ', '.join(failures)}")
    sys.exit(1 if n else 0)


def mpirun(nprocs, args, env_extra=None, timeout=600, mpi_args=()):
    env = dict(os.environ)
    for k, v in (env_extra or {}).items():  # None: unset
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    cmd = ["mpirun", "--oversubscribe"] + list(mpi_args) + ["-np", str(nprocs), BIN] + args
    return subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def train(nprocs, out, extra=(), resume=None, env_extra=None):
    args = ["train", "--out", out]
    for kv in list(TINY) + list(extra):
        args += ["--set", kv]
    if resume:
        args += ["--resume", resume]
    return mpirun(nprocs, args, env_extra)


def train_each(ranks, base, name, extra=()):
    """The same run on each rank count: {P: its output directory}."""
    outs = {}
    for p in ranks:
        out = os.path.join(base, f"{name}-p{p}")
        r = train(p, out, extra)
        check(r.returncode == 0, f"{name} P={p} exits 0 ({r.stderr[-300:]})")
        outs[p] = out
    return outs


def datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()])
                     if isinstance(o, h5py.Dataset) else None)
    return out


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and \
        a.tobytes() == b.tobytes()


def compare_h5(pa, pb, skip=("time", "images_per_sec")):
    """Names of datasets that differ in bits (timing columns skipped)."""
    da, db = datasets(pa), datasets(pb)
    bad = sorted(set(da) ^ set(db))
    for k in da:
        if k in db and k.split("/")[-1] not in skip and not same_bits(da[k], db[k]):
            bad.append(k)
    return bad


def tmpdir():
    return tempfile.mkdtemp(prefix="diffmpi-test-")


def restamp_state(path):
    """Recompute a checkpoint's state_crc32 after a test edited its root
    attributes on purpose (to reach the checks behind the checksum). The
    text is state_crc's in src/io/ckpt.c: the integer attributes, lr as C's
    %a, seed, then each string attribute's name and value with its NUL."""
    import zlib
    with h5py.File(path, "r+") as f:
        a = f.attrs
        text = "".join(f"{k}={int(a[k])}\n" for k in
                       ("format_version", "step", "epoch", "batch_in_epoch", "adam_step",
                        "hidden"))
        mant, exp = float(a["lr"]).hex().split("p")
        mant = mant.rstrip("0").rstrip(".")
        text += f"lr={mant}p{exp}\nseed={int(a['seed'])}\n"
        crc = zlib.crc32(text.encode())
        for k in ("format", "objective", "conditioning", "config"):
            v = a[k]
            v = v if isinstance(v, bytes) else v.encode()
            crc = zlib.crc32(k.encode(), crc)
            crc = zlib.crc32(v + b"\0", crc)
        a["state_crc32"] = np.int64(crc)
