"""``lsbench train`` on a tiny MNIST-LS (1 digit, 32 px, 96 train / 40 test images), CPU, micro models.

Training learns, DEC trains end to end and logs its solver, an interrupted run resumed from
``last.pt`` is bit-identical to an uninterrupted one, checkpoints are ``weights_only``-loadable and
carry their configs, and user mistakes are one ``ConfigError``/``DatasetError`` (one ``error:`` line
in the CLI).  Torch runs single-threaded: on a shared 2-core machine that is many times faster.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, generate_mnist

from lsbench.benchmark.train import TrainConfig, train
from lsbench.dec_models import checkpoint
from lsbench.errors import ConfigError, DatasetError

TRAIN, TEST, BATCH = 96, 40, 16
STEPS_PER_EPOCH = TRAIN // BATCH


@pytest.fixture(scope="module")
def mnist_ls(tmp_path_factory) -> Path:
    """Tiny MNIST-LS: 1 digit per 32-px image (scales 0.6–1.1 so it fits), test = 20 groups of 1 + 1 variant."""
    out = tmp_path_factory.mktemp("mnist_ls") / "ds"
    result = generate_mnist(out, digits=1, size=32, scale_range=(0.6, 1.1), train=TRAIN, test=TEST, variants=1,
                            shard_size=32)
    assert result.complete
    for p in out.iterdir():
        p.chmod(0o444)
    return out


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(model="resnet_base", data=str(data), out=str(out), size="micro", img_size=32, epochs=3,
                  batch_size=BATCH, lr=1e-3, workers=0, val_limit=TEST, log_every=1)
    return TrainConfig(**{**values, **overrides})


def read_log(run: Path) -> tuple[list[dict], list[dict]]:
    """``(step records, epoch records)`` of a run's log.jsonl."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in records if "event" not in r], [r for r in records if r.get("event") == "epoch"]


def state_dicts_equal(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def dec_run(mnist_ls, tmp_path_factory) -> Path:
    """One epoch of resnet_dec (phantom backward, to check it is recorded)."""
    out = tmp_path_factory.mktemp("dec_run") / "run"
    train(config(mnist_ls, out, model="resnet_dec", epochs=1, dec_backward="phantom"))
    return out


# --------------------------------------------------------------------------- training works


def test_training_reduces_the_loss(mnist_ls, tmp_path):
    out = tmp_path / "run"
    messages: list[str] = []
    calls: list[tuple[int, int]] = []
    result = train(config(mnist_ls, out), log=messages.append, progress=lambda d, t: calls.append((d, t)))
    assert result.out == out and result.epochs == 3
    assert result.best == out / "best.pt" and result.last == out / "last.pt"
    for name in ("best.pt", "last.pt", "log.jsonl", "config.json"):
        assert (out / name).is_file(), name
    steps, epochs = read_log(out)
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"], epochs
    for e in epochs:
        assert 0.0 <= e["val_accuracy"] <= 1.0 and e["val_count"] == TEST
    assert len(steps) == 3 * STEPS_PER_EPOCH  # log_every=1
    lrs = [s["lr"] for s in steps]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] <= 1e-3  # cosine decay, no warmup (MNIST protocol)
    assert calls[-1] == (3 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH)
    assert len(messages) == 3 and messages[0].startswith("epoch 1/3")
    assert result.metrics["epoch"] == 2


def test_dec_model_trains_end_to_end_and_logs_the_solver(dec_run):
    steps, epochs = read_log(dec_run)
    assert len(epochs) == 1 and len(steps) == STEPS_PER_EPOCH
    for record in steps + epochs:
        assert record["deq_iterations"] >= 1, record
        assert record["deq_residual"] >= 0
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)
    cfg = json.loads((dec_run / "config.json").read_text())
    assert cfg["train"]["model"] == "resnet_dec" and cfg["train"]["dec_backward"] == "phantom"
    assert cfg["model"]["dec_backward"] == "phantom"
    assert cfg["model"]["layers"] == ["layer1", "layer2", "layer3", "layer4"]


