"""The dataset contract: sample schema, shard writer and reader, manifest, validation.

A dataset is a folder::

    DIR/manifest.json           name, lsbench version, generator config, seed, per-split shard list
    DIR/{split}-{000000}.tar    WebDataset shards

A sample is a dict with ``__key__`` (no dots), one image (``png`` or ``jpg``, encoded bytes),
``json`` (metadata, a dict) and optionally ``cls`` (int) and ``mask.png`` (encoded uint8 ids).
The metadata always has ``group`` (int), ``variant`` (int) and ``reference`` (bool); variants of
one group are consecutive, never split across shards, and in a grouped split exactly one per
group is the reference.

Shards are written deterministically (fixed member order, mtime, owner and mode), to a
temporary name first and renamed when complete, so a folder never holds a half-written shard.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import struct
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import DatasetError, DiskFullError

FORMAT = "lsbench-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_KEYS = ("png", "jpg")
OPTIONAL_KEYS = ("cls", "mask.png")
REQUIRED_META = {"group": int, "variant": int, "reference": bool}
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")
TMP_MARK = ".tmp-"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def check_split_name(split: str) -> None:
    if not _SPLIT_RE.match(split):
        raise DatasetError(f"split name {split!r} may only use letters, digits and '_'")


@dataclass(frozen=True)
class ShardSpec:
    """One shard to produce: samples ``[start, start + count)`` of ``split``."""

    split: str
    index: int
    start: int
    count: int

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard as listed in the manifest."""

    name: str
    num_samples: int
    sha256: str
    bytes: int


def plan_shards(split: str, num_samples: int, shard_size: int, group_size: int = 1) -> list[ShardSpec]:
    """Cut ``num_samples`` into shards of at most ``shard_size`` whole groups' worth of samples."""
    check_split_name(split)
    if num_samples % group_size:
        raise DatasetError(f"{split}: {num_samples} samples is not a whole number of groups of {group_size}")
    per_shard = (shard_size // group_size) * group_size
    if per_shard <= 0:
        raise DatasetError(f"shard size {shard_size} is smaller than one group ({group_size} samples)")
    return [
        ShardSpec(split, i, start, min(per_shard, num_samples - start))
        for i, start in enumerate(range(0, num_samples, per_shard))
    ]


# --------------------------------------------------------------------------- encoding


def encode_sample(sample: dict[str, Any]) -> dict[str, bytes | str]:
    """Turn a sample dict into the bytes stored in the tar (``cls`` → ASCII int, ``json`` → UTF-8)."""
    key = sample.get("__key__")
    if not isinstance(key, str) or not key or "." in key or "/" in key:
        raise DatasetError(f"sample key {key!r} must be a non-empty string without '.' or '/'")
    out: dict[str, bytes | str] = {"__key__": key}
    for k, v in sample.items():
        if k == "__key__":
            continue
        if k == "cls":
            out[k] = str(int(v)).encode()
        elif k == "json":
            out[k] = json.dumps(v, sort_keys=True, separators=(",", ":")).encode()
        elif isinstance(v, bytes | bytearray):
            out[k] = bytes(v)
        else:
            raise DatasetError(f"sample {key}: field {k!r} must be encoded bytes, got {type(v).__name__}")
    return out


@contextlib.contextmanager
def _atomic(path: Path, mode: str):
    """Write through a temporary sibling of ``path``, fsync it and rename it into place.

    On any error the temporary file is removed, so ``path`` is either complete or absent; a full
    disk becomes :class:`DiskFullError`.
    """
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"disk full while writing {path}: free some space and rerun the same command; "
                "finished shards are kept and it resumes"
            ) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_BLOCK = 512
_RECORD = 20 * _BLOCK


def _field(text: str, length: int) -> bytes:
    data = text.encode()
    if len(data) >= length:
        raise DatasetError(f"tar member name {text!r} is too long")
    return data + b"\0" * (length - len(data))


def _octal(value: int, length: int) -> bytes:
    return b"%0*o\0" % (length - 1, value)


