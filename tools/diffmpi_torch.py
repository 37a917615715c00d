#!/usr/bin/python3
"""diffmpi's UNet (../shared/SPEC.md) as a PyTorch nn.Module.

The module tree mirrors diffmpi's parameter names (src/model/unet.c), so a
diffmpi checkpoint loads into it tensor by tensor: the checkpoint's
/model/inc/0/bn_weight is this module's state_dict key inc.0.bn_weight
('/' becomes '.'), and torch.save / torch.load of the state_dict round-trip.

    import diffmpi_torch
    model = diffmpi_torch.load("runs/quickstart/checkpoints/ckpt-235.h5")
    y = model(x, t, c)      # x [N,1,28,28]; t [N] in [0,1]; c [N], -1 = none
    judge = diffmpi_torch.load("runs/judge/judge.h5")   # objective = classify
    logits, feats = judge(x), judge.features(x)         # [N,10], [N,2D]

Units (a convolution, then the normalisation and GELU):

    inc/0..1 down1/0..2 down2/0..2     Conv2d, weight [out,in,k,k]
    unflatten up1/0 up2/0              ConvTranspose2d, weight [in,out,k,k]
    up1/1..2 up2/1..2 outc/0..1        Conv2d
    head                               Conv2d(D,1,3,1,1), no norm, no GELU
    (flatten: AvgPool2d(7) -> GELU, no parameters)

Every unit but the head is followed by BatchNorm2d (eps 1e-5, momentum 0.1;
names bn_weight, bn_bias, bn_running_mean, bn_running_var) or GroupNorm(G, C)
(gn_weight, gn_bias), then exact-erf GELU. Conditioning (FCBlocks
t1, t2, c1, c2, each fc1 -> GELU -> fc2) modulates the unflatten output u0
and the up1 output u1 on their way into the concats:

    add   (ddpm, time)   u = u + t(t)
    mul   (flow, time)   u = u * t(t)
    film  (class)        u = c(c) * u + t(t)

Only torch is needed for the module; load() also needs h5py.

    usage: diffmpi_torch.py CHECKPOINT [--input IN.h5 --output OUT.h5]

prints what the checkpoint holds; with --input/--output it does what
`diffmpi predict` does (eval mode, /x [N,1,28,28] -> /y) in PyTorch.
"""
import argparse
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
GN_EPS = 1e-5
NCLASS = 10

NORMS = ("batch", "group")
MIXES = ("none", "add", "mul", "film")


def mix_of(objective, conditioning):
    """The conditioning mix diffmpi builds for an objective and conditioning
    (src/model/diffusion.c diffusion_shape, src/model/objective.c time_mix)."""
    if conditioning == "none":
        return "none"
    if conditioning == "class":
        return "film"
    if conditioning == "time":
        if objective == "ddpm":
            return "add"
        if objective == "flow":
            return "mul"
    raise ValueError("no diffmpi model has objective=%s with conditioning=%s"
                     % (objective, conditioning))


class Unit(nn.Module):
    """Conv2d or ConvTranspose2d, then BatchNorm2d/GroupNorm and GELU (or
    neither, for the head). Parameters are named as in diffmpi's checkpoint
    (weight, bias, bn_weight, ...), so the normalisation is the functional
    form of nn.BatchNorm2d / nn.GroupNorm on these tensors."""

    def __init__(self, kind, cin, cout, k, s, p, norm=None, groups=32):
        super().__init__()
        assert kind in ("conv", "convt")
        self.kind, self.cin, self.cout = kind, cin, cout
        self.k, self.s, self.p = k, s, p
        self.norm, self.groups = norm, groups
        shape = (cout, cin, k, k) if kind == "conv" else (cin, cout, k, k)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(cout))
        if norm == "batch":
            self.bn_weight = nn.Parameter(torch.ones(cout))
            self.bn_bias = nn.Parameter(torch.zeros(cout))
            self.register_buffer("bn_running_mean", torch.zeros(cout))
            self.register_buffer("bn_running_var", torch.ones(cout))
        elif norm == "group":
            if cout % groups:
                raise ValueError("GroupNorm: %d groups do not divide %d channels"
                                 % (groups, cout))
            self.gn_weight = nn.Parameter(torch.ones(cout))
            self.gn_bias = nn.Parameter(torch.zeros(cout))
        elif norm is not None:
            raise ValueError("norm must be batch, group or None, not %r" % norm)
        self.reset_parameters()

    def reset_parameters(self):
        # PyTorch's Conv2d/ConvTranspose2d defaults: fan_in = weight.size(1)*k*k
        # for both (Cin for Conv2d, Cout for ConvTranspose2d).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.weight.size(1) * self.k * self.k)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        if self.kind == "conv":
            y = F.conv2d(x, self.weight, self.bias, self.s, self.p)
        else:
            y = F.conv_transpose2d(x, self.weight, self.bias, self.s, self.p)
        if self.norm == "batch":
            # nn.BatchNorm2d.forward with momentum 0.1 and tracked statistics:
            # batch statistics (biased variance) in training, where the running
            # statistics are updated (unbiased variance); running ones in eval.
            y = F.batch_norm(y, self.bn_running_mean, self.bn_running_var,
                             self.bn_weight, self.bn_bias, self.training,
                             BN_MOMENTUM, BN_EPS)
        elif self.norm == "group":
            y = F.group_norm(y, self.groups, self.gn_weight, self.gn_bias, GN_EPS)
        else:
            return y
        return F.gelu(y)  # exact erf form (approximate='none')

    def extra_repr(self):
        return "%s %d->%d k%d s%d p%d norm=%s" % (self.kind, self.cin, self.cout, self.k,
                                                 self.s, self.p, self.norm)


