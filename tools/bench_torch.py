#!/usr/bin/python3
"""The same UNet and training step as `diffmpi bench`, in PyTorch, for a
side-by-side speed comparison (tools/perf_table.sh runs both in one go).

The model is tools/diffmpi_torch.py's UNet (diffmpi's layers and names);
one step is forward in train mode, MSE against a target, backward and
Adam, on synthetic data (uniform pixels, random times and labels), the
whole global batch at once on `--threads` threads (PyTorch's usual data
parallelism on one machine is its intra-op threads). `--bf16` runs the
step under torch.cpu.amp.autocast(dtype=torch.bfloat16), PyTorch's own
mixed precision (fp32 master weights, bf16 convolution operands).

usage: tools/bench_torch.py [--hidden D] [--batch B] [--mix none|add|mul|film]
                            [--norm batch|group] [--threads T] [--steps N]
                            [--bf16] [--sample]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mix", default="none", choices=["none", "add", "mul", "film"])
    ap.add_argument("--norm", default="batch", choices=["batch", "group"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--sample", action="store_true",
                    help="time eval-mode forwards of 80 images (40 guided pairs) "
                         "instead of training steps")
    a = ap.parse_args(argv)
    # One OpenBLAS thread per PyTorch thread: torch links OpenBLAS's pthread
    # build, whose own threads would otherwise join in.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch
    import diffmpi_torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = diffmpi_torch.UNet(a.hidden, mix=a.mix, norm=a.norm)
    n = 80 if a.sample else a.batch
    x = torch.rand(n, 1, 28, 28)
    target = torch.randn(n, 1, 28, 28)
    t = torch.rand(n) if a.mix != "none" else None
    c = torch.randint(-1, 10, (n,)) if a.mix == "film" else None
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ctx = (torch.cpu.amp.autocast(dtype=torch.bfloat16) if a.bf16
           else torch.autocast("cpu", enabled=False))

    def step():
        if a.sample:
            with torch.no_grad(), ctx:
                model(x, t, c)
            return
        opt.zero_grad(set_to_none=True)
        with ctx:
            y = model(x, t, c)
        loss = torch.mean((y.float() - target) ** 2)
        loss.backward()
        opt.step()

    if a.sample:
        model.eval()
    else:
        model.train()
    step()  # warm-up: oneDNN builds its kernels on first use
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    secs = time.perf_counter() - t0
    what = "sample forwards" if a.sample else "training"
    rate = a.steps * (40 if a.sample else a.batch) / secs
    unit = "image-steps/s" if a.sample else "images/s"
    print(f"torch {torch.__version__} {what}: D={a.hidden} mix={a.mix} norm={a.norm} "
          f"{'bf16 autocast' if a.bf16 else 'fp32'}, {a.threads} thread(s), "
          f"{a.steps} steps of {n} images in {secs:.3f} s: {rate:.2f} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
