#!/usr/bin/python3
"""Draw the figures of a diffmpi run directory as PNG (and animated GIF) files.

Reads RUN_DIR/log.h5 and RUN_DIR/samples.h5 (either may be absent; the log may
still be growing under a running job) plus any `diffmpi sample` output files
named with --sample, writes every figure whose data are present, and prints the
path of each file it writes.  A figure that `diffmpi train` already drew into
RUN_DIR (src/io/samples.c) has one implementation, the C one: it is copied byte
for byte under the same name, never redrawn here; this tool draws only what
training does not (and labelled variants under names saying what they add).
Needs Debian's python3 (h5py, numpy, matplotlib, PIL): run it as
tools/figures.py or /usr/bin/python3 tools/figures.py.
"""
import argparse
import math
import os
import shutil
import sys

import numpy as np

try:
    import h5py
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt
    from matplotlib import animation
except ImportError as exc:  # the pyenv python3 on PATH lacks these
    sys.stderr.write(f"figures: {exc}; run with /usr/bin/python3\n")
    sys.exit(2)

DPI = 100          # figure resolution; image grids are sized in pixels below
SCALE = 4          # each 28x28 digit is drawn as 112x112 pixels in PNGs
GIF_SCALE = 3      # and 84x84 in GIFs
GAP = 2            # source pixels of white between grid cells
FPS = 10           # GIF frame rate
HOLD_SECONDS = 2   # how long a GIF shows its last frame
MAX_GRID_PX = 2400  # larger grids are drawn with a smaller upscale factor

EPILOG = """\
figures written (only those whose data exist).  Names with hyphens are the
PNGs `diffmpi train` drew into RUN_DIR, copied byte for byte (one drawing of
each figure: the C one; unlabelled grids, 28x28 pixels per digit, grey seams);
names with underscores are drawn here.
  loss.png               training loss per step (log y, raw and moving average,
                         dotted epoch boundaries) and test MSE per epoch
  noising.png            Part 1, copy: 8 test digits (columns) noised at
                         σ = 0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0 (rows, top down)
  noising_sigmas.png     Part 1: the same images with σ beside each row and
                         the test-set index above each column
  denoise-epoch-N.png    Part 1, copy: clean / noisy (σ = 0.5) / denoised
                         test digits (rows) after epoch N
  ood.png                Part 1, copy: one test digit at each σ of the list
                         (columns), noisy row above denoised row
  ood_mse.png            Part 1: the same images with σ and the test MSE of
                         the denoiser at that σ above each column
  samples-epoch-N.png    Part 2, copy: the 40 samples of epoch N, 4 rows x 10
                         (class models: column k holds the digit k)
  batch-epoch-N.png      Part 2, copy: 8 training images x0 / x_t / predicted
                         x0 (rows), one fixed time t per column
  class_grid.png         Part 2 class models: last epoch's samples, 10 digit
                         columns x 4 rows, with digit labels and the sampling
                         settings in the title
  trajectory.gif         Part 2: sampling of the last epoch, noise to image
  sample_STEM.png/.gif   for each --sample FILE: its images, and its
                         trajectory when the file has one
  reconstruction.png     --inversion DIR (tools/inversion.py): 10 test digits,
                         the noise diffmpi invert found, the digits redrawn
                         from it at each number of steps
  interpolation.png      --inversion DIR: spherical interpolation between two
                         noises, one row per digit
  sweep_STEM.png         for each --sweep TABLE (tools/sampler_sweep.py):
                         judge accuracy and Fréchet distance against network
                         evaluations, one line per sampler (RUN_DIR may be
                         left out, with --out)

exit status: 0 all figures written; 1 some file or dataset could not be read,
a PNG that training draws is missing from RUN_DIR, or a figure could not be
written (one "figures: ..." line each on stderr, the other figures are still
written); 2 usage error, or RUN_DIR missing, unreadable or holding neither
log.h5 nor samples.h5 (and no --sample given).
"""


class FigError(Exception):
    """A problem with one input file or dataset, reported as one line."""


# ---------------------------------------------------------------- reading


def open_h5(path):
    """Open for reading, as an SWMR reader when the writer allows it."""
    try:
        return h5py.File(path, "r", swmr=True)
    except (OSError, ValueError):
        pass
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise FigError(f"{path}: cannot open as HDF5: {exc}") from None


def read(f, name, ndim=None, tail=None, dtype=float):
    """Dataset `name` of open file `f` as a numpy array, shape-checked."""
    where = f"{f.filename}: /{name.lstrip('/')}"
    try:
        obj = f[name]
    except KeyError:
        raise FigError(f"{where}: missing") from None
    if not isinstance(obj, h5py.Dataset):
        raise FigError(f"{where}: not a dataset")
    try:
        arr = np.asarray(obj[()], dtype=dtype)
    except (OSError, ValueError, TypeError) as exc:
        raise FigError(f"{where}: unreadable: {exc}") from None
    if ndim is not None and arr.ndim != ndim:
        raise FigError(f"{where}: expected {ndim} dimensions, found shape "
                       f"{list(arr.shape)}")
    if tail is not None and tuple(arr.shape[arr.ndim - len(tail):]) != tuple(tail):
        raise FigError(f"{where}: expected shape [..., "
                       f"{', '.join(map(str, tail))}], found {list(arr.shape)}")
    return arr


