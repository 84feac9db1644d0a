"""ImageNet-LS core: compose geometry, sources and decoding, classical backends, stage cache,
candidate assignment, the pipeline end to end on the bundled demo photos, rejections and the CLI.

The learned backends (GroundingDINO, SAM, LaMa) are covered by ``test_imagenet_learned.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from card_checks import assert_cards_load
from conftest import assert_user_error, generate_imagenet, read_json, sha256, shard_files
from PIL import Image

from lsbench import dataset
from lsbench.errors import ConfigError, DataError, LsbenchError
from lsbench.generators.imagenet import classical, compose, pipeline, sources
from lsbench.generators.imagenet.cache import Prepared, Rejection, StageCache, cache_key
from lsbench.generators.imagenet.classes import by_wnid, imagenet_classes
from lsbench.generators.imagenet.sources import PhotoError, SourcePhoto, SourceSet, decode_photo
from lsbench.generators.imagenet.stages import build_detector, build_inpainter, build_segmenter

cv2 = pytest.importorskip("cv2")

PAPER_SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
CLASSICAL = dict(detector="annotation", segmenter="grabcut", inpainter="opencv")
TENCH, GOLDFISH = "n01440764", "n01443537"  # labels 0 and 1


# --------------------------------------------------------------------------- helpers


def _encode(image: np.ndarray | Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _disc_photo(h: int = 96, w: int = 96, centre=(48, 48), radius: int = 22, seed: int = 0):
    """A solid red disc on dark grey-blue noise; returns the image and the disc's bool mask."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 90, size=(h, w, 3), dtype=np.uint8)
    image[..., 2] = rng.integers(60, 150, size=(h, w), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disc = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    image[disc] = (230, 40, 30)
    return image, disc


def _xml(path: Path, size: tuple[int, int], objects: list[tuple[str, tuple[int, int, int, int]]]) -> Path:
    """An ILSVRC/PASCAL VOC box annotation: ``<size>`` and one ``<object>`` per (name, box)."""
    objs = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    text = (f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
            f"{objs}</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _is_test(relative: str) -> bool:
    """The documented ImageFolder rule: a photo is a test source when the hash of its path is in the lowest 20 %."""
    return int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big") / 2**64 < 0.2


def _train_names(folder: str, n: int, ext: str = "jpg") -> list[str]:
    """``n`` file names that the ImageFolder hash rule puts in the train split of class ``folder``."""
    names, i = [], 0
    while len(names) < n:
        name = f"img{i:03d}.{ext}"
        if not _is_test(f"{folder}/{name}"):
            names.append(name)
        i += 1
    return names


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _samples(directory: Path, split: str) -> list[dict]:
    return list(dataset.read_split(directory, split))


def _shard_hashes(directory: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(Path(directory).glob("*.tar"))}


# --------------------------------------------------------------------------- 1. compose geometry


@pytest.fixture(scope="module")
def ellipse():
    """A textured elliptical object on a noisy photo, a different noisy background, and its cut-out."""
    h, w = 240, 320
    photo, background = _noise(h, w, 1), _noise(h, w, 2)
    yy, xx = np.mgrid[:h, :w]
    mask = ((xx - 150) / 60.0) ** 2 + ((yy - 120) / 40.0) ** 2 <= 1
    return photo, background, mask, compose.cut_out(photo, mask)


def test_cut_out_crops_to_the_mask_box(ellipse):
    photo, _, mask, cut = ellipse
    ys, xs = np.nonzero(mask)
    assert cut.origin == (xs.min(), ys.min())
    assert cut.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert cut.alpha.dtype == np.uint8 and set(np.unique(cut.alpha)) == {0, 255}
    assert int((cut.alpha == 255).sum()) == int(mask.sum())
    x0, y0, x1, y1 = cut.box
    assert np.array_equal(cut.rgb, photo[y0:y1, x0:x1])


def test_anchor_points():
    assert compose.anchor_point((10, 20, 30, 60), "centre") == (20, 40)
    assert compose.anchor_point((10, 20, 30, 60), "bottom") == (20, 60)
    with pytest.raises(ValueError, match="anchor"):
        compose.anchor_point((10, 20, 30, 60), "top")


@pytest.mark.parametrize("anchor", ["centre", "bottom"])
@pytest.mark.parametrize("feather", [0.0, 1.0])
@pytest.mark.parametrize("scale", PAPER_SCALES)
def test_paste_area_background_and_anchor(ellipse, scale, feather, anchor):
    _, background, mask, cut = ellipse
    a = compose.anchor_point(cut.box, anchor)
    result = compose.paste(background, cut, scale, a, feather)
    assert result.image.shape == background.shape and result.image.dtype == np.uint8
    # The object's area (alpha sum) scales by s², within 2 % (integer output sizes round s).
    assert result.alpha.sum() == pytest.approx(scale**2 * mask.sum(), rel=0.02)
    assert result.scale_xy[0] == pytest.approx(scale, abs=0.01) and result.scale_xy[1] == pytest.approx(scale, abs=0.01)
    # Where the pasted alpha is 0 the image is the background, byte for byte.
    outside = result.alpha == 0
    assert outside.mean() > 0.5
    assert np.array_equal(result.image[outside], background[outside])
    # The anchor stays put: the box's centre / bottom-centre is the anchor within a pixel.
    x0, y0, x1, y1 = result.box
    assert (x0 + x1) / 2 == pytest.approx(a[0], abs=1.0)
    assert ((y0 + y1) / 2 if anchor == "centre" else y1) == pytest.approx(a[1], abs=1.0)
    # ... and the box has the scaled size (the feather trims at most a pixel per side).
    bw, bh = cut.box[2] - cut.box[0], cut.box[3] - cut.box[1]
    assert abs((x1 - x0) - scale * bw) <= 3 and abs((y1 - y0) - scale * bh) <= 3


def test_feather_softens_the_edge(ellipse):
    _, background, _, cut = ellipse
    hard = compose.paste(background, cut, 1.0, compose.anchor_point(cut.box, "centre"), feather=0)
    assert set(np.unique(hard.alpha)) == {0.0, 1.0}
    with_feather = compose.paste(background, cut, 1.3, compose.anchor_point(cut.box, "centre"), feather=1.0)
    soft = (with_feather.alpha > 0) & (with_feather.alpha < 1)
    assert soft.sum() > 100  # a feathered edge all around


@pytest.mark.parametrize("scale", [0.7, 1.3])
def test_paste_without_feather_is_binary(ellipse, scale):
    _, background, mask, cut = ellipse
    result = compose.paste(background, cut, scale, compose.anchor_point(cut.box, "centre"), feather=0)
    assert set(np.unique(result.alpha)) == {0.0, 1.0}
    assert result.alpha.sum() == pytest.approx(scale**2 * mask.sum(), rel=0.02)


def test_reference_without_feather_is_the_photo_on_the_background(ellipse):
    photo, background, mask, cut = ellipse
    result = compose.paste(background, cut, 1.0, compose.anchor_point(cut.box, "centre"), feather=0)
    assert np.array_equal(result.image, np.where(mask[..., None], photo, background))
    assert np.array_equal(result.alpha, mask.astype(np.float32))
    assert result.box == cut.box and result.scale_xy == (1.0, 1.0)


def test_reference_with_feather_keeps_the_object_interior(ellipse):
    """``scale`` = 1 pastes the object back at its own pixels; only the feathering changes its edge."""
    photo, background, mask, cut = ellipse
    result = compose.paste(background, cut, 1.0, compose.anchor_point(cut.box, "centre"), feather=1.0)
    interior = cv2.erode(mask.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0  # 5 px away from the edge
    assert interior.sum() > 1000 and result.alpha[interior].min() == 1.0
    assert np.array_equal(result.image[interior], photo[interior])


def test_paste_clips_at_the_frame(ellipse):
    photo, background, _, _ = ellipse
    h, w = background.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    mask = ((xx - 295) / 22.0) ** 2 + ((yy - 215) / 22.0) ** 2 <= 1  # near the bottom-right corner
    cut = compose.cut_out(photo, mask)
    result = compose.paste(background, cut, 1.3, compose.anchor_point(cut.box, "centre"), feather=1.0)
    x0, y0, x1, y1 = result.box
    assert x1 == w and y1 == h and x0 > 0 and y0 > 0
    # Part of the object left the frame: less than s² of its area remains.
    assert 0.5 * mask.sum() < result.alpha.sum() < 0.95 * 1.3**2 * mask.sum()
    outside = result.alpha == 0
    assert np.array_equal(result.image[outside], background[outside])


# --------------------------------------------------------------------------- 2. classes and sources


def test_imagenet_classes():
    classes = imagenet_classes()
    assert len(classes) == 1000 and [c.label for c in classes] == list(range(1000))
    assert [c.wnid for c in classes] == sorted(c.wnid for c in classes)
    assert by_wnid()[TENCH].label == 0 and by_wnid()["n02123045"].prompt == "tabby"


def _ilsvrc_tree(root: Path) -> Path:
    """train/<wnid>/*.JPEG (2 classes × 3) and val/<wnid>/ (1 each)."""
    for k, wnid in enumerate((TENCH, GOLDFISH)):
        for i in range(3):
            _write(root / "train" / wnid / f"{wnid}_{i}.JPEG", _encode(_noise(48, 64, 10 * k + i)))
        _write(root / "val" / wnid / f"ILSVRC2012_val_0000000{k + 1}.JPEG", _encode(_noise(48, 64, 99 + k)))
    return root


def test_scan_ilsvrc_layout(tmp_path):
    root = _ilsvrc_tree(tmp_path / "imagenet")
    train, test = sources.scan(root, "train"), sources.scan(root, "test")
    assert train.layout == test.layout == "ilsvrc" and train.num_classes == test.num_classes == 1000
    assert sorted(train.by_label) == [0, 1] and [len(v) for v in train.by_label.values()] == [3, 3]
    photo = train.by_label[1][0]
    assert photo.id == f"train/{GOLDFISH}/{GOLDFISH}_0.JPEG" and photo.wnid == GOLDFISH
    assert photo.prompt == "goldfish" and Path(photo.path).is_file()
    assert [p.id for p in test.by_label[0]] == [f"val/{TENCH}/ILSVRC2012_val_00000001.JPEG"]
    assert sources.scan(root, "train").digest() == train.digest() != test.digest()


def test_scan_flat_val_with_kaggle_solution_csv(tmp_path):
    root = _ilsvrc_tree(tmp_path / "imagenet")
    shutil.rmtree(root / "val")
    for i in (1, 2):
        _write(root / "val" / f"ILSVRC2012_val_0000000{i}.JPEG", _encode(_noise(48, 64, i)))
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{GOLDFISH} 10 20 100 200 {GOLDFISH} 1 2 3 4 \n"
        f"ILSVRC2012_val_00000002,{TENCH} 5 6 30 40 \n"
    )
    test = sources.scan(root, "test")
    assert test.layout == "ilsvrc" and sorted(test.by_label) == [0, 1]
    (gold,), (tench,) = test.by_label[1], test.by_label[0]
    assert gold.id == "val/ILSVRC2012_val_00000001.JPEG" and gold.wnid == GOLDFISH
    assert gold.boxes == ((10, 20, 100, 200), (1, 2, 3, 4)) and tench.boxes == ((5, 6, 30, 40),)
    # Boxes are in source pixels: a photo decoded at half size gets them halved.
    assert sources.annotation_boxes(tench, (32, 24), (64, 48)) == [(2.5, 3.0, 15.0, 20.0)]


def test_scan_kaggle_layout(tmp_path):
    root = tmp_path / "kaggle"
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    _write(data / "train" / TENCH / f"{TENCH}_1.JPEG", _encode(_noise(48, 64)))
    (root / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{TENCH} 1 2 3 4 \n")
    _write(data / "val" / "ILSVRC2012_val_00000001.JPEG", _encode(_noise(64, 80, 1)))
    _xml(root / "ILSVRC" / "Annotations" / "CLS-LOC" / "val" / "ILSVRC2012_val_00000001.xml", (80, 64),
         [(TENCH, (8, 8, 40, 40))])
    train, test = sources.scan(root, "train"), sources.scan(root, "test")
    assert [p.id for p in train.by_label[0]] == [f"ILSVRC/Data/CLS-LOC/train/{TENCH}/{TENCH}_1.JPEG"]
    (photo,) = test.by_label[0]
    assert photo.annotation and photo.annotation.endswith("ILSVRC2012_val_00000001.xml")
    assert sorted(sources.annotation_boxes(photo, (80, 64), (80, 64))) == [(1, 2, 3, 4), (8, 8, 40, 40)]


def test_xml_boxes_are_scaled_to_the_decoded_photo(tmp_path):
    root = _ilsvrc_tree(tmp_path / "imagenet")
    shutil.rmtree(root / "val")
    _write(root / "val" / "ILSVRC2012_val_00000001.JPEG", _encode(_noise(120, 160, 1)))
    (root / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{TENCH}\n")
    _xml(root / "Annotations" / "CLS-LOC" / "val" / "ILSVRC2012_val_00000001.xml", (160, 120),
         [(TENCH, (10, 20, 100, 80)), (GOLDFISH, (0, 0, 160, 120))])  # another class's box is ignored
    (photo,) = sources.scan(root, "test").by_label[0]
    image, size = decode_photo(Path(photo.path).read_bytes(), max_side=80)
    assert image.shape == (60, 80, 3) and size == (160, 120)
    assert sources.annotation_boxes(photo, (80, 60), size) == [(5.0, 10.0, 50.0, 40.0)]
    # Train XMLs live in per-wnid folders.
    _xml(root / "Annotations" / "CLS-LOC" / "train" / TENCH / f"{TENCH}_0.xml", (64, 48), [(TENCH, (1, 1, 9, 9))])
    tench = sources.scan(root, "train").by_label[0]
    assert sources.annotation_boxes(tench[0], (64, 48), (64, 48)) == [(1, 1, 9, 9)]
    assert tench[1].annotation is None and sources.annotation_boxes(tench[1], (64, 48), (64, 48)) == []


def test_flat_val_xml_boxes_found_for_val_in_wnid_folders(tmp_path):
    root = _ilsvrc_tree(tmp_path / "imagenet")  # val/<wnid>/ILSVRC2012_val_0000000k.JPEG
    _xml(root / "Annotations" / "CLS-LOC" / "val" / "ILSVRC2012_val_00000001.xml", (64, 48),
         [(TENCH, (4, 4, 40, 40))])
    (photo,) = sources.scan(root, "test").by_label[0]
    assert sources.annotation_boxes(photo, (64, 48), (64, 48)) == [(4, 4, 40, 40)]


def test_scan_imagefolder_with_class_names(tmp_path):
    root = tmp_path / "folder"
    for k, name in enumerate(("zebra_finch", "apple", "mug")):
        for i in range(20):
            _write(root / name / f"{i:02d}.png", _encode(_noise(40, 40, 100 * k + i), "PNG"))
    train, test = sources.scan(root, "train"), sources.scan(root, "test")
    assert train.layout == "imagefolder" and train.num_classes == 3
    assert train.class_names == ("apple", "mug", "zebra finch")  # sorted folder names
    ids = {split: {p.id: p for v in s.by_label.values() for p in v} for split, s in (("train", train), ("test", test))}
    assert not ids["train"].keys() & ids["test"].keys()
    assert len(ids["train"]) + len(ids["test"]) == 60
    assert 4 <= len(ids["test"]) <= 24  # about 20 %
    assert all(_is_test(i) for i in ids["test"]) and not any(_is_test(i) for i in ids["train"])
    for p in ids["train"].values():
        assert p.label == ["apple", "mug", "zebra_finch"].index(p.id.split("/")[0]) and p.wnid is None
    assert ids["train"][next(i for i in ids["train"] if i.startswith("zebra_finch/"))].prompt == "zebra finch"


def test_scan_imagefolder_of_wnids_uses_imagenet_labels(tmp_path):
    root = tmp_path / "folder"
    for i in range(6):
        _write(root / GOLDFISH / f"{i}.jpg", _encode(_noise(40, 40, i)))
    train, test = sources.scan(root, "train"), sources.scan(root, "test")
    assert train.num_classes == 1000 and set(train.by_label) | set(test.by_label) == {1}
    assert train.num_photos + test.num_photos == 6


@pytest.mark.parametrize(
    ("build", "needles"),
    [
        (lambda r: _write(r / "train" / "n99999999" / "a.JPEG", b"x"), ["n99999999", "not one of the 1,000"]),
        (lambda r: (r / "train" / TENCH).mkdir(parents=True), ["has no images", TENCH]),
        (lambda r: _write(r / "a.jpg", b"x"), ["neither layout"]),
        (lambda r: r.mkdir(), ["neither layout"]),
        (lambda r: [_write(r / "train" / d / "a.JPEG", b"x") for d in (TENCH, "cats")], ["mixes wnid", "'cats'"]),
        (lambda r: [_write(r / d / "a.jpg", b"x") for d in (TENCH, "cats")], ["mixes wnid"]),
        (lambda r: _write(r / "val" / "ILSVRC2012_val_00000001.JPEG", b"x"), ["LOC_val_solution.csv", "devkit"]),
    ],
    ids=["unknown-wnid", "empty-class", "neither-files", "neither-empty", "mixed-ilsvrc", "mixed-folder",
         "flat-val-no-labels"],
)
def test_scan_bad_trees(tmp_path, build, needles):
    root = tmp_path / "src"
    build(root)
    split = "test" if (root / "val").is_dir() else "train"
    with pytest.raises(ConfigError) as info:
        sources.scan(root, split)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_scan_missing_root_and_split(tmp_path):
    with pytest.raises(ConfigError, match="--src .* is not a folder"):
        sources.scan(tmp_path / "missing", "train")
    _write(tmp_path / "only-train" / "train" / TENCH / "a.JPEG", b"x")
    with pytest.raises(ConfigError, match="no val/ folder"):
        sources.scan(tmp_path / "only-train", "test")
    _write(tmp_path / "flat" / "val" / "ILSVRC2012_val_00000009.JPEG", b"x")
    solution = f"ImageId,PredictionString\nILSVRC2012_val_00000001,{TENCH}\n"
    (tmp_path / "flat" / "LOC_val_solution.csv").write_text(solution)
    with pytest.raises(ConfigError, match="ILSVRC2012_val_00000009.JPEG has no label"):
        sources.scan(tmp_path / "flat", "test")


# --------------------------------------------------------------------------- 2b. decoding


RGB = np.zeros((60, 80, 3), np.uint8)
RGB[..., 0], RGB[..., 1], RGB[..., 2] = 200, 50, 10


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95), (200, 50, 10)),
        (_encode(RGB[..., 0], "JPEG", quality=95), (200, 200, 200)),
        (_encode(Image.fromarray(RGB).convert("P"), "PNG"), (200, 50, 10)),
        (_encode(np.dstack([RGB, np.full((60, 80), 128, np.uint8)]), "PNG"), (200, 50, 10)),
        (_encode(Image.fromarray(RGB).convert("LA"), "PNG"), None),
        (_encode(RGB, "BMP"), (200, 50, 10)),
        (_encode(RGB, "WEBP", lossless=True), (200, 50, 10)),
    ],
    ids=["cmyk-jpeg", "grey-jpeg", "palette-png", "rgba-png", "la-png", "bmp", "webp"],
)
def test_decode_modes_to_rgb(data, expected):
    image, size = decode_photo(data, max_side=512)
    assert image.shape == (60, 80, 3) and image.dtype == np.uint8 and size == (80, 60)
    if expected is not None:
        assert np.abs(image[30, 40].astype(int) - expected).max() <= 25, image[30, 40]


