"""The dataset handle (:func:`lsbench.dataset.open_dataset`): a folder opened once."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, sha256

from lsbench import dataset
from lsbench.errors import DatasetError


def test_handle_holds_what_the_manifest_says(tiny_dataset):
    ds = dataset.open_dataset(tiny_dataset)
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert ds.manifest == manifest
    assert ds.sha256 == sha256(tiny_dataset / "manifest.json") == dataset.manifest_sha256(tiny_dataset)
    assert (ds.name, ds.generator, ds.task, ds.num_classes) == ("mnist-ls-3digit", "mnist", "cls", 1000)
    assert ds.splits == {"train": TINY["train"], "test": TINY["test"]}
    assert ds.complete and ds.require_complete() is ds
    assert [p.name for p in ds.shard_paths("train")] == ["train-000000.tar", "train-000001.tar"]
    assert ds.summary() == dataset.summarize(tiny_dataset)


def test_sha256_is_of_the_bytes_read_not_of_a_later_file(tiny_copy):
    """Results cite the manifest the run read: rewriting the file afterwards does not change the handle."""
    ds = dataset.open_dataset(tiny_copy)
    before = ds.sha256
    path = tiny_copy / "manifest.json"
    path.write_text(path.read_text().replace('"seed": 0', '"seed": 1'))
    assert ds.sha256 == before != dataset.open_dataset(tiny_copy).sha256


def test_unknown_split_names_the_splits_there_are(tiny_dataset):
    ds = dataset.open_dataset(tiny_dataset)
    with pytest.raises(DatasetError, match=r"has no split 'val' \(it has: test, train\)"):
        ds.shard_paths("val")


def test_verify_names_the_bad_shard_or_skips_it(tiny_copy):
    ds = dataset.open_dataset(tiny_copy)
    assert ds.verify("test") == []
    (tiny_copy / "test-000001.tar").write_bytes(b"damaged")
    with pytest.raises(DatasetError, match=r"shard test-000001.tar is missing or corrupt.*--skip-corrupt"):
        ds.verify("test")
    seen: list[str] = []
    assert ds.verify("test", skip_corrupt=True, log=seen.append) == ["test-000001.tar"]
    assert seen == ["skipping 1 corrupt shard(s): test-000001.tar"]


def test_incomplete_or_classless_datasets_are_refused_for_use(tiny_copy):
    path = tiny_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["complete"] = False
    del manifest["config"]["num_classes"]
    path.write_text(json.dumps(manifest))
    ds = dataset.open_dataset(tiny_copy)
    with pytest.raises(DatasetError, match="is incomplete: rerun its generate command"):
        ds.require_complete()
    with pytest.raises(DatasetError, match="does not record num_classes"):
        ds.num_classes  # noqa: B018 - the property raises