def attr(obj, name, default=None):
    """Attribute as a Python value (bytes decoded, 1-element arrays unwrapped)."""
    try:
        val = obj.attrs[name]
    except (KeyError, OSError):
        return default
    if isinstance(val, bytes):
        return val.decode("utf-8", "replace")
    if isinstance(val, np.ndarray) and val.size == 1 and val.dtype.kind != "O":
        return val.reshape(()).item()
    if isinstance(val, np.generic):
        return val.item()
    return val


def parse_config(text):
    """The `key = value` lines of a stored configuration as a dict."""
    conf = {}
    if not isinstance(text, str):
        return conf
    for line in text.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "=" in line and not line.startswith("["):
            key, val = line.split("=", 1)
            conf[key.strip()] = val.strip()
    return conf


def epoch_groups(f, parent):
    """[(epoch, group name)] of the epoch_NNNN groups under `parent`, sorted."""
    if parent not in f or not isinstance(f[parent], h5py.Group):
        return []
    out = []
    for name in f[parent]:
        if not name.startswith("epoch_"):
            continue
        grp = f[parent][name]
        ep = attr(grp, "epoch")
        if not isinstance(ep, (int, np.integer)):
            try:
                ep = int(name[len("epoch_"):])
            except ValueError:
                continue
        out.append((int(ep), f"{parent}/{name}"))
    return sorted(out)


def warn_nonfinite(arr, where):
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        sys.stderr.write(f"figures: warning: {where}: {bad} non-finite values "
                         f"(drawn white)\n")


def fmt(x, digits=3):
    """Short number for labels."""
    if x is None:
        return "?"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.{digits}g}"


# ---------------------------------------------------------------- drawing


def arrange(labels, n):
    """Grid layout of n images: an index array [rows, cols] (-1 = empty) and
    the column labels.  When every label is a digit 0..9 the columns are the
    digits, in order; otherwise images fill rows of 10 (or ~sqrt(n))."""
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    if labels is not None and labels.size == n and n > 0 and \
            np.all((labels >= 0) & (labels <= 9)):
        cols = [np.flatnonzero(labels == d) for d in range(10)]
        rows = max(len(c) for c in cols)
        index = np.full((rows, 10), -1, dtype=np.int64)
        for d, idx in enumerate(cols):
            index[:len(idx), d] = idx
        return index, [str(d) for d in range(10)]
    ncols = max(1, min(n, 10 if n <= 200 else math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / ncols))
    index = np.full(rows * ncols, -1, dtype=np.int64)
    index[:n] = np.arange(n)
    return index.reshape(rows, ncols), None


def mosaic(cells):
    """[R, C, H, W] (NaN = empty) -> one masked image with GAP-pixel seams."""
    R, C, H, W = cells.shape
    out = np.full((R * H + (R - 1) * GAP, C * W + (C - 1) * GAP), np.nan)
    for r in range(R):
        for c in range(C):
            y, x = r * (H + GAP), c * (W + GAP)
            out[y:y + H, x:x + W] = cells[r, c]
    return np.ma.masked_invalid(np.clip(out, 0.0, 1.0))


def cells_from(images, index):
    """Images [N, H, W] placed by an index grid from arrange()."""
    H, W = images.shape[-2:]
    cells = np.full(index.shape + (H, W), np.nan)
    for (r, c), i in np.ndenumerate(index):
        if i >= 0:
            cells[r, c] = images[i]
    return cells


def grid_figure(cells, title, row_labels=None, col_labels=None, xlabel=None,
                ylabel=None, scale=SCALE):
    """Figure showing a grid of images at an integer upscale, gray colormap
    on [0, 1], white seams; labels beside rows and above columns.
    Returns (fig, ax, AxesImage)."""
    R, C, H, W = cells.shape
    img = mosaic(cells)
    scale = max(1, min(scale, MAX_GRID_PX // max(img.shape)))
    w_in = img.shape[1] * scale / DPI
    h_in = img.shape[0] * scale / DPI
    left = 1.6 if row_labels else 0.3
    top = 1.4 if col_labels else 0.9
    bottom = 0.6 if xlabel else 0.2
    fig_w, fig_h = w_in + left + 0.3, h_in + top + bottom
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=DPI, facecolor="white")
    ax = fig.add_axes([left / fig_w, bottom / fig_h, w_in / fig_w, h_in / fig_h])
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    im = ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    xs = [c * (W + GAP) + (W - 1) / 2 for c in range(C)]
    ys = [r * (H + GAP) + (H - 1) / 2 for r in range(R)]
    ax.set_xticks(xs if col_labels else [])
    if col_labels:
        ax.set_xticklabels(col_labels, fontsize=10)
    ax.set_yticks(ys if row_labels else [])
    if row_labels:
        ax.set_yticklabels(row_labels, fontsize=11)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=11)   # below the grid
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=11)
    ax.set_title(title, fontsize=13, pad=8)
    return fig, ax, im