def test_checkpoints_load_weights_only_and_carry_configs(dec_run):
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(dec_run / name, map_location="cpu", weights_only=True)
        assert ckpt["format"] == checkpoint.FORMAT
        assert ckpt["train_config"]["model"] == "resnet_dec"
        assert ckpt["train_config"]["size"] == "micro" and ckpt["train_config"]["img_size"] == 32
        mc = ckpt["model_config"]
        assert mc["name"] == "resnet_dec" and mc["num_classes"] == 10 and mc["task"] == "cls"
        assert mc["dec_backward"] == "phantom" and mc["img_size"] == 32
        assert ckpt["epoch"] == 0 and "train_loss" in ckpt["metrics"]
        assert "world_size" in ckpt
        # Resume state lives in last.pt only; best.pt is the weights and their provenance.
        resume_state = {"optimizer", "scheduler", "scaler"}
        assert resume_state <= set(ckpt) if name == "last.pt" else not resume_state & set(ckpt)
    model, ckpt = checkpoint.load_model(dec_run / "last.pt")
    assert model.config.dec_backward == "phantom"
    assert not state_dicts_equal(model.state_dict(), ckpt["state_dict"])
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# --------------------------------------------------------------------------- resume


class _Stop(Exception):
    pass


def _stop_at(step: int):
    def progress(done: int, total: int) -> None:
        if done == step:
            raise _Stop

    return progress


def test_interrupted_then_resumed_run_equals_uninterrupted(mnist_ls, tmp_path):
    """resnet_aug draws a random scaling per batch, so the RNG streams must be restored too."""
    opts = dict(model="resnet_aug", epochs=2)
    full = tmp_path / "full"
    train(config(mnist_ls, full, **opts))

    part = tmp_path / "part"
    with pytest.raises(_Stop):  # killed during the first step of epoch 2, after last.pt of epoch 1
        train(config(mnist_ls, part, **opts), progress=_stop_at(STEPS_PER_EPOCH + 1))
    assert torch.load(part / "last.pt", weights_only=True)["epoch"] == 0
    train(config(mnist_ls, part, **opts), resume=True)

    full_steps, full_epochs = read_log(full)
    part_steps, part_epochs = read_log(part)
    key = lambda r: (r["epoch"], r["step"])  # noqa: E731
    # The resumed run's records come last; later records of the same step replace the interrupted ones.
    resumed = {key(r): r for r in part_steps}
    assert sorted(resumed) == sorted(key(r) for r in full_steps)
    for r in full_steps:
        got = resumed[key(r)]
        assert (got["loss"], got["lr"]) == (r["loss"], r["lr"]), (key(r), got, r)
    assert [e["epoch"] for e in part_epochs] == [0, 1]
    for a, b in zip(part_epochs, full_epochs):
        assert (a["train_loss"], a["val_accuracy"]) == (b["train_loss"], b["val_accuracy"])
    a = torch.load(part / "last.pt", weights_only=True)
    b = torch.load(full / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    assert not state_dicts_equal(a["state_dict"], b["state_dict"]), "resumed weights differ"


def test_resume_with_more_epochs_equals_a_longer_run(mnist_ls, tmp_path):
    """1 epoch, then --resume to 2 (constant lr, so the schedule does not depend on --epochs)."""
    opts = dict(model="resnet_aug", scheduler="constant")
    full = tmp_path / "full"
    train(config(mnist_ls, full, epochs=2, **opts))
    part = tmp_path / "part"
    train(config(mnist_ls, part, epochs=1, **opts))
    train(config(mnist_ls, part, epochs=2, **opts), resume=True)
    full_steps, _ = read_log(full)
    part_steps, _ = read_log(part)
    assert [(r["epoch"], r["step"], r["loss"]) for r in part_steps] == [
        (r["epoch"], r["step"], r["loss"]) for r in full_steps]
    a = torch.load(part / "last.pt", weights_only=True)
    b = torch.load(full / "last.pt", weights_only=True)
    assert not state_dicts_equal(a["state_dict"], b["state_dict"]), "resumed weights differ"


def test_resume_restores_numpy_and_python_rng_streams(mnist_ls, tmp_path):
    """The ImageNet protocol's Mixup (numpy RNG) and RandomErasing (python ``random`` + torch), with
    layer-wise lr decay: interrupted and resumed equals uninterrupted."""
    opts = dict(model="vit_base", epochs=2, mixup=0.8, label_smoothing=0.1, random_erase=0.25, layer_decay=0.75,
                warmup_epochs=1, weight_decay=0.05)
    full = tmp_path / "full"
    train(config(mnist_ls, full, **opts))
    part = tmp_path / "part"
    with pytest.raises(_Stop):
        train(config(mnist_ls, part, **opts), progress=_stop_at(STEPS_PER_EPOCH + 1))
    train(config(mnist_ls, part, **opts), resume=True)
    full_steps, _ = read_log(full)
    part_steps, _ = read_log(part)
    resumed = {(r["epoch"], r["step"]): r["loss"] for r in part_steps}
    assert resumed == {(r["epoch"], r["step"]): r["loss"] for r in full_steps}
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in full_steps)
    a = torch.load(part / "last.pt", weights_only=True)
    b = torch.load(full / "last.pt", weights_only=True)
    assert not state_dicts_equal(a["state_dict"], b["state_dict"]), "resumed weights differ"


