#!/usr/bin/python3
"""Print a per-epoch summary of a diffmpi run as a Markdown table.

Reads RUN_DIR/log.h5 (or a log.h5 named directly; a log still being written is
read as an SWMR reader) and prints, per epoch: the training wall time at the
epoch's last step, the training speed, the epoch's mean training loss, and the
evaluation row (test loss, test MSE, test accuracy, sample score) where the
run wrote one. docs/results.md quotes these tables.

  wall      time since the run started (summed over resumes) at the epoch's
            last step; the evaluation and sampling after an epoch fall into
            the next epoch's wall time
  img/s     images per second of the epoch's training steps only:
            batch x steps / (sum of per-step times), per-step times from the
            logged images/s
  loss      mean of the logged per-step training losses of the epoch

Needs Debian's python3 (h5py, numpy): run as tools/summary.py or
/usr/bin/python3 tools/summary.py.
"""
import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from figures import FigError, attr, open_h5, read  # noqa: E402


def config_of(f):
    """The run's config text as a dict of key -> value strings."""
    out = {}
    for line in str(attr(f, "config", "")).splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def hms(seconds):
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def summarise(path):
    """Lines of the summary of one log file."""
    f = open_h5(path)
    with f:
        if attr(f, "format") != "diffmpi-log":
            raise FigError(f"{path}: not a diffmpi log (format attribute "
                           f"{attr(f, 'format')!r})")
        cfg = config_of(f)
        step = read(f, "train/step", 1)
        epoch = read(f, "train/epoch", 1)
        loss = read(f, "train/loss", 1)
        wall = read(f, "train/time", 1)
        ips = read(f, "train/images_per_sec", 1)
        n = min(len(step), len(epoch), len(loss), len(wall), len(ips))
        ev = {}
        if "eval" in f:
            for k in ("epoch", "step", "test_loss", "test_mse", "test_acc",
                      "sample_acc", "sample_fd"):
                if k in f["eval"]:
                    ev[k] = read(f, "eval/" + k, 1)
    if n == 0:
        raise FigError(f"{path}: no training steps logged yet")
    batch = float(cfg.get("batch", "nan"))
    lines = [
        f"run: {path} ({cfg.get('objective', '?')}, conditioning "
        f"{cfg.get('conditioning', '?')}, D={cfg.get('hidden', '?')}, batch "
        f"{cfg.get('batch', '?')}, precision {cfg.get('precision', '?')}, "
        f"{n} steps logged, {hms(wall[n - 1])} of training wall time)",
        "",
        "| epoch | steps | wall | img/s | train loss | test loss | test MSE | "
        "test acc | sample acc | sample FD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    erow = {}
    if "epoch" in ev:
        for i, e in enumerate(ev["epoch"]):
            erow[int(e)] = {k: (float(v[i]) if i < len(v) else None)
                            for k, v in ev.items()}
    for e in sorted(set(int(x) for x in epoch[:n])):
        sel = epoch[:n] == e
        ok = sel & (ips[:n] > 0) & np.isfinite(ips[:n])
        secs = np.sum(batch / ips[:n][ok]) if ok.any() else float("nan")
        speed = batch * ok.sum() / secs if ok.any() and secs > 0 else float("nan")
        r = erow.get(e, {})
        lines.append(
            f"| {e} | {int(sel.sum())} | {hms(wall[:n][sel][-1])} | {fmt(speed, '.1f')} | "
            f"{fmt(float(np.mean(loss[:n][sel])), '.6f')} | "
            f"{fmt(r.get('test_loss'), '.6f')} | {fmt(r.get('test_mse'), '.6f')} | "
            f"{fmt(r.get('test_acc'), '.4f')} | {fmt(r.get('sample_acc'), '.3f')} | "
            f"{fmt(r.get('sample_fd'), '.3f')} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2].rsplit("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR",
                    help="a run directory of `diffmpi train` (or its log.h5)")
    a = ap.parse_args(argv)
    status = 0
    for i, r in enumerate(a.runs):
        path = r if os.path.isfile(r) else os.path.join(r, "log.h5")
        try:
            if not os.path.exists(path):
                raise FigError(f"{path}: no such file")
            out = summarise(path)
        except FigError as exc:
            sys.stderr.write(f"summary: {exc}\n")
            status = 1
            continue
        if i:
            print()
        print("\n".join(out))
    return status


if __name__ == "__main__":
    sys.exit(main())