def fit_canvas(fig, pad=0.15):
    """Resize the figure around its drawn content (what bbox_inches="tight"
    does for savefig), for writers that need a fixed canvas such as GIF."""
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    old_w, old_h = fig.get_size_inches()
    new_w, new_h = box.width + 2 * pad, box.height + 2 * pad
    for ax in fig.axes:
        p = ax.get_position()
        ax.set_position([(p.x0 * old_w - box.x0 + pad) / new_w,
                         (p.y0 * old_h - box.y0 + pad) / new_h,
                         p.width * old_w / new_w, p.height * old_h / new_h])
    fig.set_size_inches(new_w, new_h)


def save(fig, path, written):
    try:
        fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15,
                    facecolor="white")
    except (OSError, ValueError) as exc:
        raise FigError(f"{path}: cannot write: {exc}") from None
    finally:
        plt.close(fig)
    print(path, flush=True)
    written.append(path)


def save_gif(frames, t, index, col_labels, title, path, written, max_frames):
    """Animated GIF of frames [F, N, H, W] laid out by `index`; the last frame
    is held for HOLD_SECONDS."""
    F = frames.shape[0]
    order = list(range(F))
    if max_frames and F > max_frames:
        order = sorted(set(np.linspace(0, F - 1, max_frames).round().astype(int)))
    warn_nonfinite(frames[order], f"{path}: trajectory frames")
    shown = order + [order[-1]] * (FPS * HOLD_SECONDS)

    def label(k):
        s = f"{title}\nframe {k + 1}/{F}"
        if t is not None and k < len(t):
            s += f",  t = {t[k]:.3f}"
        return s

    fig, ax, im = grid_figure(cells_from(frames[order[0]], index), label(order[0]),
                              col_labels=col_labels, scale=GIF_SCALE)
    fit_canvas(fig)

    def update(k):
        im.set_data(mosaic(cells_from(frames[k], index)))
        ax.set_title(label(k), fontsize=13, pad=8)
        return (im,)

    anim = animation.FuncAnimation(fig, update, frames=shown, blit=False,
                                   repeat=False)
    try:
        # A fixed canvas (no tight bbox) keeps every frame the same size.
        anim.save(path, writer=animation.PillowWriter(fps=FPS), dpi=DPI)
    except (OSError, ValueError) as exc:
        raise FigError(f"{path}: cannot write: {exc}") from None
    finally:
        plt.close(fig)
    print(path, flush=True)
    written.append(path)


# ---------------------------------------------------------------- figures


def score_panel(ax, ev_epoch, extra):
    """A classifier's test accuracy, or the judge's scores of the samples:
    accuracy on the left axis, Frechet distance on the right."""
    lines = []
    for col, label, color in (("test_acc", "test accuracy", "tab:green"),
                              ("sample_acc", "judge accuracy of samples", "tab:green")):
        if col in extra:
            v = extra[col]
            ok = np.isfinite(v)
            lines += ax.plot(ev_epoch[ok], v[ok], "o-", color=color, ms=7, label=label)
            for e, y in zip(ev_epoch[ok], v[ok]):
                ax.annotate(f"{y:.3f}", (e, y), textcoords="offset points",
                            xytext=(0, 8), ha="center", fontsize=8)
            ax.set_ylabel("accuracy")
    if "sample_fd" in extra:
        v = extra["sample_fd"]
        ok = np.isfinite(v)
        ax_fd = ax.twinx() if lines else ax
        lines += ax_fd.plot(ev_epoch[ok], v[ok], "s--", color="tab:purple", ms=6,
                            label="Fréchet distance (judge features)")
        for e, y in zip(ev_epoch[ok], v[ok]):
            ax_fd.annotate(f"FD {y:.3g}", (e, y), textcoords="offset points",
                           xytext=(0, -14), ha="center", fontsize=8, color="tab:purple")
        ax_fd.set_ylabel("Fréchet distance")
        ax_fd.margins(y=0.25)
    ax.set_title("sample score (diffmpi score)" if "sample_fd" in extra
                 else "test accuracy", fontsize=10)
    ax.set_xlabel("epoch")
    uniq = np.unique(ev_epoch)
    if len(uniq) <= 20:
        ax.set_xticks(uniq)
    lo, hi = (ev_epoch.min(), ev_epoch.max()) if len(ev_epoch) else (0, 1)
    ax.set_xlim(lo - 0.5, hi + 0.5)
    ax.margins(y=0.25)
    ax.grid(True, alpha=0.25)
    ax.legend(lines, [l.get_label() for l in lines], loc="best", fontsize=8)


