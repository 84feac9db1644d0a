"""MNIST-LS: idx reading, the generator's guarantees, bad input, resume, full disk and interrupts."""

from __future__ import annotations

import errno
import functools
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    LSBENCH,
    fail_nth_shard,
    fake_digits,
    generate_mnist,
    generate_tiny,
    read_json,
    sha256,
    shard_files,
    shard_records,
    subprocess_env,
    temporaries,
    write_fake_mnist,
    write_idx,
)

from lsbench import dataset, shards, util
from lsbench.errors import ConfigError, DataError, DatasetError, DiskFullError, LsbenchError
from lsbench.generators import mnist
from lsbench.generators.mnist import idx as mnist_idx
from lsbench.generators.runner import RunOptions, SplitPlan, build, distributed_rank, merge_manifests

# --------------------------------------------------------------------------- B. reading idx files


def test_embedded_digits_load():
    train, test = mnist_idx.load("train"), mnist_idx.load("test")
    assert train.images.shape == (2500, 28, 28) and train.labels.shape == (2500,)
    assert test.images.shape == (2500, 28, 28)
    assert set(np.unique(train.labels)) == set(range(10))
    assert train.source == test.source == "lsbench-embedded-mnist"


@pytest.mark.parametrize("gz", [True, False])
def test_fake_mnist_loads_gz_and_plain(tmp_path, gz):
    folder = write_fake_mnist(tmp_path / "m", gz=gz)
    split = mnist_idx.load("train", folder)
    images, labels = fake_digits(30, list(range(10)), 1)
    assert np.array_equal(split.images, images) and np.array_equal(split.labels, labels)
    assert split.source == "mnist"
    assert len(mnist_idx.load("test", folder).labels) == 20


def test_gz_and_plain_give_the_same_arrays(tmp_path):
    a = mnist_idx.load("test", write_fake_mnist(tmp_path / "a", gz=True))
    b = mnist_idx.load("test", write_fake_mnist(tmp_path / "b", gz=False))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("layout", ["raw", "MNIST/raw"])
def test_torchvision_layouts_are_found(tmp_path, layout):
    write_fake_mnist(tmp_path / "data" / layout, gz=False)
    assert mnist_idx.load("train", tmp_path / "data").images.shape == (30, 28, 28)


def _one_bad_file(tmp_path, filename, **kwargs) -> Path:
    """A fake MNIST folder whose ``filename`` is rewritten with ``write_idx(**kwargs)``."""
    folder = write_fake_mnist(tmp_path / "m", gz=filename.endswith(".gz"))
    images, labels = fake_digits(30, list(range(10)), 1)
    array = images if "images" in filename else labels
    write_idx(folder / filename, kwargs.pop("array", array), **kwargs)
    return folder


@pytest.mark.parametrize(
    ("filename", "kwargs", "needles"),
    [
        ("train-images-idx3-ubyte.gz", dict(magic=0x12345678), ["magic number", "0x12345678", "right file"]),
        ("train-labels-idx1-ubyte", dict(magic=0x00000803), ["magic number", "labels"]),
        ("train-images-idx3-ubyte", dict(truncate=100), ["truncated", "re-download"]),
        ("train-images-idx3-ubyte.gz", dict(truncate=1), ["truncated", "re-download"]),
        ("train-labels-idx1-ubyte.gz", dict(dims=(31,)), ["promises 31", "re-download"]),
        ("train-images-idx3-ubyte.gz", dict(truncate_gz=20), ["gzip", "re-download"]),
        ("train-images-idx3-ubyte.gz", dict(gz=False), ["gzip", "re-download"]),  # .gz name, plain content
        ("train-images-idx3-ubyte", dict(array=np.zeros((5, 32, 32), np.uint8)), ["28×28"]),
        ("train-labels-idx1-ubyte", dict(array=np.full(30, 12, np.uint8)), ["outside 0–9"]),
    ],
)
def test_bad_idx_files_are_data_errors(tmp_path, filename, kwargs, needles):
    folder = _one_bad_file(tmp_path, filename, **kwargs)
    with pytest.raises(DataError) as info:
        mnist_idx.load("train", folder)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x08", b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00"])
