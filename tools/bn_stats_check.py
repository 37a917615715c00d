#!/usr/bin/python3
"""Do a diffusion checkpoint's BatchNorm running statistics fit its weights?

Loads a ddpm or flow checkpoint into PyTorch (tools/diffmpi_torch.py) and
prints its test loss on N MNIST test images three ways, with the same times
and noise for every row:

  eval          running statistics, as stored (what `diffmpi train`'s test
                loss, `sample` and `predict` use)
  batch         each batch of 128 normalised by its own statistics
  recomputed    running statistics replaced by the plain average of the
                batch statistics of K training batches (random times, the
                label dropped with probability 0.1), the weights unchanged;
                with --draws R, R times from different training batches and
                times, and their mean and spread: how much the test loss of
                `bn_recalibrate = K` moves with the batches it happens to draw

When `eval` is far above the other two, the stored statistics are stale
(docs/results.md, class DDPM epoch 2). Analysis only, not part of the test
suite; runs on one thread, about a minute per 256 images at D=128.
Needs Debian's python3 (torch, h5py, numpy).
"""
import argparse
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diffmpi_torch as dt  # noqa: E402

T = 300


def idx(path, header):
    try:
        return np.fromfile(path, dtype=np.uint8)[header:]
    except OSError as exc:
        sys.stderr.write(f"bn_stats_check: {path}: {exc.strerror}\n")
        sys.exit(1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--n", type=int, default=256, help="test images (default 256)")
    ap.add_argument("--batches", type=int, default=8,
                    help="training batches of 128 for the recomputed statistics (default 8)")
    ap.add_argument("--draws", type=int, default=1,
                    help="recomputations from different batches (default 1)")
    ap.add_argument("--data", default="data/mnist", help="MNIST directory (default data/mnist)")
    a = ap.parse_args(argv)
    if not 1 <= a.n <= 10000 or a.batches < 1 or a.draws < 1:
        sys.stderr.write("bn_stats_check: --n must be 1..10000, --batches and --draws >= 1\n")
        return 2
    torch.set_num_threads(1)
    try:
        model = dt.load(a.checkpoint)
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"bn_stats_check: {a.checkpoint}: {exc}\n")
        return 1
    cfg = dt.parse_config(model_config(a.checkpoint))
    objective, cond = cfg.get("objective"), cfg.get("conditioning")
    if objective not in ("ddpm", "flow"):
        sys.stderr.write(f"bn_stats_check: {a.checkpoint}: objective {objective}; "
                         "needs ddpm or flow\n")
        return 2
    te = idx(os.path.join(a.data, "t10k-images-idx3-ubyte"), 16).reshape(-1, 1, 28, 28)
    tl = idx(os.path.join(a.data, "t10k-labels-idx1-ubyte"), 8).astype(np.int64)
    tr = idx(os.path.join(a.data, "train-images-idx3-ubyte"), 16).reshape(-1, 1, 28, 28)
    trl = idx(os.path.join(a.data, "train-labels-idx1-ubyte"), 8).astype(np.int64)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float()

    def noised(x0, g):
        """Input, time in [0,1] and target, as the objective trains them."""
        n = x0.shape[0]
        noise = torch.randn(x0.shape, generator=g)
        if objective == "ddpm":
            t = torch.randint(0, T, (n,), generator=g)
            ab = abar[t].view(-1, 1, 1, 1)
            return ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t.float() / T, noise
        t = torch.rand(n, generator=g)
        tv = t.view(-1, 1, 1, 1)
        return (1 - tv) * noise + tv * x0, t, x0 - noise

    def labels(c):
        return c if cond == "class" else None

    x0 = torch.tensor(te[:a.n] / 255.0, dtype=torch.float32)
    c0 = torch.tensor(tl[:a.n])
    xt, tt, target = noised(x0, torch.Generator().manual_seed(1))

    def test_loss(m, train):
        m.train(train)
        out = []
        with torch.no_grad():
            for i in range(0, a.n, 128):
                y = m(xt[i:i + 128], tt[i:i + 128] if cond != "none" else None,
                      labels(c0[i:i + 128]))
                out.append(((y - target[i:i + 128]) ** 2).mean(dim=(1, 2, 3)))
        return torch.cat(out).mean().item()

    units = [u for u in model.modules() if isinstance(u, dt.Unit) and u.norm == "batch"]
    if not units:
        sys.stderr.write(f"bn_stats_check: {a.checkpoint}: no BatchNorm (norm = group?)\n")
        return 2
    print(f"eval (running statistics as stored): {test_loss(copy.deepcopy(model), False):.6f}",
          flush=True)
    print(f"batch (statistics of each batch of 128): {test_loss(copy.deepcopy(model), True):.6f}",
          flush=True)
    # Recompute: forward K training batches in train mode; undo each momentum
    # update to recover that batch's statistics, and average them.
    def recomputed(seed):
        m = copy.deepcopy(model)
        units = [u for u in m.modules() if isinstance(u, dt.Unit) and u.norm == "batch"]
        acc = [[torch.zeros(u.cout), torch.zeros(u.cout)] for u in units]
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(tr), generator=g)
        for k in range(a.batches):
            sel = perm[k * 128:(k + 1) * 128].numpy()
            xb = torch.tensor(tr[sel] / 255.0, dtype=torch.float32)
            cb = torch.tensor(trl[sel])
            cb[torch.rand(128, generator=g) < 0.1] = -1
            xb, tb, _ = noised(xb, g)
            before = [(u.bn_running_mean.clone(), u.bn_running_var.clone()) for u in units]
            m.train(True)
            with torch.no_grad():
                m(xb, tb if cond != "none" else None, labels(cb))
            mom = dt.BN_MOMENTUM
            for s, u, (m0, v0) in zip(acc, units, before):
                s[0] += (u.bn_running_mean - (1 - mom) * m0) / mom
                s[1] += (u.bn_running_var - (1 - mom) * v0) / mom
                u.bn_running_mean.copy_(m0)
                u.bn_running_var.copy_(v0)
        for s, u in zip(acc, units):
            u.bn_running_mean.copy_(s[0] / a.batches)
            u.bn_running_var.copy_(s[1] / a.batches)
        return test_loss(m, False)

    losses = []
    for r in range(a.draws):
        losses.append(recomputed(2 + r))
        which = f" draw {r + 1}/{a.draws}" if a.draws > 1 else ""
        print(f"recomputed (running statistics from {a.batches} training batches){which}: "
              f"{losses[-1]:.6f}", flush=True)
    if a.draws > 1:
        v = np.array(losses)
        print(f"recomputed over {a.draws} draws: mean {v.mean():.6f}, sd {v.std(ddof=1):.6f}, "
              f"range {v.min():.6f}-{v.max():.6f}", flush=True)
    return 0


def model_config(path):
    import h5py
    with h5py.File(path, "r") as f:
        c = f.attrs["config"]
    return c.decode() if isinstance(c, bytes) else c


if __name__ == "__main__":
    sys.exit(main())
