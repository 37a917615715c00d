"""Signals and failures: a real SIGUSR1 through mpirun checkpoints and exits
3; kill -9 in the middle of a checkpoint write leaves the previous
checkpoint usable and the resumed run exact; a non-finite loss stops the run
naming the step and keeps the last good checkpoint."""
import glob
import os
import re
import signal
import subprocess
import time

import h5py

from common import BIN, SRC, TINY, check, compare_h5, finish, mpirun, tmpdir, train

base = tmpdir()
ref = os.path.join(base, "ref")
check(train(2, ref).returncode == 0, "reference run")
ref_final = os.path.join(ref, "checkpoints", "ckpt-44.h5")


def start(out, env_extra):
    args = ["mpirun", "--oversubscribe", "-np", "2", BIN, "train", "--out", out]
    for kv in TINY:
        args += ["--set", kv]
    env = dict(os.environ)
    env.update(env_extra)
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def rank_pids(proc):
    """The diffmpi processes of an mpirun started with start_new_session."""
    return [int(x) for x in subprocess.run(["pgrep", "-s", str(proc.pid), "-x", "diffmpi"],
                                           capture_output=True, text=True).stdout.split()]


def wait_for(pattern, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        hits = glob.glob(pattern)
        if hits:
            return hits
        time.sleep(0.02)
    return []


# A real SIGUSR1 to mpirun (as Slurm's --signal sends it).
out = os.path.join(base, "usr1")
p = start(out, {"DIFFMPI_TEST_CKPT_DELAY": "0.3"})
wait_for(os.path.join(out, "checkpoints", "ckpt-5.h5"), p)
p.send_signal(signal.SIGUSR1)
so, se = p.communicate(timeout=300)
check(p.returncode == 3, f"SIGUSR1: exit code 3 (rc {p.returncode}, {se[-200:]})")
check("stopped by signal" in so, "SIGUSR1: stop message printed")
r = train(2, out, resume="auto")
check(r.returncode == 0, "resume after SIGUSR1")
bad = compare_h5(ref_final, os.path.join(out, "checkpoints", "ckpt-44.h5"))
check(not bad, f"SIGUSR1 + resume: final checkpoint bitwise equal ({bad[:4]})")

# Live analysis: a second process follows the log with h5py in SWMR mode
# while the run goes on, and sees the number of rows grow.
out = os.path.join(base, "live")
p = start(out, {"DIFFMPI_TEST_CKPT_DELAY": "0.4"})
wait_for(os.path.join(out, "checkpoints", "ckpt-5.h5"), p)
seen = []
t0 = time.time()
while p.poll() is None and time.time() - t0 < 60 and len(set(seen)) < 3:
    try:
        with h5py.File(os.path.join(out, "log.h5"), "r", swmr=True) as f:
            f["train/loss"].refresh()
            seen.append(len(f["train/loss"]))
    except OSError as e:
        seen.append(f"error {e}")
        break
    time.sleep(0.3)
running = p.poll() is None
p.communicate(timeout=300)
rows = [x for x in seen if isinstance(x, int)]
check(running and len(set(rows)) >= 2 and rows == sorted(rows),
      f"log read live with swmr=True, rows growing ({seen[:8]})")

# SIGTERM to every rank (what scancel and a node shutdown send).
out = os.path.join(base, "term")
p = start(out, {"DIFFMPI_TEST_CKPT_DELAY": "0.3"})
wait_for(os.path.join(out, "checkpoints", "ckpt-5.h5"), p)
pids = rank_pids(p)
check(len(pids) == 2, f"found both ranks ({pids})")
for pid in pids:
    os.kill(pid, signal.SIGTERM)
so, se = p.communicate(timeout=300)
check(p.returncode == 3, f"SIGTERM: exit code 3 (rc {p.returncode})")
r = train(2, out, resume="auto")
bad = compare_h5(ref_final, os.path.join(out, "checkpoints", "ckpt-44.h5"))
check(r.returncode == 0 and not bad, f"SIGTERM + resume: final checkpoint bitwise equal ({bad[:4]})")

# SIGTERM to jobs/run-mpirun.sh (what `kill PID` of a job started with the
# shipped scripts sends): the script passes it on as SIGUSR1, which mpirun
# forwards (a TERM to mpirun itself would end the ranks mid-step).
out = os.path.join(base, "script-term")
ini = os.path.join(base, "tiny.ini")
with open(ini, "w") as f:
    f.write("".join(kv.replace("=", " = ", 1) + "\n" for kv in TINY))
env = dict(os.environ, DIFFMPI=BIN, MPIRUN_ARGS="--oversubscribe",
           DIFFMPI_TEST_CKPT_DELAY="0.3")
p = subprocess.Popen(["bash", os.path.join(SRC, "jobs", "run-mpirun.sh"), ini, out, "2"],
                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     start_new_session=True)
wait_for(os.path.join(out, "checkpoints", "ckpt-5.h5"), p)
p.send_signal(signal.SIGTERM)
so, se = p.communicate(timeout=300)
check(p.returncode == 3 and "stopped by signal 10" in so,
      f"SIGTERM to run-mpirun.sh: the ranks get USR1, exit 3 ({p.returncode}, {se[-200:]})")
# A requested stop reads as one: diffmpi's line ends the output, and
# mpirun's banner for a non-zero exit is not on stderr (jobs/launch.sh);
# mpirun's own "Forwarding signal 10 to job" stays.
last = [l for l in so.splitlines() if l.strip()][-1:]
other = [l for l in se.splitlines() if l.strip() and "Forwarding signal" not in l]
check(bool(last) and last[0].startswith("stopped by signal 10 after step")
      and last[0].endswith("checkpoint written, resume with --resume auto") and not other,
      f"run-mpirun.sh stop: diffmpi's line last, no mpirun banner ({last}, {se[-300:]!r})")
# A rank that dies is still reported in full (the filter keeps other blocks).
p = subprocess.run(["bash", os.path.join(SRC, "jobs", "run-mpirun.sh"), ini,
                    os.path.join(base, "script-kill"), "2"],
                   env=dict(env, DIFFMPI_TEST_KILL="step:2:1"), capture_output=True, text=True,
                   timeout=300)
check(p.returncode != 0 and p.returncode != 3 and "exited on signal 9" in p.stderr,
      f"run-mpirun.sh: a killed rank keeps mpirun's report ({p.returncode}, {p.stderr[-300:]!r})")
r = train(2, out, resume="auto")
bad = compare_h5(ref_final, os.path.join(out, "checkpoints", "ckpt-44.h5"))
check(r.returncode == 0 and not bad,
      f"run-mpirun.sh TERM + resume: final checkpoint bitwise equal ({bad[:4]})")

# kill -9 of every process while rank 0 is inside a checkpoint write.
out = os.path.join(base, "kill9")
p = start(out, {"DIFFMPI_TEST_CKPT_DELAY": "2"})
hits = wait_for(os.path.join(out, "checkpoints", ".ckpt-10.h5.tmp"), p)
check(bool(hits), "caught a checkpoint write in progress")
os.killpg(p.pid, signal.SIGKILL)
p.communicate()
done = sorted(glob.glob(os.path.join(out, "checkpoints", "ckpt-*.h5")))
check([os.path.basename(d) for d in done] == ["ckpt-5.h5"],
      f"only the complete checkpoint carries a final name ({done})")
with h5py.File(os.path.join(out, "checkpoints", "ckpt-5.h5"), "r") as f:
    check(f.attrs["step"] == 5, "previous checkpoint reads back with h5py")
with h5py.File(os.path.join(out, "log.h5"), "r", swmr=True) as f:
    check(len(f["train/loss"]) >= 5, "log readable (SWMR) after kill -9")
r = train(2, out, resume="auto")
check(r.returncode == 0, f"resume auto after kill -9 ({r.stderr[-300:]})")
check("ckpt-5.h5" in r.stdout, "resumed from the last complete checkpoint")
check(not glob.glob(os.path.join(out, "checkpoints", ".ckpt-*.tmp")),
      "stale temporary checkpoint removed")
bad = compare_h5(ref_final, os.path.join(out, "checkpoints", "ckpt-44.h5"))
check(not bad, f"kill -9 + resume: final checkpoint bitwise equal ({bad[:4]})")
bad = compare_h5(os.path.join(ref, "log.h5"), os.path.join(out, "log.h5"))
check(not bad, f"kill -9 + resume: log equal, no step twice ({bad[:4]})")

# Signals that land inside a product. The products of the tiny runs above
# take microseconds; at D=128 they take milliseconds. oneDNN 2.6's JIT
# sgemm points rsp into a heap workspace while it runs, so a signal frame
# pushed there overwrites other heap memory (seen at D=128: "double free or
# corruption" after one USR1 from mpirun). The ranks block TERM and USR1 in
# the thread that computes and take them at the step boundary. Checked: the
# mask itself, while the run computes; then USR1 sent to both ranks every
# 5 ms until they stop: a clean stop (exit 3), and the run resumed from its
# checkpoint ends bitwise equal to one never signalled (a frame written
# over a buffer would show there even where it does not crash).
big = list(TINY) + ["hidden=128", "batch=128", "micro_batch=32", "engine=onednn",
                    "precision=fp32", "checkpoint_every=0", "epochs=1"]
big_args = sum((["--set", kv] for kv in big), [])
ref_big = os.path.join(base, "ref-big")
r = mpirun(2, ["train", "--out", ref_big] + big_args)
check(r.returncode == 0, f"D=128 reference run ({r.stderr[-300:]})")
out = os.path.join(base, "burst")
p = subprocess.Popen(["mpirun", "--oversubscribe", "-np", "2", BIN, "train", "--out", out]
                     + big_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     start_new_session=True)
beat = os.path.join(out, ".heartbeat", "rank-0")
t0 = time.time()
while time.time() - t0 < 120 and p.poll() is None:  # until step 1 is done
    try:
        with open(beat) as f:
            if int(f.read().split()[0]) >= 1:
                break
    except (OSError, ValueError, IndexError):
        pass
    time.sleep(0.05)
pids = rank_pids(p)
masks = []
for pid in pids:  # the main thread (tid = pid) is the one that computes
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        blk = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
    masks.append(all(blk >> (s - 1) & 1 for s in (signal.SIGUSR1, signal.SIGTERM)))
check(len(pids) == 2 and all(masks),
      f"mid-run, both ranks' computing threads block USR1 and TERM ({pids}, {masks})")
sent = 0
t0 = time.time()
while time.time() - t0 < 120 and p.poll() is None:  # until the ranks stop
    for pid in pids:
        try:
            os.kill(pid, signal.SIGUSR1)
            sent += 1
        except ProcessLookupError:
            pass
    time.sleep(0.005)
so, se = p.communicate(timeout=300)
check(p.returncode == 3 and "stopped by signal 10" in so and sent > 100,
      f"{sent} USR1 mid-product: clean stop, exit 3 (rc {p.returncode}, {se[-300:]})")
r = mpirun(2, ["train", "--out", out, "--resume", "auto"] + big_args)
bad = compare_h5(os.path.join(ref_big, "checkpoints", "ckpt-4.h5"),
                 os.path.join(out, "checkpoints", "ckpt-4.h5"))
check(r.returncode == 0 and not bad,
      f"signalled D=128 run resumed: final checkpoint bitwise equal ({r.stderr[-200:]} {bad[:4]})")

# A learning rate that blows the weights up: non-finite loss at step 2.
out = os.path.join(base, "nan")
r = train(2, out, ["lr=1e38", "checkpoint_every=1"])
err = [l for l in r.stderr.splitlines() if l.startswith("diffmpi:")]
check(r.returncode == 1, f"non-finite loss: exit 1 (rc {r.returncode})")
m = re.search(r"non-finite loss at step (\d+)", err[0]) if len(err) == 1 else None
check(m is not None, f"one line naming the step ({err})")
bad_step = int(m.group(1)) if m else -1
steps = sorted(int(re.search(r"ckpt-(\d+)", x).group(1)) for x in
               glob.glob(os.path.join(out, "checkpoints", "ckpt-*.h5")))
check(bool(steps) and steps[-1] == bad_step - 1,
      f"last good checkpoint (step {bad_step - 1}) kept ({steps})")
# A non-finite gradient while the loss is still finite (a test hook poisons
# one entry at step 12): stop before Adam, name the step, keep checkpoints.
out = os.path.join(base, "nangrad")
r = train(2, out, env_extra={"DIFFMPI_TEST_NAN_GRAD": "12"})
err = [l for l in r.stderr.splitlines() if l.startswith("diffmpi:")]
check(r.returncode == 1 and len(err) == 1 and "non-finite gradient at step 13" in err[0],
      f"non-finite gradient: exit 1, one line naming the step ({err})")
steps = sorted(int(re.search(r"ckpt-(\d+)", x).group(1)) for x in
               glob.glob(os.path.join(out, "checkpoints", "ckpt-*.h5")))
check(steps and steps[-1] == 10, f"checkpoints before the bad step kept ({steps})")
r = train(2, out, resume="auto")
bad = compare_h5(ref_final, os.path.join(out, "checkpoints", "ckpt-44.h5"))
check(r.returncode == 0 and not bad, "resume from the last good checkpoint ends bitwise equal")
finish()
