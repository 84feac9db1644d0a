"""Pretrained timm models by name, fed with their own preprocessing, against timm's own eval pipeline.

The oracle: an ImageNet-LS demo set exported as an ImageFolder, and for each model ``timm.data.
create_transform(**resolve_data_config({}, model=m, use_test_size=True))`` (what timm's ``validate.py``
uses: the test input size and crop where a model has them) + torchvision's ``ImageFolder`` + the same
weights — lsbench's per-sample top-1 (from ``--save-predictions``) must equal it on every image.
Weights are seeded random ones of the real architectures saved into a temporary local Hugging Face
cache (``hub_cache.py``) and read through the real loading path, offline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import generate_imagenet
from PIL import Image

from lsbench import dataset
from lsbench.benchmark.configs import EvaluateConfig
from lsbench.benchmark.evaluate import evaluate
from lsbench.benchmark.predictions import read_predictions
from lsbench.benchmark.preprocess import Preprocess
from lsbench.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from hub_cache import populate  # noqa: E402

# Different data configs: bicubic/0.95/ImageNet stats; bicubic/0.9/mean 0.5; crop_pct 1.0 at 384 px;
# bilinear at 160 px; and `timm:convnext_tiny` by its bare name (the default tag, in12k_ft_in1k).
MODELS = ["resnet18.a1_in1k", "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "vit_tiny_patch16_384.augreg_in21k_ft_in1k",
          "test_resnet.r160_in1k", "convnext_tiny"]
DEMO = dict(demo=True, detector="annotation", segmenter="grabcut", inpainter="opencv", train=8, test=28,
            shard_size=7, image_format="png")


@pytest.fixture
def hub(tmp_path_factory, monkeypatch):
    import huggingface_hub.constants as hf_constants

    hub = tmp_path_factory.getbasetemp() / "zoo-hub"
    if not hub.is_dir():
        for i, name in enumerate([*MODELS, "test_vit.r160_in1k"]):
            populate(hub, name, seed=i)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return hub


@pytest.fixture(scope="module")
def imagenet_ls(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "imagenet-ls"
    generate_imagenet(out, **DEMO)
    return out


def _export_imagefolder(data: Path, split: str, root: Path) -> None:
    """The split's images as ``root/{label}/{key}.png`` (torchvision's ImageFolder layout)."""
    for s in dataset.read_split(data, split):
        folder = root / f"{s['meta']['label']:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(s["image"]).save(folder / f"{s['__key__']}.png")


def _timm_top5(name: str, weights: Path, root: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Per image: timm's top-5 classes and their probabilities."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}).eval()
    transform = create_transform(**resolve_data_config({}, model=model, use_test_size=True))
    folder = ImageFolder(str(root), transform=transform)
    out = {}
    with torch.inference_mode():
        for i in range(0, len(folder), 8):
            items = [folder[j] for j in range(i, min(i + 8, len(folder)))]
            probs, classes = model(torch.stack([x for x, _ in items])).softmax(dim=1).topk(5, dim=1)
            for j, c, p in zip(range(i, i + len(items)), classes.tolist(), probs.tolist()):
                out[Path(folder.samples[j][0]).stem] = (c, p)
    return out


@pytest.mark.slow
def test_per_sample_predictions_equal_timms_own_pipeline(imagenet_ls, hub, tmp_path):
    root = tmp_path / "imagefolder"
    _export_imagefolder(imagenet_ls, "test", root)
    for name in MODELS:
        cfg = EvaluateConfig(model=f"timm:{name}", data=imagenet_ls, out=tmp_path / "results", batch_size=8,
                             workers=0, save_predictions=True)
        result, path = evaluate(cfg)
        weights = Path(result["model"]["checkpoint"])
        assert weights.is_relative_to(hub) and weights.name == "model.safetensors"
        records = list(read_predictions(path.parent / result["predictions"]["file"]))
        theirs = _timm_top5(name, weights, root)
        assert len(records) == len(theirs) == 28
        assert {r["key"]: r["top5"][0] for r in records} == {k: c[0] for k, (c, _) in theirs.items()}, name
        # Random weights often predict one class for every image, so the top-1 alone would not tell two
        # preprocessings apart: the probabilities must agree too (the records keep 6 decimals).
        for r in records:
            classes, probs = theirs[r["key"]]
            assert r["top5"] == classes, (name, r["key"])
            assert r["top5_p"] == pytest.approx(probs, abs=2e-6), (name, r["key"])
        pre = result["preprocess"]
        import timm
        from timm.data import resolve_data_config

        expected = resolve_data_config({}, model=timm.create_model(name, pretrained=False), use_test_size=True)
        assert (pre["kind"], pre["size"], pre["crop_pct"], pre["interpolation"]) == (
            "timm", expected["input_size"][-1], expected["crop_pct"], expected["interpolation"])
        assert pre["mean"] == list(expected["mean"]) and pre["std"] == list(expected["std"])
        # Cut objects are counted from the same per-sample flags the records carry.
        cut = sum(len(r["inside"]) - sum(r["inside"]) for r in records)
        assert result["metrics"]["objects_cut"] == cut
        m = result["metrics"]
        refs = [r for r in records if r["reference"]]
        assert m["accuracy_clean"] == pytest.approx(np.mean([r["top5"][0] == r["label"] for r in refs]))
        assert m["accuracy_drop"] == pytest.approx(m["accuracy_clean"] - m["accuracy_scaled"])


def test_absent_weights_name_the_repo_and_the_folder(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from lsbench.dec_models.registry import create_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as e:
        create_model("timm:resnet18.a1_in1k", 1000, pretrained="timm")
    msg = str(e.value)
    assert "\n" not in msg and "timm/resnet18.a1_in1k" in msg
    assert str(tmp_path / "hub" / "models--timm--resnet18.a1_in1k") in msg and "--checkpoint FILE" in msg
    with pytest.raises(ConfigError, match=r"published weights classify 1000 classes, the dataset has 10"):
        create_model("timm:resnet18.a1_in1k", 10, pretrained="timm")


def test_crop_geometry_follows_timms_resize():
    """``inside`` uses the sizes timm's eval transform really produces (checked against its Resize)."""
    from timm.data import create_transform

    pre = Preprocess(kind="timm", size=224, crop_pct=0.875, crop_mode="center", interpolation="bicubic")
    assert pre._resized(100, 200) == (256, 512, 16, 144)
    resize = create_transform(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic").transforms[0]
    for h, w in [(100, 200), (375, 500), (500, 333), (224, 224)]:
        rh, rw, _, _ = pre._resized(h, w)
        assert resize(Image.new("RGB", (w, h))).size == (rw, rh)
    assert not pre.inside((0, 0, 10, 10), 100, 200)  # left edge: cut by the crop
    assert pre.inside((90, 40, 110, 60), 100, 200)  # the centre stays
    squash = Preprocess(kind="squash", size=64)
    assert squash.inside((0, 0, 200, 100), 100, 200)
    # crop_mode "border": the image is padded, not cut; where it lands is timm's CenterCropOrPad's.
    border = Preprocess(kind="timm", size=224, crop_pct=1.0, crop_mode="border")
    pad = create_transform(input_size=(3, 224, 224), crop_pct=1.0, crop_mode="border").transforms[:2]
    for h, w in [(100, 203), (101, 224), (300, 97), (99, 224)]:
        out = np.asarray(pad[1](pad[0](Image.new("RGB", (w, h), (255, 255, 255)))))
        white = (out == 255).all(axis=2)
        rh, rw, top, left = border._resized(h, w)
        assert (white.any(axis=1).sum(), white.any(axis=0).sum()) == (rh, rw)
        assert (-top, -left) == (np.argmax(white.any(axis=1)), np.argmax(white.any(axis=0)))
        assert border.inside((0, 0, w, h), h, w)


def test_unknown_tags_and_url_only_weights_are_one_line():
    from lsbench.dec_models.registry import create_model

    with pytest.raises(ConfigError) as e:
        create_model("timm:resnet18.bogus", 1000, pretrained="timm")
    assert str(e.value).startswith("Invalid pretrained tag (bogus) for resnet18. Published tags: a1_in1k, ")
    with pytest.raises(ConfigError, match=r"^timm publishes the weights of gcvit_tiny.in1k at a URL, not on the "
                                          r"Hugging Face hub: download them once and pass --checkpoint FILE"):
        create_model("timm:gcvit_tiny.in1k", 1000, pretrained="timm")


def test_many_models_skip_what_exists_and_go_on_past_a_failure(tmp_path, hub):
    """Repeated --model and --models FILE: one result per model, reruns skip, a failing model is one line."""
    import json
    import os
    import subprocess

    from conftest import generate_mnist

    data = tmp_path / "mnist-1000"  # 3 digits: 1000 classes, like ImageNet-1k's head
    generate_mnist(data, digits=3, size=96, scale_range=(0.5, 1.0), train=5, test=10, variants=1)
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "results"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lsbench.cli", "evaluate", "--data", str(data), "--out",
                               str(out), "--workers", "0", "--batch-size", "5", *args],
                              env=env, capture_output=True, text=True, timeout=600)

    proc = cli("-m", "timm:test_resnet.r160_in1k", "-m", "timm:efficientnet_b0.ra_in1k", "-m",
               "timm:test_vit.r160_in1k")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 3 models failed (timm:efficientnet_b0.ra_in1k); 2 evaluated, 0 skipped")
    assert "timm:efficientnet_b0.ra_in1k: failed: pretrained weights for efficientnet_b0.ra_in1k are not in the " \
           "local cache" in proc.stderr
    results = sorted(out.glob("*.json"))
    assert [json.loads(p.read_text())["model"]["name"] for p in results] == ["timm:test_resnet.r160_in1k",
                                                                            "timm:test_vit.r160_in1k"]
    stamps = [p.stat().st_mtime_ns for p in results]
    listing = tmp_path / "zoo.txt"
    listing.write_text("# the small ones\ntimm:test_resnet.r160_in1k\n\ntimm:test_vit.r160_in1k  # a ViT\n")
    proc = cli("--models", str(listing), "-q")
    assert proc.returncode == 0, proc.stderr
    assert [p.stat().st_mtime_ns for p in sorted(out.glob("*.json"))] == stamps  # skipped, not rewritten
    proc = cli("--models", str(listing))
    assert proc.stderr.count("skipped, its result for these weights and this dataset is") == 2
    # Other evaluation options are another result: evaluated again, not skipped.
    proc = cli("--models", str(listing), "--limit", "5", "-q")
    assert proc.returncode == 0, proc.stderr
    assert all(p.stat().st_mtime_ns != t for p, t in zip(sorted(out.glob("*.json")), stamps))
    empty = tmp_path / "none.txt"
    empty.write_text("# nothing\n")
    proc = cli("--models", str(empty))
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == (
        f"error: --models {empty} names no model (one name per line, # for comments)")
    # The zoo view on the leaderboard: the same results, one line per model, with a CSV.
    import csv

    from lsbench.benchmark.leaderboard import build

    (folder,) = build(out, tmp_path / "site")
    rows = list(csv.DictReader((folder / "zoo.csv").open()))
    assert [r["model"] for r in rows] and {r["model"] for r in rows} == {"timm:test_resnet.r160_in1k",
                                                                         "timm:test_vit.r160_in1k"}
    for r, path in ((r, next(p for p in results if json.loads(p.read_text())["model"]["name"] == r["model"]))
                    for r in rows):
        m = json.loads(path.read_text())["metrics"]
        assert float(r["accuracy_clean"]) == m["accuracy_clean"] and float(r["accuracy_drop"]) == pytest.approx(
            m["accuracy_clean"] - m["accuracy_scaled"])
        assert float(r["gmacs"]) > 0 and float(r["params_m"]) > 0 and "160 px, center crop 0.95" in r["input"]
        assert int(r["objects_cut"]) == m["objects_cut"] and int(r["objects_boxed"]) == m["objects_boxed"]
    page = (folder / "index.html").read_text()
    assert "<h2>Model zoo</h2>" in page and 'href="zoo.csv"' in page
    assert "## Model zoo" in (folder / "leaderboard.md").read_text()
