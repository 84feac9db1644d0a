"""``lsbench generate imagenet``: source photos → stage outputs (cached) → scaled variants → shards.

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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import ConfigError, DataError
from ...shards import MANIFEST, ShardSpec, encode_png, read_manifest, write_bytes_atomic, write_json_atomic
from ..runner import BuildResult, Progress, SplitPlan, build, split_rng
from . import compose
from .cache import Outcome, Prepared, Rejection, StageCache, cache_key, file_fingerprint
from .classical import _cv2
from .sources import (
    PhotoError,
    SourcePhoto,
    SourceSet,
    annotation_boxes,
    decode_photo,
    demo_set,
    read_photo_bytes,
    scan,
)
from .stages import DETECTORS, INPAINTERS, SEGMENTERS, build_detector, build_inpainter, build_segmenter

PAPER_SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
REJECTIONS = "rejections.jsonl"
REJECTION_DIR = "rejections"  # one log per shard, joined into rejections.jsonl at the end
CHECKPOINT_OPTIONS = {
    "gdino": ("gdino_checkpoint", "--gdino-checkpoint", "--detector annotation or --detector prior"),
    "sam": ("sam_checkpoint", "--sam-checkpoint", "--segmenter grabcut"),
    "lama": ("lama_checkpoint", "--lama-checkpoint", "--inpainter opencv"),
}


@dataclass(frozen=True)
class ImagenetConfig:
    """Everything that defines the dataset (``identity``) plus how to run it (device, batch, cache)."""

    src: str | None = None
    demo: bool = False
    boxes: str | None = None
    train: int = 10000
    test: int = 50000
    scales: tuple[float, ...] = PAPER_SCALES
    scale_range: tuple[float, float] = (0.7, 1.3)
    detector: str = "gdino"
    segmenter: str = "sam"
    inpainter: str = "lama"
    gdino_checkpoint: str | None = None
    gdino_config: str | None = None
    text_encoder: str | None = None
    sam_checkpoint: str | None = None
    sam_type: str = "vit_h"
    lama_checkpoint: str | None = None
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    prior_fraction: float = 0.6
    min_mask: float = 0.01
    max_mask: float = 0.7
    min_in_box: float = 0.8
    dilate: int = 15
    feather: float = 1.0
    anchor: str = "centre"
    max_side: int = 512
    image_format: str = "jpg"
    jpeg_quality: int = 95
    max_attempts: int = 20
    seed: int = 0
    source_digest: str = ""
    # How to run, not what to make: excluded from the identity.
    device: str = "cpu"
    batch_size: int = 8
    fp16: bool = True
    cache_dir: str = ""
    out: str = ""

    # Where the photos live is not what they are: the dataset is identified by ``source_digest``
    # (the listing), so a moved source tree still resumes.
    RUN_FIELDS = ("src", "boxes", "device", "batch_size", "fp16", "cache_dir", "out")

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        for k in self.RUN_FIELDS:
            d.pop(k)
        d["scales"], d["scale_range"] = list(self.scales), list(self.scale_range)
        return d

    @property
    def group_size(self) -> int:
        return len(self.scales)

    def backend_options(self) -> dict[str, Any]:
        keys = ("gdino_checkpoint", "gdino_config", "text_encoder", "sam_checkpoint", "sam_type", "lama_checkpoint",
                "box_threshold", "text_threshold", "prior_fraction", "device", "batch_size", "fp16")
        return {k: getattr(self, k) for k in keys}

    def stage_settings(self) -> dict[str, Any]:
        """What a cached stage output depends on (besides the photo's bytes and class)."""
        ckpts = {}
        for name in (self.detector, self.segmenter, self.inpainter):
            if name in CHECKPOINT_OPTIONS:
                ckpts[name] = file_fingerprint(getattr(self, CHECKPOINT_OPTIONS[name][0]))
        if self.detector == "gdino" and self.text_encoder:  # the tokenizer shapes the detections too
            ckpts["text_encoder"] = file_fingerprint(self.text_encoder)
        keys = ("detector", "segmenter", "inpainter", "gdino_config", "text_encoder", "sam_type", "box_threshold",
                "text_threshold", "prior_fraction", "min_mask", "max_mask", "min_in_box", "dilate", "max_side")
        half = self.fp16 and self.device.startswith("cuda") and {self.detector, self.segmenter} & {"gdino", "sam"}
        return {k: getattr(self, k) for k in keys} | {"checkpoints": ckpts, "half": bool(half), "v": 1}


def check_config(cfg: ImagenetConfig) -> None:
    """Every option problem as one line, before any work starts."""
    if cfg.train < 0 or cfg.test < 0 or cfg.train + cfg.test == 0:
        raise ConfigError("--train and --test must be ≥ 0 and not both 0")
    if not cfg.scales or any(not 0.1 <= s <= 4 for s in cfg.scales):
        raise ConfigError(f"--scales must be factors in [0.1, 4], got {list(cfg.scales)}")
    if sorted(set(cfg.scales)) != sorted(cfg.scales):
        raise ConfigError(f"--scales has repeated values: {list(cfg.scales)}")
    if 1.0 not in cfg.scales:
        raise ConfigError("--scales must contain 1.0: that variant is each test group's reference")
    if cfg.test % cfg.group_size:
        raise ConfigError(f"--test counts images and must be a multiple of {cfg.group_size} (one group per photo)")
    if cfg.train > 0 and cfg.scale_range[0] == cfg.scale_range[1] == 1.0:
        raise ConfigError("--scale-range 1 1 would make every train image unscaled; widen it")
    lo, hi = cfg.scale_range
    if not 0.1 <= lo <= hi <= 4:
        raise ConfigError(f"--scale-range must satisfy 0.1 ≤ min ≤ max ≤ 4, got {lo}, {hi}")
    for what, name, names in (("detector", cfg.detector, DETECTORS), ("segmenter", cfg.segmenter, SEGMENTERS),
                              ("inpainter", cfg.inpainter, INPAINTERS)):
        if name not in names:
            raise ConfigError(f"unknown --{what} {name!r}; choose one of {', '.join(names)}")
    for name in (cfg.detector, cfg.segmenter, cfg.inpainter):
        if name in CHECKPOINT_OPTIONS:
            attr, flag, alternative = CHECKPOINT_OPTIONS[name]
            path = getattr(cfg, attr)
            if not path:
                raise ConfigError(
                    f"the {name} backend needs {flag} (a local file; nothing is downloaded), or use {alternative}"
                )
            if not Path(path).exists():
                raise ConfigError(
                    f"{flag} {path} does not exist; put the checkpoint there or use {alternative} (offline)"
                )
    if cfg.detector == "gdino" and cfg.text_encoder and not Path(cfg.text_encoder).is_dir():
        raise ConfigError(f"--text-encoder {cfg.text_encoder} is not a folder (a local bert-base-uncased)")
    if not 0 <= cfg.min_mask < cfg.max_mask <= 1:
        raise ConfigError("--min-mask and --max-mask must satisfy 0 ≤ min < max ≤ 1 (fractions of the photo)")
    if not 0 <= cfg.min_in_box <= 1:
        raise ConfigError("--min-in-box must be in [0, 1]")
    if cfg.anchor not in compose.ANCHORS:
        raise ConfigError(f"--anchor must be one of {', '.join(compose.ANCHORS)}")
    if cfg.image_format not in ("jpg", "png"):
        raise ConfigError("--format must be jpg or png")
    if cfg.max_side < 64:
        raise ConfigError("--max-side must be at least 64 px")
    if cfg.batch_size < 1 or cfg.max_attempts < 1 or cfg.dilate < 0 or cfg.feather < 0:
        raise ConfigError("--batch-size and --max-attempts must be ≥ 1, --dilate and --feather ≥ 0")


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
    cv2 = _cv2()  # one line naming the extra if OpenCV is missing, also with the learned backends
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


# ---------------------------------------------------------------- generate


def summarize_rejections(out: Path) -> dict[str, Any]:
    """Join the per-shard logs of the manifest's shards into ``rejections.jsonl``; yield per split and stage.

    Logs of shards the manifest does not list (left by an earlier run with another shard size) are
    ignored: they would count their photos twice."""
    out = Path(out)
    listed = {rec["name"].removesuffix(".tar") for entry in read_manifest(out)["splits"].values()
              for rec in entry.get("shards", [])}
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


def generate(
    out: Path,
    *,
    src: Path | None = None,
    demo: bool = False,
    boxes: Path | None = None,
    train: int = 10000,
    test: int = 50000,
    scales: tuple[float, ...] = PAPER_SCALES,
    scale_range: tuple[float, float] = (0.7, 1.3),
    cache_dir: Path | None = None,
    workers: int = 1,
    shard_size: int = 1000,
    overwrite: bool = False,
    progress: Progress | None = None,
    log=None,
    **options: Any,
) -> BuildResult:
    """Generate locally scaled ImageNet into ``out`` (resumes an unfinished identical run).

    ``options`` are the remaining :class:`ImagenetConfig` fields (backends, checkpoints,
    thresholds, ``device``, ``batch_size``...).  ``log`` receives one-line notices.
    """
    if (src is None) == (not demo):
        raise ConfigError("pass --src with an ImageNet/ImageFolder tree, or --demo for the bundled photos")
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
    unknown = set(options) - set(ImagenetConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown options: {sorted(unknown)}")
    out = Path(out)
    asked, group_size = test, len(scales)
    if test % group_size and test > group_size:
        test -= test % group_size
    cfg = ImagenetConfig(
        src=None if src is None else str(Path(src).resolve()), demo=demo,
        boxes=None if boxes is None else str(Path(boxes).resolve()), train=train, test=test,
        scales=tuple(float(s) for s in scales), scale_range=(float(scale_range[0]), float(scale_range[1])),
        cache_dir=str(Path(cache_dir).resolve()) if cache_dir else str((out / "cache").resolve()),
        out=str(out.resolve()), **options,
    )
    check_config(cfg)
    _sources.cache_clear()  # a library caller may have added photos since the last call
    if cfg.gdino_config and cfg.detector == "gdino" and log is not None:
        log("--gdino-config is not used: GroundingDINO loads from the transformers-format --gdino-checkpoint folder")
    if asked != test and log is not None:
        log(f"--test {asked:,} rounded down to {test:,} images (whole groups of {group_size})")
    digests = []
    for split, count in (("train", train), ("test", test)):
        if count:
            sources = sources_for(cfg, split)
            digests.append(sources.digest())
            if log is not None and split == "train":
                log(f"{split} sources: {sources.num_photos} photos in {len(sources.by_label)} classes "
                    f"({sources.layout} layout)")
    if demo and log is not None:
        log("using the photos bundled with scikit-image and matplotlib (--demo): train and test draw from the "
            "same few photos; pass --src for ImageNet")
    cfg = replace(cfg, source_digest=",".join(digests))
    splits = [SplitPlan("train", train), SplitPlan("test", test, cfg.group_size, grouped=True)]
    identity = cfg.identity() | {"num_classes": sources_for(cfg, "test" if test else "train").num_classes,
                                 "task": "cls"}
    if overwrite:
        shutil.rmtree(out / REJECTION_DIR, ignore_errors=True)
        (out / REJECTIONS).unlink(missing_ok=True)
    # Models load lazily, at the first photo not in the cache; a checkpoint that fails to load then
    # is a ConfigError, after which build() leaves nothing behind in a folder this run created.
    result = build(
        out, name="imagenet-ls" if not demo else "imagenet-ls-demo", generator="imagenet", config=identity,
        seed=cfg.seed, splits=splits, shard_size=shard_size, make_shard=functools.partial(make_shard, cfg),
        workers=workers, overwrite=overwrite, progress=progress,
    )
    if result.complete:
        summary = summarize_rejections(out)
        manifest = read_manifest(out)
        manifest["yield"] = summary
        manifest["source"] = {"root": cfg.src or "(bundled demo photos)", "boxes": cfg.boxes,
                              "digest": cfg.source_digest}
        write_json_atomic(out / MANIFEST, manifest)
    return result


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

