"""The bytes of a dataset: sample schema, deterministic shard writer and reader, sample checks.

A sample is a dict with ``__key__`` (no dots), one image (``png`` or ``jpg``, encoded bytes),
``json`` (metadata, a dict) and optionally ``cls`` (int) and ``mask.png`` (encoded uint8 ids).
The metadata always has ``group`` (int), ``variant`` (int) and ``reference`` (bool); variants of
one group are consecutive, never split across shards, and in a grouped split exactly one per
group is the reference.

Shards are written deterministically (fixed member order, mtime, owner and mode), to a
temporary name first and renamed when complete, so a folder never holds a half-written shard.
The folder around the shards — manifest, the dataset handle, validation — is :mod:`lsbench.dataset`.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CorruptSampleError, DatasetError
from .util import TMP_MARK, atomic_open

if TYPE_CHECKING:  # numpy is imported where pixels are: `lsbench info`/`validate --no-images` start without it
    import numpy as np

IMAGE_KEYS = ("png", "jpg")
OPTIONAL_KEYS = ("cls", "mask.png")
REQUIRED_META = {"group": int, "variant": int, "reference": bool}
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")


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
    with atomic_open(Path(path), "wb") as f:
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


# --------------------------------------------------------------------------- reading


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """Encode a uint8 ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB) array as PNG, deterministically.

    A minimal standard PNG (filter type 0, one zlib stream at ``level``): on the mostly flat
    images of synthetic datasets it is 2–3× faster than PIL's encoder at ``compress_level=1``
    and about as small; any PNG decoder reads it.
    """
    import numpy as np

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
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


_FIELDS = ("__key__", "json", *IMAGE_KEYS, *OPTIONAL_KEYS)
REBUILD = "delete that shard and rerun its generate command to rebuild it"


def decode_sample(sample: dict[str, Any], shard: str | Path | None = None) -> dict[str, Any]:
    """A raw webdataset sample (bytes per field) → decoded arrays plus metadata.

    Returns ``{"__key__", "image": (H, W[, C]) uint8, "meta": dict}`` plus ``"cls"`` (int) and
    ``"mask"`` ((H, W) uint8) when present.  Works as a ``webdataset`` ``.map`` stage.  A sample that
    breaks the schema (:func:`check_sample`: no image, metadata that is not a JSON object with
    ``group``/``variant``/``reference``, a ``cls`` that is no integer) or whose image does not decode is
    one :class:`~lsbench.errors.CorruptSampleError` line naming the shard (``shard``, else the sample's
    ``__url__``) and the key — a shard's sha256 only proves it is the file the manifest lists, and a
    manifest rewritten over a damaged shard lists it as it is.
    """
    key = sample.get("__key__", "?")

    def corrupt(problem: str) -> CorruptSampleError:
        where = shard if shard is not None else sample.get("__url__", "a shard")
        text = " ".join(f"{where}: sample {problem}".split())
        error = CorruptSampleError(f"{text}; {REBUILD}")
        error.shard, error.key, error.problem = str(where), key, text  # for a reader that skips it
        return error

    problems, meta = check_sample({k: v for k, v in sample.items() if k in _FIELDS}, key, check_images=False)
    if problems:
        raise corrupt(problems[0])
    def image(field: str) -> np.ndarray:
        try:
            return decode_image(sample[field])
        except Exception as e:  # noqa: BLE001 - any decoder failure (PIL, zlib, truncation) is a corrupt image
            raise corrupt(f"{key}: {field} does not decode ({type(e).__name__}: {str(e)[:120]})") from None

    out: dict[str, Any] = {"__key__": key, "image": image(next(k for k in IMAGE_KEYS if k in sample)), "meta": meta}
    if "cls" in sample:
        out["cls"] = int(sample["cls"])
    if "mask.png" in sample:
        out["mask"] = image("mask.png")
    for k in ("__url__", "__local_path__"):
        if k in sample:
            out[k] = sample[k]
    return out


def image_to_tensor(image: np.ndarray):
    """uint8 ``(H, W)`` / ``(H, W, C)`` array → float tensor ``(C, H, W)`` in ``[0, 1]``."""
    import numpy as np
    import torch

    img = torch.from_numpy(np.array(image, copy=True))  # decoded arrays may be read-only
    img = img.unsqueeze(0) if img.dim() == 2 else img.permute(2, 0, 1)
    return img.float().div_(255)


def to_torch(sample: dict[str, Any]) -> dict[str, Any]:
    """Decoded sample → ``image`` float tensor ``(C, H, W)`` in ``[0, 1]``, ``mask`` long ``(H, W)``."""
    import numpy as np
    import torch

    out = dict(sample)
    out["image"] = image_to_tensor(sample["image"])
    if "mask" in sample:
        out["mask"] = torch.from_numpy(np.array(sample["mask"], copy=True)).long()
    return out


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


# --------------------------------------------------------------------------- checks


def check_sample(
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


def check_groups(split: str, entry: dict[str, Any], metas: list[tuple[str, dict[str, Any]]]) -> list[str]:
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
