"""Shared fixtures: one torch thread per test, tiny generated datasets, fake MNIST idx files, CLI helpers."""

from __future__ import annotations

import builtins
import dataclasses
import errno
import gzip
import hashlib
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lsbench import util as lsbench_util
from lsbench.generators import mnist
from lsbench.generators.mnist import MnistConfig
from lsbench.generators.runner import RunOptions

# A tiny 3-digit MNIST-LS: 2 train shards of 10, 5 test shards of 2 groups of 5.  Under a second.
TINY = dict(digits=3, size=112, scale_range=(0.4, 2.0), train=20, test=50, shard_size=10)
TINY_CLI = ["--digits", "3", "--size", "112", "--train", "20", "--test", "50", "--shard-size", "10"]

LSBENCH = str(Path(sys.executable).with_name("lsbench"))  # the real console script of this venv
DIST_VARS = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "WORKER", "NUM_WORKERS", "LOCAL_RANK")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Test-sized tensors gain nothing from a second intra-op thread, and on a busy 2-core machine it
    stalls badly (measured: one micro training epoch 15.5 s with 2 threads, 0.45 s with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_distributed_env(monkeypatch):
    """Tests run as a single process unless they set RANK/WORLD_SIZE themselves (even under SLURM)."""
    for var in DIST_VARS:
        monkeypatch.delenv(var, raising=False)


def config_and_run(config_cls, options: dict) -> tuple:
    """Keyword options as a test writes them, split into ``(config_cls(...), RunOptions(...))``."""
    run_fields = {f.name for f in dataclasses.fields(RunOptions)}
    run = {k: v for k, v in options.items() if k in run_fields}
    return config_cls(**{k: v for k, v in options.items() if k not in run_fields}), RunOptions(**run)


def generate_mnist(out: Path, **options):
    """``mnist.generate`` with the config and run options given as keywords."""
    cfg, run = config_and_run(MnistConfig, options)
    return mnist.generate(cfg, out, run)


def generate_gso(out: Path, **options):
    """``gso.generate`` with the config and run options given as keywords (imported here: Blender's
    generator is only loaded by the tests that use it)."""
    from lsbench.generators import gso

    cfg, run = config_and_run(gso.GsoConfig, options)
    return gso.generate(cfg, out, run)


def generate_imagenet(out: Path, **options):
    """``imagenet.generate`` with the config and run options given as keywords."""
    from lsbench.generators import imagenet

    cfg, run = config_and_run(imagenet.ImagenetConfig, options)
    return imagenet.generate(cfg, out, run)


def generate_tiny(out: Path, **overrides):
    """Generate the tiny dataset (library call, quiet) into ``out``; returns the BuildResult."""
    return generate_mnist(out, **{**TINY, **overrides})


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["COLUMNS"] = "200"
    return env


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A valid tiny dataset, generated once per session.  Read-only: copy it before changing it."""
    out = tmp_path_factory.mktemp("tiny") / "ds"
    generate_tiny(out)
    for p in out.iterdir():
        p.chmod(0o444)
    return out


@pytest.fixture
def tiny_copy(tiny_dataset, tmp_path) -> Path:
    """A writable copy of :func:`tiny_dataset` for tests that damage it."""
    dst = tmp_path / "ds"
    shutil.copytree(tiny_dataset, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shard_files(directory: Path) -> dict[str, bytes]:
    """Every shard file in a folder: name → bytes."""
    return {p.name: p.read_bytes() for p in sorted(Path(directory).glob("*.tar"))}


def shard_records(directory: Path, manifest: str = "manifest.json") -> dict[str, list[dict]]:
    """Per split, the shard records listed in a manifest."""
    return {split: entry["shards"] for split, entry in read_json(Path(directory) / manifest)["splits"].items()}


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in Path(directory).iterdir() if ".tmp-" in p.name)


# --------------------------------------------------------------------------- fake MNIST idx files


def idx_bytes(array: np.ndarray, *, magic: int | None = None, dims: tuple[int, ...] | None = None) -> bytes:
    """The standard idx encoding (as tools/make_mnist_asset.py writes it); override magic or header dims."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    dims = array.shape if dims is None else dims
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + array.tobytes()


def write_idx(
    path: Path,
    array: np.ndarray,
    *,
    magic: int | None = None,
    dims: tuple[int, ...] | None = None,
    truncate: int = 0,
    gz: bool | None = None,
    truncate_gz: int = 0,
) -> Path:
    """Write one idx file.  ``truncate`` drops bytes of the payload, ``truncate_gz`` of the gzip stream.

    ``gz`` defaults to whether ``path`` ends in ``.gz``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array, magic=magic, dims=dims)
    if truncate:
        data = data[:-truncate]
    if gz is None:
        gz = path.suffix == ".gz"
    if gz:
        data = gzip.compress(data, mtime=0)
        if truncate_gz:
            data = data[:-truncate_gz]
    path.write_bytes(data)
    return path


def fake_digits(n: int, labels: list[int] | np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 28×28 'digits' (a bright blob on black) and their labels."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 6:22, 8:20] = rng.integers(1, 256, size=(n, 16, 12), dtype=np.uint8)
    return images, np.resize(np.asarray(labels, dtype=np.uint8), n)


def write_fake_mnist(
    folder: Path,
    *,
    n_train: int = 30,
    n_test: int = 20,
    train_labels=range(10),
    test_labels=range(10),
    gz: bool = True,
) -> Path:
    """The four standard MNIST idx files, in ``folder``; returns it."""
    folder = Path(folder)
    ext = ".gz" if gz else ""
    for prefix, n, labels, seed in (("train", n_train, train_labels, 1), ("t10k", n_test, test_labels, 2)):
        images, lab = fake_digits(n, list(labels), seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", lab)
    return folder


@pytest.fixture
def fake_mnist(tmp_path) -> Path:
    """A folder with small but well-formed gzipped MNIST idx files (30 train, 20 test digits)."""
    return write_fake_mnist(tmp_path / "mnist")


# --------------------------------------------------------------------------- failures


class _DoomedFile:
    """A real file whose first write stores half the bytes and then fails with ``OSError(err)``."""

    def __init__(self, f, err: int):
        self._f, self._err = f, err

    def write(self, b) -> int:
        self._f.write(bytes(b)[: len(b) // 2])
        raise OSError(self._err, os.strerror(self._err))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False

    def __getattr__(self, name):
        return getattr(self._f, name)


def fail_nth_shard(mp: pytest.MonkeyPatch, n: int, err: int = errno.ENOSPC):
    """Make the ``n``-th shard file this process opens (1-based) fail with ``OSError(err)`` mid-write.

    Shadows ``open`` inside :mod:`lsbench.util` only (the atomic writer opens its temporary file
    with the builtin), for shard files; manifests and everything else are untouched.
    """
    state = {"shards": 0}

    def fake_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        name = Path(file).name
        if "w" in mode and ".tar" + lsbench_util.TMP_MARK in name:
            state["shards"] += 1
            if state["shards"] == n:
                return _DoomedFile(f, err)
        return f

    mp.setattr(lsbench_util, "open", fake_open, raising=False)
    return state


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    """Invoke ``lsbench`` in-process: ``cli("validate", DIR)`` → click Result (stdout/stderr apart)."""
    from lsbench.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def assert_user_error(result, *needles: str, code: int = 1) -> str:
    """The CLI failed as a user mistake: exit ``code``, exactly one ``error: ...`` line, no traceback.

    Returns the error line; each of ``needles`` must appear in it.
    """
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"unexpected exception escaped the CLI: {result.exception!r}"
    )
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0] == lines[-1], result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]
