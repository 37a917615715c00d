"""precision = bf16 and the GEMM engines, end to end.

Where the CPU has bf16 units (AVX512-BF16 or AMX):
 - a class-conditioned DDPM run in bf16 is bitwise identical on 1, 2, 3 and
   4 ranks (log, checkpoints, samples), and stopped on 2 ranks then resumed
   on 3 it ends bitwise equal to the uninterrupted run;
 - its checkpoint is float32 and says precision = bf16; its losses differ
   from the fp32 run's (the comparison can fail) but stay close to them;
 - sample and predict take --precision and give bf16 results close to fp32.
On every CPU, bf16 is refused (exit 2, one line, nothing written) when oneDNN
may not use the bf16 units (ONEDNN_MAX_CPU_ISA=AVX512_CORE), and with
engine = openblas. engine = openblas and engine = onednn give fp32 runs that
differ in bits (different kernels) but not in substance. precision = auto
runs fp32 without bf16 units and otherwise what a timed product says is
faster (both answers forced by DIFFMPI_TEST_BF16_SPEEDUP where bf16 runs),
in train and in sample on 2 ranks, and a resumed auto run keeps its
checkpoint's precision, bitwise. conv_algo = winograd runs are bitwise
equal on 1 and 3 ranks and differ from im2col in rounding only;
conv_algo = auto follows the per-width timings (forced by
DIFFMPI_TEST_WINOGRAD_SPEEDUP), records its choice, which is bitwise the
explicit setting, and a resumed run keeps it."""
import os
import subprocess

import h5py
import numpy as np

from common import BIN, SRC, check, compare_h5, finish, mpirun, tmpdir, train

base = tmpdir()
MODEL = ["objective=ddpm", "conditioning=class", "sample_steps=8", "sample_epochs=1"]
NO_BF16 = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
NO_BF16_ARGS = ["-x", "ONEDNN_MAX_CPU_ISA"]


def losses(out):
    with h5py.File(os.path.join(out, "log.h5"), "r") as f:
        return f["train/loss"][()]


def differ_in_rounding(a, b, what):
    """Two fp32 runs' losses: not bitwise equal, but within 1e-3 relative."""
    rel = np.max(np.abs(a - b) / np.abs(a))
    check(not np.array_equal(a, b) and rel < 1e-3,
          f"{what} fp32 losses differ only in rounding (max rel {rel:.2e})")


# The refusal, on every CPU.
out = os.path.join(base, "refused")
r = mpirun(2, ["train", "--out", out, "--set", "precision=bf16", "--set", "hidden=8"],
           env_extra=NO_BF16, mpi_args=NO_BF16_ARGS)
lines = [l for l in r.stderr.splitlines() if l.startswith("diffmpi:")]
check(r.returncode == 2 and len(lines) == 1 and "AVX512-BF16" in lines[0]
      and "precision = fp32" in lines[0],
      f"bf16 without bf16 units: exit 2 and one line ({r.returncode}, {lines})")
check(not os.path.exists(out), "nothing written by the refused run")
r = mpirun(1, ["bench", "--set", "precision=bf16", "--set", "engine=openblas"])
check(r.returncode == 2 and "engine = onednn" in r.stderr,
      f"bf16 on engine = openblas: exit 2 naming onednn ({r.stderr[-200:]})")

# fp32 on both engines: other bits, same substance.
fp = {}
for engine in ("openblas", "onednn"):
    out = os.path.join(base, f"fp32-{engine}")
    r = train(2, out, MODEL + ["engine=" + engine])
    check(r.returncode == 0, f"fp32 on {engine} exits 0 ({r.stderr[-300:]})")
    check(f"convolution products: {engine} fp32" in r.stdout, f"the run names engine {engine}")
    fp[engine] = out
differ_in_rounding(losses(fp["openblas"]), losses(fp["onednn"]), "openblas and onednn")

# conv_algo = winograd (fp32): the 3x3 stride-1 convolutions (outputs, input
# and weight gradients) by Winograd F(2x2,3x3). Other bits than im2col, same
# substance; bitwise the same on 1 and 3 ranks.
wino = {}
for p in (1, 3):
    out = os.path.join(base, f"wino-p{p}")
    r = train(p, out, MODEL + ["engine=onednn", "conv_algo=winograd"])
    check(r.returncode == 0 and "by Winograd F(2x2,3x3)" in r.stdout,
          f"winograd P={p} exits 0 and says so ({r.stderr[-300:]})")
    wino[p] = out