class FCBlock(nn.Module):
    """Linear(a, b) -> GELU -> Linear(b, b); names fc1, fc2."""

    def __init__(self, a, b):
        super().__init__()
        self.fc1 = nn.Linear(a, b)
        self.fc2 = nn.Linear(b, b)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class UNet(nn.Module):
    """The UNet family of SPEC.md at width D (hidden)."""

    def __init__(self, hidden, mix="none", norm="batch", groups=32):
        super().__init__()
        if mix not in MIXES:
            raise ValueError("mix must be one of %s, not %r" % (MIXES, mix))
        if norm not in NORMS:
            raise ValueError("norm must be one of %s, not %r" % (NORMS, norm))
        D = hidden
        self.D, self.mix, self.norm_kind, self.groups = D, mix, norm, groups

        def conv(a, b, s=1):
            return Unit("conv", a, b, 3, s, 1, norm, groups)

        def convt(a, b, k, s, p):
            return Unit("convt", a, b, k, s, p, norm, groups)

        self.inc = nn.ModuleList([conv(1, D), conv(D, D)])
        self.down1 = nn.ModuleList([conv(D, D, 2), conv(D, D), conv(D, D)])
        self.down2 = nn.ModuleList([conv(D, 2 * D, 2), conv(2 * D, 2 * D),
                                    conv(2 * D, 2 * D)])
        self.unflatten = convt(2 * D, 2 * D, 7, 7, 0)
        self.up1 = nn.ModuleList([convt(4 * D, D, 4, 2, 1), conv(D, D), conv(D, D)])
        self.up2 = nn.ModuleList([convt(2 * D, D, 4, 2, 1), conv(D, D), conv(D, D)])
        self.outc = nn.ModuleList([conv(2 * D, D), conv(D, D)])
        self.head = Unit("conv", D, 1, 3, 1, 1, None)
        if mix != "none":
            self.t1 = FCBlock(1, 2 * D)
            self.t2 = FCBlock(1, D)
        if mix == "film":
            self.c1 = FCBlock(NCLASS, 2 * D)
            self.c2 = FCBlock(NCLASS, D)

    @staticmethod
    def _seq(units, x):
        for u in units:
            x = u(x)
        return x

    def _modulate(self, u, t_emb, c_emb):
        n, C = u.shape[0], u.shape[1]
        te = t_emb.view(n, C, 1, 1)
        if self.mix == "add":
            return u + te
        if self.mix == "mul":
            return u * te
        return c_emb.view(n, C, 1, 1) * u + te

    def forward(self, x, t=None, c=None):
        """x [N,1,28,28]; t [N] in [0,1] (time-conditioned models); c [N]
        class labels 0..9, -1 = no class (a zeros one-hot; class models)."""
        n = x.shape[0]
        cond = self.mix != "none"
        if cond:
            if t is None:
                raise ValueError("this model needs the time t")
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(n, 1)
        if self.mix == "film":
            if c is None:
                c = torch.full((n,), -1, dtype=torch.long)
            c = torch.as_tensor(c, device=x.device).long().reshape(n)
            onehot = F.one_hot(c.clamp(min=0), NCLASS).to(x.dtype) * (c >= 0).to(x.dtype)[:, None]
        e0 = self._seq(self.inc, x)
        e1 = self._seq(self.down1, e0)
        e2 = self._seq(self.down2, e1)
        # Flatten: AvgPool2d(7) -> GELU, no normalisation.
        u0 = self.unflatten(F.gelu(F.avg_pool2d(e2, 7)))
        if cond:
            u0 = self._modulate(u0, self.t1(t), self.c1(onehot) if self.mix == "film" else None)
        u1 = self._seq(self.up1, torch.cat([e2, u0], 1))
        if cond:
            u1 = self._modulate(u1, self.t2(t), self.c2(onehot) if self.mix == "film" else None)
        u2 = self._seq(self.up2, torch.cat([e1, u1], 1))
        return self.head(self._seq(self.outc, torch.cat([e0, u2], 1)))


