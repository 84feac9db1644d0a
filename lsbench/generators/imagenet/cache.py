"""Per-photo cache of the stage outputs, so a group's variants and every rerun cost only a paste.

One ``.npz`` per (photo bytes, stage settings): ``<cache>/<key[:2]>/<key>.npz`` holding the
outcome as JSON (accepted: boxes, scores, backends; rejected: stage, reason, scores) and, when
accepted, the inpainted background and the object's RGB and alpha as PNG.  Entries are written
atomically (temporary name, fsync, rename; a full disk is one line); an unreadable entry counts
as a miss and is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...shards import decode_image, encode_png
from ...util import write_bytes_atomic
from .compose import Cutout


@dataclass(frozen=True)
class Prepared:
    """A photo that passed every stage: what composing its variants needs, plus its audit trail."""

    background: np.ndarray  # (H, W, 3) uint8, the object removed
    cutout: Cutout
    info: dict[str, Any]  # detection/segmentation boxes and scores, backends, sizes


@dataclass(frozen=True)
class Rejection:
    stage: str  # "load", "detect", "segment" or "inpaint"
    reason: str
    scores: dict[str, float]


Outcome = Prepared | Rejection


def file_fingerprint(path: str | Path) -> tuple:
    """What identifies a checkpoint's content cheaply: its resolved path with the size and mtime of
    the file, or of every file in the folder (a transformers checkpoint is a folder: overwriting a
    file in it changes no folder metadata).  Hashable; keys both the stage cache and the model cache."""
    root = Path(path).resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return str(root), tuple(
        (str(p.relative_to(root)) if p != root else "", p.stat().st_size, p.stat().st_mtime_ns) for p in files
    )


def cache_key(photo_bytes: bytes, settings: dict[str, Any]) -> str:
    h = hashlib.sha256(photo_bytes)
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


class StageCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> Outcome | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                meta = json.loads(z["meta"].tobytes())
                if meta["status"] == "rejected":
                    return Rejection(meta["stage"], meta["reason"], meta["scores"])
                background = decode_image(z["background"].tobytes())
                rgb, alpha = decode_image(z["rgb"].tobytes()), decode_image(z["alpha"].tobytes())
            return Prepared(background, Cutout(rgb, alpha, tuple(meta["origin"])), meta["info"])
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed, never trusted
            return None

    def put(self, key: str, outcome: Outcome) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(outcome, Rejection):
            arrays = {"meta": {"status": "rejected", "stage": outcome.stage, "reason": outcome.reason,
                               "scores": outcome.scores}}
        else:
            c = outcome.cutout
            arrays = {
                "meta": {"status": "ok", "origin": list(c.origin), "info": outcome.info},
                "background": encode_png(outcome.background),
                "rgb": encode_png(c.rgb),
                "alpha": encode_png(c.alpha),
            }
        payload = {k: np.frombuffer(json.dumps(v).encode() if k == "meta" else v, np.uint8) for k, v in arrays.items()}
        buf = io.BytesIO()
        np.savez(buf, **payload)
        write_bytes_atomic(path, buf.getvalue())
