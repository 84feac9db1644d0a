"""The learned ImageNet backends (GroundingDINO, SAM, LaMa) through their real loading code.

Each model family is built with random weights at a tiny configuration of the same architecture
(transformers' ``GroundingDinoForObjectDetection`` with a tiny Swin and BERT; segment_anything's ``Sam``
with a tiny ``ImageEncoderViT``; an FFC-ResNet with big-lama's TorchScript contract, ``tiny_lama.py``),
saved to a temporary folder in the released checkpoint format and loaded through ``build_*`` / ``load``.
Random weights give arbitrary boxes and masks, so the tests check the contract: types, shapes, ranges,
thresholds, batched == one-by-one, the composite outside the mask, and the errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import generate_imagenet

from lsbench import dataset
from lsbench.errors import ConfigError, LsbenchError
from lsbench.generators.imagenet import learned
from lsbench.generators.imagenet.stages import build_detector, build_inpainter, build_segmenter
from lsbench.generators.imagenet.types import Detection, Segmentation

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lama import lama_like  # noqa: E402
from tiny_learned import save_tiny_gdino, tiny_sam_state  # noqa: E402

transformers = pytest.importorskip("transformers")
segment_anything = pytest.importorskip("segment_anything")



def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (200, 120, 40)  # an "object" in the middle
    return image


# --------------------------------------------------------------------------- GroundingDINO


@pytest.fixture(scope="module")
def gdino_dir(tmp_path_factory) -> Path:
    return save_tiny_gdino(tmp_path_factory.mktemp("gdino") / "grounding-dino-micro")


GDINO_PHOTOS = [_photo(40, 60, 1), _photo(90, 50, 2), _photo(80, 120, 3)]  # 1 and 3 share the model input size
GDINO_PROMPTS = ["Goldfish", "great white shark", "tench."]


def test_gdino_detects_through_the_real_loader(gdino_dir):
    det = build_detector("gdino", {"gdino_checkpoint": str(gdino_dir), "box_threshold": 0.0, "text_threshold": 0.0})
    assert det.name == "gdino"
    out = det.detect(GDINO_PHOTOS, GDINO_PROMPTS, [None, None, [(0.0, 0.0, 5.0, 5.0)]])
    assert len(out) == 3
    for d, image in zip(out, GDINO_PHOTOS):
        assert isinstance(d, Detection)
        assert d.backend == "gdino:transformers:grounding-dino-micro"
        h, w = image.shape[:2]
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert 0.0 <= d.score <= 1.0


def test_gdino_batched_equals_one_by_one(gdino_dir):
    options = {"gdino_checkpoint": str(gdino_dir), "box_threshold": 0.0, "text_threshold": 0.0}
    batched = learned.GroundingDinoDetector.load({**options, "batch_size": 8})
    single = learned.GroundingDinoDetector.load({**options, "batch_size": 1})
    both = batched.detect(GDINO_PHOTOS, GDINO_PROMPTS, [None] * 3)
    alone = [single.detect([im], [p], [None])[0] for im, p in zip(GDINO_PHOTOS, GDINO_PROMPTS)]
    for a, b in zip(both, alone):
        assert np.allclose(a.box, b.box, atol=1e-3) and abs(a.score - b.score) < 1e-4


def test_gdino_top_box_follows_the_model_scores(gdino_dir):
    """The detection is the highest-scoring query (score = its best text-token probability)."""
    det = learned.GroundingDinoDetector.load({"gdino_checkpoint": str(gdino_dir), "box_threshold": 0.0,
                                              "text_threshold": 0.0})
    image = GDINO_PHOTOS[0]
    inputs = det.processor(images=[image], text=["goldfish."], return_tensors="pt")
    with torch.inference_mode():
        out = det.model(**inputs)
    probs = out.logits.sigmoid()[0]
    best = float(probs.max(dim=-1).values.max())
    got = det.detect([image], ["goldfish"], [None])[0]
    assert got.score == pytest.approx(best, abs=1e-5)


def test_gdino_thresholds_reject(gdino_dir):
    for thresholds in ({"box_threshold": 1.0}, {"box_threshold": 0.0, "text_threshold": 1.0}):
        det = learned.GroundingDinoDetector.load({"gdino_checkpoint": str(gdino_dir), **thresholds})
        assert det.detect(GDINO_PHOTOS[:2], GDINO_PROMPTS[:2], [None, None]) == [None, None]


def test_gdino_loads_once_per_process(gdino_dir):
    a = learned.GroundingDinoDetector.load({"gdino_checkpoint": str(gdino_dir)})
    b = learned.GroundingDinoDetector.load({"gdino_checkpoint": str(gdino_dir), "box_threshold": 0.5})
    assert a.model is b.model and a.processor is b.processor
    assert (a.box_threshold, a.text_threshold, b.box_threshold) == (0.35, 0.25, 0.5)


def test_gdino_tokenizer_from_text_encoder_folder(tmp_path):
    folder = save_tiny_gdino(tmp_path / "gd", with_tokenizer=False)
    det = learned.GroundingDinoDetector.load({"gdino_checkpoint": str(folder), "text_encoder": str(tmp_path / "bert"),
                                              "box_threshold": 0.0, "text_threshold": 0.0})
    assert isinstance(det.detect(GDINO_PHOTOS[:1], ["cat"], [None])[0], Detection)


def test_gdino_errors(tmp_path, gdino_dir, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as e:
        learned.GroundingDinoDetector.load({"gdino_checkpoint": str(missing)})
    hint = learned.GDINO_HINT
    assert str(e.value) == f"GroundingDINO checkpoint {missing} not found: pass --gdino-checkpoint with {hint}"
    assert hint.endswith("or use --detector annotation or prior (offline)")
    with pytest.raises(ConfigError, match=r"^GroundingDINO needs a local checkpoint: pass --gdino-checkpoint"):
        learned.GroundingDinoDetector.load({})
    pth = tmp_path / "groundingdino_swint_ogc.pth"
    pth.write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError, match="original groundingdino .pth format.*convert_grounding_dino_to_hf"):
        learned.GroundingDinoDetector.load({"gdino_checkpoint": str(pth), "gdino_config": "GroundingDINO_SwinT_OGC.py"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        learned.GroundingDinoDetector.load({"gdino_checkpoint": str(tmp_path / "empty")})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="could not be loaded"):
        learned.GroundingDinoDetector.load({"gdino_checkpoint": str(broken)})
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the package were not installed
    with pytest.raises(ConfigError, match=r"needs the python package 'transformers'.*pip install lsbench\[imagenet\]$"):
        learned.GroundingDinoDetector.load({"gdino_checkpoint": str(gdino_dir)})


# --------------------------------------------------------------------------- SAM

TINY_SAM = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, img_size=128,
                patch_size=16, out_chans=256)


@pytest.fixture(scope="module")
def sam_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sam") / "sam_micro.pth"
    torch.save(tiny_sam_state(), path)
    return path


SAM_PHOTOS = [_photo(60, 90, 4), _photo(101, 47, 5), _photo(128, 128, 6)]
SAM_BOXES = [(22.5, 15.0, 67.5, 45.0), (10.0, 20.0, 40.0, 90.0), (0.0, 0.0, 128.0, 128.0)]


def test_sam_segments_through_the_real_loader(sam_path):
    seg = build_segmenter("sam", {"sam_checkpoint": str(sam_path)})
    assert seg.name == "sam" and seg.backend == "sam:vit-32x2-128px"
    assert learned.sam_config(seg.model.state_dict()) == TINY_SAM
    out = seg.segment(SAM_PHOTOS, SAM_BOXES)
    for s, image in zip(out, SAM_PHOTOS):
        assert isinstance(s, Segmentation) and s.backend == "sam:vit-32x2-128px"
        assert s.mask.dtype == bool and s.mask.shape == image.shape[:2]
        assert np.isfinite(s.score)


def test_sam_batched_equals_one_by_one(sam_path):
    batched = learned.SamSegmenter.load({"sam_checkpoint": str(sam_path), "batch_size": 3}).segment(SAM_PHOTOS,
                                                                                                   SAM_BOXES)
    single = learned.SamSegmenter.load({"sam_checkpoint": str(sam_path), "batch_size": 1})
    for b, image, box in zip(batched, SAM_PHOTOS, SAM_BOXES):
        a = single.segment([image], [box])[0]
        assert abs(a.score - b.score) < 1e-4
        assert np.mean(a.mask != b.mask) < 1e-3


def test_sam_matches_segment_anything_predictor(sam_path):
    """Same mask and IoU as segment_anything's own SamPredictor on the same model (box prompt, one mask)."""
    from segment_anything import SamPredictor

    seg = learned.SamSegmenter.load({"sam_checkpoint": str(sam_path)})
    predictor = SamPredictor(seg.model)
    for image, box in zip(SAM_PHOTOS[:2], SAM_BOXES[:2]):
        predictor.set_image(image)
        masks, iou, _ = predictor.predict(box=np.asarray(box), multimask_output=False)
        ours = seg.segment([image], [box])[0]
        assert np.array_equal(ours.mask, masks[0]) and ours.score == pytest.approx(float(iou[0]), abs=1e-5)


