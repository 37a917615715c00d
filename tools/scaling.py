#!/usr/bin/env python3
"""Scaling of a diffmpi job: measured on emulated networks here, predicted
for clusters by an alpha-beta model (docs/scaling.md).

  tools/scaling.py compute  --out C.json [--bin B]    # per-micro-batch compute here
  tools/scaling.py emulate  --out E.json [--bin B]    # namespace hosts, shaped links
  tools/scaling.py check    E.json                    # the model against E.json
  tools/scaling.py predict  C.json [--nodes 1,2,4,8,16] [--cores 32,64,128]

`compute` runs `diffmpi bench` on one rank and one thread for the denoiser
and the class DDPM (micro_batch 32 as shipped, and 1) and keeps each step's
time, the optimizer's share and the traffic counts. `emulate` makes 2 and 3
hosts of network namespaces (tools/nshosts.py) over several links, measures
each link's latency and bandwidth with an MPI ping-pong (mpi4py), and runs
`bench` on a small model over it and on one host with as many ranks.
`check` predicts each emulated step from the one-host step and the model's
network time and prints how close it came. `predict` gives time per epoch
and efficiency for 1-16 nodes of 32-128 cores over 25 GbE, 100 GbE and HDR
InfiniBand, one rank per node with a thread per core (and, for comparison,
one rank per core).

The model of one training step on P ranks in nodes of ppn, busiest worker:
  compute   k micro-batches x t_mb   (k = its share of the batch's micro-batches)
  fixed     the optimizer and EMA, t_fix / min(T, 8) on T threads (memory-bound)
  combine   the threads' gradient blocks into the rank's: (T - 1) x 12 G / node bandwidth
  node      (node-aware, ppn > 1) the node's ranks' blocks through memory:
            ppn x (5 sent_node + 2 gathered_node) / node bandwidth
  network   g gathers x (ceil(log2 P) alpha + s beta)          BatchNorm sums, losses
            + alpha + sent x beta                              node blocks along the rail
            + (nodes-1) alpha + gathered x beta                the rail's allgather
with sent, gathered, sent_node and gathered_node the busiest rank's bytes
(traffic(); flat: about blocks x 4 G (P-1)/P and 4 G (P-1)/P for G
parameters; node-aware: a node's rails together send its blocks once);
beta is one rank's share of its node's link; bench prints all four and
integration.bench checks them; g and s come from bench's traffic line. No
overlap of the sends with backward is assumed.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

# Networks of the prediction: one-way latency of a small MPI message and
# the bandwidth one rank reaches (assumed, not measured here: TCP over
# Ethernet about 30 us and 20 us, InfiniBand verbs about 2 us; bandwidth
# 90 %, 80 % and 90 % of the line rate).
NETWORKS = {
    "25 GbE": (30e-6, 25e9 / 8 * 0.9),
    "100 GbE": (20e-6, 100e9 / 8 * 0.8),
    "HDR IB": (2e-6, 200e9 / 8 * 0.9),
}
NODE_BW = 150e9    # bytes/s a node's cores add gradients at (assumed)
FIX_THREADS = 8    # the optimizer stops speeding up beyond this many threads


def env():
    e = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if os.geteuid() == 0:
        e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return e


def parse_bench(text):
    """The figures of one `diffmpi bench` report."""
    m = re.search(r"training: (\d+) steps of (\d+) images in ([\d.]+) s", text)
    if not m:
        raise RuntimeError("no training line in bench output:\n" + text[-800:])
    r = {"steps": int(m[1]), "batch": int(m[2]), "secs": float(m[3])}
    r["step"] = r["secs"] / r["steps"]
    ph = re.search(r"of the wall time of \d+ more steps, ([\d.]+) s", text)
    r["psecs"] = float(ph[1]) if ph else r["secs"]
    for name, key in (("optimizer", "opt"), ("communication", "comm"), ("waiting", "wait")):
        m = re.search(rf"^\s+{name}\s+([\d.]+) s", text, re.M)
        r[key] = float(m[1]) / r["steps"] if m else 0.0
    m = re.search(r"traffic per step: ([\d.]+) gathers of ([\d.]+) bytes.*?gradient between "
                  r"nodes: ([\d.]+) messages, ([\d.]+) bytes sent, ([\d.]+) bytes allgathered.*?"
                  r"within nodes: ([\d.]+) messages, ([\d.]+) bytes sent, ([\d.]+) bytes "
                  r"allgathered.*?; (\d+) param.*?; (\d+) node\(s\) x (\d+) rank", text, re.S)
    if m:
        r.update(gathers=float(m[1]), gather_bytes=float(m[2]), msgs=float(m[3]),
                 sent=float(m[4]), allgathered=float(m[5]), msgs_node=float(m[6]),
                 sent_node=float(m[7]), allgathered_node=float(m[8]), params=int(m[9]),
                 nodes=int(m[10]), node_ranks=int(m[11]))
    m = re.search(r"model: .*?micro_batch (\d+)", text)
    r["micro_batch"] = int(m[1]) if m else 0
    m = re.search(r"convolution products: (.*)", text)
    r["engine"] = m[1].strip() if m else "?"
    m = re.search(r"diffmpi bench: .*?; (.*)", text)
    r["cpu"] = m[1].strip() if m else "?"
    return r


def run_bench(cmd, timeout=900):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}...: exit {p.returncode}: {p.stderr[-600:]}")
    return parse_bench(p.stdout)


# ---- the model ---------------------------------------------------------------

def dist_range(n, size, r):
    return r * n // size, (r + 1) * n // size


def blocks(lo, hi):
    """Aligned subtrees [a, a + 2^k) covering [lo, hi) (the rank's blocks)."""
    n, a = 0, lo
    while a < hi:
        k = 0
        while a % (2 << k) == 0 and a + (2 << k) <= hi:
            k += 1
        a += 1 << k
        n += 1
    return n


def part(n, size, r):
    """Member r's part of n things cut over size members (dist.c's part_of)."""
    return n * r // size, n * (r + 1) // size - n * r // size


def traffic(P, nmb, params, ppn=1):
    """Bytes per step of the gradient exchange (src/dist/dist.c) on P ranks
    in nodes of ppn consecutive ranks (ppn = 1: flat): between nodes, what
    the busiest rank sends (its node's blocks to the other nodes' parts of
    its slice, along its rail) and what the rail's allgather brings it;
    within nodes, what the busiest rank sends (its blocks to the node's
    other slices) and what the node's allgather brings it. `bench` prints
    all four: (sent, gathered, sent_node, gathered_node)."""
    nn = P // ppn
    sent = gathered = sent0 = gathered0 = 0
    for r in range(P):
        node, i = divmod(r, ppn)
        s_off, s_len = part(params, ppn, i)
        nb_rank = blocks(*dist_range(nmb, P, r))
        nb_node = blocks(dist_range(nmb, P, node * ppn)[0], dist_range(nmb, P, node * ppn + ppn - 1)[1])
        own = part(s_len, nn, node)[1]
        if nn > 1:
            sent = max(sent, nb_node * (s_len - own))
            gathered = max(gathered, s_len - own)
        if ppn > 1:
            sent0 = max(sent0, nb_rank * (params - s_len))
            gathered0 = max(gathered0, params - s_len)
    return 4 * sent, 4 * gathered, 4 * sent0, 4 * gathered0


def net_time(P, alpha, beta, gathers, gather_bytes, params, nmb, ppn=1):
    """Seconds of network per step for P ranks in nodes of ppn (beta:
    seconds per byte of one rank's share of its node's link)."""
    if P == 1:
        return 0.0
    nn = P // ppn
    small = gathers * (math.ceil(math.log2(P)) * alpha + gather_bytes * beta)
    if nn == 1:
        return small
    sent, gathered = traffic(P, nmb, params, ppn)[:2]
    return small + alpha + sent * beta + (nn - 1) * alpha + gathered * beta


def node_time(P, nmb, params, ppn):
    """Seconds per step of the exchange within a node (node-aware): the
    node's ranks copy their blocks' slices through memory (read and write),
    add what they received (read two, write one) and copy the allgathered
    slices, all at the node's memory bandwidth."""
    if ppn == 1:
        return 0.0
    sent0, gathered0 = traffic(P, nmb, params, ppn)[2:]
    return ppn * (5 * sent0 + 2 * gathered0) / NODE_BW


def step_time(c, nodes, cores, net, rpn=1, node_aware=True):
    """One step of config figures c on `nodes` nodes of `cores` cores, rpn
    ranks per node of cores / rpn threads: (seconds, workers used, ranks,
    threads). Node-aware (where every node has rpn ranks): the node's ranks
    combine through memory and the node's link carries one copy of its
    blocks; flat: every rank sends its own blocks, rpn ranks behind one
    link."""
    nmb = c["nmb"]
    P = min(nodes * rpn, nmb)
    tpr = max(1, cores // rpn)
    worst, worst_T, workers = 0.0, 1, 0
    for r in range(P):
        lo, hi = dist_range(nmb, P, r)
        T = min(tpr, hi - lo)
        workers += T
        t = math.ceil((hi - lo) / T) * c["t_mb"] + c["t_fix"] / min(T, FIX_THREADS) \
            + (T - 1) * 12.0 * c["params"] / NODE_BW
        if t > worst:
            worst, worst_T = t, T
    alpha, bw = NETWORKS[net] if isinstance(net, str) else net
    share = min(rpn, P)  # ranks (flat) or rails (node-aware) behind one node's link
    ppn = rpn if node_aware and rpn > 1 and P % rpn == 0 else 1
    t = worst + net_time(P, alpha, share / bw, c["gathers"], c["gather_bytes"], c["params"], nmb,
                         ppn) + node_time(P, nmb, c["params"], ppn)
    return t, workers, P, worst_T


# ---- measuring ---------------------------------------------------------------

CONFIGS = {"denoise": "jobs/configs/denoise.ini", "class-ddpm": "jobs/configs/class-ddpm.ini"}


def cmd_compute(a):
    out = {"cpu": None, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": {}}
    for name, ini in CONFIGS.items():
        for mb in (32, 1):
            sets = ["--set", f"micro_batch={mb}"] + [x for kv in a.set for x in ("--set", kv)]
            print(f"compute: {name}, micro_batch {mb}, 1 rank x 1 thread ...", flush=True)
            r = run_bench(["mpirun", "-np", "1", a.bin, "bench", "--config",
                           os.path.join(ROOT, ini), "--steps", str(a.steps)] + sets)
            # the traffic of the same step on 2 ranks (counts only; not timed)
            r2 = run_bench(["mpirun", "--oversubscribe", "-np", "2", a.bin, "bench",
                            "--config", os.path.join(ROOT, ini), "--steps", "1"] + sets)
            nmb = math.ceil(r["batch"] / mb)
            r.update(nmb=nmb, gathers=r2["gathers"], gather_bytes=r2["gather_bytes"],
                     params=r2["params"])
            r["t_fix"] = r["opt"]
            r["t_mb"] = (r["step"] - r["t_fix"]) / nmb
            out["cpu"] = r["cpu"]
            out["runs"][f"{name} mb{mb}"] = r
            print(f"  {r['step']:.3f} s per step of {r['batch']} ({r['engine']}), "
                  f"{r['t_mb'] * 1e3:.1f} ms per micro-batch, optimizer {r['t_fix'] * 1e3:.1f} ms",
                  flush=True)
    json.dump(out, open(a.out, "w"), indent=1)
    print(f"wrote {a.out}")


PINGPONG = r"""
import sys, time
from mpi4py import MPI
import numpy as np
c = MPI.COMM_WORLD
res = {}
for n, reps in ((8, 200), (1 << 20, 8), (8 << 20, 8)):
    buf = np.zeros(n, np.uint8)
    ts = []
    for i in range(reps + 2):
        c.Barrier()
        t = MPI.Wtime()
        if c.rank == 0:
            c.Send(buf, 1); c.Recv(buf, 1)
        else:
            c.Recv(buf, 0); c.Send(buf, 0)
        ts.append((MPI.Wtime() - t) / 2)
    ts = sorted(ts[2:])
    res[n] = ts[len(ts) // 2]
if c.rank == 0:
    a = res[8]
    b = ((res[8 << 20] - res[1 << 20]) / (7 << 20))
    print(f"PINGPONG {a:.9f} {1.0 / b:.1f}")
"""


def pingpong(h):
    cmd, e = h.mpirun(2, [sys.executable, "-c", PINGPONG])
    e.update(env())
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=300)
    m = re.search(r"PINGPONG ([\d.e-]+) ([\d.e+]+)", p.stdout)
    if not m:
        raise RuntimeError(f"ping-pong failed (exit {p.returncode}): {p.stdout[-300:]} {p.stderr[-500:]}")
    return float(m[1]), float(m[2])


LINKS = [("veth", dict(link="veth")), ("veth, tbf 1 Gbit/s", dict(link="veth", rate_gbit=1)),
         ("VDE wire", dict(link="wire")),
         ("VDE wire, 1 ms, 1 % loss", dict(link="wire", delay_ms=1, loss_pct=1))]


def cmd_emulate(a):
    from nshosts import Hosts
    model = ["--set", f"hidden={a.hidden}", "--set", "batch=48", "--set", "micro_batch=8",
             "--set", "conv_algo=im2col", "--set", "precision=fp32"]
    bench = [a.bin, "bench", "--steps", str(a.steps)] + model
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "hidden": a.hidden,
           "one_host": {}, "links": []}
    for P in (2, 3):
        print(f"emulate: one host, {P} ranks (shared memory) ...", flush=True)
        out["one_host"][P] = run_bench(["mpirun", "--oversubscribe", "-np", str(P)] + bench)
        out["cpu"] = out["one_host"][P]["cpu"]
    for name, kw in LINKS:
        for P in (2, 3):
            print(f"emulate: {P} hosts over {name} ...", flush=True)
            with Hosts(P, tag=f"sc{os.getpid() % 10000}", **kw) as h:
                lat, bw = pingpong(h)
                cmd, e = h.mpirun(P, bench)
                e.update(env())
                p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=900)
                if p.returncode:
                    raise RuntimeError(f"bench over {name}: {p.stderr[-500:]}")
                r = parse_bench(p.stdout)
            r.update(link=name, P=P, alpha=lat, bw=bw)
            out["links"].append(r)
            print(f"  alpha {lat * 1e6:.0f} us, {bw * 8 / 1e9:.2f} Gbit/s; step {r['step']:.3f} s, "
                  f"communication {100 * r['comm'] * r['steps'] / r['psecs']:.0f} %", flush=True)
    json.dump(out, open(a.out, "w"), indent=1)
    print(f"wrote {a.out}")


