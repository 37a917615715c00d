"""ema_decay: the weight average, end to end.

 - A class DDPM with ema_decay writes /ema/<name> beside every /model
   tensor, equal to a NumPy replay of the average (decay min(d, (1+t)/(10+t)))
   over the per-step weights of a run that checkpoints every step; without
   ema_decay no /ema is written.
 - The run is bitwise identical on 1 and 3 ranks, and stopped on 2 ranks then
   resumed on 3 it ends bitwise equal to the uninterrupted run (the average is
   restored, not restarted).
 - The training-time samples use the average: `diffmpi sample --weights ema`
   reproduces them bitwise, --weights raw gives other images; --weights ema on
   a checkpoint without an average is refused with one line (exit 2)."""
import os

import h5py
import numpy as np

from common import check, compare_h5, finish, mpirun, tmpdir, train

base = tmpdir()
DECAY = 0.9
MODEL = ["objective=ddpm", "conditioning=class", "sample_steps=6", "sample_epochs=2",
         f"ema_decay={DECAY}", "train_limit=96", "epochs=2"]


def ckpts(out):
    d = os.path.join(out, "checkpoints")
    names = sorted(os.listdir(d), key=lambda n: int(n[5:-3]))
    return [os.path.join(d, n) for n in names]


# ---- the average is what it says ------------------------------------------------
out = os.path.join(base, "every-step")
r = train(1, out, MODEL + ["checkpoint_every=1", "keep=100"])
check(r.returncode == 0, f"ema run exits 0 ({r.stderr[-300:]})")
files = ckpts(out)
with h5py.File(files[-1], "r") as f:
    names = []
    f["model"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    check(all(("ema/" + n) in f for n in names) and len(names) > 10,
          f"/ema holds every /model tensor ({len(names)})")
    steps = int(f.attrs["step"])


def model(path):
    with h5py.File(path, "r") as f:
        return {n: f["model/" + n][()] for n in names}, int(f.attrs["step"]), \
            {n: f["ema/" + n][()] for n in names}


# The first checkpoint is after step 1; replay from the initial weights:
# step 1's average is d1*w0 + (1-d1)*w1 and w0 is not stored, so start the
# replay from the stored average of step 1.
hist = [model(p) for p in files]
check([h[1] for h in hist] == list(range(1, steps + 1)), "one checkpoint per step")
avg = {n: hist[0][2][n].copy() for n in names}
worst = 0.0
for w, t, stored in hist[1:]:
    d = min(DECAY, (1 + t) / (10 + t))
    for n in names:
        avg[n] = (avg[n] - np.float32(1 - d) * (avg[n] - w[n])).astype(np.float32)
        scale = max(np.abs(stored[n]).max(), 1e-6)
        worst = max(worst, float(np.abs(avg[n] - stored[n]).max() / scale))
check(worst < 1e-5, f"/ema equals the replayed average over {steps} steps (worst rel {worst:.2e})")
last_w, _, last_ema = hist[-1]
check(any(not np.array_equal(last_w[n], last_ema[n]) for n in names),
      "the average differs from the weights")

plain = os.path.join(base, "plain")
r = train(1, plain, MODEL[:-3] + ["train_limit=96", "epochs=1"])
with h5py.File(ckpts(plain)[-1], "r") as f:
    check(r.returncode == 0 and "ema" not in f, "ema_decay = 0 writes no /ema")

# ---- rank-count independent, resumable ----------------------------------------------
runs = {}
for np_ in (1, 3):
    runs[np_] = os.path.join(base, f"ranks-{np_}")
    r = train(np_, runs[np_], MODEL)
    check(r.returncode == 0, f"ema run on {np_} rank(s) exits 0")
bad = compare_h5(ckpts(runs[1])[-1], ckpts(runs[3])[-1])
bad += compare_h5(os.path.join(runs[1], "samples.h5"), os.path.join(runs[3], "samples.h5"))
check(not bad, f"ema run bitwise equal on 1 and 3 ranks ({bad[:4]})")
res = os.path.join(base, "resumed")
r = train(2, res, MODEL, env_extra={"DIFFMPI_TEST_STOP_AT_STEP": "6"})
check(r.returncode == 3, f"stopped at step 6 exits 3 ({r.returncode})")
r = train(3, res, MODEL, resume="auto")
check(r.returncode == 0 and "holds no weight average" not in r.stderr,
      f"resumed on 3 ranks exits 0, the average restored ({r.stderr[-300:]})")
bad = compare_h5(ckpts(runs[1])[-1], ckpts(res)[-1])
bad += compare_h5(os.path.join(runs[1], "samples.h5"), os.path.join(res, "samples.h5"))
check(not bad, f"stopped on 2, resumed on 3: bitwise the uninterrupted run ({bad[:4]})")

# ---- samples use the average ---------------------------------------------------------
ck = ckpts(runs[1])[-1]
with h5py.File(os.path.join(runs[1], "samples.h5"), "r") as f:
    g = f["samples/epoch_0002"]
    train_imgs = g["images"][()]
got = {}
for w in ("ema", "raw"):
    o = os.path.join(base, f"sample-{w}.h5")
    r = mpirun(2, ["sample", "--checkpoint", ck, "--out", o, "--weights", w])
    check(r.returncode == 0 and f"{w.upper() if w == 'ema' else w} weights" in r.stdout,
          f"sample --weights {w} exits 0 and says so ({r.stdout[-200:]} {r.stderr[-200:]})")
    with h5py.File(o, "r") as f:
        got[w] = f["images"][()]
check(np.array_equal(got["ema"], train_imgs), "sample --weights ema reproduces the run's samples")
check(not np.array_equal(got["raw"], train_imgs), "sample --weights raw gives other images")
r = mpirun(1, ["sample", "--checkpoint", ckpts(plain)[-1], "--out",
               os.path.join(base, "x.h5"), "--weights", "ema"])
lines = [l for l in r.stderr.splitlines() if l.startswith("diffmpi:")]
check(r.returncode == 2 and len(lines) == 1 and "no EMA weights" in lines[0],
      f"--weights ema without an average: exit 2, one line ({r.returncode}, {lines})")

finish()
