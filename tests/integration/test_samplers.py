"""integration.samplers: every sampler of the table on a tiny class DDPM and
a tiny time flow model: the same bits on 1 and 3 ranks, what the files and
`inspect` record, --noise (a deterministic sampler redraws the same images
whatever the seed), the training-time samples with the sampler keys, and
one clear line with exit code 2 for every value that cannot work."""
import os
import subprocess

import h5py
import numpy as np

from common import BIN, SRC, check, finish, mpirun, tmpdir, train

base = tmpdir()
one_epoch = ["epochs=1", "train_limit=96", "sample_epochs=1"]
ddpm = os.path.join(base, "ddpm")
r = train(2, ddpm, ["objective=ddpm", "conditioning=class", "sample_steps=5", "sampler=dpmpp2m",
                    "sample_spacing=logsnr"] + one_epoch)
check(r.returncode == 0, f"class DDPM with sampler = dpmpp2m ({r.stderr[-300:]})")
flow = os.path.join(base, "flow")
r = train(2, flow, ["objective=flow", "conditioning=time", "sample_steps=4", "sampler=heun"]
          + one_epoch)
check(r.returncode == 0, f"time flow with sampler = heun ({r.stderr[-300:]})")
ck = {m: os.path.join(d, "checkpoints", "ckpt-4.h5") for m, d in (("ddpm", ddpm), ("flow", flow))}

with h5py.File(os.path.join(ddpm, "samples.h5"), "r") as f:
    g = f["samples/epoch_0001"]
    check(g.attrs["sampler"] == "dpmpp2m" and g.attrs["steps"] == 5 and
          g.attrs["spacing"] == "logsnr" and g.attrs["evaluations"] == 5,
          "the run's samples record sampler, steps, spacing, evaluations")
    check(f["trajectory/images"].shape == (6, 40, 28, 28),
          "the last epoch's trajectory keeps each of the 5 steps (6 frames)")
    run_ddpm = g["images"][()]
with h5py.File(os.path.join(flow, "samples.h5"), "r") as f:
    g = f["samples/epoch_0001"]
    check(g.attrs["sampler"] == "heun" and g.attrs["evaluations"] == 7 and
          "guidance" not in g.attrs, "heun: 4 steps are 7 network evaluations; no guidance")
    tt = f["trajectory/t"][()]
    check(np.array_equal(tt, np.float32([0, 0.25, 0.5, 0.75, 1])), f"flow trajectory times {tt}")

# Every sampler, 1 and 3 ranks (chunks of 4 images: 3 ranks get 2, 1, 1 chunks).
cases = [("ddpm", ["--sampler", "ddpm", "--steps", "7"]),
         ("ddpm", ["--sampler", "ddim", "--steps", "6"]),
         ("ddpm", ["--sampler", "ddim", "--steps", "6", "--eta", "0.5", "--spacing", "logsnr"]),
         ("ddpm", ["--sampler", "dpmpp2m", "--steps", "5", "--spacing", "logsnr"]),
         ("flow", ["--sampler", "euler", "--steps", "5"]),
         ("flow", ["--sampler", "heun", "--steps", "4"]),
         ("flow", ["--sampler", "dpmpp2m", "--steps", "5"])]
for model, opts in cases:
    got = {}
    for p in (1, 3):
        path = os.path.join(base, f"{model}-{'-'.join(opts[1::2])}-{p}.h5")
        r = mpirun(p, ["sample", "--checkpoint", ck[model], "--out", path, "--n", "16"] + opts)
        ok = r.returncode == 0
        if ok:
            with h5py.File(path, "r") as f:
                got[p] = f["images"][()]
                attrs = dict(f.attrs)
        check(ok and np.all(np.isfinite(got[p])), f"sample {' '.join(opts)} on {p} rank(s) "
                                                  f"({r.stderr[-200:]})")
    if len(got) == 2:
        check(got[1].tobytes() == got[3].tobytes(), f"{' '.join(opts)}: 1 and 3 ranks, same bits")
        check(attrs["sampler"] == opts[1] and attrs["steps"] == int(opts[3]),
              f"{' '.join(opts)}: the file records sampler and steps")
r = mpirun(1, ["sample", "--checkpoint", ck["ddpm"], "--out", os.path.join(base, "own.h5"),
               "--n", "40"])
with h5py.File(os.path.join(base, "own.h5"), "r") as f:
    check(r.returncode == 0 and f["images"][()].tobytes() == run_ddpm.tobytes(),
          "sample with the run's keys reproduces its samples bit for bit")
