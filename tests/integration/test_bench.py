"""`diffmpi bench` at tiny size: training and sampling reports with every
field, numbers that add up, and usage errors."""
import os
import re
import sys

from common import SRC, check, finish, mpirun

TINY = ["--set", "hidden=8", "--set", "batch=16", "--set", "micro_batch=4"]

r = mpirun(2, ["bench"] + TINY + ["--steps", "3", "--verbose"])
out = r.stdout
check(r.returncode == 0, f"bench exits 0 ({r.stderr[-300:]})")
check("OpenBLAS" in out and "core" in out, "reports the OpenBLAS build and core")
m = re.search(r"^convolution products: (openblas|onednn) (fp32|bf16) \((\w+)\)$", out, re.M)
check(m is not None and m.group(2) == "fp32",
      f"names the engine, precision and kernel family ({m and m.group(0)})")
check("inc/1" in out and "total" in out, "--verbose prints the per-layer FLOP table")
m = re.search(r"training: 3 steps of 16 images in ([\d.]+) s: ([\d.]+) images/s", out)
check(m is not None, "images/s line")
if m:
    check(abs(48 / float(m.group(1)) - float(m.group(2))) < 0.02 * float(m.group(2)),
          "images/s = images / seconds")
m = re.search(r"([\d.]+) GFLOP/s \(analytic GEMM FLOPs\), ([\d.]+) % of the measured GEMM "
              r"peak \(([\d.]+) GFLOP/s = 2 rank\(s\) x ([\d.]+)\)", out)
check(m is not None, "GFLOP/s and share of the peak")
if m:
    g, share, peak, per = map(float, m.groups())
    check(abs(100 * g / peak - share) < 0.2, "share = GFLOP/s / peak")
    check(abs(2 * per - peak) < 0.01 * peak + 0.1, "peak = ranks x per-rank rate")
phases = dict(re.findall(r"^\s+(GEMM|bf16 rounding|im2col/col2im|BN/GELU/elementwise|optimizer|"
                         r"communication|waiting|other \(unaccounted\))\s+([-\d.]+) s", out,
                         re.M))
check(len(phases) == 8, f"eight phase lines ({sorted(phases)})")
check(float(phases.get("bf16 rounding", 1)) == 0, "no bf16 rounding in fp32")
check(float(phases.get("GEMM", 0)) > 0, "GEMM time measured")
check(re.search(r"peak memory per rank: \d+ MiB", out) is not None, "peak memory line")
# 2 ranks of one host are one node: their segments meet within it.
m = re.search(r"gradient segments sent while backward ran: between nodes 0 of 0; within nodes "
              r"(\d+) of (\d+)", out)
check(m is not None and int(m.group(1)) > 0 and m.group(1) == m.group(2),
      "every gradient segment goes out while backward runs (overlap): "
      + (m.group(0) if m else "no line"))
# Flat, or nodes of one rank each: the same between nodes.
for how, extra, env in (("reduction = flat", ["--set", "reduction=flat"], None),
                        ("nodes of one rank", [], {"DIFFMPI_TEST_NODE_RANKS": "1"})):
    r = mpirun(2, ["bench"] + TINY + ["--steps", "2"] + extra, env_extra=env)
    m = re.search(r"gradient segments sent while backward ran: between nodes (\d+) of (\d+); "
                  r"within nodes 0 of 0", r.stdout)
    check(r.returncode == 0 and m is not None and int(m.group(1)) > 0
          and m.group(1) == m.group(2),
          f"{how}: every segment goes between nodes while backward runs "
          + (m.group(0) if m else f"no line ({r.stderr[-200:]})"))

r = mpirun(2, ["bench"] + TINY + ["--set", "objective=ddpm", "--set", "conditioning=class",
                                   "--steps", "2", "--sample"])
check(r.returncode == 0 and "sampling: 2 steps of 40 images (x2 for guidance)" in r.stdout,
      f"bench --sample on a class model ({r.stderr[-200:]})")
# The class DDPM's default walk (docs/sampling.md, Defaults): 10 ddpm steps.
check("projected: 40 images with 10 steps" in r.stdout, "projects the full sampling time "
      "with the default steps")

r = mpirun(1, ["bench"] + TINY + ["--set", "objective=ddpm", "--set", "conditioning=time",
                                   "--steps", "301", "--sample"])
check(r.returncode == 2 and "--sample --steps 301" in r.stderr and "at most 300 steps" in r.stderr,
      f"bench --sample --steps 301 on a DDPM: usage error ({r.stderr.strip()[-200:]})")
r = mpirun(1, ["bench"] + TINY + ["--sample"])
check(r.returncode == 2 and "--sample needs a diffusion model" in r.stderr,
      "bench --sample on a denoiser is a usage error")