def fig_loss(log, path, written, run_name):
    step = read(log, "train/step", ndim=1)
    loss = read(log, "train/loss", ndim=1)
    epoch = read(log, "train/epoch", ndim=1)
    n = min(len(step), len(loss), len(epoch))   # a live log may be mid-append
    if n == 0:
        return
    step, loss, epoch = step[:n], loss[:n], epoch[:n]
    conf = parse_config(attr(log, "config"))
    classify = conf.get("objective") == "classify"
    ev_epoch = ev_mse = np.zeros(0)
    extra = {}
    if "eval" in log:
        ev_epoch = read(log, "eval/epoch", ndim=1)
        # test_loss (the cross-entropy of a classifier) where the log has it
        name = "eval/test_loss" if "test_loss" in log["eval"] else "eval/test_mse"
        ev_mse = read(log, name, ndim=1)
        m = min(len(ev_epoch), len(ev_mse))
        ev_epoch, ev_mse = ev_epoch[:m], ev_mse[:m]
        for col in ("test_acc", "sample_acc", "sample_fd"):
            if col in log["eval"]:
                v = read(log, "eval/" + col, ndim=1)[:m]
                if len(v) == m and np.isfinite(v).any():
                    extra[col] = v

    has_eval = len(ev_mse) > 0
    has_score = has_eval and ("sample_fd" in extra or "test_acc" in extra)
    if has_score:
        fig, (ax, ax2, ax3) = plt.subplots(
            1, 3, figsize=(17, 5), dpi=DPI * 1.2,
            gridspec_kw={"width_ratios": [3, 1.2, 1.4]})
    elif has_eval:
        fig, (ax, ax2) = plt.subplots(
            1, 2, figsize=(13, 5), dpi=DPI * 1.2,
            gridspec_kw={"width_ratios": [3, 1.2]})
    else:
        fig, ax = plt.subplots(figsize=(10, 5), dpi=DPI * 1.2)

    ok = np.isfinite(loss) & (loss > 0)
    ax.plot(step[ok], loss[ok], color="tab:blue", alpha=0.25, lw=0.8,
            label="loss per step")
    win = int(min(200, max(5, n // 40)))
    if ok.sum() >= win > 1:
        s, l = step[ok], loss[ok]
        c = np.cumsum(np.insert(l, 0, 0.0))
        avg = (c[win:] - c[:-win]) / win
        ax.plot(s[win // 2: win // 2 + len(avg)], avg, color="tab:blue", lw=2,
                label=f"moving average ({win} steps)")
    bounds = np.flatnonzero(np.diff(epoch) != 0)
    for k, b in enumerate(bounds):
        ax.axvline((step[b] + step[b + 1]) / 2, color="0.35", ls=":", lw=1.2,
                   label="epoch boundary" if k == 0 else None)
    ax.set_yscale("log")
    # Label 2x and 5x ticks too: a loss curve rarely spans many decades.
    tick = matplotlib.ticker
    ax.yaxis.set_minor_formatter(tick.FuncFormatter(
        lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v)))
        in (2, 5) else ""))
    ax.yaxis.set_major_formatter(tick.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (cross-entropy)" if classify else "training loss (MSE)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper right", fontsize=9)
    if ok.any():
        last = loss[ok][-1]
        ax.set_title(f"last loss {last:.4g} at step {int(step[ok][-1])}",
                     fontsize=10)

    if has_eval:
        good = np.isfinite(ev_mse)
        ax2.plot(ev_epoch[good], ev_mse[good], "o-", color="tab:red", ms=7)
        if len(ev_mse) <= 12:
            for e, v in zip(ev_epoch[good], ev_mse[good]):
                ax2.annotate(f"{v:.4g}", (e, v), textcoords="offset points",
                             xytext=(0, 8), ha="center", fontsize=8)
        sig = attr(log, "eval_sigma")
        noise_sigma = sig is not None and conf.get("objective") == "denoise"
        what = "test cross-entropy" if classify else "test MSE"
        ax2.set_title(what + (f" (σ = {fmt(sig)})" if noise_sigma
                              else ""), fontsize=10)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel(what)
        uniq = np.unique(ev_epoch)
        if len(uniq) <= 20:
            ax2.set_xticks(uniq)
        else:
            ax2.xaxis.set_major_locator(
                matplotlib.ticker.MaxNLocator(integer=True))
        lo, hi = (ev_epoch.min(), ev_epoch.max()) if len(ev_epoch) else (0, 1)
        ax2.set_xlim(lo - 0.5, hi + 0.5)
        ax2.margins(y=0.25)
        ax2.grid(True, alpha=0.25)

    if has_score:
        score_panel(ax3, ev_epoch, extra)

    head = f"{run_name}: training loss — objective {conf.get('objective', '?')}"
    if conf.get("conditioning", "none") != "none":
        head += f", {conf['conditioning']} conditioning"
    head += f", D = {conf.get('hidden', '?')}"
    fig.suptitle(head, fontsize=13)
    fig.tight_layout()
    save(fig, path, written)


def sigma_list(f, grp_name, ds_name, n):
    for obj in (f[ds_name], f[grp_name]):
        s = attr(obj, "sigmas")
        if s is not None:
            s = np.atleast_1d(np.asarray(s, dtype=float))
            if len(s) == n:
                return s
    return None


def fig_noising(smp, path, written):
    imgs = read(smp, "noising/images", ndim=4, tail=(28, 28))
    S, K = imgs.shape[:2]
    sig = sigma_list(smp, "noising", "noising/images", S)
    rows = [f"σ = {fmt(s)}" for s in sig] if sig is not None else \
        [f"level {i}" for i in range(S)]
    idx = attr(smp["noising"], "test_indices")
    if idx is not None and np.size(idx) == K:
        cols = [f"#{int(i)}" for i in np.ravel(idx)]
    else:
        cols = [f"{i + 1}" for i in range(K)]
    warn_nonfinite(imgs, f"{smp.filename}: /noising/images")
    fig, *_ = grid_figure(imgs, "Noising x + σ·ε of the same test digits",
                          row_labels=rows, col_labels=cols,
                          xlabel="test digit (index in the MNIST test set)")
    save(fig, path, written)


def fig_ood(smp, path, written, train_sigma):
    noisy = read(smp, "ood/noisy", ndim=3, tail=(28, 28))
    den = read(smp, "ood/denoised", ndim=3, tail=(28, 28))
    S = min(len(noisy), len(den))
    mse = read(smp, "ood/test_mse", ndim=1) if "test_mse" in smp["ood"] else None
    sig = attr(smp["ood"], "sigmas")
    sig = None if sig is None or np.size(sig) < S else np.ravel(sig)
    cols = []
    for i in range(S):
        s = f"σ = {fmt(sig[i])}" if sig is not None else f"level {i}"
        if mse is not None and i < len(mse):
            s += f"\nMSE {mse[i]:.4f}"
        cols.append(s)
    cells = np.stack([noisy[:S], den[:S]])
    warn_nonfinite(cells, f"{smp.filename}: /ood")
    title = "Out-of-distribution noise levels"
    if train_sigma:
        title += f" (trained at σ = {train_sigma})"
    fig, *_ = grid_figure(cells, title, row_labels=["noisy", "denoised"],
                          col_labels=cols,
                          xlabel="columns: noise level σ and the test MSE of "
                                 "the denoiser at that σ")
    save(fig, path, written)


def sample_title(grp, ep, default_obj):
    obj = attr(grp, "objective", default_obj) or "?"
    bits = [f"objective {obj}"]
    g = attr(grp, "guidance")
    if g is not None:
        bits.append(f"guidance γ = {fmt(g)}")
    st, smp = attr(grp, "steps"), attr(grp, "sampler")
    if st is not None:
        bits.append((f"{smp} " if smp is not None else "") + f"{fmt(st)} steps")
    sd = attr(grp, "seed")
    if sd is not None:
        bits.append(f"seed {fmt(sd)}")
    head = f"Samples after epoch {ep}" if ep is not None else "Samples"
    return head + "\n" + ", ".join(bits)


def grid_xlabel(labels, cols):
    if cols:
        return "class (digit)"
    if labels is not None and labels.size and np.all(labels == -1):
        return "unconditioned (label -1)"
    return None


def fig_samples(smp, grp, ep, path, written, default_obj, title=None):
    imgs = read(smp, f"{grp}/images", ndim=3, tail=(28, 28))
    labels = read(smp, f"{grp}/labels", ndim=1, dtype=np.int64) \
        if "labels" in smp[grp] else None
    if labels is not None and len(labels) != len(imgs):
        raise FigError(f"{smp.filename}: /{grp}/labels: {len(labels)} labels "
                       f"for {len(imgs)} images")
    index, cols = arrange(labels, len(imgs))
    warn_nonfinite(imgs, f"{smp.filename}: /{grp}/images")
    fig, *_ = grid_figure(cells_from(imgs, index),
                          title or sample_title(smp[grp], ep, default_obj),
                          col_labels=cols, xlabel=grid_xlabel(labels, cols))
    save(fig, path, written)


def copy_run_png(run, name, group, path, written):
    """A figure `diffmpi train` draws (src/io/samples.c: noising.png,
    denoise-epoch-N.png, ood.png, samples-epoch-N.png, batch-epoch-N.png,
    each beside the samples.h5 group `group`) is drawn once, there; the figure
    set gets a byte-for-byte copy of RUN_DIR/`name`, not a second drawing."""
    src = os.path.join(run, name)
    if not os.path.isfile(src):
        raise FigError(f"{src}: missing (diffmpi train draws it with /{group})")
    try:
        if not (os.path.exists(path) and os.path.samefile(src, path)):
            shutil.copyfile(src, path)
    except OSError as exc:
        raise FigError(f"{path}: cannot write: {exc.strerror or exc}") from None
    print(path, flush=True)
    written.append(path)


def fig_trajectory(smp, path, written, max_frames, labels_for):
    frames = read(smp, "trajectory/images", ndim=4, tail=(28, 28))
    t = read(smp, "trajectory/t", ndim=1) if "t" in smp["trajectory"] else None
    if frames.shape[0] < 1:
        return
    ep = attr(smp["trajectory"], "epoch")
    labels = labels_for(ep)
    if labels is not None and len(labels) != frames.shape[1]:
        labels = None
    index, cols = arrange(labels, frames.shape[1])
    title = "Sampling trajectory" + (f", epoch {ep}" if ep is not None else "")
    save_gif(frames, t, index, cols, title, path, written, max_frames)


def sample_file(path, figdir, written, max_frames):
    stem = os.path.splitext(os.path.basename(path))[0]
    with open_h5(path) as f:
        imgs = read(f, "images", ndim=3, tail=(28, 28))
        labels = read(f, "labels", ndim=1, dtype=np.int64) if "labels" in f else None
        if labels is not None and len(labels) != len(imgs):
            raise FigError(f"{path}: /labels: {len(labels)} labels for "
                           f"{len(imgs)} images")
        index, cols = arrange(labels, len(imgs))
        bits = []
        for key, name in (("guidance", "guidance γ = "), ("sampler", ""), ("steps", ""),
                          ("seed", "seed ")):
            v = attr(f, key)
            if v is not None:
                bits.append(f"{name}{fmt(v)}" + (" steps" if key == "steps" else ""))
        title = f"{os.path.basename(path)}: {len(imgs)} samples"
        if bits:
            title += "\n" + ", ".join(bits)
        warn_nonfinite(imgs, f"{path}: /images")
        fig, *_ = grid_figure(cells_from(imgs, index), title, col_labels=cols,
                              xlabel=grid_xlabel(labels, cols))
        save(fig, os.path.join(figdir, f"sample_{stem}.png"), written)
        if "trajectory" in f:
            frames = read(f, "trajectory", ndim=4, tail=(28, 28))
            if frames.shape[1] != len(imgs):
                raise FigError(f"{path}: /trajectory: {frames.shape[1]} images "
                               f"per frame, /images has {len(imgs)}")
            t = read(f, "trajectory_t", ndim=1) if "trajectory_t" in f else None
            if frames.shape[0] >= 1:
                save_gif(frames, t, index, cols,
                         f"{os.path.basename(path)}: sampling",
                         os.path.join(figdir, f"sample_{stem}.gif"), written,
                         max_frames)


def sweep_stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def fig_sweep(path, out, written):
    """tools/sampler_sweep.py's table: accuracy and Frechet distance against
    network evaluations, one line per sampler and spacing, mean and standard
    deviation over the seeds."""
    with open_h5(path) as f:
        if "rows" not in f:
            raise FigError(f"{path}: no /rows (not a tools/sampler_sweep.py table)")
        rows = f["rows"][()]
        ck = attr(f, "checkpoint", "")
    if len(rows) == 0:
        raise FigError(f"{path}: /rows is empty")
    # A model without classes has no accuracy: the distance alone.
    keys = [k for k in ("accuracy", "frechet_distance") if not np.isnan(rows[k]).all()]
    names = {"accuracy": "judge accuracy", "frechet_distance": "Fréchet distance (judge features)"}
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    axes = list(axes[0])
    for s, sp in sorted({(r["sampler"], r["spacing"]) for r in rows}):
        sel = rows[(rows["sampler"] == s) & (rows["spacing"] == sp)]
        es = sorted(set(int(e) for e in sel["evaluations"]))
        for ax, key in zip(axes, keys):
            v = [sel[key][sel["evaluations"] == e] for e in es]
            m = [x.mean() for x in v]
            sd = [x.std(ddof=1) if len(x) > 1 else 0.0 for x in v]
            ax.errorbar(es, m, yerr=sd, marker="o", ms=4, capsize=3,
                        label=f"{s.decode()} ({sp.decode()})")
    ticks = sorted(set(int(e) for e in rows["evaluations"]))
    for ax, name in zip(axes, (names[k] for k in keys)):
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("network evaluations per image")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].set_yscale("log")
    axes[-1].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[-1].yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Samplers of {os.path.basename(os.path.dirname(os.path.dirname(ck))) or ck}: "
                 f"mean ± sd over seeds, {int(rows['n'][0])} images a point")
    save(fig, out, written)


