"""What rank 0 writes, read back with h5py: checkpoint names, shapes, dtypes
and attributes; the log; samples and PNGs. `predict` reproduces the denoised
samples bit for bit, `inspect` describes files, the loss falls, and
tools/figures.py copies the run's PNGs byte for byte."""
import os
import subprocess

import h5py
import numpy as np

from common import BIN, SRC, check, finish, mpirun, tmpdir, train

D = 8
base = tmpdir()
out = os.path.join(base, "run")
r = train(2, out)
check(r.returncode == 0, f"tiny run on 2 ranks ({r.stderr[-300:]})")
check("hidden = 8" in r.stdout, "resolved configuration printed at start")

# ---- checkpoint -------------------------------------------------------
units = {"inc/0": (D, 1, 3), "inc/1": (D, D, 3), "down1/0": (D, D, 3),
         "down1/1": (D, D, 3), "down1/2": (D, D, 3), "down2/0": (2 * D, D, 3),
         "down2/1": (2 * D, 2 * D, 3), "down2/2": (2 * D, 2 * D, 3),
         "unflatten": (2 * D, 2 * D, 7), "up1/0": (4 * D, D, 4),
         "up1/1": (D, D, 3), "up1/2": (D, D, 3), "up2/0": (2 * D, D, 4),
         "up2/1": (D, D, 3), "up2/2": (D, D, 3), "outc/0": (D, 2 * D, 3),
         "outc/1": (D, D, 3)}
transposed = {"unflatten", "up1/0", "up2/0"}
with h5py.File(os.path.join(out, "checkpoints", "ckpt-44.h5"), "r") as f:
    for u, (a, b, k) in units.items():
        cout = b if u in transposed else a
        want = {"weight": (a, b, k, k), "bias": (cout,), "bn_weight": (cout,),
                "bn_bias": (cout,), "bn_running_mean": (cout,),
                "bn_running_var": (cout,)}
        for leaf, shape in want.items():
            ds = f.get(f"model/{u}/{leaf}")
            check(ds is not None and ds.shape == shape and ds.dtype == np.float32,
                  f"/model/{u}/{leaf} float32 {shape}")
            if leaf in ("weight", "bias", "bn_weight", "bn_bias"):
                for o in ("m", "v"):
                    d2 = f.get(f"optim/{o}/{u}/{leaf}")
                    check(d2 is not None and d2.shape == shape,
                          f"/optim/{o}/{u}/{leaf}")
    check(f["model/head/weight"].shape == (1, D, 3, 3), "/model/head/weight [1,D,3,3]")
    check(f["model/head/bias"].shape == (1,), "/model/head/bias [1]")
    check("bn_weight" not in f["model/head"], "head has no BatchNorm")
    a = f.attrs
    check(a["format"] == "diffmpi-checkpoint" and a["format_version"] == 2, "format attrs")
    check("state_crc32" in a, "training state checksum attr")
    plain = []
    f.visititems(lambda n, o: plain.append(n)
                 if isinstance(o, h5py.Dataset) and not o.fletcher32 else None)
    check(not plain, f"every checkpoint dataset has HDF5's Fletcher32 checksum ({plain[:3]})")
    check(a["step"] == 44 and a["epoch"] == 2 and a["batch_in_epoch"] == 0 and
          a["adam_step"] == 44, "training state attrs")
    check(a["seed"] == 0 and abs(a["lr"] - 1e-3) < 1e-15, "seed and lr attrs")
    check("micro_batch = 4" in a["config"], "resolved config stored")
    rv = f["model/inc/1/bn_running_var"][()]
    check(np.all(rv > 0) and not np.allclose(rv, 1), "running variance was updated")

# ---- log ------------------------------------------------------------------
for name in ("log.h5", "samples.h5"):
    with h5py.File(os.path.join(out, name), "r") as f:
        plain = []
        f.visititems(lambda n, o: plain.append(n)
                     if isinstance(o, h5py.Dataset) and o.size and not o.fletcher32 else None)
        check(not plain, f"{name}: every non-empty dataset has a Fletcher32 checksum ({plain[:3]})")
with h5py.File(os.path.join(out, "log.h5"), "r") as f:
    t = f["train"]
    types = {"step": np.int64, "epoch": np.int32, "loss": np.float64,
             "lr": np.float64, "time": np.float64, "images_per_sec": np.float64}
    for name, ty in types.items():
        check(t[name].dtype == ty and t[name].shape == (44,), f"/train/{name} {ty.__name__} [44]")
        check(t[name].chunks is not None and t[name].maxshape == (None,),
              f"/train/{name} chunked and extendible")
    loss = t["loss"][()]
    check(np.all(np.isfinite(loss)), "losses finite")
    check(loss[-5:].mean() < 0.5 * loss[:5].mean(),
          f"loss falls: first {loss[:5].mean():.4f} last {loss[-5:].mean():.4f}")
    check(list(t["epoch"][()][[0, 21, 22, 43]]) == [1, 1, 2, 2], "epoch column")
    check(np.all(np.diff(t["time"][()]) >= 0), "wall time increases")
    e = f["eval"]
    check(list(e["epoch"][()]) == [1, 2] and list(e["step"][()]) == [22, 44], "eval rows")
    mse = e["test_mse"][()]
    check(np.all(mse > 0) and mse[1] < mse[0], f"test MSE falls {mse}")
    check(f.attrs["eval_sigma"] == 0.5, "eval sigma attr")

