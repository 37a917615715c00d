"""A private single-node Slurm 22.05 instance for the integration tests.

Everything it writes (configuration, state, spool, logs, pid files, the
jobcomp record) lives in one temporary directory; the daemons run in the
foreground as children of the test (`slurmctld -D -f CONF`, `slurmd -D -f
CONF`) on ports chosen free at start, and clients find it through
SLURM_CONF, which start() exports into os.environ so that jobs submitted with
`sbatch --export=ALL` (and `scontrol requeue` inside them) see it too.
No systemd, no munge: auth/none and cred/none, which 22.05 still allows.

    with Slurm() as s:            # starts, waits for the node to be idle
        s.sbatch([...], wait=True)
    # stopped: jobs cancelled, `scontrol shutdown`, leftovers killed by PID

stop() also runs from atexit and on SIGTERM/SIGINT, and only ever kills
processes that belong to this instance: its two daemons, every slurmstepd
whose working directory or open files lie under the instance's directory,
every process whose environment carries this instance's SLURM_CONF, and the
descendants of all of those. Should the test itself be killed with SIGKILL
(a ctest timeout), the daemons still get SIGTERM (PR_SET_PDEATHSIG); a job
step running then is left to finish on its own.
"""
import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return b"" if "b" in mode else ""


def _start_time(pid):
    """Start time of a process (clock ticks after boot), None if gone."""
    stat = _read(f"/proc/{pid}/stat")
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _instance_processes(d, daemons=()):
    """PIDs of the processes of the instance in directory d: its daemons,
    every slurmstepd whose working directory or open files lie under d,
    every process whose environment holds SLURM_CONF=d/slurm.conf, and
    everything below those."""
    marker = ("SLURM_CONF=" + os.path.join(d, "slurm.conf")).encode()
    me = os.getpid()
    parent, found = {}, set(daemons)
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit() or int(pid_s) == me:
            continue
        pid = int(pid_s)
        base = f"/proc/{pid}"
        try:
            parent[pid] = int(_read(base + "/stat").rsplit(")", 1)[1].split()[1])
        except (IndexError, ValueError):
            continue
        try:
            exe = os.readlink(base + "/exe")
        except OSError:
            exe = ""
        if os.path.basename(exe) == "slurmstepd":
            # slurmstepd rewrites its environment: find it by its working
            # directory or its open files (the slurmd log, the job output).
            paths = []
            try:
                paths.append(os.readlink(base + "/cwd"))
                for fd in os.listdir(base + "/fd"):
                    try:
                        paths.append(os.readlink(f"{base}/fd/{fd}"))
                    except OSError:
                        pass
            except OSError:
                pass
            if any(x == d or x.startswith(d + "/") for x in paths):
                found.add(pid)
        elif marker in _read(base + "/environ", "rb").split(b"\0"):
            found.add(pid)
    grew = True
    while grew:
        grew = False
        for pid, pp in parent.items():
            if pp in found and pid not in found and pid != me:
                found.add(pid)
                grew = True
    return found


def _kill_all(find, rounds=50):
    """SIGKILL what find() returns until it returns nothing."""
    for _ in range(rounds):
        left = find()
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)


def reap_dead_instances():
    """Clean up after instances whose test process was killed outright
    (SIGKILL, e.g. a ctest timeout): the daemons die with it, but a job
    step that was running then keeps retrying to report to them. Only
    directories with an owner file naming a process that no longer exists
    are touched."""
    for d in glob.glob(os.path.join(tempfile.gettempdir(), "diffmpi-slurm-*")):
        owner = _read(os.path.join(d, "owner")).split()
        if len(owner) != 2 or not all(x.isdigit() for x in owner):
            continue
        if _start_time(int(owner[0])) == int(owner[1]):
            continue        # its test is still running
        _kill_all(lambda: _instance_processes(d))
        shutil.rmtree(d, ignore_errors=True)