def tar_header(name: str, size: int) -> bytes:
    """USTAR header of a regular file: mode 0444, owner ``lsbench``, uid/gid 0, mtime 0.

    Byte-identical to what ``tarfile`` writes for the same ``TarInfo`` in ``USTAR_FORMAT``
    (tested), at a fraction of the cost; fixed fields make shards reproducible.
    """
    owner = _field("lsbench", 32)
    head = b"".join((
        _field(name, 100), _octal(0o444, 8), _octal(0, 8), _octal(0, 8), _octal(size, 12), _octal(0, 12),
        b" " * 8, b"0", b"\0" * 100, b"ustar\x0000", owner, owner, b"\0" * 16, b"\0" * 155,
    ))
    head += b"\0" * (_BLOCK - len(head))
    checksum = sum(head)  # the checksum field counts as 8 spaces
    return head[:148] + b"%06o\0 " % checksum + head[156:]


def write_shard(path: Path, samples: Iterable[dict[str, Any]]) -> ShardRecord:
    """Write ``samples`` to ``path`` atomically and deterministically; return its record.

    Members are ``key.field`` in sorted field order (USTAR, mtime 0, owner ``lsbench``, mode
    0444), so the same samples always give the same bytes.  The file appears under its final name
    only once complete; on any error (including a full disk) the temporary file is removed.
    """
    count = 0
    sha = hashlib.sha256()
    size = 0
    with _atomic(Path(path), "wb") as f:
        for sample in samples:
            encoded = encode_sample(sample)
            key = encoded.pop("__key__")
            buf = bytearray()
            for field in sorted(encoded):
                data = encoded[field]
                buf += tar_header(f"{key}.{field}", len(data))
                buf += data
                buf += b"\0" * (-len(data) % _BLOCK)
            f.write(buf)
            sha.update(buf)
            size += len(buf)
            count += 1
        # End of archive: two zero blocks, padded to a whole record (as tarfile does).
        tail = b"\0" * (2 * _BLOCK)
        tail += b"\0" * (-(size + len(tail)) % _RECORD)
        f.write(tail)
        sha.update(tail)
        size += len(tail)
    return ShardRecord(Path(path).name, count, sha.hexdigest(), size)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_stale_temporaries(directory: Path, names: set[str] | None = None) -> list[Path]:
    """Delete temporary files left by a killed run (only those of shard ``names`` if given)."""
    stale = [
        p
        for p in Path(directory).glob(f".*{TMP_MARK}*")
        if p.is_file() and (names is None or p.name[1:].split(TMP_MARK)[0] in names)
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with _atomic(Path(path), "wb") as f:
        f.write(data)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with _atomic(Path(path), "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def read_manifest(directory: Path, name: str = MANIFEST) -> dict[str, Any]:
    """Load and sanity-check a manifest; :class:`DatasetError` with what to do otherwise."""
    directory = Path(directory)
    path = directory / name
    if not directory.is_dir():
        raise DatasetError(f"{directory} does not exist or is not a folder")
    if not path.is_file():
        raise DatasetError(f"{directory} has no {name}: not an lsbench dataset (make one with `lsbench generate`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); regenerate the dataset") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not an lsbench dataset manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path} has format version {manifest.get('format_version')}, this lsbench reads {FORMAT_VERSION}"
        )
    if not isinstance(manifest.get("splits"), dict):
        raise DatasetError(f"{path} has no 'splits' table")
    return manifest


def manifest_sha256(directory: Path) -> str:
    """Hash identifying a dataset (results and leaderboards refer to it)."""
    return sha256_file(Path(directory) / MANIFEST)


# --------------------------------------------------------------------------- reading


