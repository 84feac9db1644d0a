"""Child processes that end with their parent.

Why: after a SIGKILL of ``generate --workers 2`` (a scheduler's kill, the OOM killer) the pool's
workers lived on as orphans (PPID 1) and kept the caller's stderr open, so a pipe reading the
command's output never reached its end; multiprocessing's resource tracker, which exits only when
every process holding its pipe is gone, stayed with them.

:func:`die_with_parent` is the initializer of every process pool lsbench starts (the generators'
shard workers, a study's run processes with ``--jobs N``) and the first call of a one-off
``python -c`` child (Blender's device probe):

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` — the kernel kills the child when the *thread* that
  created it exits.  lsbench's pools are created, fed and shut down by one thread, which outlives
  them (``ProcessPoolExecutor`` with the ``spawn`` start method starts workers from ``submit()``, in
  the caller's thread).  The setting is not inherited by a child, so torch's DataLoader workers take
  it too (:func:`dataloader_worker_init`): torch's own watchdog (a poll of the parent every 5 s) ends
  a worker's loop, but the worker can then hang at exit, and it kept a killed study's stderr open.
- Elsewhere (no ``prctl``), and for a parent that died before the child got that far: a daemon
  thread polls ``os.getppid()`` and ends the process once it is no longer the parent it started with.
- The resource tracker of the ``spawn`` start method then sees its pipe close and exits by itself.

A worker killed this way may leave a temporary shard; the next run of the command deletes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.5


def _pdeathsig() -> bool:
    """Ask Linux to SIGKILL this process when its parent thread exits; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os._exit(1)


def die_with_parent(parent: int | None = None) -> None:
    """End this process when ``parent`` (the pid that started it; default: the current parent) is gone.

    Use it as a pool's ``initializer`` with ``initargs=(os.getpid(),)`` from the process that creates the pool."""
    parent = os.getppid() if parent is None else parent
    if _pdeathsig():
        if os.getppid() != parent:  # it died before prctl took effect
            os._exit(1)
        return
    threading.Thread(target=_watch, args=(parent,), name="lsbench-parent-watch", daemon=True).start()



def dataloader_worker_init(parent: int, worker_id: int) -> None:
    """A torch ``DataLoader``'s ``worker_init_fn`` (``functools.partial(dataloader_worker_init, os.getpid())``):
    :func:`die_with_parent`.  torch's own watchdog ends a worker's loop once its parent is gone, but the worker
    can then hang at exit on a full queue pipe (measured: such orphans of a killed study kept its stderr open)."""
    die_with_parent(parent)
