#!/usr/bin/python3
"""tools/figures.py on synthetic run directories.

usage: /usr/bin/python3 test_figures.py PATH/TO/diffmpi SOURCE_DIR
(the diffmpi path is not used: the inputs are written here with h5py)

Builds, in a temporary directory, a Part-1 denoiser run (log.h5 and
samples.h5 with /noising, /denoise, /ood), a Part-2 class-conditioned DDPM run
(/samples, /batch_vis, /trajectory) and a `diffmpi sample` file with a
trajectory, all random data in the documented layouts, plus the PNGs that
`diffmpi train` draws beside samples.h5 (noising.png, denoise-epoch-N.png,
ood.png, samples-epoch-N.png, batch-epoch-N.png); runs the tool on each and
checks that every expected figure is written and listed on stdout, that the
figures the tool draws are valid PNGs (or animated GIFs) of a readable size,
and that every figure training drew is the run's own PNG copied byte for byte
under the same name (one implementation of each figure, the C one), not
redrawn. Also: --help, a missing run directory (exit 2, one stderr line), a
missing training PNG and damaged inputs (one line naming the file or dataset,
no traceback, the other figures still written). Then tools/summary.py on the
same synthetic log: the per-epoch rows (steps, wall time, images/s, mean
training loss, evaluation columns) and a file that is not a log.
Prints "ok ..." or "FAIL ..." per check and exits 1 on any failure.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np
from PIL import Image

SRC = sys.argv[2]
TOOL = os.path.join(SRC, "tools", "figures.py")
PY = "/usr/bin/python3"
PNG_SIG = b"\x89PNG\r\n\x1a\n"
SIGMAS = np.array([0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0])

failures = []
rng = np.random.default_rng(7)


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(*args):
    return subprocess.run([PY, TOOL] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=120)


def imgs(*shape):
    return rng.random(shape + (28, 28), dtype=np.float32)


def config(**kv):
    base = {"objective": "denoise", "conditioning": "none", "hidden": "8",
            "epochs": "3", "sigma": "0.5", "seed": "0"}
    base.update(kv)
    return "".join(f"{k} = {v}\n" for k, v in base.items())


def write_log(path, conf, epochs=3, steps_per_epoch=20):
    n = epochs * steps_per_epoch
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "diffmpi-log"
        f.attrs["format_version"] = 1
        f.attrs["config"] = conf
        f.attrs["eval_sigma"] = 0.5
        t = f.create_group("train")
        t["step"] = np.arange(1, n + 1, dtype=np.int64)
        t["epoch"] = np.repeat(np.arange(1, epochs + 1), steps_per_epoch).astype(np.int32)
        t["loss"] = 0.2 * np.exp(-np.arange(n) / 20) + 0.01 * rng.random(n) + 0.01
        t["lr"] = np.full(n, 1e-3)
        t["time"] = np.arange(n) * 0.1
        t["images_per_sec"] = np.full(n, 500.0)
        e = f.create_group("eval")
        e["step"] = (np.arange(1, epochs + 1) * steps_per_epoch).astype(np.int64)
        e["epoch"] = np.arange(1, epochs + 1, dtype=np.int32)
        e["test_mse"] = np.array([0.05, 0.03, 0.02][:epochs])


def c_png(d, name, rows, cols):
    """A PNG where src/io/samples.c puts one: rows x cols digits of 28x28 pixels
    with 2-pixel seams (random pixels: only its bytes matter here)."""
    grid = rng.integers(0, 256, (rows * 30 - 2, cols * 30 - 2), dtype=np.uint8)
    Image.fromarray(grid, "L").save(os.path.join(d, name))


def make_part1(d):
    os.makedirs(d)
    conf = config()
    write_log(os.path.join(d, "log.h5"), conf)
    with h5py.File(os.path.join(d, "samples.h5"), "w") as f:
        g = f.create_group("noising")
        g.attrs["sigmas"] = SIGMAS
        g.attrs["config"] = conf
        g["images"] = imgs(7, 8)
        for ep in (1, 3):
            g = f.create_group(f"denoise/epoch_{ep:04d}")
            g.attrs["epoch"] = ep
            g.attrs["sigma"] = 0.5
            for k in ("clean", "noisy", "denoised"):
                g[k] = imgs(8)
        g = f.create_group("ood")
        g.attrs["sigmas"] = SIGMAS
        g["noisy"] = imgs(7)
        g["denoised"] = imgs(7)
        g["test_mse"] = np.linspace(0.01, 0.1, 7)
    c_png(d, "noising.png", 7, 8)
    for ep in (1, 3):
        c_png(d, f"denoise-epoch-{ep}.png", 3, 8)
    c_png(d, "ood.png", 2, 7)


def make_part2(d):
    os.makedirs(d)
    conf = config(objective="ddpm", conditioning="class", hidden="16", epochs="2")
    write_log(os.path.join(d, "log.h5"), conf, epochs=2)
    labels = np.repeat(np.arange(10), 4).astype(np.int32)
    with h5py.File(os.path.join(d, "samples.h5"), "w") as f:
        for ep in (1, 2):
            g = f.create_group(f"samples/epoch_{ep:04d}")
            g.attrs.update({"epoch": ep, "guidance": 5.0, "steps": 300,
                            "seed": 0, "objective": "ddpm"})
            g["images"] = imgs(40)
            g["labels"] = labels
            b = f.create_group(f"batch_vis/epoch_{ep:04d}")
            b.attrs["epoch"] = ep
            b["x0"] = imgs(8)
            b["xt"] = imgs(8)
            b["t"] = rng.random(8, dtype=np.float32)
            b["x0_hat"] = imgs(8)
        g = f.create_group("trajectory")
        g.attrs["epoch"] = 2
        g["images"] = imgs(6, 40)
        g["t"] = np.linspace(1, 0, 6, dtype=np.float32)
    for ep in (1, 2):
        c_png(d, f"samples-epoch-{ep}.png", 4, 10)
        c_png(d, f"batch-epoch-{ep}.png", 3, 8)


def same_bytes(a, b):
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False


def make_sample_file(path, n=20, frames=5):
    with h5py.File(path, "w") as f:
        f["images"] = imgs(n)
        f["labels"] = np.repeat(np.arange(10), n // 10).astype(np.int32)
        f["trajectory"] = imgs(frames, n)
        f["trajectory_t"] = np.linspace(0, 1, frames, dtype=np.float32)
        f.attrs.update({"guidance": 5.0, "steps": 50, "seed": 3})


def valid_png(path):
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != PNG_SIG:
                return False
        with Image.open(path) as im:
            im.load()
            return im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    except OSError:
        return False


def valid_gif(path):
    try:
        with Image.open(path) as im:
            return im.format == "GIF" and getattr(im, "n_frames", 1) > 1 and \
                im.size[0] > 100 and im.size[1] > 100
    except OSError:
        return False


def check_outputs(name, r, figdir, drawn, run_dir, copied, absent=()):
    """`drawn`: figures the tool draws; `copied`: PNGs of run_dir it copies."""
    check(r.returncode == 0, f"{name}: exit 0 (rc {r.returncode}: {r.stderr[-300:]})")
    listed = set(r.stdout.split())
    for fn in drawn:
        p = os.path.join(figdir, fn)
        good = valid_gif(p) if fn.endswith(".gif") else valid_png(p)
        check(good, f"{name}: {fn} written and valid")
    for fn in copied:
        check(same_bytes(os.path.join(run_dir, fn), os.path.join(figdir, fn)),
              f"{name}: {fn} is the run's own PNG, copied byte for byte")
    for fn in list(drawn) + list(copied):
        check(os.path.join(figdir, fn) in listed, f"{name}: {fn} path printed")
    for fn in absent:
        check(not os.path.exists(os.path.join(figdir, fn)),
              f"{name}: no {fn} (its data do not exist)")
    expected = set(drawn) | set(copied)
    extra = set(os.listdir(figdir)) - expected if os.path.isdir(figdir) else set()
    check(not extra, f"{name}: nothing else written ({sorted(extra)})")


def one_error_line(name, r, rc, needle):
    lines = r.stderr.strip().splitlines()
    check(r.returncode == rc, f"{name}: exit {rc} (got {r.returncode})")
    check(len(lines) == 1 and lines[0].startswith("figures: ") and
          needle in lines[0], f"{name}: one stderr line naming {needle} "
          f"({r.stderr.strip()[:300]!r})")
    check("Traceback" not in r.stderr, f"{name}: no traceback")


base = tempfile.mkdtemp(prefix="diffmpi-figures-")
try:
    # ---- --help and usage errors
    r = run("--help")
    check(r.returncode == 0 and "RUN_DIR" in r.stdout and "--sample" in r.stdout,
          "--help exits 0 and describes the usage")
    names = ("loss.png", "noising.png", "noising_sigmas.png", "denoise-epoch-N.png",
             "ood.png", "ood_mse.png", "samples-epoch-N.png", "batch-epoch-N.png",
             "class_grid.png", "trajectory.gif", "sample_STEM.png/.gif")
    check(all(n in r.stdout for n in names) and "_epoch_" not in r.stdout,
          "--help names every figure under the name it is written as")
    r = run(os.path.join(base, "no-such-run"))
    one_error_line("missing run dir", r, 2, "no-such-run")
    os.makedirs(os.path.join(base, "empty"))
    r = run(os.path.join(base, "empty"))
    one_error_line("run dir without log.h5 or samples.h5", r, 2, "empty")

    # ---- Part 1
    p1 = os.path.join(base, "part1")
    make_part1(p1)
    r = run(p1)
    check_outputs("part1", r, os.path.join(p1, "figures"),
                  ["loss.png", "noising_sigmas.png", "ood_mse.png"], p1,
                  ["noising.png", "denoise-epoch-1.png", "denoise-epoch-3.png",
                   "ood.png"],
                  absent=["class_grid.png", "trajectory.gif"])

    # ---- a Part-1 PNG the run did not draw: one line naming it
    nopng = os.path.join(base, "nopng")
    shutil.copytree(p1, nopng)
    shutil.rmtree(os.path.join(nopng, "figures"))
    os.remove(os.path.join(nopng, "denoise-epoch-3.png"))
    r = run(nopng)
    one_error_line("run without denoise-epoch-3.png", r, 1, "denoise-epoch-3.png")
    figs = os.path.join(nopng, "figures")
    check(not os.path.exists(os.path.join(figs, "denoise-epoch-3.png")),
          "missing denoise PNG: nothing drawn in its place")
    check(same_bytes(os.path.join(nopng, "denoise-epoch-1.png"),
                     os.path.join(figs, "denoise-epoch-1.png")) and
          valid_png(os.path.join(figs, "ood_mse.png")),
          "missing denoise PNG: the other figures are still written")

    # ---- Part 2, class-conditioned, with a sample file and --out
    p2 = os.path.join(base, "part2")
    make_part2(p2)
    sfile = os.path.join(base, "mysamples.h5")
    make_sample_file(sfile)
    figs2 = os.path.join(base, "figs2")
    r = run(p2, "--out", figs2, "--sample", sfile)
    check_outputs("part2", r, figs2,
                  ["loss.png", "class_grid.png", "trajectory.gif",
                   "sample_mysamples.png", "sample_mysamples.gif"], p2,
                  ["samples-epoch-1.png", "samples-epoch-2.png",
                   "batch-epoch-1.png", "batch-epoch-2.png"])
    check(not os.path.exists(os.path.join(p2, "figures")),
          "part2: --out replaces the default RUN_DIR/figures")

    # ---- --gif-scale: smaller GIFs (for committing), bad values refused
    figs1x = os.path.join(base, "figs1x")
    r = run(p2, "--out", figs1x, "--gif-scale", "1")
    w3 = Image.open(os.path.join(figs2, "trajectory.gif")).size[0]
    w1 = Image.open(os.path.join(figs1x, "trajectory.gif")).size[0] \
        if valid_gif(os.path.join(figs1x, "trajectory.gif")) else 0
    check(r.returncode == 0 and 0 < w1 < w3 * 0.6,
          f"--gif-scale 1: a narrower GIF ({w1} px against {w3} at the default)")
    r = run(p2, "--out", figs1x, "--gif-scale", "0")
    one_error_line("--gif-scale 0", r, 2, "--gif-scale")

    # ---- a samples grid the run did not draw: one line naming it
    nogrid = os.path.join(base, "nogrid")
    shutil.copytree(p2, nogrid)
    os.remove(os.path.join(nogrid, "samples-epoch-2.png"))
    r = run(nogrid)
    one_error_line("run without samples-epoch-2.png", r, 1, "samples-epoch-2.png")
    figs = os.path.join(nogrid, "figures")
    check(same_bytes(os.path.join(nogrid, "samples-epoch-1.png"),
                     os.path.join(figs, "samples-epoch-1.png")) and
          valid_png(os.path.join(figs, "class_grid.png")),
          "missing grid: the other figures are still drawn")
    check(not os.path.exists(os.path.join(figs, "samples-epoch-2.png")),
          "missing grid: nothing drawn in its place")

    # ---- damaged inputs: one line naming the file/dataset, others still drawn
    bad = os.path.join(base, "bad")
    shutil.copytree(p1, bad)
    shutil.rmtree(os.path.join(bad, "figures"))
    with h5py.File(os.path.join(bad, "samples.h5"), "a") as f:
        del f["ood/test_mse"]
        del f["ood/denoised"]
    r = run(bad)
    one_error_line("samples.h5 without /ood/denoised", r, 1, "/ood/denoised")
    check(valid_png(os.path.join(bad, "figures", "noising_sigmas.png")) and
          same_bytes(os.path.join(bad, "ood.png"),
                     os.path.join(bad, "figures", "ood.png")),
          "damaged ood: the other figures are still written")
    shutil.copy(os.path.join(p1, "samples.h5"), os.path.join(bad, "samples.h5"))
    with open(os.path.join(bad, "log.h5"), "w") as fh:
        fh.write("not an HDF5 file\n")
    r = run(bad)
    one_error_line("log.h5 not HDF5", r, 1, "log.h5")
    check(valid_png(os.path.join(bad, "figures", "ood_mse.png")),
          "damaged log: the samples figures are still drawn")
    r = run(bad, "--sample", os.path.join(base, "absent.h5"))
    one_error_line("missing --sample file", r, 2, "absent.h5")

    # ---- tools/summary.py: the per-epoch table of docs/results.md
    summ = os.path.join(SRC, "tools", "summary.py")
    with h5py.File(os.path.join(p2, "log.h5"), "a") as f:
        f.attrs["config"] = f.attrs["config"] + "batch = 64\n"
    r = subprocess.run([PY, summ, p2], capture_output=True, text=True, timeout=60)
    rows = [ln.split("|")[1:-1] for ln in r.stdout.splitlines()
            if ln.startswith("| ") and not ln.startswith("| epoch")]
    with h5py.File(os.path.join(p2, "log.h5"), "r") as f:
        loss = f["train/loss"][()]
    want = [[str(e), "20", f"0:00:0{2 * e}", "500.0",
             f"{loss[20 * (e - 1):20 * e].mean():.6f}", "-",
             f"{[0.05, 0.03][e - 1]:.6f}", "-", "-", "-"] for e in (1, 2)]
    got = [[c.strip() for c in row] for row in rows]
    check(r.returncode == 0 and got == want,
          f"summary: per-epoch rows from a log (got {got}, want {want})")
    with h5py.File(os.path.join(p2, "log.h5"), "a") as f:
        e = f["eval"]
        e["test_loss"] = np.array([0.5, 0.25])
        e["sample_acc"] = np.array([np.nan, 0.875])
        e["sample_fd"] = np.array([np.nan, 3.25])
    r = subprocess.run([PY, summ, p2], capture_output=True, text=True, timeout=60)
    last = [c.strip() for c in r.stdout.splitlines()[-1].split("|")[1:-1]]
    check(last[5] == "0.250000" and last[8:] == ["0.875", "3.250"],
          f"summary: test loss and sample score columns ({last})")
    r = subprocess.run([PY, summ, os.path.join(p2, "samples.h5"), p2],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 1 and r.stderr.count("\n") == 1 and
          "samples.h5" in r.stderr and "not a diffmpi log" in r.stderr and
          "| 2 |" in r.stdout,
          f"summary: a file that is not a log is one line, the others still printed "
          f"(rc {r.returncode}, stderr {r.stderr!r})")

    # ---- --sweep: a tools/sampler_sweep.py table, with or without RUN_DIR
    sw = os.path.join(base, "sw.h5")
    row = np.dtype([("sampler", "S16"), ("spacing", "S16"), ("steps", "i4"),
                    ("evaluations", "i4"), ("seed", "i8"), ("n", "i4"), ("accuracy", "f8"),
                    ("frechet_distance", "f8"), ("seconds", "f8")])
    rows = np.array([(smp, b"uniform", e, e, k, 200, 0.9 + 0.01 * k, 3.0 / e + k, e * 1.5)
                     for smp in (b"ddim", b"dpmpp2m") for e in (10, 20, 50) for k in (0, 1, 2)],
                    row)
    with h5py.File(sw, "w") as f:
        f["rows"] = rows
        f.attrs["checkpoint"] = "runs/x/checkpoints/ckpt-1.h5"
    swdir = os.path.join(base, "swfigs")
    r = run("--sweep", sw, "--out", swdir)
    check(r.returncode == 0 and r.stdout.split() == [os.path.join(swdir, "sweep_sw.png")] and
          valid_png(os.path.join(swdir, "sweep_sw.png")),
          f"--sweep without RUN_DIR draws sweep_sw.png ({r.stderr.strip()[-200:]})")
    r = run("--sweep", sw)
    one_error_line("--sweep without RUN_DIR or --out", r, 2, "RUN_DIR is required")
    with h5py.File(os.path.join(base, "nosweep.h5"), "w") as f:
        f["x"] = np.zeros(3)
    r = run("--sweep", os.path.join(base, "nosweep.h5"), "--out", swdir)
    one_error_line("--sweep on a file without /rows", r, 1, "no /rows")
finally:
    shutil.rmtree(base, ignore_errors=True)

print("all checks passed" if not failures else f"failures: {', '.join(failures)}")
sys.exit(1 if failures else 0)