def cmd_check(a):
    e = json.load(open(a.table))
    print(f"# {e['cpu']}, {e['date']}; D={e['hidden']}, batch 48, micro_batch 8, fp32")
    print("| link | hosts | alpha (us) | bandwidth (Gbit/s) | one host (s) | predicted (s) "
          "| measured (s) | error | communication + waiting |")
    print("|---|---|---|---|---|---|---|---|---|")
    errs = []
    for r in e["links"]:
        P = r["P"]
        one = e["one_host"][str(P)]
        pred = one["step"] - one["comm"] + net_time(P, r["alpha"], 1.0 / r["bw"], r["gathers"],
                                                   r["gather_bytes"], r["params"],
                                                   math.ceil(r["batch"] / r["micro_batch"]))
        err = pred / r["step"] - 1
        errs.append(abs(err))
        share = 100 * (r["comm"] + r["wait"]) * r["steps"] / r["psecs"]
        print(f"| {r['link']} | {P} | {r['alpha'] * 1e6:.0f} | {r['bw'] * 8 / 1e9:.2f} | "
              f"{one['step']:.3f} | {pred:.3f} | {r['step']:.3f} | {100 * err:+.0f} % | "
              f"{share:.0f} % |")
    print(f"\nmedian |error| {100 * sorted(errs)[len(errs) // 2]:.0f} %, "
          f"largest {100 * max(errs):.0f} %")


