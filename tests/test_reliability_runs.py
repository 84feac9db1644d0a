"""Issue 14, classes 7 and 8: two runs on one folder, and no orphans after a SIGKILL.

Real processes and real signals: the ``lsbench`` console script of this venv, a lock held by another
process (``python -c``), SIGKILL, and the process table read from ``/proc`` (psutil is not a dependency).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import LSBENCH, TINY_CLI, assert_user_error, generate_mnist, generate_tiny, sha256, subprocess_env

from lsbench.dataset import validate
from lsbench.errors import FolderInUseError
from lsbench.generators.runner import RunOptions, merge_manifests, output_lock
from lsbench.lock import LOCK_NAME, is_lock_file, lock_folder, rank_lock_name

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc")

# A dataset that takes a few seconds to generate here (one process: ~4 s; measured 7 s for 2,000 with 2 workers),
# so a second command meets the first one still running.
RUNNING = dict(digits=3, size=112, train=800, test=50, shard_size=100)
RUNNING_CLI = ["--digits", "3", "--size", "112", "--train", "800", "--test", "50", "--shard-size", "100"]


# --------------------------------------------------------------------------- helpers


def _parents() -> dict[int, int]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            table[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return table


def descendants(pid: int) -> list[int]:
    table = _parents()
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [p for p, parent in table.items() if parent == pid]
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, waiting for a reaper that may never come in a container, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]!r}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def lock_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def reaches_eof(stream, timeout: float) -> bool:
    """Whether every writer of the pipe ``stream`` has closed it within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.1)
        if ready and not os.read(stream.fileno(), 1 << 16):
            return True
    return False


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(folder.glob("*.tar"))}