def test_header_cut_short(tmp_path, data):
    folder = write_fake_mnist(tmp_path / "m", gz=False)
    (folder / "train-images-idx3-ubyte").write_bytes(data)
    with pytest.raises(DataError, match="truncated"):
        mnist_idx.load("train", folder)


def test_corrupt_gzip_crc(tmp_path):
    folder = write_fake_mnist(tmp_path / "m", gz=True)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC32 trailer
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="gzip"):
        mnist_idx.load("test", folder)


def test_label_image_count_mismatch(tmp_path):
    folder = write_fake_mnist(tmp_path / "m", gz=False)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="20 test images but 19 labels"):
        mnist_idx.load("test", folder)


def test_empty_idx_files(tmp_path):
    folder = write_fake_mnist(tmp_path / "m", gz=False)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(DataError, match="no digits"):
        mnist_idx.load("test", folder)


@pytest.mark.parametrize("missing", ["t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"])
def test_missing_idx_file(tmp_path, missing):
    folder = write_fake_mnist(tmp_path / "m")
    (folder / missing).unlink()
    split = "test" if missing.startswith("t10k") else "train"
    with pytest.raises(DataError, match=re.escape(missing.removesuffix(".gz")) + r".*not found.*raw/"):
        mnist_idx.load(split, folder)


def test_wrong_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        mnist_idx.load("train", tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        mnist_idx.load("train", tmp_path / "file")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0.png").write_bytes(b"")
    with pytest.raises(DataError, match="not found"):
        mnist_idx.load("train", tmp_path / "images")


def test_generate_reports_broken_mnist_dir_before_writing(tmp_path):
    folder = _one_bad_file(tmp_path, "t10k-images-idx3-ubyte.gz", truncate_gz=10)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="t10k-images"):
        generate_tiny(out, mnist_dir=folder)
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------- C. generator guarantees