class Judge(nn.Module):
    """The classifier of objective = classify (the judge of diffmpi score):
    the UNet's encoder units (same names), AvgPool2d(7) -> GELU (the
    features, 2D per image), and a 1x1 Conv2d head to 10 logits."""

    def __init__(self, hidden, norm="batch", groups=32, classes=NCLASS):
        super().__init__()
        if norm not in NORMS:
            raise ValueError("norm must be one of %s, not %r" % (NORMS, norm))
        D = hidden
        self.D, self.mix, self.norm_kind, self.groups = D, "none", norm, groups

        def conv(a, b, s=1):
            return Unit("conv", a, b, 3, s, 1, norm, groups)

        self.inc = nn.ModuleList([conv(1, D), conv(D, D)])
        self.down1 = nn.ModuleList([conv(D, D, 2), conv(D, D), conv(D, D)])
        self.down2 = nn.ModuleList([conv(D, 2 * D, 2), conv(2 * D, 2 * D),
                                    conv(2 * D, 2 * D)])
        self.head = Unit("conv", 2 * D, classes, 1, 1, 0, None)

    def features(self, x):
        """The pooled features [N, 2D] the Frechet distance compares."""
        for units in (self.inc, self.down1, self.down2):
            x = UNet._seq(units, x)
        return F.gelu(F.avg_pool2d(x, 7)).flatten(1)

    def forward(self, x, t=None, c=None):
        """x [N,1,28,28] -> logits [N,10] (t and c are ignored)."""
        return self.head(self.features(x)[:, :, None, None]).flatten(1)


# ---- checkpoints ------------------------------------------------------------


def checkpoint_name(key):
    """diffmpi's tensor name of a state_dict key (inc.0.weight -> inc/0/weight)."""
    return key.replace(".", "/")


def parse_config(text):
    """diffmpi's resolved configuration (INI 'key = value' lines) as a dict."""
    if isinstance(text, bytes):
        text = text.decode()
    cfg = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in ";#[":
            continue
        key, sep, value = line.partition("=")
        if sep:
            cfg[key.strip()] = value.strip()
    return cfg


def from_config(cfg, mix=None):
    """An initialised UNet (or Judge, for objective = classify) for a
    configuration dict (parse_config); mix: the checkpoint's cond_mix
    attribute, or None (checkpoints before 2026-12-08) to derive it from the
    objective and conditioning."""
    if cfg.get("objective") == "classify":
        return Judge(int(cfg["hidden"]), cfg.get("norm", "batch"),
                     int(cfg.get("norm_groups", 32)))
    if mix is None:
        mix = mix_of(cfg.get("objective", "denoise"), cfg.get("conditioning", "none"))
    return UNet(int(cfg["hidden"]), mix, cfg.get("norm", "batch"),
                int(cfg.get("norm_groups", 32)))


def load(path, device="cpu", weights="model"):
    """The model of a diffmpi checkpoint, in eval mode, with the checkpoint's
    weights and BatchNorm running statistics (weights="ema": its weight
    average, /ema, of a run with ema_decay > 0). Every tensor of the model
    must be in the file with the same shape, and the file may hold no
    other."""
    import h5py
    with h5py.File(path, "r") as f:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != "diffmpi-checkpoint":
            raise ValueError("%s: not a diffmpi checkpoint (format %r)" % (path, fmt))
        mix = f.attrs.get("cond_mix")
        if isinstance(mix, bytes):
            mix = mix.decode()
        model = from_config(parse_config(f.attrs["config"]), mix)
        state, want = {}, set()
        for key, ref in model.state_dict().items():
            name = weights + "/" + checkpoint_name(key)
            want.add(name)
            if name not in f:
                raise ValueError("%s: /%s missing" % (path, name))
            arr = f[name][()]
            if tuple(arr.shape) != tuple(ref.shape):
                raise ValueError("%s: /%s has shape %s, the model %s"
                                 % (path, name, arr.shape, tuple(ref.shape)))
            state[key] = torch.from_numpy(arr).to(ref.dtype)
        extra = []
        if weights not in f:
            raise ValueError("%s: no /%s group" % (path, weights))
        f[weights].visit(lambda n: extra.append(weights + "/" + n)
                         if isinstance(f[weights + "/" + n], h5py.Dataset)
                         and weights + "/" + n not in want else None)
        if extra:
            raise ValueError("%s: tensors the model does not have: %s"
                             % (path, ", ".join(sorted(extra))))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--input", help="HDF5 with /x [N,1,28,28] float32 (and /t, /labels)")
    ap.add_argument("--output", help="HDF5 to write /y [N,1,28,28] into")
    a = ap.parse_args(argv)
    model = load(a.checkpoint)
    n = sum(p.numel() for p in model.parameters())
    print("%s: D=%d mix=%s norm=%s, %d parameters" % (a.checkpoint, model.D, model.mix,
                                                      model.norm_kind, n))
    if a.input:
        import h5py
        import numpy as np
        if not a.output:
            ap.error("--input needs --output")
        with h5py.File(a.input, "r") as f:
            x = torch.from_numpy(f["x"][()].astype(np.float32))
            t = torch.from_numpy(f["t"][()]) if "t" in f else torch.zeros(x.shape[0])
            c = torch.from_numpy(f["labels"][()]) if "labels" in f else None
        with torch.no_grad():
            y = model(x, t, c)
        with h5py.File(a.output, "w") as f:
            f["y"] = y.numpy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