r = mpirun(1, ["inspect", os.path.join(base, "own.h5")])
check("sampler: dpmpp2m, 5 steps (5 network evaluations), spacing logsnr, eta 0, guidance 5"
      in r.stdout, f"inspect names the sampler ({r.stdout[:300]})")
r = mpirun(1, ["inspect", os.path.join(ddpm, "samples.h5")])
check("/samples/epoch_0001: sampler: dpmpp2m, 5 steps" in r.stdout,
      "inspect names each epoch's sampler in samples.h5")

# --noise: the images start from given noise; a deterministic sampler then
# ignores the seed, a stochastic one does not.
noise = os.path.join(base, "noise.h5")
with h5py.File(noise, "w") as f:
    f["noise"] = np.random.default_rng(3).standard_normal((6, 1, 28, 28)).astype(np.float32)
imgs = {}
for smp, seed in (("ddim", "1"), ("ddim", "2"), ("ddpm", "1"), ("ddpm", "2")):
    path = os.path.join(base, f"n-{smp}-{seed}.h5")
    r = mpirun(2, ["sample", "--checkpoint", ck["ddpm"], "--out", path, "--noise", noise,
                   "--sampler", smp, "--steps", "6", "--seed", seed])
    check(r.returncode == 0, f"sample --noise with {smp}, seed {seed} ({r.stderr[-200:]})")
    with h5py.File(path, "r") as f:
        imgs[smp, seed] = f["images"][()]
        check(f.attrs["noise"] == noise and len(imgs[smp, seed]) == 6,
              "--noise: N from the file, its path recorded")
check(imgs["ddim", "1"].tobytes() == imgs["ddim", "2"].tobytes(),
      "ddim from the same noise: the same images whatever the seed")
check(imgs["ddpm", "1"].tobytes() != imgs["ddpm", "2"].tobytes(),
      "ddpm from the same noise: its step noise follows the seed")

# Values that cannot work: one line, exit 2.
bad = [(ck["ddpm"], ["--sampler", "euler"], "sampler = euler cannot sample a ddpm model"),
       (ck["ddpm"], ["--sampler", "heun"], "sampler = heun cannot sample a ddpm model"),
       (ck["flow"], ["--sampler", "ddpm"], "sampler = ddpm cannot sample a flow model"),
       (ck["ddpm"], ["--sampler", "plms"], "--sampler: expected one of auto, ddpm, ddim"),
       (ck["ddpm"], ["--steps", "0"], "--steps: expected an integer in 1..100000"),
       (ck["ddpm"], ["--steps", "301"], "at most 300 steps"),
       (ck["ddpm"], ["--sampler", "ddim", "--eta", "1.5"], "--eta: expected a number in [0, 1]"),
       (ck["ddpm"], ["--sampler", "dpmpp2m", "--eta", "0.5"], "read by sampler = ddim only"),
       (ck["flow"], ["--spacing", "logsnr"], "only sample_spacing = uniform"),

       (ck["ddpm"], ["--noise", noise, "--n", "5"], "holds 6 images, --n asks for 5")]
r = mpirun(1, ["sample", "--checkpoint", ck["ddpm"], "--out", os.path.join(base, "bad.h5"),
               "--noise", os.path.join(base, "none.h5")])
check(r.returncode == 1 and "--noise" in r.stderr and "none.h5" in r.stderr,
      "sample --noise of a missing file: exit 1 naming it")
for path, opts, words in bad:
    r = mpirun(2, ["sample", "--checkpoint", path, "--out", os.path.join(base, "bad.h5")] + opts)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("diffmpi:")]  # not mpirun's
    check(r.returncode == 2 and len(lines) == 1 and words in lines[0],
          f"sample {' '.join(opts)}: exit 2, one line with '{words}' (rc {r.returncode}: "
          f"{r.stderr.strip()[-200:]})")
for keys, words in ((["sampler=euler"], "sampler = euler cannot sample a ddpm"),
                    (["sample_eta=0.3"], "read by sampler = ddim only, not ddpm"),
                    (["sample_steps=400"], "at most 300 steps"),
                    (["sampler=ddim", "sample_eta=2"], "sample_eta")):
    r = train(1, os.path.join(base, "bad"), ["objective=ddpm", "conditioning=time"] + keys)
    check(r.returncode == 2 and words in r.stderr, f"train --set {' '.join(keys)}: exit 2 "
                                                   f"naming it ({r.stderr.strip()[-200:]})")

