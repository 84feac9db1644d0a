"""Contact sheets: a grid of samples with their label, per-object scales and boxes drawn on.

The sheet is written like every lsbench file (:func:`lsbench.util.atomic_open`): complete under its
name or absent, an earlier sheet intact, folders it made for it removed again when writing fails
(an outside probe found a 0-byte PNG and a traceback after ``preview`` into a full disk).
"""

from __future__ import annotations

import math
from itertools import islice
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .dataset import open_dataset, read_split
from .errors import ConfigError, DatasetError
from .util import atomic_open, undo_new_folders

BOX_COLOURS = ((230, 60, 60), (60, 200, 90), (70, 130, 240), (240, 190, 40), (200, 80, 220))


def _caption(sample: dict) -> list[str]:
    meta = sample["meta"]
    label = meta.get("label", sample.get("cls", "?"))
    head = f"{label}  g{meta['group']}/v{meta['variant']}" + ("  ref" if meta.get("reference") else "")
    scales = meta.get("scales")
    tail = "s=" + ",".join(f"{s:.2f}" for s in scales) if scales else ""
    return [head, tail]


def _tile(sample: dict, width: int, font) -> Image.Image:
    image = sample["image"]
    rgb = Image.fromarray(image).convert("RGB")
    factor = width / rgb.width
    rgb = rgb.resize((width, round(rgb.height * factor)), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(rgb)
    for i, box in enumerate(sample["meta"].get("boxes") or []):
        x0, y0, x1, y1 = (v * factor for v in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=BOX_COLOURS[i % len(BOX_COLOURS)], width=1)
    band = 2 * (font.size + 4) if hasattr(font, "size") else 28
    cell = Image.new("RGB", (width, rgb.height + band), (255, 255, 255))
    cell.paste(rgb, (0, 0))
    text = ImageDraw.Draw(cell)
    for line_no, line in enumerate(_caption(sample)):
        text.text((3, rgb.height + 2 + line_no * (band // 2)), line, fill=(0, 0, 0), font=font)
    return cell


def image_format(out: Path) -> str:
    """PIL's format for the file name ``out`` (``.png``, ``.jpg``, ...); an unknown suffix is one line."""
    fmt = Image.registered_extensions().get(Path(out).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ConfigError(f"--out {out}: name the image file with a suffix PIL can write, e.g. {Path(out).stem}.png")
    return fmt


def contact_sheet(directory: Path, out: Path, *, split: str | None = None, n: int = 16, width: int = 160) -> Path:
    """Write a PNG grid of the first ``n`` samples of ``split`` (default: test, else the first)."""
    out = Path(out)
    fmt = image_format(out)
    dataset = open_dataset(directory)
    if split is None:
        split = "test" if "test" in dataset.splits else next(iter(sorted(dataset.splits)), None)
    if n < 1:
        raise DatasetError(f"-n must be at least 1, got {n}")
    samples = list(islice(read_split(dataset, split), n)) if split else []
    if not samples:
        raise DatasetError(f"{directory}: split {split!r} has no samples to preview")
    font = ImageFont.load_default(size=11)
    tiles = [_tile(s, width, font) for s in samples]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    th = max(t.height for t in tiles)
    gap = 4
    sheet = Image.new("RGB", (cols * (width + gap) + gap, rows * (th + gap) + gap), (200, 200, 200))
    for i, t in enumerate(tiles):
        sheet.paste(t, (gap + (i % cols) * (width + gap), gap + (i // cols) * (th + gap)))
    with undo_new_folders(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(out, "wb") as f:
            sheet.save(f, format=fmt)
    return out


__all__ = ["contact_sheet"]