def _die_with_parent():
    """In the child before exec: SIGTERM when the test process dies, even
    by SIGKILL (a ctest timeout), so no daemon outlives it."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class SlurmError(RuntimeError):
    pass


class Slurm:
    def __init__(self, cpus=4, keep_dir=False):
        self.dir = tempfile.mkdtemp(prefix="diffmpi-slurm-")
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus
        self.keep_dir = keep_dir
        self.procs = {}         # name -> Popen of the two daemons
        self.stopped = False
        self._old_env = os.environ.get("SLURM_CONF")

    # ---- configuration -------------------------------------------------
    def _write_conf(self):
        d = self.dir
        for sub in ("state", "spool", "tmp", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        lines = [
            "ClusterName=diffmpitest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            # No munge daemon: trust every local request (private instance).
            "AuthType=auth/none",
            "CredType=cred/none",
            # A requeued job may start again after cred_expire + 1 s
            # (default 120 s).
            "AuthInfo=cred_expire=10",
            "JobRequeue=1",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool",
            f"TmpFS={d}/tmp",
            f"SlurmctldPidFile={d}/slurmctld.pid",
            f"SlurmdPidFile={d}/slurmd.pid",
            f"SlurmctldLogFile={d}/log/slurmctld.log",
            f"SlurmdLogFile={d}/log/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            # No sacct without slurmdbd: a text record of every finished job.
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={d}/log/jobcomp.txt",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=pmix",
            # The node may declare more CPUs than the machine has.
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "MailProg=/bin/true",
            # Schedule at once, forget finished jobs soon (0 is not allowed;
            # below about 4 s a job can vanish before `sbatch --wait` polls).
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,"
            "sched_interval=1,bf_interval=1",
            "MinJobAge=4",
            # SIGTERM to SIGKILL when a job is cancelled (default 30 s).
            "KillWait=5",
            "InactiveLimit=0",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            "RealMemory=1 State=UNKNOWN",
            f"PartitionName=test Nodes={self.host} Default=YES "
            "MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    # ---- clients -------------------------------------------------------
    def env(self, extra=None):
        # Nothing of an enclosing Slurm job (if the tests run inside one)
        # may leak into this instance's clients and jobs.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = self.conf
        env.update(extra or {})
        return env

    def run(self, args, timeout=60, check=False, **kw):
        r = subprocess.run(args, env=kw.pop("env", None) or self.env(),
                           capture_output=True, text=True, timeout=timeout,
                           **kw)
        if check and r.returncode != 0:
            raise SlurmError(f"{' '.join(args)}: rc {r.returncode}: "
                             f"{r.stderr.strip()}")
        return r

    def sbatch(self, args, wait=False, env=None, cwd=None, timeout=600):
        """Submit; returns (CompletedProcess, job id or None). With wait,
        the return code is the job's exit code."""
        cmd = ["sbatch", "--parsable", "--export=ALL"]
        if wait:
            cmd.append("--wait")
        r = self.run(cmd + list(args), env=self.env(env), cwd=cwd,
                     timeout=timeout)
        first = (r.stdout.strip().splitlines() or [""])[0]
        jid = first.split(";")[0] if first.split(";")[0].isdigit() else None
        return r, jid

    def job(self, jid):
        """`scontrol show job` as a dict ({} once the job is forgotten)."""
        r = self.run(["scontrol", "-o", "show", "job", str(jid)])
        if r.returncode != 0:
            return {}
        out = {}
        for tok in r.stdout.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                out.setdefault(k, v)
        return out

    def jobcomp(self, jid):
        """Records of the job in the jobcomp file (one per end, requeues
        included), each a dict."""
        recs = []
        for line in _read(os.path.join(self.dir, "log", "jobcomp.txt")).splitlines():
            rec = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
            if rec.get("JobId") == str(jid):
                recs.append(rec)
        return recs

    def log_tail(self, n=15):
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            lines = _read(os.path.join(self.dir, "log", name)).splitlines()
            out.append(f"--- {name}:\n" + "\n".join(lines[-n:]))
        return "\n".join(out)

    # ---- start / stop --------------------------------------------------
    def start(self, timeout=60):
        for tool in ("slurmctld", "slurmd", "sbatch", "scontrol", "sinfo"):
            if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
                raise SlurmError(f"{tool} not installed (tools/setup.sh installs "
                                 "slurmd slurmctld slurm-client)")
        if os.geteuid() != 0:
            raise SlurmError("the private Slurm runs its daemons and jobs as "
                             "root (SlurmUser=root): run the tests as root")
        reap_dead_instances()
        self._write_conf()
        with open(os.path.join(self.dir, "owner"), "w") as f:
            f.write(f"{os.getpid()} {_start_time(os.getpid())}\n")
        os.environ["SLURM_CONF"] = self.conf
        atexit.register(self.stop)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)
        for name in ("slurmctld", "slurmd"):
            exe = shutil.which(name) or "/usr/sbin/" + name
            # slurmctld -c: ignore any saved state (the directory is new
            # anyway). -D: stay in the foreground, so we hold the PID.
            args = [exe, "-D", "-f", self.conf] + (["-c"] if name == "slurmctld" else [])
            err = open(os.path.join(self.dir, "log", name + ".stderr"), "w")
            self.procs[name] = subprocess.Popen(
                args, env=self.env(), stdout=err, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True,
                preexec_fn=_die_with_parent)
            err.close()
        t0 = time.time()
        state = ""
        while time.time() - t0 < timeout:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SlurmError(f"{name} exited with {p.returncode} at start\n"
                                     + _read(os.path.join(self.dir, "log", name + ".stderr"))
                                     + self.log_tail())
            r = self.run(["sinfo", "-h", "-N", "-o", "%t"], timeout=10)
            state = r.stdout.strip()
            if r.returncode == 0 and state == "idle":
                return self
            time.sleep(0.1)
        raise SlurmError(f"node not idle after {timeout} s (state '{state}')\n"
                         + self.log_tail())

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def _on_signal(self, signum, frame):
        # Turn into an exception so that finally blocks and atexit run.
        raise SystemExit(128 + signum)

    def processes(self):
        """PIDs of every process that belongs to this instance."""
        daemons = [p.pid for p in self.procs.values() if p.poll() is None]
        return _instance_processes(self.dir, daemons)

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        try:
            if any(p.poll() is None for p in self.procs.values()):
                self.run(["scancel", "--user=" + str(os.getuid())], timeout=20)
                t0 = time.time()
                while time.time() - t0 < 10:
                    r = self.run(["squeue", "-h", "-o", "%i"], timeout=10)
                    if r.returncode != 0 or not r.stdout.strip():
                        break
                    time.sleep(0.2)
                self.run(["scontrol", "shutdown"], timeout=20)
                t0 = time.time()
                while time.time() - t0 < 10 and \
                        any(p.poll() is None for p in self.procs.values()):
                    time.sleep(0.1)
        except (subprocess.SubprocessError, OSError) as e:
            print(f"slurm: clean shutdown failed ({e}); killing", file=sys.stderr)
        # Whatever is left of this instance (never anything else).
        _kill_all(self.processes)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._old_env is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._old_env
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    # Smoke test: python3 slurm.py  -> start, show the node, run a job, stop.
    t0 = time.time()
    with Slurm() as s:
        print(f"started in {time.time() - t0:.2f} s: {s.dir}")
        print(s.run(["sinfo"]).stdout)
        r, jid = s.sbatch(["-n", "2", f"--output={s.dir}/j-%j.out",
                           "--wrap", "srun hostname; echo restart=${SLURM_RESTART_COUNT:-0}"], wait=True)
        print("job", jid, "rc", r.returncode, r.stderr.strip())
        print(_read(f"{s.dir}/j-{jid}.out"))
        t1 = time.time()
    print(f"stopped in {time.time() - t1:.2f} s; left: {s.processes()}")