for f in ("log.h5", "checkpoints/ckpt-44.h5", "samples.h5"):
    bad = compare_h5(os.path.join(wino[1], f), os.path.join(wino[3], f))
    check(not bad, f"winograd P=3 {f} bitwise equal to P=1 ({bad[:5]})")
differ_in_rounding(losses(fp["onednn"]), losses(wino[1]), "winograd and im2col")
# F(4x4,3x3) on every 3x3 stride-1 layer (winograd4_min_width = 1): the
# same, against both im2col and F(2x2).
wino4 = {}
for p in (1, 3):
    out = os.path.join(base, f"wino4-p{p}")
    r = train(p, out, MODEL + ["engine=onednn", "conv_algo=winograd", "winograd4_min_width=1"])
    check(r.returncode == 0 and "gradients) by Winograd F(4x4,3x3)\n" in r.stdout
          and "F(2x2" not in r.stdout,
          f"winograd F(4x4) P={p} exits 0 and says so ({r.stdout[-300:]} {r.stderr[-300:]})")
    wino4[p] = out
for f in ("log.h5", "checkpoints/ckpt-44.h5", "samples.h5"):
    bad = compare_h5(os.path.join(wino4[1], f), os.path.join(wino4[3], f))
    check(not bad, f"winograd F(4x4) P=3 {f} bitwise equal to P=1 ({bad[:5]})")
differ_in_rounding(losses(fp["onednn"]), losses(wino4[1]), "winograd F(4x4) and im2col")
differ_in_rounding(losses(wino[1]), losses(wino4[1]), "winograd F(4x4) and F(2x2)")

# conv_algo = auto (fp32): rank 0 times the 3x3 stride-1 layers both ways for
# each image width, and Winograd runs from the narrowest width from which it
# is at least 1.05x as fast at every wider one; the checkpoint records
# conv_algo = winograd with that winograd_min_width, or im2col, and a resumed
# run keeps it. DIFFMPI_TEST_WINOGRAD_SPEEDUP ("W:R,...") stands in for the
# measured ratios.
CONV = ["hidden=8", "train_limit=48", "eval_limit=64", "batch=24", "micro_batch=4", "epochs=1",
        "precision=fp32", "data_dir=" + os.path.join(SRC, "data", "mnist")]
WHOOK = ["-x", "DIFFMPI_TEST_WINOGRAD_SPEEDUP"]


def conv_run(name, speedup, extra=(), resume=None, nprocs=1, stop=None):
    out = os.path.join(base, name)
    cmd = ["train", "--out", out] + sum((["--set", kv] for kv in CONV + list(extra)), [])
    if resume:
        cmd += ["--resume", resume]
    env = {"DIFFMPI_TEST_WINOGRAD_SPEEDUP": speedup}
    if stop:
        env["DIFFMPI_TEST_STOP_AT_STEP"] = stop
    return out, mpirun(nprocs, cmd, env_extra=env, mpi_args=WHOOK)


def stored(path, key):
    with h5py.File(path, "r") as f:
        cfg = f.attrs["config"]
    cfg = cfg.decode() if isinstance(cfg, bytes) else cfg
    return [l.split("=")[1].strip() for l in cfg.splitlines() if l.split("=")[0].strip() == key][0]


