"""Diffusion runs, read back with h5py: samples, training-batch
visualisation, trajectory and conditioning parameters; `diffmpi sample`
reproduces the run's own samples bit for bit and gives the same images on 1
and 2 ranks, and prints its progress at the pace --log-every asks; `predict` with /t and /c; the figure tool on a real run."""
import os
import subprocess

import h5py
import numpy as np

from common import SRC, check, finish, mpirun, tmpdir, train

D = 8
base = tmpdir()
out = os.path.join(base, "class")
model = ["objective=ddpm", "conditioning=class", "sample_steps=10", "sample_epochs=1"]
r = train(2, out, model)
check(r.returncode == 0, f"tiny class-DDPM run on 2 ranks ({r.stderr[-300:]})")
ck = os.path.join(out, "checkpoints", "ckpt-44.h5")

with h5py.File(ck, "r") as f:
    shapes = {"t1/fc1/weight": (2 * D, 1), "t1/fc2/weight": (2 * D, 2 * D),
              "t2/fc1/weight": (D, 1), "c1/fc1/weight": (2 * D, 10),
              "c2/fc2/weight": (D, D), "c2/fc2/bias": (D,)}
    for name, shape in shapes.items():
        check(f[f"model/{name}"].shape == shape, f"/model/{name} {shape}")
        check(f[f"optim/m/{name}"].shape == shape, f"/optim/m/{name}")
    check(f.attrs["objective"] == "ddpm" and f.attrs["conditioning"] == "class",
          "objective/conditioning attrs")