def _samples(directory, split):
    return list(dataset.read_split(directory, split))


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_geometry(sample, size: int, exact_sizes: bool = True):
    meta, image = sample["meta"], sample["image"]
    assert image.shape == (size, size) and image.dtype == np.uint8
    boxes = meta["boxes"]
    assert len(boxes) == len(meta["digits"]) == len(meta["scales"]) == len(meta["sizes_px"])
    for box, px, ink in zip(boxes, meta["sizes_px"], meta["ink_boxes"], strict=True):
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, box
        if exact_sizes:
            assert (x1 - x0, y1 - y0) == (px, px), (box, px)
        if ink is not None:
            assert x0 <= ink[0] < ink[2] <= x1 and y0 <= ink[1] < ink[3] <= y1, (ink, box)
    for a, b in itertools.combinations(boxes, 2):
        assert not _overlap(a, b), (a, b)
    inside = np.zeros_like(image, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    assert not image[~inside].any(), "ink outside every digit's frame"
    for ink in meta["ink_boxes"]:
        if ink is not None:
            assert image[ink[1] : ink[3], ink[0] : ink[2]].any()


def test_labels_are_the_digits_as_a_number(tiny_dataset):
    for split in ("train", "test"):
        for s in _samples(tiny_dataset, split):
            meta = s["meta"]
            assert len(meta["digits"]) == 3 and all(0 <= d <= 9 for d in meta["digits"])
            assert meta["label"] == int("".join(map(str, meta["digits"])))
            assert s["cls"] == meta["label"]
            assert 0 <= meta["label"] < 1000


def test_manifest_records_the_config(tiny_dataset):
    manifest = read_json(tiny_dataset / "manifest.json")
    assert manifest["generator"] == "mnist" and manifest["complete"] is True
    cfg = manifest["config"]
    assert cfg["digits"] == 3 and cfg["size"] == 112 and cfg["num_classes"] == 1000
    assert (cfg["scale_min"], cfg["scale_max"]) == (0.4, 2.0)
    assert manifest["splits"]["test"]["group_size"] == 5 and manifest["splits"]["test"]["grouped"] is True
    assert manifest["splits"]["train"]["group_size"] == 1 and manifest["splits"]["train"]["grouped"] is False
    assert "mnist_dir" not in cfg  # where the digits were read from is not part of the dataset's identity


def test_one_digit_task(tmp_path):
    generate_tiny(tmp_path / "d1", digits=1, train=60, test=50)
    labels = set()
    for split in ("train", "test"):
        for s in _samples(tmp_path / "d1", split):
            assert s["cls"] == s["meta"]["label"] == s["meta"]["digits"][0]
            labels.add(s["cls"])
    assert labels <= set(range(10)) and len(labels) >= 8
    assert read_json(tmp_path / "d1" / "manifest.json")["config"]["num_classes"] == 10


def test_test_groups(tiny_dataset):
    samples = _samples(tiny_dataset, "test")
    assert len(samples) == 50
    for g in range(10):
        group = samples[5 * g : 5 * g + 5]
        metas = [s["meta"] for s in group]
        assert [m["group"] for m in metas] == [g] * 5
        assert [m["variant"] for m in metas] == list(range(5))
        assert len({tuple(m["source"]["indices"]) for m in metas}) == 1
        assert len({m["label"] for m in metas}) == 1
        refs = [m for m in metas if m["reference"]]
        assert len(refs) == 1 and refs[0]["variant"] == 0 and refs[0]["scales"] == [1.0, 1.0, 1.0]
        assert refs[0]["sizes_px"] == [28, 28, 28]
        assert all(m["scales"] != [1.0, 1.0, 1.0] for m in metas[1:])
        assert len({tuple(m["scales"]) for m in metas}) == 5


def test_train_samples_are_single(tiny_dataset):
    metas = [s["meta"] for s in _samples(tiny_dataset, "train")]
    assert [m["group"] for m in metas] == list(range(20))
    assert all(m["variant"] == 0 and m["reference"] is False for m in metas)


def test_scales_within_range(tmp_path):
    generate_tiny(tmp_path / "ds", scale_range=(0.7, 1.3))
    for split in ("train", "test"):
        for s in _samples(tmp_path / "ds", split):
            scales = s["meta"]["scales"] if not s["meta"]["reference"] else []
            assert all(0.7 <= x <= 1.3 for x in scales), scales
            assert s["meta"]["scale_range"] == [0.7, 1.3]


def test_geometry_reading_layout(tiny_dataset):
    for split in ("train", "test"):
        for s in _samples(tiny_dataset, split):
            assert s["meta"]["layout"] == "reading"
            _check_geometry(s, 112)


def test_geometry_at_the_tightest_fit(tmp_path):
    """3 digits of up to 56 px in 112 px: two lines, nothing overlaps or leaves the image."""
    generate_tiny(tmp_path / "ds", scale_range=(1.9, 2.0), train=30, test=30)
    lines = set()
    for split in ("train", "test"):
        for s in _samples(tmp_path / "ds", split):
            _check_geometry(s, 112)
            if not s["meta"]["reference"]:
                lines.add(s["meta"]["lines"])
    assert lines == {2}


def test_bracket_splits(tmp_path):
    out = tmp_path / "br"
    generate_mnist(out, digits=3, size=224, train=5, test=10, brackets=True, bracket_count=20, shard_size=10)
    manifest = read_json(out / "manifest.json")
    brackets = {"test_04_10": (0.4, 1.0), "test_10_20": (1.0, 2.0), "test_20_30": (2.0, 3.0)}
    assert set(manifest["splits"]) == {"train", "test", *brackets}
    assert dataset.validate(out) == []
    for split, (lo, hi) in brackets.items():
        samples = _samples(out, split)
        assert len(samples) == 20
        for s in samples:
            meta = s["meta"]
            assert meta["split"] == split and meta["source"]["split"] == "test"
            if meta["reference"]:
                assert meta["scales"] == [1.0, 1.0, 1.0]
            else:
                assert all(lo <= x <= hi for x in meta["scales"]), meta["scales"]
            _check_geometry(s, 224)
    big = [s["meta"] for s in _samples(out, "test_20_30") if not s["meta"]["reference"]]
    assert max(max(m["sizes_px"]) for m in big) > 75


def test_tiles_layout(tmp_path):
    out = tmp_path / "tiles"
    generate_mnist(out, digits=3, layout="tiles", train=20, test=50, shard_size=10)
    assert read_json(out / "manifest.json")["config"]["size"] == 210
    directions = set()
    for split in ("train", "test"):
        for s in _samples(out, split):
            meta = s["meta"]
            assert meta["label"] == int("".join(map(str, meta["digits"]))) == s["cls"]
            assert meta["sizes_px"] == [int(28 * x) for x in meta["scales"]]
            _check_geometry(s, 210)
            directions.add(meta["direction"])
            for box in meta["boxes"]:  # each digit inside its own 70-px tile
                assert box[0] // 70 == (box[2] - 1) // 70 and box[1] // 70 == (box[3] - 1) // 70
    assert directions == {"horizontal", "vertical", "diagonal"}


def test_tiles_layout_crops_large_digits_to_their_tile(tmp_path):
    out = tmp_path / "tiles"
    generate_mnist(out, digits=3, layout="tiles", scale_range=(2.6, 3.0), train=10, test=10, shard_size=10)
    for s in _samples(out, "train"):
        assert all(px > 70 for px in s["meta"]["sizes_px"])
        _check_geometry(s, 210, exact_sizes=False)
        assert all(b[2] - b[0] == 70 and b[3] - b[1] == 70 for b in s["meta"]["boxes"])


def test_tiles_layout_refuses_other_sizes(tmp_path):
    with pytest.raises(ConfigError, match="--size must be 210"):
        generate_mnist(tmp_path / "x", digits=3, layout="tiles", size=224, train=5, test=5)
    with pytest.raises(ConfigError, match="--layout"):
        generate_mnist(tmp_path / "x", layout="grid", train=5, test=5)


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path):
    generate_tiny(tmp_path / "w1", workers=1)
    generate_tiny(tmp_path / "w2", workers=2)
    one, two = shard_files(tmp_path / "w1"), shard_files(tmp_path / "w2")
    assert len(one) == 7 and one == two
    assert shard_records(tmp_path / "w1") == shard_records(tmp_path / "w2")


