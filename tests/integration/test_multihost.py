"""Several hosts, for real: 2 and 3 "hosts" made by this test as network and
UTS namespaces (own hostname, own address in 198.18.0.0/24, which exists
only inside them, joined by a bridge in a fourth namespace), mpirun
launching into them through a launcher agent that enters the namespace,
Open MPI on TCP only (`btl tcp,self`). A run over 2 and over 3 hosts is
bitwise identical to the one-host run (log, checkpoints, samples), rank 0's
host writes the outputs, every host reads the data from the same directory,
a run stopped on 3 hosts resumes on 2 hosts bitwise, a Slurm job over two
nodes (`srun -N 2 --mpi=pmix`, a private slurmctld and a slurmd per
namespace) is bitwise equal too, and losing a host
mid-run (its link taken down) ends the whole job within the watchdog's
time plus a few seconds, with one line naming the rank, host and
collective, after which --resume auto on the remaining host finishes
bitwise identical to an uninterrupted run. Over constrained links (2 hosts
of 2-thread ranks on wires with 1 ms delay and 1 % packet loss, 3 hosts on
1 Gbit/s links; tools/nshosts.py) the runs are bitwise equal too; the
host-loss run has 2 threads a rank.

Everything the test makes (namespaces, links, VDE processes, the agent) is removed
at the end, also after a failure. Traffic is a D=8 model (about 40 KB of
gradient per step) over a few dozen steps; each mpirun has a time limit.
Where namespaces cannot be made (not root, no iproute2), the test says so
and is skipped (exit code 77)."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import BIN, SRC, TINY, check, compare_h5, finish, tmpdir, train
from slurm import _instance_processes, _kill_all

sys.path.insert(0, os.path.join(SRC, "tools"))
from nshosts import Hosts, sh  # noqa: E402

SKIP = 77
tag = f"dm{os.getpid() % 100000}"
H = Hosts(3, tag=tag)
HOSTS = list(zip(H.names, H.ns, H.addrs))
base = tmpdir()


def launch_cmd(n, args, hosts=H, prog=BIN):
    """The command that runs prog ARGS on the first n hosts, one rank each,
    mpirun on hostA, and its environment."""
    return hosts.mpirun(n, [prog] + list(args))


def on_hosts(n, args, hosts=H, timeout=300, prog=BIN):
    cmd, env = launch_cmd(n, args, hosts, prog)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def train_args(out, extra=(), resume=None):
    a = ["train", "--out", out]
    for kv in list(TINY) + list(extra):
        a += ["--set", kv]
    return a + (["--resume", resume] if resume else [])


def slurm_two_nodes(ref, model):
    """A private Slurm with two nodes, hostA and hostB: slurmctld and one
    slurmd per namespace (nsenter keeps the machine's /sys/fs/cgroup, which
    `ip netns exec` would hide; each slurmd gets its own mount namespace
    with a private TmpFS, where PMIx makes per-step directories whose names
    would collide on a shared one). A `srun -N 2 --mpi=pmix` run must be
    bitwise equal to the one-host run."""
    d = tempfile.mkdtemp(prefix="diffmpi-slurm2-")
    conf = os.path.join(d, "slurm.conf")
    for sub in ("state", "log", "tmp", "tmp-hostA", "tmp-hostB"):
        os.makedirs(os.path.join(d, sub))
    nodes = "".join(f"NodeName={n} NodeAddr={a} CPUs=2 RealMemory=1 State=UNKNOWN\n"
                    for n, _, a in HOSTS[:2])
    with open(conf, "w") as f:
        f.write(f"""ClusterName=diffmpimh
