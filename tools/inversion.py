#!/usr/bin/env python3
"""What a deterministic sampler can do that an ancestral one cannot: map
images to their noise and back, and walk between two noises.

1. Reconstruction: the first N MNIST test digits (with their labels, for
   class models) are inverted by `diffmpi invert` and redrawn by `diffmpi
   sample --noise` with the same sampler and steps; for every number of
   steps asked for, the mean squared error per pixel between digit and
   redrawn digit (mean, median and 90th percentile over the digits) and the
   wall time of both walks. DIR/reconstruct-S.h5 holds the inverted noise
   and DIR/redrawn-S.h5 the redrawn digits; DIR/inversion.h5 the table.
2. Interpolation: for each row (class models: the digit 0..9; time models:
   10 pairs) two noises drawn from --seed, and --cols noises between them
   on the great circle (spherical interpolation, norms kept), sampled with
   the largest number of steps into DIR/interpolation.h5.
   The table is written after every number of steps; a later run into the
   same DIR for the same checkpoint, digits and guidance keeps its rows
   (and their redrawn digits) instead of measuring them again.

`tools/figures.py --inversion DIR --out FIGDIR` draws both. Prints the
reconstruction table as Markdown (docs/sampling.md).

usage: tools/inversion.py CHECKPOINT --out DIR [--n 1000] [--steps 10,20,50,100]
           [--guidance G] [--cols 8] [--seed 0] [--np 2] [--data data/mnist]
           [--bin build/diffmpi]
"""
import argparse
import os
import re
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diffmpi_cli import run  # noqa: E402

ROW = np.dtype([("steps", "i4"), ("n", "i4"), ("mse_mean", "f8"), ("mse_median", "f8"),
                ("mse_p90", "f8"), ("seconds", "f8")])


def test_digits(data, n):
    try:
        img = np.fromfile(os.path.join(data, "t10k-images-idx3-ubyte"), np.uint8)[16:]
        lab = np.fromfile(os.path.join(data, "t10k-labels-idx1-ubyte"), np.uint8)[8:]
    except OSError as exc:
        sys.exit(f"inversion: {data}: {exc.strerror} (tools/fetch_mnist.sh fetches MNIST)")
    img = img.reshape(-1, 28, 28)[:n].astype(np.float32) / 255.0
    return img, lab[:n].astype(np.int32)


def seconds(out):
    m = re.search(r" in ([0-9.]+) s\n", out)
    return float(m.group(1)) if m else float("nan")