def test_decode_16_bit_png_ramp():
    ramp = np.tile(np.linspace(0, 65535, 80).round().astype(np.uint16), (60, 1))
    data = _encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image, _ = decode_photo(data, max_side=512)
    assert image.shape == (60, 80, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 2])
    expected = np.linspace(0, 255, 80)
    assert np.abs(image[0, :, 0].astype(float) - expected).max() <= 1.0


def test_decode_png_named_jpeg(tmp_path):
    path = _write(tmp_path / "n0_1.JPEG", _encode(RGB, "PNG"))
    image, _ = decode_photo(path.read_bytes(), max_side=512)
    assert np.array_equal(image, RGB)


def test_decode_keeps_the_stored_pixels_despite_exif_orientation():
    """ILSVRC boxes and the usual ImageNet loaders use the stored pixels, so EXIF rotation is ignored."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = _encode(Image.fromarray(_noise(40, 100)), "JPEG", exif=exif.tobytes())
    image, size = decode_photo(data, max_side=512)
    assert image.shape == (40, 100, 3) and size == (100, 40)


def test_decode_limits_the_longest_side():
    image, size = decode_photo(_encode(_noise(300, 1000), "PNG"), max_side=512)
    assert image.shape == (154, 512, 3) and size == (1000, 300)
    small, _ = decode_photo(_encode(_noise(100, 50), "PNG"), max_side=512)
    assert small.shape == (100, 50, 3)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"this is not an image" * 20, "cannot decode"),
        (_encode(_noise(200, 200), "JPEG")[:1500], "cannot decode"),
        (b"", "cannot decode"),
        (_encode(_noise(20, 300), "PNG"), "smaller than 32"),
    ],
    ids=["garbage", "truncated-jpeg", "empty", "too-small"],
)
def test_decode_errors_are_photo_errors(data, needle):
    with pytest.raises(PhotoError, match=needle) as info:
        decode_photo(data, max_side=512)
    assert "\n" not in str(info.value)


def test_decode_error_reason_is_reproducible():
    with pytest.raises(PhotoError) as info:
        decode_photo(b"this is not an image" * 20, max_side=512)
    assert " at 0x" not in str(info.value), str(info.value)


# --------------------------------------------------------------------------- 3. classical backends


def test_annotation_detector_picks_the_largest_box():
    image = np.zeros((100, 200, 3), np.uint8)
    det = classical.AnnotationDetector()
    small, large, outside = (10, 10, 30, 30), (50, 20, 190, 90), (300, 300, 400, 400)
    found = det.detect([image, image, image, image], ["x"] * 4,
                       [[small, large, outside], None, [], [(-20, -10, 60, 300)]])
    assert found[0].box == large and found[0].score == 1.0 and found[0].backend == "annotation"
    assert found[1] is None and found[2] is None
    assert found[3].box == (0, 0, 60, 100)  # clipped at the frame


def test_box_prior_detector():
    image = np.zeros((100, 200, 3), np.uint8)
    (det,) = classical.BoxPriorDetector(0.6).detect([image], ["x"], [None])
    assert det.box == pytest.approx((40, 20, 160, 80)) and det.backend == "prior"
    (whole,) = classical.BoxPriorDetector(1.0).detect([image], ["x"], [None])
    assert whole.box == pytest.approx((0, 0, 200, 100))
    with pytest.raises(ConfigError, match="--prior-fraction"):
        classical.BoxPriorDetector(1.5)


@pytest.mark.parametrize(("h", "w", "centre", "radius"), [(120, 160, (70, 60), 30), (600, 800, (450, 280), 150)])
def test_grabcut_recovers_a_disc(h, w, centre, radius):
    image, disc = _disc_photo(h, w, centre, radius)
    margin = radius // 3
    box = (centre[0] - radius - margin, centre[1] - radius - margin, centre[0] + radius + margin,
           centre[1] + radius + margin)
    (seg,) = classical.GrabCutSegmenter().segment([image], [box])
    assert seg.mask.shape == (h, w) and seg.mask.dtype == bool and seg.backend == "grabcut"
    assert _iou(seg.mask, disc) > 0.8
    assert 0.3 < seg.score <= 1.0
    (again,) = classical.GrabCutSegmenter().segment([image], [box])
    assert np.array_equal(again.mask, seg.mask)  # seeded: the same mask every time


def test_opencv_inpainter_fills_only_the_mask():
    image = np.full((80, 100, 3), 128, np.uint8)
    image += np.random.default_rng(0).integers(0, 10, size=image.shape, dtype=np.uint8)
    image[30:50, 40:60] = (255, 0, 0)
    mask = np.zeros((80, 100), bool)
    mask[26:54, 36:64] = True
    (filled,) = classical.OpenCVInpainter().inpaint([image], [mask])
    assert filled.shape == image.shape and filled.dtype == np.uint8
    assert np.array_equal(filled[~mask], image[~mask])
    assert np.abs(filled[mask].astype(int) - 132).max() < 20  # the red square is gone, grey fills it


def test_largest_component_drops_specks_and_fills_holes():
    mask = np.zeros((80, 80), bool)
    mask[20:60, 20:60] = True
    mask[35:45, 35:45] = False  # a hole
    mask[2:5, 70:73] = True  # a speck
    mask[70:80, 0:10] = True  # a smaller blob at the border
    expected = np.zeros_like(mask)
    expected[20:60, 20:60] = True
    assert np.array_equal(classical.largest_component(mask), expected)
    notch = expected.copy()
    notch[35:45, 20:45] = False  # open to the outside: not a hole
    assert np.array_equal(classical.largest_component(notch), notch)
    assert not classical.largest_component(np.zeros((5, 5), bool)).any()


@pytest.mark.parametrize(
    ("build", "name"),
    [(build_detector, "yolo"), (build_segmenter, "watershed"), (build_inpainter, "photoshop")],
)
def test_unknown_backend_names(build, name):
    with pytest.raises(ConfigError, match=f"unknown .* backend '{name}'"):
        build(name, {})


def test_registry_builds_the_classical_backends():
    assert build_detector("annotation", {}).name == "annotation"
    assert build_detector("prior", {"prior_fraction": 0.5}).fraction == 0.5
    assert build_segmenter("grabcut", {}).name == "grabcut"
    assert build_inpainter("opencv", {}).name == "opencv"


# --------------------------------------------------------------------------- 4. cache


def test_cache_round_trip(tmp_path):
    cache = StageCache(tmp_path / "cache")
    photo, _, cut = _ellipse_small()
    info = {"detection": {"box": [1.5, 2.0, 30.0, 40.0], "score": 0.9}, "backends": {"detect": "annotation"}}
    prepared = Prepared(photo[::-1].copy(), cut, info)
    key_ok, key_rej = cache_key(b"photo-a", {"x": 1}), cache_key(b"photo-b", {"x": 1})
    assert cache.get(key_ok) is None
    cache.put(key_ok, prepared)
    cache.put(key_rej, Rejection("segment", "mask covers 0.1% of the photo", {"mask_fraction": 0.001}))
    got = cache.get(key_ok)
    assert isinstance(got, Prepared)
    assert np.array_equal(got.background, prepared.background)
    assert np.array_equal(got.cutout.rgb, cut.rgb) and np.array_equal(got.cutout.alpha, cut.alpha)
    assert got.cutout.origin == cut.origin and got.cutout.box == cut.box and got.info == info
    assert cache.get(key_rej) == Rejection("segment", "mask covers 0.1% of the photo", {"mask_fraction": 0.001})
    assert not list((tmp_path / "cache").rglob("*.tmp*"))


def _ellipse_small():
    photo = _noise(60, 80, 5)
    yy, xx = np.mgrid[:60, :80]
    mask = ((xx - 40) / 20.0) ** 2 + ((yy - 30) / 12.0) ** 2 <= 1
    return photo, mask, compose.cut_out(photo, mask)


@pytest.mark.parametrize("damage", [b"", b"not a zip file", "truncate"])
def test_corrupt_cache_entry_is_a_miss(tmp_path, damage):
    cache = StageCache(tmp_path)
    photo, _, cut = _ellipse_small()
    key = cache_key(b"photo", {})
    cache.put(key, Prepared(photo, cut, {}))
    (path,) = list(tmp_path.rglob("*.npz"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else damage)
    assert cache.get(key) is None
    cache.put(key, Rejection("load", "x", {}))  # a recomputed outcome replaces it
    assert cache.get(key) == Rejection("load", "x", {})


def test_cache_key_depends_on_bytes_and_settings():
    base = cache_key(b"abc", {"detector": "annotation", "dilate": 15})
    assert base == cache_key(b"abc", {"dilate": 15, "detector": "annotation"})
    assert base != cache_key(b"abd", {"detector": "annotation", "dilate": 15})
    assert base != cache_key(b"abc", {"detector": "annotation", "dilate": 16})
    assert base != cache_key(b"abc", {"detector": "prior", "dilate": 15})


def test_offline_picks_the_classical_backend_for_every_stage_not_set():
    """``offline`` is the config's rule, not the CLI's: Python callers get the same backends."""
    backends = lambda c: (c.detector, c.segmenter, c.inpainter)  # noqa: E731
    assert backends(pipeline.ImagenetConfig(demo=True, offline=True).resolved()) == ("annotation", "grabcut", "opencv")
    assert backends(pipeline.ImagenetConfig(src=Path("/x"), offline=True).resolved()) == ("prior", "grabcut", "opencv")
    # A stage set to another backend than its learned default keeps it.
    assert backends(pipeline.ImagenetConfig(demo=True, offline=True, detector="prior").resolved()) == (
        "prior", "grabcut", "opencv")
    assert backends(pipeline.ImagenetConfig(demo=True).resolved()) == ("gdino", "sam", "lama")


def test_stage_settings_follow_the_stage_options():
    cfg = pipeline.ImagenetConfig(**CLASSICAL)
    settings = cfg.stage_settings()
    assert settings != pipeline.ImagenetConfig(**CLASSICAL, dilate=3).stage_settings()
    assert settings != pipeline.ImagenetConfig(**CLASSICAL, max_side=256).stage_settings()
    # What only changes the paste (or how it runs) does not invalidate the cache.
    assert settings == pipeline.ImagenetConfig(**CLASSICAL, feather=0.0, anchor="bottom", seed=3).stage_settings()
    assert settings == pipeline.ImagenetConfig(**CLASSICAL, batch_size=1, cache_dir="/elsewhere").stage_settings()


def test_stage_settings_follow_the_checkpoint_folder_contents(tmp_path):
    """A transformers checkpoint is a folder: new weights written over a file in it (no folder metadata
    changes) must not serve the cache entries of the old weights; nor may a new tokenizer."""
    folder, bert = tmp_path / "gdino", tmp_path / "bert"
    _write(folder / "model.safetensors", b"old weights")
    _write(bert / "vocab.txt", b"[PAD]\n")
    cfg = pipeline.ImagenetConfig(detector="gdino", segmenter="grabcut", inpainter="opencv",
                                  gdino_checkpoint=str(folder), text_encoder=str(bert))
    before = cfg.stage_settings()
    with open(folder / "model.safetensors", "wb") as f:  # in place: the folder's size and mtime stay
        f.write(b"new weights!")
    assert cfg.stage_settings() != before
    before = cfg.stage_settings()
    (bert / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\n")
    assert cfg.stage_settings() != before


def test_an_empty_mask_is_rejected_whatever_the_thresholds():
    cfg = pipeline.ImagenetConfig(**CLASSICAL, min_mask=0.0, min_in_box=0.0)
    rejection, _ = pipeline._check_mask(cfg, np.zeros((40, 50), bool), (5, 5, 30, 30))
    assert rejection is not None and rejection.stage == "segment" and rejection.reason == "empty mask"


def test_prepare_decodes_one_batch_at_a_time(tmp_path, monkeypatch):
    """A round of cache misses is decoded batch by batch, not all at once before the first batch runs."""
    photos = [p for v in sources.demo_set().by_label.values() for p in v]
    events: list[str] = []
    decode = pipeline.decode_photo
    monkeypatch.setattr(pipeline, "decode_photo", lambda *a: events.append("decode") or decode(*a))
    run = pipeline._run_stages
    monkeypatch.setattr(pipeline, "_run_stages",
                        lambda cfg, st, jobs: events.append(f"run{len(jobs)}") or run(cfg, st, jobs))
    cfg = pipeline.ImagenetConfig(**CLASSICAL, demo=True, batch_size=2)
    out = pipeline.prepare(cfg, photos, StageCache(tmp_path), lambda: pipeline.stages_for(cfg))
    assert len(photos) == 4 and all(isinstance(o, Prepared) for o in out)
    assert events == ["decode", "decode", "run2", "decode", "decode", "run2"]


# --------------------------------------------------------------------------- 5. assignment


def _source_set(sizes: dict[int, int]) -> SourceSet:
    by_label = {
        label: tuple(SourcePhoto(id=f"c{label}/{i}.jpg", path=f"/nowhere/c{label}/{i}.jpg", label=label,
                                 prompt=f"class {label}") for i in range(n))
        for label, n in sizes.items()
    }
    return SourceSet("imagefolder", "/nowhere", max(sizes) + 1, tuple(f"c{i}" for i in range(max(sizes) + 1)),
                     by_label)


def _ids(it, n=None) -> list[str]:
    out = [p.id for p in it]
    return out if n is None else out[:n]


def test_assignment_is_deterministic_and_seeded():
    src = _source_set({i: 5 for i in range(12)})
    a, b = pipeline.Assignment(src, "test", 30, seed=0), pipeline.Assignment(src, "test", 30, seed=0)
    assert [_ids(a.candidates(g)) for g in range(30)] == [_ids(b.candidates(g)) for g in range(30)]
    c = pipeline.Assignment(src, "test", 30, seed=1)
    assert [_ids(a.candidates(g), 1) for g in range(30)] != [_ids(c.candidates(g), 1) for g in range(30)]
    d = pipeline.Assignment(src, "train", 30, seed=0)
    assert [_ids(a.candidates(g), 1) for g in range(30)] != [_ids(d.candidates(g), 1) for g in range(30)]


def test_assignment_is_balanced_over_classes():
    sizes = {0: 3, 2: 8, 5: 4, 7: 6}
    src = _source_set(sizes)
    asg = pipeline.Assignment(src, "test", 12, seed=0)
    firsts = [next(asg.candidates(g)) for g in range(12)]
    for start in (0, 4, 8):  # every run of C consecutive groups covers every class once
        assert sorted(p.label for p in firsts[start:start + 4]) == sorted(sizes)
    assert all(firsts[g].label == firsts[g % 4].label for g in range(12))
    # The groups of one class start from different photos (each class has ≥ 3 photos for its 3 groups).
    for label in sizes:
        mine = [p.id for p in firsts if p.label == label]
        assert len(mine) == 3 and len(set(mine)) == 3


def test_assignment_candidates_cover_the_class_then_fall_back():
    sizes = {0: 1, 1: 3, 2: 2}
    src = _source_set(sizes)
    asg = pipeline.Assignment(src, "test", 6, seed=0)
    all_ids = {p.id for v in src.by_label.values() for p in v}
    for g in range(6):
        cands = list(asg.candidates(g))
        labels = [p.label for p in cands]
        own = labels[0]
        assert labels[:sizes[own]] == [own] * sizes[own]  # the class's own photos first ...
        assert own not in labels[sizes[own]:]  # ... then only other classes
        assert len(cands) == len(all_ids) and {p.id for p in cands} == all_ids  # each photo once
    one_photo_class = next(g for g in range(6) if next(asg.candidates(g)).label == 0)
    # Two groups of the single-photo class share it, then fall back to the other classes.
    assert next(asg.candidates(one_photo_class + 3)).id == "c0/0.jpg"


def test_assignment_without_photos():
    with pytest.raises(DataError, match="no source photos for the test split"):
        pipeline.Assignment(SourceSet("imagefolder", "/x", 1, ("a",), {}), "test", 1, 0)


# --------------------------------------------------------------------------- 6. pipeline end to end (demo photos)


DEMO = dict(demo=True, **CLASSICAL, train=8, test=28, shard_size=7, image_format="png")


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory) -> Path:
    """The demo photos through the classical backends: 8 train images and 4 test groups of 7, in 6 shards.
    Read-only for the tests: copy it before changing it."""
    out = tmp_path_factory.mktemp("imagenet") / "ds"
    result = generate_imagenet(out, **DEMO)
    assert (result.shards_written, result.shards_reused, result.complete) == (6, 0, True)
    return out


@pytest.mark.slow
def test_demo_cards_name_the_photos_licences_and_load(demo_dataset, tmp_path):
    card = read_json(demo_dataset / "croissant.json")
    assert "https://creativecommons.org/publicdomain/zero/1.0/" in card["license"]
    assert "Paste artefacts" in card["rai:dataLimitations"] and "--demo" in card["rai:dataPreprocessingProtocol"]
    assert_cards_load(demo_dataset, tmp_path)


def test_demo_dataset_is_valid(demo_dataset):
    assert dataset.validate(demo_dataset) == []
    manifest = read_json(demo_dataset / "manifest.json")
    assert manifest["generator"] == "imagenet" and manifest["name"] == "imagenet-ls-demo"
    config = manifest["config"]
    assert config["num_classes"] == 1000 and config["task"] == "cls"
    assert config["scales"] == list(PAPER_SCALES) and config["detector"] == "annotation"
    assert {k: manifest["splits"][k]["num_samples"] for k in ("train", "test")} == {"train": 8, "test": 28}
    assert manifest["splits"]["test"]["group_size"] == 7 and manifest["splits"]["test"]["grouped"]
    assert manifest["yield"]["test"] == {"accepted": 4, "rejected": {}, "yield": 1.0}
    assert manifest["yield"]["train"]["accepted"] == 8
    assert (demo_dataset / "rejections.jsonl").is_file()
    assert (demo_dataset / "rejections.jsonl").read_text() == ""  # the demo boxes never fail


def test_demo_test_groups(demo_dataset):
    samples = _samples(demo_dataset, "test")
    demo = {p.id: p for v in sources.demo_set().by_label.values() for p in v}
    groups: dict[int, list[dict]] = {}
    for s in samples:
        groups.setdefault(s["meta"]["group"], []).append(s)
    assert sorted(groups) == [0, 1, 2, 3]
    assert {g[0]["meta"]["source"]["file"] for g in groups.values()} == set(demo)  # 4 classes, 4 photos
    for members in groups.values():
        metas = [s["meta"] for s in members]
        assert [m["variant"] for m in metas] == list(range(7))
        assert [m["scales"] for m in metas] == [[s] for s in PAPER_SCALES]
        refs = [m for m in metas if m["reference"]]
        assert len(refs) == 1 and refs[0]["scales"] == [1.0] and refs[0]["scale_xy"] == [1.0, 1.0]
        ref = refs[0]
        photo = demo[ref["source"]["file"]]
        assert len({json.dumps({k: m[k] for k in ("source", "label", "wnid", "detection", "segmentation")})
                    for m in metas}) == 1
        for s, m in zip(members, metas):
            assert s["cls"] == m["label"] == photo.label == by_wnid()[m["wnid"]].label
            assert m["wnid"] == photo.wnid and m["class_name"] == photo.prompt
            assert m["backends"] == {"detect": "annotation", "segment": "grabcut", "inpaint": "opencv"}
            assert m["split"] == "test" and m["anchor_mode"] == "centre"
            assert s["image"].shape == (m["size"][1], m["size"][0], 3)
            h, w = s["image"].shape[:2]
            (box,) = m["boxes"]
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            rx0, ry0, rx1, ry1 = ref["boxes"][0]
            scale = m["scales"][0]
            if x0 > 0 and x1 < w:
                assert abs((x1 - x0) - scale * (rx1 - rx0)) <= 3, (m["source"], scale, box, ref["boxes"])
            if y0 > 0 and y1 < h:
                assert abs((y1 - y0) - scale * (ry1 - ry0)) <= 3, (m["source"], scale, box, ref["boxes"])
            if 0 < x0 and x1 < w and 0 < y0 and y1 < h:  # not clipped: the box centre is the anchor (a
                # thin tip whose feathered alpha stays under 0.5 can move the box by a pixel or two)
                assert abs((x0 + x1) / 2 - m["anchor"][0]) <= 3 and abs((y0 + y1) / 2 - m["anchor"][1]) <= 3


def test_demo_variants_share_the_background_and_keep_the_photo(demo_dataset):
    """Away from the object every variant shows the same pixels, and those are the source photo's own."""
    samples = _samples(demo_dataset, "test")
    demo = {p.id: p for v in sources.demo_set().by_label.values() for p in v}
    for g in range(4):
        members = [s for s in samples if s["meta"]["group"] == g]
        ref = next(s for s in members if s["meta"]["reference"])
        h, w = ref["image"].shape[:2]
        far = np.ones((h, w), bool)
        for s in members:
            x0, y0, x1, y1 = s["meta"]["boxes"][0]
            far[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8] = False
        assert far.sum() > 5000
        for s in members:
            assert np.array_equal(s["image"][far], ref["image"][far])
        # Outside the object's source box grown by the inpaint dilation (15 px) and the feather, the
        # reference is the decoded photo itself.
        photo, _ = decode_photo(Path(demo[ref["meta"]["source"]["file"]].path).read_bytes(), 512)
        x0, y0, x1, y1 = ref["meta"]["object_box_source"]
        untouched = np.ones((h, w), bool)
        untouched[max(0, y0 - 21):y1 + 21, max(0, x0 - 21):x1 + 21] = False
        assert np.array_equal(ref["image"][untouched], photo[untouched])