@contextmanager
def held_elsewhere(folder: Path, **options):
    """``folder`` locked by another process (``lock_folder(folder, **options)``); SIGKILLed on exit."""
    code = ("import json, sys, time; from lsbench.lock import lock_folder; "
            "lock = lock_folder(sys.argv[1], **json.loads(sys.argv[2])); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), json.dumps(options)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert proc.stdout.readline().strip() == "held", proc.stderr.read()
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def running_dataset(tmp_path_factory) -> Path:
    """The :data:`RUNNING` dataset generated alone, in this process."""
    out = tmp_path_factory.mktemp("reference") / "ds"
    assert generate_mnist(out, **RUNNING).complete
    return out


@pytest.fixture(scope="module")
def reference(running_dataset) -> dict[str, str]:
    return shard_hashes(running_dataset)


def generate_cmd(out: Path, *extra: str) -> list[str]:
    return [LSBENCH, "generate", "mnist", *RUNNING_CLI, "--out", str(out), *extra]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# --------------------------------------------------------------------------- class 7: two runs on one folder


@pytest.mark.slow
def test_second_generate_into_a_running_folder_stops_and_the_first_finishes_intact(tmp_path, reference):
    out = tmp_path / "ds"
    first = subprocess.Popen(generate_cmd(out, "-q"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=subprocess_env())
    holder = wait_for(lambda: (h := lock_holder(out / LOCK_NAME)) and h.get("pid") == first.pid and h,
                      30, "the first run's lock", first)
    assert holder["host"] == socket.gethostname() and "generate mnist" in holder["command"] and holder["started"]

    second = subprocess.run(generate_cmd(out, "-q"), capture_output=True, text=True, env=subprocess_env(),
                            timeout=120)
    assert first.poll() is None, "the first run ended before the second started: make RUNNING larger"
    assert second.returncode == 1, second.stderr
    lines = error_lines(second.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
    for needle in (str(out), "in use", f"pid {first.pid}", f"host {socket.gethostname()}", "since",
                   "generate mnist", "wait for it to finish", "--out"):
        assert needle in lines[0], (needle, lines[0])

    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert shard_hashes(out) == reference, "the first run's shards differ from a run alone"
    assert validate(out) == []
    assert not (out / LOCK_NAME).exists(), "the lock is released on exit"


@pytest.mark.slow
@needs_proc
def test_stale_lock_of_a_sigkilled_generate_is_taken_over(tmp_path, reference):
    out = tmp_path / "ds"
    first = subprocess.Popen(generate_cmd(out, "--workers", "2", "-q"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=subprocess_env())
    wait_for(lambda: (lock_holder(out / LOCK_NAME) or {}).get("pid") == first.pid, 30, "the first run's lock", first)
    first.kill()
    first.wait()
    assert lock_holder(out / LOCK_NAME)["pid"] == first.pid, "a killed run leaves its lock file (held by nobody)"

    rerun = subprocess.run(generate_cmd(out, "--workers", "2"), capture_output=True, text=True, env=subprocess_env(),
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "took over the lock" in rerun.stderr and f"pid {first.pid}" in rerun.stderr
    assert shard_hashes(out) == reference
    assert validate(out) == []
    assert not (out / LOCK_NAME).exists()


def test_every_writing_command_refuses_a_held_folder_with_one_line(tmp_path, cli):
    out = tmp_path / "ds"
    with held_elsewhere(out, what="dataset folder") as holder:
        result = cli("generate", "mnist", *TINY_CLI, "--out", out, "-q")
        assert_user_error(result, "in use", f"pid {holder.pid}", socket.gethostname())
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            generate_tiny(out)
        assert_user_error(cli("merge-manifests", out), "in use", f"pid {holder.pid}")
        with pytest.raises(FolderInUseError):
            merge_manifests(out)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME], "nothing was written while it was held"
    site = tmp_path / "site"
    with held_elsewhere(site, beside=True) as holder:
        result = cli("leaderboard", tmp_path / "no-results", "--out", site)
        assert_user_error(result, "in use", f"pid {holder.pid}")
        assert not site.exists()


def test_stale_lock_is_taken_over_and_release_removes_it(tmp_path):
    folder = tmp_path / "a" / "b"
    with held_elsewhere(folder) as holder:
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            lock_folder(folder)
    # the holder was SIGKILLed: its file stays, held by nobody
    assert lock_holder(folder / LOCK_NAME)["pid"] == holder.pid
    lock = lock_folder(folder)
    assert lock.previous["pid"] == holder.pid and lock_holder(folder / LOCK_NAME)["pid"] == os.getpid()
    lock.release()
    assert not (folder / LOCK_NAME).exists()

    fresh = tmp_path / "new" / "deeper"
    with lock_folder(fresh) as outer:
        assert lock_folder(fresh) is outer, "re-entrant within a process"
        outer.release()  # the inner hold
        assert (fresh / LOCK_NAME).exists()
    assert not (tmp_path / "new").exists(), "folders the lock created are removed again when left empty"


def test_ranks_share_a_folder_that_a_single_build_cannot_enter(tmp_path):
    out = tmp_path / "ds"
    rank0 = output_lock(out, RunOptions(rank=0, world_size=2))
    rank1 = output_lock(out, RunOptions(rank=1, world_size=2))  # ranks never wait for each other
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, rank_lock_name(0, 2), rank_lock_name(1, 2)])
    with pytest.raises(FolderInUseError, match=r"rank \d of 2"):
        output_lock(out)  # a single-process build or merge-manifests
    rank0.release()
    with held_elsewhere(out, name=rank_lock_name(0, 2), share=LOCK_NAME) as holder:  # the same rank twice
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            output_lock(out, RunOptions(rank=0, world_size=2))
    rank1.release()
    with output_lock(out):  # all ranks gone
        pass
    assert [p.name for p in out.iterdir()] == [rank_lock_name(0, 2)], "only the SIGKILLed holder's file, stale"


def test_lock_files_are_invisible_to_the_dataset(tiny_copy):
    (tiny_copy / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1}))  # a killed run's
    assert is_lock_file(LOCK_NAME) and is_lock_file(rank_lock_name(3, 8)) and is_lock_file(".site.lsbench.lock")
    assert not any(is_lock_file(p.name) for p in tiny_copy.iterdir() if p.name != LOCK_NAME)
    assert validate(tiny_copy) == []
    before = shard_hashes(tiny_copy)
    generate_tiny(tiny_copy)  # a rerun takes the stale lock over, reuses every shard
    assert shard_hashes(tiny_copy) == before and not (tiny_copy / LOCK_NAME).exists()


