"""The judge (objective = classify) and `diffmpi score`, end to end.

 - A tiny classifier trains to a test accuracy above chance, logged as
   /eval/test_acc (test_mse NaN, test_loss the cross-entropy); it is bitwise
   identical on 1, 2 and 3 ranks, and stopped on 2 ranks then resumed on 3
   it ends bitwise equal to the uninterrupted run.
 - score on 1 and 3 ranks prints the same figures and writes the same
   SCORE.h5; its accuracy and Frechet distance agree with NumPy/SciPy
   (scipy.linalg.sqrtm) on the features it saved (--features) to 1e-4
   relative; real digits score far better than noise.
 - Bad inputs: a judge that is not a classifier, images of the wrong shape,
   a NaN pixel, N = 1, a missing file: one line each, exit 2 or 1."""
import os

import h5py
import numpy as np
import scipy.linalg

from common import DATA, check, compare_h5, finish, mpirun, tmpdir, train, train_each

base = tmpdir()
JUDGE = ["objective=classify", "conditioning=none", "epochs=2", "eval_limit=256", "lr=2e-2"]


def ckpts(out):
    d = os.path.join(out, "checkpoints")
    return sorted(os.listdir(d), key=lambda n: int(n[5:-3]))


def last_ckpt(out):
    return os.path.join(out, "checkpoints", ckpts(out)[-1])


# ---- the classifier trains, rank-count independent, resumable --------------
outs = train_each((1, 2, 3), base, "classify", JUDGE)
with h5py.File(os.path.join(outs[1], "log.h5"), "r") as f:
    acc = f["eval/test_acc"][()]
    mse = f["eval/test_mse"][()]
    tl = f["eval/test_loss"][()]
check(len(acc) == 2 and np.all(np.isfinite(acc)) and acc[-1] > 0.3,
      f"test accuracy logged per epoch, well above chance 0.1 ({acc})")
check(np.all(np.isnan(mse)) and np.all(np.isfinite(tl)) and tl[-1] < 2.3,
      f"test_mse NaN, test_loss the cross-entropy ({mse}, {tl})")
for np_ in (2, 3):
    bad = compare_h5(os.path.join(outs[1], "log.h5"), os.path.join(outs[np_], "log.h5"))
    bad += compare_h5(last_ckpt(outs[1]), last_ckpt(outs[np_]))
    check(not bad, f"classifier on {np_} ranks bitwise equal to 1 rank ({bad[:4]})")

out = os.path.join(base, "judge-resumed")
r = train(2, out, JUDGE, env_extra={"DIFFMPI_TEST_STOP_AT_STEP": "29"})
check(r.returncode == 3, f"classifier stopped at step 29 exits 3 ({r.returncode})")
r = train(3, out, JUDGE, resume="auto")
check(r.returncode == 0, f"resumed on 3 ranks exits 0 ({r.stderr[-300:]})")
bad = compare_h5(last_ckpt(outs[1]), last_ckpt(out))
bad += compare_h5(os.path.join(outs[1], "log.h5"), os.path.join(out, "log.h5"))
check(not bad, f"stopped on 2, resumed on 3: bitwise the uninterrupted run ({bad[:4]})")
judge = last_ckpt(outs[1])
judge_p2 = last_ckpt(outs[2])


# ---- score: rank-count independent, equal to NumPy/SciPy ---------------------
def idx_images(name):
    raw = open(os.path.join(DATA, name), "rb").read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28).astype(np.float32) / 255


def idx_labels(name):
    raw = open(os.path.join(DATA, name), "rb").read()
    return np.frombuffer(raw, np.uint8, offset=8).astype(np.int32)


test_x, test_y = idx_images("t10k-images-idx3-ubyte"), idx_labels("t10k-labels-idx1-ubyte")
samples = os.path.join(base, "samples.h5")
labels = test_y[:150].copy()
labels[::7] = -1  # some images with no intended digit
with h5py.File(samples, "w") as f:
    f["images"] = test_x[:150]
    f["labels"] = labels
ref = os.path.join(base, "ref.h5")
with h5py.File(ref, "w") as f:
    f["images"] = test_x[150:700]
noise = os.path.join(base, "noise.h5")
with h5py.File(noise, "w") as f:
    f["images"] = np.random.default_rng(0).random((150, 28, 28), dtype=np.float32)
    f["labels"] = test_y[:150]


def score(np_, samples_path, out=None, extra=()):
    args = ["score", "--judge", judge, "--samples", samples_path, "--ref", ref] + list(extra)
    if out:
        args += ["--out", out, "--features"]
    return mpirun(np_, args)


def figures(stdout):
    return {l.split(" = ")[0]: l.split(" = ")[1] for l in stdout.splitlines() if " = " in l}


