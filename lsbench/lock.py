"""One run per output folder: an ``flock``'d lock file that says whose it is.

Why: two commands writing one folder undo each other's work (an outside probe: a second
``generate`` into the same ``--out`` deleted the first run's temporary shard and killed it).  Every
command that writes a folder — ``generate``, ``merge-manifests``, ``train``, a study's runs and the
study folder, ``leaderboard`` — holds its lock while it writes; a second one stops at once with one
line naming the holder (host, pid, command, since when).

How it works:

- The lock is a hidden file inside the folder, ``.lsbench.lock`` (:func:`is_lock_file` matches every
  lock name; none is a shard, manifest or temporary name, so validation and rebuilds leave it alone).
  It is opened (created if needed) and ``flock(LOCK_EX | LOCK_NB)``'d; the holder writes
  ``{"host", "pid", "command", "started"}`` into it for the message others see.
- The kernel drops a flock when its holder exits, however it exits (SIGKILL, OOM killer, a crash).
  A lock file left behind by a dead run is therefore held by nobody and the next run takes it
  over: stale by construction, with no pid guessing (:attr:`FolderLock.previous` keeps what the
  dead holder had written).
- On release the holder deletes the file *while still holding it*, then closes it.  A process that
  opened the file just before and gets the flock just after finds that the path no longer names the
  file it locked and starts again, so two processes never both believe they hold the lock.
- Re-entrant within a process: a study holds a run folder and ``train`` inside it takes it again.
- The ranks of one multi-node build (:mod:`lsbench.generators.runner`) write disjoint shards into one
  folder: each holds its own ``.lsbench-rank{r}of{w}.lock`` and *shares* ``.lsbench.lock``
  (``LOCK_SH``).  So ranks never wait for each other, while a single-process build or
  ``merge-manifests`` of the same folder (which take ``.lsbench.lock`` exclusively) cannot start
  while any rank runs, and no rank starts while one of them runs.
- A folder that is swapped whole (the leaderboard site is built aside and renamed into place) is
  locked by ``.{name}.lsbench.lock`` beside it (``beside=True``), which the swap does not move.

Limits: a flock is only as good as the file system's locking.  Local file systems are exact.  On NFS
(v4, or v3 with lockd) Linux turns a flock into a lock the server holds, so it works across hosts,
but a client cut off from the server past its lease can lose the lock without being told; mounts
with ``local_lock=flock|all`` or ``nolock``, and Lustre without ``-o flock``, keep locks per host, so
two hosts can both hold one.  A file system that refuses locks altogether (``ENOLCK``,
``EOPNOTSUPP``) is written unlocked (:attr:`FolderLock.held` is then ``False``).  The pid in the
message means something only on the host it names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import socket
import sys
import threading
import weakref
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import DiskFullError, FolderInUseError, LsbenchError

LOCK_NAME = ".lsbench.lock"
_LOCK_RE = re.compile(r"^\.(?:.+\.)?lsbench(?:-rank\d+of\d+)?\.lock$")
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}

_registry_guard = threading.Lock()
_held: weakref.WeakValueDictionary[tuple[int, str], FolderLock] = weakref.WeakValueDictionary()


def is_lock_file(name: str) -> bool:
    """Whether ``name`` is one of lsbench's lock files (tools that list a folder should skip them)."""
    return bool(_LOCK_RE.match(name))


def rank_lock_name(rank: int, world_size: int) -> str:
    """The lock of one rank of a multi-node build (see the module docstring)."""
    return f".lsbench-rank{rank}of{world_size}.lock"


def command_line() -> str:
    """This process's command line as a user would type it (shortened), for lock messages."""
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a process that has not said who it is"
    who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("started"):
        who += f" since {holder['started']}"
    if holder.get("command"):
        who += f": `{holder['command']}`"
    return who


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