with h5py.File(os.path.join(out, "samples.h5"), "r") as f:
    for ep in (1, 2):
        g = f[f"samples/epoch_{ep:04d}"]
        check(g["images"].shape == (40, 28, 28) and g["images"].dtype == np.float32,
              f"/samples/epoch_{ep:04d}/images [40,28,28]")
        check(list(g["labels"][()]) == [i // 4 for i in range(40)], "4 samples of each digit")
        check(g.attrs["guidance"] == 5 and g.attrs["steps"] == 10 and g.attrs["seed"] == 0
              and g.attrs["sampler"] == "ddpm" and g.attrs["evaluations"] == 10
              and g.attrs["spacing"] == "uniform" and g.attrs["eta"] == 0,
              "sampling attrs (guidance, steps, seed, sampler, evaluations, spacing, eta)")
        v = f[f"batch_vis/epoch_{ep:04d}"]
        check(all(v[k].shape == (8, 28, 28) for k in ("x0", "xt", "x0_hat")) and
              v["t"].shape == (8,), "batch visualisation datasets")
    ts = f["batch_vis/epoch_0002/t"][()]
    check(np.all(np.diff(ts) > 0) and ts[0] >= 0 and ts[-1] < 1, f"batch vis times {ts}")
    tr = f["trajectory/images"]
    check(tr.shape == (11, 40, 28, 28) and f["trajectory"].attrs["epoch"] == 2,
          "trajectory of the last epoch, every one of its 10 steps [11,40,28,28]")
    tt = f["trajectory/t"][()]
    want = np.array([((299 * (9 - i) + 4) // 9) / 300 for i in range(10)] + [-1 / 300],
                    np.float32)
    check(np.array_equal(tt, want),
          f"trajectory times: the network time of each step, 299/300 to 0, then -1/300 ({tt})")
    check(np.array_equal(tr[-1], f["samples/epoch_0002/images"][()]),
          "last trajectory frame is the final sample")
    run_samples = f["samples/epoch_0002/images"][()]
    vis = {k: f[f"batch_vis/epoch_0002/{k}"][()] for k in ("xt", "t", "x0_hat")}
for png in ("samples-epoch-1.png", "samples-epoch-2.png", "batch-epoch-1.png",
            "batch-epoch-2.png"):
    check(os.path.exists(os.path.join(out, png)), f"{png} written")

# ---- diffmpi sample ----------------------------------------------------------
res = {}
for p in (1, 2):
    path = os.path.join(base, f"s{p}.h5")
    r = mpirun(p, ["sample", "--checkpoint", ck, "--out", path, "--steps", "10"])
    check(r.returncode == 0 and "sampled 40 images" in r.stdout, f"sample on {p} rank(s)")
    with h5py.File(path, "r") as f:
        res[p] = f["images"][()]
        check(list(f["labels"][()]) == [i // 4 for i in range(40)], "default labels")
check(res[1].tobytes() == res[2].tobytes(), "sample: 1 and 2 ranks give the same bits")
check(res[1].tobytes() == run_samples.tobytes(),
      "sample reproduces the run's epoch-2 samples bit for bit")
path = os.path.join(base, "k3.h5")
r = mpirun(2, ["sample", "--checkpoint", ck, "--out", path, "--n", "7", "--class", "3",
               "--steps", "6", "--guidance", "2", "--seed", "9", "--trajectory"])
check(r.returncode == 0, "sample --class 3 --trajectory")
with h5py.File(path, "r") as f:
    check(list(f["labels"][()]) == [3] * 7, "--class 3 labels")
    check(f["trajectory"].shape == (7, 7, 28, 28) and f["trajectory_t"].shape == (7,),
          "--trajectory keeps steps+1 frames")
    check(f.attrs["guidance"] == 2 and f.attrs["seed"] == 9 and f.attrs["steps"] == 6,
          "attrs record guidance, seed, steps")
    check(np.all(np.isfinite(f["images"][()])), "samples finite")
check(os.path.exists(path + ".png"), "sample grid PNG beside the file")
r = mpirun(2, ["sample", "--checkpoint", ck, "--out", os.path.join(base, "p.h5"), "--n", "4",
               "--steps", "5", "--log-every", "0"])
lines = [ln for ln in r.stdout.splitlines() if ln.startswith("sampling 4 images: step ")]
check(r.returncode == 0 and [ln.split()[-1] for ln in lines] == [f"{i}/5" for i in range(5)],
      f"sample --log-every 0: one progress line per step from rank 0 ({lines})")
r = mpirun(1, ["sample", "--checkpoint", ck, "--out", os.path.join(base, "q.h5"), "--n", "4",
               "--steps", "5"])
check(r.returncode == 0 and "step" not in r.stdout.replace("steps", ""),
      "sample: no progress line within the run's log_every")
r = mpirun(1, ["sample", "--checkpoint", ck, "--out", os.path.join(base, "q.h5"),
               "--log-every", "-1"])
check(r.returncode == 2 and "--log-every" in r.stderr, "sample --log-every -1: usage error")

# ---- predict with /t and /c -------------------------------------------------
inp, outp = os.path.join(base, "in.h5"), os.path.join(base, "out.h5")
labels = np.array([5, 0, 4, 1, 9, 2, 1, 3], np.int32)   # first MNIST training labels
with h5py.File(inp, "w") as f:
    f["x"] = vis["xt"].reshape(8, 1, 28, 28)
    f["t"] = vis["t"].astype(np.float32)
    f["c"] = labels
r = mpirun(1, ["predict", "--checkpoint", ck, "--input", inp, "--output", outp])
check(r.returncode == 0, f"predict on a class model ({r.stderr[-200:]})")
with h5py.File(outp, "r") as f:
    eps = f["y"][()].reshape(8, 28, 28)
abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 300))
ti = np.rint(vis["t"].astype(np.float64) * 300).astype(int)
a = np.sqrt(abar[ti]).astype(np.float32)[:, None, None]
b = np.sqrt(1 - abar[ti]).astype(np.float32)[:, None, None]
x0 = (vis["xt"] - b * eps) / a
check(np.allclose(x0, vis["x0_hat"], atol=1e-5),
      f"predict's eps gives the run's x0 estimate (max diff {np.abs(x0 - vis['x0_hat']).max():.2e})")
with h5py.File(inp, "a") as f:
    del f["t"]
r = mpirun(1, ["predict", "--checkpoint", ck, "--input", inp, "--output", outp])
check(r.returncode == 1 and "/t" in r.stderr, "predict without /t on a conditioned model fails")

# ---- the figure tool on a real run ------------------------------------------
figs = os.path.join(base, "figs")
r = subprocess.run(["/usr/bin/python3", os.path.join(SRC, "tools", "figures.py"), out,
                    "--out", figs, "--sample", path], capture_output=True, text=True)
check(r.returncode == 0, f"figures.py on a class run ({r.stderr[-300:]})")
for name in ("loss.png", "class_grid.png", "trajectory.gif", "sample_k3.png",
             "sample_k3.gif"):
    check(os.path.exists(os.path.join(figs, name)), f"figure {name}")
for name in ("samples-epoch-1.png", "samples-epoch-2.png", "batch-epoch-1.png",
             "batch-epoch-2.png"):       # drawn by diffmpi train, copied
    with open(os.path.join(out, name), "rb") as a, open(os.path.join(figs, name), "rb") as b:
        check(a.read() == b.read(), f"figure {name} is the run's PNG byte for byte")
check(sorted(os.listdir(figs)) == sorted(
    ["loss.png", "class_grid.png", "trajectory.gif", "sample_k3.png", "sample_k3.gif",
     "samples-epoch-1.png", "samples-epoch-2.png", "batch-epoch-1.png",
     "batch-epoch-2.png"]), f"no other figures ({sorted(os.listdir(figs))})")
finish()
