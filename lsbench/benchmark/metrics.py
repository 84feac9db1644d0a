"""Streaming evaluation metrics, exact under distributed evaluation.

Every metric is kept as **sums and counts** in a dict of float64 tensors (:meth:`Metrics.state`).
Ranks of a ``torchrun`` evaluation each accumulate their own shards; summing the states
(:func:`all_reduce_state`, or :meth:`Metrics.merge`) and then computing ratios
(:meth:`Metrics.compute_from`) gives exactly the numbers of a single process over the whole
split — averages are never averaged.

What :meth:`Metrics.compute` reports (the ``metrics`` object of ``result.schema.json``):

* ``accuracy`` — top-1 accuracy (cls) or pixel accuracy (seg), a fraction in [0, 1].
* ``miou`` / ``per_class_iou`` (seg) — from a K×K confusion matrix; a class absent from both the
  predictions and the targets has IoU ``None`` and is left out of the mean.
* ``inve`` — the paper's Eq. 24, ``mean over groups and non-reference variants of
  ||p(I_ref) − p(I_s)||²`` (softmax probabilities; squared L2 over classes, for seg averaged over
  pixels), **multiplied by 100**: the stored number is in the paper's table unit (×10⁻²), so
  ``inve = 13.71`` means a mean squared distance of 0.1371, as in the paper's Table 2.
* ``inve_code`` — the form of the paper's code, ``mean ||p_ref − p_s||₂ / ||p_ref||₂`` (for seg
  the norms are over the flattened class×pixel map); a plain ratio, **not** rescaled.
* ``eque`` / ``eque_code`` — Eq. 23 and the code's form, accumulated from
  :func:`equivariance_errors` with :meth:`Metrics.add_equivariance`; plain numbers (the paper's
  Table 1 unit), ``None`` when not measured.  ``eque_draws``: draws Φ per image (0: not recorded).
* ``per_scale`` — per scale bin (see :class:`ScaleBins`): ``count``, ``accuracy`` and
  ``p_correct``, the mean probability of the correct class (paper Fig. 8).  A sample's scale is the
  geometric mean of ``meta["scales"]`` (1.0 when absent).  For seg a sample contributes its pixel
  accuracy and its mean over pixels of p(target class).  ``accuracy_std_across_scales`` is the
  population std of the per-bin accuracies over non-empty bins (the paper's "Overall ± std" of
  Table 3: pstdev(91.64, 96.32, 93.84) = 1.91), in the unit of ``accuracy`` (a fraction).
* ``num_samples``, ``num_groups``, and two extra audit fields: ``groups_without_reference``
  (groups skipped by InvE) and ``scale_out_of_range`` (samples outside every scale bin; they
  still count for ``accuracy``).

**Groups and streaming InvE.**  InvE compares each variant with the reference of its group
(``meta["group"]`` within ``meta["split"]``; ``meta["reference"]`` marks the one reference).
The samples of a group are consecutive in each reader's stream, but a batch boundary may split a
group, and a ``DataLoader`` with ``W`` workers interleaves the batches of ``W`` streams round
robin.  :class:`Metrics` therefore keeps a group open across :meth:`~Metrics.update` calls: a
group followed by another group inside a batch is complete; the last group of a batch stays open
until ``streams`` further calls have not continued it.  ``streams`` must be at least the
DataLoader's ``num_workers`` (default 8); a larger value only keeps a few more reference
probability maps in memory, never changes a result.  A group that reappears after it was closed
raises :class:`~lsbench.errors.DataError` rather than giving wrong numbers.  Only the reference
is kept (plus variants seen before it), and each variant is scored as soon as its reference is
known — no second pass.  :meth:`Metrics.finalize` closes the open groups; :meth:`Metrics.state`
and :meth:`Metrics.compute` call it.

Typical use::

    metrics = Metrics("cls", num_classes, "auto", streams=max(1, workers), device=device)
    for x, y, metas in loader:
        probs = torch.softmax(model(x).float(), dim=1)
        metrics.update(probs, y, metas)
        # seg: metrics.add_equivariance(*equivariance_errors(model_fn, x, draws=4), draws=4)
    state = all_reduce_state(metrics.state())     # sums over ranks (no-op without torch.distributed)
    result = metrics.compute_from(state)
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from .. import monotone
from ..errors import ConfigError, DataError

__all__ = [
    "AUTO_EDGES",
    "IMAGENET_SCALES",
    "TABLE3_EDGES",
    "Metrics",
    "ScaleBins",
    "all_reduce_state",
    "confusion_matrix",
    "equivariance_errors",
    "iou_from_confusion",
    "invariance_errors",
    "sample_scale",
]

Task = Literal["cls", "seg"]
State = dict[str, Tensor]

#: Default ("auto") scale-bin edges: MNIST-LS digit scales span [0.4, 3.0]; the edges put the
#: ImageNet-LS range [0.7, 1.3] in two bins either side of 1.0, and every reference sample (all
#: scales 1.0) in the bin starting at 1.0.
AUTO_EDGES: tuple[float, ...] = (0.4, 0.7, 1.0, 1.3, 1.6, 2.0, 3.0)
#: The seven discrete local scales of ImageNet-LS (and of the paper's Fig. 8).
IMAGENET_SCALES: tuple[float, ...] = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
#: The scale brackets of the paper's Table 3.
TABLE3_EDGES: tuple[float, ...] = (0.4, 1.0, 2.0, 3.0)

_EDGE_TOL = 1e-9  # a scale this close to an edge belongs to the bin starting at that edge
_VALUE_TOL = 1e-6  # a scale this close to a discrete value matches it


# --------------------------------------------------------------------------------------------
# Scale bins
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleBins:
    """How samples are binned by scale for the per-scale table.

    ``kind="edges"``: ``points`` are increasing edges ``e0 < e1 < … < en``; bin ``i`` is
    ``[e_i, e_{i+1})``, the last one closed ``[e_{n-1}, e_n]``.  ``kind="values"``: ``points``
    are discrete scales; a sample belongs to the value within 1e-6 of its scale.  Samples that
    fall in no bin are counted as out of range.
    """

    kind: Literal["edges", "values"]
    points: tuple[float, ...]

    def __post_init__(self) -> None:
        pts = self.points
        if self.kind == "edges":
            if len(pts) < 2 or any(b <= a for a, b in zip(pts, pts[1:])):
                raise ConfigError(f"scale-bin edges must be at least two increasing numbers, got {list(pts)}")
        elif self.kind == "values":
            if not pts or any(b - a <= 2 * _VALUE_TOL for a, b in zip(pts, pts[1:])):
                raise ConfigError(f"scale-bin values must be distinct increasing numbers, got {list(pts)}")
        else:
            raise ConfigError(f"scale-bin kind must be 'edges' or 'values', got {self.kind!r}")

    @classmethod
    def parse(cls, spec: str | ScaleBins | Mapping[str, Sequence[float]] | Sequence[float]) -> ScaleBins:
        """``"auto"`` (:data:`AUTO_EDGES`), ``"imagenet"`` (:data:`IMAGENET_SCALES` as values),
        ``"table3"`` (:data:`TABLE3_EDGES`), ``{"edges": [...]}``, ``{"values": [...]}``, a plain
        sequence (edges) or a :class:`ScaleBins`."""
        if isinstance(spec, ScaleBins):
            return spec
        if isinstance(spec, str):
            presets = {"auto": ("edges", AUTO_EDGES), "imagenet": ("values", IMAGENET_SCALES),
                       "table3": ("edges", TABLE3_EDGES)}
            if spec not in presets:
                raise ConfigError(f"unknown scale bins {spec!r}; use one of {', '.join(presets)} or explicit edges")
            kind, pts = presets[spec]
            return cls(kind, pts)  # type: ignore[arg-type]
        if isinstance(spec, Mapping):
            if len(spec) != 1 or next(iter(spec)) not in ("edges", "values"):
                raise ConfigError(f"scale bins must be {{'edges': [...]}} or {{'values': [...]}}, got {dict(spec)!r}")
            kind, pts = next(iter(spec.items()))
            pts = [float(p) for p in pts]
            return cls(kind, tuple(sorted(pts) if kind == "values" else pts))  # edges must come in order
        return cls("edges", tuple(float(p) for p in spec))

    def __len__(self) -> int:
        return len(self.points) - 1 if self.kind == "edges" else len(self.points)

    def index(self, scale: float) -> int:
        """Bin of ``scale``, or -1 if it falls in none."""
        pts = self.points
        if self.kind == "values":
            i = min(range(len(pts)), key=lambda k: abs(pts[k] - scale))
            return i if abs(pts[i] - scale) <= _VALUE_TOL else -1
        if scale < pts[0] - _EDGE_TOL or scale > pts[-1] + _EDGE_TOL:
            return -1
        return min(bisect.bisect_right(pts, scale + _EDGE_TOL) - 1, len(pts) - 2)

    def describe(self, i: int) -> tuple[str, float, float]:
        """``(label, lo, hi)`` of bin ``i``: ``"[0.4, 0.7)"`` (last ``"[2, 3]"``) or ``"0.7"``."""
        if self.kind == "values":
            v = self.points[i]
            return f"{v:g}", v, v
        lo, hi = self.points[i], self.points[i + 1]
        close = "]" if i == len(self) - 1 else ")"
        return f"[{lo:g}, {hi:g}{close}", lo, hi


def sample_scale(meta: Mapping[str, Any]) -> float:
    """A sample's scale: the geometric mean of ``meta["scales"]`` (per-object factors), 1.0 if
    absent or empty; exact (no rounding) when all factors are equal."""
    scales = [float(s) for s in meta.get("scales") or ()]
    if not scales:
        return 1.0
    if any(not (s > 0 and math.isfinite(s)) for s in scales):
        raise DataError(f"sample scales must be positive finite numbers, got {scales} (group {meta.get('group')})")
    if all(s == scales[0] for s in scales):
        return scales[0]
    return math.exp(math.fsum(math.log(s) for s in scales) / len(scales))


# --------------------------------------------------------------------------------------------
# Pure metric functions
# --------------------------------------------------------------------------------------------


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(K, K)`` float64 counts, rows = target class, columns = predicted class.

    ``pred``, ``target``: long tensors of the same shape (any), values in ``[0, K)``.
    """
    k = num_classes
    idx = target.reshape(-1) * k + pred.reshape(-1)
    return torch.bincount(idx, minlength=k * k).reshape(k, k).to(torch.float64)


