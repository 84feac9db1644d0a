"""What a GSO-LS dataset holds: :class:`GsoConfig`, its options and the checks across them.

The option fields are those of ``lsbench generate gso`` (derived from them, one declaration
each); Python users build the same object.  :func:`~.pipeline.generate` fills in the
``cli=False`` fields (the objects and HDRIs it drew, their digest, the renderer's threads);
:meth:`GsoConfig.identity` is what the manifest records, so a rerun with the same options resumes
and a different one is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...errors import ConfigError
from ...options import check_ranges, option
from .assets import HdriAsset, ObjectAsset
from .settings import DEVICES, ENGINES, VIEW_TRANSFORM, RenderSettings

OBJECTS_PER_IMAGE = 2
MAX_CLASSES = 255  # masks are uint8
# size × smallest scale below this leaves the smallest objects ~2 px in radius, too few pixels to pass
# the visibility check: a build would stop at some group with "no scene ... after 8 draws".
MIN_SIZE_X_SCALE = 24


@dataclass(frozen=True)
class GsoConfig:
    """Everything that determines the dataset (``identity()`` goes into the manifest), plus where
    the assets are and how many CPU threads a renderer uses (not part of the identity)."""

    DEFAULT_SHARD_SIZE: ClassVar[int] = 100  # small, as renders take seconds each

    gso_dir: Path | None = option(
        None, flag="--gso", help="Google Scanned Objects folder: one folder or .zip per object (meshes/model.obj, "
        "materials/textures/texture.png, metadata.pbtxt)."
    )
    hdri_dir: Path | None = option(
        None, flag="--hdri", help="Folder of .hdr/.exr environment maps (split train/test)."
    )
    demo: bool = option(
        False, flag="--demo", help="Use the embedded assets (pybullet_data meshes, Blender's studio-light HDRIs); "
        "also the default when neither --gso nor --hdri is given."
    )
    objects: int | None = option(
        None, help="Objects (classes) drawn from the source (default: 100, or all).", min=OBJECTS_PER_IMAGE,
        max=MAX_CLASSES,
    )
    size: int = option(256, help="Image side in px.", min=32, max=4096)
    train: int = option(6000, help="Number of train images.", min=1)
    test: int = option(2000, help="Number of test images, counting every variant of every group.", min=1)
    variants: int = option(4, help="Scaled variants per test group, besides the reference.")
    scale_range: tuple[float, float] = option((0.5, 2.0), help="Per-object apparent scale range MIN MAX.")
    engine: str = option(
        "cycles", help="Render engine: cycles or eevee (masks always come from Cycles).", choices=tuple(ENGINES)
    )
    samples: int = option(32, help="Samples per pixel.", min=1)
    denoise: bool = option(True, help="Denoise with OpenImageDenoise (Cycles).")
    device: str = option("cpu", help="Cycles device: cpu, cuda or optix.", choices=DEVICES)
    seed: int = option(0, help="Seed: the same command gives the same dataset whatever --workers.")
    # Filled in by the generator from the assets it finds (the identity records what they are).
    source: str = option("demo", cli=False)
    object_assets: tuple[ObjectAsset, ...] = option((), cli=False)
    hdris_train: tuple[HdriAsset, ...] = option((), cli=False)
    hdris_test: tuple[HdriAsset, ...] = option((), cli=False)
    assets_sha256: str = option("", cli=False)
    threads: int = option(0, cli=False)  # CPU threads per renderer: how to run, not the dataset

    @property
    def scale_min(self) -> float:
        return float(self.scale_range[0])

    @property
    def scale_max(self) -> float:
        return float(self.scale_range[1])

    @property
    def group_size(self) -> int:
        return 1 + self.variants

    @property
    def num_classes(self) -> int:
        return len(self.object_assets) + 1

    @property
    def render_settings(self) -> RenderSettings:
        return RenderSettings(self.size, self.engine, self.samples, self.denoise, self.device, self.threads)

    def hdris(self, split: str) -> tuple[HdriAsset, ...]:
        return self.hdris_train if split == "train" else self.hdris_test

    def identity(self) -> dict[str, Any]:
        """What the manifest records as the dataset's config (asset paths and threads are not)."""
        from . import scene as gso_scene  # numpy: here, not when the CLI declares the options

        cfg: dict[str, Any] = {
            "size": self.size, "train": self.train, "test": self.test, "variants": self.variants,
            "scale_min": self.scale_min, "scale_max": self.scale_max, "engine": self.engine,
            "samples": self.samples, "denoise": self.denoise, "device": self.device, "seed": self.seed,
            "source": self.source, "assets_sha256": self.assets_sha256,
        }
        cfg["objects"] = [
            {"class_id": i + 1, **{k: v for k, v in o.record().items() if k not in ("mesh", "texture", "archive")}}
            for i, o in enumerate(self.object_assets)
        ]
        cfg["hdris"] = {
            split: [{"id": h.id, "licence": h.licence} for h in self.hdris(split)] for split in ("train", "test")
        }
        cfg.update(
            task="seg", num_classes=self.num_classes, classes=["background"] + [o.id for o in self.object_assets],
            objects_per_image=OBJECTS_PER_IMAGE, view_transform=VIEW_TRANSFORM, focal_mm=gso_scene.FOCAL_MM,
            sensor_mm=gso_scene.SENSOR_MM, object_radius_m=gso_scene.OBJECT_RADIUS,
        )
        return cfg


def check_object_count(count: int) -> None:
    """``--objects`` within what a mask and a scene can hold."""
    if count < OBJECTS_PER_IMAGE:
        raise ConfigError(f"--objects must be at least {OBJECTS_PER_IMAGE} (two objects per image), got {count}")
    if count > MAX_CLASSES:
        raise ConfigError(f"--objects must be at most {MAX_CLASSES} (masks hold uint8 class ids), got {count}")


def check_config(cfg: GsoConfig) -> None:
    """Refuse impossible options with one line that says what to change (before touching assets)."""
    if cfg.demo and (cfg.gso_dir is not None or cfg.hdri_dir is not None):
        raise ConfigError("--demo uses the embedded assets; drop it to use --gso/--hdri")
    check_ranges(cfg, ("size", "engine", "device", "samples"))
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
    check_ranges(cfg, ("train", "test"))
    if cfg.test % cfg.group_size:
        raise ConfigError(
            f"--test {cfg.test} is not a multiple of the group size {cfg.group_size} (1 reference + {cfg.variants} "
            f"variants); use e.g. {cfg.test - cfg.test % cfg.group_size or cfg.group_size}"
        )
    if cfg.objects is not None:
        check_object_count(cfg.objects)