class _Flock:
    """One flock'd file: acquire (with the unlink race closed), write the holder, release."""

    def __init__(self, path: Path, exclusive: bool):
        self.path, self.exclusive, self.fd = path, exclusive, -1
        self.previous: dict[str, Any] | None = None

    def acquire(self, folder: Path, what: str, hint: str) -> bool:
        """True once held; False when the file system has no locks; raises when another process holds it."""
        for _ in range(100):  # each retry means a holder released between our open and our flock
            fd = self._open()
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise FolderInUseError(
                    f"{folder} is in use by another lsbench run ({describe_holder(holder or _rank_holder(folder))}); "
                    f"wait for it to finish or {hint} (lock file {self.path.name} in the {what})"
                ) from None
            except OSError as e:
                os.close(fd)
                if e.errno in _UNSUPPORTED:
                    with contextlib.suppress(OSError):
                        if not self.path.stat().st_size:
                            self.path.unlink()
                    return False
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                self._claim()
                return True
            os.close(fd)
        raise LsbenchError(f"could not take the lock {self.path}: it keeps changing; is another run starting?")

    def _open(self) -> int:
        flags = os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            return os.open(self.path, os.O_RDWR | flags, 0o644)
        except PermissionError:  # left by another user's run: lockable, not writable
            return os.open(self.path, os.O_RDONLY | flags)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full while creating {self.path}: free some space and rerun") from e
            raise OSError(e.errno, e.strerror, str(self.path.parent)) from e  # the folder is what the user named

    def _claim(self) -> None:
        """Remember what a dead holder left; an exclusive holder then writes itself in (best effort:
        the lock holds without it), a shared one clears the file."""
        self.previous = _read_holder(self.fd)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": command_line(),
                  "started": datetime.now().astimezone().isoformat(timespec="seconds")}
        try:
            os.ftruncate(self.fd, 0)
            if self.exclusive:
                os.pwrite(self.fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if not self.exclusive:  # the last sharer removes the file
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:  # still shared, already removed, or replaced by a newer holder's file: leave it
            pass
        finally:
            os.close(self.fd)
            self.fd = -1


def _rank_holder(folder: Path) -> dict[str, Any] | None:
    """Who holds a rank lock in ``folder`` (``.lsbench.lock`` is only shared while ranks run)."""
    for path in sorted(folder.glob(".lsbench-rank*.lock")):
        try:
            holder = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(holder, dict):
            rank = re.findall(r"\d+", path.name)
            return {**holder, "pid": f"{holder.get('pid', '?')} (rank {rank[0]} of {rank[1]})"}
    return None


class FolderLock:
    """A held lock on a folder (see the module docstring); :meth:`release` it, or use it as a context
    manager.  ``created``: the folders it created (removed again on release if still empty);
    ``previous``: what a dead holder had written, when its stale lock was taken over."""

    def __init__(self, folder: Path, files: list[_Flock], created: list[Path], held: bool):
        self.folder, self.created, self.held = folder, created, held
        self._files, self._depth, self._pid = files, 1, os.getpid()
        self.previous = next((f.previous for f in files if f.previous), None)

    def release(self) -> None:
        with _registry_guard:
            self._depth -= 1
            if self._depth > 0:
                return
        self._close()

    def _close(self) -> None:
        if self._pid != os.getpid():  # a forked child never releases its parent's lock
            return
        for f in reversed(self._files):
            f.release()
        self._files = []
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                break

    def __del__(self) -> None:  # a lock whose owner forgot it (e.g. an error before its ``finally``)
        with contextlib.suppress(Exception):
            self._close()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _makedirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the ones created, outermost first."""
    missing = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def lock_folder(folder: Path | str, *, what: str = "folder", hint: str = "choose another output folder",
                name: str = LOCK_NAME, share: str | None = None, beside: bool = False) -> FolderLock:
    """Hold ``folder`` (created if missing) for this process: :class:`FolderInUseError` (one line
    naming the holder and saying what to do) when another process holds it.

    ``name``: the lock file; ``share``: a second lock file held shared (a rank's build shares the
    folder's main lock); ``beside``: the lock lives next to the folder, as ``.{folder name}.lsbench.lock``,
    for a folder that is replaced whole.  ``what``/``hint`` word the message ("dataset folder",
    "choose another --out").  Taken again by the same process it is the same lock (re-entrant).
    """
    folder = Path(folder)
    place = folder.parent if beside else folder
    if beside:
        name = f".{folder.name}.lsbench.lock"
    key = (os.getpid(), str(Path(os.path.abspath(place)) / name))
    with _registry_guard:
        lock = _held.get(key)
        if lock is not None and lock._files:
            lock._depth += 1
            return lock
    created = _makedirs(place)
    files = ([_Flock(place / share, exclusive=False)] if share else []) + [_Flock(place / name, exclusive=True)]
    taken: list[_Flock] = []
    held = True
    try:
        for f in files:
            held = f.acquire(folder, what, hint) and held
            taken.append(f)
    except BaseException:
        for f in reversed(taken):
            f.release()
        for p in reversed(created):
            try:
                p.rmdir()
            except OSError:
                break
        raise
    lock = FolderLock(folder, taken, created, held)
    with _registry_guard:
        _held[key] = lock
    return lock