def fig_inversion(d, out_rec, out_int, written):
    """tools/inversion.py's DIR: 10 test digits, the noise `diffmpi invert`
    found for them, and the digits redrawn from it at each number of steps;
    then the interpolation grid (spherical, between two noises a row)."""
    with open_h5(os.path.join(d, "inversion.h5")) as f:
        rows = f["rows"][()]
        big = int(attr(f, "largest_steps", rows["steps"].max()))
    with open_h5(os.path.join(d, "digits.h5")) as f:
        digits = read(f, "images", ndim=3, tail=(28, 28))[:10]
    k = len(digits)
    with open_h5(os.path.join(d, f"reconstruct-{big}.h5")) as f:
        noise = read(f, "noise", ndim=4, tail=(28, 28))[:k, 0]
        smp = attr(f, "sampler", "?")
    cells, labels = [digits, np.clip(0.5 + noise / 5.0, 0, 1)], ["test digit", f"noise ({big})"]
    for r in rows:
        st = int(r["steps"])
        with open_h5(os.path.join(d, f"redrawn-{st}.h5")) as f:
            cells.append(read(f, "images", ndim=3, tail=(28, 28))[:k])
        labels.append(f"{st} steps")
    fig, *_ = grid_figure(np.stack(cells), f"Inversion by {smp}: digit, its noise "
                          f"(0.5 + z/5), redrawn from it\nreconstruction MSE over "
                          f"{int(rows['n'][0])} test digits: " +
                          ", ".join(f"{r['mse_mean']:.2g} at {int(r['steps'])}" for r in rows),
                          row_labels=labels)
    save(fig, out_rec, written)
    with open_h5(os.path.join(d, "interpolation.h5")) as f:
        img = read(f, "images", ndim=3, tail=(28, 28))
        lab = read(f, "labels", ndim=1, dtype=np.int64)
    with open_h5(os.path.join(d, "interpolation-noise.h5")) as f:
        cols = int(attr(f, "cols"))
    if len(img) % cols:
        raise FigError(f"{d}/interpolation.h5: {len(img)} images are not rows of {cols}")
    R = len(img) // cols
    names = [str(lab[r * cols]) if lab[r * cols] >= 0 else f"pair {r}" for r in range(R)]
    fig, *_ = grid_figure(img.reshape(R, cols, 28, 28),
                          f"Spherical interpolation between two noises a row ({smp}, {big} "
                          f"steps)", row_labels=names)
    save(fig, out_int, written)


