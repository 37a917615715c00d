#!/usr/bin/python3
"""PyTorch reference for test_golden: for every DIR/<case>/ (written by
`test_golden init DIR`), load the diffmpi checkpoint into
tools/diffmpi_torch.py's UNet and the batch, train three Adam steps in
PyTorch, and write DIR/<case>/<NAME>.h5:

    /y         [N,1,28,28]  train-mode output of step 1
    /loss      [steps]      mean squared error of each step (float32)
    /grad<s>/<p>            every parameter's gradient at step s = 1..steps
    /bn1/<b>                BatchNorm running statistics after step 1's forward
    /y_eval    [N,1,28,28]  eval-mode output with the start weights and those
                            running statistics
    /param<s>/<p>           parameters after step s = 1..steps
    /bn_end/<b>             running statistics after the last step

usage: golden_ref.py DIR [--name NAME] [--mutate gelu_tanh|convt_layout]

--mutate builds a deliberately wrong reference (tanh GELU; unflatten's
ConvTranspose2d weight read as [out,in]) that test_golden must reject.
Before the cases, the script checks its own building blocks against
PyTorch's modules (Unit = nn.Conv2d/ConvTranspose2d + nn.BatchNorm2d /
nn.GroupNorm + nn.GELU) and the state_dict round trip through torch.save.
"""
import argparse
import glob
import io
import os
import sys
import types

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import diffmpi_torch  # noqa: E402

torch.set_num_threads(1)


def fail(msg):
    print("golden_ref: " + msg, file=sys.stderr)
    sys.exit(1)


def unit_against_modules():
    """Unit's functional forward against torch.nn modules, bitwise, in train
    mode (with the running statistics it updates) and in eval mode."""
    torch.manual_seed(0)
    for kind, norm in (("conv", "batch"), ("convt", "batch"), ("conv", "group")):
        u = diffmpi_torch.Unit(kind, 4, 6, 4 if kind == "convt" else 3, 2, 1, norm, 2)
        if kind == "conv":
            conv = nn.Conv2d(4, 6, 3, 2, 1)
        else:
            conv = nn.ConvTranspose2d(4, 6, 4, 2, 1)
        nrm = nn.BatchNorm2d(6) if norm == "batch" else nn.GroupNorm(2, 6)
        with torch.no_grad():
            conv.weight.copy_(u.weight)
            conv.bias.copy_(u.bias)
            w = torch.rand(6) + 0.5
            b = torch.rand(6) - 0.5
            getattr(u, norm[0] + "n_weight").copy_(w)
            getattr(u, norm[0] + "n_bias").copy_(b)
            nrm.weight.copy_(w)
            nrm.bias.copy_(b)
        ref = nn.Sequential(conv, nrm, nn.GELU())
        x = torch.randn(3, 4, 6, 6)
        for train in (True, False, True):
            u.train(train)
            ref.train(train)
            if not torch.equal(u(x), ref(x)):
                fail("Unit(%s, %s) differs from torch.nn modules (train=%s)" % (kind, norm, train))
        if norm == "batch" and not (torch.equal(u.bn_running_mean, nrm.running_mean)
                                    and torch.equal(u.bn_running_var, nrm.running_var)):
            fail("Unit(%s) running statistics differ from nn.BatchNorm2d's" % kind)


def state_dict_round_trip(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = diffmpi_torch.UNet(model.D, model.mix, model.norm_kind, model.groups)
    other.load_state_dict(torch.load(buf), strict=True)
    for key, val in other.state_dict().items():
        if not torch.equal(val, model.state_dict()[key]):
            fail("state_dict round trip changed " + key)


def mutate(kind):
    """Make the reference deliberately wrong (the self-test's other half)."""
    if kind == "gelu_tanh":
        shim = types.ModuleType("F_tanh_gelu")
        shim.__dict__.update(F.__dict__)
        shim.gelu = lambda x, approximate="none": F.gelu(x, approximate="tanh")
        diffmpi_torch.F = shim


def reference(case_dir, name, mutation):
    ckpt = os.path.join(case_dir, "checkpoints", "ckpt-0.h5")
    model = diffmpi_torch.load(ckpt)
    state_dict_round_trip(model)
    if mutation == "convt_layout":
        with torch.no_grad():
            w = model.unflatten.weight
            w.copy_(w.transpose(0, 1).clone())
    with h5py.File(os.path.join(case_dir, "batch.h5"), "r") as f:
        x = torch.from_numpy(f["x"][()])
        target = torch.from_numpy(f["target"][()])
        t = torch.from_numpy(f["t"][()])
        labels = torch.from_numpy(f["labels"][()].astype(np.int64))
        lr = float(f.attrs["lr"])
        steps = int(f.attrs["steps"])
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=0.0, amsgrad=False)
    out = {}
    losses = []
    model.train()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        y = model(x, t, labels)
        loss = F.mse_loss(y, target)
        loss.backward()
        losses.append(loss.item())
        for key, p in model.named_parameters():
            out["grad%d/" % (step + 1) + diffmpi_torch.checkpoint_name(key)] = \
                p.grad.numpy().copy()
        if step == 0:
            out["y"] = y.detach().numpy()
            for key, b in model.named_buffers():
                out["bn1/" + diffmpi_torch.checkpoint_name(key)] = b.numpy().copy()
            model.eval()
            with torch.no_grad():
                out["y_eval"] = model(x, t, labels).numpy()
            model.train()
        opt.step()
        for key, p in model.named_parameters():
            out["param%d/" % (step + 1) + diffmpi_torch.checkpoint_name(key)] = \
                p.detach().numpy().copy()
    for key, b in model.named_buffers():
        out["bn_end/" + diffmpi_torch.checkpoint_name(key)] = b.numpy().copy()
    out["loss"] = np.array(losses, dtype=np.float32)
    with h5py.File(os.path.join(case_dir, name + ".h5"), "w") as f:
        for key, val in out.items():
            f[key] = np.ascontiguousarray(val, dtype=np.float32)
    print("golden_ref: %s: D=%d mix=%s norm=%s, losses %s" % (
        os.path.basename(case_dir), model.D, model.mix, model.norm_kind,
        " ".join("%.6f" % v for v in losses)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--name", default="ref")
    ap.add_argument("--mutate", choices=("gelu_tanh", "convt_layout"))
    a = ap.parse_args()
    unit_against_modules()
    cases = sorted(glob.glob(os.path.join(a.dir, "*", "batch.h5")))
    if not cases:
        fail("%s: no cases (run test_golden init first)" % a.dir)
    mutate(a.mutate)
    for batch in cases:
        reference(os.path.dirname(batch), a.name, a.mutate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