def slerp(a, b, w):
    """Points on the great circle from a to b (flattened), w in [0, 1]."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    om = np.arccos(np.clip(np.dot(a / na, b / nb), -1.0, 1.0))
    if om < 1e-6:
        return (1 - w) * a + w * b
    return (np.sin((1 - w) * om) * a + np.sin(w * om) * b) / np.sin(om)


def write_table(path, rows, a):
    """The table so far, replacing the file whole (a run stopped between step
    counts keeps what it measured; --steps again reuses those rows)."""
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        f["rows"] = np.array(sorted(rows, key=lambda r: r[0]), ROW)
        f.attrs["checkpoint"] = a.checkpoint
        f.attrs["n"] = a.n
        f.attrs["guidance"] = np.nan if a.guidance is None else a.guidance
        f.attrs["largest_steps"] = max(r[0] for r in rows)
    os.replace(tmp, path)


def earlier_rows(path, a):
    """Rows of an earlier run into the same DIR for the same checkpoint,
    digits and guidance: {steps: row}."""
    try:
        with h5py.File(path, "r") as f:
            same = (f.attrs.get("checkpoint") == a.checkpoint and f.attrs.get("n") == a.n and
                    np.array_equal(f.attrs.get("guidance", np.nan),
                                   np.nan if a.guidance is None else a.guidance,
                                   equal_nan=True))
            return {int(r["steps"]): tuple(r) for r in f["rows"][()]} if same else {}
    except (OSError, KeyError):
        return {}


def main():
    ap = argparse.ArgumentParser(prog="inversion.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True, metavar="DIR")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", default="10,20,50,100")
    ap.add_argument("--guidance", type=float, default=None,
                    help="both walks' guidance (default: the run's)")
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--data", default="data/mnist")
    ap.add_argument("--bin", default="build/diffmpi")
    a = ap.parse_args()
    try:
        steps = [int(x) for x in a.steps.split(",")]
    except ValueError:
        ap.error("--steps takes comma-separated integers")
    if not (1 <= a.n <= 10000 and min(steps) >= 1 and a.cols >= 2 and a.np >= 1):
        ap.error("--n in 1..10000, --steps >= 1, --cols >= 2, --np >= 1")
    os.makedirs(a.out, exist_ok=True)
    img, lab = test_digits(a.data, a.n)
    digits = os.path.join(a.out, "digits.h5")
    with h5py.File(digits, "w") as f:
        f["images"], f["labels"] = img, lab
    g = [] if a.guidance is None else ["--guidance", a.guidance]
    table = os.path.join(a.out, "inversion.h5")
    kept = earlier_rows(table, a)
    rows = []
    for s in steps:
        inv, red = (os.path.join(a.out, f"{k}-{s}.h5") for k in ("reconstruct", "redrawn"))
        if s in kept and os.path.exists(inv) and os.path.exists(red):
            rows.append(kept[s])
            print(f"{s} steps: kept from {table} (reconstruction MSE {kept[s][2]:.3g})",
                  flush=True)
            continue
        t = seconds(run("inversion", a.bin, a.np, ["invert", "--checkpoint", a.checkpoint,
                                                     "--input", digits, "--output", inv,
                                                     "--steps", s] + g))
        with h5py.File(inv, "r") as f:
            smp = ["--sampler", f.attrs["sampler"]]  # the one invert ran backwards
        t += seconds(run("inversion", a.bin, a.np, ["sample", "--checkpoint", a.checkpoint,
                                                      "--out", red, "--noise", inv,
                                                      "--steps", s] + smp + g))
        with h5py.File(red, "r") as f:
            back = f["images"][()]
        mse = ((back - img) ** 2).reshape(a.n, -1).mean(axis=1)
        rows.append((s, a.n, mse.mean(), np.median(mse), np.percentile(mse, 90), t))
        print(f"{s} steps: reconstruction MSE {mse.mean():.3g} (median {np.median(mse):.3g}),"
              f" {t:.1f} s", flush=True)
        kept[s] = rows[-1]
        write_table(table, list(kept.values()), a)
    # Interpolation between two noises per row, sampled with the most steps.
    with h5py.File(os.path.join(a.out, f"reconstruct-{max(steps)}.h5"), "r") as f:
        cls = bool(np.any(f["labels"][()] >= 0))
        smp = ["--sampler", f.attrs["sampler"]]
    rng = np.random.default_rng(a.seed)
    noise, labels = [], []
    for r in range(10):
        x0, x1 = rng.standard_normal((2, 784))
        for w in np.linspace(0, 1, a.cols):
            noise.append(slerp(x0, x1, w))
            labels.append(r if cls else -1)
    inoise = os.path.join(a.out, "interpolation-noise.h5")
    with h5py.File(inoise, "w") as f:
        f["noise"] = np.array(noise, np.float32).reshape(-1, 1, 28, 28)
        f["labels"] = np.array(labels, np.int32)
        f.attrs["cols"] = a.cols
    run("inversion", a.bin, a.np, ["sample", "--checkpoint", a.checkpoint, "--out",
                                   os.path.join(a.out, "interpolation.h5"), "--noise", inoise,
                                   "--steps", max(steps)] + smp + g)
    print("| steps | digits | reconstruction MSE, mean | median | 90th percentile | "
          "seconds (invert + redraw) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3g} | {r[3]:.3g} | {r[4]:.3g} | {r[5]:.1f} |")


if __name__ == "__main__":
    main()
