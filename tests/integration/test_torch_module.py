"""tools/diffmpi_torch.py on real diffmpi checkpoints: load(path) gives the
network diffmpi predict runs (eval mode), within 1e-5 relative, for every
conditioning and both normalisations; a state_dict saved with torch.save
and loaded into a fresh module gives the same bits."""
import io
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

from common import BIN, SRC, TINY, check, finish, tmpdir, train

sys.path.insert(0, os.path.join(SRC, "tools"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402  (python3-torch, installed by tools/setup.sh)
import diffmpi_torch  # noqa: E402

torch.set_num_threads(1)
base = tmpdir()
rng = np.random.default_rng(5)
n = 9
x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
t = rng.uniform(0, 1, n).astype(np.float32)
c = np.array([3, -1, 7, 0, 9, -1, 2, 5, 1], dtype=np.int32)
inp = os.path.join(base, "in.h5")
with h5py.File(inp, "w") as f:
    f["x"], f["t"], f["c"] = x, t, c

models = {
    "denoise": ["objective=denoise", "conditioning=none"],
    "ddpm-time": ["objective=ddpm", "conditioning=time"],
    "flow-time": ["objective=flow", "conditioning=time"],
    "ddpm-class": ["objective=ddpm", "conditioning=class"],
    "flow-class-group": ["objective=flow", "conditioning=class", "norm=group",
                         "norm_groups=4"],
}
for name, extra in models.items():
    out = os.path.join(base, name)
    r = train(1, out, list(extra) + ["epochs=1", "sample_steps=2", "sample_epochs=1"])
    check(r.returncode == 0, f"{name}: tiny training exits 0 ({r.stderr[-200:]})")
    if r.returncode:
        continue
    ck = os.path.join(out, "checkpoints", sorted(
        os.listdir(os.path.join(out, "checkpoints")), key=lambda s: int(s[5:-3]))[-1])
    res = os.path.join(base, name + "-y.h5")
    p = subprocess.run([BIN, "predict", "--checkpoint", ck, "--input", inp, "--output", res],
                       capture_output=True, text=True)
    check(p.returncode == 0, f"{name}: diffmpi predict exits 0 ({p.stderr[-200:]})")
    if p.returncode:
        continue
    with h5py.File(res, "r") as f:
        want = f["y"][()]
    model = diffmpi_torch.load(ck)
    check(not model.training, f"{name}: load() returns the model in eval mode")
    with h5py.File(ck, "r") as f:
        stored = f.attrs.get("cond_mix")
    stored = stored.decode() if isinstance(stored, bytes) else stored
    check(stored == model.mix == diffmpi_torch.mix_of(
              dict(e.split("=") for e in extra)["objective"],
              dict(e.split("=") for e in extra)["conditioning"]),
          f"{name}: the checkpoint's cond_mix ({stored}) is the model load() builds")
    if name == "ddpm-time":
        # load() reads the attribute, not the objective's name: a copy that
        # says mul builds the multiplicative model
        alt = os.path.join(base, "mul.h5")
        shutil.copy(ck, alt)
        with h5py.File(alt, "r+") as f:
            f.attrs["cond_mix"] = "mul"
        check(diffmpi_torch.load(alt).mix == "mul",
              f"{name}: load() builds what cond_mix says (a copy saying mul)")
    cond = "conditioning=none" not in extra
    klass = "conditioning=class" in extra
    with torch.no_grad():
        got = model(torch.from_numpy(x), torch.from_numpy(t) if cond else None,
                    torch.from_numpy(c).long() if klass else None).numpy()
    rel = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    check(got.shape == want.shape and rel <= 1e-5,
          f"{name}: PyTorch output equals diffmpi predict (max rel diff {rel:.2e} <= 1e-5)")
    # The check can fail: another checkpoint's weights differ by far more.
    if name == "ddpm-time":
        other = diffmpi_torch.load(os.path.join(out, "checkpoints", "ckpt-5.h5"))
        with torch.no_grad():
            o = other(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        check(float(np.max(np.abs(o - want)) / np.max(np.abs(want))) > 1e-3,
              f"{name}: an earlier checkpoint's output differs (the comparison can fail)")
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = diffmpi_torch.UNet(model.D, mix=model.mix, norm=model.norm_kind,
                               groups=model.groups).eval()
    fresh.load_state_dict(torch.load(buf))
    with torch.no_grad():
        again = fresh(torch.from_numpy(x), torch.from_numpy(t) if cond else None,
                      torch.from_numpy(c).long() if klass else None).numpy()
    check(again.tobytes() == got.tobytes(),
          f"{name}: torch.save/torch.load of the state_dict round-trips bitwise")
finish()
