"""A dataset folder: its manifest, one handle that opens it once, reading and validating it.

A dataset is a folder::

    DIR/manifest.json           name, lsbench version, generator config, seed, per-split shard list
    DIR/{split}-{000000}.tar    WebDataset shards (bytes-level format: :mod:`lsbench.shards`)

:func:`open_dataset` reads ``manifest.json`` once and returns a :class:`Dataset` handle holding
the manifest, the sha256 of the very bytes it parsed (what results and leaderboards cite), the
splits and their shard files, and the checks training, evaluation, ``validate`` and ``info``
need — so no command re-reads (or re-hashes) a manifest that may have changed meanwhile.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from .card import check_card
from .errors import CorruptSampleError, DatasetError, ManifestError, UnknownSplitError
from .shards import (
    REBUILD,
    SHARD_RE,
    ShardRecord,
    ShardSpec,
    check_groups,
    check_sample,
    decode_sample,
    iter_tar,
    to_torch,
)
from .util import TMP_MARK, loads_json, sha256_file

FORMAT = "lsbench-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- manifest


def new_manifest(name: str, generator: str, config: dict[str, Any], seed: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "generator": generator,
        "lsbench_version": __version__,
        "seed": seed,
        "config": config,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": False,
        "splits": {},
    }


def split_entry(
    num_samples: int, group_size: int, grouped: bool, shards: list[ShardSpec], records: dict[str, ShardRecord]
) -> dict[str, Any]:
    """Manifest entry for one split: plan plus the records of the shards finished so far."""
    listed = [asdict(records[s.name]) for s in shards if s.name in records]
    return {
        "num_samples": num_samples,
        "group_size": group_size,
        "num_groups": num_samples // group_size,
        "grouped": grouped,
        "num_shards": len(shards),
        "shards": listed,
        "bytes": sum(r["bytes"] for r in listed),
    }


SCHEMA_PATH = resources.files(__package__).joinpath("manifest.schema.json")
REGENERATE = "regenerate the dataset (its generate command with --overwrite)"


@functools.lru_cache(maxsize=1)
def manifest_validator() -> Any:
    """The JSON-Schema validator of the shipped ``manifest.schema.json`` (loaded once).  Its integers are
    JSON integers only: ``10.0`` is a float to Python (``range(10.0)`` fails), so it is refused too."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    strict = jsonschema.validators.extend(base, type_checker=checker)
    return strict(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def check_manifest(manifest: Any, path: Path | str) -> None:
    """One :class:`ManifestError` line naming ``path``, the JSON path of the first bad field and what to
    do, if ``manifest`` does not follow the schema (every reader goes through :func:`open_dataset`)."""
    import jsonschema

    error = jsonschema.exceptions.best_match(manifest_validator().iter_errors(manifest))
    if error is None:
        return
    if error.validator == "pattern" and "description" in error.schema:  # what the pattern means, not the regex
        message = f"{error.instance!r} is not {error.schema['description']}"
    elif error.validator == "propertyNames":
        message = f"{error.instance!r} is not a split name (letters, digits and '_')"
    else:
        message = error.message
    reason = " ".join(f"not a valid lsbench manifest at {error.json_path}: {message}".split())[:300]
    raise ManifestError(f"{path}: {reason}; {REGENERATE}", reason)


def _parse_manifest(directory: Path, name: str) -> tuple[dict[str, Any], str]:
    """(manifest, sha256 of its bytes); :class:`ManifestError` with what to do otherwise."""
    path = directory / name
    if not directory.is_dir():
        raise DatasetError(f"{directory} does not exist or is not a folder")
    if not path.is_file():
        raise DatasetError(f"{directory} has no {name}: not an lsbench dataset (make one with `lsbench generate`)")
    data = path.read_bytes()
    try:
        manifest = loads_json(data.decode())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, NaN/Infinity/1e999, not UTF-8
        reason = f"not valid JSON ({e})"
        raise ManifestError(f"{path} is {reason}; regenerate the dataset", reason) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path} is not an lsbench dataset manifest", "not an lsbench dataset manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        reason = f"format version {manifest.get('format_version')}, this lsbench reads {FORMAT_VERSION}"
        raise ManifestError(f"{path} has {reason}", reason)
    check_manifest(manifest, path)
    return manifest, hashlib.sha256(data).hexdigest()


def shard_file(directory: Path, name: str) -> Path:
    """The file of shard ``name`` in ``directory``, refused (:class:`DatasetError`) when it leads outside the
    folder: a name with a separator or ``..``, an absolute one, or a symlink out (a dataset is one folder;
    nothing an lsbench command reads or rewrites through a manifest lies elsewhere)."""
    directory = Path(directory)
    if not name or Path(name).name != name or name in (".", "..") or "\\" in name:
        raise DatasetError(f"{directory}: shard name {name!r} leads outside the dataset folder; {REGENERATE}")
    path = directory / name
    if path.is_symlink() and not path.resolve().is_relative_to(directory.resolve()):
        raise DatasetError(
            f"{directory}: shard {name} is a symlink to {path.resolve()}, outside the dataset folder; "
            "put the file itself in the folder"
        )
    return path