outs = {}
for np_ in (1, 3):
    outs[np_] = os.path.join(base, f"score-{np_}.h5")
    r = score(np_, samples, outs[np_])
    check(r.returncode == 0, f"score on {np_} rank(s) exits 0 ({r.stderr[-300:]})")
    if np_ == 1:
        fig1 = figures(r.stdout)
    else:
        check(figures(r.stdout) == fig1, "score prints the same figures on 1 and 3 ranks")
for k in ("accuracy", "accuracy_per_digit", "confidence", "frechet_distance", "entropy",
          "histogram"):
    check(k in fig1, f"score prints {k}")
bad = compare_h5(outs[1], outs[3])
check(not bad, f"SCORE.h5 bitwise equal on 1 and 3 ranks ({bad[:4]})")

with h5py.File(outs[1], "r") as f:
    fs, lg, fr = f["features"][()], f["logits"][()], f["reference_features"][()]
    c_fd, c_acc = f.attrs["frechet_distance"], f.attrs["accuracy"]
    c_ent, c_conf = f.attrs["entropy"], f.attrs["confidence"]
    check(f.attrs["judge"] == judge and len(f.attrs["judge_crc32"]) == 8
          and f.attrs["reference_n"] == 550 and f.attrs["n"] == 150,
          "SCORE.h5 names the judge, its CRC-32 and the counts")
    crc1 = f.attrs["judge_crc32"]
r = mpirun(1, ["score", "--judge", judge_p2, "--samples", samples, "--ref", ref,
               "--out", os.path.join(base, "score-judge2.h5")])
with h5py.File(os.path.join(base, "score-judge2.h5"), "r") as f:
    check(r.returncode == 0 and f.attrs["judge_crc32"] == crc1,
          "the same judge from another run (2 ranks) has the same CRC-32")
fs64, fr64 = fs.astype(np.float64), fr.astype(np.float64)
mu1, mu2 = fs64.mean(0), fr64.mean(0)
c1, c2 = np.cov(fs64, rowvar=False), np.cov(fr64, rowvar=False)
covmean = scipy.linalg.sqrtm(c1 @ c2)
py_fd = float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2)
              - 2 * np.trace(covmean.real))
check(abs(c_fd - py_fd) <= 1e-4 * abs(py_fd),
      f"Frechet distance: C {c_fd:.8g}, SciPy {py_fd:.8g}")
