"""Training under torchrun: two CPU processes (gloo) split the shards and sum validation counts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import generate_mnist

pytestmark = pytest.mark.slow


def test_two_process_torchrun_training(tmp_path):
    data = tmp_path / "data"
    # 3 train shards for 2 ranks: one rank gets more batches, which DDP's Join must absorb.
    generate_mnist(data, digits=1, size=32, scale_range=(0.6, 1.1), train=96, test=40, variants=1, shard_size=32)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
        "-m", "lsbench.cli", "train", "--model", "resnet_dec", "--data", str(data), "--out", str(out),
        "--size", "micro", "--img-size", "32", "--epochs", "2", "--batch-size", "16", "--workers", "0",
        "--lr", "1e-3", "-q",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = [json.loads(line) for line in Path(out / "log.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if e.get("event") == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    # Each rank validates its own shards; the counts are summed: the whole test split once.
    assert all(e["val_count"] == 40 for e in epochs)
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()


def test_two_process_torchrun_evaluation_equals_one_process(tmp_path):
    """Ranks holding different numbers of samples (3 shards on 2 ranks) each evaluate all of theirs."""
    data = tmp_path / "data"
    generate_mnist(data, digits=1, size=32, scale_range=(0.6, 1.1), train=8, test=40, variants=3, shard_size=16)
    torch = pytest.importorskip("torch")
    from lsbench.dec_models import checkpoint
    from lsbench.dec_models.registry import create_model

    torch.manual_seed(0)
    ckpt = checkpoint.save(tmp_path / "resnet_base.pt", create_model("resnet_base", 10, size="micro", img_size=32))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    results = {}
    torchrun = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29519"]
    for name, launcher in (("one", []), ("two", torchrun)):
        cmd = [sys.executable, *launcher, "-m", "lsbench.cli", "evaluate", "--model", "resnet_base", "--checkpoint",
               str(ckpt), "--data", str(data), "--out", str(tmp_path / name), "--batch-size", "8", "--workers", "0",
               "-q"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (result,) = (tmp_path / name).glob("*.json")
        results[name] = json.loads(result.read_text())
    one, two = results["one"], results["two"]
    assert two["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1
    assert one["dataset"]["num_samples"] == two["dataset"]["num_samples"] == 40
    for key in ("accuracy", "inve", "inve_code", "num_groups"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-6, abs=1e-9)