# OPENBLAS_CORETYPE forcing AVX2 kernels on an AVX-512 CPU is named in one
# note beside the OpenBLAS line when OpenBLAS runs the convolutions
# (engine = openblas); an AVX-512 kernel set, or the oneDNN engine (which
# ignores it) is not; OpenBLAS's own choice only when it is a core without
# AVX on an AVX2 CPU (a CPU OpenBLAS does not know). Nothing goes to stderr, which is
# for errors.
flags = open("/proc/cpuinfo").read().replace("\n", " ")
avx512, avx2 = " avx512f " in flags, " avx2 " in flags
OLD_CORES = ("Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Katmai",
             "Northwood")
for core, engine, warned in (("Haswell", "openblas", avx512), ("SkylakeX", "openblas", False),
                             (None, "openblas", False), ("Haswell", "onednn", False)):
    env = {"OPENBLAS_CORETYPE": core}
    args = ["-x", "OPENBLAS_CORETYPE"] if core else []
    r = mpirun(2, ["bench"] + TINY + ["--steps", "1", "--set", "engine=" + engine],
               env_extra=env, mpi_args=args)
    lines = [l for l in r.stdout.splitlines() if "OPENBLAS_CORETYPE" in l]
    if core is None:
        # OpenBLAS's own choice: noted only where it fell back to a core
        # without AVX on an AVX2 CPU (0.3.21 on an Intel family 6 model 207).
        own = [l.split("core ")[-1] for l in r.stdout.splitlines() if l.startswith("OpenBLAS ")]
        warned = bool(own) and own[0] in OLD_CORES and avx2
        lines = [l for l in lines if "does not know this CPU" in l]
    check(r.returncode == 0 and len(lines) == (1 if warned else 0) and not r.stderr.strip(),
          f"OPENBLAS_CORETYPE={core}, engine {engine}: {'one note' if warned else 'no note'} "
          f"(avx512 {avx512}: {lines}; stderr {r.stderr[-200:]!r})")
if not avx512:
    print("note: no AVX-512 on this CPU, so the Haswell case expects no note")

# The traffic line is what tools/scaling.py's network model reads; its
# formulas for the busiest rank's gradient bytes (scaling.traffic, from the
# blocks, slices and parts of dist.c) must match what the ranks count, on
# rank counts that give ranks one or two blocks, with threads (which send
# what one thread would), flat and node-aware on emulated nodes
# (DIFFMPI_TEST_NODE_RANKS; 4 ranks in nodes of 3 fall back to flat).
sys.path.insert(0, os.path.join(SRC, "tools"))
import scaling  # noqa: E402

for ranks, threads, nmb, k, flat in ((2, 1, 6, None, True), (3, 1, 6, None, True),
                                     (4, 1, 6, None, True), (2, 2, 6, None, True),
                                     (5, 1, 8, None, True), (3, 1, 6, None, False),
                                     (4, 1, 6, 2, False), (6, 1, 8, 3, False),
                                     (6, 1, 8, 2, False), (4, 1, 6, 3, False)):
    args = ["bench", "--set", "hidden=8", "--set", f"batch={4 * nmb}", "--set", "micro_batch=4",
            "--set", f"threads={threads}", "--steps", "2"]
    args += ["--set", "reduction=flat"] if flat else []
    env = {"DIFFMPI_TEST_NODE_RANKS": str(k) if k else None}
    r = mpirun(ranks, args, env_extra=env, mpi_args=["--bind-to", "none"])
    ppn = 1 if flat or (k and ranks % k) else (k or ranks)
    try:
        b = scaling.parse_bench(r.stdout)
        want = scaling.traffic(ranks, nmb, b["params"], ppn)
        got = (b["sent"], b["allgathered"], b["sent_node"], b["allgathered_node"])
        ok = (all(abs(x - y) < 0.5 for x, y in zip(got, want)) and b["gathers"] > 0
              and b["gather_bytes"] > 0 and b["node_ranks"] == ppn)
        what = (f"{got} bytes, model {want}; {b['nodes']} node(s) x {b['node_ranks']}")
    except (RuntimeError, KeyError) as e:
        ok, what = False, f"{e} {r.stderr[-200:]}"
    check(r.returncode == 0 and ok,
          f"{ranks}x{threads}, {nmb} micro-batches, {'flat' if flat else f'nodes of {k}'}: "
          f"traffic per step as scaling.py models it ({what})")

r = mpirun(1, ["bench", "--steps", "0"])
check(r.returncode == 2 and "--steps" in r.stderr, "bench --steps 0 is a usage error")
finish()