# --------------------------------------------------------------------------- user mistakes


def test_resume_without_last_checkpoint(mnist_ls, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        train(config(mnist_ls, tmp_path / "empty", epochs=1), resume=True)


def test_existing_run_needs_resume(mnist_ls, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="--resume"):
        train(config(mnist_ls, out, epochs=1))


def test_resume_with_other_options_is_refused(mnist_ls, dec_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(dec_run, out)
    with pytest.raises(ConfigError, match="batch_size"):
        train(config(mnist_ls, out, model="resnet_dec", epochs=2, batch_size=8, dec_backward="phantom"), resume=True)
    with pytest.raises(ConfigError, match="model"):
        train(config(mnist_ls, out, model="resnet_base", epochs=2), resume=True)


@pytest.mark.parametrize("split", ["train_split", "val_split"])
def test_unknown_split(mnist_ls, tmp_path, split):
    with pytest.raises(ConfigError, match="no split 'validation'"):
        train(config(mnist_ls, tmp_path / "run", epochs=1, **{split: "validation"}))


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("epochs", 0, "--epochs"), ("batch_size", 0, "--batch-size"), ("lr", 0.0, "--lr"),
    ("scheduler", "step", "--scheduler"), ("model", "resnet_xyz", "unknown model"),
    ("model", "timm:resnet10t", "plain pretrained classifier for `lsbench evaluate`"),
])
def test_bad_options(mnist_ls, tmp_path, field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        train(config(mnist_ls, tmp_path / "run", **{field: value}))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_incomplete_dataset(mnist_ls, tmp_path):
    data = tmp_path / "ds"
    shutil.copytree(mnist_ls, data)
    for p in data.iterdir():
        p.chmod(0o644)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["complete"] = False
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="incomplete"):
        train(config(data, tmp_path / "run", epochs=1))


def test_missing_dataset(tmp_path):
    with pytest.raises((ConfigError, DatasetError)):
        train(config(tmp_path / "nothing", tmp_path / "run", epochs=1))


# --------------------------------------------------------------------------- CLI


def test_cli_bad_model_is_one_error_line(cli, mnist_ls, tmp_path):
    result = cli("train", "--model", "resnet_xyz", "--data", mnist_ls, "--out", tmp_path / "run", "--size", "micro",
                 "-q")
    assert_user_error(result, "unknown model", "resnet_xyz")
    assert not (tmp_path / "run").exists()


