"""Bottom-layer helpers every layer shares: atomic files, file hashes, seeded streams, safe names.

Nothing here knows about datasets, models or results; :mod:`lsbench.shards`, the generators'
runner, checkpoints and results all write through :func:`atomic_open`, so "a file is either
complete under its final name or absent" holds the same way everywhere (and a full disk is one
:class:`~lsbench.errors.DiskFullError` line, whoever was writing).  The same holds one level up:
:func:`atomic_folder` builds a folder of several files (the leaderboard site) beside its final place
and swaps it in complete, and :func:`undo_new_folders` removes the folders a failed command created.

Why the errno table (:func:`os_error_line`): an outside probe pointed every writing command at a full
disk, a read-only mount, an ``--out`` that is a file and a path through a file; each one printed an
``OSError`` traceback.  What the user can fix (the disk, the permissions, the path) is one line naming
the path and what to do; any other ``OSError`` (``EIO``: a failing disk or a bug) still escapes as it is.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import re
import shutil
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import ConfigError, DiskFullError, FolderInUseError, LsbenchError, OutputError

if TYPE_CHECKING:
    import numpy as np

TMP_MARK = ".tmp-"  # temporaries are ".{name}.tmp-{pid}": hidden, and tied to the final name


def temporary_path(path: Path) -> Path:
    """The temporary sibling :func:`atomic_open` writes ``path`` through."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


# What went wrong and what to do, per errno the user can fix; any other errno is not dressed up.
_REASONS = {
    errno.ENOSPC: "the disk is full: free some space and rerun the same command",
    errno.EDQUOT: "the disk quota is exceeded: free some space (or raise the quota) and rerun the same command",
    errno.EFBIG: "the file is too large for this file system: write to another disk",
    errno.EROFS: "the file system is read-only: write to a folder on a writable disk",
    errno.EACCES: "permission denied: fix the permissions or choose another path",
    errno.EPERM: "operation not permitted: fix the permissions or choose another path",
    errno.EEXIST: "a file of that name is in the way (a folder is needed there): remove it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder, not a file: give a file path",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.ELOOP: "too many levels of symbolic links: check the links on the path",
}


def _file_on_the_way(path: Path) -> Path | None:
    """The outermost ancestor of ``path`` (or ``path`` itself) that exists and is not a folder."""
    for p in [*reversed(path.parents), path]:
        if p.exists() and not p.is_dir():
            return p
    return None


def os_error_reason(error: BaseException | None) -> str | None:
    """What went wrong and what to do, for an ``OSError`` the user can fix; ``None`` for any other."""
    return _REASONS.get(error.errno) if isinstance(error, OSError) else None


def os_error_line(error: OSError, path: Path | str | None = None) -> str | None:
    """One line for an ``OSError`` the user can fix — what, where (``path``, else the error's own file
    name) and what to do — or ``None`` for any other (an ``EIO``, say, should surface as it is)."""
    reason = os_error_reason(error)
    if reason is None:
        return None
    where = path if path is not None else error.filename
    if where is None:
        return reason
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_on_the_way(Path(where))
        if blocker is not None:
            what = f"{where}" if blocker == Path(where) else f"{where}: {blocker}"
            return f"{what} is a file, not a folder: remove it or choose another path"
    return f"{where}: {reason}"


