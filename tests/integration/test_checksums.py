"""Checksums on everything diffmpi writes (issue 12, part 1).

Damage of every kind to a checkpoint is detected and named: a byte flipped
inside the data of a weight, a BatchNorm statistic, Adam's m and v; a
training-state attribute changed; the file truncated; a page zeroed.
predict and inspect exit 1 with one line naming the file and the damaged
tensor; --resume PATH refuses the file; --resume auto skips a damaged newest
checkpoint, names it, resumes from the newest intact one and ends bitwise
equal to the uninterrupted run. A checkpoint damaged as it is written is
caught by the read-back before pruning, so the older ones survive. A
checkpoint from before checksums (format version 1) still loads, with one
warning. The log and samples carry checksums too, and a flipped byte in
samples.h5 is caught by inspect."""
import os
import shutil

import h5py
import numpy as np

from common import check, compare_h5, finish, mpirun, restamp_state, tmpdir, train

base = tmpdir()
ref = os.path.join(base, "ref")
MODEL = ["objective=ddpm", "conditioning=class", "sample_steps=4", "sample_epochs=1"]
r = train(2, ref, MODEL)
check(r.returncode == 0, f"reference run ({r.stderr[-300:]})")
ck = os.path.join(ref, "checkpoints", "ckpt-44.h5")


def chunk_span(path, name):
    """(byte offset, size) of a dataset's single chunk in the file."""
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(0)
        return info.byte_offset, info.size


def flip(path, offset):
    with open(path, "r+b") as fp:
        fp.seek(offset)
        b = fp.read(1)
        fp.seek(offset)
        fp.write(bytes([b[0] ^ 0x01]))


def damaged_copy(tag):
    p = os.path.join(base, f"{tag}.h5")
    shutil.copy(ck, p)
    return p


def diffmpi_lines(stderr):
    return [l for l in stderr.splitlines() if l.startswith("diffmpi:")]


inp = os.path.join(base, "in.h5")
with h5py.File(inp, "w") as f:
    f["x"] = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    f["t"] = np.full(3, 0.5, np.float32)
    f["c"] = np.arange(3).astype(np.int32)

# Intact: inspect counts every checksum (each dataset and the state).
with h5py.File(ck, "r") as f:
    ndatasets = []
    f.visititems(lambda n, o: ndatasets.append(n) if isinstance(o, h5py.Dataset) else None)
r = mpirun(1, ["inspect", ck])
check(r.returncode == 0 and f"all {len(ndatasets) + 1} checksums good" in r.stdout,
      f"inspect: all {len(ndatasets) + 1} checksums good ({r.stdout[-120:]!r})")
r = mpirun(1, ["predict", "--checkpoint", ck, "--input", inp, "--output",
               os.path.join(base, "y-intact.h5")])
check(r.returncode == 0, f"predict on the intact checkpoint ({r.stderr[-200:]})")

# The tests' copy of the state text (common.restamp_state) agrees with the
# C side: restamping an intact checkpoint changes nothing.
p = os.path.join(base, "restamped.h5")
shutil.copy(ck, p)
with h5py.File(ck, "r") as f:
    before = int(f.attrs["state_crc32"])
restamp_state(p)
with h5py.File(p, "r") as f:
    check(int(f.attrs["state_crc32"]) == before, "restamp_state computes the C side's CRC")

