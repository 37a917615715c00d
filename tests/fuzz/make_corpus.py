#!/usr/bin/env python3
"""make_corpus.py: (re)write the seed inputs of tests/fuzz/corpus/idx/.

Each seed is one fuzz_idx input (layout in tests/fuzz/fuzz_idx.c): a 4-byte
little-endian split point, one byte of limit (bits 0..5) and mode (bits 6..7:
1 = no images file, 2 = no labels file), then the images file followed by
the labels file. A few are valid pairs, the others break one check each.
Regression inputs (regress-*) are kept; only seed-* files are rewritten.

usage: tests/fuzz/make_corpus.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "idx")


def images(count, n_data, magic=0x803, rows=28, cols=28):
    pix = bytes((i * 37 + k * 11) % 256 for i in range(n_data)
                for k in range(784))
    return struct.pack(">IIII", magic, count, rows, cols) + pix


def labels(values, count=None, magic=0x801):
    count = len(values) if count is None else count
    return struct.pack(">II", magic, count) + bytes(values)


def seed(img, lbl, limit=0, mode=0):
    return struct.pack("<IB", len(img), (mode << 6) | limit) + img + lbl


SEEDS = {
    "valid-1": seed(images(1, 1), labels([7])),
    "valid-3": seed(images(3, 3), labels([5, 0, 4])),
    "valid-3-limit2": seed(images(3, 3), labels([9, 0, 4]), limit=2),
    "valid-2-limit63": seed(images(2, 2), labels([1, 2]), limit=63),
    "no-images": seed(images(1, 1), labels([3]), mode=1),
    "no-labels": seed(images(1, 1), labels([3]), mode=2),
    "empty-images": seed(b"", labels([3])),
    "short-header": seed(images(1, 1)[:10], labels([3])),
    "images-truncated": seed(images(2, 1), labels([1, 2])),
    "images-trailing": seed(images(1, 2), labels([1])),
    "labels-truncated": seed(images(2, 2), labels([1], count=2)),
    "bad-magic": seed(images(1, 1, magic=0x801), labels([1])),
    "labels-bad-magic": seed(images(1, 1), labels([1], magic=0x803)),
    "gzip": seed(b"\x1f\x8b\x08\x00" + images(1, 1)[4:], labels([1])),
    "dims-28x27": seed(images(1, 1, cols=27), labels([1])),
    "zero-count": seed(images(0, 0), labels([])),
    "huge-count": seed(images(0xFFFFFFFF, 1), labels([1])),
    "count-mismatch": seed(images(2, 2), labels([1])),
    "label-10": seed(images(2, 2), labels([3, 10]), limit=1),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        if name.startswith("seed-"):
            os.unlink(os.path.join(OUT, name))
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, "seed-" + name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {OUT}")


if __name__ == "__main__":
    main()
