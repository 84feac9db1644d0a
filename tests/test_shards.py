"""The dataset contract (:mod:`lsbench.shards` bytes, :mod:`lsbench.dataset` folder): writer, planner,
readers, validation."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import read_json, sha256, temporaries
from PIL import Image

from lsbench import dataset, shards, util
from lsbench.errors import DatasetError


def _png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _samples(n: int = 4, group_size: int = 1):
    # Fields deliberately not in sorted order: the writer must sort them.
    return [
        {
            "png": _png(10 * i),
            "json": {"group": i // group_size, "variant": i % group_size, "reference": i % group_size == 0, "z": 1},
            "__key__": f"{i:05d}",
            "cls": i % 3,
        }
        for i in range(n)
    ]


# --------------------------------------------------------------------------- write_shard


def test_write_shard_is_deterministic(tmp_path):
    a = shards.write_shard(tmp_path / "a-000000.tar", _samples())
    b = shards.write_shard(tmp_path / "b-000000.tar", _samples())
    assert (tmp_path / "a-000000.tar").read_bytes() == (tmp_path / "b-000000.tar").read_bytes()
    assert a.sha256 == b.sha256 and a.bytes == b.bytes
    assert a.num_samples == 4


def test_write_shard_record_matches_file(tmp_path):
    path = tmp_path / "x-000000.tar"
    rec = shards.write_shard(path, _samples(5))
    assert rec.name == path.name
    assert rec.sha256 == sha256(path) == util.sha256_file(path)
    assert rec.bytes == path.stat().st_size
    assert rec.num_samples == 5


def test_write_shard_members_sorted_with_fixed_metadata(tmp_path):
    path = tmp_path / "x-000000.tar"
    shards.write_shard(path, _samples(3))
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == [f"{i:05d}.{f}" for i in range(3) for f in ("cls", "json", "png")]
    assert all(m.mtime == 0 for m in members)
    assert all(m.mode == 0o444 and m.uname == "lsbench" and m.gname == "lsbench" for m in members)
    assert all(m.isfile() for m in members)


def test_write_shard_encodes_fields(tmp_path):
    path = tmp_path / "x-000000.tar"
    shards.write_shard(path, _samples(2))
    raw = list(shards.iter_tar(path))
    assert [r["__key__"] for r in raw] == ["00000", "00001"]
    assert raw[1]["cls"] == b"1"
    meta = json.loads(raw[1]["json"])
    assert meta == {"group": 1, "variant": 0, "reference": True, "z": 1}
    assert raw[1]["json"] == json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def test_write_shard_leaves_no_temporary_after_success(tmp_path):
    shards.write_shard(tmp_path / "x-000000.tar", _samples())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000000.tar"]


@pytest.mark.parametrize("exc", [RuntimeError("generator broke"), KeyboardInterrupt()])
def test_write_shard_removes_temporary_when_samples_raise(tmp_path, exc):
    def samples():
        yield from _samples(3)
        raise exc

    with pytest.raises(type(exc)):
        shards.write_shard(tmp_path / "x-000000.tar", samples())
    assert list(tmp_path.iterdir()) == []


def test_write_shard_removes_temporary_on_bad_sample(tmp_path):
    bad = _samples(2) + [{"__key__": "a.b", "png": _png(1), "json": {}}]
    with pytest.raises(DatasetError):
        shards.write_shard(tmp_path / "x-000000.tar", bad)
    assert list(tmp_path.iterdir()) == []


def test_write_shard_does_not_replace_existing_shard_on_error(tmp_path):
    path = tmp_path / "x-000000.tar"
    shards.write_shard(path, _samples(2))
    before = path.read_bytes()

    def broken():
        yield from _samples(4)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        shards.write_shard(path, broken())
    assert path.read_bytes() == before
    assert temporaries(tmp_path) == []


# --------------------------------------------------------------------------- encode_sample


@pytest.mark.parametrize("key", ["a.b", "0001.png", "a/b", "", None, 7])
def test_encode_sample_rejects_bad_keys(key):
    with pytest.raises(DatasetError, match="key"):
        shards.encode_sample({"__key__": key, "png": b"x"})


def test_encode_sample_rejects_unencoded_fields():
    with pytest.raises(DatasetError, match="must be encoded bytes"):
        shards.encode_sample({"__key__": "k", "png": np.zeros((2, 2), dtype=np.uint8)})


def test_encode_sample_encodes_cls_and_json():
    out = shards.encode_sample({"__key__": "k", "cls": np.int64(42), "json": {"b": 1, "a": [1, 2]}, "png": b"p"})
    assert out == {"__key__": "k", "cls": b"42", "json": b'{"a":[1,2],"b":1}', "png": b"p"}


# --------------------------------------------------------------------------- plan_shards


@pytest.mark.parametrize(
    ("num", "shard_size", "group", "expected"),
    [
        (50, 10, 5, [10] * 5),
        (50, 12, 5, [10] * 5),  # rounded down to whole groups
        (45, 20, 5, [20, 20, 5]),
        (20, 10, 1, [10, 10]),
        (7, 3, 1, [3, 3, 1]),
        (15, 5, 5, [5, 5, 5]),
        (10, 1000, 5, [10]),
    ],
)
def test_plan_shards_keeps_groups_whole(num, shard_size, group, expected):
    specs = shards.plan_shards("test", num, shard_size, group)
    assert [s.count for s in specs] == expected
    assert [s.index for s in specs] == list(range(len(specs)))
    assert all(s.count % group == 0 and s.start % group == 0 for s in specs)
    assert [s.start for s in specs] == [sum(expected[:i]) for i in range(len(expected))]
    assert sum(s.count for s in specs) == num
    assert specs[0].name == "test-000000.tar"


def test_plan_shards_refuses_shard_smaller_than_group():
    with pytest.raises(DatasetError, match="smaller than one group"):
        shards.plan_shards("test", 50, 4, 5)


def test_plan_shards_refuses_partial_groups():
    with pytest.raises(DatasetError, match="whole number of groups"):
        shards.plan_shards("test", 52, 10, 5)


@pytest.mark.parametrize("split", ["a-b", "a.b", "", "a b"])
def test_plan_shards_refuses_bad_split_names(split):
    with pytest.raises(DatasetError, match="split name"):
        shards.plan_shards(split, 10, 5)


# --------------------------------------------------------------------------- reading


def _reference(directory, split):
    return [(s["__key__"], s.get("cls"), s["meta"], s["image"]) for s in dataset.read_split(directory, split)]


@pytest.mark.parametrize("split", ["train", "test"])
def test_plain_webdataset_reads_what_read_split_reads(tiny_dataset, split):
    urls = [str(p) for p in dataset.open_dataset(tiny_dataset).shard_paths(split)]
    plain = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    ref = _reference(tiny_dataset, split)
    assert [s["__key__"] for s in plain] == [r[0] for r in ref]
    assert [int(s["cls"]) for s in plain] == [r[1] for r in ref]
    assert [json.loads(s["json"]) for s in plain] == [r[2] for r in ref]
    for s, r in zip(plain, ref, strict=True):
        assert np.array_equal(shards.decode_image(s["png"]), r[3])


def test_lsbench_webdataset_numpy(tiny_dataset):
    ref = _reference(tiny_dataset, "test")
    got = list(dataset.webdataset(tiny_dataset, "test", decode="numpy"))
    assert [(s["__key__"], s["cls"], s["meta"]) for s in got] == [r[:3] for r in ref]
    for s, r in zip(got, ref, strict=True):
        assert s["image"].dtype == np.uint8
        assert np.array_equal(s["image"], r[3])


def test_lsbench_webdataset_torch(tiny_dataset):
    ref = _reference(tiny_dataset, "test")
    got = list(dataset.webdataset(tiny_dataset, "test", decode="torch"))
    assert [(s["__key__"], s["cls"], s["meta"]) for s in got] == [r[:3] for r in ref]
    for s, r in zip(got, ref, strict=True):
        img = s["image"]
        assert isinstance(img, torch.Tensor) and img.dtype == torch.float32
        assert img.shape == (1, *r[3].shape)
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
        assert torch.allclose(img[0] * 255, torch.tensor(r[3], dtype=torch.float32), atol=1e-3)


def test_lsbench_webdataset_raw_and_bad_decode(tiny_dataset):
    raw = list(dataset.webdataset(tiny_dataset, "train", decode="raw"))
    assert len(raw) == 20 and isinstance(raw[0]["png"], bytes)
    with pytest.raises(ValueError, match="decode"):
        dataset.webdataset(tiny_dataset, "train", decode="pil")


def test_unknown_split_is_a_clear_error(tiny_dataset):
    with pytest.raises(DatasetError, match="has no split 'val'.*train"):
        dataset.open_dataset(tiny_dataset).shard_paths("val")


def test_split_by_node_partitions_shards_between_ranks(tiny_dataset, monkeypatch):
    """webdataset's split_by_node reads RANK/WORLD_SIZE from the environment (else torch.distributed).

    We simulate two nodes by setting those variables; each rank must get every other shard
    (manifest order), the two ranks disjoint and together complete, and groups whole.
    """
    paths = [str(p) for p in dataset.open_dataset(tiny_dataset).shard_paths("test")]
    all_keys = [r[0] for r in _reference(tiny_dataset, "test")]
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        got = list(dataset.webdataset(tiny_dataset, "test"))
        assert {s["__url__"] for s in got} == set(paths[rank::2])
        groups = {}
        for s in got:
            groups.setdefault(s["meta"]["group"], []).append(s)
        assert all(len(g) == 5 and sum(x["meta"]["reference"] for x in g) == 1 for g in groups.values())
        per_rank.append([s["__key__"] for s in got])
    assert per_rank[0] and per_rank[1]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(all_keys)


def test_split_by_worker_partitions_shards_between_workers(tiny_dataset, monkeypatch):
    """split_by_worker reads WORKER/NUM_WORKERS (else the DataLoader's worker info)."""
    paths = [str(p) for p in dataset.open_dataset(tiny_dataset).shard_paths("test")]
    seen = []
    for worker in (0, 1):
        monkeypatch.setenv("WORKER", str(worker))
        monkeypatch.setenv("NUM_WORKERS", "2")
        got = list(dataset.webdataset(tiny_dataset, "test"))
        assert {s["__url__"] for s in got} == set(paths[worker::2])
        seen.append({s["__key__"] for s in got})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 50


def test_torch_dataloader_workers_partition_shards(tiny_dataset):
    """Real DataLoader workers (split_by_worker via torch's worker info): every sample exactly once."""
    ds = dataset.webdataset(tiny_dataset, "train", decode="raw")
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    keys = [s["__key__"] for s in loader]
    assert sorted(keys) == [r[0] for r in _reference(tiny_dataset, "train")]


# --------------------------------------------------------------------------- validate


def test_validate_good_dataset(tiny_dataset):
    assert dataset.validate(tiny_dataset) == []
    assert dataset.validate(tiny_dataset, check_images=False) == []


def _problems_about(problems, *needles):
    return [p for p in problems if all(n in p for n in needles)]


def test_validate_reports_corrupted_byte(tiny_copy):
    path = tiny_copy / "test-000002.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = dataset.validate(tiny_copy)
    assert _problems_about(problems, "test-000002.tar", "sha256"), problems


def test_validate_reports_missing_shard(tiny_copy):
    (tiny_copy / "train-000001.tar").unlink()
    problems = dataset.validate(tiny_copy)
    assert _problems_about(problems, "train-000001.tar", "missing"), problems


def test_validate_reports_unlisted_shard(tiny_copy):
    shutil.copy(tiny_copy / "train-000000.tar", tiny_copy / "train-000007.tar")
    problems = dataset.validate(tiny_copy)
    assert _problems_about(problems, "train-000007.tar", "not listed"), problems


@pytest.mark.parametrize("name", [".test-000001.tar.tmp-4242", ".manifest.json.tmp-4242"])
def test_validate_reports_leftover_temporary(tiny_copy, name):
    (tiny_copy / name).write_bytes(b"partial")
    problems = dataset.validate(tiny_copy)
    assert _problems_about(problems, name, "temporary"), problems


def test_validate_reports_shard_count_mismatch(tiny_copy):
    manifest = read_json(tiny_copy / "manifest.json")
    manifest["splits"]["test"]["shards"][1]["num_samples"] = 11
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    problems = dataset.validate(tiny_copy)
    assert _problems_about(problems, "test-000001.tar", "holds 10 samples", "says 11"), problems


def test_validate_reports_split_count_mismatch(tiny_copy):
    manifest = read_json(tiny_copy / "manifest.json")
    manifest["splits"]["train"]["num_samples"] = 25
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    problems = dataset.validate(tiny_copy)
    assert _problems_about(problems, "train", "20 samples found", "25"), problems


def test_validate_reports_broken_manifest(tiny_copy):
    (tiny_copy / "manifest.json").write_text('{"format": "lsbench-dataset", "splits": ')
    problems = dataset.validate(tiny_copy)
    assert len(problems) == 1 and "not valid JSON" in problems[0], problems


def test_validate_reports_missing_manifest_and_folder(tiny_copy, tmp_path):
    (tiny_copy / "manifest.json").unlink()
    assert _problems_about(dataset.validate(tiny_copy), "no manifest.json")
    assert _problems_about(dataset.validate(tmp_path / "nowhere"), "does not exist")


def test_validate_reports_incomplete_dataset(tiny_copy):
    manifest = read_json(tiny_copy / "manifest.json")
    manifest["complete"] = False
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    assert _problems_about(dataset.validate(tiny_copy), "incomplete")


def test_validate_lists_every_problem_at_once(tiny_copy):
    path = tiny_copy / "test-000000.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))
    (tiny_copy / "test-000004.tar").unlink()
    shutil.copy(tiny_copy / "train-000000.tar", tiny_copy / "train-000002.tar")
    (tiny_copy / ".train-000001.tar.tmp-99").write_bytes(b"")
    manifest = read_json(tiny_copy / "manifest.json")
    manifest["splits"]["train"]["shards"][1]["num_samples"] = 9
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    problems = dataset.validate(tiny_copy)
    assert _problems_about(problems, "test-000000.tar", "sha256"), problems
    assert _problems_about(problems, "test-000004.tar", "missing"), problems
    assert _problems_about(problems, "train-000002.tar", "not listed"), problems
    assert _problems_about(problems, ".train-000001.tar.tmp-99", "temporary"), problems
    assert _problems_about(problems, "train-000001.tar", "says 9"), problems


def test_validate_reports_schema_problems(tmp_path, tiny_copy):
    """A shard whose samples break the schema (no image, bad metadata) is reported, not crashed on."""
    bad = [
        {"__key__": "0000000_00", "json": {"group": 0, "variant": 0, "reference": True}, "cls": 1},
        {"__key__": "0000000_01", "png": b"not a png", "json": {"group": "x"}, "cls": 1},
    ]
    rec = shards.write_shard(tiny_copy / "train-000000.tar", bad)
    manifest = read_json(tiny_copy / "manifest.json")
    manifest["splits"]["train"]["shards"][0] = {**manifest["splits"]["train"]["shards"][0], **rec.__dict__}
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    problems = dataset.validate(tiny_copy)
    assert _problems_about(problems, "0000000_00", "image"), problems
    assert _problems_about(problems, "0000000_01", "does not decode"), problems
    assert _problems_about(problems, "0000000_01", "'group'"), problems


def test_summarize(tiny_dataset):
    summary = dataset.summarize(tiny_dataset)
    assert summary["complete"] is True
    assert summary["splits"]["train"]["samples"] == 20 and summary["splits"]["train"]["shards"] == "2/2"
    assert summary["splits"]["test"]["groups"] == 10 and summary["splits"]["test"]["group_size"] == 5
    assert summary["manifest_sha256"] == sha256(tiny_dataset / "manifest.json")
