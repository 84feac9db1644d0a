"""`lsbench evaluate`: results with provenance, bad input, exact distributed evaluation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import generate_mnist
from typer.testing import CliRunner

from lsbench.benchmark.configs import EvaluateConfig
from lsbench.benchmark.evaluate import evaluate
from lsbench.benchmark.results import validate_result
from lsbench.cli import app
from lsbench.dataset import manifest_sha256, open_dataset
from lsbench.dec_models import checkpoint
from lsbench.dec_models.registry import create_model
from lsbench.util import sha256_file

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "mnist-ls"
    generate_mnist(out, digits=1, size=32, scale_range=(0.6, 1.1), train=16, test=60, variants=2, shard_size=15)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet_dec", 10, size="micro", img_size=32)
    return checkpoint.save(tmp_path_factory.mktemp("ckpt") / "resnet_dec.pt", model)


def assert_same_metrics(a: dict, b: dict) -> None:
    for key in ("num_samples", "num_groups", "accuracy", "inve", "inve_code", "accuracy_std_across_scales"):
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    for x, y in zip(a["per_scale"], b["per_scale"], strict=True):
        assert x["label"] == y["label"] and x["count"] == y["count"]
        for key in ("accuracy", "p_correct"):
            assert (x[key] is None and y[key] is None) or x[key] == pytest.approx(y[key], rel=1e-6)


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_result_has_provenance_and_validates(data, ckpt, tmp_path):
    result, path = evaluate(EvaluateConfig("resnet_dec", data, checkpoint=ckpt, out=tmp_path, batch_size=8, workers=0))
    assert path is not None and json.loads(path.read_text()) == result
    validate_result(result)
    assert result["model"]["checkpoint_sha256"] == sha256_file(ckpt)
    assert result["dataset"]["manifest_sha256"] == manifest_sha256(data)
    assert result["dataset"]["num_samples"] == 60 and result["metrics"]["num_samples"] == 60
    assert result["metrics"]["num_groups"] == 20
    assert 0 <= result["metrics"]["accuracy"] <= 1 and result["metrics"]["inve"] is not None
    assert result["metrics"]["eque"] is None  # classification: no probability maps
    assert sum(b["count"] for b in result["metrics"]["per_scale"]) == 60
    assert result["efficiency"]["images_per_s"] > 0 and result["efficiency"]["deq_iterations"] >= 1
    assert result["environment"]["versions"]["torch"] == torch.__version__


def test_worker_count_does_not_change_metrics(data, ckpt):
    a, _ = evaluate(EvaluateConfig("resnet_dec", data, checkpoint=ckpt, batch_size=7, workers=0))
    b, _ = evaluate(EvaluateConfig("resnet_dec", data, checkpoint=ckpt, batch_size=7, workers=2))
    assert_same_metrics(a["metrics"], b["metrics"])


def test_limit_evaluates_a_prefix(data, ckpt):
    result, _ = evaluate(EvaluateConfig("resnet_dec", data, checkpoint=ckpt, batch_size=8, workers=0, limit=16))
    assert result["metrics"]["num_samples"] == 16


def test_bad_input_is_one_line(data, ckpt, tmp_path):
    cli = ["evaluate", "--data", str(data), "--out", str(tmp_path), "--workers", "0"]
    assert "did you mean resnet_dec" in one_error_line(runner.invoke(app, [*cli, "--model", "resnet_decc",
                                                                         "--checkpoint", str(ckpt)]))
    assert "holds a resnet_dec model" in one_error_line(runner.invoke(app, [*cli, "--model", "resnet_base",
                                                                           "--checkpoint", str(ckpt)]))
    assert "no split 'val'" in one_error_line(runner.invoke(app, [*cli, "--model", "resnet_dec", "--checkpoint",
                                                                 str(ckpt), "--split", "val"]))
    assert "--checkpoint" in one_error_line(runner.invoke(app, [*cli, "--model", "resnet_dec"]))
    missing = ["evaluate", "--model", "resnet_dec", "--checkpoint", str(ckpt), "--data", str(tmp_path / "nope")]
    assert "does not exist" in one_error_line(runner.invoke(app, missing))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("hi")
    assert "not an lsbench dataset" in one_error_line(
        runner.invoke(app, ["evaluate", "--model", "resnet_dec", "--checkpoint", str(ckpt), "--data", str(foreign)])
    )


def test_corrupt_shard_is_named_and_skippable(data, ckpt, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in data.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    victim = broken / "test-000001.tar"
    raw = bytearray(victim.read_bytes())
    raw[700] ^= 0xFF
    victim.write_bytes(bytes(raw))
    cli = ["evaluate", "--model", "resnet_dec", "--checkpoint", str(ckpt), "--data", str(broken),
           "--out", str(tmp_path / "res"), "--workers", "0", "-q"]
    assert "test-000001.tar" in one_error_line(runner.invoke(app, cli))
    ok = runner.invoke(app, [*cli, "--skip-corrupt"])
    assert ok.exit_code == 0, ok.output
    (res,) = (tmp_path / "res").glob("*.json")
    assert json.loads(res.read_text())["metrics"]["num_samples"] == 45  # 60 minus one 15-sample shard


def test_timm_model_from_a_local_checkpoint(data, tmp_path):
    import timm

    net = timm.create_model("resnet10t", num_classes=10)
    path = tmp_path / "r10t.pth"
    torch.save(net.state_dict(), path)
    result, _ = evaluate(EvaluateConfig("timm:resnet10t", data, checkpoint=path, img_size=32, batch_size=16, workers=0))
    assert result["model"]["name"] == "timm:resnet10t" and result["metrics"]["num_samples"] == 60
    with pytest.raises(Exception, match="did you mean"):
        evaluate(EvaluateConfig("timm:resnet10tt", data, checkpoint=path))


@pytest.mark.slow
def test_two_process_torchrun_equals_single_process(data, ckpt, tmp_path):
    single, _ = evaluate(EvaluateConfig("resnet_dec", data, checkpoint=ckpt, batch_size=8, workers=0))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "lsbench.cli", "evaluate", "--model", "resnet_dec", "--checkpoint", str(ckpt), "--data", str(data),
           "--out", str(out), "--batch-size", "8", "--workers", "0", "-q"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("*.json")
    ddp = json.loads(path.read_text())
    assert ddp["environment"]["world_size"] == 2
    assert_same_metrics(ddp["metrics"], single["metrics"])


def test_errors_raised_in_loader_workers_reach_the_user_as_one_line(data):
    from lsbench.benchmark.data import loader
    from lsbench.cli.app import _one_line
    from lsbench.errors import DatasetError

    with pytest.raises(DatasetError) as caught:  # a classification set read as segmentation
        next(iter(loader(open_dataset(data), "test", size=32, task="seg", batch_size=4, train=False, workers=1)))
    assert "Original Traceback" in str(caught.value)  # how torch wraps a worker's exception
    line = _one_line(caught.value)
    assert "\n" not in line and "has no mask.png" in line and not line.startswith("lsbench")


def test_limit_is_exact_and_validated(data, ckpt):
    result, _ = evaluate(EvaluateConfig("resnet_dec", data, checkpoint=ckpt, batch_size=8, workers=0, limit=10))
    assert result["metrics"]["num_samples"] == 10 and result["dataset"]["num_samples"] == 10
    with pytest.raises(Exception, match="--limit must be at least 1"):
        evaluate(EvaluateConfig("resnet_dec", data, checkpoint=ckpt, limit=0))