# ---------------------------------------------------------------- main


def main(argv=None):
    global GIF_SCALE  # --gif-scale sets it for save_gif
    ap = argparse.ArgumentParser(
        prog="figures.py",
        description="Draw the figures of a diffmpi run: reads RUN_DIR/log.h5 "
                    "and RUN_DIR/samples.h5 (a log still being written is "
                    "read as an SWMR reader), writes a PNG or GIF for every "
                    "figure whose data exist (a copy of the PNG `diffmpi "
                    "train` drew, where it drew one), and prints each path "
                    "written.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", metavar="RUN_DIR", nargs="?",
                    help="output directory of `diffmpi train` (may be left out "
                         "with --sweep and --out)")
    ap.add_argument("--inversion", metavar="DIR",
                    help="a tools/inversion.py output directory; draws "
                         "reconstruction.png and interpolation.png")
    ap.add_argument("--sweep", metavar="TABLE", action="append", default=[],
                    help="a tools/sampler_sweep.py table; draws sweep_STEM.png "
                         "(accuracy and Fréchet distance against network "
                         "evaluations per sampler; repeatable)")
    ap.add_argument("--out", metavar="FIGDIR",
                    help="where to write the figures (default RUN_DIR/figures; "
                         "created if missing)")
    ap.add_argument("--sample", metavar="FILE", action="append", default=[],
                    help="a `diffmpi sample` output file; draws "
                         "sample_STEM.png, and sample_STEM.gif when it holds a "
                         "trajectory (repeatable)")
    ap.add_argument("--max-frames", type=int, default=100, metavar="N",
                    help="GIFs show at most N evenly spaced trajectory frames, "
                         "always including the first and the last (default "
                         "100; 0 = all)")
    ap.add_argument("--gif-scale", type=int, default=GIF_SCALE, metavar="S",
                    help="GIFs draw each 28x28 digit as 28S x 28S pixels "
                         f"(1-{SCALE}, default {GIF_SCALE}; 1 or 2 keep a GIF "
                         "small enough to commit)")
    args = ap.parse_args(argv)

    def usage_error(msg):
        sys.stderr.write(f"figures: {msg}\n")
        return 2

    run = args.run_dir
    for t in args.sweep:
        if not os.path.isfile(t):
            return usage_error(f"--sweep {t}: no such file")
    if args.inversion and not os.path.isdir(args.inversion):
        return usage_error(f"--inversion {args.inversion}: no such directory")
    if run is None:
        if not ((args.sweep or args.inversion) and args.out):
            return usage_error("RUN_DIR is required (without it: --sweep TABLE or "
                               "--inversion DIR, and --out)")
        os.makedirs(args.out, exist_ok=True)
        written, errors = [], []
        jobs = [(fig_sweep, t, os.path.join(args.out, f"sweep_{sweep_stem(t)}.png"))
                for t in args.sweep]
        if args.inversion:
            jobs.append((fig_inversion, args.inversion, os.path.join(args.out,
                                                                     "reconstruction.png"),
                         os.path.join(args.out, "interpolation.png")))
        for fn, *a in jobs:
            try:
                fn(*a, written)
            except (FigError, OSError, KeyError, ValueError) as exc:
                errors.append(str(exc))
                sys.stderr.write(f"figures: {exc}\n")
        return 1 if errors else 0
    if not os.path.isdir(run):
        return usage_error(f"{run}: no such run directory")
    if not os.access(run, os.R_OK | os.X_OK):
        return usage_error(f"{run}: run directory not readable")
    if args.max_frames < 0:
        return usage_error("--max-frames: must be 0 or more")
    if not 1 <= args.gif_scale <= SCALE:
        return usage_error(f"--gif-scale: must be 1 to {SCALE}")
    GIF_SCALE = args.gif_scale
    log_path = os.path.join(run, "log.h5")
    smp_path = os.path.join(run, "samples.h5")
    have_log, have_smp = os.path.isfile(log_path), os.path.isfile(smp_path)
    if not (have_log or have_smp or args.sample):
        return usage_error(f"{run}: holds neither log.h5 nor samples.h5")
    for s in args.sample:
        if not os.path.isfile(s):
            return usage_error(f"--sample {s}: no such file")

    figdir = args.out or os.path.join(run, "figures")
    try:
        os.makedirs(figdir, exist_ok=True)
    except OSError as exc:
        sys.stderr.write(f"figures: {figdir}: cannot create: {exc.strerror}\n")
        return 1

    run_name = os.path.basename(os.path.normpath(os.path.abspath(run)))
    written, errors = [], []

    def attempt(what, fn, *a):
        """Draw one figure; a bad input becomes one stderr line."""
        try:
            fn(*a)
        except FigError as exc:
            errors.append(str(exc))
        except (OSError, KeyError, ValueError, TypeError, IndexError,
                RuntimeError) as exc:
            errors.append(f"{what}: {type(exc).__name__}: {exc}")
        else:
            return
        finally:
            plt.close("all")
        sys.stderr.write(f"figures: {errors[-1]}\n")

    out = lambda name: os.path.join(figdir, name)   # noqa: E731
    conf = {}

    if have_log:
        log = []
        attempt(log_path, lambda: log.append(open_h5(log_path)))
        if log:
            with log[0] as log:
                conf = parse_config(attr(log, "config"))
                if "train" in log:
                    attempt(f"{log_path}: /train", fig_loss, log, out("loss.png"),
                            written, run_name)

    if have_smp:
        smp = []
        attempt(smp_path, lambda: smp.append(open_h5(smp_path)))
        if smp:
            with smp[0] as smp:
                draw_samples(smp, smp_path, conf, out, written, attempt,
                             args.max_frames)

    for s in args.sample:
        attempt(s, sample_file, s, figdir, written, args.max_frames)
    for t in args.sweep:
        attempt(t, fig_sweep, t, out(f"sweep_{sweep_stem(t)}.png"), written)
    if args.inversion:
        attempt(args.inversion, fig_inversion, args.inversion, out("reconstruction.png"),
                out("interpolation.png"), written)

    return 1 if errors else 0