# "W:R2:R4" forces both Winograd forms' ratios at width W (F(4x4) ruled out
# where only R2 is given). From the widest down: F(4x4) while it is at least
# 1.05x as fast as im2col and as F(2x2), then F(2x2) while it is 1.05x as
# fast as im2col.
for name, speedup, algo, w2, w4 in (
        ("conv-all", "28:2,14:2,7:2", "winograd", "7", "0"),
        ("conv-28", "28:2,14:0.5,7:2", "winograd", "28", "0"),
        ("conv-none", "28:0.9,14:2,7:2", "im2col", None, None),
        ("conv-f4-28", "28:2:3,14:2:1,7:2:3", "winograd", "7", "28"),
        ("conv-f4-all", "28:2:3,14:2:3,7:2:3", "winograd", "7", "7"),
        ("conv-f4-close", "28:2:2.05,14:2:0.5,7:2:0.5", "winograd", "7", "0"),
        ("conv-f4-only28", "28:0.9:2,14:0.5:1,7:2:1", "winograd", "28", "28")):
    out, r = conv_run(name, speedup, ["conv_algo=auto"])
    ck = os.path.join(out, "checkpoints", "ckpt-2.h5")
    if algo == "im2col":
        said = "conv_algo = auto chose im2col"
    elif w4 != "0":
        said = f"conv_algo = auto chose winograd F(4x4,3x3) for images at least {w4} wide"
    else:
        said = f"conv_algo = auto chose winograd F(2x2,3x3) for images at least {w2} wide"
    ok = r.returncode == 0 and said in r.stdout and stored(ck, "conv_algo") == algo
    check(ok and (w2 is None or (stored(ck, "winograd_min_width") == w2
                                 and stored(ck, "winograd4_min_width") == w4)),
          f"conv_algo = auto with speed-ups {speedup}: {algo} {w2 or ''} {w4 or ''} "
          f"({r.returncode}, {r.stdout[-400:]} {r.stderr[-200:]})")
# what auto chose is the explicit setting, bitwise
out, r = conv_run("conv-14", "", ["conv_algo=winograd", "winograd_min_width=14"])
check(r.returncode == 0 and "at least 14 wide" in r.stdout,
      f"winograd_min_width=14 runs ({r.stderr[-200:]})")
bad = compare_h5(os.path.join(base, "conv-28", "log.h5"), os.path.join(out, "log.h5"))
check(bad, "Winograd from 14 and from 28 wide differ (the width takes effect)")
out2, r = conv_run("conv-14-auto", "28:2,14:2,7:0.5", ["conv_algo=auto"])
bad = compare_h5(os.path.join(out, "log.h5"), os.path.join(out2, "log.h5"))
check(r.returncode == 0 and not bad,
      f"auto choosing width 14 is bitwise the explicit setting ({bad[:3]})")
# a resumed auto run keeps its checkpoint's choice, whatever it measures now
out, r = conv_run("conv-resume", "28:2,14:2,7:2", ["conv_algo=auto"], stop="1", nprocs=2)
check(r.returncode == 3, f"auto (winograd) run stops at step 1 (rc {r.returncode})")
out, r = conv_run("conv-resume", "28:0.5,14:0.5,7:0.5", ["conv_algo=auto"], resume="auto",
                  nprocs=3)
bad = compare_h5(os.path.join(base, "conv-all", "checkpoints", "ckpt-2.h5"),
                 os.path.join(out, "checkpoints", "ckpt-2.h5"))
check(r.returncode == 0 and "conv_algo = auto: winograd, as the checkpoint ran" in r.stdout
      and not bad, f"a resumed auto run keeps the checkpoint's winograd, bitwise on 3 ranks "
      f"({r.returncode}, {bad[:3]}, {r.stderr[-200:]})")
# measured, not forced: the run says what it measured and follows it
out, r = conv_run("conv-measured", "", ["conv_algo=auto"])
line = [l for l in r.stdout.splitlines() if l.startswith("conv_algo = auto chose")]
check(r.returncode == 0 and len(line) == 1 and "28x28" in line[0] and "7x7" in line[0],
      f"conv_algo = auto measures every width ({line}, {r.stderr[-200:]})")

# Does this CPU run bf16?
probe = mpirun(1, ["bench", "--set", "precision=bf16", "--set", "hidden=8", "--set", "batch=4",
                   "--set", "micro_batch=4", "--steps", "1"])

# precision = auto: fp32 without bf16 units; with them the engine times one
# product in both precisions and takes bf16 only where it is at least 1.1x
# as fast (an Intel Xeon without AMX ran it at 0.6x); the checkpoint records
# what ran. DIFFMPI_TEST_BF16_SPEEDUP stands in for the measured ratio.
AUTO = ["hidden=8", "train_limit=48", "eval_limit=64", "batch=24", "micro_batch=4", "epochs=1",
        "precision=auto", "data_dir=" + os.path.join(SRC, "data", "mnist")]


def auto_run(name, env=None, args=(), resume=None, nprocs=2):
    out = os.path.join(base, name)
    cmd = ["train", "--out", out] + sum((["--set", kv] for kv in AUTO), [])
    if resume:
        cmd += ["--resume", resume]
    return out, mpirun(nprocs, cmd, env_extra=env, mpi_args=list(args))


