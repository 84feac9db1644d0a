"""The GSO-LS pipeline: draw the assets, render one group of scenes; shards and the build.

The dataset is described in the package docstring; the options in :mod:`.config`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError
from ...shards import ShardSpec, encode_png, plan_shards
from ...util import split_rng
from ..runner import BuildResult, RunOptions, SplitPlan, build
from . import assets as gso_assets
from . import scene as gso_scene
from .assets import HdriAsset, ObjectAsset
from .config import OBJECTS_PER_IMAGE, GsoConfig, check_config, check_object_count
from .render import (
    VIEW_TRANSFORM,
    WORLD_MAP_RESOLUTION,
    check_hdris,
    probe_device,
    projected_box,
    renderer,
    require_bpy,
)

MAX_ATTEMPTS = 8  # scene redraws when an object ends up (nearly) invisible in some variant
MIN_VISIBLE_FRAC = 0.001  # an object must cover at least this fraction of the image (and 12 px) in every variant
TEST_HDRI_FRAC = 0.25


def choose_objects(available: list[ObjectAsset], count: int | None, seed: int) -> list[ObjectAsset]:
    """``count`` objects drawn (seeded) from ``available``, sorted by id (class id = position + 1).
    ``None``: 100, or all when fewer are available."""
    if count is None:
        count = min(100, len(available))
    check_object_count(count)
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
                rng, num_objects=len(cfg.object_assets), num_hdris=len(hdris), size=cfg.size,
                scale_range=(cfg.scale_min, cfg.scale_max), variants=cfg.variants, grouped=grouped,
                per_image=OBJECTS_PER_IMAGE, attempt=attempt,
            )
        except gso_scene.SceneError as e:
            raise ConfigError(str(e)) from None
        objs = [cfg.object_assets[i] for i in scn.objects]
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


def generate(config: GsoConfig, out: Path, run: RunOptions | None = None) -> BuildResult:
    """Render GSO-LS into ``out`` (resumes an unfinished identical run).

    ``config.gso_dir``: GSO objects (folders or zips); ``config.hdri_dir``: ``.hdr``/``.exr`` files;
    either absent → the embedded demo assets.  ``config.objects``: how many objects (classes) to draw
    (default 100, or all when fewer).  ``run.log`` receives one-line notices.
    """
    run = (run or RunOptions()).checked(GsoConfig.DEFAULT_SHARD_SIZE)
    check_config(config)
    require_bpy()
    if config.device != "cpu":
        probe_device(config.device)
    gso_dir, hdri_dir, log = config.gso_dir, config.hdri_dir, run.log
    available = gso_assets.discover_gso(gso_dir) if gso_dir is not None else gso_assets.demo_objects()
    all_hdris = gso_assets.discover_hdris(hdri_dir) if hdri_dir is not None else gso_assets.demo_hdris()
    chosen = choose_objects(available, config.objects, config.seed)
    hdris_train, hdris_test = split_hdris(all_hdris, config.seed)
    if log is not None and (gso_dir is None or hdri_dir is None):
        parts = []
        if gso_dir is None:
            parts.append(f"the {len(chosen)} textured demo meshes of pybullet_data (pass --gso DIR for GSO)")
        if hdri_dir is None:
            parts.append(f"Blender's {len(all_hdris)} CC0 studio-light HDRIs (pass --hdri DIR for your own)")
        log("demo assets, offline: " + " and ".join(parts))
    digest = gso_assets.assets_digest(chosen, all_hdris)  # also checks every mesh and texture
    if hdri_dir is not None:  # decoded as the renderer will (Blender's own studio lights are known good)
        check_hdris(all_hdris)
    source = ("gso" if gso_dir is not None else "demo") + "+" + ("hdri" if hdri_dir is not None else "studiolights")
    n_shards = len(plan_shards("train", config.train, run.shard_size)) + len(
        plan_shards("test", config.test, run.shard_size, config.group_size))
    threads = max(1, _cpu_count() // max(1, min(run.workers, n_shards)))
    cfg = replace(config, source=source, object_assets=tuple(chosen), hdris_train=tuple(hdris_train),
                  hdris_test=tuple(hdris_test), assets_sha256=digest, threads=threads)
    splits = [SplitPlan("train", cfg.train), SplitPlan("test", cfg.test, cfg.group_size, grouped=True)]
    return build(
        Path(out),
        name="gso-ls",
        generator="gso",
        config=cfg.identity(),
        seed=cfg.seed,
        splits=splits,
        make_shard=functools.partial(make_shard, cfg),
        run=run,
    )
