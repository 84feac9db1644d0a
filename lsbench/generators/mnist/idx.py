"""Read MNIST from the standard idx files (``*-idx3-ubyte``/``*-idx1-ubyte``, gzipped or not).

Accepted layouts for ``mnist_dir``: the four files directly inside it, or in ``raw/`` or
``MNIST/raw/`` below it (torchvision's layout).  Without a folder the 5,000 real digits embedded
in ``lsbench/assets/mnist`` are used (see its README for source, split and licence).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError

ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / "mnist"
PREFIX = {"train": "train", "test": "t10k"}
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
MAX_BYTES = 1 << 30  # MNIST's largest file (train images) is 47 MB; EMNIST's 0.6 GB
_TRAILING_READ = 1 << 20  # bytes read past the promised body to tell "trailing junk" (its size up to this)
MAX_BLANK_FRACTION = 0.01  # real MNIST has no blank digit (the embedded 5,000: none); a zeroed body is all blank


@dataclass(frozen=True)
class MnistSplit:
    """One MNIST split: ``images`` ``(N, 28, 28)`` uint8 and ``labels`` ``(N,)`` uint8 in 0–9."""

    images: np.ndarray
    labels: np.ndarray
    source: str  # "mnist" or "lsbench-embedded-mnist"


def _find(mnist_dir: Path, stem: str) -> Path:
    for folder in (mnist_dir, mnist_dir / "raw", mnist_dir / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataError(
        f"--mnist-dir {mnist_dir}: {stem}[.gz] not found; expected the four standard MNIST idx files "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte) "
        "directly in that folder or in raw/ or MNIST/raw/"
    )


def read_idx(path: Path, kind: str) -> np.ndarray:
    """Parse one idx file; ``kind`` is ``"images"`` (N, 28, 28) or ``"labels"`` (N,).

    Bounded: the header is read first and the body only up to the size it promises (at most
    :data:`MAX_BYTES`), so a truncated file, trailing junk or a gzip bomb is one line, not a memory spike."""
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise DataError(f"{path} is truncated ({len(head)} bytes); re-download it")
            (magic,) = struct.unpack(">I", head)
            if magic != _MAGIC[kind]:
                raise DataError(
                    f"{path} has magic number {magic:#010x}, expected {_MAGIC[kind]:#010x} for MNIST {kind}; "
                    "is it the right file?"
                )
            ndim = magic & 0xFF
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path} is truncated (header cut short); re-download it")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            expected = int(np.prod(dims, dtype=np.int64)) if dims else 0
            if expected > MAX_BYTES:
                raise DataError(f"{path}: its header promises {expected:,} bytes (shape {dims}), more than any MNIST "
                                f"file ({MAX_BYTES:,}); the file is corrupt, re-download it")
            body = f.read(expected)
            extra = len(f.read(_TRAILING_READ))
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not readable or not valid gzip ({e}); re-download it") from e
    if len(body) != expected or extra:
        held = f"{len(body) + extra}" + ("+" if extra == _TRAILING_READ else "")
        raise DataError(
            f"{path} holds {held} data bytes but its header promises {expected} "
            f"(shape {dims}); the file is truncated or corrupt, re-download it"
        )
    array = np.frombuffer(body, dtype=np.uint8).reshape(dims)
    if kind == "images" and array.shape[1:] != (28, 28):
        raise DataError(f"{path} holds images of shape {array.shape[1:]}, MNIST digits are 28×28")
    return array


def load(split: str, mnist_dir: Path | None = None) -> MnistSplit:
    """Load ``split`` (``"train"`` or ``"test"``) from ``mnist_dir`` or the embedded asset."""
    folder = ASSET_DIR if mnist_dir is None else Path(mnist_dir)
    if not folder.is_dir():
        raise DataError(f"--mnist-dir {folder} does not exist or is not a folder")
    prefix = PREFIX[split]
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"), "images")
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"), "labels")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels; the files do not match")
    if labels.max(initial=0) > 9:
        raise DataError(f"{folder}: {split} labels outside 0–9; these are not MNIST label files")
    if len(images) == 0:
        raise DataError(f"{folder}: the {split} idx files hold no digits")
    blank = int((images.reshape(len(images), -1).max(axis=1) == 0).sum())
    if blank > MAX_BLANK_FRACTION * len(images):
        raise DataError(f"{folder}: {blank:,} of the {len(images):,} {split} images are blank (no ink): the idx file's "
                        "body is zeroed or damaged; re-download it")
    return MnistSplit(images, labels, "mnist" if mnist_dir is not None else "lsbench-embedded-mnist")