def iou_from_confusion(confusion: Tensor) -> tuple[list[float | None], float | None]:
    """Per-class IoU ``TP / (TP + FP + FN)`` and their mean from a ``(K, K)`` confusion matrix.

    A class absent from both targets and predictions (zero union) gets ``None`` and is excluded
    from the mean; the mean is ``None`` if every class is absent.
    """
    conf = confusion.detach().to("cpu", torch.float64)
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp
    per_class = [float(t / u) if u > 0 else None for t, u in zip(tp.tolist(), union.tolist())]
    present = [v for v in per_class if v is not None]
    return per_class, (math.fsum(present) / len(present) if present else None)


def invariance_errors(ref: Tensor, variants: Tensor) -> tuple[Tensor, Tensor]:
    """InvE terms of ``n`` variants against their reference.

    ``ref``: probabilities ``(K,)`` or ``(K, H, W)``; ``variants``: ``(n, K)`` or ``(n, K, H, W)``.
    Returns float64 ``(n,)`` tensors: the Eq. 24 term ``Σ_classes (p_ref − p_s)²`` (averaged over
    pixels for maps) and the code form ``||p_ref − p_s||₂ / ||p_ref||₂`` (norms over all entries).
    """
    r = ref.detach().to(torch.float64)
    d = variants.detach().to(torch.float64) - r
    sq = d.pow(2).sum(1).reshape(len(d), -1).mean(1)
    code = d.reshape(len(d), -1).norm(dim=1) / r.norm()
    return sq, code


