"""Per-sample records of an evaluation: clean vs locally scaled accuracy, crop cuts, and predictions.

:class:`SampleLog` sees every evaluated batch (probabilities, labels, metadata) and keeps

- sums that ranks reduce like the metrics' (``accuracy_clean``: the scale-1.0 references of the
  groups, ``accuracy_scaled``: every other variant, and the drop between them — timm's results CSVs
  compare a clean ImageNet with its variants the same way; ``objects_cut``: object boxes a model's
  centre crop does not keep whole, :meth:`~.preprocess.Preprocess.inside`);
- with ``save=True``, one record per sample: key, group, variant, reference flag, per-object scales
  and whether each stays inside the input, label, top-5 classes and probabilities, p(label).

The records are written beside the result JSON as gzip-compressed JSON lines
(``{result}.predictions.jsonl.gz``, atomically, rank 0 after gathering every rank's), so any later
analysis reads predictions without re-running the model.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..util import atomic_open

SUFFIX = ".predictions.jsonl.gz"


class SampleLog:
    def __init__(self, task: str, save: bool, device: torch.device):
        self.task, self.save = task, save
        # ref_correct, ref_count, var_correct, var_count, objects, objects_cut, samples_with_cut
        self.sums = torch.zeros(7, dtype=torch.float64, device=device)
        self.records: list[dict[str, Any]] = []

    def update(self, probs: torch.Tensor, y: torch.Tensor, metas: list[dict[str, Any]]) -> None:
        inside = [m.get("__inside__") or [] for m in metas]
        cut = [len(f) - sum(f) for f in inside]
        self.sums[4] += sum(len(f) for f in inside)
        self.sums[5] += sum(cut)
        self.sums[6] += sum(c > 0 for c in cut)
        if self.task != "cls":
            return
        correct = (probs.argmax(dim=1) == y).double()
        ref = torch.tensor([bool(m.get("reference")) for m in metas], device=probs.device)
        self.sums[0] += correct[ref].sum()
        self.sums[1] += ref.sum()
        self.sums[2] += correct[~ref].sum()
        self.sums[3] += (~ref).sum()
        if not self.save:
            return
        k = min(5, probs.shape[1])
        top_p, top_c = probs.topk(k, dim=1)
        p_label = probs.gather(1, y[:, None])[:, 0]
        for i, m in enumerate(metas):
            self.records.append({
                "key": m.get("__key__"), "group": m.get("group"), "variant": m.get("variant"),
                "reference": bool(m.get("reference")), "scales": m.get("scales"), "inside": inside[i],
                "label": int(y[i]), "top5": top_c[i].tolist(), "top5_p": [round(v, 6) for v in top_p[i].tolist()],
                "p_label": round(float(p_label[i]), 6),
            })

    def compute(self, sums: torch.Tensor) -> dict[str, Any]:
        """The metrics of the reduced ``sums`` (:func:`~.metrics.all_reduce_state` of :attr:`sums`)."""
        s = sums.tolist()
        clean = s[0] / s[1] if s[1] else None
        scaled = s[2] / s[3] if s[3] else None
        return {
            "accuracy_clean": clean, "accuracy_scaled": scaled,
            "accuracy_drop": clean - scaled if clean is not None and scaled is not None else None,
            "objects_boxed": round(s[4]), "objects_cut": round(s[5]), "samples_with_cut_object": round(s[6]),
        }


def gather(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's records on every rank (one ``all_gather_object``; a copy without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(records)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in part]


def predictions_path(result_path: Path) -> Path:
    return result_path.with_name(result_path.name.removesuffix(".json") + SUFFIX)


def write_predictions(path: Path, records: list[dict[str, Any]]) -> None:
    """Gzip JSON lines, atomically (complete under its final name or absent); byte-identical per content."""
    with atomic_open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
        for r in records:
            gz.write((json.dumps(r, separators=(",", ":")) + "\n").encode())


def read_predictions(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a ``*.predictions.jsonl.gz`` file, in order."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
