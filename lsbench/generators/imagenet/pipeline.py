"""``lsbench generate imagenet``: source photos → stage outputs (cached) → scaled variants → shards.

The options and their checks are in :mod:`.config`.

Per source photo (batched through the stages, see :mod:`.stages`): decode → detect the class
(prompt = class name) → segment in the box → reject unusable photos (nothing detected, mask
< ``min_mask`` or > ``max_mask`` of the photo, < ``min_in_box`` of the mask inside the box) →
inpaint the background under the mask dilated by ``dilate`` px → cache.  Each *test* photo then
becomes a group of ``scales`` (the paper's 0.7, 0.8, …, 1.3; the s = 1 variant is the reference and
is composed the same way); each *train* photo one image with s drawn uniformly from
``scale_range``.  Counts are in images, as in the paper.

Which photo a group gets is seeded and balanced over classes: group ``g`` belongs to the class at
position ``g mod C`` of a seeded class permutation and takes that class's photos in a seeded order;
when a photo is rejected the group moves to its next candidate (the same class first, then the
next classes), so the dataset is the same for any worker count.  Every rejection is logged
(``rejections.jsonl``: photo, stage, reason, scores) and the yield per stage is in the manifest.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...dataset import read_manifest
from ...errors import DataError
from ...shards import ShardSpec, encode_png, plan_shards
from ...util import split_rng, write_bytes_atomic, write_json_atomic
from ..runner import BuildResult, RunOptions, SplitPlan, build, output_lock
from . import compose
from .cache import Outcome, Prepared, Rejection, StageCache, cache_key
from .config import ImagenetConfig, check_config
from .opencv import import_cv2
from .sources import (
    PhotoError,
    SourcePhoto,
    SourceSet,
    annotation_boxes,
    decode_photo,
    demo_set,
    probe_photo,
    read_photo_bytes,
    scan,
)
from .stages import build_detector, build_inpainter, build_segmenter

REJECTIONS = "rejections.jsonl"
REJECTION_DIR = "rejections"  # one log per shard, joined into rejections.jsonl at the end


# ---------------------------------------------------------------- per-process state


@functools.lru_cache(maxsize=4)
def _sources(src: str | None, demo: bool, boxes: str | None, split: str) -> SourceSet:
    return demo_set() if demo else scan(Path(src), split, Path(boxes) if boxes else None)


def sources_for(cfg: ImagenetConfig, split: str) -> SourceSet:
    return _sources(cfg.src, cfg.demo, cfg.boxes, "train" if split == "train" else "test")


@dataclass
class Stages:
    detector: Any
    segmenter: Any
    inpainter: Any


_STAGES: dict[str, Stages] = {}


def stages_for(cfg: ImagenetConfig) -> Stages:
    """The three backends, built once per process (models load once, then serve every shard)."""
    key = json.dumps([cfg.detector, cfg.segmenter, cfg.inpainter, cfg.backend_options()], sort_keys=True)
    if key not in _STAGES:
        opts = cfg.backend_options()
        _STAGES[key] = Stages(build_detector(cfg.detector, opts), build_segmenter(cfg.segmenter, opts),
                              build_inpainter(cfg.inpainter, opts))
    return _STAGES[key]


# ---------------------------------------------------------------- stage processing


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask
    cv2 = import_cv2()  # one line naming the extra if OpenCV is missing, also with the learned backends
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


@dataclass
class _Job:
    photo: SourcePhoto
    key: str
    image: np.ndarray
    source_size: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)


def _check_mask(cfg: ImagenetConfig, mask: np.ndarray, box) -> tuple[Rejection | None, dict[str, float]]:
    h, w = mask.shape
    area = float(mask.mean())
    total = int(mask.sum())
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inside = float(mask[max(0, y0):y1, max(0, x0):x1].sum() / total) if total else 0.0
    scores = {"mask_fraction": round(area, 6), "in_box_fraction": round(inside, 6)}
    if total == 0:  # whatever --min-mask says: there is nothing to cut out
        return Rejection("segment", "empty mask", scores), scores
    if area < cfg.min_mask:
        return Rejection("segment", f"mask covers {area:.1%} of the photo (minimum {cfg.min_mask:.0%})", scores), scores
    if area > cfg.max_mask:
        return Rejection("segment", f"mask covers {area:.1%} of the photo (maximum {cfg.max_mask:.0%})", scores), scores
    if inside < cfg.min_in_box:
        return Rejection("segment", f"only {inside:.0%} of the mask lies in the box (minimum {cfg.min_in_box:.0%})",
                         scores), scores
    return None, scores


def _run_stages(cfg: ImagenetConfig, stages: Stages, jobs: list[_Job]) -> list[Outcome]:
    """Detect → segment → check → inpaint for a batch of decoded photos."""
    out: list[Outcome | None] = [None] * len(jobs)
    annotations = [annotation_boxes(j.photo, (j.image.shape[1], j.image.shape[0]), j.source_size) for j in jobs]
    detections = stages.detector.detect([j.image for j in jobs], [j.photo.prompt for j in jobs], annotations)
    found = []
    for i, (job, det) in enumerate(zip(jobs, detections)):
        if det is None:
            why = (
                "no box annotation for its class" if cfg.detector == "annotation" else
                f"nothing found for {job.photo.prompt!r} above box {cfg.box_threshold} / text {cfg.text_threshold}"
            )
            out[i] = Rejection("detect", why, {})
            continue
        job.info["detection"] = {"box": [round(float(v), 2) for v in det.box], "score": round(float(det.score), 6),
                                 "prompt": job.photo.prompt}
        job.info["backends"] = {"detect": det.backend}
        found.append(i)
    segs = stages.segmenter.segment([jobs[i].image for i in found], [detections[i].box for i in found])
    keep = []
    for i, seg in zip(found, segs):
        job = jobs[i]
        rejection, scores = _check_mask(cfg, seg.mask, detections[i].box)
        scores["score"] = round(float(seg.score), 6)
        if rejection is not None:
            scores["detection_score"] = round(float(detections[i].score), 6)
            out[i] = Rejection(rejection.stage, rejection.reason, scores)
            continue
        job.info["segmentation"] = scores
        job.info["backends"]["segment"] = seg.backend
        keep.append((i, seg.mask))
    if keep:
        fills = stages.inpainter.inpaint([jobs[i].image for i, _ in keep], [_dilate(m, cfg.dilate) for _, m in keep])
        for (i, mask), background in zip(keep, fills):
            job = jobs[i]
            job.info["backends"]["inpaint"] = getattr(stages.inpainter, "backend", stages.inpainter.name)
            job.info["size"] = [int(job.image.shape[1]), int(job.image.shape[0])]
            job.info["source_size"] = list(job.source_size)
            out[i] = Prepared(background, compose.cut_out(job.image, mask), job.info)
    return out  # type: ignore[return-value]


def _stat(path: str | None) -> list[int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return None if st is None else [st.st_size, st.st_mtime_ns]


def prepare(cfg: ImagenetConfig, photos: list[SourcePhoto], cache: StageCache,
            stages: Callable[[], Stages]) -> list[Outcome]:
    """The stage outputs for ``photos``: from the cache, else computed in batches and cached.

    Photos are decoded batch by batch, so at most ``batch_size`` decoded photos are held at once
    (a shard's round may miss the cache for a thousand photos)."""
    results: list[Outcome | None] = [None] * len(photos)
    settings = cfg.stage_settings()
    misses: list[tuple[int, SourcePhoto, str, bytes]] = []
    for i, photo in enumerate(photos):
        try:
            data = read_photo_bytes(photo)
        except PhotoError as e:
            results[i] = Rejection("load", str(e), {})
            continue
        annotation = None
        if cfg.detector == "annotation":  # the boxes are an input of the detect stage
            annotation = [photo.boxes, photo.annotation, _stat(photo.annotation)]
        key = cache_key(data, settings | {"label": photo.label, "prompt": photo.prompt, "id": photo.id,
                                          "annotation": annotation})
        hit = cache.get(key)
        if hit is not None:
            results[i] = hit
        else:
            misses.append((i, photo, key, data))
    for start in range(0, len(misses), cfg.batch_size):
        chunk: list[tuple[int, _Job]] = []
        for i, photo, key, data in misses[start:start + cfg.batch_size]:
            try:
                image, source_size = decode_photo(data, cfg.max_side)
            except PhotoError as e:
                results[i] = Rejection("load", str(e), {})
                cache.put(key, results[i])
                continue
            chunk.append((i, _Job(photo, key, image, source_size)))
        if not chunk:
            continue
        for (i, job), outcome in zip(chunk, _run_stages(cfg, stages(), [j for _, j in chunk])):
            cache.put(job.key, outcome)
            results[i] = outcome
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------- groups → photos


class Assignment:
    """Which photos group ``g`` of a split tries, in order (seeded, balanced over classes)."""

    def __init__(self, sources: SourceSet, split: str, num_groups: int, seed: int):
        self.sources, self.split, self.num_groups, self.seed = sources, split, num_groups, seed
        labels = sorted(sources.by_label)
        if not labels:
            raise DataError(f"no source photos for the {split} split")
        rng = split_rng(seed, split, 0)
        self.classes = [labels[i] for i in rng.permutation(len(labels))]

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one Assignment per split per process
    def order(self, label: int) -> tuple[SourcePhoto, ...]:
        photos = self.sources.by_label[label]
        perm = split_rng(self.seed, self.split, 1, label).permutation(len(photos))
        return tuple(photos[i] for i in perm)

    def candidates(self, group: int) -> Iterator[SourcePhoto]:
        C = len(self.classes)
        ci, rank = group % C, group // C
        own = self.order(self.classes[ci])
        n_c = len(range(ci, self.num_groups, C))  # groups of this class in the split
        L = len(own)
        # First the photos no other group of the class starts from (rank, rank + n_c, ...), then
        # the rest of the class, then the following classes.
        first = list(range(rank, L, n_c)) if rank < L else [rank % L]
        seen = set(first)
        yield from (own[p] for p in first)
        yield from (own[(rank + k) % L] for k in range(L) if (rank + k) % L not in seen)
        for k in range(1, C):
            other = self.order(self.classes[(ci + k) % C])
            yield from (other[(group + j) % len(other)] for j in range(len(other)))


def _encode(cfg: ImagenetConfig, image: np.ndarray) -> tuple[str, bytes]:
    if cfg.image_format == "png":
        return "png", encode_png(image)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=cfg.jpeg_quality)
    return "jpg", buf.getvalue()