def test_demo_samples_are_the_cached_stage_outputs_pasted(demo_dataset):
    """Each variant is exactly ``compose.paste`` of the cached background and cut-out at its scale (the
    s = 1 reference included), about the recorded anchor."""
    cache = StageCache(demo_dataset / "cache")
    prepared = [cache.get(p.stem) for p in sorted((demo_dataset / "cache").rglob("*.npz"))]
    assert len(prepared) == 4 and all(isinstance(p, Prepared) for p in prepared)
    for s in _samples(demo_dataset, "test") + _samples(demo_dataset, "train"):
        m = s["meta"]
        (p,) = [p for p in prepared if p.info["detection"] == m["detection"]]
        assert list(p.cutout.box) == m["object_box_source"]
        anchor = compose.anchor_point(p.cutout.box, "centre")
        assert [round(v, 3) for v in anchor] == m["anchor"]
        result = compose.paste(p.background, p.cutout, m["scales"][0], anchor, feather=1.0)
        assert np.array_equal(s["image"], result.image), m["source"]
        assert m["boxes"] == [list(result.box)]


def test_demo_train_samples(demo_dataset):
    samples = _samples(demo_dataset, "train")
    assert [s["meta"]["group"] for s in samples] == list(range(8))
    scales = [s["meta"]["scales"][0] for s in samples]
    assert all(0.7 <= s <= 1.3 for s in scales) and len(set(scales)) == 8
    for s in samples:
        m = s["meta"]
        assert m["variant"] == 0 and m["reference"] is False and m["split"] == "train"
        assert s["cls"] == m["label"] and m["backends"]["segment"] == "grabcut"
    # Balanced: 8 groups over the 4 demo classes, twice each.
    labels = [s["cls"] for s in samples]
    assert len(set(labels)) == 4 and sorted(labels) == sorted(list(set(labels)) * 2)


