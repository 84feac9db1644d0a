"""Issue 14, classes 3–5: malformed manifests and shard records, corrupt samples in shards whose sha256
matches, and numbers that are not numbers — each refused with one line (known answers, real CLI runs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
from conftest import LSBENCH, TINY_CLI, assert_user_error, generate_tiny, read_json, subprocess_env

from lsbench import dataset, shards
from lsbench.errors import ConfigError, CorruptSampleError, DatasetError, ManifestError
from lsbench.options import check_ranges
from lsbench.util import loads_json

NAN, INF = float("nan"), float("inf")


def _edit_manifest(directory: Path, change, name: str = "manifest.json") -> None:
    path = directory / name
    manifest = read_json(path)
    change(manifest)
    path.write_text(json.dumps(manifest))


def _write_raw_shard(path: Path, samples: list[dict[str, bytes | str]]) -> shards.ShardRecord:
    """A shard of raw member bytes, as the writer lays it out (no encoding, so anything can go in)."""
    buf = bytearray()
    for s in samples:
        for field in sorted(k for k in s if k != "__key__"):
            data = s[field]
            buf += shards.tar_header(f"{s['__key__']}.{field}", len(data)) + data + b"\0" * (-len(data) % 512)
    buf += b"\0" * 1024
    buf += b"\0" * (-len(buf) % (20 * 512))
    path.write_bytes(bytes(buf))
    return shards.ShardRecord(path.name, len(samples), hashlib.sha256(buf).hexdigest(), len(buf))


def _relist(directory: Path, rec: shards.ShardRecord) -> None:
    """Rewrite the manifest over a changed shard: its record gets the shard's real sha256, size and count."""
    def change(m):
        for entry in m["splits"].values():
            for r in entry["shards"]:
                if r["name"] == rec.name:
                    r.update(sha256=rec.sha256, bytes=rec.bytes, num_samples=rec.num_samples)
    _edit_manifest(directory, change)


