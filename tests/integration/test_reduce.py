"""The gradient-reduction tree (dist.h) at P = 1, 2, 3 and 4 ranks on known
leaves, not only against the 1-rank run; and the two-level (node-aware)
exchange on nodes emulated by DIFFMPI_TEST_NODE_RANKS=k (2 nodes of 2 and 3
ranks, 3 of 2, 2 of 4: with 1..8 micro-batches some nodes own none), flat
when asked for nodes of 1 or for unequal nodes (4 ranks in nodes of 3).

tests/reduce/test_reduce_tree.c feeds per-micro-batch leaves whose float
sums depend on the order (batches of 5 and 7 micro-batches, and 1..8 so
that some ranks own none) through dist_leaf_dst / dist_leaf_done /
dist_reduce_grads and checks on every rank that the result is bitwise the
fixed tree computed independently and within g_depth * sum|leaf| of the
exact sum. Here, from what rank 0 wrote:
 - the result is bitwise the same at every P;
 - numpy, a third implementation, gets the same tree in float32, and the
   exact sum (leaves in float64, exact for these leaves) within the bound;
 - the data can fail the check: a left-to-right float32 sum and a
   reduction with micro-batches 1 and 2 swapped (run with --swap, which
   must exit non-zero) both differ from the tree.
"""
import os
import subprocess

import numpy as np

from common import BIN, check, finish, tmpdir

PROG = os.environ.get("DM_REDUCE_TREE") or \
    os.path.join(os.path.dirname(BIN), "tests", "test_reduce_tree")


def run(p, out, *extra, node_ranks=None):
    cmd = ["mpirun", "--oversubscribe", "-np", str(p), PROG, out] + list(extra)
    env = dict(os.environ)
    env.pop("DIFFMPI_TEST_NODE_RANKS", None)
    if node_ranks:
        env["DIFFMPI_TEST_NODE_RANKS"] = str(node_ranks)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def read(path):
    """[(leaves [nmb, n] float32, result [n] float32)] as written."""
    raw = open(path, "rb").read()
    pos, nb = 4, int(np.frombuffer(raw, np.int32, 1, 0)[0])
    out = []
    for _ in range(nb):
        nmb, n = (int(v) for v in np.frombuffer(raw, np.int32, 2, pos))
        pos += 8
        leaves = np.frombuffer(raw, np.float32, nmb * n, pos).reshape(nmb, n)
        pos += 4 * nmb * n
        res = np.frombuffer(raw, np.float32, n, pos)
        pos += 4 * n
        out.append((leaves, res))
    if pos != len(raw):
        check(False, f"{path}: {len(raw) - pos} bytes after {nb} batches")
    return out


def tree(leaves, a, k):
    """Node (a, k) of dist.h's tree, float32."""
    if k == 0:
        return leaves[a]
    half = 1 << (k - 1)
    left = tree(leaves, a, k - 1)
    if a + half >= len(leaves):
        return left
    return left + tree(leaves, a + half, k - 1)


def depth(nmb):
    d = 0
    while (1 << d) < nmb:
        d += 1
    return d


check(os.access(PROG, os.X_OK), f"{PROG} is built")
base = tmpdir()
results = {}
for p in (1, 2, 3, 4):
    out = os.path.join(base, f"p{p}.bin")
    r = run(p, out)
    if p == 1 or r.returncode != 0:
        print(r.stdout + r.stderr[-2000:], end="")
    check(r.returncode == 0,
          f"P={p}: every rank's result is the fixed tree, within the bound "
          f"(rc {r.returncode})")
    results[p] = read(out) if r.returncode == 0 else None

ref = results[1]
for p in (2, 3, 4):
    same = ref is not None and results[p] is not None and len(ref) == len(results[p]) \
        and all(a[1].tobytes() == b[1].tobytes() for a, b in zip(ref, results[p]))
    check(same, f"P={p}: reduced gradients bitwise equal to P=1's")

if ref is not None:
    u = 2.0 ** -24
    for b, (leaves, res) in enumerate(ref):
        nmb = len(leaves)
        d = depth(nmb)
        want = tree(leaves, 0, d)
        check(res.tobytes() == want.tobytes(),
              f"batch {b} (nmb {nmb}): numpy's float32 tree gives the same bits")
        exact = leaves.astype(np.float64).sum(axis=0)
        bound = d * u / (1 - d * u) * np.abs(leaves.astype(np.float64)).sum(axis=0)
        err = np.abs(res.astype(np.float64) - exact)
        check(bool(np.all(err <= bound)),
              f"batch {b} (nmb {nmb}): within g_{d} sum|leaf| of the exact sum "
              f"(worst {np.max(err / np.where(bound > 0, bound, 1)):.3g} x bound)")
        if nmb in (5, 7):
            seq = np.zeros_like(leaves[0])
            for j in range(nmb):
                seq = seq + leaves[j]
            nd = int(np.count_nonzero(seq != want))
            check(nd >= len(res) // 10,
                  f"nmb {nmb}: a left-to-right float32 sum differs from the tree "
                  f"in {nd} of {len(res)} entries (the check can fail)")

# The two-level exchange: nodes of k consecutive ranks (or flat where the
# nodes cannot be made equal), always the same bits as one rank.
for p, k, shape in ((2, None, "1 node(s) x 2 rank(s)"), (4, 2, "2 node(s) x 2 rank(s)"),
                    (6, 3, "2 node(s) x 3 rank(s)"), (6, 2, "3 node(s) x 2 rank(s)"),
                    (8, 4, "2 node(s) x 4 rank(s)"), (4, 1, "4 node(s) x 1 rank(s)"),
                    (4, 3, "4 node(s) x 1 rank(s), flat: the nodes have different numbers")):
    out = os.path.join(base, f"p{p}-k{k}.bin")
    r = run(p, out, node_ranks=k)
    check(r.returncode == 0 and f"exchange: {shape}" in r.stdout,
          f"P={p}, nodes of {k}: {shape}, every rank's result the fixed tree "
          f"(rc {r.returncode}: {(r.stdout + r.stderr)[-300:]})")
    res = read(out) if r.returncode == 0 else None
    same = ref is not None and res is not None and len(ref) == len(res) \
        and all(a[1].tobytes() == b[1].tobytes() for a, b in zip(ref, res))
    check(same, f"P={p}, nodes of {k}: reduced gradients bitwise equal to P=1's")

# A change of order only: the exact sum and the bound still hold, the bits
# do not. The program must notice and exit non-zero at every P.
for p, k in ((1, None), (3, None), (4, 2)):
    r = run(p, os.path.join(base, f"swap{p}.bin"), "--swap", node_ranks=k)
    text = r.stdout + r.stderr
    check(r.returncode != 0 and "differ in bits from the fixed tree" in text
          and "off the exact sum" not in text,
          f"P={p}, nodes of {k} --swap (micro-batches 1, 2 exchanged): fails the bitwise check "
          f"only (rc {r.returncode})")
finish()