def _prob_map(out: Tensor, batch: int) -> Tensor:
    if out.dim() != 4 or out.shape[0] != batch:
        raise ConfigError(f"model_fn must return probability maps (B={batch}, K, H, W), got {tuple(out.shape)}")
    return out if out.dtype in (torch.float32, torch.float64) else out.float()


def equivariance_errors(
    model_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    draws: int = 4,
    strength: float = 0.25,
    grid: int | tuple[int, int] = 4,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-image local-scale equivariance error (paper Eq. 23) and the paper code's form.

    ``model_fn`` maps images ``(B, C, H, W)`` to class-probability maps ``(B, K, h, w)`` (the
    caller applies softmax; ``h, w`` may differ from ``H, W``).  For each of ``draws`` scalings
    ``Φ ~ Ω`` (:func:`lsbench.monotone.sample` with ``grid``/``strength``, drawn on
    ``generator``'s device and moved to ``x``'s) it compares ``S(M(I); Φ)`` (the probability map
    warped bilinearly, :func:`lsbench.monotone.warp`) with ``M(S(I; Φ))``; with
    ``Δ² = Σ_classes (S(M(I)) − M(S(I)))²`` per pixel of the ``h×w`` map it returns float64
    ``(B,)`` tensors

    * ``sq``: mean over draws of ``mean_pixels Δ²`` (Eq. 23, unitless probabilities²), and
    * ``code``: mean over draws of ``sqrt(Σ_pixels Δ² / (h·w))`` (the paper's code).

    Runs without gradients.  ``strength=0`` draws the identity, for which both are exactly 0.
    """
    if draws < 1:
        raise ConfigError(f"draws must be at least 1, got {draws}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ConfigError(f"x must be a float image batch (B, C, H, W), got {tuple(x.shape)} {x.dtype}")
    b = x.shape[0]
    gen_device = generator.device if generator is not None else x.device
    with torch.no_grad():
        base = _prob_map(model_fn(x), b)
        sq = torch.zeros(b, dtype=torch.float64, device=x.device)
        code = torch.zeros_like(sq)
        for _ in range(draws):
            phi = monotone.sample(b, grid, strength, generator, device=gen_device, dtype=torch.float64).to(x.device)
            warped_out = monotone.warp(base, phi)
            out_of_warped = _prob_map(model_fn(monotone.warp(x, phi)), b)
            if out_of_warped.shape != warped_out.shape:
                raise ConfigError(
                    f"model_fn output shape changed under warping: {tuple(warped_out.shape)} vs "
                    f"{tuple(out_of_warped.shape)}"
                )
            d2 = (warped_out - out_of_warped).to(torch.float64).pow(2).sum(1).flatten(1).mean(1)
            sq += d2
            code += d2.sqrt()
    return sq / draws, code / draws


# --------------------------------------------------------------------------------------------
# Streaming group buffer (InvE)
# --------------------------------------------------------------------------------------------


GroupKey = tuple[Hashable, Hashable]


@dataclass
class _OpenGroup:
    ref: Tensor | None = None
    pending: list[Tensor] = field(default_factory=list)
    last_call: int = 0


def _group_key(meta: Mapping[str, Any]) -> GroupKey | None:
    return None if meta.get("group") is None else (meta.get("split"), meta["group"])


def _runs(keys: Sequence[GroupKey | None]) -> list[tuple[GroupKey | None, int, int]]:
    """Maximal runs ``(key, start, stop)`` of equal consecutive keys."""
    runs: list[tuple[GroupKey | None, int, int]] = []
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            runs.append((keys[start], start, i))
            start = i
    return runs


class _GroupBuffer:
    """Open groups of the stream (see the module docstring); pairs variants with references.

    :meth:`push` returns ``(pairs, closed)``: ``pairs`` a list of ``(ref, variants)`` to score
    now, ``closed`` one ``has_reference`` flag per group that was closed.
    """

    def __init__(self, streams: int) -> None:
        if streams < 1:
            raise ConfigError(f"streams must be at least 1, got {streams}")
        self.streams = streams
        self.open: dict[GroupKey, _OpenGroup] = {}
        self.closed: set[GroupKey] = set()
        self.calls = 0

    def push(
        self, keys: Sequence[GroupKey | None], is_ref: Sequence[bool], probs: Tensor
    ) -> tuple[list[tuple[Tensor, Tensor]], list[bool]]:
        self.calls += 1
        pairs: list[tuple[Tensor, Tensor]] = []
        closed: list[bool] = []
        runs = _runs(keys)
        for n, (key, start, stop) in enumerate(runs):
            if key is None:
                continue
            group = self._open(key)
            refs = [i for i in range(start, stop) if is_ref[i]]
            if len(refs) + (group.ref is not None) > 1:
                raise DataError(f"group {key[1]!r} (split {key[0]!r}) has more than one reference sample")
            if refs:
                group.ref = probs[refs[0]].detach().clone()
                if group.pending:
                    pairs.append((group.ref, torch.stack(group.pending)))
                    group.pending = []
            rows = probs[start:stop] if not refs else probs[[i for i in range(start, stop) if not is_ref[i]]]
            if len(rows):
                if group.ref is not None:
                    pairs.append((group.ref, rows))
                else:
                    group.pending.extend(rows.detach().clone().unbind(0))
            if n < len(runs) - 1:  # another group follows in this batch: this one is complete
                closed.append(self._close(key))
        stale = [k for k, g in self.open.items() if self.calls - g.last_call >= self.streams]
        closed += [self._close(k) for k in stale]
        return pairs, closed

    def flush(self) -> list[bool]:
        return [self._close(k) for k in list(self.open)]

    def _open(self, key: GroupKey) -> _OpenGroup:
        group = self.open.get(key)
        if group is None:
            if key in self.closed:
                raise DataError(
                    f"group {key[1]!r} (split {key[0]!r}) reappears after it was closed: the samples of a group "
                    f"must be consecutive per reader, and streams ({self.streams}) must be at least the "
                    "DataLoader's num_workers"
                )
            group = self.open[key] = _OpenGroup()
        group.last_call = self.calls
        return group

    def _close(self, key: GroupKey) -> bool:
        group = self.open.pop(key)
        self.closed.add(key)
        return group.ref is not None


# --------------------------------------------------------------------------------------------
# The accumulator
# --------------------------------------------------------------------------------------------


class Metrics:
    """Streaming accumulator of every evaluation metric (see the module docstring).

    ``task``: ``"cls"`` or ``"seg"``; ``num_classes``: K; ``scale_bins``: a :class:`ScaleBins`
    spec (:meth:`ScaleBins.parse`); ``streams``: interleaved reader streams to tolerate (≥ the
    DataLoader's ``num_workers``); ``ignore_index``: seg target value to skip (``None``: none);
    ``device``: where the state tensors live (put it on the GPU the probabilities are on to
    avoid host syncs).
    """

    def __init__(
        self,
        task: Task,
        num_classes: int,
        scale_bins: str | ScaleBins | Mapping[str, Sequence[float]] | Sequence[float] = "auto",
        *,
        streams: int = 8,
        ignore_index: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if task not in ("cls", "seg"):
            raise ConfigError(f"task must be 'cls' or 'seg', got {task!r}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        self.task = task
        self.num_classes = int(num_classes)
        self.bins = ScaleBins.parse(scale_bins)
        self.ignore_index = ignore_index
        self.device = torch.device(device)
        self._groups = _GroupBuffer(streams)
        self._state = self.empty_state()

    # ---- state --------------------------------------------------------------------------

    def empty_state(self) -> State:
        """Zero state: scalars ``()`` and per-bin ``(n_bins,)`` float64 sums and counts, plus the
        ``(K, K)`` ``confusion`` matrix for seg."""
        def zeros(*shape: int) -> Tensor:
            with torch.inference_mode(False):  # normal tensors: updatable inside and outside inference mode
                return torch.zeros(shape, dtype=torch.float64, device=self.device)

        n = len(self.bins)
        state = {
            name: zeros()
            for name in ("samples", "groups", "groups_without_reference", "correct", "total", "scale_out_of_range",
                         "inve_sq_sum", "inve_code_sum", "inve_pairs",
                         "eque_sq_sum", "eque_code_sum", "eque_images", "eque_draws")
        }
        state.update(scale_count=zeros(n), scale_correct=zeros(n), scale_p_correct=zeros(n))
        if self.task == "seg":
            state["confusion"] = zeros(self.num_classes, self.num_classes)
        return state

    def finalize(self) -> None:
        """Close every open group (scoring nothing new: variants are scored as they arrive).
        Call at the end of the stream; :meth:`state` and :meth:`compute` call it."""
        self._count_closed(self._groups.flush())

    def state(self) -> State:
        """A copy of the (finalized) state: a dict of float64 tensors to sum across ranks."""
        self.finalize()
        return {k: v.clone() for k, v in self._state.items()}

    def merge(self, other: Mapping[str, Tensor]) -> None:
        """Add another accumulator's :meth:`state` (same task, classes and bins) into this one."""
        _check_compatible(self._state, other)
        for k, v in other.items():
            self._state[k] += v.to(self.device, torch.float64)

    # ---- accumulation -------------------------------------------------------------------

    def update(self, probs: Tensor, targets: Tensor, metas: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Add one batch.

        ``probs``: softmax probabilities ``(B, K)`` (cls) or ``(B, K, H, W)`` (seg);
        ``targets``: long ``(B,)`` or ``(B, H, W)``; ``metas``: ``B`` metadata dicts
        (``group``, ``variant``, ``reference``, ``scales``, ``split``), or ``None`` for ungrouped
        samples at scale 1.0.
        """
        b = self._check(probs, targets, metas)
        metas = list(metas) if metas is not None else [{}] * b
        probs = probs.detach()
        targets = targets.to(probs.device)
        bins = [self.bins.index(sample_scale(m)) for m in metas]
        correct, p_correct, weight = (self._update_cls if self.task == "cls" else self._update_seg)(probs, targets)
        self._add_scales(bins, correct, p_correct, weight)
        self._state["samples"] += b
        keys = [_group_key(m) for m in metas]
        pairs, closed = self._groups.push(keys, [bool(m.get("reference", False)) for m in metas], probs)
        for ref, variants in pairs:
            sq, code = invariance_errors(ref, variants)
            self._state["inve_sq_sum"] += sq.sum().to(self.device)
            self._state["inve_code_sum"] += code.sum().to(self.device)
            self._state["inve_pairs"] += len(sq)
        self._count_closed(closed)

    def add_equivariance(self, sq: Tensor, code: Tensor, draws: int | None = None) -> None:
        """Add per-image EquE values ``(B,)`` from :func:`equivariance_errors` (``draws``: the
        number of draws Φ they averaged, for the ``eque_draws`` field; ``None``: not recorded)."""
        if sq.shape != code.shape or sq.dim() != 1:
            raise ConfigError(f"sq and code must be (B,) tensors, got {tuple(sq.shape)} and {tuple(code.shape)}")
        self._state["eque_sq_sum"] += sq.detach().to(self.device, torch.float64).sum()
        self._state["eque_code_sum"] += code.detach().to(self.device, torch.float64).sum()
        self._state["eque_images"] += len(sq)
        self._state["eque_draws"] += len(sq) * (draws or 0)

    def _check(self, probs: Tensor, targets: Tensor, metas: Sequence[Mapping[str, Any]] | None) -> int:
        want = 2 if self.task == "cls" else 4
        if probs.dim() != want or probs.shape[1] != self.num_classes:
            raise ConfigError(
                f"{self.task} probabilities must be {'(B, K)' if want == 2 else '(B, K, H, W)'} with "
                f"K={self.num_classes}, got {tuple(probs.shape)}"
            )
        expected = (probs.shape[0],) + tuple(probs.shape[2:])
        if tuple(targets.shape) != expected:
            raise ConfigError(f"targets must have shape {expected} to match probabilities, got {tuple(targets.shape)}")
        if metas is not None and len(metas) != probs.shape[0]:
            raise ConfigError(f"got {len(metas)} metadata dicts for a batch of {probs.shape[0]}")
        return probs.shape[0]

    def _check_labels(self, targets: Tensor, valid: Tensor | None = None) -> None:
        bad = (targets < 0) | (targets >= self.num_classes)
        if valid is not None:
            bad &= valid
        if bool(bad.any()):
            raise DataError(f"target labels must lie in [0, {self.num_classes}), got values outside it")

    def _update_cls(self, probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample correct (0/1), p(target) and weight (1), all float64 ``(B,)``."""
        self._check_labels(targets)
        t = targets.long()
        correct = (probs.argmax(1) == t).to(torch.float64)
        p_correct = probs.gather(1, t[:, None]).squeeze(1).to(torch.float64)
        self._state["correct"] += correct.sum().to(self.device)
        self._state["total"] += len(t)
        return correct, p_correct, torch.ones_like(correct)

    def _update_seg(self, probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample pixel accuracy, mean p(target) over pixels, and weight (0 if no valid pixel)."""
        t = targets.long()
        valid = torch.ones_like(t, dtype=torch.bool) if self.ignore_index is None else t != self.ignore_index
        self._check_labels(t, valid)
        t = t.where(valid, 0)
        pred = probs.argmax(1)
        hits = ((pred == t) & valid).flatten(1).sum(1).to(torch.float64)
        n_valid = valid.flatten(1).sum(1).to(torch.float64)
        p_t = (probs.gather(1, t[:, None]).squeeze(1).to(torch.float64) * valid).flatten(1).sum(1)
        self._state["correct"] += hits.sum().to(self.device)
        self._state["total"] += n_valid.sum().to(self.device)
        pairs = (pred, t) if self.ignore_index is None else (pred[valid], t[valid])
        self._state["confusion"] += confusion_matrix(*pairs, self.num_classes).to(self.device)
        denom = n_valid.clamp_min(1)
        return hits / denom, p_t / denom, (n_valid > 0).to(torch.float64)

    def _add_scales(self, idx: Sequence[int], correct: Tensor, p_correct: Tensor, weight: Tensor) -> None:
        """Add per-sample values ``(B,)`` (weighted by ``weight`` ``(B,)``) to bins ``idx`` (-1: none)."""
        inside = torch.tensor([i >= 0 for i in idx], dtype=torch.float64, device=weight.device) * weight
        where = torch.tensor([max(i, 0) for i in idx], dtype=torch.long, device=self.device)
        self._state["scale_out_of_range"] += sum(i < 0 for i in idx)
        self._state["scale_count"].index_add_(0, where, inside.to(self.device))
        self._state["scale_correct"].index_add_(0, where, (correct * inside).to(self.device))
        self._state["scale_p_correct"].index_add_(0, where, (p_correct * inside).to(self.device))

    def _count_closed(self, closed: Sequence[bool]) -> None:
        self._state["groups"] += len(closed)
        self._state["groups_without_reference"] += sum(not has_ref for has_ref in closed)

    # ---- results ------------------------------------------------------------------------

    def compute(self) -> dict[str, Any]:
        """The ``metrics`` object of ``result.schema.json`` from this accumulator alone."""
        return self.compute_from(self.state())

    def compute_from(self, state: Mapping[str, Tensor]) -> dict[str, Any]:
        """The ``metrics`` object from a (typically all-reduced) state of this configuration.

        Inapplicable or unmeasured values are ``None`` (``miou`` for cls, ``eque`` without
        :meth:`add_equivariance`, ``inve`` without reference/variant pairs, ``accuracy`` of an
        empty bin).
        """
        _check_compatible(self._state, state)
        s = {k: v.detach().to("cpu", torch.float64) for k, v in state.items()}

        def ratio(num: str, den: str, scale: float = 1.0) -> float | None:
            d = float(s[den])
            return scale * float(s[num]) / d if d > 0 else None

        per_scale = []
        for i in range(len(self.bins)):
            label, lo, hi = self.bins.describe(i)
            n = float(s["scale_count"][i])
            per_scale.append({
                "label": label, "lo": lo, "hi": hi, "count": round(n),
                "accuracy": _unit(float(s["scale_correct"][i]) / n) if n > 0 else None,
                "p_correct": _unit(float(s["scale_p_correct"][i]) / n) if n > 0 else None,
            })
        accs = [row["accuracy"] for row in per_scale if row["accuracy"] is not None]
        per_class_iou, miou = iou_from_confusion(s["confusion"]) if self.task == "seg" else (None, None)
        eque_images = float(s["eque_images"])
        acc = ratio("correct", "total")
        return {
            "num_samples": round(float(s["samples"])),
            "num_groups": round(float(s["groups"])),
            "groups_without_reference": round(float(s["groups_without_reference"])),
            "accuracy": None if acc is None else _unit(acc),
            "miou": miou,
            "per_class_iou": per_class_iou,
            "inve": ratio("inve_sq_sum", "inve_pairs", 100.0),
            "inve_code": ratio("inve_code_sum", "inve_pairs"),
            "eque": ratio("eque_sq_sum", "eque_images"),
            "eque_code": ratio("eque_code_sum", "eque_images"),
            "eque_draws": round(float(s["eque_draws"]) / eque_images) if eque_images > 0 else 0,
            "accuracy_std_across_scales": statistics.pstdev(accs) if accs else None,
            "per_scale": per_scale,
            "scale_out_of_range": round(float(s["scale_out_of_range"])),
        }


def _unit(x: float) -> float:
    """Clamp a ratio of probability sums into [0, 1] (float rounding of softmax outputs)."""
    return min(1.0, max(0.0, x))


def _check_compatible(mine: Mapping[str, Tensor], other: Mapping[str, Tensor]) -> None:
    if set(mine) != set(other) or any(mine[k].shape != other[k].shape for k in mine):
        raise ConfigError("metric states differ in keys or shapes: accumulators need the same task, classes and bins")


# --------------------------------------------------------------------------------------------
# Distributed reduction
# --------------------------------------------------------------------------------------------


def all_reduce_state(state: Mapping[str, Tensor]) -> State:
    """Sum a :meth:`Metrics.state` over all ranks of the default process group.

    Returns a new dict on the state's device and dtype; without an initialized ``torch.distributed``
    group it is a copy.  A group of one rank still goes through the collective (so a one-GPU
    ``torchrun`` exercises NCCL as a cluster does; the sum of one rank is exact).  One collective on
    a flat float64 vector (on the current CUDA device for NCCL, else on the CPU), after a cheap
    check that every rank holds the same number of entries — so mismatched configurations raise
    :class:`ConfigError` instead of hanging.
    Every rank must call it (after :meth:`Metrics.finalize`, which :meth:`Metrics.state` does).
    """
    import torch.distributed as dist

    keys = sorted(state)
    if not (dist.is_available() and dist.is_initialized()):
        return {k: state[k].clone() for k in keys}
    home = state[keys[0]].device
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = torch.cat([state[k].detach().reshape(-1).to(comm, torch.float64) for k in keys])
    size = torch.tensor([len(flat), -len(flat)], dtype=torch.float64, device=comm)
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    if size[0] != -size[1]:
        raise ConfigError("ranks hold metric states of different sizes: every rank needs the same task, classes, bins")
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, start = {}, 0
    for k in keys:
        n = state[k].numel()
        out[k] = flat[start:start + n].reshape(state[k].shape).to(home, state[k].dtype)
        start += n
    return out