@dataclass(frozen=True)
class Dataset:
    """A dataset folder opened once (:func:`open_dataset`)."""

    directory: Path
    manifest: dict[str, Any]
    sha256: str  # of manifest.json as read: identifies the dataset in results and leaderboards

    @property
    def name(self) -> str:
        return self.manifest.get("name", "?")

    @property
    def generator(self) -> str:
        return self.manifest.get("generator", "?")

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete", False))

    @property
    def splits(self) -> dict[str, int]:
        """split → number of samples."""
        return {s: e["num_samples"] for s, e in self.manifest["splits"].items()}

    @property
    def task(self) -> str:
        return self.config.get("task", "cls")

    @property
    def num_classes(self) -> int:
        if "num_classes" not in self.config:
            raise DatasetError(f"{self.directory}/{MANIFEST} does not record num_classes; regenerate the dataset")
        return int(self.config["num_classes"])

    def require_complete(self) -> Dataset:
        """This handle, if every shard is finished and the class count is recorded (training and
        evaluation need both; checked before any shard is read)."""
        if not self.complete:
            raise DatasetError(f"{self.directory} is incomplete: rerun its generate command to finish it")
        self.num_classes  # noqa: B018 - raises for a manifest without it
        return self

    def split(self, split: str) -> dict[str, Any]:
        """The manifest entry of ``split``; one line listing the splits there are otherwise."""
        if split not in self.manifest["splits"]:
            have = ", ".join(sorted(self.manifest["splits"])) or "none"
            raise UnknownSplitError(f"{self.directory} has no split {split!r} (it has: {have})")
        return self.manifest["splits"][split]

    def shard_paths(self, split: str) -> list[Path]:
        """Shard files of ``split`` in order, as listed by the manifest."""
        return [shard_file(self.directory, s["name"]) for s in self.split(split)["shards"]]

    def verify(self, split: str, *, skip_corrupt: bool = False, log=None) -> list[str]:
        """Check the split's shards against the manifest (size and sha256) before reading them.

        A missing or corrupt shard stops the run with its name, or with ``skip_corrupt`` is reported
        through ``log`` and returned, to be left out.
        """
        bad = []
        for rec in self.split(split)["shards"]:
            path = shard_file(self.directory, rec["name"])
            if not path.is_file() or path.stat().st_size != rec["bytes"] or sha256_file(path) != rec["sha256"]:
                bad.append(rec["name"])
        if bad and not skip_corrupt:
            raise DatasetError(
                f"{self.directory}: shard {bad[0]} is missing or corrupt ({len(bad)} bad in split {split!r}); "
                "regenerate it (rerun the generate command) or pass --skip-corrupt to leave it out"
            )
        if bad and log:
            log(f"skipping {len(bad)} corrupt shard(s): {', '.join(bad)}")
        return bad

    def summary(self) -> dict[str, Any]:
        """What ``lsbench info`` shows: name, generator, config and per-split counts and sizes."""
        m = self.manifest
        splits = {
            split: {
                "samples": entry["num_samples"],
                "groups": entry["num_groups"],
                "group_size": entry["group_size"],
                "shards": f"{len(entry['shards'])}/{entry['num_shards']}",
                "bytes": entry.get("bytes", 0),
            }
            for split, entry in m["splits"].items()
        }
        return {
            "name": m.get("name"),
            "generator": m.get("generator"),
            "lsbench_version": m.get("lsbench_version"),
            "created": m.get("created"),
            "complete": m.get("complete", False),
            "seed": m.get("seed"),
            "config": m.get("config", {}),
            "splits": splits,
            "manifest_sha256": self.sha256,
        }


def open_dataset(directory: Path, manifest: str = MANIFEST) -> Dataset:
    """Open a dataset folder: read and check its manifest once (``manifest`` names a rank's part)."""
    directory = Path(directory)
    data, sha = _parse_manifest(directory, manifest)
    return Dataset(directory, data, sha)


def read_manifest(directory: Path, name: str = MANIFEST) -> dict[str, Any]:
    """Load and sanity-check a manifest; :class:`DatasetError` with what to do otherwise."""
    return open_dataset(directory, name).manifest


def manifest_sha256(directory: Path) -> str:
    """Hash identifying a dataset (results and leaderboards refer to it)."""
    return open_dataset(directory).sha256


def summarize(directory: Path) -> dict[str, Any]:
    """What ``lsbench info`` shows (:meth:`Dataset.summary`)."""
    return open_dataset(directory).summary()


def _handle(dataset: Path | Dataset) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else open_dataset(dataset)


# --------------------------------------------------------------------------- reading