# invert: ddim / euler backwards. Sample from known noise, invert the images:
# the noise comes back, closer with more steps; 1 and 3 ranks give the same
# bits; the labels travel with the noise to sample --noise.
for model, smp in (("ddpm", "ddim"), ("flow", "euler")):
    err = {}
    for st in (8, 32):
        fwd = os.path.join(base, f"fwd-{model}-{st}.h5")
        r = mpirun(2, ["sample", "--checkpoint", ck[model], "--out", fwd, "--noise", noise,
                       "--sampler", smp, "--steps", str(st), "--guidance", "1"])
        check(r.returncode == 0, f"{model}: sample {st} steps from known noise")
        inv = {}
        for p in (1, 3):
            path = os.path.join(base, f"inv-{model}-{st}-{p}.h5")
            r = mpirun(p, ["invert", "--checkpoint", ck[model], "--input", fwd, "--output",
                           path, "--steps", str(st), "--guidance", "1"])
            check(r.returncode == 0 and "inverted 6 images" in r.stdout,
                  f"{model}: invert on {p} rank(s) ({r.stderr.strip()[-200:]})")
            with h5py.File(path, "r") as f:
                inv[p] = f["noise"][()]
                if p == 1:
                    check(f["noise"].shape == (6, 1, 28, 28) and f.attrs["sampler"] == smp and
                          np.array_equal(f["images"][()], h5py.File(fwd, "r")["images"][()]),
                          f"{model}: /noise [6,1,28,28], /images the inputs, sampler {smp}")
        check(inv[1].tobytes() == inv[3].tobytes(), f"{model}: invert, 1 and 3 ranks, same bits")
        with h5py.File(noise, "r") as f:
            err[st] = float(np.sqrt(np.mean((inv[1] - f["noise"][()]) ** 2)))
    check(err[32] < err[8] / 2, f"{model}: the noise comes back closer with more steps "
                                f"({err[8]:.2e} at 8, {err[32]:.2e} at 32)")
lab = os.path.join(base, "lab.h5")
with h5py.File(lab, "w") as f:
    f["images"] = np.zeros((4, 28, 28), np.float32)
    f["labels"] = np.array([7, 7, 2, -1], np.int32)
r = mpirun(1, ["invert", "--checkpoint", ck["ddpm"], "--input", lab, "--output",
               os.path.join(base, "lab-inv.h5"), "--steps", "3"])
check(r.returncode == 0, "invert images with labels")
r = mpirun(1, ["sample", "--checkpoint", ck["ddpm"], "--out", os.path.join(base, "lab-s.h5"),
               "--noise", os.path.join(base, "lab-inv.h5"), "--sampler", "ddim", "--steps", "3"])
with h5py.File(os.path.join(base, "lab-inv.h5"), "r") as f, \
        h5py.File(os.path.join(base, "lab-s.h5"), "r") as g:
    check(list(f["labels"][()]) == [7, 7, 2, -1] and list(g["labels"][()]) == [7, 7, 2, -1],
          "the input's labels go to invert's file and from there to sample --noise")
for opts, words in ((["--sampler", "dpmpp2m"], "invert runs a deterministic first-order"),
                    (["--sampler", "ddpm"], "invert runs a deterministic first-order"),
                    (["--sampler", "euler"], "sampler = euler cannot sample a ddpm"),
                    (["--eta", "0.5"], "invert: unknown argument '--eta'")):
    r = mpirun(2, ["invert", "--checkpoint", ck["ddpm"], "--input", lab, "--output",
                   os.path.join(base, "bad.h5")] + opts)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("diffmpi:")]
    check(r.returncode == 2 and len(lines) == 1 and words in lines[0],
          f"invert {' '.join(opts)}: exit 2, one line with '{words}' ({r.stderr.strip()[-200:]})")
r = mpirun(1, ["invert", "--checkpoint", ck["ddpm"], "--input", lab, "--output",
               os.path.join(base, "auto-inv.h5"), "--steps", "3", "--sampler", "auto"])
with h5py.File(os.path.join(base, "auto-inv.h5"), "r") as f:
    check(r.returncode == 0 and f.attrs["sampler"] == "ddim",
          "invert --sampler auto on a DDPM whose run samples with dpmpp2m: ddim")
r = mpirun(1, ["invert", "--checkpoint", ck["ddpm"], "--input", noise, "--output",
               os.path.join(base, "bad.h5")])
check(r.returncode == 1 and noise in r.stderr and "/images" in r.stderr,
      f"invert of a file without /images: exit 1 naming the file and /images ({r.stderr[-200:]})")

