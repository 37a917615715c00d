#!/usr/bin/env python3
"""Score a diffusion checkpoint's samplers against network evaluations.

For every sampler, number of network evaluations and seed asked for, draws
N images with `diffmpi sample` (class models: equal runs of each digit)
and scores them with `diffmpi score`: the judge's accuracy and Frechet
distance, and the wall time of the sampling alone. Each point is one row of
TABLE.h5 (`/rows`, a compound table), written as soon as it is measured:
a sweep stopped half-way goes on where it stopped when run again, and rows
already there are not redrawn. Then prints the table, mean +- standard
deviation over the seeds, as Markdown (docs/sampling.md); `tools/figures.py
--sweep TABLE.h5` draws it.

Network evaluations become steps per sampler: heun makes 2 per step and 1
for the last, so NFE E is (E + 1) // 2 steps (E - 1 evaluations when E is
even); the others make one per step.

usage: tools/sampler_sweep.py CHECKPOINT --judge J.h5 --out TABLE.h5
           [--samplers ddpm,ddim,dpmpp2m] [--nfe 10,15,20,30,50,100,300]
           [--seeds 0,1,2] [--n 200] [--np 2] [--spacing uniform|logsnr]
           [--bin build/diffmpi] [--print-only]
"""
import argparse
import os
import re
import sys
import tempfile

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diffmpi_cli import run  # noqa: E402

ROW = np.dtype([("sampler", "S16"), ("spacing", "S16"), ("steps", "i4"),
                ("evaluations", "i4"), ("seed", "i8"), ("n", "i4"),
                ("accuracy", "f8"), ("frechet_distance", "f8"), ("seconds", "f8")])


def steps_for(sampler, nfe):
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def read_rows(path):
    if not os.path.exists(path):
        return np.zeros(0, ROW)
    with h5py.File(path, "r") as f:
        if "rows" not in f:
            sys.exit(f"sampler_sweep: {path}: no /rows table (not a sweep file?)")
        return f["rows"][()].astype(ROW)


def write_rows(path, rows, attrs):
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        f["rows"] = rows
        for k, v in attrs.items():
            f.attrs[k] = v
    os.replace(tmp, path)


def measure(a, sampler, nfe, seed, tmp):
    steps = steps_for(sampler, nfe)
    smp = os.path.join(tmp, "s.h5")
    out = run("sampler_sweep", a.bin, a.np,
              ["sample", "--checkpoint", a.checkpoint, "--out", smp, "--n", a.n,
               "--sampler", sampler, "--steps", steps, "--spacing", a.spacing, "--seed", seed])
    m = re.search(r"network evaluations each.* in ([0-9.]+) s", out)
    if not m:
        sys.exit(f"sampler_sweep: no timing in the sample output:\n{out[-500:]}")
    with h5py.File(smp, "r") as f:
        evals = int(f.attrs["evaluations"])
    score = os.path.join(tmp, "score.h5")
    run("sampler_sweep", a.bin, a.np,
        ["score", "--judge", a.judge, "--samples", smp, "--out", score])
    with h5py.File(score, "r") as f:
        acc, fd = float(f.attrs["accuracy"]), float(f.attrs["frechet_distance"])
    return (sampler, a.spacing, steps, evals, seed, a.n, acc, fd, float(m.group(1)))


def summary(rows):
    """Markdown: one line per (sampler, spacing, evaluations), mean +- sd."""
    lines = ["| sampler | spacing | steps | network evaluations | seeds | accuracy | "
             "Frechet distance | seconds (N images) |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["sampler"], r["spacing"], int(r["evaluations"]), int(r["steps"]))
                   for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    for s, sp, e, st in keys:
        sel = rows[(rows["sampler"] == s) & (rows["spacing"] == sp) & (rows["evaluations"] == e)]

        def ms(x, d):
            if np.isnan(x).all():  # accuracy of a model without classes
                return "n/a"
            return f"{x.mean():.{d}f} ± {x.std(ddof=1):.{d}f}" if len(x) > 1 else f"{x[0]:.{d}f}"
        lines.append(f"| {s.decode()} | {sp.decode()} | {st} | {e} | {len(sel)} | "
                     f"{ms(sel['accuracy'], 3)} | {ms(sel['frechet_distance'], 2)} | "
                     f"{ms(sel['seconds'], 1)} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(prog="sampler_sweep.py",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--judge", required=True)
    ap.add_argument("--out", required=True, help="TABLE.h5 (rows are added)")
    ap.add_argument("--samplers", default="ddpm,ddim,dpmpp2m")
    ap.add_argument("--nfe", default="10,15,20,30,50,100,300")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--spacing", default="uniform", choices=("uniform", "logsnr"))
    ap.add_argument("--bin", default="build/diffmpi")
    ap.add_argument("--print-only", action="store_true",
                    help="print the table of TABLE.h5 and draw nothing")
    a = ap.parse_args()
    try:
        nfes = [int(x) for x in a.nfe.split(",")]
        seeds = [int(x) for x in a.seeds.split(",")]
    except ValueError:
        ap.error("--nfe and --seeds take comma-separated integers")
    if min(nfes) < 1 or min(seeds) < 0 or a.n < 2 or a.np < 1:
        ap.error("--nfe >= 1, --seeds >= 0, --n >= 2, --np >= 1")
    rows = read_rows(a.out)
    attrs = {"checkpoint": a.checkpoint, "judge": a.judge}
    todo = [] if a.print_only else [(s, e, k) for s in a.samplers.split(",") for e in nfes
                                    for k in seeds]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (s, e, k) in enumerate(todo):
            st = steps_for(s, e)
            done = ((rows["sampler"] == s.encode()) & (rows["spacing"] == a.spacing.encode())
                    & (rows["steps"] == st) & (rows["seed"] == k) & (rows["n"] == a.n))
            if done.any():
                continue
            row = np.array([measure(a, s, e, k, tmp)], ROW)
            rows = np.concatenate([rows, row])
            write_rows(a.out, rows, attrs)
            r = row[0]
            print(f"[{i + 1}/{len(todo)}] {s} {a.spacing} {st} steps ({r['evaluations']} "
                  f"evaluations), seed {k}: accuracy {r['accuracy']:.3f}, Frechet distance "
                  f"{r['frechet_distance']:.3f}, {r['seconds']:.1f} s", flush=True)
    if len(rows):
        print(summary(rows))


if __name__ == "__main__":
    main()
