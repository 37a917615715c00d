"""The Slurm job scripts under a real Slurm 22.05 (a private single-node
instance, slurm.py):
a. every jobs/slurm/*.sbatch, submitted from the repository root with
   `sbatch --wait` at a tiny size, exits 0 and leaves its outputs;
c. the same job with LAUNCH="srun --mpi=pmix" gives the mpirun job's
   checkpoint, log and samples bit for bit, and so does one task of 2 cpus
   (1 rank x 2 threads, mpirun --map-by slot:PE=2 --bind-to core);
b. a job of 2-thread ranks warned with USR1 the way `--signal=B:USR1@T`
   does it (to the batch shell only) checkpoints, exits 3, requeues itself,
   resumes and ends bit for bit like an uninterrupted one-thread run, with
   every step logged once.
"""
import glob
import os
import re
import shutil
import subprocess
import time

import h5py
import numpy as np

from common import BIN, DATA, SRC, check, compare_h5, failures, finish, tmpdir
from slurm import Slurm, SlurmError

T0 = time.time()
# The jobs inherit this through `sbatch --export=ALL`.
os.environ.update({
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_plm_rsh_agent": "false", "OMPI_MCA_pml": "ob1",
    "OPENBLAS_NUM_THREADS": "1", "DIFFMPI": os.path.abspath(BIN)})
for k in ("LAUNCH", "DIFFMPI_TEST_CKPT_DELAY", "DIFFMPI_TEST_STOP_AT_STEP"):
    os.environ.pop(k, None)

base = tmpdir()
# The job configs' precision = auto and conv_algo = auto are timings: two
# fresh runs (the uninterrupted reference and the preempted job, the srun and
# the mpirun job) may choose differently, the more so on a busy machine (a
# CI run beside a training chose fp32 in one and bf16 in the other), and then
# differ in the last bits. Every run here sets what auto records instead:
# fp32, Winograd F(2x2) from 14 wide, F(4x4) from 28.
PIN = ["conv_algo=winograd", "winograd_min_width=14", "winograd4_min_width=28",
       "precision=fp32"]
# 64 images in batches of 16 (2 micro-batches of 8): 4 steps, one epoch.
TINY = ["hidden=4", "train_limit=64", "eval_limit=32", "batch=16",
        "micro_batch=8", "sample_steps=4", "log_every=1000",
        "data_dir=" + DATA, "epochs=1"] + PIN
TINY_STEPS = 4
# 20-40 s on 2 busy cores with the checkpoint delay: 64 steps in 2 epochs,
# a checkpoint every 4 steps, all kept.
LONGER = ["hidden=8", "train_limit=1024", "eval_limit=64", "batch=32",
          "micro_batch=8", "sample_steps=4", "checkpoint_every=4",
          "keep=100", "log_every=5", "data_dir=" + DATA, "epochs=2"] + PIN
LONGER_STEPS = 64
# Well above the scripts' --signal=B:USR1@600: with a limit of 10 minutes
# or less, Slurm sends the warning as soon as it checks (within ~30 s).
SUBMIT = ["--ntasks=2", "--time=30"]


def sets(kvs):
    return [a for kv in kvs for a in ("--set", kv)]


def say(msg):
    print(f"[{time.time() - T0:6.1f} s] {msg}", flush=True)


def checkd(cond, what, detail):
    """check() that adds the detail only when it fails."""
    check(cond, what if cond else f"{what}: {detail}")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def tail(text, n=15):
    return "\n".join(text.splitlines()[-n:]) or "(no job output)"


def default_config(script):
    """The CONFIG default of a job script: "${1:-jobs/configs/X.ini}"."""
    m = re.search(r'"\$\{1:-([^}]+)\}"', read(os.path.join(SRC, script)))
    return m.group(1) if m else None


def log_steps(out):
    with h5py.File(os.path.join(out, "log.h5"), "r", swmr=True) as f:
        return np.asarray(f["train/step"][()]).astype(np.int64).tolist()


