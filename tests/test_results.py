"""The results JSON (``lsbench.benchmark.results``): one validator for writer and reader, atomic writes,
the file name, and a writer that does not depend on the renderer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_leaderboard import make_result

from lsbench.benchmark import evaluate, results
from lsbench.errors import LsbenchError
from lsbench.util import dumps_json


def test_schema_version_is_the_schema_const():
    schema = json.loads(results.SCHEMA_PATH.read_text())
    assert results.SCHEMA_VERSION == schema["properties"]["schema_version"]["const"]
    assert evaluate.SCHEMA_VERSION is results.SCHEMA_VERSION


def test_write_result_bytes_name_and_round_trip(tmp_path):
    result = make_result("timm:resnet10t", 0.9, dataset="mnist-ls", split="test")
    path = results.write_result(result, tmp_path / "new" / "folder")
    assert path == tmp_path / "new" / "folder" / "timm-resnet10t__mnist-ls__test__cccccccc.json"
    assert path.read_bytes() == dumps_json(result).encode()
    assert path.read_text() == json.dumps(result, indent=2, sort_keys=True) + "\n"  # the layout of before
    assert results.read_result(path) == result
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left beside it


def test_result_filename_parts_are_safe():
    result = make_result("a/b c", dataset="../up", split="te st")
    result["model"]["checkpoint_sha256"] = None
    assert results.result_filename(result) == "a-b-c__..-up__te-st__none.json"


def test_failed_write_leaves_no_temporary_and_keeps_the_old_file(tmp_path):
    good = make_result("swin_dec")
    path = results.write_result(good, tmp_path)
    before = path.read_bytes()
    bad = make_result("swin_dec")
    bad["model"]["config"] = {"data": Path("/x")}  # schema-valid (any object), but not JSON-serialisable
    with pytest.raises(TypeError):
        results.write_result(bad, tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_invalid_result_is_never_written(tmp_path):
    bad = make_result()
    bad["dataset"]["manifest_sha256"] = "not-a-hash"
    with pytest.raises(results.ResultError, match=r"^result: not a valid lsbench result at dataset/manifest_sha256"):
        results.write_result(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_validator_for_writer_and_reader(tmp_path):
    """What the writer refuses the reader refuses, at the same field with the same problem."""
    assert evaluate.validate_result is results.validate_result
    assert results.result_validator() is results.result_validator()  # loaded once
    bad = make_result()
    bad["metrics"]["accuracy"] = "high"
    with pytest.raises(results.ResultError) as written:
        results.validate_result(bad)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(results.ResultError) as read:
        results.read_result(tmp_path / "bad.json")
    assert isinstance(read.value, LsbenchError) and "\n" not in str(read.value)
    problem = str(written.value).removeprefix("result: ")
    assert problem.startswith("not a valid lsbench result at metrics/accuracy: ")
    assert str(read.value) == f"{tmp_path / 'bad.json'}: {problem} (results come from `lsbench evaluate`)"


def test_load_results_sorted_with_relative_paths(tmp_path):
    results.write_result(make_result("vit_aug"), tmp_path / "b")
    results.write_result(make_result("swin_dec"), tmp_path / "a")
    (tmp_path / "a" / ".swin_dec.json.tmp-1").write_text("{")  # a crashed writer's temporary is no result
    loaded = results.load_results(tmp_path)
    assert [r.rel for r in loaded] == ["a/swin_dec__mnist-ls-3digit__test__cccccccc.json",
                                       "b/vit_aug__mnist-ls-3digit__test__cccccccc.json"]
    assert [r.data["model"]["name"] for r in loaded] == ["swin_dec", "vit_aug"]


def test_writing_results_never_imports_the_leaderboard():
    code = ("import sys, lsbench.benchmark.evaluate, lsbench.benchmark.results; "
            "print(sorted(m for m in sys.modules if m.startswith('lsbench.benchmark.leaderboard')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]"
