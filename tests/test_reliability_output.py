"""Issue 14, classes 1, 2 and 6: output errors, sites rebuilt atomically, one-line messages.

Real file systems, no mocks: a small tmpfs mounted here (full, or remounted read-only), ``chattr +i`` for a
folder even root may not write (EPERM), a file where a folder should be.  A test skips, saying why, where
the machine does not allow a mount (not root, no CAP_SYS_ADMIN).  The one-line claims about the real
executable are checked on real subprocesses; the command matrix runs in-process (``CliRunner``: the same
app, the same stderr) to keep the file fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LSBENCH, assert_user_error, generate_mnist, subprocess_env

from lsbench.benchmark import leaderboard as lb
from lsbench.benchmark.configs import EvaluateConfig
from lsbench.benchmark.evaluate import evaluate
from lsbench.dec_models import checkpoint
from lsbench.dec_models.registry import create_model

# --------------------------------------------------------------------------- real file systems


def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "512k"):
    """A tmpfs of ``size`` mounted at ``path`` (skips the test when mounting is not allowed here)."""
    path.mkdir(parents=True, exist_ok=True)
    done = _sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); needs root")
    try:
        yield path
    finally:
        _sh("umount", "-l", str(path))


def fill(mount: Path) -> Path:
    """Fill ``mount`` to the last byte; returns the filler file."""
    filler = mount / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    with contextlib.suppress(OSError), open(filler, "ab") as f:  # the last partial block
        while True:
            f.write(b"\0")
            f.flush()
    assert shutil.disk_usage(mount).free == 0
    return filler


def read_only(mount: Path) -> None:
    done = _sh("mount", "-o", "remount,ro", str(mount))
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only ({done.stderr.strip()})")


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder``: file → its bytes, folder → None."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


# --------------------------------------------------------------------------- data made once


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A 32-px dataset, a checkpoint, a result of it (evaluated here) and a site built from it."""
    root = tmp_path_factory.mktemp("made")
    data = root / "ds"
    generate_mnist(data, digits=1, size=32, scale_range=(0.6, 1.1), train=16, test=20, variants=1, shard_size=20)
    torch.manual_seed(0)
    ckpt = checkpoint.save(root / "model.pt", create_model("resnet_base", 10, size="micro", img_size=32))
    _, result = evaluate(EvaluateConfig("resnet_base", data, checkpoint=ckpt, out=root / "results", batch_size=20,
                                        workers=0))
    lb.build(root / "results", root / "site")
    return {"data": data, "ckpt": ckpt, "result": result, "results": root / "results", "site": root / "site"}


def commands(made: dict[str, Path], target: Path) -> dict[str, list[str]]:
    """Every command that writes, pointed at ``target`` (each at its own name inside it)."""
    data, ckpt = made["data"], made["ckpt"]
    small = ["--img-size", "32", "--batch-size", "16", "--max-steps-per-epoch", "1", "--workers", "0"]
    return {
        "generate mnist": ["generate", "mnist", "--out", target / "gen", "--digits", "1", "--size", "32",
                           "--scale-range", "0.6", "1.1", "--train", "16", "--test", "10", "--shard-size", "10", "-q"],
        "generate imagenet": ["generate", "imagenet", "--demo", "--offline", "--out", target / "inet", "--train", "2",
                              "--test", "7", "-q"],
        "generate gso": ["generate", "gso", "--out", target / "gso", "--train", "5", "--test", "5", "-q"],
        "preview": ["preview", data, "--out", target / "sheet.png"],
        "preview (new folder)": ["preview", data, "--out", target / "sub" / "sheet.png"],
        "leaderboard": ["leaderboard", made["results"], "--out", target / "site"],
        "evaluate": ["evaluate", "--model", "resnet_base", "--checkpoint", ckpt, "--data", data, "--out",
                     target / "results", "--workers", "0", "-q"],
        "train": ["train", "--model", "resnet_base", "--data", data, "--out", target / "run", "--size", "micro",
                  "--epochs", "1", *small, "-q"],
        "study run": ["study", "run", "--data", data, "--out", target / "study", "--methods", "aug", "--size", "micro",
                      "--epochs", "1", "--finetune-epochs", "1", "--eval-batch-size", "16", *small, "-q"],
    }