def webdataset(directory: Path | Dataset, split: str, *, decode: str = "numpy", **kwargs):
    """A ``webdataset.WebDataset`` pipeline over one split, split by node and by worker.

    Shards are assigned to ranks (``split_by_node``) and to DataLoader workers
    (``split_by_worker``) without overlap, in manifest order; groups never straddle shards, so
    per-group metrics stay streaming.  ``decode="numpy"`` yields :func:`decode_sample` dicts,
    ``"torch"`` tensors (:func:`to_torch`), ``"raw"`` the stored bytes.  Extra ``kwargs`` go to
    ``WebDataset`` (e.g. ``shardshuffle``).
    """
    import webdataset as wds

    urls = [str(p) for p in _handle(directory).shard_paths(split)]
    kwargs.setdefault("shardshuffle", False)
    kwargs.setdefault("nodesplitter", wds.split_by_node)
    kwargs.setdefault("workersplitter", wds.split_by_worker)
    kwargs.setdefault("empty_check", False)
    ds = wds.WebDataset(urls, **kwargs)
    if decode == "raw":
        return ds
    if decode == "numpy":
        return ds.map(decode_sample)
    if decode == "torch":
        return ds.map(decode_sample).map(to_torch)
    raise ValueError(f"decode must be 'numpy', 'torch' or 'raw', got {decode!r}")



def read_split(directory: Path | Dataset, split: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Decoded samples of ``split`` in order (single process; for tools and tests)."""
    n = 0
    for path in _handle(directory).shard_paths(split):
        try:
            for sample in iter_tar(path):
                if limit is not None and n >= limit:
                    return
                yield decode_sample(sample, path)
                n += 1
        except (tarfile.TarError, EOFError) as e:  # a damaged tar its manifest was rewritten over
            raise CorruptSampleError(f"{path} is not a readable tar ({e}); {REBUILD}") from None



# --------------------------------------------------------------------------- validation


def validate(directory: Path, *, check_images: bool = True) -> list[str]:
    """Check a dataset folder against the contract; returns every problem found (empty = valid).

    Checks the manifest, that every listed shard exists with the listed size and sha256, that
    each shard's samples follow the schema (and images decode, unless ``check_images=False``),
    that counts match the manifest, that groups are consecutive with one reference each, and
    that no stray or unlisted shard or temporary file is present.
    """
    directory = Path(directory)
    try:
        manifest = open_dataset(directory).manifest
    except DatasetError as e:
        return [str(e)]
    problems: list[str] = []
    if not manifest.get("complete", False):
        problems.append("manifest says the dataset is incomplete: rerun the generate command to finish it")
    listed: set[str] = set()
    for split, entry in sorted(manifest["splits"].items()):
        shards = entry.get("shards", [])
        if len(shards) != entry.get("num_shards"):
            problems.append(f"{split}: {len(shards)} shards listed, {entry.get('num_shards')} planned")
        counted = 0
        metas: list[tuple[str, dict[str, Any]]] = []
        keys: set[str] = set()
        for rec in shards:
            name = rec.get("name", "?")
            listed.add(name)
            try:
                path = shard_file(directory, name)
            except DatasetError as e:
                problems.append(f"{split}: {e}")
                continue
            if not path.is_file():
                problems.append(f"{split}: shard {name} is missing")
                continue
            if path.stat().st_size != rec.get("bytes"):
                problems.append(f"{split}: {name} has {path.stat().st_size} bytes, manifest says {rec.get('bytes')}")
            if sha256_file(path) != rec.get("sha256"):
                problems.append(f"{split}: {name} sha256 does not match the manifest (corrupt or modified)")
            n = 0
            try:
                for raw in iter_tar(path):
                    n += 1
                    where = f"{name}:{raw['__key__']}"
                    if raw["__key__"] in keys:
                        problems.append(f"{where}: duplicate key")
                    keys.add(raw["__key__"])
                    found, meta = check_sample(raw, where, check_images)
                    problems.extend(found)
                    if meta is not None:
                        metas.append((name, meta))
            except (tarfile.TarError, OSError, EOFError) as e:
                problems.append(f"{split}: {name} is not a readable tar ({e})")
            if n != rec.get("num_samples"):
                problems.append(f"{split}: {name} holds {n} samples, manifest says {rec.get('num_samples')}")
            counted += n
        if counted != entry.get("num_samples"):
            problems.append(f"{split}: {counted} samples found, manifest says {entry.get('num_samples')}")
        if len(metas) == counted:
            problems.extend(check_groups(split, entry, metas))
    for path in sorted(directory.iterdir()):
        if SHARD_RE.match(path.name) and path.name not in listed:
            problems.append(f"{path.name} is not listed in the manifest")
        elif TMP_MARK in path.name:
            problems.append(f"{path.name} is a leftover temporary file from an interrupted run")
    if manifest.get("complete", False):
        problems.extend(check_card(directory, manifest))
    return problems
