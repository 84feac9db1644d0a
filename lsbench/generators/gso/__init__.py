"""Locally scaled Google Scanned Objects (GSO-LS, paper Sec. 5.1): segmentation scenes rendered in Blender.

Each image shows two distinct objects in front of a fixed camera, lit by and seen against an HDRI
world; each object's distance to the camera, hence its apparent size, is its own.  The mask holds
each pixel's class id (object ``k`` of the dataset's object list is class ``k + 1``; 0 = background).

**Groups.**  Test images come in groups of ``1 + variants``: variant 0 is the ``reference`` (scales
1.0); every other variant moves each object along its camera ray to ``reference distance / scale``
with its own scale drawn from ``scale_range``, so it stays at the same image position and only
its apparent size changes; the HDRI and its rotation, the camera, the objects' orientations and
the render seed stay fixed.  Train images are single scenes with drawn scales (no reference).

**Assets.**  ``objects`` objects are drawn (seeded) from the GSO folder and listed in the
manifest with their class ids and licences; the HDRIs are split (seeded) into disjoint train and
test sets (a quarter, at least one, for test).  Without ``gso_dir``/``hdri_dir`` the embedded
demo assets are used (see :mod:`.assets`).

Every group's randomness derives from ``(seed, split, group)``, so the dataset does not depend on
the worker count.  See :mod:`.scene` for the geometry and :mod:`.render` for the renderer.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError
from ...shards import ShardSpec, encode_png, plan_shards
from ..runner import BuildResult, Progress, SplitPlan, build, split_rng
from . import assets as gso_assets
from . import scene as gso_scene
from .assets import HdriAsset, ObjectAsset
from .render import (
    DEVICES,
    ENGINES,
    VIEW_TRANSFORM,
    WORLD_MAP_RESOLUTION,
    RenderSettings,
    probe_device,
    projected_box,
    renderer,
    require_bpy,
)

OBJECTS_PER_IMAGE = 2
MAX_ATTEMPTS = 8  # scene redraws when an object ends up (nearly) invisible in some variant
MIN_VISIBLE_FRAC = 0.001  # an object must cover at least this fraction of the image (and 12 px) in every variant
MAX_CLASSES = 255  # masks are uint8
TEST_HDRI_FRAC = 0.25
# size × smallest scale below this leaves the smallest objects ~2 px in radius, too few pixels to pass
# the visibility check: a build would stop at some group with "no scene ... after 8 draws".
MIN_SIZE_X_SCALE = 24


@dataclass(frozen=True)
class GsoConfig:
    """Everything that determines the dataset (``identity()`` goes into the manifest), plus where
    the assets are and how many CPU threads a renderer uses (not part of the identity)."""

    size: int = 256
    train: int = 6000
    test: int = 2000
    variants: int = 4
    scale_min: float = 0.5
    scale_max: float = 2.0
    engine: str = "cycles"
    samples: int = 32
    denoise: bool = True
    device: str = "cpu"
    seed: int = 0
    source: str = "demo"
    objects: tuple[ObjectAsset, ...] = ()
    hdris_train: tuple[HdriAsset, ...] = ()
    hdris_test: tuple[HdriAsset, ...] = ()
    assets_sha256: str = ""
    threads: int = 0

    @property
    def group_size(self) -> int:
        return 1 + self.variants

    @property
    def num_classes(self) -> int:
        return len(self.objects) + 1

    @property
    def render_settings(self) -> RenderSettings:
        return RenderSettings(self.size, self.engine, self.samples, self.denoise, self.device, self.threads)

    def hdris(self, split: str) -> tuple[HdriAsset, ...]:
        return self.hdris_train if split == "train" else self.hdris_test

    def identity(self) -> dict[str, Any]:
        cfg = {k: v for k, v in asdict(self).items() if k not in ("objects", "hdris_train", "hdris_test", "threads")}
        cfg["objects"] = [
            {"class_id": i + 1, **{k: v for k, v in o.record().items() if k not in ("mesh", "texture", "archive")}}
            for i, o in enumerate(self.objects)
        ]
        cfg["hdris"] = {
            split: [{"id": h.id, "licence": h.licence} for h in self.hdris(split)] for split in ("train", "test")
        }
        cfg.update(
            task="seg", num_classes=self.num_classes, classes=["background"] + [o.id for o in self.objects],
            objects_per_image=OBJECTS_PER_IMAGE, view_transform=VIEW_TRANSFORM, focal_mm=gso_scene.FOCAL_MM,
            sensor_mm=gso_scene.SENSOR_MM, object_radius_m=gso_scene.OBJECT_RADIUS,
        )
        return cfg


def check_options(cfg: GsoConfig, shard_size: int) -> None:
    """Refuse impossible options with one line that says what to change (before touching assets)."""
    if not 32 <= cfg.size <= 4096:
        raise ConfigError(f"--size must be 32–4096 px, got {cfg.size}")
    if cfg.engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {cfg.engine!r}")
    if cfg.device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    if cfg.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {cfg.samples}")
    if not 0 < cfg.scale_min < cfg.scale_max:
        raise ConfigError(f"--scale-range needs 0 < min < max, got {cfg.scale_min} {cfg.scale_max}")
    if cfg.scale_max > 3.0 or cfg.scale_min < 0.2:
        raise ConfigError(
            f"--scale-range {cfg.scale_min} {cfg.scale_max} is outside 0.2–3.0: two objects must fit in the image "
            "at every scale and stay visible at the smallest"
        )
    if cfg.size * cfg.scale_min < MIN_SIZE_X_SCALE:
        raise ConfigError(
            f"--size {cfg.size} with --scale-range minimum {cfg.scale_min} makes the smallest objects too small to "
            f"see (size × minimum scale must be at least {MIN_SIZE_X_SCALE}); raise --size or the --scale-range minimum"
        )
    if cfg.variants < 1:
        raise ConfigError(
            f"--variants must be at least 1 (the reference plus at least one scaled variant), got {cfg.variants}"
        )
    for opt, value in (("--train", cfg.train), ("--test", cfg.test)):
        if value < 1:
            raise ConfigError(f"{opt} must be at least 1, got {value}")
    if cfg.test % cfg.group_size:
        raise ConfigError(
            f"--test {cfg.test} is not a multiple of the group size {cfg.group_size} (1 reference + {cfg.variants} "
            f"variants); use e.g. {cfg.test - cfg.test % cfg.group_size or cfg.group_size}"
        )
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")


def choose_objects(available: list[ObjectAsset], count: int | None, seed: int) -> list[ObjectAsset]:
    """``count`` objects drawn (seeded) from ``available``, sorted by id (class id = position + 1).
    ``None``: 100, or all when fewer are available."""
    if count is None:
        count = min(100, len(available))
    if count < OBJECTS_PER_IMAGE:
        raise ConfigError(f"--objects must be at least {OBJECTS_PER_IMAGE} (two objects per image), got {count}")
    if count > MAX_CLASSES:
        raise ConfigError(f"--objects must be at most {MAX_CLASSES} (masks hold uint8 class ids), got {count}")
    if count > len(available):
        raise DataError(f"--objects {count} asks for more objects than the {len(available)} found; lower --objects")
    picked = split_rng(seed, "objects").choice(len(available), size=count, replace=False)
    return sorted((available[i] for i in picked), key=lambda o: o.id)


def split_hdris(hdris: list[HdriAsset], seed: int) -> tuple[list[HdriAsset], list[HdriAsset]]:
    """(train, test): disjoint, a quarter (at least one) for test, seeded."""
    if len(hdris) < 2:
        raise DataError(f"need at least 2 HDRIs (train and test use disjoint ones), found {len(hdris)}")
    order = split_rng(seed, "hdris").permutation(len(hdris))
    n_test = max(1, round(len(hdris) * TEST_HDRI_FRAC))
    test = sorted((hdris[i] for i in order[:n_test]), key=lambda h: h.id)
    train = sorted((hdris[i] for i in order[n_test:]), key=lambda h: h.id)
    return train, test


def _min_visible(size: int) -> int:
    return max(12, round(MIN_VISIBLE_FRAC * size * size))


def make_group(cfg: GsoConfig, split: str, group: int) -> list[dict[str, Any]]:
    """All samples of one group (1 for train, ``1 + variants`` for test): renders and metadata."""
    grouped = split != "train"
    hdris = cfg.hdris(split)
    K = gso_scene.intrinsics(cfg.size)
    r = renderer(cfg.render_settings)
    need = _min_visible(cfg.size)
    for attempt in range(MAX_ATTEMPTS):
        rng = split_rng(cfg.seed, split, group, attempt)
        try:
            scn = gso_scene.sample_group(
                rng, num_objects=len(cfg.objects), num_hdris=len(hdris), size=cfg.size,
                scale_range=(cfg.scale_min, cfg.scale_max), variants=cfg.variants, grouped=grouped,
                per_image=OBJECTS_PER_IMAGE, attempt=attempt,
            )
        except gso_scene.SceneError as e:
            raise ConfigError(str(e)) from None
        objs = [cfg.objects[i] for i in scn.objects]
        class_ids = [i + 1 for i in scn.objects]
        verts = r.place(objs, class_ids, hdris[scn.hdri], scn.hdri_rotation, scn.rotations)
        positions = scn.positions(K)
        masks = []
        for pos in positions:
            r.move(pos)
            masks.append(r.render_mask())
        if all(int((m == c).sum()) >= need for m in masks for c in class_ids):
            break
    else:
        raise DataError(
            f"{split} group {group}: no scene with both objects visible in every variant after {MAX_ATTEMPTS} draws; "
            "narrow --scale-range or raise --size"
        )
    hdri = hdris[scn.hdri]
    camera = {
        "K": K.tolist(),
        "world_to_camera": gso_scene.world_to_camera().tolist(),
        "blender_matrix_world": gso_scene.blender_camera_matrix().tolist(),
        "focal_mm": gso_scene.FOCAL_MM, "sensor_mm": gso_scene.SENSOR_MM, "convention": "opencv",
    }
    render_info = {
        "engine": cfg.engine, "samples": cfg.samples, "denoise": cfg.denoise, "device": cfg.device,
        "seed": scn.render_seed, "view_transform": VIEW_TRANSFORM, "world_map_resolution": WORLD_MAP_RESOLUTION,
        "mask": "cycles object index, 1 spp, no filter",
    }
    samples = []
    for variant, (pos, mask) in enumerate(zip(positions, masks)):
        r.move(pos)
        image = r.render_image(scn.render_seed)
        scales = [float(s) for s in scn.scales[variant]]
        distances = [round(float(d), 6) for d in scn.distances[variant]]
        boxes = [projected_box(v, q, p, K, cfg.size) for v, q, p in zip(verts, scn.rotations, pos)]
        visible = []
        for c in class_ids:
            rows, cols = np.flatnonzero((mask == c).any(1)), np.flatnonzero((mask == c).any(0))
            visible.append([int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1])
        objects = [
            {
                "id": o.id, "class_id": c, "distance": d, "reference_distance": round(float(rd), 6), "scale": s,
                "position": [round(float(x), 6) for x in p], "rotation": [round(float(x), 6) for x in q],
                "pixel": [round(float(x), 3) for x in px], "visible_pixels": int((mask == c).sum()),
            }
            for o, c, d, rd, s, p, q, px in zip(objs, class_ids, distances, scn.reference_distances, scales, pos,
                                                scn.rotations, scn.pixels)
        ]
        meta = {
            "group": group, "variant": variant, "reference": grouped and variant == 0, "split": split,
            "label": "+".join(o.id for o in objs),
            "classes": class_ids, "scales": scales, "distances": distances, "boxes": boxes, "visible_boxes": visible,
            "objects": objects, "camera": camera,
            "hdri": {"id": hdri.id, "rotation_deg": round(float(np.degrees(scn.hdri_rotation)), 4)},
            "render": render_info, "size": cfg.size, "scale_range": [cfg.scale_min, cfg.scale_max],
            "source": {"dataset": cfg.source, "objects": [o.id for o in objs], "hdri": hdri.id},
            "attempt": scn.attempt,
        }
        samples.append({"__key__": f"{group:07d}_{variant:02d}", "png": encode_png(image),
                        "mask.png": encode_png(mask), "json": meta})
    return samples


def make_shard(cfg: GsoConfig, spec: ShardSpec):
    """Samples of one shard, group by group (picklable for worker processes)."""
    size = 1 if spec.split == "train" else cfg.group_size
    for group in range(spec.start // size, (spec.start + spec.count) // size):
        yield from make_group(cfg, spec.split, group)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def generate(
    out: Path,
    *,
    gso_dir: Path | None = None,
    hdri_dir: Path | None = None,
    objects: int | None = None,
    size: int = 256,
    train: int = 6000,
    test: int = 2000,
    variants: int = 4,
    scale_range: tuple[float, float] = (0.5, 2.0),
    engine: str = "cycles",
    samples: int = 32,
    denoise: bool = True,
    device: str = "cpu",
    seed: int = 0,
    workers: int = 1,
    shard_size: int = 100,
    overwrite: bool = False,
    progress: Progress | None = None,
    log=None,
) -> BuildResult:
    """Render GSO-LS into ``out`` (resumes an unfinished identical run).

    ``gso_dir``: GSO objects (folders or zips); ``hdri_dir``: ``.hdr``/``.exr`` files; either
    absent → the embedded demo assets.  ``objects``: how many objects (classes) to draw (default
    100, or all when fewer).  ``log`` receives one-line notices.
    """
    base = GsoConfig(size=size, train=train, test=test, variants=variants, scale_min=float(scale_range[0]),
                     scale_max=float(scale_range[1]), engine=engine, samples=samples, denoise=denoise,
                     device=device, seed=seed)
    check_options(base, shard_size)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    require_bpy()
    if device != "cpu":
        probe_device(device)
    available = gso_assets.discover_gso(gso_dir) if gso_dir is not None else gso_assets.demo_objects()
    all_hdris = gso_assets.discover_hdris(hdri_dir) if hdri_dir is not None else gso_assets.demo_hdris()
    chosen = choose_objects(available, objects, seed)
    hdris_train, hdris_test = split_hdris(all_hdris, seed)
    if log is not None and (gso_dir is None or hdri_dir is None):
        parts = []
        if gso_dir is None:
            parts.append(f"the {len(chosen)} textured demo meshes of pybullet_data (pass --gso DIR for GSO)")
        if hdri_dir is None:
            parts.append(f"Blender's {len(all_hdris)} CC0 studio-light HDRIs (pass --hdri DIR for your own)")
        log("demo assets, offline: " + " and ".join(parts))
    digest = gso_assets.assets_digest(chosen, all_hdris)  # also checks every mesh and texture
    source = ("gso" if gso_dir is not None else "demo") + "+" + ("hdri" if hdri_dir is not None else "studiolights")
    n_shards = len(plan_shards("train", train, shard_size)) + len(plan_shards("test", test, shard_size,
                                                                              base.group_size))
    threads = max(1, _cpu_count() // max(1, min(workers, n_shards)))
    cfg = replace(base, source=source, objects=tuple(chosen), hdris_train=tuple(hdris_train),
                  hdris_test=tuple(hdris_test), assets_sha256=digest, threads=threads)
    splits = [SplitPlan("train", train), SplitPlan("test", test, cfg.group_size, grouped=True)]
    return build(
        Path(out),
        name="gso-ls",
        generator="gso",
        config=cfg.identity(),
        seed=seed,
        splits=splits,
        shard_size=shard_size,
        make_shard=functools.partial(make_shard, cfg),
        workers=workers,
        overwrite=overwrite,
        progress=progress,
    )