def compose_group(cfg: ImagenetConfig, split: str, group: int, photo: SourcePhoto, prepared: Prepared,
                  attempts: int) -> list[dict[str, Any]]:
    """The samples of one group: every test scale, or one random train scale."""
    grouped = split != "train"
    if grouped:
        scales = list(cfg.scales)
    else:
        rng = split_rng(cfg.seed, split, 2, group)
        scales = [round(float(rng.uniform(*cfg.scale_range)), 6)]
    cut = prepared.cutout
    anchor = compose.anchor_point(cut.box, cfg.anchor)
    samples = []
    for variant, s in enumerate(scales):
        result = compose.paste(prepared.background, cut, s, anchor, cfg.feather)
        ext, data = _encode(cfg, result.image)
        meta = {
            "group": group, "variant": variant, "reference": grouped and s == 1.0, "split": split,
            "label": photo.label, "wnid": photo.wnid, "class_name": photo.prompt,
            "scales": [s], "scale_xy": [round(v, 6) for v in result.scale_xy],
            "boxes": [list(result.box)] if result.box is not None else [],
            "object_box_source": list(cut.box), "anchor": [round(v, 3) for v in anchor], "anchor_mode": cfg.anchor,
            "source": {"dataset": sources_for(cfg, split).layout, "file": photo.id, "attempt": attempts},
            **{k: prepared.info[k] for k in ("detection", "segmentation", "backends", "size", "source_size")},
        }
        samples.append({"__key__": f"{group:07d}_{variant:02d}", ext: data, "cls": photo.label, "json": meta})
    return samples