def os_error(error: OSError, path: Path | str | None = None) -> OSError | DiskFullError | OutputError:
    """:func:`os_error_line` as an lsbench error (:class:`DiskFullError` for a full disk or quota), or
    ``error`` itself when it is not the user's to fix; ``raise os_error(e, path) from e``."""
    line = os_error_line(error, path)
    if line is None:
        return error
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "disk full" if error.errno == errno.ENOSPC else "disk quota exceeded"
        return DiskFullError(f"{what} while writing {path if path is not None else error.filename or 'a file'}: "
                             "free some space and rerun the same command; what was finished is kept")
    return OutputError(line)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write through a temporary sibling of ``path``, fsync it and rename it into place.

    On any error the temporary file is removed, so ``path`` is either complete or absent (an
    earlier version of it stays intact); an error the user can fix (a full disk, a read-only file
    system, a path through a file, ...) becomes one line naming ``path`` (:func:`os_error`).
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        # A writer may wrap the OSError: torch.save into a full disk raises RuntimeError("unexpected pos")
        # from its zip writer, the ENOSPC being that error's context.  Only an error about this file (no
        # file name: a write to it) is named after ``path``; one about another file (an input the body
        # reads) keeps its own name.
        ours = (None, str(tmp), str(path), os.fsencode(tmp), os.fsencode(path))
        cause = next((c for c in _chain(e) if os_error_reason(c) is not None and c.filename in ours), None)
        if cause is None or isinstance(e, (KeyboardInterrupt, SystemExit, LsbenchError)):
            raise
        raise os_error(cause, path) from e


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or during (``__cause__``/``__context__``), once each."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system has no such call (the caller then renames twice)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Build the folder ``path`` in a temporary sibling (yielded) and swap it into place when the body
    has finished: ``path`` is the old folder or the new one, complete, never a mix.

    On any error the temporary folder is removed and an earlier ``path`` is left as it was.  The swap
    is one ``renameat2(RENAME_EXCHANGE)`` where Linux and the file system have it, else two renames
    (the old folder aside, the new one in; the old one back if the second fails).  Temporary folders of
    dead processes (a SIGKILL mid-build) are removed first.  The caller keeps other writers out (a lock).
    """
    path = Path(path)
    prefix = f".{path.name}{TMP_MARK}"
    if path.parent.is_dir():
        for stale in path.parent.glob(f"{glob.escape(prefix)}*"):
            pid = stale.name[len(prefix):].split(".")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f"{prefix}{os.getpid()}")
    old = path.with_name(f"{prefix}{os.getpid()}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        if not path.exists() and not path.is_symlink():
            os.rename(tmp, path)
        elif not path.is_dir() or path.is_symlink():
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        elif _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        else:
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def writable_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) and create and remove a file in it: a read-only disk, a
    missing permission or a path through a file is then one line *before* long work, not after it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lsbench-probe{TMP_MARK}{os.getpid()}"
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as e:
        problem = os_error(e, folder)
        if problem is e:
            raise
        raise problem from e


@contextlib.contextmanager
def undo_new_folders(path: Path, *, contents: bool | Callable[[], bool] = False) -> Iterator[bool]:
    """For a body that creates the folder ``path`` (and its missing parents): if it raises, remove the
    folders that did not exist before it, so a failed command leaves no empty folder behind.

    A folder is removed only while empty, except ``path`` itself when ``contents`` is true (or returns
    true when called after the failure): then it goes with what the body wrote into it (a run folder
    without a checkpoint).  Yields whether ``path`` is new.  A :class:`~lsbench.errors.FolderInUseError`
    (another process holds ``path``, so it may have made it) removes nothing.
    """
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists() and not p.is_symlink()]  # innermost first
    try:
        yield bool(missing) and missing[0] == path
    except FolderInUseError:
        raise
    except BaseException:
        for i, folder in enumerate(missing):
            try:
                if i == 0 and folder == path and (contents() if callable(contents) else contents):
                    shutil.rmtree(folder)
                else:
                    folder.rmdir()
            except OSError:
                break
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


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range (it overflows to infinity)")
    return value


def _finite_int(text: str) -> int:
    value = int(text)
    try:
        float(value)
    except OverflowError:
        raise ValueError(f"the integer {text[:20]}… is out of range (larger than any float)") from None
    return value


def loads_json(text: str | bytes) -> Any:
    """Parse JSON a user handed lsbench (manifests, results, run records, study files) strictly: no
    ``NaN``/``Infinity`` constants (Python's ``json`` accepts them) and no number that overflows to
    infinity (``1e999``), so every number read is finite.  Any problem is a :class:`ValueError`
    (:class:`json.JSONDecodeError` for bad syntax) whose text the caller puts in its one-line error."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_finite_int)


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


def lazy_exports(package: str, names: dict[str, str]):
    """A package's ``__getattr__`` (PEP 562) that imports ``name`` from its submodule ``names[name]``
    (e.g. ``".pipeline"``) on first use and keeps it: importing a generator package for its config
    (the CLI's option declarations) does not import its pipeline and what that needs."""
    import importlib
    import sys

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
