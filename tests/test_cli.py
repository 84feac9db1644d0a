"""The ``lsbench`` command line: exit codes, one-line errors, validate/info/preview/merge-manifests."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import (
    LSBENCH,
    TINY_CLI,
    assert_user_error,
    fail_nth_shard,
    generate_tiny,
    read_json,
    shard_files,
    shard_records,
    subprocess_env,
    temporaries,
    write_fake_mnist,
    write_idx,
)
from PIL import Image

import lsbench
from lsbench import dataset

# --------------------------------------------------------------------------- basics


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lsbench {lsbench.__version__}"


def test_version_of_the_installed_executable():
    done = subprocess.run([LSBENCH, "--version"], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"lsbench {lsbench.__version__}"


def test_help_lists_the_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("generate", "validate", "info", "preview", "merge-manifests"):
        assert command in result.stdout


def test_generate_mnist(cli, tmp_path, tiny_dataset):
    out = tmp_path / "ds"
    result = cli("generate", "mnist", "--out", out, *TINY_CLI)
    assert result.exit_code == 0, result.output
    assert "7 shards written, 0 reused (complete)" in result.stdout
    assert "embedded" in result.stderr  # says that the embedded digits were used
    assert shard_files(out) == shard_files(tiny_dataset)
    again = cli("generate", "mnist", "--out", out, *TINY_CLI)
    assert again.exit_code == 0 and "0 shards written, 7 reused" in again.stdout


def test_generate_quiet_prints_nothing(cli, tmp_path):
    result = cli("generate", "mnist", "--out", tmp_path / "ds", *TINY_CLI, "-q")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_generate_with_mnist_dir(cli, tmp_path):
    folder = write_fake_mnist(tmp_path / "MNIST" / "raw", train_labels=[7], test_labels=[4])
    out = tmp_path / "ds"
    result = cli("generate", "mnist", "--out", out, "--mnist-dir", tmp_path, *TINY_CLI, "-q")
    assert result.exit_code == 0, result.output
    assert {s["cls"] for s in dataset.read_split(out, "train")} == {777}
    assert {s["cls"] for s in dataset.read_split(out, "test")} == {444}
    assert folder.is_dir()


# --------------------------------------------------------------------------- user mistakes: one line, exit 1


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--scale-range", "2.0", "1.0"], ["--scale-range", "min < max"]),
        (["--scale-range", "0.4", "3.0"], ["do not fit", "lower the max scale or raise --size"]),
        (["--train", "0"], ["--train must be at least 1"]),
        (["--test", "0"], ["--test must be at least 1"]),
        (["--test", "52"], ["not a multiple of the group size 5", "use e.g. 50"]),
        (["--digits", "5"], ["--digits must be 1–4"]),
        (["--layout", "tiles"], ["--size must be 210"]),
        (["--layout", "grid"], ["--layout"]),
        (["--shard-size", "3"], ["smaller than one group"]),
        (["--workers", "0"], ["--workers"]),
    ],
)
def test_generate_bad_options(cli, tmp_path, args, needles):
    out = tmp_path / "ds"
    result = cli("generate", "mnist", "--out", out, *TINY_CLI, *args, "-q")
    assert_user_error(result, *needles)
    assert not out.exists() or not any(out.iterdir())


def test_generate_refuses_a_different_dataset_then_overwrites(cli, tmp_path):
    out = tmp_path / "ds"
    assert cli("generate", "mnist", "--out", out, *TINY_CLI, "-q").exit_code == 0
    before = shard_files(out)
    result = cli("generate", "mnist", "--out", out, *TINY_CLI, "--seed", "5", "-q")
    assert_user_error(result, "different dataset", "seed", "--overwrite")
    assert shard_files(out) == before
    result = cli("generate", "mnist", "--out", out, *TINY_CLI, "--seed", "5", "--overwrite")
    assert result.exit_code == 0 and "7 shards written, 0 reused" in result.stdout
    assert read_json(out / "manifest.json")["seed"] == 5
    assert cli("validate", out).exit_code == 0


def test_generate_refuses_a_non_dataset_folder(cli, tmp_path):
    (tmp_path / "thesis.tex").write_text("x")
    result = cli("generate", "mnist", "--out", tmp_path, *TINY_CLI, "-q")
    assert_user_error(result, "not empty", "--out")
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        ("missing-folder", ["does not exist"]),
        ("missing-file", ["t10k-labels-idx1-ubyte", "not found"]),
        ("bad-magic", ["magic number"]),
        ("truncated-gz", ["gzip", "re-download"]),
        ("count-mismatch", ["labels", "do not match"]),
    ],
)
def test_generate_bad_mnist_dir(cli, tmp_path, damage, needles):
    import numpy as np

    folder = write_fake_mnist(tmp_path / "m")
    if damage == "missing-folder":
        folder = tmp_path / "nope"
    elif damage == "missing-file":
        (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    elif damage == "bad-magic":
        write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((30, 28, 28), np.uint8), magic=0x801)
    elif damage == "truncated-gz":
        write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((30, 28, 28), np.uint8), truncate_gz=30)
    elif damage == "count-mismatch":
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    result = cli("generate", "mnist", "--out", tmp_path / "ds", "--mnist-dir", folder, *TINY_CLI, "-q")
    assert_user_error(result, *needles)


def test_generate_disk_full(cli, tmp_path, tiny_dataset, monkeypatch):
    out = tmp_path / "ds"
    with monkeypatch.context() as mp:
        fail_nth_shard(mp, 3)
        result = cli("generate", "mnist", "--out", out, *TINY_CLI, "-q")
    assert_user_error(result, "disk full", "free some space and rerun")
    assert temporaries(out) == []
    assert [r["name"] for r in shard_records(out)["train"]] == ["train-000000.tar", "train-000001.tar"]
    result = cli("generate", "mnist", "--out", out, *TINY_CLI)
    assert result.exit_code == 0 and "5 shards written, 2 reused" in result.stdout
    assert shard_files(out) == shard_files(tiny_dataset)


def test_unexpected_os_errors_are_not_dressed_as_user_errors(cli, tmp_path, monkeypatch):
    """A failure that is not the user's (EIO) escapes as an exception instead of a fake 'error:' line."""
    with monkeypatch.context() as mp:
        fail_nth_shard(mp, 1, errno.EIO)
        result = cli("generate", "mnist", "--out", tmp_path / "ds", *TINY_CLI, "-q")
    assert isinstance(result.exception, OSError) and result.exception.errno == errno.EIO


