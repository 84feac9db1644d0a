"""Starting one model from another's checkpoint (``lsbench train --init-from``, ``--pretrained`` an lsbench ckpt).

At step 0 the new model computes exactly what its source computes, in eval mode, for every family
and for the paper's fine-tunes (aug → dec, canon, invl, augl; dec → dec with trained-looking, i.e.
non-identity, canonicalizers copied); a model of another arch, size, class count or task is one
line naming both; the source's sha256 travels into the new checkpoints and every result of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, generate_mnist

from lsbench.benchmark.configs import EvaluateConfig, TrainConfig
from lsbench.benchmark.evaluate import evaluate
from lsbench.benchmark.train import train
from lsbench.dec_models import checkpoint, registry, transfer
from lsbench.dec_models.archs import get_arch
from lsbench.errors import ConfigError
from lsbench.util import sha256_file

PAIRS = [("aug", "dec"), ("aug", "canon"), ("aug", "invl"), ("aug", "augl"), ("dec", "dec"), ("canon", "canon")]


def _img(arch: str) -> int:
    return 28 if arch == "dinov2" else 32  # dinov2's patch is 14


def _perturbed(name: str, task: str = "cls", seed: int = 0) -> registry.LSModel:
    """A model whose every tensor (canonicalizers included) is moved off its initialisation, so a copied
    canonicalizer is not the identity by accident."""
    torch.manual_seed(seed)
    arch = registry.parse_name(name)[0]
    model = registry.create_model(name, 5, task=task, size="micro", img_size=_img(arch))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out if torch.is_tensor(out) else out[0]


def _start(source: registry.LSModel, target_name: str, tmp_path: Path, task: str = "cls"):
    path = tmp_path / "source.pt"
    checkpoint.save(path, source)
    arch = registry.parse_name(target_name)[0]
    target = registry.create_model(target_name, 5, task=task, size="micro", img_size=_img(arch))
    report = transfer.init_from(target, checkpoint.read(path), path, any_input_size=get_arch(arch).any_input_size)
    return target, report


@pytest.mark.parametrize("arch", registry.ARCHS)
@pytest.mark.parametrize(("src", "tgt"), PAIRS)
def test_step0_outputs_equal_the_source(arch, src, tgt, tmp_path):
    source = _perturbed(f"{arch}_{src}")
    target, report = _start(source, f"{arch}_{tgt}", tmp_path)
    x = torch.randn(2, 3, _img(arch), _img(arch), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(source, x), _logits(target, x))
    layers = target.config.layers or []
    if src == tgt and layers:
        assert report.copied == layers and not report.fresh
    elif layers:
        assert report.fresh == layers and not report.copied


def test_a_copied_canonicalizer_matters(tmp_path):
    """dec → dec copies ψ: the same target started at the identity instead computes something else."""
    source = _perturbed("resnet_dec")
    target, _ = _start(source, "resnet_dec", tmp_path)
    fresh, _ = _start(_perturbed("resnet_aug"), "resnet_dec", tmp_path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(source, x), _logits(target, x))
    assert not torch.allclose(_logits(source, x), _logits(fresh, x))


def test_segmentation_heads_are_copied(tmp_path):
    source = _perturbed("resnet_aug", task="seg")
    target, report = _start(source, "resnet_dec", tmp_path, task="seg")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(source, x), _logits(target, x))
    assert report.fresh


def test_dec_to_aug_drops_and_names_the_canonicalizers(tmp_path):
    _, report = _start(_perturbed("resnet_dec"), "resnet_aug", tmp_path)
    assert report.dropped == ["layer1", "layer2", "layer3", "layer4"]
    assert "dropped: layer1" in report.summary()


@pytest.mark.parametrize(
    ("source", "target", "needles"),
    [
        ("vit_aug", "resnet_dec", ("vit_aug", "resnet_dec", "arch vit vs resnet")),
        ("resnet_aug", "resnet_dec@7", ("num_classes 5 vs 7",)),
        ("resnet_aug", "resnet_dec@tiny", ("size micro vs tiny",)),
        ("resnet_aug", "resnet_dec@seg", ("task cls vs seg",)),
        ("vit_aug", "vit_dec@64", ("img_size 32 vs 64",)),  # a fixed-input arch
    ],
)
def test_mismatch_is_one_line_naming_both(source, target, needles, tmp_path):
    name, _, change = target.partition("@")
    path = tmp_path / "source.pt"
    checkpoint.save(path, registry.create_model(source, 5, size="micro", img_size=32))
    options = {"num_classes": 5, "size": "micro", "img_size": 32, "task": "cls"}
    if change.isdigit():
        options["num_classes" if int(change) < 10 else "img_size"] = int(change)
    elif change in ("seg",):
        options["task"] = change
    elif change:
        options["size"] = change
    model = registry.create_model(name, options.pop("num_classes"), **options)
    arch = registry.parse_name(name)[0]
    with pytest.raises(ConfigError) as e:
        transfer.init_from(model, checkpoint.read(path), path, any_input_size=get_arch(arch).any_input_size)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message


def test_resnet_takes_any_input_size(tmp_path):
    path = tmp_path / "source.pt"
    checkpoint.save(path, registry.create_model("resnet_aug", 5, size="micro", img_size=32))
    model = registry.create_model("resnet_dec", 5, size="micro", img_size=48)
    transfer.init_from(model, checkpoint.read(path), path, any_input_size=True)


def test_pretrained_accepts_an_lsbench_checkpoint_backbone_only(tmp_path):
    path = tmp_path / "source.pt"
    checkpoint.save(path, _perturbed("resnet_dec"))
    want = transfer.backbone_state(checkpoint.read(path))
    assert not any("canonicalizer" in k for k in want)
    model = registry.create_model("resnet_invl", 5, size="micro", img_size=32, pretrained=path)
    own = model.backbone.state_dict()
    assert [k for k in want if not torch.equal(own[k], want[k])] == []


# --------------------------------------------------------------------------- through `lsbench train`


@pytest.fixture(scope="module")
def mnist_ls(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mnist_ls") / "ds"
    assert generate_mnist(out, digits=1, size=32, scale_range=(0.6, 1.1), train=48, test=16, variants=1,
                          shard_size=32).complete
    return out


def _train(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(model="resnet_aug", data=str(data), out=str(out), size="micro", img_size=32, epochs=1,
                  batch_size=16, lr=1e-3, workers=0, val_limit=16)
    cfg = TrainConfig(**{**values, **overrides})
    train(cfg)
    return cfg


@pytest.fixture(scope="module")
def aug_run(mnist_ls, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aug") / "run"
    _train(mnist_ls, out)
    return out


def test_init_from_records_the_source_everywhere(mnist_ls, aug_run, tmp_path):
    source = aug_run / "last.pt"
    out = tmp_path / "dec"
    # size and img_size are left unset: they come from the source checkpoint
    _train(mnist_ls, out, model="resnet_dec", size=None, img_size=None, init_from=str(source), max_steps_per_epoch=1)
    want = {"path": str(source), "sha256": sha256_file(source), "model": "resnet_aug"}
    for name in ("last.pt", "best.pt"):
        ckpt = checkpoint.read(out / name)
        assert ckpt["init_from"] == want
        assert ckpt["model_config"]["size"] == "micro" and ckpt["model_config"]["img_size"] == 32
    assert json.loads((out / "config.json").read_text())["init_from"] == want
    result, _ = evaluate(EvaluateConfig(model="resnet_dec", data=mnist_ls, checkpoint=out / "last.pt",
                                        split="test", out=None, batch_size=16))
    assert result["model"]["init_from"] == want
    plain, _ = evaluate(EvaluateConfig(model="resnet_aug", data=mnist_ls, checkpoint=source, split="test",
                                       out=None, batch_size=16))
    assert plain["model"]["init_from"] is None


def test_init_from_and_pretrained_together_is_refused(mnist_ls, aug_run, tmp_path):
    with pytest.raises(ConfigError, match="pass one of them"):
        _train(mnist_ls, tmp_path / "x", model="resnet_dec", init_from=str(aug_run / "last.pt"), pretrained="timm")
    assert not (tmp_path / "x").exists()


def test_cli_init_from_mismatch_is_one_error_line(cli, mnist_ls, aug_run, tmp_path):
    result = cli("train", "--model", "vit_dec", "--data", mnist_ls, "--out", tmp_path / "v", "--init-from",
                 aug_run / "last.pt", "--epochs", "1", "--workers", "0")
    assert_user_error(result, "resnet_aug", "vit_dec")
    assert not (tmp_path / "v").exists()


def test_cli_init_from_missing_checkpoint(cli, mnist_ls, tmp_path):
    result = cli("train", "--model", "resnet_dec", "--data", mnist_ls, "--out", tmp_path / "r", "--init-from",
                 tmp_path / "nope.pt")
    assert_user_error(result, "nope.pt", "not found")
