#!/usr/bin/python3
"""The sanity rows of docs/score.md: what the judge's figures are for real
MNIST digits (the floor), for uniform noise and for blurred digits (towards
the ceiling), each over several disjoint draws, so that a reader can tell
which differences are real.

usage: tools/score_sanity.py JUDGE.h5 WORKDIR [--np N] [--folds K] [--rows R,...]

  real digits   fold k: the k-th 1000 test images scored against the other
                9000 (--ref), k = 0..K-1 (default 10)
  noise         1000 images of uniform noise (K seeds), against all 10000
  blur s        fold k's digits blurred with a Gaussian of sigma s pixels
                (s = 1, 2), against the other 9000
  train200      200 training digits (20 of each, draw k) against the 10000
                test digits: the floor of a score made during training
                (judge = ..., score_n = 200)
--rows picks some of real, blur1, blur2, noise, train200 (default all).
Prints one Markdown table row per kind: the mean and the spread (sample
standard deviation over the folds or seeds, and min..max) of accuracy and
Frechet distance. Runs `diffmpi score` (DIFFMPI, default build/diffmpi)
under mpirun with N ranks (default 2)."""
import argparse
import os
import subprocess
import sys

import h5py
import numpy as np
import scipy.ndimage

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def idx(path, offset, shape):
    raw = open(path, "rb").read()
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def score(args, samples, ref=None):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_plm_rsh_agent="false", OPENBLAS_NUM_THREADS="1")
    out = samples + ".score.h5"
    cmd = ["mpirun", "--oversubscribe", "-np", str(args.np),
           os.environ.get("DIFFMPI", os.path.join(SRC, "build", "diffmpi")), "score",
           "--judge", args.judge, "--samples", samples, "--out", out]
    cmd += ["--ref", ref] if ref else ["--data", args.data]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"score_sanity: {' '.join(cmd)} failed:\n{r.stderr}")
    with h5py.File(out, "r") as f:
        return float(f.attrs["accuracy"]), float(f.attrs["frechet_distance"])


def write(path, images, labels=None):
    with h5py.File(path, "w") as f:
        f["images"] = images.astype(np.float32)
        if labels is not None:
            f["labels"] = labels.astype(np.int32)


def row(name, vals):
    a = np.array([v[0] for v in vals])
    d = np.array([v[1] for v in vals])
    sd = lambda x: x.std(ddof=1) if len(x) > 1 else float("nan")  # noqa: E731
    print(f"| {name} | {len(vals)} | {a.mean():.4f} ± {sd(a):.4f} ({a.min():.4f}..{a.max():.4f}) "
          f"| {d.mean():.3f} ± {sd(d):.3f} ({d.min():.3f}..{d.max():.3f}) |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("judge")
    p.add_argument("workdir")
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--data", default=os.path.join(SRC, "data", "mnist"))
    p.add_argument("--rows", default="real,blur1,blur2,noise,train200")
    args = p.parse_args()
    rows = args.rows.split(",")
    os.makedirs(args.workdir, exist_ok=True)
    x = idx(os.path.join(args.data, "t10k-images-idx3-ubyte"), 16, (-1, 28, 28)) / 255.0
    y = idx(os.path.join(args.data, "t10k-labels-idx1-ubyte"), 8, (-1,)).astype(np.int32)
    w = lambda name: os.path.join(args.workdir, name)  # noqa: E731
    print("| images | draws | judge accuracy: mean ± sd (min..max) "
          "| Fréchet distance: mean ± sd (min..max) |\n|---|---|---|---|", flush=True)
    kinds = {"real": ("real test digits vs the other 9000", None),
             "blur1": ("blurred, sigma 1 px", 1.0), "blur2": ("blurred, sigma 2 px", 2.0)}
    for key, (name, blur) in kinds.items():
        if key not in rows:
            continue
        vals = []
        for k in range(args.folds):
            sel = np.zeros(len(x), bool)
            sel[k * 1000:(k + 1) * 1000] = True
            imgs = x[sel]
            if blur:
                imgs = np.stack([scipy.ndimage.gaussian_filter(im, blur) for im in imgs])
            write(w(f"ref-{k}.h5"), x[~sel])
            write(w(f"set-{k}.h5"), imgs, y[sel])
            vals.append(score(args, w(f"set-{k}.h5"), w(f"ref-{k}.h5")))
        row(name, vals)
    if "noise" in rows:
        vals = []
        for k in range(args.folds):
            noise = np.random.default_rng(k).random((1000, 28, 28))
            write(w(f"noise-{k}.h5"), noise, y[:1000])
            vals.append(score(args, w(f"noise-{k}.h5")))
        row("uniform noise (labels of 1000 test digits), vs all 10000", vals)
    if "train200" in rows:
        xt = idx(os.path.join(args.data, "train-images-idx3-ubyte"), 16, (-1, 28, 28)) / 255.0
        yt = idx(os.path.join(args.data, "train-labels-idx1-ubyte"), 8, (-1,)).astype(np.int32)
        vals = []
        for k in range(args.folds):
            pick = np.concatenate([np.flatnonzero(yt == d)[20 * k:20 * (k + 1)]
                                   for d in range(10)])
            write(w(f"train200-{k}.h5"), xt[pick], yt[pick])
            vals.append(score(args, w(f"train200-{k}.h5")))
        row("200 training digits (20 of each) vs the 10000 test digits", vals)


if __name__ == "__main__":
    main()
