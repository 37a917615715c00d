"""Hosts made of network namespaces on this machine, for the multi-host
tests and tools/scaling.py: each host is a network namespace with its own
address in 198.18.0.0/24 (which exists only inside them) and, when a
command runs there through the launcher agent, its own hostname (a UTS
namespace). The hosts meet at a switch, over one of two kinds of link:

- veth (default): a kernel veth pair from each host to a bridge in a
  namespace of its own; `rate_gbit` puts a token bucket (tc tbf) on both
  ends of every host's link, so each host sends and receives at most that.
- wire: a VDE cable (Debian's vde2: vde_switch, vde_plug2tap and
  wirefilter) from a tap device in each host to a central VDE switch, with
  `delay_ms` (whole milliseconds, host to switch) and `loss_pct` (packets
  lost, host to switch) on each cable. The kernel here has no netem qdisc
  (tc's delay and loss), so this user-space wire stands in for it; its
  own forwarding costs about 0.2 ms per round trip and tops out at a few
  hundred Mbit/s, which tools/scaling.py measures before it uses the link.

Everything made (namespaces, VDE processes, the socket folder, the agent)
is removed by down(), also after an error:

    with Hosts(3, link="wire", delay_ms=1, loss_pct=1) as h:
        subprocess.run(*h.mpirun(3, [bin, "train", ...]))
"""
import os
import signal
import stat
import subprocess
import tempfile
import time

NET = "198.18.0.0/24"


def sh(*args, check=True):
    """Run a command (30 s at most); raise RuntimeError with its stderr on failure."""
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