def shard_paths(directory: Path, split: str) -> list[Path]:
    """Shard files of ``split`` in order, as listed by the manifest."""
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        have = ", ".join(sorted(manifest["splits"])) or "none"
        raise DatasetError(f"{directory} has no split {split!r} (it has: {have})")
    return [Path(directory) / s["name"] for s in manifest["splits"][split]["shards"]]


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """Encode a uint8 ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB) array as PNG, deterministically.

    A minimal standard PNG (filter type 0, one zlib stream at ``level``): on the mostly flat
    images of synthetic datasets it is 2–3× faster than PIL's encoder at ``compress_level=1``
    and about as small; any PNG decoder reads it.
    """
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"encode_png takes uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    colour = 0 if image.ndim == 2 else 2
    rows = image.reshape(h, -1)
    raw = np.zeros((h, rows.shape[1] + 1), dtype=np.uint8)  # leading 0 per row = filter "none"
    raw[:, 1:] = rows

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes → ``(H, W)`` or ``(H, W, C)`` uint8 array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw webdataset sample (bytes per field) → decoded arrays plus metadata.

    Returns ``{"__key__", "image": (H, W[, C]) uint8, "meta": dict}`` plus ``"cls"`` (int) and
    ``"mask"`` ((H, W) uint8) when present.  Works as a ``webdataset`` ``.map`` stage.
    """
    out: dict[str, Any] = {"__key__": sample["__key__"]}
    for key in IMAGE_KEYS:
        if key in sample:
            out["image"] = decode_image(sample[key])
            break
    else:
        raise DatasetError(f"sample {sample['__key__']} has no png/jpg image")
    out["meta"] = json.loads(sample["json"])
    if "cls" in sample:
        out["cls"] = int(sample["cls"])
    if "mask.png" in sample:
        out["mask"] = decode_image(sample["mask.png"])
    for k in ("__url__", "__local_path__"):
        if k in sample:
            out[k] = sample[k]
    return out


def image_to_tensor(image: np.ndarray):
    """uint8 ``(H, W)`` / ``(H, W, C)`` array → float tensor ``(C, H, W)`` in ``[0, 1]``."""
    import torch

    img = torch.from_numpy(np.array(image, copy=True))  # decoded arrays may be read-only
    img = img.unsqueeze(0) if img.dim() == 2 else img.permute(2, 0, 1)
    return img.float().div_(255)


def to_torch(sample: dict[str, Any]) -> dict[str, Any]:
    """Decoded sample → ``image`` float tensor ``(C, H, W)`` in ``[0, 1]``, ``mask`` long ``(H, W)``."""
    import torch

    out = dict(sample)
    out["image"] = image_to_tensor(sample["image"])
    if "mask" in sample:
        out["mask"] = torch.from_numpy(np.array(sample["mask"], copy=True)).long()
    return out


def webdataset(directory: Path, split: str, *, decode: str = "numpy", **kwargs):
    """A ``webdataset.WebDataset`` pipeline over one split, split by node and by worker.

    Shards are assigned to ranks (``split_by_node``) and to DataLoader workers
    (``split_by_worker``) without overlap, in manifest order; groups never straddle shards, so
    per-group metrics stay streaming.  ``decode="numpy"`` yields :func:`decode_sample` dicts,
    ``"torch"`` tensors (:func:`to_torch`), ``"raw"`` the stored bytes.  Extra ``kwargs`` go to
    ``WebDataset`` (e.g. ``shardshuffle``).
    """
    import webdataset as wds

    urls = [str(p) for p in shard_paths(directory, split)]
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


def iter_tar(path: Path) -> Iterator[dict[str, Any]]:
    """Read a shard without webdataset: yields raw samples (field → bytes) in file order."""
    current: dict[str, Any] | None = None
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            if "." not in base:
                raise DatasetError(f"{path}: member {member.name!r} has no field extension")
            key, field = base.split(".", 1)
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            f = tar.extractfile(member)
            current[field] = f.read() if f else b""
    if current is not None:
        yield current


def read_split(directory: Path, split: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Decoded samples of ``split`` in order (single process; for tools and tests)."""
    n = 0
    for path in shard_paths(directory, split):
        for sample in iter_tar(path):
            if limit is not None and n >= limit:
                return
            yield decode_sample(sample)
            n += 1


# --------------------------------------------------------------------------- validation


