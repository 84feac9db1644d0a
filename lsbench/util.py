"""Bottom-layer helpers every layer shares: atomic files, file hashes, seeded streams, safe names.

Nothing here knows about datasets, models or results; :mod:`lsbench.shards`, the generators'
runner, checkpoints and results all write through :func:`atomic_open`, so "a file is either
complete under its final name or absent" holds the same way everywhere (and a full disk is one
:class:`~lsbench.errors.DiskFullError` line, whoever was writing).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import ConfigError, DiskFullError

if TYPE_CHECKING:
    import numpy as np

TMP_MARK = ".tmp-"  # temporaries are ".{name}.tmp-{pid}": hidden, and tied to the final name


def temporary_path(path: Path) -> Path:
    """The temporary sibling :func:`atomic_open` writes ``path`` through."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write through a temporary sibling of ``path``, fsync it and rename it into place.

    On any error the temporary file is removed, so ``path`` is either complete or absent (an
    earlier version of it stays intact); a full disk becomes :class:`DiskFullError`.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"disk full while writing {path}: free some space and rerun the same command; "
                "finished work is kept and it resumes"
            ) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_open(Path(path), "wb") as f:
        f.write(data)


def dumps_json(data: Any) -> str:
    """The one JSON layout lsbench writes (indented, sorted keys, trailing newline)."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_open(Path(path), "w") as f:
        f.write(dumps_json(data))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_rng(seed: int, split: str, *keys: int) -> np.random.Generator:
    """The random stream of ``(seed, split, *keys)`` (e.g. a group's): what a sample draws never
    depends on which worker or rank makes it.  ``split`` may name any stream ("objects", ...)."""
    import numpy as np  # here, so the bottom layer (and the CLI's import path) stays without numpy

    return np.random.default_rng([seed, zlib.crc32(split.encode()), *keys])


def safe_name(text: str, *, limit: int | None = None, strip: str = "-") -> str:
    """``text`` as a file-name part: every run of characters outside ``[A-Za-z0-9._]`` becomes one
    ``-``; no leading or trailing ``strip`` characters; at most ``limit`` long; never empty."""
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", text).strip(strip)
    if limit is not None:
        slug = slug[:limit].strip(strip)
    return slug or "x"


class Registry(dict):
    """Named objects of one kind in registration order (methods, architectures, model families): a
    ``dict`` that refuses a taken or malformed name and says what is registered when a name is unknown."""

    def __init__(self, kind: str, reserved: str = "_:"):
        super().__init__()
        self.kind, self.reserved = kind, reserved

    def add(self, name: str, obj: Any) -> Any:
        if name in self or any(c in name for c in self.reserved):
            raise ValueError(f"{self.kind} name {name!r} is taken or contains one of {self.reserved!r}")
        self[name] = obj
        return obj

    def lookup(self, name: str) -> Any:
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {', '.join(self)}")
        return self[name]
