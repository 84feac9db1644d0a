"""How a GSO scene is rendered (engine, device, samples): the names the config's options declare.

Apart from :mod:`.render` so that the config, hence ``lsbench generate --help`` and the CLI's start,
need neither numpy nor Blender.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = {"cycles": "CYCLES", "eevee": "BLENDER_EEVEE"}
DEVICES = ("cpu", "cuda", "optix")
VIEW_TRANSFORM = "AgX"


@dataclass(frozen=True)
class RenderSettings:
    """How to render (not what): image side (px), engine, samples per pixel, denoising, device, CPU threads."""

    size: int
    engine: str = "cycles"
    samples: int = 64
    denoise: bool = True
    device: str = "cpu"
    threads: int = 0  # 0 = all cores