def test_user_error_from_the_real_executable_is_one_line():
    done = subprocess.run(
        [LSBENCH, "generate", "mnist", "--out", "/nonexistent/x", "--digits", "5"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == "error: --digits must be 1–4, got 5"


def test_bad_usage_is_exit_2_without_traceback(cli):
    result = cli("generate", "mnist", "--digits", "three")
    assert result.exit_code == 2 and "Traceback" not in result.output


# --------------------------------------------------------------------------- validate


def test_validate_good(cli, tiny_dataset):
    result = cli("validate", tiny_dataset)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{tiny_dataset}: valid"
    assert cli("validate", tiny_dataset, "--no-images", "-q").stdout == ""


def test_validate_lists_problems(cli, tiny_copy):
    data = bytearray((tiny_copy / "test-000001.tar").read_bytes())
    data[100] ^= 1
    (tiny_copy / "test-000001.tar").write_bytes(bytes(data))
    (tiny_copy / "train-000000.tar").unlink()
    result = cli("validate", tiny_copy)
    line = assert_user_error(result, "problem(s) found")
    problems = [p for p in result.stderr.splitlines() if p.startswith("problem: ")]
    assert any("test-000001.tar" in p and "sha256" in p for p in problems), result.stderr
    assert any("train-000000.tar" in p and "missing" in p for p in problems), result.stderr
    assert line == f"error: {tiny_copy}: {len(problems)} problem(s) found"


@pytest.mark.parametrize("case", ["no-folder", "no-manifest", "broken-manifest"])
def test_validate_not_a_dataset(cli, tiny_copy, tmp_path, case):
    target = tiny_copy
    if case == "no-folder":
        target = tmp_path / "nowhere"
    elif case == "no-manifest":
        (tiny_copy / "manifest.json").unlink()
    else:
        (tiny_copy / "manifest.json").write_text("{not json")
    result = cli("validate", target)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "problem: " in result.stderr


# --------------------------------------------------------------------------- info


def test_info_table(cli, tiny_dataset):
    result = cli("info", tiny_dataset)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "mnist-ls-3digit" in out and "complete" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 6}
    assert set(rows) >= {"train", "test"}
    train = [c.strip() for c in rows["train"].split("│")[1:-1]]
    test = [c.strip() for c in rows["test"].split("│")[1:-1]]
    assert train[:5] == ["train", "20", "20", "1", "2/2"]
    assert test[:5] == ["test", "50", "10", "5", "5/5"]
    assert "manifest sha256" in out


def test_info_json(cli, tiny_dataset):
    result = cli("info", tiny_dataset, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["splits"]["train"]["samples"] == 20
    assert summary["splits"]["test"]["samples"] == 50
    assert summary["splits"]["test"]["shards"] == "5/5"
    assert summary["config"]["digits"] == 3 and summary["complete"] is True
    assert summary == json.loads(json.dumps(dataset.summarize(tiny_dataset)))


def test_info_json_survives_a_narrow_terminal(tiny_dataset):
    """`lsbench info --json | jq` must parse whatever the terminal width (long hashes, paths)."""
    env = {**subprocess_env(), "COLUMNS": "40"}
    done = subprocess.run(
        [LSBENCH, "info", str(tiny_dataset), "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["splits"]["test"]["samples"] == 50


def test_info_not_a_dataset(cli, tmp_path):
    assert_user_error(cli("info", tmp_path), "no manifest.json", "lsbench generate")
    assert_user_error(cli("info", tmp_path / "nope", "--json"), "does not exist")


# --------------------------------------------------------------------------- preview


def test_preview_writes_a_png(cli, tiny_dataset, tmp_path):
    out = tmp_path / "sheet.png"
    result = cli("preview", tiny_dataset, "--out", out, "-n", "6")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.width > 0 and im.height > 0
        assert im.width >= 3 * 160  # a grid of 6 tiles, 160 px wide each: 3 columns


def test_preview_train_split_into_new_folder(cli, tiny_dataset, tmp_path):
    out = tmp_path / "sub" / "dir" / "train.png"
    result = cli("preview", tiny_dataset, "--out", out, "--split", "train", "-n", "1")
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.size[0] > 0


@pytest.mark.parametrize(
    ("args", "needles"),
    [(["--split", "val"], ["no split 'val'"]), (["-n", "0"], ["-n must be at least 1"])],
)
def test_preview_bad_input(cli, tiny_dataset, tmp_path, args, needles):
    result = cli("preview", tiny_dataset, "--out", tmp_path / "s.png", *args)
    assert_user_error(result, *needles)
    assert not (tmp_path / "s.png").exists()


def test_preview_not_a_dataset(cli, tmp_path):
    assert_user_error(cli("preview", tmp_path, "--out", tmp_path / "s.png"), "not an lsbench dataset")


# --------------------------------------------------------------------------- merge-manifests


def _generate_as_rank(out: Path, rank: int, world: int, monkeypatch) -> None:
    """What torchrun/SLURM does: the same command with RANK/WORLD_SIZE set (generate() reads them)."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    try:
        generate_tiny(out)
    finally:
        monkeypatch.delenv("RANK")
        monkeypatch.delenv("WORLD_SIZE")


def test_merge_manifests(cli, tmp_path, tiny_dataset, monkeypatch):
    out = tmp_path / "ds"
    _generate_as_rank(out, 0, 2, monkeypatch)
    _generate_as_rank(out, 1, 2, monkeypatch)
    assert not (out / "manifest.json").exists()
    parts = sorted(p.name for p in out.glob("manifest.rank*.json"))
    assert parts == ["manifest.rank00000-of-00002.json", "manifest.rank00001-of-00002.json"]
    result = cli("merge-manifests", out)
    assert result.exit_code == 0, result.output
    assert "manifest.json" in result.stdout
    assert shard_records(out) == shard_records(tiny_dataset)
    assert shard_files(out) == shard_files(tiny_dataset)
    assert not list(out.glob("manifest.rank*"))
    result = cli("validate", out)
    assert result.exit_code == 0, result.output


def test_merge_manifests_with_a_rank_missing(cli, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    _generate_as_rank(out, 1, 3, monkeypatch)
    result = cli("merge-manifests", out)
    assert_user_error(result, "ranks [0, 2] of 3 are missing", "run those ranks first")
    assert not (out / "manifest.json").exists()


def test_merge_manifests_nothing_to_merge(cli, tmp_path, tiny_dataset):
    assert_user_error(cli("merge-manifests", tmp_path), "no partial manifests")
    assert_user_error(cli("merge-manifests", tiny_dataset), "no partial manifests")


def test_rank_run_via_the_cli_reports_partial_completion(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("generate", "mnist", "--out", tmp_path / "ds", *TINY_CLI)
    assert result.exit_code == 0, result.output
    assert "merge-manifests" in result.stdout
    assert sorted(p.name for p in (tmp_path / "ds").glob("*.tar")) == [
        "test-000000.tar",
        "test-000002.tar",
        "test-000004.tar",
        "train-000000.tar",
    ]


def test_bad_rank_environment_is_a_user_error(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert_user_error(cli("generate", "mnist", "--out", tmp_path / "ds", *TINY_CLI, "-q"), "RANK=2")


# --------------------------------------------------------------------------- no tracebacks anywhere


def test_no_traceback_for_any_user_mistake(cli, tmp_path):
    (tmp_path / "f").write_text("x")
    cases = [
        ["validate", tmp_path / "nope"],
        ["info", tmp_path / "f"],
        ["preview", tmp_path / "nope"],
        ["merge-manifests", tmp_path / "nope"],
        ["generate", "mnist", "--out", tmp_path / "f", *TINY_CLI, "-q"],
        ["generate", "mnist", "--out", tmp_path / "o", "--mnist-dir", tmp_path / "f", *TINY_CLI, "-q"],
    ]
    for args in cases:
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output, result.exception)
        assert "Traceback" not in result.output, args
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")
