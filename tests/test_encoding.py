"""The hand-written encoders must equal the reference implementations they replace."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from lsbench.shards import encode_png, encode_sample, write_shard


def _tarfile_reference(samples) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            encoded = encode_sample(sample)
            key = encoded.pop("__key__")
            for field in sorted(encoded):
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size, info.mtime, info.mode = len(encoded[field]), 0, 0o444
                info.uname = info.gname = "lsbench"
                tar.addfile(info, io.BytesIO(encoded[field]))
    return raw.getvalue()


@pytest.mark.parametrize("n", [0, 1, 7, 40])
def test_shard_bytes_equal_tarfile_ustar(tmp_path, n):
    samples = [
        {"__key__": f"{i:07d}_00", "png": bytes(range(256)) * (i % 5 + 1), "cls": i, "json": {"group": i, "x": [i]}}
        for i in range(n)
    ]
    record = write_shard(tmp_path / "a.tar", samples)
    data = (tmp_path / "a.tar").read_bytes()
    assert data == _tarfile_reference(samples)
    assert record.bytes == len(data) and record.num_samples == n
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
    assert names == [f"{i:07d}_00.{f}" for i in range(n) for f in ("cls", "json", "png")]


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (224, 224), (5, 4, 3), (64, 33, 3)])
def test_png_round_trip(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
    assert decoded.shape == image.shape and np.array_equal(decoded, image)


def test_png_is_deterministic_and_rejects_other_dtypes():
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert encode_png(image) == encode_png(image.copy())
    with pytest.raises(ValueError):
        encode_png(image.astype(np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 2), dtype=np.uint8))