# tools/sampler_sweep.py: rows measured, kept, not redrawn when run again.
judge = os.path.join(base, "judge")
r = train(2, judge, ["objective=classify", "conditioning=none", "epochs=1", "train_limit=96"])
check(r.returncode == 0, f"a tiny judge ({r.stderr[-200:]})")
table = os.path.join(base, "sweep.h5")
sweep = ["/usr/bin/python3", os.path.join(SRC, "tools", "sampler_sweep.py"), ck["flow"],
         "--judge", os.path.join(judge, "checkpoints", "ckpt-4.h5"), "--out", table,
         "--samplers", "euler,heun", "--nfe", "3,4", "--seeds", "0,1", "--n", "8", "--bin", BIN]
r = subprocess.run(sweep, capture_output=True, text=True, timeout=600)
check(r.returncode == 0 and r.stdout.count("] ") == 6,
      f"sampler_sweep: 6 points measured (heun's 3 and 4 evaluations are one point) "
      f"({r.stderr.strip()[-300:]})")
with h5py.File(table, "r") as f:
    rows = f["rows"][()]
heun = rows[rows["sampler"] == b"heun"]
check(len(rows) == 6 and list(heun["steps"]) == [2, 2] and
      sorted(set(heun["evaluations"])) == [3] and np.all(np.isfinite(rows["frechet_distance"])),
      f"sweep rows: heun at 3 and 4 evaluations is 2 steps (3 evaluations) "
      f"({rows[['sampler', 'steps', 'evaluations']]})")
r = subprocess.run(sweep, capture_output=True, text=True, timeout=600)
check(r.returncode == 0 and "] " not in r.stdout and "| heun | uniform | 2 | 3 | 2 |" in r.stdout,
      f"sampler_sweep again: nothing redrawn, heun's 2 seeds in one line ({r.stdout[-400:]})")

# tools/inversion.py: reconstruction table and interpolation, then the figures.
inv = os.path.join(base, "inversion")
r = subprocess.run(["/usr/bin/python3", os.path.join(SRC, "tools", "inversion.py"), ck["ddpm"],
                    "--out", inv, "--n", "12", "--steps", "2,6", "--cols", "3", "--bin", BIN,
                    "--data", os.path.join(SRC, "data", "mnist")],
                   capture_output=True, text=True, timeout=600)
check(r.returncode == 0 and "| 6 | 12 |" in r.stdout, f"inversion.py ({r.stderr[-300:]})")
if r.returncode == 0:
    with h5py.File(os.path.join(inv, "inversion.h5"), "r") as f:
        rows = f["rows"][()]
    with h5py.File(os.path.join(inv, "digits.h5"), "r") as f, \
            h5py.File(os.path.join(inv, "redrawn-6.h5"), "r") as g:
        mse = float(((f["images"][()] - g["images"][()]) ** 2).mean())
        check(list(g["labels"][()]) == list(f["labels"][()]) and g.attrs["sampler"] == "ddim",
              "redrawn with ddim and the digits' own labels")
    check(list(rows["steps"]) == [2, 6] and np.isclose(rows["mse_mean"][1], mse),
          f"the table's MSE is the digits' against the redrawn ({rows['mse_mean']}, {mse})")
    with h5py.File(os.path.join(inv, "interpolation.h5"), "r") as f:
        check(f["images"].shape == (30, 28, 28) and
              list(f["labels"][()]) == [d for d in range(10) for _ in range(3)],
              "interpolation: 10 rows (digits) of 3")
    # Again into the same DIR with one more step count: the rows measured
    # are kept (not redrawn), the new one measured, the table in order.
    r = subprocess.run(["/usr/bin/python3", os.path.join(SRC, "tools", "inversion.py"),
                        ck["ddpm"], "--out", inv, "--n", "12", "--steps", "2,4,6", "--cols", "3",
                        "--bin", BIN, "--data", os.path.join(SRC, "data", "mnist")],
                       capture_output=True, text=True, timeout=600)
    with h5py.File(os.path.join(inv, "inversion.h5"), "r") as f:
        again = f["rows"][()]
    check(r.returncode == 0 and "2 steps: kept" in r.stdout and "6 steps: kept" in r.stdout
          and "4 steps: reconstruction MSE" in r.stdout and list(again["steps"]) == [2, 4, 6]
          and again["mse_mean"][2] == rows["mse_mean"][1],
          f"inversion.py again: 2 and 6 kept, 4 measured ({r.stdout[:400]!r} {list(again['steps'])} {r.stderr[-200:]})")
    figs = os.path.join(base, "invfigs")
    r = subprocess.run(["/usr/bin/python3", os.path.join(SRC, "tools", "figures.py"),
                        "--inversion", inv, "--out", figs], capture_output=True, text=True)
    check(r.returncode == 0 and sorted(os.listdir(figs)) == ["interpolation.png",
                                                             "reconstruction.png"],
          f"figures.py --inversion draws both ({r.stderr[-200:]})")
finish()