def test_sam_config_reads_the_released_types():
    """The encoder read off a state dict is the registry's for vit_h/l/b, and build_sam rebuilds the same tree
    (on the meta device: shapes only, no memory)."""
    from segment_anything import sam_model_registry

    for name in ("vit_h", "vit_l", "vit_b"):
        with torch.device("meta"):
            official = sam_model_registry[name]().state_dict()
            config = learned.sam_config(official)
            ours = learned.build_sam(config).state_dict()
        assert learned.sam_type_of(config) == name
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in official.items()}


def test_sam_loads_once_and_checks_type(sam_path):
    a = learned.SamSegmenter.load({"sam_checkpoint": str(sam_path)})
    b = learned.SamSegmenter.load({"sam_checkpoint": str(sam_path), "batch_size": 2})
    assert a.model is b.model
    with pytest.raises(ConfigError, match=r"holds a vit-32x2-128px model, not vit_b: pass --sam-type vit-32x2-128px"):
        learned.SamSegmenter.load({"sam_checkpoint": str(sam_path), "sam_type": "vit_b"})
    with pytest.raises(ConfigError, match=r"--sam-type 'vit_x': choose one of vit_h, vit_l, vit_b"):
        learned.SamSegmenter.load({"sam_checkpoint": str(sam_path), "sam_type": "vit_x"})