@pytest.mark.slow  # builds the model first (7 s here, timm's first import)
def test_train_refuses_a_run_folder_in_use(tmp_path, tiny_dataset):
    from lsbench.benchmark.configs import TrainConfig
    from lsbench.benchmark.train import train

    out = tmp_path / "run"
    cfg = TrainConfig(model="resnet_base", data=str(tiny_dataset), out=str(out), size="micro", img_size=32, epochs=1,
                      batch_size=10, workers=0)
    with held_elsewhere(out, what="run folder") as holder:
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            train(cfg)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]


def test_study_refuses_a_study_or_run_folder_in_use(tmp_path, tiny_dataset):
    from lsbench.study import launch, load_study, plan_study
    from lsbench.study.execute import execute, job_of

    plan = plan_study(load_study(None, data=(str(tiny_dataset),), out=str(tmp_path / "study"), archs=("resnet",),
                                 methods=("aug",), img_size=32, epochs=1, batch_size=10, max_steps_per_epoch=1,
                                 eval_batch_size=10, workers=0))
    with held_elsewhere(plan.out) as holder:
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            launch(plan)
    run = plan.runs[0]
    with held_elsewhere(run.folder) as holder:
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            execute(job_of(plan, run))
        assert [p.name for p in run.folder.iterdir()] == [LOCK_NAME], "nothing trained"


# --------------------------------------------------------------------------- class 8: no orphans


def _kill_and_check_no_orphans(proc: subprocess.Popen, at_least: int, what: str, within: float = 5.0) -> None:
    kids = wait_for(lambda: (d := descendants(proc.pid)) and len(d) >= at_least and d, 60, what, proc)
    time.sleep(0.3)
    kids = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        assert reaches_eof(proc.stderr, within), "a process still holds the killed command's stderr"
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and any(alive(p) for p in kids):
            time.sleep(0.05)
        left = [p for p in kids if alive(p)]
        assert not left, f"orphans left: {[Path(f'/proc/{p}/cmdline').read_bytes()[:120] for p in left]}"
    finally:
        for p in kids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


@needs_proc
def test_sigkill_of_generate_leaves_no_worker_or_resource_tracker(tmp_path):
    out = tmp_path / "ds"
    proc = subprocess.Popen(generate_cmd(out, "--workers", "2", "-q"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=subprocess_env())
    _kill_and_check_no_orphans(proc, 3, "two workers and the resource tracker")


@pytest.mark.slow
@needs_proc
def test_sigkill_of_a_study_leaves_no_run_process_or_dataloader_worker(tmp_path, running_dataset):
    """``study run --jobs 2``: two spawned run processes, each with a forked DataLoader worker, and the
    resource tracker.  Before the fix the DataLoader workers outlived their killed parents (torch's own
    watchdog ends the worker loop, then the exit hung) and kept stderr open."""
    cmd = [LSBENCH, "study", "run", "--data", str(running_dataset), "--out", str(tmp_path / "study"),
           "--archs", "resnet", "--methods", "aug", "--seeds", "0,1", "--size", "micro", "--img-size", "32",
           "--epochs", "50", "--batch-size", "10", "--eval-batch-size", "10", "--workers", "1", "--jobs", "2", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env())
    _kill_and_check_no_orphans(proc, 5, "two run processes, their DataLoader workers and the resource tracker")