def test_different_seed_different_shards(tmp_path, tiny_dataset):
    generate_tiny(tmp_path / "s1", seed=1)
    a, b = shard_files(tiny_dataset), shard_files(tmp_path / "s1")
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a)


def test_train_from_train_split_and_test_from_test_split(tiny_dataset, tmp_path):
    for split, source in (("train", "train"), ("test", "test")):
        assert {s["meta"]["source"]["split"] for s in _samples(tiny_dataset, split)} == {source}
    # With MNIST files whose train digits are all 1s and test digits all 2s, the labels prove it.
    folder = write_fake_mnist(tmp_path / "m", train_labels=[1], test_labels=[2])
    generate_tiny(tmp_path / "ds", mnist_dir=folder)
    assert {s["cls"] for s in _samples(tmp_path / "ds", "train")} == {111}
    assert {s["cls"] for s in _samples(tmp_path / "ds", "test")} == {222}
    meta = _samples(tmp_path / "ds", "test")[0]["meta"]
    assert meta["source"]["dataset"] == "mnist" and max(meta["source"]["indices"]) < 20


def test_source_identity_not_path(tmp_path):
    """The same digits under another path are the same dataset (resume works); other digits are not."""
    a = write_fake_mnist(tmp_path / "a")
    b = write_fake_mnist(tmp_path / "b", gz=False)
    out = tmp_path / "ds"
    generate_tiny(out, mnist_dir=a)
    assert generate_tiny(out, mnist_dir=b).shards_written == 0
    c = write_fake_mnist(tmp_path / "c", train_labels=[3])
    with pytest.raises(DatasetError, match="source_sha256"):
        generate_tiny(out, mnist_dir=c)


