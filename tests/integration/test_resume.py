"""Resume exactness: a run stopped after k steps (checkpoint + exit code 3)
and resumed, on the same or another rank count, ends bit-identical to the
uninterrupted run, and its log holds every step exactly once."""
import os
import shutil

import h5py
import numpy as np

from common import check, compare_h5, finish, tmpdir, train

base = tmpdir()
ref = os.path.join(base, "ref")
r = train(2, ref)
check(r.returncode == 0, "uninterrupted reference run")
ref_final = os.path.join(ref, "checkpoints", "ckpt-44.h5")

# Resuming a run that already finished trains nothing, says so (no progress
# line with a loss of a step that never ran), and changes no file.
done_copy = os.path.join(base, "done-copy")
shutil.copytree(ref, done_copy)
r = train(2, done_copy, resume="auto")
check(r.returncode == 0, f"resuming a finished run exits 0 ({r.stderr[-300:]})")
check("nothing to train: the run had already finished its 44 steps" in r.stdout and
      " loss " not in r.stdout, f"resuming a finished run says so ({r.stdout[-300:]!r})")
for f in ("checkpoints/ckpt-44.h5", "log.h5"):
    bad = compare_h5(os.path.join(ref, f), os.path.join(done_copy, f), skip=())
    check(not bad, f"resuming a finished run leaves {f} as it was ({bad[:4]})")

# (stop step, ranks before, ranks after); 7 is mid-epoch between
# checkpoints, 22 is the end of epoch 1.
for k, p1, p2 in ((7, 2, 2), (7, 1, 3), (22, 3, 4), (30, 2, 1)):
    out = os.path.join(base, f"stop{k}-{p1}-{p2}")
    r = train(p1, out, env_extra={"DIFFMPI_TEST_STOP_AT_STEP": str(k)})
    check(r.returncode == 3, f"stop at step {k} on {p1} rank(s) exits 3 (rc {r.returncode})")
    check(os.path.exists(os.path.join(out, "checkpoints", f"ckpt-{k}.h5")),
          f"checkpoint ckpt-{k}.h5 written on stop")
    check("resume with --resume auto" in r.stdout, "stop message tells how to resume")
    r = train(p2, out, resume="auto")
    check(r.returncode == 0, f"resume on {p2} rank(s) exits 0 ({r.stderr[-300:]})")
    bad = compare_h5(ref_final, os.path.join(out, "checkpoints", "ckpt-44.h5"))
    check(not bad, f"stop@{k} P={p1}->P={p2}: final checkpoint bitwise equal ({bad[:4]})")
    bad = compare_h5(os.path.join(ref, "log.h5"), os.path.join(out, "log.h5"))
    check(not bad, f"stop@{k}: log equal to the uninterrupted log ({bad[:4]})")
    with h5py.File(os.path.join(out, "log.h5"), "r") as f:
        steps = f["train/step"][()]
    check(np.array_equal(steps, np.arange(44)), "every step logged exactly once")

# --resume PATH with an explicit older checkpoint: continues from there and
# the log is cut back to that step.
out = os.path.join(base, "explicit")
train(2, out, env_extra={"DIFFMPI_TEST_STOP_AT_STEP": "12"})
r = train(2, out, resume=os.path.join(out, "checkpoints", "ckpt-10.h5"))
check(r.returncode == 0, "resume from an explicit older checkpoint")
bad = compare_h5(ref_final, os.path.join(out, "checkpoints", "ckpt-44.h5"))
check(not bad, f"explicit resume: final checkpoint bitwise equal ({bad[:4]})")
# keep_epochs: the epoch-end checkpoints are kept apart from `keep`'s
# rotation, equal to the uninterrupted run's, and --resume auto still takes
# the newest ckpt-*.h5, not an epoch file.
out = os.path.join(base, "keep-epochs")
ck = os.path.join(out, "checkpoints")
r = train(2, out, ["keep=1", "keep_epochs=1,2"], env_extra={"DIFFMPI_TEST_STOP_AT_STEP": "30"})
check(r.returncode == 3, f"keep_epochs run stops at step 30 (rc {r.returncode})")
check("epoch 1/2: checkpoint kept as checkpoints/epoch-1.h5" in r.stdout,
      "the run says which checkpoint it keeps")
check(sorted(os.listdir(ck)) == ["ckpt-30.h5", "epoch-1.h5"],
      f"keep = 1 left the newest checkpoint and epoch-1.h5 ({sorted(os.listdir(ck))})")
r = train(2, out, ["keep=1", "keep_epochs=1,2"], resume="auto")
check(r.returncode == 0 and "resuming from " + os.path.join(ck, "ckpt-30.h5") in r.stdout,
      f"--resume auto takes ckpt-30.h5, not epoch-1.h5 ({r.stdout[:300]!r})")
check(sorted(os.listdir(ck)) == ["ckpt-44.h5", "epoch-1.h5", "epoch-2.h5"],
      f"after the run: ckpt-44.h5 and both epoch files ({sorted(os.listdir(ck))})")
for name, ref_name in (("epoch-1.h5", "ckpt-22.h5"), ("epoch-2.h5", "ckpt-44.h5"),
                       ("ckpt-44.h5", "ckpt-44.h5")):
    bad = compare_h5(os.path.join(ref, "checkpoints", ref_name), os.path.join(ck, name))
    check(not bad, f"keep_epochs: {name} bitwise equal to the reference's {ref_name} "
          f"({bad[:4]})")

# A class-conditioned DDPM model: stop mid-epoch on 2 ranks, resume on 3.
model = ["objective=ddpm", "conditioning=class", "sample_steps=8", "sample_epochs=1"]
ref = os.path.join(base, "class-ref")
check(train(1, ref, model).returncode == 0, "class model reference run")
out = os.path.join(base, "class-stop")
r = train(2, out, model, env_extra={"DIFFMPI_TEST_STOP_AT_STEP": "9"})
check(r.returncode == 3, f"class model stops at step 9 (rc {r.returncode})")
r = train(3, out, model, resume="auto")
check(r.returncode == 0, "class model resumes on 3 ranks")
for f in ("checkpoints/ckpt-44.h5", "log.h5", "samples.h5"):
    bad = compare_h5(os.path.join(ref, f), os.path.join(out, f))
    check(not bad, f"class model stop/resume: {f} bitwise equal ({bad[:4]})")
finish()