DAMAGE = {
    "json": lambda s: s.update(json=b'{"group": 0, "vari'),
    "png": lambda s: s.update(png=s["png"][: len(s["png"]) // 2]),
    "noimage": lambda s: s.pop("png"),
    "cls": lambda s: s.update(cls=b"seven"),
    "meta": lambda s: s.update(json=b"[1, 2]"),
}


def _damage(directory: Path, shard: str, kinds: dict[int, str]) -> list[str]:
    """Damage samples (index → kind) of ``shard`` and relist it; returns the damaged keys in order."""
    samples = list(shards.iter_tar(directory / shard))
    for i, kind in kinds.items():
        DAMAGE[kind](samples[i])
    _relist(directory, _write_raw_shard(directory / shard, samples))
    return [samples[i]["__key__"] for i in sorted(kinds)]


@pytest.fixture(scope="module")
def model_ckpt(tmp_path_factory) -> Path:
    from lsbench.dec_models import checkpoint
    from lsbench.dec_models.registry import create_model

    return checkpoint.save(tmp_path_factory.mktemp("ckpt") / "m.pt",
                           create_model("resnet_base", 1000, size="micro", img_size=32))


# --------------------------------------------------------------------------- 3. manifests and records


def test_every_manifest_the_generators_write_follows_the_schema(tiny_dataset, tmp_path, monkeypatch):
    from lsbench.generators.runner import merge_manifests

    dataset.check_manifest(read_json(tiny_dataset / "manifest.json"), "tiny")
    out = tmp_path / "ranks"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        generate_tiny(out)
    parts = sorted(out.glob("manifest.rank*-of-*.json"))
    assert len(parts) == 2
    for part in parts:
        dataset.check_manifest(read_json(part), part)
        assert {"rank", "world_size"} <= set(read_json(part))
    merge_manifests(out)
    dataset.check_manifest(read_json(out / "manifest.json"), "merged")
    # The schema ships inside the package (read through importlib.resources, named in package-data).
    assert json.loads(dataset.SCHEMA_PATH.read_text())["title"] == "lsbench dataset manifest"
    assert '"manifest.schema.json"' in (Path(__file__).parents[1] / "pyproject.toml").read_text()


@pytest.mark.slow
def test_imagenet_demo_manifest_follows_the_schema(tmp_path):
    from conftest import generate_imagenet

    out = tmp_path / "in"
    generate_imagenet(out, demo=True, detector="annotation", segmenter="grabcut", inpainter="opencv", train=2,
                      test=7, shard_size=7)
    manifest = read_json(out / "manifest.json")
    assert {"yield", "source"} <= set(manifest)  # the generator's own top-level fields are allowed
    dataset.check_manifest(manifest, out)


BAD_MANIFESTS = [
    # (change, JSON path named, words of the problem)
    (lambda m: m["splits"]["test"].pop("num_samples"), "$.splits.test", "'num_samples' is a required property"),
    (lambda m: m.pop("config"), "$", "'config' is a required property"),
    (lambda m: m["splits"]["test"].update(num_samples="50"), "$.splits.test.num_samples", "not of type 'integer'"),
    (lambda m: m["splits"]["test"].update(num_samples=50.0), "$.splits.test.num_samples", "not of type 'integer'"),
    (lambda m: m["config"].update(num_classes="ten"), "$.config.num_classes", "not of type 'integer'"),
    (lambda m: m.update(splits=[]), "$.splits", "not of type 'object'"),
    (lambda m: m["splits"]["test"]["shards"].__setitem__(0, "test-000000.tar"), "$.splits.test.shards[0]",
     "not of type 'object'"),
    (lambda m: m["splits"]["test"]["shards"][0].update(sha256="xyz"), "$.splits.test.shards[0].sha256",
     "not a sha256"),
    (lambda m: m["splits"]["train"]["shards"][0].update(name="../x.tar"), "$.splits.train.shards[0].name",
     "not a shard file name"),
    (lambda m: m["splits"]["train"]["shards"][0].update(name="/etc/passwd"), "$.splits.train.shards[0].name",
     "not a shard file name"),
    (lambda m: m["splits"]["train"]["shards"][0].update(name="sub/train-000000.tar"),
     "$.splits.train.shards[0].name", "not a shard file name"),
    (lambda m: m["splits"].update({"../evil": m["splits"]["test"]}), "$.splits", "not a split name"),
    (lambda m: m["splits"]["test"]["shards"][0].update(extra=1), "$.splits.test.shards[0]", "'extra' was unexpected"),
    (lambda m: m.update(rank=0), "$", "'world_size' is a dependency of 'rank'"),
]


@pytest.mark.parametrize(("change", "where", "words"), BAD_MANIFESTS)
def test_a_malformed_manifest_is_one_line_naming_file_and_field(tiny_copy, change, where, words):
    _edit_manifest(tiny_copy, change)
    with pytest.raises(ManifestError) as e:
        dataset.open_dataset(tiny_copy)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{tiny_copy / 'manifest.json'}: not a valid lsbench manifest at {where}: "), message
    assert words in message and "--overwrite" in message
    assert dataset.validate(tiny_copy) == [message]  # validate reports it too, as its one problem


def test_commands_on_a_malformed_manifest_say_one_line(cli, tiny_copy, tmp_path, model_ckpt):
    _edit_manifest(tiny_copy, lambda m: m["splits"]["test"].pop("num_groups"))
    needles = ("manifest.json", "$.splits.test", "'num_groups' is a required property")
    assert_user_error(cli("info", tiny_copy), *needles)
    proc = subprocess.run([LSBENCH, "info", str(tiny_copy)], capture_output=True, text=True, env=subprocess_env(),
                          timeout=120)  # a real process: its whole stderr is the one line
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert all(n in proc.stderr for n in needles)
    result = cli("validate", tiny_copy)  # its problem lines, then the count
    assert_user_error(result, "1 problem(s) found")
    assert all(n in result.stderr.splitlines()[0] for n in needles) and result.stderr.startswith("problem: ")
    assert_user_error(cli("preview", tiny_copy, "--out", tmp_path / "p.png"), *needles)
    assert_user_error(cli("evaluate", "-m", "resnet_base", "-c", model_ckpt, "--data", tiny_copy, "-q"), *needles)
    # A rerun of generate: it says what is wrong and that --overwrite replaces it; nothing is touched.
    before = {p.name: p.read_bytes() for p in tiny_copy.iterdir()}
    line = assert_user_error(cli("generate", "mnist", "--out", tiny_copy, *TINY_CLI, "-q"), *needles)
    assert "is unreadable" in line and "pass --overwrite" in line
    assert {p.name: p.read_bytes() for p in tiny_copy.iterdir()} == before
    # merge-manifests reads part manifests through the same schema.
    (tiny_copy / "manifest.json").rename(tiny_copy / "manifest.rank00000-of-00001.json")
    assert_user_error(cli("merge-manifests", tiny_copy), "manifest.rank00000-of-00001.json", "$.splits.test")


def test_a_shard_symlinked_out_of_the_folder_is_refused(cli, tiny_copy, tmp_path, model_ckpt):
    """A listed name may still lead outside through a symlink (its bytes even match): never read it."""
    outside = tmp_path / "elsewhere.tar"
    shutil.copy(tiny_copy / "test-000000.tar", outside)
    (tiny_copy / "test-000000.tar").unlink()
    (tiny_copy / "test-000000.tar").symlink_to(outside)
    problems = dataset.validate(tiny_copy)
    assert any("test-000000.tar is a symlink to" in p and "outside the dataset folder" in p for p in problems)
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        dataset.open_dataset(tiny_copy).shard_paths("test")
    assert_user_error(cli("evaluate", "-m", "resnet_base", "-c", model_ckpt, "--data", tiny_copy, "-q"),
                      "test-000000.tar", "outside the dataset folder")
    # A rerun of generate does not reuse it: it writes the shard itself in its place, the target untouched.
    target = outside.read_bytes()
    result = cli("generate", "mnist", "--out", tiny_copy, *TINY_CLI, "-q")
    assert result.exit_code == 0, result.output
    assert not (tiny_copy / "test-000000.tar").is_symlink() and outside.read_bytes() == target
    assert (tiny_copy / "test-000000.tar").read_bytes() == target


def test_a_symlink_inside_the_folder_is_still_read(tiny_copy):
    (tiny_copy / "keep").mkdir()
    shutil.move(tiny_copy / "train-000000.tar", tiny_copy / "keep" / "t.tar")
    (tiny_copy / "train-000000.tar").symlink_to(tiny_copy / "keep" / "t.tar")
    assert len(list(dataset.read_split(tiny_copy, "train"))) == 20


# --------------------------------------------------------------------------- 4. corrupt samples, matching hash


@pytest.mark.parametrize(("kind", "problem"), [
    ("json", "json metadata is not valid JSON"),
    ("meta", "json metadata is not an object"),
    ("png", "png does not decode (OSError: image file is truncated)"),
    ("noimage", "needs exactly one image field"),
    ("cls", "cls is not an integer"),
])
def test_a_corrupt_sample_is_one_line_naming_shard_and_key(tiny_copy, kind, problem):
    (key,) = _damage(tiny_copy, "test-000001.tar", {3: kind})
    assert dataset.open_dataset(tiny_copy).verify("test") == []  # the hash matches: only decoding finds it
    with pytest.raises(CorruptSampleError) as e:
        list(dataset.read_split(tiny_copy, "test"))
    assert str(e.value).startswith(f"{tiny_copy / 'test-000001.tar'}: sample {key}: {problem}")
    assert str(e.value).endswith("; delete that shard and rerun its generate command to rebuild it")
    assert "\n" not in str(e.value)


def test_a_truncated_tar_with_a_matching_hash_is_one_line(cli, tiny_copy, model_ckpt):
    path = tiny_copy / "test-000002.tar"
    data = path.read_bytes()
    path.write_bytes(data[:700])  # a header and part of a member: tarfile fails mid-archive
    _relist(tiny_copy, shards.ShardRecord(path.name, 10, hashlib.sha256(data[:700]).hexdigest(), 700))
    with pytest.raises(CorruptSampleError, match="test-000002.tar is not a readable tar"):
        list(dataset.read_split(tiny_copy, "test"))
    assert_user_error(cli("evaluate", "-m", "resnet_base", "-c", model_ckpt, "--data", tiny_copy, "-q",
                          "--workers", "1"), "test-000002.tar is not a readable tar")


@pytest.mark.slow
def test_evaluate_and_train_stop_with_one_line_and_train_leaves_no_run(cli, tiny_copy, tmp_path, model_ckpt):
    keys = _damage(tiny_copy, "test-000001.tar", {1: "json", 3: "png"})
    line = assert_user_error(cli("evaluate", "-m", "resnet_base", "-c", model_ckpt, "--data", tiny_copy, "-q",
                                 "--workers", "1", "-o", tmp_path / "res"),
                             "test-000001.tar: sample", "--skip-corrupt")
    assert keys[0] in line or keys[1] in line
    assert not (tmp_path / "res").exists()
    run = tmp_path / "run"
    line = assert_user_error(cli("train", "-m", "resnet_base", "--data", tiny_copy, "-o", run, "--size", "micro",
                                 "--img-size", "32", "--epochs", "1", "--train-split", "test", "--val-split", "train",
                                 "--workers", "1", "-q"), "test-000001.tar: sample")
    assert "--skip-corrupt" not in line  # train has no such option: the line says only how to rebuild
    assert not run.exists()


@pytest.mark.slow
def test_skip_corrupt_skips_samples_and_names_each_even_quiet(tiny_copy, tmp_path, model_ckpt):
    """A real process, two DataLoader workers, -q: one warning line per corrupt shard and sample."""
    keys = _damage(tiny_copy, "test-000001.tar", {1: "json", 3: "png", 6: "noimage"})
    (tiny_copy / "test-000003.tar").write_bytes(b"damaged")  # a corrupt shard (its hash no longer matches)
    proc = subprocess.run([LSBENCH, "evaluate", "-m", "resnet_base", "-c", str(model_ckpt), "--data", str(tiny_copy),
                           "-o", str(tmp_path / "res"), "--skip-corrupt", "--workers", "2", "-q"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0] == "warning: skipping 1 corrupt shard(s): test-000003.tar", lines
    samples = sorted(line for line in lines[1:] if line.startswith("warning: skipping "))
    assert samples == sorted(f"warning: skipping {tiny_copy / 'test-000001.tar'}: sample {k}: {p}" for k, p in zip(
        keys, ("json metadata is not valid JSON", "png does not decode (OSError: image file is truncated)",
               "needs exactly one image field (png or jpg), has none"), strict=True)), lines
    assert "Traceback" not in proc.stderr and len(lines) == 4
    (path,) = (tmp_path / "res").glob("*.json")
    result = read_json(path)
    assert result["dataset"]["num_samples"] == 50 - 10 - 3
    assert result["dataset"]["skipped"] == ["test-000003.tar", *(f"test-000001.tar:{k}" for k in keys)]


# --------------------------------------------------------------------------- 5. numbers that are not numbers


@pytest.mark.parametrize(("text", "words"), [
    ('{"a": NaN}', "NaN is not a number"), ("[Infinity]", "Infinity is not a number"),
    ("[-Infinity]", "-Infinity is not a number"), ("[1e999]", "1e999 is out of range"),
    ("[-1e400]", "-1e400 is out of range"), ("[1" + "0" * 400 + "]", "out of range"),
])
def test_json_readers_refuse_non_finite_numbers(text, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        loads_json(text)
    assert loads_json("[1.5, -2, 1e308, 0.0]") == [1.5, -2, 1e308, 0.0]


def _float_fields(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if "float" in str(hints[f.name])]


def _configs():
    from lsbench.benchmark.configs import EvaluateConfig, TrainConfig
    from lsbench.generators.gso.config import GsoConfig
    from lsbench.generators.imagenet.config import ImagenetConfig
    from lsbench.generators.mnist.config import MnistConfig
    from lsbench.generators.runner import RunOptions
    from lsbench.study.config import StudyConfig

    return [MnistConfig(), GsoConfig(), ImagenetConfig(), RunOptions(), StudyConfig(),
            TrainConfig(model="resnet_base", data="d", out="o"), EvaluateConfig(model="resnet_base", data=Path("d"))]


def test_every_float_option_of_every_config_refuses_nan_and_infinity():
    """The check is on the config objects the CLI is derived from: every float field, range or not."""
    from lsbench.options import flag

    checked = 0
    for cfg in _configs():
        for name in _float_fields(type(cfg)):
            default = getattr(cfg, name)
            for bad in (NAN, INF, -INF):
                value = tuple(bad for _ in default) if isinstance(default, tuple) else bad
                obj = dataclasses.replace(cfg)
                object.__setattr__(obj, name, value)  # past __post_init__ checks: check_ranges alone must refuse
                with pytest.raises(ConfigError, match=f"^{flag(obj, name)} must be a finite number, got "):
                    check_ranges(obj)
                checked += 1
    assert checked >= 3 * 20  # lr, weight_decay, scale ranges, strengths, thresholds, ...


@pytest.mark.parametrize("args", [
    ("train", "-m", "resnet_base", "--data", "{ds}", "-o", "{tmp}/run", "--lr", "nan"),
    ("train", "-m", "resnet_base", "--data", "{ds}", "-o", "{tmp}/run", "--weight-decay", "1e999"),
    ("evaluate", "-m", "resnet_base", "--data", "{ds}", "--eque-strength", "inf"),
    ("generate", "mnist", "--out", "{tmp}/g", "--scale-range", "0.4", "1e999"),
    ("study", "plan", "--data", "{ds}", "--lr", "-inf", "--no-estimate"),
    ("study", "plan", "--data", "{ds}", "--train", "label_smoothing=nan", "--no-estimate"),
])
def test_cli_options_refuse_non_finite_numbers(cli, tiny_dataset, tmp_path, args):
    result = cli(*(a.format(ds=tiny_dataset, tmp=tmp_path) for a in args))
    assert_user_error(result, "must be a finite number")
    assert not (tmp_path / "run").exists() and not (tmp_path / "g").exists()


@pytest.mark.parametrize(("body", "needles"), [
    ('data = ["d"]\nlr = nan\n', ("study.toml:2", "--lr must be a finite number, got nan")),
    ('data = ["d"]\nfinetune_lr = 1e999\n', ("study.toml:2", "--finetune-lr must be a finite number, got inf")),
    ('data = ["d"]\n[train]\nweight_decay = -inf\n', ("study.toml:3", "[train] weight_decay must be a finite")),
])
def test_study_files_refuse_non_finite_numbers(tmp_path, body, needles):
    from lsbench.study.config import load_study

    (tmp_path / "study.toml").write_text(body)
    with pytest.raises(ConfigError) as e:
        load_study(tmp_path / "study.toml")
    for needle in needles:
        assert needle in str(e.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_result_and_run_files_with_non_finite_numbers_are_one_line(cli, tmp_path, literal):
    from lsbench.study import plan

    results = tmp_path / "results"
    results.mkdir()
    (results / "r.json").write_text('{"schema_version": 1, "metrics": {"accuracy": ' + literal + "}}")
    line = assert_user_error(cli("leaderboard", results, "--out", tmp_path / "site"), "r.json", "not valid JSON")
    assert ("out of range" if literal == "1e999" else "is not a number") in line
    (tmp_path / "run.json").write_text('{"train": {"lr": ' + literal + "}}")
    with pytest.raises(ConfigError, match="run.json cannot be read"):
        plan._read_json(tmp_path / "run.json")


def test_a_manifest_with_a_non_finite_number_is_one_line(tiny_copy):
    path = tiny_copy / "manifest.json"
    path.write_text(path.read_text().replace('"seed": 0', '"seed": 1e999', 1))
    with pytest.raises(ManifestError, match=r"manifest.json is not valid JSON \(1e999 is out of range"):
        dataset.open_dataset(tiny_copy)


def test_finite_values_still_pass(tiny_dataset):
    """Known answers the other way: finite floats everywhere are untouched."""
    for cfg in _configs():
        check_ranges(cfg)
    assert math.isfinite(loads_json(json.dumps({"x": 0.25}))["x"])
    assert os.path.basename(dataset.open_dataset(tiny_dataset).shard_paths("test")[0]) == "test-000000.tar"