def cmd_predict(a):
    c = json.load(open(a.table))
    print(f"# compute measured on {c['cpu']}, {c['date']}; one rank per node, a thread per core")
    node_counts = [int(x) for x in a.nodes.split(",")]
    core_counts = [int(x) for x in a.cores.split(",")]
    for key, r in c["runs"].items():
        name, mb = key.rsplit(" mb", 1)
        spe = -(-60000 // r["batch"])  # steps per epoch of the 60000 training images
        t1 = r["step"]
        print(f"\n## {name}, batch {r['batch']}, micro_batch {mb} ({r['nmb']} micro-batches "
              f"a step: at most {r['nmb']} workers); {spe} steps per epoch; one core: "
              f"{t1 * spe / 60:.1f} min per epoch\n")
        print("| nodes x cores | workers | " + " | ".join(
            f"{n}: min/epoch, efficiency" for n in NETWORKS) + " |")
        print("|---|---|" + "---|" * len(NETWORKS))
        for nodes in node_counts:
            for cores in core_counts:
                cells = []
                for net in NETWORKS:
                    t, w, P, T = step_time(r, nodes, cores, net)
                    eff = t1 / (t * w)
                    cells.append(f"{t * spe / 60:.2f}, {100 * eff:.0f} %")
                print(f"| {nodes} x {cores} | {w} | " + " | ".join(cells) + " |")
    # The target: the 20-epoch class DDPM on 2 nodes x 64 cores over 100 GbE.
    print("\n## 20 epochs of the class DDPM on 2 nodes x 64 cores, 100 GbE\n")
    for key, r in c["runs"].items():
        if not key.startswith("class-ddpm"):
            continue
        spe = -(-60000 // r["batch"])
        t, w, P, T = step_time(r, 2, 64, "100 GbE")
        print(f"- micro_batch {key.rsplit(' mb', 1)[1]}: {w} workers ({P} ranks x {T} threads), "
              f"{t * 1e3:.0f} ms per step, {20 * spe * t / 60:.1f} min of training steps, "
              f"efficiency {100 * r['step'] / (t * w):.0f} %")
        if key.endswith("mb1"):
            for aware, how in ((True, "node-aware: a node's ranks combine through memory"),
                               (False, "flat: each rank sends its own gradient blocks")):
                t, w, P, T = step_time(r, 2, 64, "100 GbE", rpn=64, node_aware=aware)
                print(f"- micro_batch 1, one rank per core instead ({how}): {P} ranks, "
                      f"{t * 1e3:.0f} ms per step, {20 * spe * t / 60:.1f} min, "
                      f"efficiency {100 * r['step'] / (t * w):.0f} %")


def main():
    ap = argparse.ArgumentParser(prog="scaling.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("compute", help="per-micro-batch compute of the shipped configs here")
    p.add_argument("--out", required=True)
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "diffmpi"))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to bench (a smaller model for a trial run)")
    p = sub.add_parser("emulate", help="bench over emulated 2- and 3-host networks")
    p.add_argument("--out", required=True)
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "diffmpi"))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32)
    p = sub.add_parser("check", help="the model against an emulate table")
    p.add_argument("table")
    p = sub.add_parser("predict", help="clusters: time per epoch and efficiency")
    p.add_argument("table")
    p.add_argument("--nodes", default="1,2,4,8,16")
    p.add_argument("--cores", default="32,64,128", help="cores per node")
    a = ap.parse_args()
    {"compute": cmd_compute, "emulate": cmd_emulate, "check": cmd_check,
     "predict": cmd_predict}[a.cmd](a)


if __name__ == "__main__":
    main()
