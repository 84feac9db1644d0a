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