def _check_sample(
    raw: dict[str, Any], where: str, check_images: bool = True
) -> tuple[list[str], dict[str, Any] | None]:
    problems: list[str] = []
    images = [k for k in IMAGE_KEYS if k in raw]
    if len(images) != 1:
        problems.append(f"{where}: needs exactly one image field (png or jpg), has {images or 'none'}")
    unknown = set(raw) - {"__key__", "json", *IMAGE_KEYS, *OPTIONAL_KEYS}
    if unknown:
        problems.append(f"{where}: unknown fields {sorted(unknown)}")
    meta = None
    if "json" not in raw:
        problems.append(f"{where}: missing json metadata")
    else:
        try:
            meta = json.loads(raw["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            problems.append(f"{where}: json metadata is not valid JSON")
        if meta is not None:
            if not isinstance(meta, dict):
                problems.append(f"{where}: json metadata is not an object")
                meta = None
            else:
                for field, typ in REQUIRED_META.items():
                    value = meta.get(field)
                    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                        problems.append(f"{where}: metadata field {field!r} missing or not {typ.__name__}")
                        meta = None
                        break
    if "cls" in raw:
        try:
            int(raw["cls"])
        except ValueError:
            problems.append(f"{where}: cls is not an integer")
    for key in (images + (["mask.png"] if "mask.png" in raw else [])) if check_images else []:
        try:
            decode_image(raw[key])
        except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt image
            problems.append(f"{where}: {key} does not decode ({type(e).__name__})")
    return problems, meta


def _check_groups(split: str, entry: dict[str, Any], metas: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Groups: consecutive, sized as declared, exactly one reference each in grouped splits."""
    problems: list[str] = []
    size = entry.get("group_size", 1)
    grouped = entry.get("grouped", False)
    seen: set[int] = set()
    i = 0
    while i < len(metas):
        shard, meta = metas[i]
        group = meta["group"]
        j = i
        while j < len(metas) and metas[j][1]["group"] == group:
            j += 1
        members = metas[i:j]
        if group in seen:
            problems.append(f"{split}: group {group} is not consecutive (seen again in {shard})")
        seen.add(group)
        if len({s for s, _ in members}) > 1:
            problems.append(f"{split}: group {group} straddles shards")
        if len(members) != size:
            problems.append(f"{split}: group {group} has {len(members)} samples, manifest says {size}")
        refs = sum(1 for _, m in members if m["reference"])
        if grouped and refs != 1:
            problems.append(f"{split}: group {group} has {refs} reference samples, needs exactly 1")
        i = j
    return problems


def validate(directory: Path, *, check_images: bool = True) -> list[str]:
    """Check a dataset folder against the contract; returns every problem found (empty = valid).

    Checks the manifest, that every listed shard exists with the listed size and sha256, that
    each shard's samples follow the schema (and images decode, unless ``check_images=False``),
    that counts match the manifest, that groups are consecutive with one reference each, and
    that no stray or unlisted shard or temporary file is present.
    """
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
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
            path = directory / name
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
                    found, meta = _check_sample(raw, where, check_images)
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
            problems.extend(_check_groups(split, entry, metas))
    for path in sorted(directory.iterdir()):
        if SHARD_RE.match(path.name) and path.name not in listed:
            problems.append(f"{path.name} is not listed in the manifest")
        elif TMP_MARK in path.name:
            problems.append(f"{path.name} is a leftover temporary file from an interrupted run")
    return problems


def summarize(directory: Path) -> dict[str, Any]:
    """What ``lsbench info`` shows: name, generator, config and per-split counts and sizes."""
    manifest = read_manifest(directory)
    splits = {
        split: {
            "samples": entry["num_samples"],
            "groups": entry["num_groups"],
            "group_size": entry["group_size"],
            "shards": f"{len(entry['shards'])}/{entry['num_shards']}",
            "bytes": entry.get("bytes", 0),
        }
        for split, entry in manifest["splits"].items()
    }
    return {
        "name": manifest.get("name"),
        "generator": manifest.get("generator"),
        "lsbench_version": manifest.get("lsbench_version"),
        "created": manifest.get("created"),
        "complete": manifest.get("complete", False),
        "seed": manifest.get("seed"),
        "config": manifest.get("config", {}),
        "splits": splits,
        "manifest_sha256": manifest_sha256(directory),
    }
