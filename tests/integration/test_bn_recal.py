"""bn_recalibrate = K: BatchNorm statistics recomputed at every epoch end.

 - Against PyTorch: a denoiser with sigma = 0 (its input is the image
   itself) on 48 training images. With one batch of all 48 and K = 1 the
   stored running mean and variance equal the batch statistics PyTorch
   computes on those images with the checkpoint's weights (train mode,
   unbiased variance), in every BatchNorm, for the weights and, with
   ema_decay, for their average under /ema. With two batches of 24 and
   K = 2 the stored mean is the mean over all 48 (the two batches
   averaged, not the last one, not an exponential average).
 - Only the statistics change: the weights and Adam's state of a class DDPM
   with K = 3 are bitwise those of the run without; its running statistics
   and test loss are not.
 - The same bits on 1, 2 and 3 ranks, and stopped on 1 rank (at an epoch
   end and one step before it) then resumed on 2 and 3 ranks.
 - norm = group with bn_recalibrate is refused with one line (exit 2)."""
import os

import h5py
import numpy as np

from common import DATA, SRC, check, compare_h5, datasets, finish, mpirun, tmpdir, train

import sys
sys.path.insert(0, os.path.join(SRC, "tools"))
import torch  # noqa: E402
import diffmpi_torch as dt  # noqa: E402

base = tmpdir()
torch.set_num_threads(1)


def last_ckpt(out):
    d = os.path.join(out, "checkpoints")
    names = sorted(os.listdir(d), key=lambda n: int(n[5:-3]))
    return os.path.join(d, names[-1])


def train_images(n):
    raw = np.fromfile(os.path.join(DATA, "train-images-idx3-ubyte"), dtype=np.uint8)[16:]
    return torch.tensor(raw[:n * 784].reshape(n, 1, 28, 28) / 255.0, dtype=torch.float32)


def torch_stats(path, x, weights="model"):
    """{checkpoint name of running mean/var: PyTorch's batch statistics of x}
    under the checkpoint's weights."""
    m = dt.load(path, weights=weights).double()
    saved = dt.BN_MOMENTUM
    dt.BN_MOMENTUM = 1.0  # running statistics := this batch's (unbiased var)
    try:
        m.train()
        with torch.no_grad():
            m(x.double())
    finally:
        dt.BN_MOMENTUM = saved
    return {weights + "/" + dt.checkpoint_name(k): v.numpy()
            for k, v in m.state_dict().items() if "running" in k}


def worst_rel(stored, ref, only="running_"):
    w = 0.0
    for k, v in ref.items():
        if only in k:
            w = max(w, float(np.abs(stored[k] - v).max() / (np.abs(v).max() + 1e-6)))
    return w


# ---- against PyTorch --------------------------------------------------------------
DEN = ["objective=denoise", "sigma=0", "train_limit=48", "epochs=1", "precision=fp32",
       "engine=openblas", "eval_limit=16"]
x48 = train_images(48)
for ema in (0, 1):
    extra = DEN + ["batch=48", "bn_recalibrate=1"] + (["ema_decay=0.9"] if ema else [])
    out = os.path.join(base, f"k1-ema{ema}")
    r = train(1, out, extra)
    check(r.returncode == 0, f"K=1 denoiser (ema {ema}) exits 0 ({r.stderr[-300:]})")
    check("BatchNorm statistics recomputed over 1 training batch " in r.stdout,
          "the run says it recomputed the statistics")
    ck = last_ckpt(out)
    stored = datasets(ck)
    for w in (("model", "ema") if ema else ("model",)):
        ref = torch_stats(ck, x48, w)
        check(len(ref) >= 2 * 10, f"{w}: {len(ref)} running tensors compared")
        e = worst_rel(stored, ref, "running_mean")
        check(e < 1e-4, f"{w}: running means = PyTorch's batch means of the 48 images "
              f"(worst rel {e:.1e})")
        e = worst_rel(stored, ref, "running_var")
        check(e < 1e-4, f"{w}: running variances = PyTorch's unbiased batch variances "
              f"(worst rel {e:.1e})")

# Two batches of 24: in the first BatchNorm (whose input, the first
# convolution of the image, does not depend on how the batch is split) the
# average of the two batch means is the mean over all 48. Deeper layers see
# inputs normalised per batch, so there the split matters.
def first_mean(ck):
    ref = torch_stats(ck, x48)
    k = next(k for k in ref if k.endswith("running_mean"))
    return worst_rel(datasets(ck), {k: ref[k]}), k