@pytest.mark.slow
def test_same_command_same_bytes_whatever_the_worker_count(demo_dataset, tmp_path):
    again = generate_imagenet(tmp_path / "w1", **DEMO)
    parallel = generate_imagenet(tmp_path / "w2", **DEMO, workers=2)
    assert again.shards_written == parallel.shards_written == 6
    expected = _shard_hashes(demo_dataset)
    assert len(expected) == 6
    assert _shard_hashes(tmp_path / "w1") == expected
    assert _shard_hashes(tmp_path / "w2") == expected
    assert (tmp_path / "w2" / "rejections.jsonl").read_text() == (demo_dataset / "rejections.jsonl").read_text()


def test_rerun_redoes_only_the_missing_shard_from_the_cache(demo_dataset, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(demo_dataset, out)
    before = shard_files(out)
    cached = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz")}
    assert len(cached) == 4  # one entry per demo photo, shared by train and test
    (out / "test-000002.tar").unlink()
    result = generate_imagenet(out, **DEMO)
    assert (result.shards_written, result.shards_reused, result.complete) == (1, 5, True)
    assert shard_files(out) == before
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz")} == cached
    assert dataset.validate(out) == []
    # Nothing missing: nothing written.
    assert generate_imagenet(out, **DEMO).shards_written == 0


def test_rejection_summary_ignores_logs_of_shards_not_in_the_manifest(demo_dataset, tmp_path):
    """A log left by an earlier run with another shard size is not counted again."""
    out = tmp_path / "ds"
    shutil.copytree(demo_dataset, out)
    stray = {"shard": "test-000009.tar", "split": "test", "groups": 5,
             "rejected": [{"split": "test", "group": 40, "photo": "x.jpg", "label": 0, "stage": "load",
                           "reason": "cannot read", "scores": {}}]}
    (out / pipeline.REJECTION_DIR / "test-000009.json").write_text(json.dumps(stray))
    summary = pipeline.summarize_rejections(out)
    assert summary["test"] == {"accepted": 4, "rejected": {}, "yield": 1.0}
    assert (out / "rejections.jsonl").read_text() == ""


def test_anchor_bottom_keeps_the_bottom_edge(demo_dataset, tmp_path):
    """Another anchor is a different dataset, composed from the same cached stage outputs."""
    out = tmp_path / "ds"
    shutil.copytree(demo_dataset, out)
    cached = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz")}
    generate_imagenet(out, **{**DEMO, "train": 0}, anchor="bottom", overwrite=True)
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz")} == cached
    for s in _samples(out, "test"):
        m = s["meta"]
        x0, y0, x1, y1 = m["boxes"][0]
        assert m["anchor_mode"] == "bottom" and m["anchor"][1] == m["object_box_source"][3]
        if y1 < s["image"].shape[0]:
            assert abs(y1 - m["anchor"][1]) <= 1, m


# --------------------------------------------------------------------------- 6b. rejections


def _rejection_tree(root: Path) -> tuple[Path, Path, dict[str, str]]:
    """An ImageFolder: ``apple`` has 3 good photos with boxes; ``broken`` has a corrupt JPEG and a good
    photo without a box annotation.  All in the train split.  Returns (root, boxes folder, bad ids)."""
    boxes = root.parent / "boxes"
    for i, name in enumerate(_train_names("apple", 3)):
        image, _ = _disc_photo(seed=i, centre=(44 + 2 * i, 50))
        _write(root / "apple" / name, _encode(image, quality=95))
        _xml(boxes / "apple" / (Path(name).stem + ".xml"), (96, 96), [("apple", (16 + 2 * i, 22, 74 + 2 * i, 80))])
    corrupt, unannotated = _train_names("broken", 2)
    _write(root / "broken" / corrupt, b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    _write(root / "broken" / unannotated, _encode(_disc_photo(seed=9)[0]))
    return root, boxes, {f"broken/{corrupt}": "load", f"broken/{unannotated}": "detect"}


def test_rejected_photos_are_logged_and_the_dataset_completes(tmp_path):
    src, boxes, bad = _rejection_tree(tmp_path / "src")
    out = tmp_path / "ds"
    result = generate_imagenet(out, src=src, boxes=boxes, **CLASSICAL, train=2, test=0, shard_size=10)
    assert result.complete and dataset.validate(out) == []
    log = [json.loads(line) for line in (out / "rejections.jsonl").read_text().splitlines()]
    assert {r["photo"]: r["stage"] for r in log} == bad
    for r in log:
        assert r["split"] == "train" and r["label"] == 1 and r["reason"]
    assert next(r for r in log if r["stage"] == "detect")["reason"] == "no box annotation for its class"
    assert "cannot decode" in next(r for r in log if r["stage"] == "load")["reason"]
    # The broken class's group fell back to an apple photo: labels follow the photo actually used.
    samples = _samples(out, "train")
    assert [s["cls"] for s in samples] == [0, 0]
    assert all(s["meta"]["source"]["file"].startswith("apple/") for s in samples)
    assert sorted(s["meta"]["source"]["attempt"] for s in samples) == [0, 2]
    assert read_json(out / "manifest.json")["yield"]["train"] == {
        "accepted": 2, "rejected": {"detect": 1, "load": 1}, "yield": 0.5}
    line = pipeline.rejection_summary_line(out)
    assert "train: 2 photos accepted (1 at detect, 1 at load)" in line and "rejections.jsonl" in line


def test_max_attempts_exhausted_is_a_data_error(tmp_path):
    src, boxes, _ = _rejection_tree(tmp_path / "src")
    with pytest.raises(DataError) as info:
        generate_imagenet(tmp_path / "ds", src=src, boxes=boxes, **CLASSICAL, train=2, test=0, max_attempts=1)
    message = str(info.value)
    assert "\n" not in message and "1 photos in a row were rejected" in message and "--max-attempts" in message
    # Without any box annotations every candidate is rejected: the group runs out of photos.
    with pytest.raises(DataError, match="5 photos in a row were rejected.*detect: no box annotation"):
        generate_imagenet(tmp_path / "ds2", src=src, **CLASSICAL, train=1, test=0)


def test_max_attempts_error_points_to_a_log_of_the_rejections(tmp_path):
    src, _, _ = _rejection_tree(tmp_path / "src")
    out = tmp_path / "ds"
    with pytest.raises(DataError) as info:
        generate_imagenet(out, src=src, **CLASSICAL, train=1, test=0, max_attempts=3)
    folder = out / pipeline.REJECTION_DIR
    assert f"see {folder}" in str(info.value)
    logged = [r for p in folder.glob("*") for r in json.loads(p.read_text())["rejected"]]
    assert len(logged) == 3 and {r["stage"] for r in logged} <= {"load", "detect"}


# --------------------------------------------------------------------------- 6c. bad options


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (dict(scales=(0.7, 0.8, 1.2)), ["--scales must contain 1.0"]),
        (dict(scales=(0.7, 1.0, 1.0, 1.3)), ["--scales has repeated values"]),
        (dict(scales=(0.05, 1.0)), ["--scales must be factors in [0.1, 4]"]),
        (dict(anchor="top"), ["--anchor must be one of centre, bottom"]),
        (dict(prior_fraction=2.0), ["--prior-fraction must be 0.05–1"]),
        (dict(segmenter="sam"), ["--sam-checkpoint", "--segmenter grabcut"]),
        (dict(segmenter="sam", sam_checkpoint="/no/sam.pth"), ["/no/sam.pth does not exist", "--segmenter grabcut"]),
        (dict(inpainter="lama"), ["--lama-checkpoint", "--inpainter opencv"]),
        (dict(detector="gdino"), ["--gdino-checkpoint", "--detector annotation"]),
        (dict(detector="yolo"), ["unknown --detector 'yolo'"]),
        (dict(test=3), ["multiple of 7"]),
        (dict(train=0, test=0), ["--train and --test"]),
        (dict(scale_range=(1.3, 0.7)), ["--scale-range"]),
        (dict(min_mask=0.8, max_mask=0.5), ["--min-mask and --max-mask"]),
        (dict(max_side=32), ["--max-side"]),
        (dict(image_format="gif"), ["--format"]),
        (dict(demo=False), ["pass --src", "--demo"]),
        (dict(src="/somewhere"), ["pass --src", "--demo"]),
        (dict(shard_size=0), ["--shard-size"]),
    ],
)
def test_bad_options_are_refused_before_writing(tmp_path, overrides, needles):
    out = tmp_path / "out"
    with pytest.raises(LsbenchError) as info:
        generate_imagenet(out, **{**DEMO, **overrides})
    message = str(info.value)
    assert isinstance(info.value, ConfigError) and "\n" not in message
    for needle in needles:
        assert needle in message, message
    assert not out.exists()