def earlier_outputs(made: dict[str, Path], target: Path) -> None:
    """What earlier successful runs left in ``target``: a sheet, a result of the same name, a site."""
    shutil.copy(made["data"] / "manifest.json", target / "unrelated.json")
    (target / "sheet.png").write_bytes(b"an earlier sheet")
    (target / "results").mkdir()
    shutil.copy(made["result"], target / "results" / made["result"].name)
    shutil.copytree(made["site"], target / "site")


# --------------------------------------------------------------------------- class 1: output errors


def test_every_writing_command_into_a_read_only_disk_is_one_line(cli, made, tmp_path):
    with tmpfs(tmp_path / "ro") as mount:
        earlier_outputs(made, mount)
        before = tree(mount)
        read_only(mount)
        for name, args in commands(made, mount).items():
            line = assert_user_error(cli(*args), "read-only")
            assert str(mount) in line, (name, line)
        merge = cli("merge-manifests", mount)  # writes into the dataset folder itself
        assert_user_error(merge, "read-only")
        assert tree(mount) == before


def test_every_writing_command_into_a_full_disk_is_one_line_and_leaves_nothing(cli, made, tmp_path):
    with tmpfs(tmp_path / "full", size="1m") as mount:
        earlier_outputs(made, mount)
        fill(mount)
        before = tree(mount)
        for name, args in commands(made, mount).items():
            line = assert_user_error(cli(*args), "disk")
            assert "full" in line and "(None)" not in line, (name, line)
            assert tree(mount) == before, name  # no temporary, no empty folder, earlier outputs byte-identical


def test_train_that_fails_at_its_first_checkpoint_leaves_no_run_folder(cli, made, tmp_path):
    """Room for config.json and the log, not for last.pt: torch.save's zip writer raises RuntimeError over the
    ENOSPC; still one disk-full line naming last.pt, and the run folder it made is gone."""
    with tmpfs(tmp_path / "small", size="256k") as mount:
        args = commands(made, mount)["train"]
        line = assert_user_error(cli(*args), "disk full", "last.pt")
        assert str(mount / "run") in line
        assert tree(mount) == {}


@pytest.mark.parametrize("shape", ["out is a file", "parent is a file", "out is a folder"])
def test_a_path_of_the_wrong_shape_is_one_line(cli, made, tmp_path, shape):
    target = tmp_path / "t"
    target.mkdir()
    if shape == "parent is a file":
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f"
    todo = commands(made, target)
    for name, args in todo.items():
        out = Path(args[args.index("--out") + 1])
        if (out.suffix == ".png") == (shape == "out is a file"):
            continue  # a file is what preview wants, a folder what the others want
        if shape == "out is a file":
            out.write_text("x")
        elif shape == "out is a folder":
            out.mkdir(parents=True, exist_ok=True)
        line = assert_user_error(cli(*args))
        if shape == "out is a folder":
            assert f"{out}: it is a folder, not a file" in line, (name, line)
        else:
            blocker = tmp_path / "f" if shape == "parent is a file" else out
            assert str(blocker) in line and ("is a file" in line or "not a folder" in line), (name, line)
    if shape == "parent is a file":
        assert (tmp_path / "f").read_text() == "x"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "t"]


def test_a_folder_even_root_may_not_write_is_one_line(cli, made, tmp_path):
    """``chattr +i``: EPERM for root too (root ignores chmod, so this is the permission case here)."""
    folder = tmp_path / "immutable"
    folder.mkdir()
    done = _sh("chattr", "+i", str(folder))
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not available here ({done.stderr.strip()})")
    try:
        for name, args in commands(made, folder).items():
            line = assert_user_error(cli(*args), "not permitted")
            assert str(folder) in line, (name, line)
        assert list(folder.iterdir()) == []
    finally:
        _sh("chattr", "-i", str(folder))


def test_the_real_executable_says_one_line_on_a_read_only_disk(made, tmp_path):
    with tmpfs(tmp_path / "ro") as mount:
        read_only(mount)
        for args in (["preview", made["data"], "--out", mount / "s.png"],
                     ["leaderboard", made["results"], "--out", mount / "site"],
                     ["generate", "mnist", "--out", mount / "ds", "--train", "10", "--test", "10", "-q"]):
            done = subprocess.run([LSBENCH, *map(str, args)], capture_output=True, text=True, env=subprocess_env(),
                                  timeout=120)
            assert done.returncode == 1, done.stderr
            assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
            assert "read-only" in done.stderr and str(mount) in done.stderr