def stored_precision(path):
    with h5py.File(path, "r") as f:
        cfg = f.attrs["config"]
    cfg = cfg.decode() if isinstance(cfg, bytes) else cfg
    return [l.split("=")[1].strip() for l in cfg.splitlines()
            if l.startswith("precision")][0]


out, r = auto_run("auto-nobf16", NO_BF16, NO_BF16_ARGS)
check(r.returncode == 0 and "convolution products: onednn fp32" in r.stdout
      and "chose" not in r.stdout
      and stored_precision(os.path.join(out, "checkpoints", "ckpt-2.h5")) == "fp32",
      f"precision = auto without bf16 units runs and records fp32, unmeasured "
      f"({r.returncode}, {r.stderr[-200:]})")
out, r = auto_run("auto")
chose = [l for l in r.stdout.splitlines() if l.startswith("precision = auto chose")]
if probe.returncode == 0:
    # "precision = auto chose P: a bf16 product ran R x as fast as fp32 on ISA"
    ok = len(chose) == 1
    if ok:
        want = chose[0].split()[4].rstrip(":")
        ratio = float(chose[0].split(" ran ")[1].split("x")[0])
        ok = want == ("bf16" if ratio >= 1.1 else "fp32")
    check(ok and r.returncode == 0 and f"convolution products: onednn {want}" in r.stdout
          and stored_precision(os.path.join(out, "checkpoints", "ckpt-2.h5")) == want,
          f"precision = auto follows its measurement and records it ({chose}, "
          f"{r.returncode}, {r.stderr[-200:]})")
else:
    check(r.returncode == 0 and not chose
          and stored_precision(os.path.join(out, "checkpoints", "ckpt-2.h5")) == "fp32",
          f"precision = auto on a CPU without bf16 units: fp32 ({r.stderr[-200:]})")
if probe.returncode != 0:
    check(probe.returncode == 2 and "AVX512-BF16" in probe.stderr,
          f"no bf16 units here: refused with the reason ({probe.stderr[-200:]})")
    print("note: this CPU has no bf16 units; the bf16 runs are not tested here")
    finish()

# precision = auto where bf16 runs: the measured ratio decides, and a resumed
# run keeps its checkpoint's precision whatever the measurement says now.
FAST, SLOW = {"DIFFMPI_TEST_BF16_SPEEDUP": "2.0"}, {"DIFFMPI_TEST_BF16_SPEEDUP": "0.5"}
HOOK = ["-x", "DIFFMPI_TEST_BF16_SPEEDUP"]
for env, want in ((FAST, "bf16"), (SLOW, "fp32")):
    out, r = auto_run("auto-" + want, env, HOOK)
    check(r.returncode == 0 and f"precision = auto chose {want}" in r.stdout
          and stored_precision(os.path.join(out, "checkpoints", "ckpt-2.h5")) == want,
          f"precision = auto with a bf16 speed-up of {env['DIFFMPI_TEST_BF16_SPEEDUP']}: "
          f"{want} ({r.returncode}, {r.stderr[-200:]})")
# precision = auto with conv_algo = auto (or winograd) weighs fp32 by
# Winograd against bf16 by im2col: the product probe alone said bf16 on a
# Zen 5 where fp32 with Winograd was faster. Both hooks force the timings:
# bf16 1.5x im2col against Winograd F(4x4) at 3x -> fp32 by Winograd
# (bitwise the explicit fp32 run of the same plan); bf16 4x -> bf16 by
# im2col (bitwise the bf16 run above).
def joint_run(name, bf16, wino, extra=()):
    env = {"DIFFMPI_TEST_BF16_SPEEDUP": bf16, "DIFFMPI_TEST_WINOGRAD_SPEEDUP": wino}
    args = ["-x", "DIFFMPI_TEST_BF16_SPEEDUP", "-x", "DIFFMPI_TEST_WINOGRAD_SPEEDUP"]
    out = os.path.join(base, name)
    cmd = ["train", "--out", out] + sum((["--set", kv] for kv in AUTO + list(extra)), [])
    return out, mpirun(2, cmd, env_extra=env, mpi_args=args)