def _shard_log_path(cfg: ImagenetConfig, spec: ShardSpec) -> Path:
    return Path(cfg.out) / REJECTION_DIR / (spec.name.removesuffix(".tar") + ".json")


def make_shard(cfg: ImagenetConfig, spec: ShardSpec) -> Iterator[dict[str, Any]]:
    """Samples of one shard: resolve every group's photo (batched rounds of candidates), log the
    rejections, then compose.  Picklable for worker processes."""
    size = 1 if spec.split == "train" else cfg.group_size
    groups = list(range(spec.start // size, (spec.start + spec.count) // size))
    plan = split_groups(cfg)[spec.split]
    assignment = Assignment(sources_for(cfg, spec.split), spec.split, plan, cfg.seed)
    cache = StageCache(Path(cfg.cache_dir))
    iters = {g: assignment.candidates(g) for g in groups}
    attempts = dict.fromkeys(groups, 0)
    chosen: dict[int, tuple[SourcePhoto, Prepared]] = {}
    log: list[dict[str, Any]] = []
    pending = list(groups)
    path = _shard_log_path(cfg, spec)

    def write_log() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"shard": spec.name, "split": spec.split, "groups": len(groups), "rejected": log})

    while pending:
        photos = {}
        for g in pending:
            photo = next(iters[g], None)
            if photo is None or attempts[g] >= cfg.max_attempts:
                write_log()
                last = [r for r in log if r["group"] == g][-1]
                raise DataError(
                    f"{spec.split} group {g}: {attempts[g]} photos in a row were rejected (last: {last['photo']}, "
                    f"{last['stage']}: {last['reason']}); see {path}, check the backends, or raise --max-attempts"
                )
            photos[g] = photo
        unique = list({p.id: p for p in photos.values()}.values())
        outcomes = dict(zip((p.id for p in unique), prepare(cfg, unique, cache, lambda: stages_for(cfg))))
        pending = []
        for g, photo in photos.items():
            outcome = outcomes[photo.id]
            if isinstance(outcome, Prepared):
                chosen[g] = (photo, outcome)
            else:
                attempts[g] += 1
                log.append({"split": spec.split, "group": g, "photo": photo.id, "label": photo.label,
                            "stage": outcome.stage, "reason": outcome.reason, "scores": outcome.scores})
                pending.append(g)
    write_log()
    for g in groups:
        photo, prepared = chosen[g]
        yield from compose_group(cfg, spec.split, g, photo, prepared, attempts[g])