def draw_samples(smp, smp_path, conf, out, written, attempt, max_frames):
    if not conf:
        for g in ("noising", "ood", "trajectory"):
            if g in smp:
                conf = parse_config(attr(smp[g], "config"))
                break
    where = lambda g: f"{smp_path}: /{g}"   # noqa: E731

    # The PNGs diffmpi train drew beside samples.h5, one per group: copied.
    run = os.path.dirname(smp_path)
    epochs = epoch_groups(smp, "samples")
    c_pngs = [("noising.png", "noising")] if "noising" in smp else []
    c_pngs += [(f"denoise-epoch-{ep}.png", g) for ep, g in epoch_groups(smp, "denoise")]
    c_pngs += [("ood.png", "ood")] if "ood" in smp else []
    c_pngs += [(f"samples-epoch-{ep}.png", g) for ep, g in epochs]
    c_pngs += [(f"batch-epoch-{ep}.png", g) for ep, g in epoch_groups(smp, "batch_vis")]
    for name, grp in c_pngs:
        attempt(where(grp), copy_run_png, run, name, grp, out(name), written)

    # Part 1: the sigma sweeps again, labelled (C's grids have no text).
    if "noising" in smp:
        attempt(where("noising"), fig_noising, smp, out("noising_sigmas.png"),
                written)
    if "ood" in smp:
        attempt(where("ood"), fig_ood, smp, out("ood_mse.png"), written,
                conf.get("sigma"))

    # Part 2
    obj = conf.get("objective")

    def labels_of(grp):
        if "labels" not in smp[grp]:
            return None
        return read(smp, f"{grp}/labels", ndim=1, dtype=np.int64)

    if epochs:
        ep, grp = epochs[-1]
        got = []          # stays empty when the labels are unreadable (reported)
        attempt(where(grp), lambda: got.append(labels_of(grp)))
        lab = got[0] if got else None
        is_class = conf.get("conditioning") == "class" or (
            lab is not None and lab.size > 0 and np.all((lab >= 0) & (lab <= 9)))
        if is_class and got:
            title = (f"Class-conditioned samples, epoch {ep}: one column per "
                     f"digit\n" + sample_title(smp[grp], ep, obj).split("\n")[1])
            attempt(where(grp), fig_samples, smp, grp, ep, out("class_grid.png"),
                    written, obj, title)

    if "trajectory" in smp and "images" in smp["trajectory"]:
        def labels_for(ep):
            for e, g in epochs:
                if ep is not None and e == int(ep):
                    try:
                        return labels_of(g)
                    except FigError:
                        return None
            return None
        attempt(where("trajectory"), fig_trajectory, smp, out("trajectory.gif"),
                written, max_frames, labels_for)


if __name__ == "__main__":
    sys.exit(main())