# --------------------------------------------------------------------------- D. bad input


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (dict(scale_range=(2.0, 1.0)), ["--scale-range", "min < max"]),
        (dict(scale_range=(1.0, 1.0)), ["--scale-range"]),
        (dict(scale_range=(0.0, 1.0)), ["--scale-range"]),
        (dict(scale_range=(0.4, 3.0)), ["do not fit", "lower the max scale or raise --size"]),
        (dict(digits=4, size=56, scale_range=(0.4, 1.2)), ["do not fit"]),
        (dict(train=0), ["--train must be at least 1"]),
        (dict(test=0), ["--test must be at least 1"]),
        (dict(test=52), ["--test 52 is not a multiple of the group size 5", "use e.g. 50"]),
        (dict(test=3), ["--test 3 is not a multiple", "use e.g. 5"]),
        (dict(digits=5), ["--digits must be 1–4"]),
        (dict(digits=0), ["--digits must be 1–4"]),
        (dict(variants=0), ["--variants"]),
        (dict(brackets=True, bracket_count=12), ["--bracket-count 12"]),
        (dict(size=20), ["--size must be at least 28"]),
        (dict(shard_size=0), ["--shard-size"]),
        (dict(shard_size=3), ["shard size 3 is smaller than one group"]),
        (dict(workers=0), ["--workers"]),
    ],
)
def test_bad_options_are_refused_before_writing(tmp_path, overrides, needles):
    out = tmp_path / "out"
    with pytest.raises(LsbenchError) as info:
        generate_tiny(out, **overrides)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    assert not out.exists() or not any(out.iterdir()), "a refused run must not leave files behind"


def test_bracket_scale_fits_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="scale 3.0"):
        generate_mnist(tmp_path / "x", digits=3, size=160, train=5, test=5, brackets=True, bracket_count=5)