class Hosts:
    def __init__(self, n, tag=None, link="veth", rate_gbit=None, delay_ms=0, loss_pct=0.0,
                 workdir=None):
        if link not in ("veth", "wire"):
            raise ValueError(f"link {link!r}: veth or wire")
        if link == "veth" and (delay_ms or loss_pct):
            raise ValueError("delay and loss need link='wire' (this kernel has no netem)")
        if delay_ms != int(delay_ms):
            raise ValueError("the VDE wire delays in whole milliseconds")
        tag = tag or f"dm{os.getpid() % 100000}"
        self.names = [f"host{chr(ord('A') + i)}" for i in range(n)]
        self.ns = [f"{tag}{chr(ord('A') + i)}" for i in range(n)]
        self.addrs = [f"198.18.0.{i + 1}" for i in range(n)]
        self.switch = f"{tag}S"
        self.link, self.rate_gbit = link, rate_gbit
        self.delay_ms, self.loss_pct = int(delay_ms), loss_pct
        self.dir = tempfile.mkdtemp(prefix="diffmpi-hosts-", dir=workdir)
        self.made, self.pidfiles = [], []
        self.agent = os.path.join(self.dir, "nsrsh")

    # -- making and removing ------------------------------------------------
    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()

    def up(self):
        for ns in self.ns:
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        if self.link == "veth":
            self._veth()
        else:
            self._wire()
        for ns, a in zip(self.ns, self.addrs):
            sh("ip", "-n", ns, "addr", "add", f"{a}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        # The launcher agent: "AGENT HOST COMMAND..." runs COMMAND on HOST,
        # that is inside its namespace, under its hostname.
        cases = "".join(f"  {a}) ns={ns}; name={n} ;;\n"
                        for n, ns, a in zip(self.names, self.ns, self.addrs))
        with open(self.agent, "w") as f:
            f.write("#!/bin/sh\nhost=$1; shift\ncase \"$host\" in\n" + cases +
                    "  *) echo \"nsrsh: unknown host $host\" >&2; exit 1 ;;\nesac\n"
                    "exec ip netns exec \"$ns\" unshare --uts sh -c \"hostname $name; $*\"\n")
        os.chmod(self.agent, os.stat(self.agent).st_mode | stat.S_IEXEC)
        self._wait_reachable()

    def _veth(self):
        sh("ip", "netns", "add", self.switch)
        self.made.insert(0, self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i, ns in enumerate(self.ns):
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name",
                f"p{i}", "netns", self.switch)
            sh("ip", "-n", self.switch, "link", "set", f"p{i}", "master", "br0")
            sh("ip", "-n", self.switch, "link", "set", f"p{i}", "up")
            if self.rate_gbit:
                # A token bucket each way: the host's sends on eth0, its
                # receives on the switch's port. Burst: 1 ms at the rate
                # (at least 64 KiB, a TCP segment with offloads).
                burst = max(65536, int(self.rate_gbit * 1e9 / 8 / 1000))
                tbf = ["tbf", "rate", f"{self.rate_gbit}gbit", "burst", str(burst),
                       "latency", "50ms"]
                sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", *tbf)
                sh("ip", "netns", "exec", self.switch, "tc", "qdisc", "add", "dev", f"p{i}",
                    "root", *tbf)

    def _daemon(self, cmd, pidfile, ns=None):
        pre = ["ip", "netns", "exec", ns] if ns else []
        self.pidfiles.append(pidfile)
        sh(*pre, *cmd)
        t0 = time.time()
        while not os.path.exists(pidfile) and time.time() - t0 < 5:
            time.sleep(0.02)

    def _wire(self):
        central = os.path.join(self.dir, "sw")
        self._daemon(["vde_switch", "-s", central, "-d", "-p", central + ".pid"],
                     central + ".pid")
        for i, ns in enumerate(self.ns):
            sw = os.path.join(self.dir, f"sw{i}")
            self._daemon(["vde_switch", "-s", sw, "-d", "-p", sw + ".pid"], sw + ".pid")
            self._daemon(["vde_plug2tap", "-s", sw, "-d", "-P", sw + ".tap.pid", "eth0"],
                         sw + ".tap.pid", ns)
            t0 = time.time()
            while sh("ip", "-n", ns, "link", "show", "eth0", check=False).returncode:
                if time.time() - t0 > 5:
                    raise RuntimeError(f"vde_plug2tap made no eth0 in {ns}")
                time.sleep(0.02)
            # LR: from the host's switch to the central one (host -> switch).
            wf = ["wirefilter", "-v", f"{sw}:{central}", "--daemon",
                  "--pidfile", sw + ".wire.pid"]
            if self.delay_ms:
                wf += ["-d", f"LR{self.delay_ms}"]
            if self.loss_pct:
                wf += ["-l", f"LR{self.loss_pct}"]
            self._daemon(wf, sw + ".wire.pid")

    def _wait_reachable(self):
        """Every host can open a TCP connection to the first (ARP and the
        VDE switches' learning done) within 10 s."""
        probe = ("import socket,sys\n"
                 "s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n")
        srv = subprocess.Popen(["ip", "netns", "exec", self.ns[0], "python3", "-c",
                                "import socket,time\ns=socket.socket()\n"
                                "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                                f"s.bind(('{self.addrs[0]}',5999));s.listen(16)\n"
                                "s.settimeout(12)\n"
                                "try:\n  while True: s.accept()\nexcept OSError: pass\n"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for ns in self.ns[1:]:
                t0 = time.time()
                while subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", probe,
                                      self.addrs[0], "5999"], capture_output=True,
                                     timeout=10).returncode:
                    if time.time() - t0 > 10:
                        raise RuntimeError(f"{ns} cannot reach {self.addrs[0]}")
                    time.sleep(0.1)
        finally:
            srv.kill()
            srv.wait()

    def down(self):
        for p in reversed(self.pidfiles):
            try:
                os.kill(int(open(p).read().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        for ns in reversed(self.made):
            # what is left inside (an orted, a rank) goes with it
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made, self.pidfiles = [], []
        subprocess.run(["rm", "-rf", self.dir], timeout=30)

    # -- running -----------------------------------------------------------
    def mpirun(self, n, prog_args, per_host=1, mca=(), export=("OPENBLAS_NUM_THREADS",)):
        """(cmd, env) that run prog_args as n ranks on the first
        ceil(n / per_host) hosts, per_host each, mpirun on hostA, Open MPI
        on TCP only over these links."""
        hostfile = os.path.join(self.dir, f"hosts{n}x{per_host}")
        nh = (n + per_host - 1) // per_host
        with open(hostfile, "w") as f:
            f.writelines(f"{a} slots={per_host}\n" for a in self.addrs[:nh])
        # mpi_yield_when_idle: a rank that polls without yielding starves
        # the kernel thread that carries veth and tap packets between these
        # namespaces on a busy core (ksoftirqd), and every message then
        # waits for the scheduler's tick: 4 ms per MPI ping-pong here
        # instead of about 40 us. A real NIC needs no such help.
        cmd = ["mpirun", "--hostfile", hostfile, "-np", str(n),
               "--mca", "plm_rsh_agent", self.agent, "--mca", "btl", "tcp,self",
               "--mca", "pml", "ob1", "--mca", "oob_tcp_if_include", NET,
               "--mca", "btl_tcp_if_include", NET, "--mca", "mpi_yield_when_idle", "1",
               # every host's daemon would bind its first rank to core 0 of
               # this one machine: let the kernel place them (and their threads)
               "--bind-to", "none"]
        for k, v in mca:
            cmd += ["--mca", k, v]
        for k in list(export) + [k for k in os.environ if k.startswith("DIFFMPI_TEST_")]:
            cmd += ["-x", k]
        cmd += list(prog_args)
        cmd = ["ip", "netns", "exec", self.ns[0], "unshare", "--uts", "sh", "-c",
               f"hostname {self.names[0]}; exec \"$@\"", "sh"] + cmd
        env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
        env.pop("OMPI_MCA_plm_rsh_agent", None)
        env.pop("OMPI_MCA_rmaps_base_oversubscribe", None)
        return cmd, env

    def on(self, i, args, **kw):
        """Run args inside host i's namespace (no hostname change)."""
        return subprocess.run(["ip", "netns", "exec", self.ns[i]] + list(args), **kw)