F4 = "28:2:3,14:2:3,7:2:3"
for name, bf16, extra, want, algo, other in (
        ("joint-fp32", "1.5", ["conv_algo=auto"], "fp32", "winograd", "conv-f4-all"),
        ("joint-bf16", "4.0", ["conv_algo=auto"], "bf16", "im2col", "auto-bf16"),
        ("joint-wino", "1.5", ["conv_algo=winograd"], "fp32", "winograd", None)):
    out, r = joint_run(name, bf16, F4, extra)
    ck = os.path.join(out, "checkpoints", "ckpt-2.h5")
    line = [l for l in r.stdout.splitlines() if l.startswith("precision = auto chose")]
    ok = (r.returncode == 0 and len(line) == 1 and line[0].startswith(
        f"precision = auto chose {want}: bf16 (im2col) would run a step's products")
        and "by Winograd F(" in line[0] and f"convolution products: onednn {want}" in r.stdout
        and stored(ck, "precision") == want and stored(ck, "conv_algo") == algo)
    if ok:
        speed = float(line[0].split(" products ")[1].split("x")[0])
        ok = (speed >= 1.1) == (want == "bf16")
    bad = compare_h5(os.path.join(base, other, "log.h5"), os.path.join(out, "log.h5")) \
        if other else []
    check(ok and not bad, f"precision = auto, {extra[0]}, bf16 {bf16}x against Winograd "
          f"{F4}: {want} by {algo}, bitwise the explicit run ({line}, {bad[:3]}, "
          f"{r.returncode}, {r.stderr[-200:]})")
out, r = auto_run("auto-resume", dict(FAST, DIFFMPI_TEST_STOP_AT_STEP="1"), HOOK)
check(r.returncode == 3, f"auto (bf16) run stops at step 1 (rc {r.returncode})")
out, r = auto_run("auto-resume", SLOW, HOOK, resume="auto", nprocs=3)
bad = compare_h5(os.path.join(base, "auto-bf16", "checkpoints", "ckpt-2.h5"),
                 os.path.join(out, "checkpoints", "ckpt-2.h5"))
check(r.returncode == 0 and "precision = auto: bf16, as the checkpoint ran" in r.stdout
      and not bad, f"a resumed auto run keeps the checkpoint's bf16, bitwise "
      f"({r.returncode}, {bad[:3]}, {r.stderr[-200:]})")

runs = {}
for p in (1, 2, 3, 4):
    out = os.path.join(base, f"bf16-p{p}")
    r = train(p, out, MODEL + ["precision=bf16"])
    check(r.returncode == 0, f"bf16 P={p} exits 0 ({r.stderr[-300:]})")
    runs[p] = out
check("convolution products: onednn bf16" in r.stdout, "the run names onednn bf16")
# Winograd runs only where the products are fp32: in bf16 the key changes nothing.
out = os.path.join(base, "bf16-wino")
r = train(1, out, MODEL + ["precision=bf16", "conv_algo=winograd"])
bad = compare_h5(os.path.join(runs[1], "log.h5"), os.path.join(out, "log.h5"))
check(r.returncode == 0 and "conv_algo = winograd not used" in r.stdout and not bad,
      f"bf16 with conv_algo = winograd says it is not used and runs im2col, bitwise "
      f"({bad[:3]}, {r.stderr[-200:]})")
for p in (2, 3, 4):
    for f in ("log.h5", "checkpoints/ckpt-25.h5", "checkpoints/ckpt-44.h5", "samples.h5"):
        bad = compare_h5(os.path.join(runs[1], f), os.path.join(runs[p], f))
        check(not bad, f"bf16 P={p} {f} bitwise equal to P=1 ({bad[:5]})")

out = os.path.join(base, "bf16-stop")
r = train(2, out, MODEL + ["precision=bf16"], env_extra={"DIFFMPI_TEST_STOP_AT_STEP": "9"})
check(r.returncode == 3, f"bf16 run stops at step 9 (rc {r.returncode})")
r = train(3, out, MODEL + ["precision=bf16"], resume="auto")
check(r.returncode == 0, f"bf16 run resumes on 3 ranks ({r.stderr[-300:]})")
for f in ("checkpoints/ckpt-44.h5", "log.h5", "samples.h5"):
    bad = compare_h5(os.path.join(runs[1], f), os.path.join(out, f))
    check(not bad, f"bf16 stop@9 P=2 -> P=3: {f} bitwise equal ({bad[:4]})")