# One byte flipped inside each kind of tensor.
for kind, name in (("weight", "model/down1/1/weight"), ("bn", "model/inc/1/bn_running_mean"),
                   ("adam-m", "optim/m/inc/0/weight"), ("adam-v", "optim/v/outc/0/weight")):
    p = damaged_copy(kind)
    off, size = chunk_span(p, name)
    flip(p, off + size // 2)
    for cmd in (["predict", "--checkpoint", p, "--input", inp, "--output",
                 os.path.join(base, f"y-{kind}.h5")], ["inspect", p]):
        r = mpirun(1, cmd)
        lines = diffmpi_lines(r.stderr)
        check(r.returncode == 1 and len(lines) == 1 and p in lines[0] and name in lines[0]
              and "checksum" in lines[0],
              f"{kind}: {cmd[0]} exits 1 with one line naming the file and /{name} "
              f"({r.returncode}, {lines})")
    check(not os.path.exists(os.path.join(base, f"y-{kind}.h5")),
          f"{kind}: predict wrote no output")

# A training-state attribute changed (a stray writer): the state checksum.
for attr, value in (("step", 43), ("lr", 0.5)):
    p = damaged_copy(f"attr-{attr}")
    with h5py.File(p, "r+") as f:
        f.attrs[attr] = value
    r = mpirun(1, ["inspect", p])
    lines = diffmpi_lines(r.stderr)
    check(r.returncode == 1 and len(lines) == 1 and "training state" in lines[0]
          and "checksum" in lines[0],
          f"state attribute {attr} changed: inspect names the state ({lines})")

# Truncated file, and a zeroed page inside the largest tensor.
p = damaged_copy("truncated")
os.truncate(p, int(os.path.getsize(p) * 0.6))
r = mpirun(1, ["predict", "--checkpoint", p, "--input", inp, "--output",
               os.path.join(base, "y-trunc.h5")])
lines = diffmpi_lines(r.stderr)
check(r.returncode == 1 and len(lines) == 1 and p in lines[0],
      f"truncated checkpoint: exit 1, one line ({lines})")
p = damaged_copy("zeroed")
off, size = chunk_span(p, "model/down2/1/weight")
page = (off + size // 2) // 4096 * 4096
with open(p, "r+b") as fp:
    fp.seek(page)
    fp.write(bytes(4096))
r = mpirun(1, ["inspect", p])
lines = diffmpi_lines(r.stderr)
check(r.returncode == 1 and len(lines) == 1 and "checksum" in lines[0],
      f"zeroed page: inspect exit 1 naming a damaged tensor ({lines})")

# --resume PATH refuses a damaged file.
out = os.path.join(base, "stop")
r = train(2, out, MODEL, env_extra={"DIFFMPI_TEST_STOP_AT_STEP": "30"})
check(r.returncode == 3, f"run stopped at step 30 (rc {r.returncode})")
newest = os.path.join(out, "checkpoints", "ckpt-30.h5")
off, size = chunk_span(newest, "model/up1/1/weight")
flip(newest, off + size // 3)
r = train(2, out, MODEL, resume=newest)
lines = diffmpi_lines(r.stderr)
check(r.returncode == 1 and any("model/up1/1/weight" in l and "checksum" in l for l in lines),
      f"--resume PATH refuses the damaged checkpoint ({r.returncode}, {lines[:2]})")

# --resume auto: names the damaged newest, resumes from the newest intact
# one, and ends as the uninterrupted run did.
r = train(2, out, MODEL, resume="auto")
check(r.returncode == 0, f"--resume auto past a damaged newest checkpoint ({r.stderr[-300:]})")
check("ckpt-30.h5 is damaged" in r.stderr and "resuming from" in r.stderr
      and "ckpt-25.h5" in r.stderr,
      f"warns naming ckpt-30 and resumes from ckpt-25 ({diffmpi_lines(r.stderr)})")
for f in ("checkpoints/ckpt-44.h5", "log.h5", "samples.h5"):
    bad = compare_h5(os.path.join(ref, f), os.path.join(out, f))
    check(not bad, f"resumed past the damaged checkpoint: {f} bitwise equal ({bad[:4]})")

# Damaged while written: caught before pruning, the older ones stay.
out = os.path.join(base, "badwrite")
r = train(2, out, MODEL + ["keep=2"], env_extra={"DIFFMPI_TEST_CKPT_DAMAGE": "15"})
lines = diffmpi_lines(r.stderr)
check(r.returncode == 1 and any("does not read back intact" in l for l in lines),
      f"a checkpoint damaged as written fails the run ({r.returncode}, {lines[-2:]})")
have = sorted(os.listdir(os.path.join(out, "checkpoints")))
check("ckpt-5.h5" in have and "ckpt-10.h5" in have,
      f"the two previous checkpoints are kept ({have})")
r = train(2, out, MODEL + ["keep=2"], resume="auto")
check(r.returncode == 0 and "ckpt-10.h5" in r.stderr, "resumes from ckpt-10")
bad = compare_h5(ck, os.path.join(out, "checkpoints", "ckpt-44.h5"))
check(not bad, f"and ends bitwise equal to the uninterrupted run ({bad[:4]})")

# A checkpoint from before checksums: contiguous datasets, format version 1,
# no state checksum. It loads with one warning and gives the same output.
old = os.path.join(base, "v1.h5")
with h5py.File(ck, "r") as src, h5py.File(old, "w") as dst:
    def copy(name, obj):
        if isinstance(obj, h5py.Dataset):
            dst.create_dataset(name, data=obj[()])
    src.visititems(copy)
    for k, v in src.attrs.items():
        if k != "state_crc32":
            dst.attrs[k] = v
    dst.attrs["format_version"] = 1
r = mpirun(1, ["predict", "--checkpoint", old, "--input", inp, "--output",
               os.path.join(base, "y-v1.h5")])
lines = diffmpi_lines(r.stderr)
check(r.returncode == 0 and len(lines) == 1 and "without checksums" in lines[0],
      f"a version 1 checkpoint loads with one warning ({r.returncode}, {lines})")
if r.returncode == 0:
    with h5py.File(os.path.join(base, "y-v1.h5"), "r") as a, \
            h5py.File(os.path.join(base, "y-intact.h5"), "r") as b:
        check(np.array_equal(a["y"][()], b["y"][()]), "and gives the same output")
r = mpirun(1, ["inspect", old])
check(r.returncode == 0 and "checksums: none" in r.stdout, "inspect says it has no checksums")

# samples.h5: a flipped byte is found by inspect.
sp = os.path.join(base, "samples.h5")
shutil.copy(os.path.join(ref, "samples.h5"), sp)
with h5py.File(sp, "r") as f:
    names = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.size else None)
target = next(n for n in names if "images" in n)
off, size = chunk_span(sp, target)
flip(sp, off + size // 2)
r = mpirun(1, ["inspect", sp])
lines = diffmpi_lines(r.stderr)
check(r.returncode == 1 and len(lines) == 1 and target in lines[0],
      f"samples.h5 with a flipped byte: inspect names /{target} ({lines})")
r = mpirun(1, ["inspect", os.path.join(ref, "log.h5")])
check(r.returncode == 0 and "checksums good" in r.stdout, "inspect verifies the log")
finish()