def test_missing_source_folder(tmp_path):
    with pytest.raises(ConfigError, match="--src .*missing is not a folder"):
        generate_imagenet(tmp_path / "out", src=tmp_path / "missing", detector="prior", segmenter="grabcut",
                          inpainter="opencv", train=1, test=0)
    assert not (tmp_path / "out").exists()


def test_test_count_rounds_down_to_whole_groups(tmp_path):
    notices: list[str] = []
    result = generate_imagenet(tmp_path / "ds", **{**DEMO, "train": 0, "test": 15}, log=notices.append)
    assert result.samples == 14
    assert "--test 15 rounded down to 14 images (whole groups of 7)" in notices


# --------------------------------------------------------------------------- 7. CLI


def test_cli_generate_demo_offline_and_validate(cli, tmp_path):
    out = tmp_path / "ds"
    result = cli("generate", "imagenet", "--demo", "--offline", "--out", out, "--train", "4", "--test", "14", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == ""
    assert cli("validate", out).exit_code == 0
    manifest = read_json(out / "manifest.json")
    assert (manifest["config"]["detector"], manifest["config"]["segmenter"], manifest["config"]["inpainter"]) == (
        "annotation", "grabcut", "opencv")
    assert manifest["config"]["image_format"] == "jpg"
    assert {k: v["num_samples"] for k, v in manifest["splits"].items()} == {"train": 4, "test": 14}


def test_cli_rounding_notice_and_summary(cli, tmp_path):
    out = tmp_path / "ds"
    result = cli("generate", "imagenet", "--demo", "--offline", "--out", out, "--train", "0", "--test", "15")
    assert result.exit_code == 0, result.output
    assert "--test 15 rounded down to 14 images" in result.stderr
    assert "14 samples" in result.stdout and "test: 2 photos accepted (none rejected)" in result.stdout


def test_cli_offline_with_src_uses_the_box_prior(cli, tmp_path):
    root = tmp_path / "src"
    for name in _train_names("apple", 2):
        _write(root / "apple" / name, _encode(_disc_photo()[0], quality=95))
    out = tmp_path / "ds"
    result = cli("generate", "imagenet", "--src", root, "--offline", "--out", out, "--train", "1", "--test", "0", "-q")
    assert result.exit_code == 0, result.output
    (sample,) = _samples(out, "train")
    assert sample["cls"] == 0 and sample["meta"]["class_name"] == "apple" and sample["meta"]["wnid"] is None
    assert sample["meta"]["backends"] == {"detect": "prior", "segment": "grabcut", "inpaint": "opencv"}
    assert sample["meta"]["detection"]["box"] == pytest.approx([19.2, 19.2, 76.8, 76.8])
    assert read_json(out / "manifest.json")["config"]["num_classes"] == 1


def test_cli_bad_scales_is_a_usage_error(cli, tmp_path):
    result = cli("generate", "imagenet", "--demo", "--offline", "--out", tmp_path / "ds", "--scales", "0.7,abc")
    assert result.exit_code == 2 and "Traceback" not in result.output and "--scales" in result.output
    result = cli("generate", "imagenet", "--demo", "--offline", "--out", tmp_path / "ds", "--scales", "0.7,1.3", "-q")
    assert_user_error(result, "--scales must contain 1.0")
    assert not (tmp_path / "ds").exists()


def test_cli_missing_source_is_one_line(cli, tmp_path):
    result = cli("generate", "imagenet", "--src", tmp_path / "missing", "--offline", "--out", tmp_path / "ds", "-q")
    assert_user_error(result, "--src", "missing", "not a folder")
    assert not (tmp_path / "ds").exists()


def test_cli_learned_backend_without_checkpoint_is_one_line(cli, tmp_path):
    result = cli("generate", "imagenet", "--demo", "--detector", "annotation", "--segmenter", "sam",
                 "--inpainter", "opencv", "--out", tmp_path / "ds", "-q")
    assert_user_error(result, "--sam-checkpoint", "--segmenter grabcut")
    result = cli("generate", "imagenet", "--demo", "--out", tmp_path / "ds", "-q")  # gdino by default
    assert_user_error(result, "--gdino-checkpoint", "--detector annotation")
    assert not (tmp_path / "ds").exists()
