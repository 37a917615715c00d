"""A run on 1, 2, 3 and 4 ranks gives bit-identical loss logs, evaluation,
checkpoints (weights, BN statistics, Adam state) and samples; so does a
GroupNorm run (norm = group) on 1, 2 and 3 ranks, whose checkpoint holds
gn_weight/gn_bias and no running statistics."""
import os

import h5py

from common import TINY, check, compare_h5, datasets, finish, mpirun, tmpdir, train, train_each

base = tmpdir()
runs = {}
for p in (1, 2, 3, 4):
    out = os.path.join(base, f"p{p}")
    r = train(p, out)
    check(r.returncode == 0, f"P={p} run exits 0 (rc {r.returncode}: {r.stderr[-300:]})")
    runs[p] = out

for p in (2, 3, 4):
    for name in ("log.h5", "checkpoints/ckpt-44.h5", "checkpoints/ckpt-25.h5",
                 "samples.h5"):
        bad = compare_h5(os.path.join(runs[1], name), os.path.join(runs[p], name))
        check(not bad, f"P={p} {name} bitwise equal to P=1 (differ: {bad[:5]})")

# The check can fail: a different seed must change the log.
out = os.path.join(base, "seed1")
train(1, out, ["seed=1"])
bad = compare_h5(os.path.join(runs[1], "log.h5"), os.path.join(out, "log.h5"))
check("train/loss" in bad, "a different seed changes the loss log")

# bn_sync=rank is documented as rank-count dependent: it runs, and on one
# rank it equals the global mode.
out = os.path.join(base, "bnrank1")
r = train(1, out, ["bn_sync=rank"])
bad = compare_h5(os.path.join(runs[1], "log.h5"), os.path.join(out, "log.h5"))
check(r.returncode == 0 and not bad, f"bn_sync=rank on 1 rank equals global ({bad[:3]})")
out = os.path.join(base, "bnrank2")
r = train(2, out, ["bn_sync=rank"])
check(r.returncode == 0, "bn_sync=rank runs on 2 ranks")

# Diffusion models: class-conditioned DDPM and time-conditioned flow, with
# sampling (spread over the ranks) at both epochs.
for model in (["objective=ddpm", "conditioning=class"],
              ["objective=flow", "conditioning=time"]):
    name = model[0].split("=")[1] + "-" + model[1].split("=")[1]
    outs = {}
    for p in (1, 2, 3):
        out = os.path.join(base, f"{name}-p{p}")
        r = train(p, out, model + ["sample_steps=12", "sample_epochs=1"])
        check(r.returncode == 0, f"{name} P={p} exits 0 ({r.stderr[-300:]})")
        outs[p] = out
    for p in (2, 3):
        for f in ("log.h5", "checkpoints/ckpt-44.h5", "samples.h5"):
            bad = compare_h5(os.path.join(outs[1], f), os.path.join(outs[p], f))
            check(not bad, f"{name} P={p} {f} bitwise equal to P=1 ({bad[:5]})")
    # `sample` names the guidance only where there is a class to guide by.
    r = mpirun(1, ["sample", "--checkpoint", os.path.join(outs[1], "checkpoints", "ckpt-44.h5"),
                   "--out", os.path.join(base, f"{name}-s.h5"), "--n", "4", "--steps", "4"])
    said = "guidance 5," if "conditioning=class" in model else "no guidance: no class to guide by"
    check(r.returncode == 0 and said in r.stdout,
          f"{name}: sample says {said!r} ({r.stdout[-200:]!r})")
    # ... and records it only there, in sample's file and the run's samples
    with h5py.File(os.path.join(base, f"{name}-s.h5"), "r") as f:
        g1 = f.attrs.get("guidance")
    with h5py.File(os.path.join(outs[1], "samples.h5"), "r") as f:
        g2 = f["samples/epoch_0001"].attrs.get("guidance")
    want = 5 if "conditioning=class" in model else None
    check(g1 == want and g2 == want,
          f"{name}: the guidance attribute is {want} in both files ({g1}, {g2})")

# GroupNorm: statistics per image and group, nothing combined across
# micro-batches or ranks, so any rank count gives the same bits (hidden = 8:
# 4 groups of 2 channels at D, 4 of 4 at 2D, ...).
group = ["norm=group", "norm_groups=4"]
gouts = train_each((1, 2, 3), base, "group", group)
for p in (2, 3):
    for f in ("log.h5", "checkpoints/ckpt-25.h5", "checkpoints/ckpt-44.h5", "samples.h5"):
        bad = compare_h5(os.path.join(gouts[1], f), os.path.join(gouts[p], f))
        check(not bad, f"norm=group P={p} {f} bitwise equal to P=1 ({bad[:5]})")

# Its checkpoint: gn_weight and gn_bias of the BatchNorm run's shapes on
# exactly the units that have bn_weight/bn_bias there; no bn_* and no
# running statistics anywhere (model or Adam state); the configuration
# stored says so.
gck = os.path.join(gouts[1], "checkpoints", "ckpt-44.h5")
bck = os.path.join(runs[1], "checkpoints", "ckpt-44.h5")
g, b = datasets(gck), datasets(bck)


def units(names, leaf):
    return {n[:-len(leaf) - 1] for n in names
            if n.startswith("model/") and n.endswith("/" + leaf)}


gunits, bunits = units(g, "gn_weight"), units(b, "bn_weight")
check(len(gunits) > 0 and gunits == bunits,
      f"gn_weight on the {len(gunits)} units that have bn_weight under BatchNorm "
      f"(differ: {sorted(gunits ^ bunits)[:4]})")
shapes = all(f"{u}/gn_bias" in g and g[f"{u}/gn_weight"].shape == b[f"{u}/bn_weight"].shape
             and g[f"{u}/gn_bias"].shape == b[f"{u}/bn_bias"].shape for u in gunits)
check(shapes, "gn_weight, gn_bias [C] beside each, BatchNorm's shapes")
stale = [n for n in g if "running" in n or "/bn_" in n]
check(not stale, f"no running statistics or bn_* datasets ({stale[:4]})")
check(all(f"optim/{mv}/{u[len('model/'):]}/gn_weight" in g for u in gunits for mv in "mv"),
      "Adam m and v hold gn_weight for every unit")
with h5py.File(gck, "r") as f:
    cfg = f.attrs["config"]
    cfg = cfg.decode() if isinstance(cfg, bytes) else cfg
check("norm = group" in cfg and "norm_groups = 4" in cfg,
      "the stored configuration says norm = group, norm_groups = 4")

# The comparison can fail: GroupNorm changes the loss log.
bad = compare_h5(os.path.join(runs[1], "log.h5"), os.path.join(gouts[1], "log.h5"))
check("train/loss" in bad, "norm=group gives another loss log than norm=batch")
finish()