def test_sam_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        learned.SamSegmenter.load({"sam_checkpoint": "/x/sam_vit_h.pth"})
    assert str(e.value) == ("SAM checkpoint /x/sam_vit_h.pth not found: pass --sam-checkpoint with a local "
                            "sam_vit_h_4b8939.pth, or use --segmenter grabcut (offline)")
    with pytest.raises(ConfigError, match="with a local sam_vit_b_01ec64.pth"):
        learned.SamSegmenter.load({"sam_checkpoint": "/x/b.pth", "sam_type": "vit_b"})
    junk = tmp_path / "sam.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"is not a readable PyTorch checkpoint \(.*\): pass --sam-checkpoint"):
        learned.SamSegmenter.load({"sam_checkpoint": str(junk)})
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ConfigError, match="is not a segment-anything state dict"):
        learned.SamSegmenter.load({"sam_checkpoint": str(other)})


# --------------------------------------------------------------------------- LaMa


@pytest.fixture(scope="module")
def lama_paths(tmp_path_factory) -> dict[bool, Path]:
    """Tiny LaMa-like TorchScript files: with LaMa's own composite (True) and returning the raw prediction."""
    folder = tmp_path_factory.mktemp("lama")
    paths = {}
    for composite in (True, False):
        paths[composite] = folder / f"lama_{composite}.pt"
        lama_like(ngf=8, n_down=3, n_blocks=1, composite=composite).save(str(paths[composite]))
    return paths


def _lama_inputs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [_photo(37, 53, 7), _photo(40, 56, 8), _photo(33, 49, 9), _photo(21, 18, 10)]  # 1st and 3rd: 40×56 padded
    masks = []
    for k, image in enumerate(images):
        m = np.zeros(image.shape[:2], dtype=bool)
        m[5 : 5 + 10 + k, 4 : 4 + 12] = True
        masks.append(m)
    return images, masks


@pytest.mark.parametrize("composite", [True, False])
def test_lama_inpaints_through_the_real_loader(lama_paths, composite):
    inp = build_inpainter("lama", {"lama_checkpoint": str(lama_paths[composite])})
    assert inp.name == "lama" and inp.backend == f"lama:torchscript:lama_{composite}.pt"
    images, masks = _lama_inputs()
    out = inp.inpaint(images, masks)
    for o, image, mask in zip(out, images, masks):
        assert o.dtype == np.uint8 and o.shape == image.shape  # odd sizes: the padding is cropped off
        assert np.array_equal(o[~mask], image[~mask])  # outside the mask: the input, exactly
        assert not np.array_equal(o[mask], image[mask])  # inside: the network's fill