out = os.path.join(base, "k2")
r = train(1, out, DEN + ["batch=24", "bn_recalibrate=2"])
check(r.returncode == 0, f"K=2 denoiser exits 0 ({r.stderr[-300:]})")
e, name = first_mean(last_ckpt(out))
check(e < 1e-5, f"K=2: {name} = the mean over both batches (rel {e:.1e})")
# ... which the exponential average of the run without does not give.
out0 = os.path.join(base, "k0")
r = train(1, out0, DEN + ["batch=24"])
e0, _ = first_mean(last_ckpt(out0))
check(r.returncode == 0 and e0 > 100 * max(e, 1e-7),
      f"the check can fail: without recalibration the means differ (worst rel {e0:.1e})")

# ---- only the statistics change; any rank count; resume ----------------------------
DDPM = ["objective=ddpm", "conditioning=class", "sample_steps=6", "sample_epochs=1",
        "train_limit=96", "epochs=2", "bn_recalibrate=3"]
runs = {}
for p in (1, 2, 3):
    runs[p] = os.path.join(base, f"ddpm-p{p}")
    r = train(p, runs[p], DDPM)
    check(r.returncode == 0, f"class DDPM K=3 on {p} rank(s) exits 0 ({r.stderr[-300:]})")
plain = os.path.join(base, "ddpm-k0")
r = train(1, plain, DDPM[:-1])
check(r.returncode == 0, "class DDPM K=0 exits 0")
a, b = datasets(last_ckpt(runs[1])), datasets(last_ckpt(plain))
weights = [k for k in a if k.startswith(("model/", "adam/")) and "running" not in k]
stats = [k for k in a if "running" in k]
check(len(weights) > 20 and all(np.array_equal(a[k], b[k]) for k in weights),
      f"weights and Adam state bitwise those of the run without ({len(weights)} tensors)")
check(len(stats) > 10 and all(not np.array_equal(a[k], b[k]) for k in stats),
      f"every running statistic differs from the run without ({len(stats)} tensors)")
with h5py.File(os.path.join(runs[1], "log.h5"), "r") as f1, \
        h5py.File(os.path.join(plain, "log.h5"), "r") as f0:
    check(np.array_equal(f1["train/loss"][()], f0["train/loss"][()]) and
          not np.array_equal(f1["eval/test_loss"][()], f0["eval/test_loss"][()]),
          "training losses equal, test losses differ")
for p in (2, 3):
    for name in ("log.h5", "samples.h5", os.path.join("checkpoints", "ckpt-8.h5")):
        bad = compare_h5(os.path.join(runs[1], name), os.path.join(runs[p], name))
        check(not bad, f"K=3 P={p} {name} bitwise equal to P=1 ({bad[:4]})")

# 96 images in batches of 24: 4 steps per epoch. Stop at step 4 (the epoch
# end: the checkpoint holds the recomputed statistics) and at step 3.
for stop, p in ((4, 2), (3, 3)):
    out = os.path.join(base, f"stop{stop}")
    r = train(1, out, DDPM, env_extra={"DIFFMPI_TEST_STOP_AT_STEP": str(stop)})
    check(r.returncode != 0 and "resume with --resume auto" in r.stdout,
          f"stopped at step {stop}")
    r = train(p, out, DDPM, resume="auto")
    check(r.returncode == 0, f"resumed on {p} ranks exits 0 ({r.stderr[-300:]})")
    for name in ("log.h5", os.path.join("checkpoints", "ckpt-8.h5")):
        bad = compare_h5(os.path.join(runs[1], name), os.path.join(out, name))
        check(not bad, f"stopped at {stop}, resumed on {p}: {name} bitwise equal ({bad[:4]})")

# ---- refused ----------------------------------------------------------------------
r = mpirun(1, ["train", "--out", os.path.join(base, "group"), "--set", "norm=group",
               "--set", "hidden=8", "--set", "norm_groups=4", "--set", "bn_recalibrate=2",
               "--set", "data_dir=" + DATA])
lines = [x for x in r.stderr.splitlines() if x.startswith("diffmpi")]
check(r.returncode == 2 and len(lines) == 1 and "bn_recalibrate" in lines[0]
      and "norm = group" in lines[0], f"norm = group refused with one line ({lines[:2]})")

finish()
