"""Source photos: the ILSVRC-2012 layout, any ImageFolder, or the photos bundled in packages.

Layouts (checked in this order under ``--src ROOT``):

- **Kaggle ILSVRC** — ``ROOT/ILSVRC/Data/CLS-LOC/{train,val}`` with ``ROOT/LOC_val_solution.csv``
  (val labels and boxes) and XML boxes in ``ROOT/ILSVRC/Annotations/CLS-LOC``.
- **ILSVRC-2012** — ``ROOT/train/<wnid>/*.JPEG``; ``ROOT/val/`` either in ``<wnid>/`` folders or flat
  with its labels from ``LOC_val_solution.csv`` or the devkit
  (``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` + ``meta.mat``) in ROOT;
  optional XML boxes in ``ROOT/Annotations/CLS-LOC/{train,val}`` or ``--boxes``.
- **ImageFolder** — ``ROOT/<class>/*.jpg``.  Folders named by wnids use the ImageNet labels;
  otherwise classes are the sorted folder names (labels 0..C-1, prompt = folder name) and each
  photo goes to *test* when a hash of its relative path falls in the lowest 20 %, else to *train*.

Train sources come from ``train/``, test sources from ``val/``.  Every listing is sorted, so the
same tree gives the same dataset.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import ConfigError
from .classes import WNID_RE, by_wnid
from .types import Box

IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")
TEST_FRACTION = 0.2  # ImageFolder without train/val: share of each class that becomes test sources
MIN_SIDE = 32  # photos smaller than this are rejected at load time
MAX_PIXELS = 89_478_485  # PIL's own warning limit (~9459² px), far above any ImageNet photo; larger ones are rejected
PROBE_DECODE_PIXELS = 4_000_000  # formats without a cheap partial decode (WebP, BMP, TIFF) are decoded up to this


@dataclass(frozen=True)
class SourcePhoto:
    """One source photo.  ``id`` is what the metadata records (path relative to the root)."""

    id: str
    path: str
    label: int
    prompt: str
    wnid: str | None = None
    annotation: str | None = None  # ILSVRC XML file with the photo's boxes
    boxes: tuple[Box, ...] | None = None  # boxes known from a CSV/the demo list, in source pixels


@dataclass(frozen=True)
class SourceSet:
    """The photos of one source split by label (only non-empty classes), deterministic order."""

    layout: str
    root: str
    num_classes: int
    class_names: tuple[str, ...]
    by_label: dict[int, tuple[SourcePhoto, ...]] = field(repr=False)

    @property
    def num_photos(self) -> int:
        return sum(len(v) for v in self.by_label.values())

    def digest(self) -> str:
        """sha256 of the sorted listing (ids and labels): identifies the source tree cheaply."""
        h = hashlib.sha256()
        for label in sorted(self.by_label):
            for p in self.by_label[label]:
                h.update(f"{label}\t{p.id}\n".encode())
        return h.hexdigest()


class PhotoError(Exception):
    """A photo that cannot be used (corrupt, unsupported, too small): a rejection, not a crash."""


# ---------------------------------------------------------------- photo decoding


@contextlib.contextmanager
def _decode_errors():
    """PIL's many exception types for unusable files as one :class:`PhotoError` line."""
    try:
        yield
    except PhotoError:
        raise
    except UnidentifiedImageError:
        raise PhotoError("cannot decode (not an image format PIL can read)") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise PhotoError(f"image too large to decode safely (over {limit / 1e6:.0f} megapixels)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        detail = str(e).splitlines()[0] if str(e) else "corrupt"
        raise PhotoError(f"cannot decode ({type(e).__name__}: {detail})") from None


def _open(source) -> Image.Image:
    """``Image.open`` (header only) refusing more than :data:`MAX_PIXELS` (PIL itself only warns, on stderr,
    up to twice its limit, then decodes it: 0.3 GB per 100 MP photo in every worker)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(source)
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise PhotoError(f"image is {w}x{h} px, over the {MAX_PIXELS / 1e6:.0f}-megapixel limit")
    if im.mode == "F":
        im.close()
        raise PhotoError(f"unsupported floating-point image ({im.format})")
    return im


def _fitted(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size of a ``size`` photo once its longest side is at most ``max_side``."""
    if max(size) <= max_side:
        return size
    ratio = max_side / max(size)
    return max(1, round(size[0] * ratio)), max(1, round(size[1] * ratio))


def _too_small(size: tuple[int, int]) -> PhotoError | None:
    if min(size) < MIN_SIDE:  # checked after the downscale: a 2000x100 strip becomes 512x26
        return PhotoError(f"photo is {size[0]}x{size[1]} px after decoding, smaller than {MIN_SIDE} px")
    return None


def _verify_png(data: bytes) -> None:
    """A PNG's chunk checksums, without inflating it (0.3 ms for 500x375 px): a garbage body stops here."""
    with _open(io.BytesIO(data)) as im:
        if im.format == "PNG":
            im.verify()


def decode_photo(data: bytes, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode any photo PIL reads into ``(H, W, 3)`` uint8 RGB, longest side ≤ ``max_side``.

    The format comes from the content, not the file name (ImageNet has PNGs and CMYK JPEGs named
    ``.JPEG``); greyscale, palette, alpha, CMYK and 16-bit images are converted.  EXIF orientation
    is *not* applied: ILSVRC boxes and the usual ImageNet loaders (torchvision, timm) use the stored
    pixels, and so does lsbench.  Returns the image and the decoded photo's original ``(width, height)``.
    Raises :class:`PhotoError` with a one-line reason (every photo :func:`probe_photo` rejects among them).
    """
    with _decode_errors():
        _verify_png(data)
        with _open(io.BytesIO(data)) as im:
            im.load()
            size = im.size
            if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit greyscale: keep the top 8 bits
                arr = np.asarray(im, dtype=np.float64)
                # "I;16*" is 16-bit by definition; PIL's 32-bit "I" holds 16-bit PNGs, or 8-bit data.
                top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8))
            rgb = im.convert("RGB")
    if max(rgb.size) > max_side:
        rgb = rgb.resize(_fitted(rgb.size, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    small = _too_small(rgb.size)
    if small is not None:
        raise small
    return np.asarray(rgb, dtype=np.uint8).copy(), size


def probe_photo(photo: SourcePhoto, max_side: int) -> None:
    """Check a source photo cheaply: its header (format, size, the pixel limit, the size once fitted to
    ``max_side``) and a bounded decode — a JPEG at 1/8 scale (DCT scaling: the whole entropy-coded body
    is read, so a truncated or garbled one fails as in a full decode), a PNG's chunk checksums, any
    other format in full up to :data:`PROBE_DECODE_PIXELS`.  Raises the :class:`PhotoError`
    :func:`decode_photo` would raise; passing is no promise (the decode or the stages may still reject it).
    """
    try:
        f = open(photo.path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise PhotoError(f"cannot read ({e.strerror or e})") from None
    with f, _decode_errors(), _open(f) as im:
        small = _too_small(_fitted(im.size, max_side))
        if small is not None:
            raise small
        w, h = im.size
        if im.format == "PNG":
            im.verify()
        elif im.format == "JPEG":
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
        elif w * h <= PROBE_DECODE_PIXELS:
            im.load()


def read_photo_bytes(photo: SourcePhoto) -> bytes:
    try:
        return Path(photo.path).read_bytes()
    except OSError as e:
        raise PhotoError(f"cannot read ({e.strerror or e})") from None


def annotation_boxes(photo: SourcePhoto, image_size: tuple[int, int], source_size: tuple[int, int]) -> list[Box]:
    """The photo's annotated boxes for its own class, in the pixels of the decoded image."""
    boxes: list[Box] = list(photo.boxes or ())
    ref_size = source_size
    if photo.annotation:
        try:
            root = ET.parse(photo.annotation).getroot()
            w, h = root.findtext("size/width"), root.findtext("size/height")
            if w and h and int(w) > 0 and int(h) > 0:
                ref_size = (int(w), int(h))
            for obj in root.iter("object"):
                if photo.wnid is not None and obj.findtext("name") != photo.wnid:
                    continue
                bb = obj.find("bndbox")
                if bb is not None:
                    boxes.append(tuple(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
        except (ET.ParseError, OSError, TypeError, ValueError):
            pass  # an unreadable annotation is a missing one: the detector then rejects the photo
    sx, sy = image_size[0] / ref_size[0], image_size[1] / ref_size[1]
    return [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in boxes]


# ---------------------------------------------------------------- discovery


def _images_in(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_EXTS))


def _class_dirs(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _classes_of(names: list[str], where: Path) -> tuple[dict[str, int], tuple[str, ...], int, bool]:
    """Map folder names to labels: wnids → ImageNet labels, other names → sorted order."""
    wnid_like = [n for n in names if WNID_RE.match(n)]
    if wnid_like and len(wnid_like) != len(names):
        other = next(n for n in names if not WNID_RE.match(n))
        raise ConfigError(f"{where} mixes wnid folders with {other!r}; use only ImageNet wnids or only class names")
    if wnid_like:
        known = by_wnid()
        for n in names:
            if n not in known:
                raise ConfigError(f"{where / n} is not one of the 1,000 ImageNet-1k wnids; remove or rename it")
        return {n: known[n].label for n in names}, tuple(c.prompt for c in known.values()), 1000, True
    return {n: i for i, n in enumerate(names)}, tuple(n.replace("_", " ") for n in names), len(names), False


def _test_share(relative: str) -> bool:
    digest = hashlib.sha256(relative.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION


def _folder_set(layout: str, root: Path, folder: Path, split: str | None, ann: Path | None) -> SourceSet:
    """Class folders under ``folder``; ``split`` filters an ImageFolder by the path hash."""
    names = _class_dirs(folder)
    if not names:
        raise ConfigError(f"{folder} has no class folders; expected {folder}/<class>/*.jpg")
    labels, class_names, num_classes, imagenet = _classes_of(names, folder)
    known = by_wnid()
    by_label: dict[int, tuple[SourcePhoto, ...]] = {}
    for name in names:
        files = _images_in(folder / name)
        if not files:
            raise ConfigError(f"class folder {folder / name} has no images (.jpg/.png/...); add photos or remove it")
        photos = []
        for f in files:
            rel = str((folder / name / f).relative_to(root))
            if split is not None and _test_share(rel) != (split == "test"):
                continue
            xml = None
            if ann is not None:  # per-class folders (train) or one flat folder (the official val XMLs)
                xml = ann / name / (Path(f).stem + ".xml")
                if not xml.is_file():
                    xml = ann / (Path(f).stem + ".xml")
            photos.append(SourcePhoto(
                id=rel, path=str(folder / name / f), label=labels[name],
                prompt=known[name].prompt if imagenet else class_names[labels[name]],
                wnid=name if imagenet else None, annotation=str(xml) if xml is not None and xml.is_file() else None,
            ))
        if photos:
            by_label[labels[name]] = tuple(photos)
    return SourceSet(layout, str(root), num_classes, class_names, by_label)


def _val_labels(root: Path, search: list[Path]) -> tuple[dict[str, str], dict[str, tuple[Box, ...]]]:
    """Flat val/: ``{file stem: wnid}`` (and boxes) from LOC_val_solution.csv or the devkit."""
    for base in search:
        solution = base / "LOC_val_solution.csv"
        if solution.is_file():
            labels, boxes = {}, {}
            with open(solution, newline="") as f:
                for row in csv.DictReader(f):
                    parts = row["PredictionString"].split()
                    labels[row["ImageId"]] = parts[0]
                    boxes[row["ImageId"]] = tuple(
                        tuple(float(v) for v in parts[i + 1:i + 5])
                        for i in range(0, len(parts) - 4, 5) if parts[i] == parts[0]
                    )
            return labels, boxes
        devkit = base / "ILSVRC2012_devkit_t12" / "data"
        truth = devkit / "ILSVRC2012_validation_ground_truth.txt"
        if truth.is_file() and (devkit / "meta.mat").is_file():
            from scipy.io import loadmat  # scipy comes with scikit-image ([imagenet] extra)

            synsets = loadmat(str(devkit / "meta.mat"), squeeze_me=True)["synsets"]
            id_to_wnid = {int(s[0]): str(s[1]) for s in synsets if int(s[4]) == 0}  # leaves = the 1,000 classes
            ids = [int(v) for v in truth.read_text().split()]
            return {f"ILSVRC2012_val_{i + 1:08d}": id_to_wnid[v] for i, v in enumerate(ids)}, {}
    raise ConfigError(
        f"{root}/val holds photos without class folders and no labels were found; put LOC_val_solution.csv or "
        "the ILSVRC2012_devkit_t12 folder in the source root, or sort val/ into <wnid>/ folders"
    )


def _flat_val(root: Path, val: Path, ann: Path | None, search: list[Path]) -> SourceSet:
    labels, csv_boxes = _val_labels(root, search)
    known = by_wnid()
    grouped: dict[int, list[SourcePhoto]] = {}
    for f in _images_in(val):
        stem = Path(f).stem
        wnid = labels.get(stem)
        if wnid is None:
            raise ConfigError(f"{val / f} has no label in the validation ground truth; remove it or fix the labels")
        if wnid not in known:
            raise ConfigError(f"validation label {wnid!r} of {f} is not an ImageNet-1k wnid")
        xml = ann / (stem + ".xml") if ann is not None else None
        c = known[wnid]
        grouped.setdefault(c.label, []).append(SourcePhoto(
            id=str((val / f).relative_to(root)), path=str(val / f), label=c.label, prompt=c.prompt, wnid=wnid,
            annotation=str(xml) if xml is not None and xml.is_file() else None, boxes=csv_boxes.get(stem) or None,
        ))
    if not grouped:
        raise ConfigError(f"{val} has no photos")
    names = tuple(c.prompt for c in known.values())
    return SourceSet("ilsvrc", str(root), 1000, names, {k: tuple(v) for k, v in sorted(grouped.items())})


def scan(root: Path, split: str, boxes: Path | None = None) -> SourceSet:
    """The source photos of ``split`` ("train" or "test") under ``root``; see the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--src {root} is not a folder")
    search = [root]
    base, ann_base = root, root / "Annotations" / "CLS-LOC"
    if (root / "ILSVRC" / "Data" / "CLS-LOC").is_dir():  # Kaggle's ImageNet Object Localization layout
        base, ann_base = root / "ILSVRC" / "Data" / "CLS-LOC", root / "ILSVRC" / "Annotations" / "CLS-LOC"
    if boxes is not None:
        if not Path(boxes).is_dir():
            raise ConfigError(f"--boxes {boxes} is not a folder")
        ann_base = Path(boxes)
    sub = "train" if split == "train" else "val"
    if (base / "train").is_dir() or (base / "val").is_dir():
        folder = base / sub
        if not folder.is_dir():
            raise ConfigError(f"{root} has no {sub}/ folder, needed for the {split} split")
        ann = ann_base / sub if (ann_base / sub).is_dir() else (ann_base if boxes is not None else None)
        if _class_dirs(folder):
            return _folder_set("ilsvrc", root, folder, None, ann)
        return _flat_val(root, folder, ann, search)
    if _class_dirs(root) and not _images_in(root):
        return _folder_set("imagefolder", root, root, split, Path(boxes) if boxes is not None else None)
    raise ConfigError(
        f"{root} is in neither layout: expected train/<wnid>/*.JPEG and val/ (ILSVRC-2012) "
        "or <class>/*.jpg (ImageFolder)"
    )


# ---------------------------------------------------------------- the bundled demo photos


@lru_cache(maxsize=1)
def _demo_list() -> list[dict]:
    import json

    return json.loads(resources.files("lsbench").joinpath("assets/imagenet_demo.json").read_text())["photos"]


def _package_file(package: str, relative: str) -> Path:
    try:
        return Path(str(resources.files(package).joinpath(relative)))
    except ModuleNotFoundError:
        raise ConfigError(
            f"--demo reads photos bundled with {package}, which is not installed; pip install 'lsbench[imagenet]'"
        ) from None


def demo_set() -> SourceSet:
    """The photos listed in ``assets/imagenet_demo.json`` (real photos shipped in installed packages)."""
    known = by_wnid()
    grouped: dict[int, list[SourcePhoto]] = {}
    for entry in _demo_list():
        path = _package_file(entry["package"], entry["file"])
        if not path.is_file():
            raise ConfigError(f"demo photo {path} is missing from the installed {entry['package']}; reinstall it")
        c = known[entry["wnid"]]
        grouped.setdefault(c.label, []).append(SourcePhoto(
            id=f"{entry['package']}:{entry['file']}", path=str(path), label=c.label, prompt=c.prompt, wnid=c.wnid,
            boxes=(tuple(entry["box"]),),
        ))
    names = tuple(c.prompt for c in known.values())
    return SourceSet("demo", "(bundled photos)", 1000, names, {k: tuple(v) for k, v in sorted(grouped.items())})