ck = os.path.join(runs[1], "checkpoints", "ckpt-44.h5")
with h5py.File(ck, "r") as f:
    cfg = f.attrs["config"]
    cfg = cfg.decode() if isinstance(cfg, bytes) else cfg
    dtypes = set()
    f.visititems(lambda n, o: dtypes.add(str(o.dtype))
                 if isinstance(o, h5py.Dataset) and n.startswith("model/") else None)
check("precision = bf16" in cfg, "the checkpoint's configuration says precision = bf16")
check(dtypes == {"float32"}, f"bf16 checkpoint weights are float32 ({dtypes})")

a, b = losses(fp["onednn"]), losses(runs[1])
rel = np.abs(a - b) / np.abs(a)
check(not np.array_equal(a, b), "bf16 losses differ from fp32 (the operands are rounded)")
check(np.mean(rel) < 0.05 and abs(a[-10:].mean() - b[-10:].mean()) < 0.05 * a[-10:].mean(),
      f"bf16 losses follow fp32 (mean rel diff {np.mean(rel):.3f}, last 10 "
      f"{a[-10:].mean():.4f} / {b[-10:].mean():.4f})")

# sample --precision: bf16 images close to fp32 ones, and different.
imgs = {}
for prec in ("fp32", "bf16"):
    o = os.path.join(base, f"s-{prec}.h5")
    r = mpirun(2, ["sample", "--checkpoint", ck, "--out", o, "--n", "8", "--steps", "8",
                   "--precision", prec])
    check(r.returncode == 0 and f"onednn {prec}" in r.stdout,
          f"sample --precision {prec} ({r.stdout[-200:]} {r.stderr[-200:]})")
    with h5py.File(o, "r") as f:
        imgs[prec] = f["images"][()]
d = np.abs(imgs["fp32"] - imgs["bf16"])
check(0 < d.max() and d.mean() < 0.05, f"bf16 samples near fp32 (mean |diff| {d.mean():.4f})")
for env, want in ((FAST, "bf16"), (SLOW, "fp32")):
    r = mpirun(2, ["sample", "--checkpoint", ck, "--out", os.path.join(base, f"a-{want}.h5"),
                   "--n", "4", "--steps", "2", "--precision", "auto"], env_extra=env,
               mpi_args=HOOK)
    check(r.returncode == 0 and f"precision = auto chose {want}" in r.stdout
          and f"onednn {want}" in r.stdout,
          f"sample --precision auto on 2 ranks runs {want} ({r.stdout[-300:]} {r.stderr[-200:]})")
r = mpirun(1, ["sample", "--checkpoint", ck, "--out", os.path.join(base, "x.h5"),
               "--precision", "fp16"])
check(r.returncode == 2 and "--precision" in r.stderr, "sample --precision fp16: usage error")
r = mpirun(1, ["sample", "--checkpoint", ck, "--out", os.path.join(base, "y.h5"),
               "--precision", "bf16"], env_extra=NO_BF16, mpi_args=NO_BF16_ARGS)
check(r.returncode == 2 and "AVX512-BF16" in r.stderr and not os.path.exists(
    os.path.join(base, "y.h5")), "sample --precision bf16 without units: exit 2, no file")

# predict --precision on the same inputs.
inp = os.path.join(base, "in.h5")
rng = np.random.default_rng(0)
with h5py.File(inp, "w") as f:
    f["x"] = rng.standard_normal((6, 1, 28, 28)).astype(np.float32)
    f["t"] = np.linspace(0.1, 0.9, 6).astype(np.float32)
    f["c"] = np.arange(6).astype(np.int32)
ys = {}
for prec in ("fp32", "bf16"):
    o = os.path.join(base, f"p-{prec}.h5")
    r = mpirun(1, ["predict", "--checkpoint", ck, "--input", inp, "--output", o,
                   "--precision", prec])
    check(r.returncode == 0, f"predict --precision {prec} ({r.stderr[-200:]})")
    with h5py.File(o, "r") as f:
        ys[prec] = f["y"][()]
d = np.abs(ys["fp32"] - ys["bf16"])
scale = np.abs(ys["fp32"]).mean()
check(0 < d.max() and d.mean() < 0.05 * scale,
      f"predict bf16 near fp32 (mean |diff| {d.mean():.4f} of mean |y| {scale:.4f})")
finish()
