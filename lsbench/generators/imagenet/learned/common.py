"""What the learned backends share: devices, batching with out-of-memory halving, options, the model cache."""


from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ....errors import ConfigError, LsbenchError

T = TypeVar("T")
R = TypeVar("R")

INSTALL_HINT = "pip install lsbench[imagenet]"
DEFAULT_BATCH_SIZE = 8
BOX_THRESHOLD = 0.35
TEXT_THRESHOLD = 0.25
LAMA_MODULO = 8

_MODELS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


# --------------------------------------------------------------------------- shared helpers


def _oom_errors() -> tuple[type[BaseException], ...]:
    kinds = {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)}
    return tuple(k for k in kinds if k is not None)


OOM_ERRORS = _oom_errors()


def run_in_batches(
    fn: Callable[[list[T]], list[R]], items: Sequence[T], batch_size: int, what: str
) -> tuple[list[R], int]:
    """``fn`` over ``items`` in chunks of at most ``batch_size``, halving the chunk on out-of-memory.

    ``fn`` maps a chunk to one result per item.  When it raises ``torch.OutOfMemoryError`` (CUDA's
    out-of-memory error is the same class) the CUDA cache is emptied and the same items are retried at
    half the chunk size, down to 1; out of memory at 1 raises :class:`LsbenchError` (one line naming
    ``what``).  Returns the results in item order and the batch size that finally worked (callers keep
    it for their next call).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    items = list(items)
    results: list[R] = []
    size, start = batch_size, 0
    while start < len(items):
        chunk = items[start : start + size]
        try:
            out = fn(chunk)
        except OOM_ERRORS:
            out = None
        if out is None:  # handled outside the except block so the failed batch's tensors are freed first
            if len(chunk) == 1:
                raise LsbenchError(
                    f"{what} ran out of GPU memory on a single photo: free the GPU, use another --device, "
                    "or an offline backend"
                ) from None
            size = len(chunk) // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        if len(out) != len(chunk):
            raise RuntimeError(f"{what}: {len(out)} results for a batch of {len(chunk)}")
        results.extend(out)
        start += len(chunk)
    return results, size


def _groups(keys: Sequence[Any]) -> list[list[int]]:
    """Indices grouped by equal key, in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _device(options: dict[str, Any]) -> torch.device:
    name = options.get("device") or "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {name!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: torch sees no CUDA GPU here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise ConfigError(f"--device {name!r}: the learned backends run on cpu or cuda")
    return device


def _batch_size(options: dict[str, Any]) -> int:
    value = options.get("batch_size")
    if value is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {value!r}")
    return value


def _threshold(options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key)
    if value is None:
        return default
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{key.replace('_', '-')} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--{key.replace('_', '-')} must be in [0, 1], got {value}")
    return value


def _fp16(options: dict[str, Any]) -> bool:
    """``options['fp16']``, on unless set false (it only takes effect on CUDA)."""
    value = options.get("fp16")
    return True if value is None else bool(value)


def _autocast(device: torch.device, fp16: bool) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA when ``fp16``; nothing (float32) otherwise."""
    if fp16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _require(module: str, backend: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = error.name or module
        raise ConfigError(
            f"the {backend} backend needs the python package {missing!r}, which is not installed: {INSTALL_HINT}"
        ) from None


def _local_path(options: dict[str, Any], key: str, what: str, hint: str) -> Path:
    """``options[key]`` as an existing, readable path, else a one-line :class:`ConfigError`.

    ``hint`` completes "…: pass <flag> with <hint>".
    """
    flag = "--" + key.replace("_", "-")
    value = options.get(key)
    if not value:
        raise ConfigError(f"{what} needs a local checkpoint: pass {flag} with {hint}")
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"{what} checkpoint {path} not found: pass {flag} with {hint}")
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise ConfigError(f"{what} checkpoint {path} is not readable: pass {flag} with {hint}")
    return path


def _cached(key: tuple, build: Callable[[], T]) -> T:
    """The model under ``key``, built once per process."""
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = build()
        return _MODELS[key]


def clear_model_cache() -> None:
    """Forget every loaded model (tests, or to free GPU memory)."""
    with _LOCK:
        _MODELS.clear()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and info logs off while loading (library code does not print)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    return image
