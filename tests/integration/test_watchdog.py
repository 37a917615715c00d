"""A rank that stops answering (SIGSTOP) does not hang the job: after the
configured timeout the watchdog prints one line naming that rank and the
step, the job ends with exit code 1, and it resumes from its last
checkpoint."""
import os
import re
import signal
import subprocess
import time

from common import BIN, TINY, check, finish, tmpdir, train

base = tmpdir()
out = os.path.join(base, "run")
args = ["mpirun", "--oversubscribe", "-np", "3", BIN, "train", "--out", out]
for kv in TINY + ["watchdog=6"]:
    args += ["--set", kv]
env = dict(os.environ, DIFFMPI_TEST_CKPT_DELAY="0.3")
p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     start_new_session=True)
t0 = time.time()
while not os.path.exists(os.path.join(out, "checkpoints", "ckpt-5.h5")) and p.poll() is None \
        and time.time() - t0 < 120:
    time.sleep(0.05)
pids = subprocess.run(["pgrep", "-s", str(p.pid), "-x", "diffmpi"], capture_output=True,
                      text=True).stdout.split()
check(len(pids) == 3, f"three ranks running ({pids})")
# Which pid is rank 2? Its heartbeat file is written by that pid's thread; use
# /proc/<pid>/environ (OMPI_COMM_WORLD_RANK).
victim = None
for pid in pids:
    with open(f"/proc/{pid}/environ", "rb") as f:
        if b"OMPI_COMM_WORLD_RANK=2\0" in f.read():
            victim = int(pid)
check(victim is not None, "found rank 2")
time.sleep(1.5)
for r in range(3):
    with open(os.path.join(out, ".heartbeat", f"rank-{r}")) as f:
        print(f"heartbeat of rank {r} before the stop: {f.read().strip()}")
stopped_at = time.time()
os.kill(victim, signal.SIGSTOP)
try:
    so, se = p.communicate(timeout=120)
finally:
    try:
        os.kill(victim, signal.SIGCONT)
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
took = time.time() - stopped_at
lines = [l for l in se.splitlines() if l.startswith("diffmpi:")]
check(p.returncode == 1, f"job ends with exit code 1 (rc {p.returncode})")
check(len(lines) == 1 and re.search(r"watchdog: no progress for 6 s in step \d+; not answering: "
                                     r"rank 2 on \S+ \(", lines[0]) is not None,
      f"one line naming rank 2 and the step ({lines})")
check(took < 40, f"ended {took:.0f} s after the rank stopped (timeout 6 s)")
r = train(2, out, ["watchdog=6"], resume="auto")
check(r.returncode == 0, f"resumes and finishes ({r.stderr[-200:]})")
finish()