def each_step_once(out, n):
    """n consecutive steps in the log, none twice (it counts from 0)."""
    try:
        steps = log_steps(out)
    except (OSError, KeyError):
        return False
    return len(steps) == n and steps == list(range(steps[0], steps[0] + n))


def outputs_ok(out, steps, what):
    """log.h5, samples.h5 and the final checkpoint; returns its path."""
    ck = os.path.join(out, "checkpoints", f"ckpt-{steps}.h5")
    have = sorted(os.listdir(os.path.dirname(ck))) \
        if os.path.isdir(os.path.dirname(ck)) else []
    checkd(os.path.exists(ck), f"{what}: final checkpoint ckpt-{steps}.h5", have)
    for f in ("log.h5", "samples.h5"):
        check(os.path.exists(os.path.join(out, f)), f"{what}: {f}")
    return ck


def job_output(d, jid):
    hits = glob.glob(os.path.join(d, f"*-{jid}.out"))
    return read(hits[0]) if hits else ""


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
         "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def wait_job(s, jid, timeout):
    """Poll until the job has ended for good (a requeue passes through
    PENDING); returns (state, exit code, restarts, states seen)."""
    seen, restarts, t0 = [], 0, time.time()
    while time.time() - t0 < timeout:
        j = s.job(jid)
        if not j:     # forgotten already (MinJobAge): the jobcomp record
            recs = s.jobcomp(jid)
            last = recs[-1] if recs else {}
            return last.get("JobState", "?"), last.get("ExitCode", "?"), \
                max(restarts, len(recs) - 1), seen
        st = j.get("JobState", "?")
        restarts = max(restarts, int(j.get("Restarts", "0") or 0))
        if not seen or seen[-1] != st:
            seen.append(st)
        if st in FINAL:
            return st, j.get("ExitCode", "?"), restarts, seen
        time.sleep(0.25)
    return "(test timeout)", "?", restarts, seen


def submit_tiny(s, d, script, out, env=None):
    """sbatch --wait one job script from the repository root."""
    t = time.time()
    r, jid = s.sbatch(SUBMIT + [f"--output={d}/%x-%j.out", script,
                                default_config(script), out] + sets(TINY),
                      wait=True, cwd=SRC, env=env, timeout=300)
    text = job_output(d, jid)
    say(f"{os.path.basename(script)}: job {jid} exit {r.returncode} in "
        f"{time.time() - t:.1f} s")
    return r, jid, text


# The uninterrupted reference for b, on plain mpirun (rank-count
# independence lets it use any count), running while Slurm works.
ref = os.path.join(base, "ref")
ref_log = open(os.path.join(base, "ref.out"), "w")
ref_proc = subprocess.Popen(
    ["mpirun", "--oversubscribe", "-np", "2", os.path.abspath(BIN), "train",
     "--config", os.path.join(SRC, "jobs/configs/class-ddpm.ini"),
     "--out", ref] + sets(LONGER), stdout=ref_log, stderr=subprocess.STDOUT)

