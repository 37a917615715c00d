"""Crash safety: SIGKILL one rank at many points of a run (between steps,
inside BatchNorm's gather, inside the gradient reduction, while rank 0
writes a checkpoint, the log or the samples). After every kill no file
named ckpt-*.h5 is partial, log.h5 still opens with h5py, `--resume auto`
finds a complete checkpoint (or, killed before the first one, a fresh run
is allowed) and the run ends bit-identical to an uninterrupted one with
every step logged once.

DIFFMPI_FULL_CAMPAIGN=1 runs every point at several steps and ranks
(tools/fault_campaign.sh)."""
import glob
import itertools
import os

import h5py
import numpy as np

from common import check, compare_h5, finish, tmpdir, train

EXTRA = ["keep=3"]   # so that the pruning of old checkpoints is exercised too
# (point, step at which it fires, rank); steps count completed steps,
# checkpoints every 5 steps and at the epoch end (step 22).
POINTS = [
    ("step", 3, 1),          # before the first checkpoint
    ("step", 7, 1), ("forward", 8, 0), ("bn", 12, 1), ("backward", 13, 0),
    ("reduce", 14, 1), ("reduce", 16, 0), ("allgather", 17, 1), ("adam", 18, 0),
    ("after_step", 19, 1), ("signal_check", 21, 0), ("log", 24, 0),
    ("log_flush", 25, 0), ("ckpt_begin", 10, 0), ("ckpt_mid", 15, 0),
    ("ckpt_closed", 30, 0), ("ckpt_renamed", 35, 0), ("ckpt_prune", 40, 0),
    ("eval", 22, 1), ("epoch_end", 22, 0), ("log_eval", 22, 0), ("samples", 22, 0),
    ("ckpt_mid", 22, 0), ("bn", 43, 1), ("reduce", 43, 0), ("ckpt_renamed", 44, 0),
]
if os.environ.get("DIFFMPI_FULL_CAMPAIGN"):
    # Every point at three steps on every rank that passes it: rank 0 alone
    # writes checkpoints, the log and the samples, and the checkpoint points
    # fire only at checkpoint steps (every 5, and the epoch end).
    ENDS = {"eval", "epoch_end", "log_eval", "samples"}
    RANK0 = {"log", "log_flush", "log_eval", "samples"}
    names = sorted({p for p, _, _ in POINTS} - ENDS)
    for p in names:
        # log_flush fires before each checkpoint (and on a timer that these
        # short steps seldom reach): at checkpoint steps too.
        ckpt = p.startswith("ckpt_") or p == "log_flush"
        ranks = (0,) if ckpt or p in RANK0 else (0, 1)
        POINTS += [(p, s, r) for s, r in itertools.product((5, 25, 40) if ckpt else (6, 27, 41),
                                                          ranks)]
    POINTS += [(p, 44, r) for p in sorted(ENDS) for r in ((0,) if p in RANK0 else (0, 1))]
# DIFFMPI_KILL_POINTS=point:step:rank,... runs only those (a campaign's
# failures again, say).
if os.environ.get("DIFFMPI_KILL_POINTS"):
    POINTS = [(a, int(b), int(c)) for a, b, c in
              (x.split(":") for x in os.environ["DIFFMPI_KILL_POINTS"].split(","))]

base = tmpdir()
ref = os.path.join(base, "ref")
check(train(2, ref, EXTRA).returncode == 0, "uninterrupted reference run")
ref_final = os.path.join(ref, "checkpoints", "ckpt-44.h5")

survived = 0
for point, step, rank in POINTS:
    name = f"{point}:{step}:{rank}"
    out = os.path.join(base, name.replace(":", "-"))
    r = train(2, out, EXTRA, env_extra={"DIFFMPI_TEST_KILL": name})
    killed = r.returncode != 0
    check(killed, f"{name}: the run was killed (rc {r.returncode})")
    good = True
    for ck in glob.glob(os.path.join(out, "checkpoints", "ckpt-*.h5")):
        try:
            with h5py.File(ck, "r") as f:
                good &= int(f.attrs["step"]) == int(ck.split("-")[-1][:-3])
                good &= f["model/head/weight"].shape[0] == 1
        except (OSError, KeyError):
            good = False
    check(good, f"{name}: every ckpt-*.h5 is complete")
    try:
        with h5py.File(os.path.join(out, "log.h5"), "r", swmr=True) as f:
            f["train/loss"][()]
        log_ok = True
    except (OSError, KeyError):
        log_ok = False
    check(log_ok, f"{name}: log.h5 opens with h5py after the kill")
    has_ckpt = bool(glob.glob(os.path.join(out, "checkpoints", "ckpt-*.h5")))
    r = train(2, out, EXTRA, resume="auto" if has_ckpt else None)
    check(r.returncode == 0, f"{name}: {'resume' if has_ckpt else 'fresh restart'} "
          f"exits 0 ({r.stderr.strip()[-200:]})")
    bad = compare_h5(ref_final, os.path.join(out, "checkpoints", "ckpt-44.h5"))
    check(not bad, f"{name}: final checkpoint bitwise equal ({bad[:3]})")
    bad = compare_h5(os.path.join(ref, "log.h5"), os.path.join(out, "log.h5"))
    check(not bad, f"{name}: log equal, no step twice ({bad[:3]})")
    with h5py.File(os.path.join(out, "log.h5"), "r") as f:
        check(np.array_equal(f["train/step"][()], np.arange(44)), f"{name}: steps 0..43 once")
    survived += killed and not bad
print(f"kills survived: {survived} of {len(POINTS)} distinct points")
check(survived == len(POINTS) and
      (len(set(POINTS)) >= 20 or "DIFFMPI_KILL_POINTS" in os.environ),
      "at least 20 distinct kill points")
finish()