def test_cli_existing_run_is_one_error_line(cli, mnist_ls, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    result = cli("train", "--model", "resnet_base", "--data", mnist_ls, "--out", out, "--size", "micro", "-q")
    assert_user_error(result, "--resume")


def test_cli_trains_a_dec_model(cli, mnist_ls, tmp_path):
    out = tmp_path / "run"
    result = cli("train", "--model", "resnet_dec", "--data", mnist_ls, "--out", out, "--size", "micro",
                 "--img-size", "32", "--epochs", "1", "--batch-size", "16", "--workers", "0", "-q")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    for name in ("best.pt", "last.pt", "log.jsonl", "config.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["model"] == "resnet_dec" and cfg["train"]["epochs"] == 1
    assert cfg["model"]["name"] == "resnet_dec" and cfg["model"]["num_classes"] == 10
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["model_config"]["dec_backward"] == "implicit"
    _, epochs = read_log(out)
    assert len(epochs) == 1 and "deq_iterations" in epochs[0]


@pytest.mark.parametrize(("model", "expected"), [
    ("resnet_dec", (0.25, 1.0, "implicit")), ("resnet_invl", (0.25, 1.0, "implicit")),
])
def test_unset_method_options_take_the_registered_defaults(mnist_ls, tmp_path, model, expected):
    """``None`` means "the method's default": the resolved run records the registry's values."""
    from lsbench.benchmark.train import resolve
    from lsbench.dataset import open_dataset

    info = open_dataset(mnist_ls)
    got = resolve(config(mnist_ls, tmp_path / "run", model=model), info)
    assert (got.aug_strength, got.loss_weight, got.dec_backward) == expected
    mine = resolve(config(mnist_ls, tmp_path / "run", model=model, aug_strength=0.1, dec_backward="phantom"), info)
    assert (mine.aug_strength, mine.dec_backward) == (0.1, "phantom")


def test_folders_are_recorded_normalised():
    """``ds/`` and ``ds`` are the same run's data (what --resume compares), as the CLI always recorded them."""
    cfg = TrainConfig(model="resnet_base", data="data/ds/", out="runs/x/")
    assert (cfg.data, cfg.out) == ("data/ds", "runs/x")


# --------------------------------------------------------------------------- preprocessing is recorded


def test_the_preprocessing_is_recorded_and_evaluation_feeds_it(mnist_ls, tmp_path):
    """A run records how it fed images (the backbone's mean/std: 0.5 for timm's ViT-Ti, no crop); evaluating
    the checkpoint feeds it the same way; a checkpoint without a record keeps the ImageNet statistics."""
    from lsbench.benchmark.configs import EvaluateConfig
    from lsbench.benchmark.evaluate import evaluate

    run = train(config(mnist_ls, tmp_path / "vit", model="vit_base", epochs=1))
    pre = checkpoint.read(run.best)["preprocess"]
    assert (pre["kind"], pre["size"], pre["mean"], pre["std"]) == ("squash", 32, [0.5] * 3, [0.5] * 3)
    assert json.loads((run.out / "config.json").read_text())["preprocess"] == pre
    result, _ = evaluate(EvaluateConfig(model="vit_base", data=mnist_ls, checkpoint=run.best, workers=0))
    assert result["preprocess"] == pre
    # Written before the record existed: the same weights, fed as they were then, and said so.
    old = torch.load(run.best, weights_only=True)
    del old["preprocess"]
    torch.save(old, tmp_path / "old.pt")
    said: list[str] = []
    legacy, _ = evaluate(EvaluateConfig(model="vit_base", data=mnist_ls, checkpoint=tmp_path / "old.pt", workers=0),
                         log=said.append)
    assert legacy["preprocess"]["mean"] == [0.485, 0.456, 0.406] and legacy["preprocess"]["kind"] == "squash"
    assert any("records no preprocessing" in line for line in said)
    assert legacy["metrics"]["accuracy"] is not None
    # A resumed run keeps its checkpoint's record.
    resumed = train(config(mnist_ls, tmp_path / "vit", model="vit_base", epochs=2), resume=True)
    assert checkpoint.read(resumed.last)["preprocess"] == pre