def split_groups(cfg: ImagenetConfig) -> dict[str, int]:
    return {"train": cfg.train, "test": cfg.test // cfg.group_size}


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Groups whose candidates :func:`check_sources` probes per split (evenly spread beyond): a probe costs
# ~0.3 ms (PNG) to ~2.5 ms (500x375 JPEG at 1/8 scale; a full decode is 3.4 ms), so at most ~1 minute.
MAX_CHECKED_GROUPS = 20_000


def check_sources(cfg: ImagenetConfig, split: str, log: Callable[[str], None] | None = None) -> None:
    """Before anything is written: probe (:func:`~.sources.probe_photo`) the photos the split's groups try
    first, walking each group's candidates as :func:`make_shard` will, and raise :class:`DataError` when
    a group would run out of loadable photos within ``--max-attempts`` (one line: how many usable of
    how many, which rejected and why, what to do).  Photos the probe rejects are rejected at load by
    the build too, so the dataset is unchanged; ``log`` hears of the ones it will skip."""
    groups = split_groups(cfg)[split]
    if not groups:
        return
    sources = sources_for(cfg, split)
    assignment = Assignment(sources, split, groups, cfg.seed)
    step = max(1, -(-groups // MAX_CHECKED_GROUPS))
    verdicts: dict[str, str | None] = {}  # photo id → why it is unusable (None: usable)
    stuck: list[tuple[int, int, SourcePhoto]] = []  # (group, photos tried, last photo)
    for g in range(0, groups, step):
        tried, last = 0, None
        for photo in assignment.candidates(g):
            if tried >= cfg.max_attempts:
                break
            if photo.id not in verdicts:
                try:
                    probe_photo(photo, cfg.max_side)
                    verdicts[photo.id] = None
                except PhotoError as e:
                    verdicts[photo.id] = str(e)
            tried, last = tried + 1, photo
            if verdicts[photo.id] is None:
                break
        else:
            if last is None:  # no candidates at all (Assignment refuses an empty source set first)
                raise DataError(f"no source photos for the {split} split")
        if last is not None and verdicts[last.id] is not None:
            stuck.append((g, tried, last))
    bad = {pid: why for pid, why in verdicts.items() if why is not None}
    if not bad:
        return
    checked = f"{len(verdicts) - len(bad)} of the {len(verdicts)} {split} source photos checked are usable"
    # Last, and each reason cut short: the CLI keeps an error to one line of 400 characters.
    named = "; ".join(f"{pid}: {_short(why)}" for pid, why in list(bad.items())[:2])
    named += f"; {len(bad) - 2} more" if len(bad) > 2 else ""
    if stuck:
        g, tried, _ = stuck[0]
        more = f" (and {len(stuck) - 1} more groups)" if len(stuck) > 1 else ""
        raise DataError(
            f"{split} group {g}{more}: {tried} photos in a row were rejected before the build ({checked}); nothing "
            f"was written: replace or remove them, or raise --max-attempts. Rejected: {named}"
        )
    if log is not None:
        log(f"{checked}; the build skips the others ({named})")


# ---------------------------------------------------------------- generate


def summarize_rejections(out: Path, shard_names: Iterable[str] | None = None) -> dict[str, Any]:
    """Join the per-shard logs of the dataset's shards into ``rejections.jsonl``; yield per split and stage.

    ``shard_names`` are the dataset's shard files (default: those the manifest in ``out`` lists).
    Logs of other shards (left by an earlier run with another shard size) are ignored: they would
    count their photos twice."""
    out = Path(out)
    if shard_names is None:
        shard_names = [rec["name"] for entry in read_manifest(out)["splits"].values()
                       for rec in entry.get("shards", [])]
    listed = {name.removesuffix(".tar") for name in shard_names}
    logs = sorted(p for p in (out / REJECTION_DIR).glob("*.json") if p.stem in listed)
    summary: dict[str, Any] = {}
    lines = []
    for path in logs:
        entry = json.loads(path.read_text())
        s = summary.setdefault(entry["split"], {"accepted": 0, "rejected": {}})
        s["accepted"] += entry["groups"]
        for r in entry["rejected"]:
            s["rejected"][r["stage"]] = s["rejected"].get(r["stage"], 0) + 1
            lines.append(json.dumps(r, sort_keys=True))
    for s in summary.values():  # yield = accepted candidates / all candidates tried
        tried = s["accepted"] + sum(s["rejected"].values())
        s["yield"] = round(s["accepted"] / tried, 4) if tried else None
    write_bytes_atomic(out / REJECTIONS, "".join(line + "\n" for line in lines).encode())
    return summary


def generate(config: ImagenetConfig, out: Path, run: RunOptions | None = None) -> BuildResult:
    """Generate locally scaled ImageNet into ``out`` (resumes an unfinished identical run).

    ``config.offline`` is applied first (:meth:`ImagenetConfig.resolved`); a ``test`` count that is
    not whole groups is rounded down (with a notice).  ``run.log`` receives one-line notices.
    """
    run = (run or RunOptions()).checked(ImagenetConfig.DEFAULT_SHARD_SIZE)
    log = run.log
    out = Path(out)
    cfg = config.resolved()
    asked, group_size = cfg.test, len(cfg.scales)
    test = asked - asked % group_size if group_size and asked % group_size and asked > group_size else asked
    cfg = replace(
        cfg, src=None if cfg.src is None else Path(cfg.src).resolve(),
        boxes=None if cfg.boxes is None else Path(cfg.boxes).resolve(), test=test,
        scales=tuple(float(s) for s in cfg.scales), scale_range=(float(cfg.scale_range[0]), float(cfg.scale_range[1])),
        cache_dir=Path(cfg.cache_dir).resolve() if cfg.cache_dir else (out / "cache").resolve(), out=out.resolve(),
    )
    check_config(cfg)
    _sources.cache_clear()  # a library caller may have added photos since the last call
    if cfg.gdino_config and cfg.detector == "gdino" and log is not None:
        log("--gdino-config is not used: GroundingDINO loads from the transformers-format --gdino-checkpoint folder")
    if asked != test and log is not None:
        log(f"--test {asked:,} rounded down to {test:,} images (whole groups of {group_size})")
    digests = []
    for split, count in (("train", cfg.train), ("test", cfg.test)):
        if count:
            sources = sources_for(cfg, split)
            digests.append(sources.digest())
            if log is not None and split == "train":
                log(f"{split} sources: {sources.num_photos} photos in {len(sources.by_label)} classes "
                    f"({sources.layout} layout)")
    if cfg.demo and log is not None:
        log("using the photos bundled with scikit-image and matplotlib (--demo): train and test draw from the "
            "same few photos; pass --src for ImageNet")
    cfg = replace(cfg, source_digest=",".join(digests))
    for split in ("train", "test"):  # a split without enough loadable photos stops here, before any shard
        check_sources(cfg, split, log)
    splits = [SplitPlan("train", cfg.train), SplitPlan("test", cfg.test, cfg.group_size, grouped=True)]
    # The shards of the complete dataset (the manifest on disk lists them only once it is written).
    shard_names = [spec.name for plan in splits
                   for spec in plan_shards(plan.name, plan.num_samples, run.shard_size, plan.group_size)]
    identity = cfg.identity() | {"num_classes": sources_for(cfg, "test" if cfg.test else "train").num_classes,
                                 "task": "cls"}
    if run.overwrite and out.is_dir():
        with output_lock(out, run):  # not under a run that is writing this folder now
            shutil.rmtree(out / REJECTION_DIR, ignore_errors=True)
            (out / REJECTIONS).unlink(missing_ok=True)

    def extra() -> dict[str, Any]:
        """The yield per split and stage, and where the photos came from: written with the complete manifest."""
        return {
            "yield": summarize_rejections(out, shard_names),
            "source": {"root": str(cfg.src) if cfg.src else "(bundled demo photos)",
                       "boxes": None if cfg.boxes is None else str(cfg.boxes), "digest": cfg.source_digest},
        }

    # Models load lazily, at the first photo not in the cache; a checkpoint that fails to load then
    # is a ConfigError, after which build() leaves nothing behind in a folder this run created.
    return build(
        out, name="imagenet-ls" if not cfg.demo else "imagenet-ls-demo", generator="imagenet", config=identity,
        seed=cfg.seed, splits=splits, make_shard=functools.partial(make_shard, cfg), run=run, extra=extra,
    )


def rejection_summary_line(out: Path) -> str | None:
    """One line for the CLI: photos tried, accepted and rejected per stage."""
    try:
        summary = read_manifest(Path(out)).get("yield")
    except Exception:  # noqa: BLE001
        return None
    if not summary:
        return None
    parts = []
    for split, s in sorted(summary.items()):
        rejected = ", ".join(f"{n} at {stage}" for stage, n in sorted(s["rejected"].items())) or "none rejected"
        parts.append(f"{split}: {s['accepted']} photos accepted ({rejected})")
    return "; ".join(parts) + f" — details in {Path(out) / REJECTIONS}"