def test_lama_matches_the_torchscript_forward(lama_paths):
    """The fill is the TorchScript model's output on the mirrored, 8-padded photo (simple-lama's recipe)."""
    inp = learned.LamaInpainter.load({"lama_checkpoint": str(lama_paths[True])})
    image, mask = _lama_inputs()[0][0], _lama_inputs()[1][0]
    padded = np.pad(image, ((0, 3), (0, 3), (0, 0)), mode="symmetric").astype(np.float32) / 255
    padded_mask = np.pad(mask, ((0, 3), (0, 3)), mode="symmetric").astype(np.float32)
    with torch.inference_mode():
        pred = inp.model(torch.from_numpy(padded).permute(2, 0, 1)[None], torch.from_numpy(padded_mask)[None, None])
    expected = np.clip(pred[0].permute(1, 2, 0).numpy()[:37, :53] * 255, 0, 255).astype(np.uint8)
    assert np.array_equal(inp.inpaint([image], [mask])[0], np.where(mask[..., None], expected, image))


def test_lama_batched_equals_one_by_one_and_empty_masks(lama_paths):
    images, masks = _lama_inputs()
    batched = learned.LamaInpainter.load({"lama_checkpoint": str(lama_paths[True]), "batch_size": 4})
    single = learned.LamaInpainter.load({"lama_checkpoint": str(lama_paths[True]), "batch_size": 1})
    assert batched.model is single.model
    masks[1] = np.zeros_like(masks[1])
    both = batched.inpaint(images, masks)
    assert np.array_equal(both[1], images[1])
    for b, image, mask in zip(both, images, masks):
        a = single.inpaint([image], [mask])[0]
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_lama_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        learned.LamaInpainter.load({"lama_checkpoint": str(tmp_path / "big-lama.pt")})
    assert str(e.value) == (f"LaMa checkpoint {tmp_path / 'big-lama.pt'} not found: pass --lama-checkpoint with a "
                            "local TorchScript big-lama.pt, or use --inpainter opencv (offline)")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"is not a TorchScript model \(.*\): pass --lama-checkpoint"):
        learned.LamaInpainter.load({"lama_checkpoint": str(junk)})
    with pytest.raises(ConfigError, match="--batch-size must be a positive integer"):
        learned.LamaInpainter.load({"lama_checkpoint": str(junk), "batch_size": 0})
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU|is not a torch device"):
        if torch.cuda.is_available():
            learned.LamaInpainter.load({"lama_checkpoint": str(junk), "device": "gpu0"})
        learned.LamaInpainter.load({"lama_checkpoint": str(junk), "device": "cuda"})


# --------------------------------------------------------------------------- out of memory


def _fails_above(k: int, error: type[BaseException] = torch.OutOfMemoryError):
    calls: list[int] = []

    def fn(chunk: list[int]) -> list[int]:
        calls.append(len(chunk))
        if len(chunk) > k:
            raise error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in chunk]

    return fn, calls


def test_oom_halves_the_batch():
    fn, calls = _fails_above(3)
    out, size = learned.run_in_batches(fn, list(range(11)), 8, "SAM")
    assert out == [x * 10 for x in range(11)] and size == 2
    assert calls == [8, 4, 2, 2, 2, 2, 2, 1]
    fn, calls = _fails_above(5, torch.cuda.OutOfMemoryError)
    out, size = learned.run_in_batches(fn, list(range(6)), 6, "SAM")
    assert out == [x * 10 for x in range(6)] and size == 3 and calls == [6, 3, 3]


def test_oom_at_batch_one_is_a_user_error():
    fn, calls = _fails_above(0)
    with pytest.raises(LsbenchError) as e:
        learned.run_in_batches(fn, [1, 2, 3], 4, "LaMa")
    assert calls == [3, 1]
    assert str(e.value).startswith("LaMa ran out of GPU memory on a single photo") and "\n" not in str(e.value)


def test_other_errors_pass_through():
    def fn(chunk):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        learned.run_in_batches(fn, [1, 2], 2, "SAM")


# --------------------------------------------------------------------------- the pipeline with the learned backends


def _samples(directory: Path) -> list[dict]:
    from lsbench.dataset import read_split

    return [s for split in ("train", "test") for s in read_split(directory, split)]