# ---- samples -------------------------------------------------------------
with h5py.File(os.path.join(out, "samples.h5"), "r") as f:
    check(f["noising/images"].shape == (7, 8, 28, 28), "/noising/images [7,8,28,28]")
    check(list(f["noising"].attrs["sigmas"]) == [0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0],
          "noising sigmas")
    nz = f["noising/images"][()]
    check(np.array_equal(nz[0], nz[0]) and np.abs(nz[6] - nz[0]).mean() > 0.3,
          "sigma 1.0 row is noisier than sigma 0")
    for ep in (1, 2):
        g = f[f"denoise/epoch_{ep:04d}"]
        for k in ("clean", "noisy", "denoised"):
            check(g[k].shape == (8, 28, 28) and g[k].dtype == np.float32,
                  f"/denoise/epoch_{ep:04d}/{k}")
    g = f["ood"]
    check(g["noisy"].shape == (7, 28, 28) and g["test_mse"].shape == (7,), "/ood datasets")
    sweep = g["test_mse"][()]
    # The sweep reuses the last epoch's test MSE at sigma 0.5 (same images, same
    # noise stream) instead of computing it again; it must sit among the others.
    check(sweep[3] == mse[-1], f"sweep at sigma 0.5 {sweep[3]} is the last epoch's {mse[-1]}")
    check(np.all(np.diff(sweep) > 0), f"sweep MSE rises with sigma {sweep}")
    noisy = f["denoise/epoch_0002/noisy"][()]
    den = f["denoise/epoch_0002/denoised"][()]
    clean = f["denoise/epoch_0002/clean"][()]
    check(((den - clean) ** 2).mean() < ((noisy - clean) ** 2).mean(),
          "denoised images are closer to the clean ones than the noisy ones")
c_pngs = ("noising.png", "denoise-epoch-1.png", "denoise-epoch-2.png", "ood.png")
for png in c_pngs:
    with open(os.path.join(out, png), "rb") as fp:
        check(fp.read(8) == b"\x89PNG\r\n\x1a\n", f"{png} is a PNG")

# ---- the figure tool: C's PNGs copied under their names, the rest drawn ----
r = subprocess.run(["/usr/bin/python3", os.path.join(SRC, "tools", "figures.py"), out],
                   capture_output=True, text=True)
check(r.returncode == 0, f"figures.py on a denoiser run ({r.stderr[-300:]})")
figs = os.path.join(out, "figures")
for png in c_pngs:
    with open(os.path.join(out, png), "rb") as a, open(os.path.join(figs, png), "rb") as b:
        check(a.read() == b.read(), f"figures/{png} is the run's PNG byte for byte")
drawn = ("loss.png", "noising_sigmas.png", "ood_mse.png")
for png in drawn:
    check(os.path.exists(os.path.join(figs, png)), f"figures/{png} drawn")
check(sorted(os.listdir(figs)) == sorted(c_pngs + drawn),
      f"no other figures ({sorted(os.listdir(figs))})")

# ---- predict -------------------------------------------------------------
inp, res = os.path.join(base, "in.h5"), os.path.join(base, "out.h5")
with h5py.File(inp, "w") as f:
    f["x"] = noisy.reshape(8, 1, 28, 28)
r = mpirun(2, ["predict", "--checkpoint", os.path.join(out, "checkpoints", "ckpt-44.h5"),
               "--input", inp, "--output", res])
check(r.returncode == 0, f"predict exits 0 ({r.stderr[-200:]})")
with h5py.File(res, "r") as f:
    y = f["y"][()]
check(y.shape == (8, 1, 28, 28) and y.dtype == np.float32, "predict /y [N,1,28,28] float32")
check(y.reshape(8, 28, 28).tobytes() == den.tobytes(),
      "predict reproduces the epoch-2 denoised samples bit for bit")

# ---- inspect and --help ---------------------------------------------------
r = subprocess.run([BIN, "inspect", os.path.join(out, "checkpoints", "ckpt-44.h5")],
                   capture_output=True, text=True)
check(r.returncode == 0 and "step: 44" in r.stdout and "/model/head/weight" in r.stdout,
      "inspect describes a checkpoint")
r = subprocess.run([BIN, "inspect", os.path.join(out, "log.h5")], capture_output=True, text=True)
check(r.returncode == 0 and "diffmpi-log" in r.stdout and "/train/loss" in r.stdout,
      "inspect describes a log")
for cmd in ([], ["train"], ["predict"], ["inspect"]):
    r = subprocess.run([BIN] + cmd + ["--help"], capture_output=True, text=True)
    check(r.returncode == 0 and "usage: diffmpi" in r.stdout, f"{' '.join(cmd) or 'diffmpi'} --help")
finish()