SlurmctldHost=hostA({HOSTS[0][2]})
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool-%n
TmpFS={d}/tmp
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=4
{nodes}PartitionName=mh Nodes=hostA,hostB Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=conf, OPENBLAS_NUM_THREADS="1", OMPI_MCA_btl="tcp,self",
               OMPI_MCA_pml="ob1", OMPI_MCA_btl_tcp_if_include="198.18.0.0/24",
               OMPI_MCA_oob_tcp_if_include="198.18.0.0/24")
    env.pop("OMPI_MCA_plm_rsh_agent", None)
    net = [f"--net=/run/netns/{ns}" for _, ns, _ in HOSTS]
    daemons = []
    try:
        log = open(os.path.join(d, "log", "daemons.stderr"), "w")
        daemons.append(subprocess.Popen(
            ["nsenter", net[0], "unshare", "--uts", "sh", "-c",
             f"hostname hostA; exec slurmctld -D -c -f {conf}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        for (name, _, _), n in zip(HOSTS[:2], net):
            daemons.append(subprocess.Popen(
                ["nsenter", n, "unshare", "--uts", "--mount", "sh", "-c",
                 f"hostname {name}; mount --bind {d}/tmp-{name} {d}/tmp; "
                 f"exec slurmd -D -N {name} -f {conf}"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        t0, state = time.time(), ""
        while time.time() - t0 < 60 and state != "idle idle":
            time.sleep(0.3)
            r = subprocess.run(["nsenter", net[0], "sinfo", "-h", "-N", "-o", "%t"], env=env,
                               capture_output=True, text=True, timeout=20)
            state = " ".join(r.stdout.split())
        check(state == "idle idle", f"Slurm: two slurmd nodes in two namespaces ({state!r})")
        if state != "idle idle":
            return
        out = os.path.join(base, "slurm-2-nodes")
        r = subprocess.run(["nsenter", net[0], "srun", "-N", "2", "--ntasks-per-node=1",
                            "--mpi=pmix", "hostname"], env=env, capture_output=True,
                           text=True, timeout=60)
        check(sorted(r.stdout.split()) == ["hostA", "hostB"],
              f"srun -N 2 puts one task on each host ({r.stdout.split()} {r.stderr[-200:]})")
        r = subprocess.run(["nsenter", net[0], "srun", "-N", "2", "--ntasks-per-node=1",
                            "--mpi=pmix", BIN] + train_args(out, model), env=env,
                           capture_output=True, text=True, timeout=300)
        check(r.returncode == 0, f"srun -N 2 --mpi=pmix train exits 0 ({r.stderr[-300:]})")
        for f in [] if r.returncode else ("log.h5", "checkpoints/ckpt-44.h5", "samples.h5"):
            bad = compare_h5(os.path.join(ref, f), os.path.join(out, f))
            check(not bad, f"Slurm, 2 nodes: {f} bitwise equal to the one-host run ({bad[:4]})")
        # The job script takes the layout from the allocation: 2 nodes x 1
        # task x 2 cpus = 2 ranks x 2 threads, bound, the same bits.
        out = os.path.join(base, "slurm-2x2")
        ini = os.path.join(d, "empty.ini")
        open(ini, "w").close()
        job_out = os.path.join(d, "job-2x2.out")
        sets = [a for kv in list(TINY) + list(model) for a in ("--set", kv)]
        r = subprocess.run(["nsenter", net[0], "sbatch", "--wait", "-N", "2",
                            "--ntasks-per-node=1", "-c", "2", "-o", job_out,
                            os.path.join(SRC, "jobs", "slurm", "train-job.sh"), ini, out] + sets,
                           env=dict(env, LAUNCH="srun --mpi=pmix", DIFFMPI=BIN),
                           capture_output=True, text=True, timeout=400, cwd=SRC)
        text = open(job_out).read() if os.path.exists(job_out) else ""
        check(r.returncode == 0, f"sbatch -N 2 -c 2 train-job.sh exits 0 ({r.stderr[-200:]} "
                                 f"{text[-300:]})")
        check("layout: 2 rank(s) x 2 thread(s) = 4 workers" in text
              and "allocation: 2 task(s) on 2 node(s), 2 cpu(s) per task" in text,
              f"the job prints the allocation and the layout ({text[:400]!r})")
        for f in [] if r.returncode else ("log.h5", "checkpoints/ckpt-44.h5", "samples.h5"):
            bad = compare_h5(os.path.join(ref, f), os.path.join(out, f))
            check(not bad, f"Slurm, 2 nodes x 2 threads: {f} bitwise equal to the one-host "
                           f"run ({bad[:4]})")
    finally:
        subprocess.run(["nsenter", net[0], "scontrol", "shutdown"], env=env,
                       capture_output=True, timeout=30)
        for p in daemons:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _kill_all(lambda: _instance_processes(d, [p.pid for p in daemons if p.poll() is None]))
        shutil.rmtree(d, ignore_errors=True)


if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
    print("skip: network namespaces need root and iproute2 (ip) and util-linux (unshare)")
    sys.exit(SKIP)
try:
    H.up()
except (RuntimeError, OSError, subprocess.SubprocessError) as e:
    H.down()
    print(f"skip: cannot make network namespaces here: {e}")
    sys.exit(SKIP)

try:
    model = ["objective=ddpm", "conditioning=class", "sample_steps=4", "sample_epochs=1"]
    ref = os.path.join(base, "one-host")
    r = train(1, ref, model)
    check(r.returncode == 0, f"one-host reference run ({r.stderr[-200:]})")

    r = on_hosts(3, [], timeout=60, prog="hostname")
    check(sorted(r.stdout.split()) == ["hostA", "hostB", "hostC"],
          f"one rank on each of hostA, hostB, hostC ({r.stdout.split()} {r.stderr[-200:]})")
    r = on_hosts(3, ["bench", "--set", "hidden=8", "--set", "batch=12", "--set",
                     "micro_batch=4", "--steps", "1", "--verbose"], timeout=120)
    check(r.returncode == 0, f"a 3-host job starts ({r.stderr[-300:]})")
    for n in (2, 3):
        out = os.path.join(base, f"run-{n}-hosts")
        t0 = time.time()
        r = on_hosts(n, train_args(out, model))
        errs = [l for l in r.stderr.splitlines() if "diffmpi" in l]
        check(r.returncode == 0, f"{n} hosts: run exits 0 in {time.time() - t0:.0f} s "
              f"({errs[:3]} {r.stderr[-300:]})")
        if r.returncode != 0:
            continue
        for f in ("log.h5", "checkpoints/ckpt-25.h5", "checkpoints/ckpt-44.h5", "samples.h5"):
            bad = compare_h5(os.path.join(ref, f), os.path.join(out, f))
            check(not bad, f"{n} hosts: {f} bitwise equal to the one-host run ({bad[:4]})")

    # 2 hosts of 2 ranks: the gradient exchange finds the hosts' ranks
    # (MPI_Comm_split_type shared), combines them within each host and sends
    # along 2 rails; the same bits.
    out = os.path.join(base, "run-2x2")
    cmd, env = H.mpirun(4, [BIN] + train_args(out, model), per_host=2)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    check(r.returncode == 0 and "gradient reduction: node-aware, 2 node(s) x 2 rank(s)"
          in r.stdout, f"2 hosts x 2 ranks: node-aware, exits 0 ({r.stderr[-300:]})")
    for f in [] if r.returncode else ("log.h5", "checkpoints/ckpt-44.h5", "samples.h5"):
        bad = compare_h5(os.path.join(ref, f), os.path.join(out, f))
        check(not bad, f"2 hosts x 2 ranks: {f} bitwise equal to the one-host run ({bad[:4]})")

    # Stopped on 3 hosts, resumed on 2, from the same (shared) directory.
    out = os.path.join(base, "stop3-resume2")
    os.environ["DIFFMPI_TEST_STOP_AT_STEP"] = "17"
    r = on_hosts(3, train_args(out, model))
    del os.environ["DIFFMPI_TEST_STOP_AT_STEP"]
    check(r.returncode == 3, f"3 hosts: stopped at step 17 (rc {r.returncode})")
    r = on_hosts(2, train_args(out, model, resume="auto"))
    check(r.returncode == 0, f"resumed on 2 hosts ({r.stderr[-300:]})")
    for f in [] if r.returncode else ("checkpoints/ckpt-44.h5", "log.h5", "samples.h5"):
        bad = compare_h5(os.path.join(ref, f), os.path.join(out, f))
        check(not bad, f"3 hosts -> 2 hosts: {f} bitwise equal ({bad[:4]})")

    # Constrained links: 2 hosts over VDE wires that delay each packet by
    # 1 ms and lose 1 % of them (host to switch; TCP resends), 3 hosts over
    # veth links held to 1 Gbit/s each way by tc tbf. Slower, the same bits.
    for n, kw, what, extra in ((2, dict(link="wire", delay_ms=1, loss_pct=1),
                                "1 ms delay and 1 % loss, 2 threads a rank", ["threads=2"]),
                               (3, dict(link="veth", rate_gbit=1), "1 Gbit/s links", [])):
        try:
            with Hosts(n, tag=f"{tag}w", **kw) as W:
                out = os.path.join(base, f"shaped-{n}")
                t0 = time.time()
                r = on_hosts(n, train_args(out, model + extra), hosts=W)
                check(r.returncode == 0, f"{n} hosts, {what}: run exits 0 in "
                                         f"{time.time() - t0:.0f} s ({r.stderr[-300:]})")
                for f in [] if r.returncode else ("log.h5", "checkpoints/ckpt-44.h5",
                                                  "samples.h5"):
                    bad = compare_h5(os.path.join(ref, f), os.path.join(out, f))
                    check(not bad, f"{n} hosts, {what}: {f} bitwise equal to the one-host "
                                   f"run ({bad[:4]})")
        except (RuntimeError, OSError) as e:
            check(False, f"{n} hosts, {what}: links made ({e})")

    slurm_two_nodes(ref, model)

    # Losing a host mid-run (ranks of 2 threads): hostB's link goes down. The watchdog (10 s here)
    # sees every heartbeat fresh, probes over TCP, names rank 1 on hostB and
    # the collective, and the whole job, mpirun and hostB's orted included,
    # ends; the checkpoints on disk are intact, and --resume auto on the
    # remaining host finishes as the uninterrupted run did.
    long_model = model + ["epochs=4"]
    ref4 = os.path.join(base, "one-host-4")
    r = train(1, ref4, long_model)
    check(r.returncode == 0, "one-host reference of the longer run")
    out = os.path.join(base, "lose-host")
    os.environ["DIFFMPI_TEST_CKPT_DELAY"] = "0.2"  # more steps between cut and end
    cmd, env = launch_cmd(2, train_args(out, long_model + ["watchdog=10", "threads=2"]))
    del os.environ["DIFFMPI_TEST_CKPT_DELAY"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    ck10 = os.path.join(out, "checkpoints", "ckpt-10.h5")
    t0 = time.time()
    while not os.path.exists(ck10) and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    sh("ip", "-n", HOSTS[1][1], "link", "set", "eth0", "down")
    t_cut = time.time()
    try:
        so, se = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        so, se = p.communicate()
    took = time.time() - t_cut
    lines = [l for l in se.splitlines() if l.startswith("diffmpi:")]
    check(p.returncode != 0 and took < 10 + 20,
          f"the job, mpirun included, ends {took:.0f} s after hostB is cut (watchdog 10 s)")
    check(len(lines) == 1 and "rank 1 on hostB" in lines[0] and "198.18.0.2" in lines[0]
          and ("gradient-reduction" in lines[0] or "batchnorm" in lines[0]),
          f"one line naming rank 1 on hostB and the collective ({lines})")
    time.sleep(1)
    left = sh("ip", "netns", "pids", HOSTS[1][1]).stdout.split()
    check(not left, f"nothing is left running on hostB ({left})")
    sh("ip", "-n", HOSTS[1][1], "link", "set", "eth0", "up")
    r = subprocess.run([BIN, "inspect", max(
        (os.path.join(out, "checkpoints", f) for f in os.listdir(os.path.join(out, "checkpoints"))
         if f.startswith("ckpt-")), key=lambda q: int(q.rsplit("-", 1)[1][:-3]))],
        capture_output=True, text=True, timeout=60)
    check(r.returncode == 0 and "checksums good" in r.stdout,
          "the newest checkpoint on disk is intact")
    r = on_hosts(1, train_args(out, long_model + ["watchdog=10"], resume="auto"))
    check(r.returncode == 0, f"--resume auto on the remaining host ({r.stderr[-300:]})")
    for f in [] if r.returncode else ("checkpoints/ckpt-88.h5", "log.h5", "samples.h5"):
        bad = compare_h5(os.path.join(ref4, f), os.path.join(out, f))
        check(not bad, f"after losing hostB and resuming: {f} bitwise equal ({bad[:4]})")
finally:
    H.down()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    check(tag not in left, "every namespace the test made is gone")
finish()