s = Slurm()
left = set()
try:
    try:
        s.start()
        say(f"private Slurm up, node {s.host} idle ({s.dir})")
    except (SlurmError, OSError, subprocess.SubprocessError) as e:
        check(False, f"start a private slurmctld + slurmd: {e}")
        finish()

    # a. Every job script, tiny, one after another.
    adir = os.path.join(base, "a")
    os.makedirs(adir)
    scripts = sorted(os.path.relpath(p, SRC) for p in
                     glob.glob(os.path.join(SRC, "jobs/slurm/*.sbatch")))
    check(len(scripts) >= 9, f"found the job scripts ({len(scripts)})")
    mpirun_out = {}
    for script in scripts:
        name = os.path.basename(script)[:-len(".sbatch")]
        config = default_config(script)
        checkd(config and os.path.exists(os.path.join(SRC, config)),
               f"{name}: default config exists", config)
        out = os.path.join(adir, name)
        r, jid, text = submit_tiny(s, adir, script, out)
        checkd(r.returncode == 0, f"{name}: job exits 0",
               f"exit {r.returncode} {r.stderr.strip()[-300:]}\n{tail(text)}")
        outputs_ok(out, TINY_STEPS, name)
        check(each_step_once(out, TINY_STEPS),
              f"{name}: --set epochs=1 after the script's own wins "
              f"({TINY_STEPS} steps logged)")
        checkd(f"diffmpi job {jid} restart 0, launch mpirun:" in text
               and "2 rank(s)" in text,
               f"{name}: mpirun ran 2 ranks inside job {jid}", tail(text))
        mpirun_out[name] = out

    # c. The same job with srun --mpi=pmix as the launcher.
    cdir = os.path.join(base, "c")
    os.makedirs(cdir)
    name = "class-ddpm-5ep"
    script = f"jobs/slurm/{name}.sbatch"
    out = os.path.join(cdir, "srun")
    r, jid, text = submit_tiny(s, cdir, script, out,
                               env={"LAUNCH": "srun --mpi=pmix"})
    checkd(r.returncode == 0, "srun: job exits 0",
           f"exit {r.returncode} {r.stderr.strip()[-300:]}\n{tail(text)}")
    checkd(f"diffmpi job {jid} restart 0, launch srun --mpi=pmix:" in text
           and "2 rank(s)" in text, "srun: srun --mpi=pmix ran 2 ranks",
           tail(text))
    outputs_ok(out, TINY_STEPS, "srun")
    for f in (f"checkpoints/ckpt-{TINY_STEPS}.h5", "log.h5", "samples.h5"):
        a, b = os.path.join(mpirun_out.get(name, "-"), f), os.path.join(out, f)
        bad = compare_h5(a, b) if os.path.exists(a) and os.path.exists(b) \
            else ["missing"]
        checkd(not bad, f"srun job = mpirun job: {f} bitwise equal", bad[:4])

    # The allocation's layout with mpirun: 1 task of 2 cpus = 1 rank x 2
    # threads bound by --map-by slot:PE=2 --bind-to core, the same bits.
    out = os.path.join(cdir, "pe2")
    t = time.time()
    r, jid = s.sbatch(["--ntasks=1", "--cpus-per-task=2", "--time=30",
                       f"--output={cdir}/%x-%j.out", script, default_config(script), out]
                      + sets(TINY), wait=True, cwd=SRC, timeout=300)
    text = job_output(cdir, jid)
    say(f"{name} -n 1 -c 2: job {jid} exit {r.returncode} in {time.time() - t:.1f} s")
    checkd(r.returncode == 0 and "--map-by slot:PE=2 --bind-to core" in text
           and "layout: 1 rank(s) x 2 thread(s)" in text,
           "mpirun -n 1 -c 2: one rank of 2 threads, bound by PE=2", tail(text))
    for f in (f"checkpoints/ckpt-{TINY_STEPS}.h5", "log.h5", "samples.h5"):
        a, b = os.path.join(mpirun_out.get(name, "-"), f), os.path.join(out, f)
        bad = compare_h5(a, b) if os.path.exists(a) and os.path.exists(b) \
            else ["missing"]
        checkd(not bad, f"1 rank x 2 threads = 2 ranks: {f} bitwise equal", bad[:4])

    # b. Warning signal, checkpoint, requeue, resume.
    bdir = os.path.join(base, "b")
    os.makedirs(bdir)
    out = os.path.join(bdir, "run")
    t = time.time()
    # Its ranks have 2 threads each (sharing their core: correct, not fast).
    r, jid = s.sbatch(SUBMIT + [f"--output={bdir}/%x-%j.out", script,
                                default_config(script), out] + sets(LONGER + ["threads=2"]),
                      cwd=SRC, env={"DIFFMPI_TEST_CKPT_DELAY": "0.3"})
    checkd(r.returncode == 0 and jid, "preempt: job submitted", r.stderr.strip())
    first = os.path.join(out, "checkpoints", "ckpt-4.h5")
    while jid and time.time() - t < 120 and not os.path.exists(first) and \
            s.job(jid).get("JobState") in ("PENDING", "RUNNING"):
        time.sleep(0.05)
    check(os.path.exists(first), "preempt: first checkpoint written")
    if jid:
        # What --signal=B:USR1@T does: USR1 to the batch shell alone.
        sig = s.run(["scancel", "--batch", "--signal=USR1", jid])
        say(f"preempt: job {jid} sent USR1 (scancel --batch) "
            f"{time.time() - t:.1f} s after submit")
        checkd(sig.returncode == 0, "preempt: scancel --batch --signal=USR1",
               sig.stderr.strip())
        state, code, restarts, seen = wait_job(s, jid, 240)
        text = job_output(bdir, jid)
        say(f"preempt: job {jid} {state} exit {code}, {restarts} restart(s), "
            f"{time.time() - t:.1f} s after submit (states {' '.join(seen)})")
        checkd(state == "COMPLETED" and code == "0:0",
               "preempt: the job completes in the end",
               f"{state} {code}\n{tail(text, 30)}\n{s.log_tail()}")
        check(restarts == 1, f"preempt: requeued exactly once ({restarts})")
        m = re.search(r"stopped by signal 10 after step (\d+)", text)
        stop = int(m.group(1)) if m else -1
        checkd(0 < stop < LONGER_STEPS,
               f"preempt: the run stopped on USR1 after step {stop}", tail(text))
        check(f"checkpointed on a signal; requeueing job {jid}" in text,
              "preempt: exit 3 made train-job.sh requeue the job")
        # The stop reads as one in the job's log: diffmpi's line, then the
        # requeue, and none of mpirun's banner for a non-zero exit.
        lines = [l for l in text.splitlines() if l.strip()]
        at = next((i for i, l in enumerate(lines) if "stopped by signal 10" in l), -1)
        check(at >= 0 and "requeueing job" in lines[at + 1] and "Primary job" not in text
              and "Exit code:" not in text,
              f"preempt: the log says stop, then requeue, no mpirun banner "
              f"({lines[at:at + 2] if at >= 0 else tail(text)})")
        check(re.search(rf"diffmpi job {jid} restart 1, launch mpirun: "
                        r".* --resume auto", text) is not None,
              "preempt: the requeued job (SLURM_RESTART_COUNT=1) resumes")
        check(f"resuming from {out}/checkpoints/ckpt-{stop}.h5" in text,
              f"preempt: resumed from the signal's checkpoint ckpt-{stop}.h5")
    try:
        ref_proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        ref_proc.kill()
        ref_proc.wait()
    checkd(ref_proc.returncode == 0, "uninterrupted reference run (mpirun)",
           tail(read(os.path.join(base, "ref.out"))))
    for f in (f"checkpoints/ckpt-{LONGER_STEPS}.h5", "log.h5", "samples.h5"):
        a, b = os.path.join(ref, f), os.path.join(out, f)
        bad = compare_h5(a, b) if os.path.exists(a) and os.path.exists(b) \
            else ["missing"]
        checkd(not bad, f"preempt: {f} bitwise equal to the uninterrupted run",
               bad[:4])
    check(each_step_once(out, LONGER_STEPS),
          f"preempt: every step logged exactly once ({LONGER_STEPS})")
finally:
    if ref_proc.poll() is None:
        ref_proc.kill()
        ref_proc.wait()
    ref_log.close()
    t = time.time()
    s.stop()
    left = s.processes()
    say(f"Slurm stopped in {time.time() - t:.1f} s")
check(not left, f"nothing of the private Slurm left running ({sorted(left)})")
if failures:
    print(f"outputs kept in {base}")
else:       # about 60 MB, mostly the diffusion samples
    shutil.rmtree(base, ignore_errors=True)
finish()