def test_pipeline_end_to_end_with_sam_and_lama(tmp_path, sam_path, lama_paths):
    """``generate`` on the demo photos with the dataset boxes, SAM and LaMa loaded from their checkpoints:
    valid shards, the backends recorded per sample, and a rerun redoes a lost shard from the cache alone."""

    options = dict(demo=True, train=2, test=7, shard_size=7, detector="annotation", segmenter="sam",
                   inpainter="lama", sam_checkpoint=str(sam_path), sam_type="", lama_checkpoint=str(lama_paths[True]),
                   batch_size=2)
    out = tmp_path / "ds"
    result = generate_imagenet(out, **options)
    assert result.complete and dataset.validate(out) == []
    samples = _samples(out)
    assert len(samples) == 9
    for s in samples:
        assert s["meta"]["backends"] == {"detect": "annotation", "segment": "sam:vit-32x2-128px",
                                         "inpaint": "lama:torchscript:lama_True.pt"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["segmenter"] == "sam" and set(manifest["yield"]) == {"train", "test"}
    for entry in (json.loads(line) for line in (out / "rejections.jsonl").read_text().splitlines()):
        assert entry["stage"] == "segment" and "in_box_fraction" in entry["scores"]  # random SAM weights
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    cached = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz")}
    (out / "test-000000.tar").unlink()
    again = generate_imagenet(out, **options)
    assert (again.shards_written, again.complete) == (1, True)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz")} == cached


def test_pipeline_logs_gdino_rejections(tmp_path, gdino_dir):
    """GroundingDINO through ``generate``: a box threshold no score passes rejects every photo at detect,
    each logged with its reason, and the run stops with one line pointing to the log."""
    from lsbench.errors import DataError
    from lsbench.generators.imagenet import pipeline

    out = tmp_path / "ds"
    with pytest.raises(DataError) as info:
        generate_imagenet(out, demo=True, train=1, test=0, detector="gdino", segmenter="grabcut", inpainter="opencv",
                          gdino_checkpoint=str(gdino_dir), box_threshold=1.0, max_attempts=3)
    assert "\n" not in str(info.value) and "3 photos in a row were rejected" in str(info.value)
    log = [r for p in (out / pipeline.REJECTION_DIR).glob("*.json") for r in json.loads(p.read_text())["rejected"]]
    assert len(log) == 3
    for r in log:
        assert r["stage"] == "detect" and r["reason"].startswith("nothing found for") and "box 1.0" in r["reason"]
    # With thresholds every query passes, the photos get past detection and the detector's box is recorded.
    out = tmp_path / "ds2"
    try:
        generate_imagenet(out, demo=True, train=1, test=0, detector="gdino", segmenter="grabcut",
                          inpainter="opencv", gdino_checkpoint=str(gdino_dir), box_threshold=0.0, text_threshold=0.0,
                          max_attempts=2)
    except DataError:
        pass
    log = [r for p in (out / pipeline.REJECTION_DIR).glob("*.json") for r in json.loads(p.read_text())["rejected"]]
    assert log or (out / "manifest.json").is_file()
    assert all(r["stage"] == "segment" and 0 <= r["scores"]["detection_score"] <= 1 for r in log)
    if (out / "manifest.json").is_file() and json.loads((out / "manifest.json").read_text())["complete"]:
        assert _samples(out)[0]["meta"]["backends"]["detect"] == "gdino:transformers:grounding-dino-micro"


def test_pipeline_bad_checkpoint_leaves_nothing_behind(tmp_path, lama_paths, recwarn):
    """Models load at the first photo not in the cache, after the output folder exists: a checkpoint that
    fails to load is one line, leaves no half-made dataset (so the corrected command is not told the
    folder holds a different dataset), and torch's warnings about the file do not reach the user."""
    out = tmp_path / "ds"
    options = dict(demo=True, train=1, test=0, detector="annotation", segmenter="sam", inpainter="opencv", sam_type="")
    with pytest.raises(ConfigError, match="is not a readable PyTorch checkpoint") as info:
        generate_imagenet(out, **options, sam_checkpoint=str(lama_paths[True]))
    assert "\n" not in str(info.value)
    assert not out.exists()
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    out.mkdir()  # an empty folder the user made is kept, empty
    with pytest.raises(ConfigError):
        generate_imagenet(out, **options, sam_checkpoint=str(lama_paths[True]))
    assert out.is_dir() and not any(out.iterdir())