def test_distributed_rank_from_environment():
    assert distributed_rank({}) == (0, 1)
    assert distributed_rank({"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4)
    assert distributed_rank({"SLURM_PROCID": "2", "SLURM_NTASKS": "3"}) == (2, 3)
    with pytest.raises(ConfigError):
        distributed_rank({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError):
        distributed_rank({"RANK": "x", "WORLD_SIZE": "2"})


def test_resume_same_config_reuses_everything(tmp_path):
    out = tmp_path / "ds"
    first = generate_tiny(out)
    assert (first.shards_written, first.shards_reused, first.complete) == (7, 0, True)
    before = shard_files(out)
    second = generate_tiny(out)
    assert (second.shards_written, second.shards_reused, second.complete) == (0, 7, True)
    assert shard_files(out) == before
    assert dataset.validate(out) == []


def test_resume_redoes_only_damaged_or_missing_shards(tmp_path, tiny_dataset):
    out = tmp_path / "ds"
    generate_tiny(out)
    (out / "test-000003.tar").unlink()
    with open(out / "train-000001.tar", "r+b") as f:
        f.seek(700)
        f.write(b"\xff\xfe")
    result = generate_tiny(out)
    assert (result.shards_written, result.shards_reused) == (2, 5)
    assert shard_files(out) == shard_files(tiny_dataset)
    assert dataset.validate(out) == []


def test_different_dataset_is_refused_then_overwritten(tmp_path):
    out = tmp_path / "ds"
    generate_tiny(out)
    before = shard_files(out)
    with pytest.raises(DatasetError, match=r"different dataset \(differs in: seed\).*--overwrite"):
        generate_tiny(out, seed=3)
    assert shard_files(out) == before
    with pytest.raises(DatasetError, match="differs in: size"):
        generate_tiny(out, size=140)
    (out / "notes.txt").write_text("mine")
    result = generate_tiny(out, seed=3, overwrite=True)
    assert (result.shards_written, result.shards_reused) == (7, 0)
    assert read_json(out / "manifest.json")["seed"] == 3
    assert shard_files(out) != before
    assert (out / "notes.txt").read_text() == "mine", "--overwrite removes lsbench's files only"
    assert dataset.validate(out) == []


def test_other_shard_size_is_refused_not_mixed(tmp_path):
    """A shard's name says which samples it holds only under one shard size: never reuse across sizes."""
    out = tmp_path / "ds"
    generate_tiny(out)
    before = shard_files(out)
    with pytest.raises(DatasetError, match=r"differs in: --shard-size \(was \d+\)"):
        generate_tiny(out, shard_size=5)
    assert shard_files(out) == before and dataset.validate(out) == []
    generate_tiny(out, shard_size=5, overwrite=True)
    assert dataset.validate(out) == []


def _shard_failing_with_config_error(spec, good_shards=0):
    if spec.start // spec.count >= good_shards:
        raise ConfigError("the model checkpoint does not load")
    for i in range(spec.start, spec.start + spec.count):
        yield {"__key__": f"{i:07d}_00", "png": shards.encode_png(np.zeros((4, 4), np.uint8)),
               "json": {"group": i, "variant": 0, "reference": False, "split": spec.split}}


def test_config_error_during_work_leaves_no_half_made_dataset(tmp_path):
    """A setting that only fails once shards are being made (a lazily loaded model) removes what the
    run created in a new or empty folder, so the corrected command starts afresh; an existing dataset
    and its finished shards are kept."""
    kwargs = dict(name="x", generator="x", config={}, seed=0, splits=[SplitPlan("train", 4)],
                  make_shard=_shard_failing_with_config_error, run=RunOptions(shard_size=2, rank=0, world_size=1))
    with pytest.raises(ConfigError):
        build(tmp_path / "new", **kwargs)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError):
        build(tmp_path / "empty", **kwargs)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    kwargs["make_shard"] = functools.partial(_shard_failing_with_config_error, good_shards=1)
    with pytest.raises(ConfigError):  # the first shard is finished, then the error: keep it to resume
        build(tmp_path / "partial", **kwargs)
    assert list(shard_files(tmp_path / "partial")) == ["train-000000.tar"]
    assert (tmp_path / "partial" / "manifest.json").is_file()


def test_overwrite_removes_shards_the_new_plan_does_not_have(tmp_path):
    out = tmp_path / "ds"
    generate_tiny(out, train=40)
    generate_tiny(out, overwrite=True)
    assert not (out / "train-000003.tar").exists()
    assert dataset.validate(out) == []


def test_non_dataset_folder_is_refused(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(DatasetError, match="not empty and is not an lsbench dataset"):
        generate_tiny(out)
    assert sorted(p.name for p in out.iterdir()) == ["cat.jpg"]


def test_output_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        generate_tiny(tmp_path / "f")


def test_unreadable_manifest_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "ds"
    generate_tiny(out)
    (out / "manifest.json").write_text("{")
    with pytest.raises(DatasetError, match="unreadable.*--overwrite"):
        generate_tiny(out)
    generate_tiny(out, overwrite=True)
    assert dataset.validate(out) == []


def test_disk_full_keeps_finished_shards_and_resumes(tmp_path, tiny_dataset, monkeypatch):
    out = tmp_path / "ds"
    with monkeypatch.context() as mp, pytest.raises(DiskFullError, match="free some space and rerun"):
        fail_nth_shard(mp, 4)
        generate_tiny(out)
    assert temporaries(out) == []
    manifest = read_json(out / "manifest.json")
    assert manifest["complete"] is False
    listed = [r["name"] for entry in manifest["splits"].values() for r in entry["shards"]]
    assert sorted(listed) == ["test-000000.tar", "train-000000.tar", "train-000001.tar"]
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(listed)
    problems = dataset.validate(out)
    assert any("incomplete" in p for p in problems)
    result = generate_tiny(out)
    assert (result.shards_written, result.shards_reused, result.complete) == (4, 3, True)
    assert shard_files(out) == shard_files(tiny_dataset)
    assert shard_records(out) == shard_records(tiny_dataset)
    assert dataset.validate(out) == []


def test_disk_full_while_writing_the_manifest(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("manifest.json") and (Path(dst).parent / "train-000001.tar").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    with monkeypatch.context() as mp, pytest.raises(DiskFullError, match="disk full"):
        mp.setattr(util.os, "replace", replace)
        generate_tiny(out)
    assert temporaries(out) == []
    generate_tiny(out)
    assert dataset.validate(out) == []


def test_other_os_errors_are_not_disk_full(tmp_path, monkeypatch):
    with monkeypatch.context() as mp, pytest.raises(OSError) as info:
        fail_nth_shard(mp, 2, errno.EIO)
        generate_tiny(tmp_path / "ds")
    assert not isinstance(info.value, LsbenchError) and info.value.errno == errno.EIO
    assert temporaries(tmp_path / "ds") == []


def test_keyboard_interrupt_in_process_keeps_finished_shards(tmp_path, tiny_dataset, monkeypatch):
    """Ctrl-C while the 3rd shard is being generated (workers=1, inline): Interrupted, resumable."""
    from lsbench.errors import Interrupted

    out = tmp_path / "ds"
    real = mnist.pipeline.make_group
    calls = {"n": 0}

    def interrupting(cfg, split, group):
        calls["n"] += 1
        if calls["n"] == 22:  # train: 20 groups in 2 shards; the 2nd test group is in the 3rd shard
            raise KeyboardInterrupt
        return real(cfg, split, group)

    with monkeypatch.context() as mp, pytest.raises(Interrupted, match="rerun the same command"):
        mp.setattr(mnist.pipeline, "make_group", interrupting)
        generate_tiny(out)
    assert temporaries(out) == []
    assert sorted(r["name"] for r in shard_records(out)["train"]) == ["train-000000.tar", "train-000001.tar"]
    assert shard_records(out)["test"] == []
    assert generate_tiny(out).shards_written == 5
    assert shard_files(out) == shard_files(tiny_dataset)


def test_a_late_rank_does_not_delete_another_ranks_shard_in_progress(tmp_path, monkeypatch, tiny_dataset):
    """Ranks of a multi-node run share one folder.  Rank 1 starting while rank 0 is halfway through
    a shard must not delete rank 0's temporary file (rank 0 would then fail when renaming it)."""
    out = tmp_path / "ds"
    real = mnist.pipeline.make_group
    state = {"started": False}

    def make_group(cfg, split, group):
        if not state["started"] and split == "train" and group == 5:
            state["started"] = True
            monkeypatch.setenv("RANK", "1")
            generate_tiny(out)  # rank 1 starts (and finishes) while rank 0 writes train-000000
            monkeypatch.setenv("RANK", "0")
        return real(cfg, split, group)

    monkeypatch.setenv("WORLD_SIZE", "2")
    with monkeypatch.context() as mp:
        mp.setattr(mnist.pipeline, "make_group", make_group)
        monkeypatch.setenv("RANK", "0")
        generate_tiny(out)
    assert state["started"]
    monkeypatch.setenv("RANK", "1")
    assert generate_tiny(out).shards_written == 0
    merge_manifests(out)
    assert shard_files(out) == shard_files(tiny_dataset)


# --------------------------------------------------------------------------- multi-rank generation


def test_ranks_write_disjoint_shards_and_merge(tmp_path, tiny_dataset, monkeypatch):
    out = tmp_path / "ds"
    order = [f"train-{i:06d}.tar" for i in range(2)] + [f"test-{i:06d}.tar" for i in range(5)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        result = generate_tiny(out)
        assert result.manifest.name == f"manifest.rank{rank:05d}-of-00002.json"
        part = read_json(result.manifest)
        assert (part["rank"], part["world_size"]) == (rank, 2)
        listed = sorted(r["name"] for e in part["splits"].values() for r in e["shards"])
        assert listed == sorted(order[rank::2])
        if rank == 0:
            assert sorted(p.name for p in out.glob("*.tar")) == sorted(order[0::2])
            assert not (out / "manifest.json").exists()
            with pytest.raises(DatasetError, match=r"ranks \[1\] of 2 are missing"):
                merge_manifests(out)
    assert merge_manifests(out) == out / "manifest.json"
    assert not list(out.glob("manifest.rank*"))
    assert shard_records(out) == shard_records(tiny_dataset)
    merged, single = read_json(out / "manifest.json"), read_json(tiny_dataset / "manifest.json")
    for key in ("config", "seed", "generator", "name", "complete", "shard_size"):
        assert merged[key] == single[key], key
    assert "rank" not in merged and "world_size" not in merged
    assert dataset.validate(out) == []


def test_merge_refuses_without_parts_or_with_missing_shards(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="no partial manifests"):
        merge_manifests(tmp_path)
    out = tmp_path / "ds"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        generate_tiny(out)
    (out / "test-000001.tar").unlink()
    with pytest.raises(DatasetError, match="missing or corrupt.*test-000001.tar.*rerun"):
        merge_manifests(out)


def test_merge_refuses_parts_of_different_datasets(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    generate_tiny(out)
    other = tmp_path / "other"
    monkeypatch.setenv("RANK", "1")
    generate_tiny(other, seed=9)
    shutil.copy(other / "manifest.rank00001-of-00002.json", out)
    with pytest.raises(DatasetError, match="different datasets"):
        merge_manifests(out)


# --------------------------------------------------------------------------- D. real processes, signals

BIG = ["--digits", "3", "--size", "112", "--train", "2000", "--test", "2000", "--shard-size", "20", "-q"]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [LSBENCH, "generate", "mnist", "--out", str(out), *BIG, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )


def _wait_for_first_shard(proc: subprocess.Popen, out: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"generator exited early: {proc.returncode} {proc.stderr.read()}"
        try:
            manifest = read_json(out / "manifest.json")
        except (FileNotFoundError, ValueError):
            manifest = None
        if manifest and any(e["shards"] for e in manifest["splits"].values()):
            return
        time.sleep(0.005)
    proc.kill()
    pytest.fail("no shard was finished in time")


def _run_to_completion(out: Path, *extra: str) -> None:
    done = subprocess.run(
        [LSBENCH, "generate", "mnist", "--out", str(out), *BIG, *extra],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def big_reference(tmp_path_factory) -> Path:
    """The BIG dataset (200 shards) generated without interruption (library call, 2 workers)."""
    out = tmp_path_factory.mktemp("bigref") / "ds"
    generate_mnist(out, digits=3, size=112, train=2000, test=2000, shard_size=20, workers=2)
    return out


def _assert_same_as(out: Path, reference: Path) -> None:
    assert temporaries(out) == []
    assert dataset.validate(out, check_images=False) == []
    ref = {p.name: sha256(p) for p in reference.glob("*.tar")}
    got = {p.name: sha256(p) for p in out.glob("*.tar")}
    assert len(ref) == 200 and got == ref
    assert shard_records(out) == shard_records(reference)


@pytest.mark.parametrize("target", ["group", pytest.param("parent", marks=pytest.mark.slow)])
def test_ctrl_c_exits_130_and_resumes_identically(tmp_path, big_reference, target):
    """SIGINT to the whole process group (a terminal's Ctrl-C) or to the parent alone (kill -INT)."""
    out = tmp_path / "ds"
    proc = _start(out, "--workers", "2")
    _wait_for_first_shard(proc, out)
    if target == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), stderr
    assert temporaries(out) == []
    manifest = read_json(out / "manifest.json")
    finished = [r["name"] for e in manifest["splits"].values() for r in e["shards"]]
    assert manifest["complete"] is False and 1 <= len(finished) < 200
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(finished), "unlisted shard left behind"
    _run_to_completion(out, "--workers", "2")
    _assert_same_as(out, big_reference)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15])
def test_ctrl_c_while_workers_start(tmp_path, delay):
    """Ctrl-C at any moment, including while the worker processes are still starting up (right
    after manifest.json appears): never a traceback from a worker, never a partial file; exit 130
    with one line (or, if the signal fell into the instant the workers are spawned and was not
    seen, a normal complete run)."""
    out = tmp_path / "ds"
    proc = _start(out, "--workers", "2")
    deadline = time.monotonic() + 60
    while not (out / "manifest.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr[:3000]
    assert temporaries(out) == []
    lines = [line for line in stderr.splitlines() if line.strip()]
    if proc.returncode == 0:
        assert lines == [] and dataset.validate(out, check_images=False) == []
    else:
        assert proc.returncode == 130, stderr[:3000]
        assert len(lines) == 1 and lines[0].startswith("error: interrupted"), stderr[:3000]


@pytest.mark.slow
def test_sigterm_behaves_like_ctrl_c(tmp_path, big_reference):
    out = tmp_path / "ds"
    proc = _start(out, "--workers", "1")
    _wait_for_first_shard(proc, out)
    proc.terminate()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().startswith("error: interrupted")
    assert temporaries(out) == []
    _run_to_completion(out, "--workers", "1")
    _assert_same_as(out, big_reference)


def test_sigkill_then_rerun_gives_the_same_dataset(tmp_path, big_reference):
    out = tmp_path / "ds"
    proc = _start(out, "--workers", "1")
    _wait_for_first_shard(proc, out)
    time.sleep(0.2)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert read_json(out / "manifest.json")["complete"] is False
    _run_to_completion(out, "--workers", "1")
    _assert_same_as(out, big_reference)