pred = lg.argmax(1)
has = labels >= 0
py_acc = float(np.mean(pred[has] == labels[has]))
p = np.exp(lg - lg.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
py_conf = float(np.mean(p[has, labels[has]]))
hist = np.bincount(pred, minlength=10) / len(pred)
py_ent = float(-np.sum(hist[hist > 0] * np.log(hist[hist > 0])))
check(abs(c_acc - py_acc) <= 1e-12 and abs(c_conf - py_conf) <= 1e-4 * py_conf
      and abs(c_ent - py_ent) <= 1e-4 * py_ent,
      f"accuracy {c_acc} / {py_acc}, confidence {c_conf:.6f} / {py_conf:.6f}, "
      f"entropy {c_ent:.6f} / {py_ent:.6f}")
# The judge in PyTorch (tools/diffmpi_torch.py's Judge, torch's own layers):
# the same logits and features as diffmpi's, and the cross-entropy diffmpi
# logged as the last test_loss is F.cross_entropy over those test images.
import sys  # noqa: E402
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tools"))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import diffmpi_torch  # noqa: E402
torch.set_num_threads(1)
jm = diffmpi_torch.load(judge)
with torch.no_grad():
    xt = torch.from_numpy(test_x[:150]).reshape(-1, 1, 28, 28)
    t_logits, t_feats = jm(xt).numpy(), jm.features(xt).numpy()
    t_loss = F.cross_entropy(jm(torch.from_numpy(test_x[:256]).reshape(-1, 1, 28, 28)),
                             torch.from_numpy(test_y[:256]).long()).item()
rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
check(rel(lg, t_logits) < 1e-4 and rel(fs, t_feats) < 1e-4,
      f"judge logits and features equal PyTorch's (rel {rel(lg, t_logits):.1e}, "
      f"{rel(fs, t_feats):.1e})")
check(abs(tl[-1] - t_loss) <= 1e-4 * t_loss,
      f"logged test_loss {tl[-1]:.7f} is PyTorch's cross-entropy {t_loss:.7f}")

r = score(1, noise)
fn = figures(r.stdout)
check(r.returncode == 0 and float(fn["frechet_distance"].split()[0]) >
      10 * float(fig1["frechet_distance"].split()[0]) and
      float(fn["accuracy"].split()[0]) < float(fig1["accuracy"].split()[0]),
      f"noise scores worse than real digits (FD {fn.get('frechet_distance')} vs "
      f"{fig1['frechet_distance']})")


# ---- judge = ...: scores during training -------------------------------------------
# A tiny class DDPM scores its samples after each sampling epoch: the scores
# are in /eval (NaN on epochs that do not sample), on the epoch lines and at
# the end, and the log is the same bits on 1 and 2 ranks. One run reads the
# reference from its own test set (eval_limit = 0), the other loads it.
DDPM = ["objective=ddpm", "conditioning=class", "sample_steps=4", "sample_epochs=2",
        "epochs=3", "train_limit=96", "score_n=12", "judge=" + judge]
scored = {}
for np_, limit in ((1, "eval_limit=0"), (2, "eval_limit=64")):
    out = os.path.join(base, f"scored-p{np_}")
    r = train(np_, out, DDPM + [limit])
    check(r.returncode == 0 and "judge: " in r.stdout and r.stdout.count(" samples: judge accuracy") == 2
          and "score of the last epoch's 12 samples" in r.stdout,
          f"judge = ...: a run on {np_} rank(s) scores epochs 2 and 3 and says so "
          f"({r.returncode}, {r.stderr[-300:]})")
    with h5py.File(os.path.join(out, "log.h5"), "r") as f:
        scored[np_] = {k: f["eval/" + k][()] for k in ("sample_acc", "sample_fd", "test_loss")}
sa, sf = scored[1]["sample_acc"], scored[1]["sample_fd"]
check(np.isnan(sa[0]) and np.isnan(sf[0]) and np.all(np.isfinite(sa[1:]))
      and np.all(sf[1:] > 0), f"/eval/sample_acc, sample_fd per sampling epoch ({sa}, {sf})")
check(all(np.array_equal(scored[1][k], scored[2][k], equal_nan=True)
          for k in ("sample_acc", "sample_fd")),
      "the scores are the same bits on 1 and 2 ranks (own test set or loaded)")
r = train(1, os.path.join(base, "scored-denoiser"), ["judge=" + judge])
one_line_usage = [l for l in r.stderr.splitlines() if l.startswith("diffmpi:")]
check(r.returncode == 2 and len(one_line_usage) == 1 and "judge" in one_line_usage[0],
      f"judge = ... on a denoiser: exit 2, one line ({r.returncode}, {one_line_usage})")


# ---- bad inputs ------------------------------------------------------------------
def one_line(r, code, words, what):
    lines = [l for l in r.stderr.splitlines() if l.startswith("diffmpi:")]
    check(r.returncode == code and len(lines) == 1 and all(w in lines[0] for w in words),
          f"{what}: exit {code} and one line naming {words} ({r.returncode}, {lines})")


# --precision auto says what it measured and chose, as train and sample do;
# a CPU without bf16 units runs fp32 unmeasured.
with open("/proc/cpuinfo") as f:
    has_bf16 = any(w in f.read().split() for w in ("avx512_bf16", "amx_bf16"))
r = mpirun(2, ["score", "--judge", judge, "--samples", samples, "--ref", ref,
               "--precision", "auto"], env_extra={"DIFFMPI_TEST_BF16_SPEEDUP": "0.5"},
           mpi_args=["-x", "DIFFMPI_TEST_BF16_SPEEDUP"])
chose = [l for l in r.stdout.splitlines() if "precision = auto chose" in l]
ok = (len(chose) == 1 and chose[0].startswith("score: precision = auto chose fp32: ")
      if has_bf16 else not chose)
check(r.returncode == 0 and ok,
      f"score --precision auto reports its choice ({chose}, {r.stderr[-200:]})")

den = os.path.join(base, "denoiser")
r = train(1, den, ["epochs=1", "train_limit=48"])
check(r.returncode == 0, "a denoiser trains for the not-a-judge case")
r = mpirun(2, ["score", "--judge", last_ckpt(den), "--samples", samples, "--ref", ref])
one_line(r, 2, ["not a judge", "objective = denoise"], "a denoiser as judge")
bad = os.path.join(base, "bad-shape.h5")
with h5py.File(bad, "w") as f:
    f["images"] = np.zeros((5, 28, 27), np.float32)
one_line(score(2, bad), 2, ["bad-shape.h5", "/images", "[N,28,28]"], "images 28x27")
with h5py.File(bad, "w") as f:
    x = test_x[:5].copy()
    x[3, 4, 5] = np.nan
    f["images"] = x
one_line(score(2, bad), 1, ["image 3", "non-finite", "row 4, column 5"], "a NaN pixel")
with h5py.File(bad, "w") as f:
    f["images"] = test_x[:1]
one_line(score(2, bad), 2, ["1 image", "at least 2"], "N = 1")
one_line(score(2, os.path.join(base, "missing.h5")), 1, ["missing.h5", "cannot open"],
         "a missing samples file")
r = mpirun(1, ["score", "--judge", judge])
one_line(r, 2, ["--samples"], "no --samples")

finish()