def test_unexpected_os_errors_still_escape(tmp_path):
    """Only what the user can fix is dressed as one line: EIO (a failing disk, a bug) is not."""
    import errno

    from lsbench.util import atomic_open

    with pytest.raises(OSError) as info, atomic_open(tmp_path / "x.bin") as f:
        f.write(b"x")
        raise OSError(errno.EIO, "Input/output error")
    assert info.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- class 2: atomic rebuilds


def _changed_result(folder: Path) -> None:
    """The result with another accuracy, so a rebuild changes the site."""
    (path,) = folder.glob("*.json")
    data = json.loads(path.read_text())
    data["metrics"]["accuracy"] = 0.987654
    path.write_text(json.dumps(data))


def test_a_rebuild_into_a_full_disk_keeps_the_old_site_whole(cli, made, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(made["results"], results)
    with tmpfs(tmp_path / "m", size="1m") as mount:
        site = mount / "site"
        assert cli("leaderboard", results, "--out", site).exit_code == 0
        old = tree(site)
        assert all(v for k, v in old.items() if k.endswith(".png"))
        _changed_result(results)
        fill(mount)
        line = assert_user_error(cli("leaderboard", results, "--out", site), "disk is full", str(site))
        assert "the site there is unchanged" in line and "(None)" not in line
        assert tree(site) == old  # every page and plot byte-identical: no index.html pointing at missing files
        assert sorted(p.name for p in mount.iterdir()) == ["filler", "site"]  # no build folder, no lock left
        (mount / "filler").unlink()
        assert cli("leaderboard", results, "--out", site).exit_code == 0  # room again: the new site, swapped in
        assert "98.77" in (site / "mnist-ls-1digit-test" / "leaderboard.md").read_text()


def test_a_fresh_build_into_a_full_disk_leaves_no_site_and_no_empty_png(cli, made, tmp_path):
    with tmpfs(tmp_path / "m", size="256k") as mount:
        fill(mount)
        line = assert_user_error(cli("leaderboard", made["results"], "--out", mount / "site"), "disk is full")
        assert "nothing was written" in line and "(None)" not in line
        assert sorted(p.name for p in mount.iterdir()) == ["filler"]


def test_a_rebuild_replaces_the_site_whole_and_never_a_folder_with_other_files(made, tmp_path, monkeypatch):
    site = tmp_path / "site"
    shutil.copytree(made["site"], site)
    (site / "mnist-ls-1digit-test" / "plots" / "stale.png").write_bytes(b"old")
    lb.build(made["results"], site)
    assert tree(site) == tree(made["site"])  # exactly the new build: nothing of the old one mixed in
    mixed = tmp_path / "mixed"
    shutil.copytree(made["site"], mixed)
    (mixed / "notes.txt").write_text("mine")
    before = tree(mixed)
    with pytest.raises(lb.LeaderboardError, match="not part of a leaderboard site"):
        lb.build(made["results"], mixed)
    assert tree(mixed) == before
    monkeypatch.chdir(site)  # `--out .`: the swap would pull the folder from under the shell
    with pytest.raises(lb.LeaderboardError, match="the current folder"):
        lb.build(made["results"], ".")
    assert tree(site) == tree(made["site"]) and sorted(p.name for p in tmp_path.iterdir()) == ["mixed", "site"]


def test_a_build_folder_left_by_a_killed_build_is_removed(made, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".site.tmp-{dead.pid}"
    (stale / "half").mkdir(parents=True)
    lb.build(made["results"], tmp_path / "site")
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_preview_replaces_a_sheet_whole(cli, made, tmp_path):
    with tmpfs(tmp_path / "m", size="256k") as mount:
        (mount / "sheet.png").write_bytes(b"earlier")
        fill(mount)
        assert_user_error(cli("preview", made["data"], "--out", mount / "sheet.png"), "disk full")
        assert (mount / "sheet.png").read_bytes() == b"earlier"
        assert sorted(p.name for p in mount.iterdir()) == ["filler", "sheet.png"]
    assert_user_error(cli("preview", made["data"], "--out", tmp_path / "sheet.pnx"), "suffix")


# --------------------------------------------------------------------------- class 6: one line, always


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([LSBENCH, *map(str, args)], capture_output=True, text=True, env=subprocess_env(),
                          timeout=120, **kw)


@pytest.mark.parametrize(("args", "needle"), [
    (["generate", "mnist", "--digits", "three"], "invalid value for '--digits'"),
    (["generate", "mnist", "--no-such-option"], "no such option: --no-such-option"),
    (["leaderboard"], "missing argument 'results'"),
    (["no-such-command"], "no such command 'no-such-command'"),
    (["preview", "x", "-n", "many"], "invalid value for '-n'"),
])
def test_usage_errors_are_one_line(args, needle):
    done = _run(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert needle in done.stderr and "--help" in done.stderr and "╭" not in done.stderr


def _evil_checkpoint(path: Path, proof: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {proof}",))

    torch.save({"format": "lsbench-checkpoint", "state_dict": Evil()}, path)
    return path


def test_a_malicious_checkpoint_is_one_line_and_never_runs(cli, made, tmp_path):
    proof = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", proof)
    args = ["evaluate", "--model", "resnet_base", "--checkpoint", evil, "--data", made["data"], "--out",
            tmp_path / "r", "--workers", "0", "-q"]
    line = assert_user_error(cli(*args), "evil.pt", "weights_only", "posix.system")
    assert "Weights only load failed" not in line  # torch's dozen lines are not pasted in
    assert not proof.exists() and not (tmp_path / "r").exists()
    pickled = tmp_path / "protocol4.pt"  # a plain pickle: torch warns before refusing; the warning is not shown
    import pickle

    pickled.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    assert_user_error(cli(*args[:4], pickled, *args[5:]), "protocol4.pt")
    assert_user_error(cli("train", "--model", "resnet_base", "--pretrained", evil, "--data", made["data"],
                          "--out", tmp_path / "run", "--size", "micro", "-q"), "pretrained checkpoint", "weights_only")
    assert not proof.exists()


@pytest.mark.slow
def test_a_malicious_checkpoint_from_the_real_executable_and_verbose(made, tmp_path):
    proof = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", proof)
    args = ["evaluate", "--model", "resnet_base", "--checkpoint", evil, "--data", made["data"], "--workers", "0",
            "--out", tmp_path / "r", "-q"]
    done = _run(*args)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    verbose = _run("--verbose", *args)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "Weights only load failed" in verbose.stderr
    assert verbose.stderr.rstrip("\n").splitlines()[-1] == done.stderr.rstrip("\n")
    assert not proof.exists()


DRIVER = """
import sys, warnings
from lsbench.cli import app as _complete
from lsbench.cli.app import app, user_errors, console
from lsbench.errors import ConfigError

@app.command("probe-warns")
@user_errors
def probe(fail: bool = False) -> None:
    warnings.warn("a library's warning\\n  spanning two lines", UserWarning)
    if fail:
        raise ConfigError("first line of a library's text\\nsecond line\\n\\tthird")
    console.print("done")

sys.argv[0] = "lsbench"
from lsbench.cli.app import main
main()
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_warnings_before_an_error_and_multi_line_messages(tmp_path, verbose):
    """A command that warns and then fails (as torch does before refusing a file) ends in its one error line
    alone; when it succeeds the warning is one line; ``--verbose`` shows the warning and the traceback."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    flags = ["--verbose"] if verbose else []

    def run(*args):
        return subprocess.run([sys.executable, str(driver), *flags, "probe-warns", *args], capture_output=True,
                              text=True, env=subprocess_env(), timeout=120)

    failed, ok = run("--fail"), run()
    assert failed.returncode == 1 and ok.returncode == 0, (failed.stderr, ok.stderr)
    last = failed.stderr.rstrip("\n").splitlines()[-1]
    assert last == "error: first line of a library's text second line third"
    assert ok.stdout == "done\n"
    if verbose:
        assert "Traceback" in failed.stderr and "a library's warning" in failed.stderr
    else:
        assert failed.stderr == last + "\n"
        assert ok.stderr == "warning: UserWarning: a library's warning spanning two lines\n"
