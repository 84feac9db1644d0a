"""Commands that run no model do not import torch (it costs seconds at every start): ``--help``, ``info``,
``validate``, ``preview``, ``generate mnist``, ``leaderboard`` — checked in ``sys.modules`` of a fresh
process after the command ran (``perf/cli_startup.py`` measures the times)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import generate_tiny

PROBE = """
import sys
from lsbench.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("HEAVY=" + ",".join(m for m in ("torch", "timm", "torchvision") if m in sys.modules), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny dataset and a results folder with one real result (made here, in a process that may import torch)."""
    from lsbench.benchmark.configs import EvaluateConfig
    from lsbench.benchmark.evaluate import evaluate
    from lsbench.dec_models import checkpoint
    from lsbench.dec_models.registry import create_model

    root = tmp_path_factory.mktemp("startup")
    generate_tiny(root / "ds")
    ckpt = checkpoint.save(root / "m.pt", create_model("resnet_base", 1000, size="micro", img_size=32))
    evaluate(EvaluateConfig(model="resnet_base", data=root / "ds", checkpoint=ckpt, out=root / "results",
                            workers=0, limit=10))
    return root


@pytest.mark.parametrize("args", [
    ["--help"], ["info", "{ds}"], ["validate", "{ds}"], ["preview", "{ds}", "--out", "{root}/p.png", "-n", "4"],
    ["generate", "mnist", "--out", "{root}/six", "--train", "1", "--test", "5", "-q"],
    ["leaderboard", "{root}/results", "--out", "{root}/site"], ["study", "--help"], ["evaluate", "--help"],
])
def test_commands_without_a_model_do_not_import_torch(folders, args):
    argv = [a.format(ds=folders / "ds", root=folders) for a in args]
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=300)
    heavy = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert proc.returncode == 0, (argv, proc.stderr[-2000:])
    assert heavy == ["HEAVY="], (argv, proc.stderr[-2000:])
    if args[0] == "leaderboard":  # it did build the site, from a real result
        assert "resnet_base" in (folders / "site" / "index.html").read_text()
        assert json.loads(next((folders / "results").glob("*.json")).read_text())["model"]["name"] == "resnet_base"


MAIN_PROBE = """
import sys
sys.argv = ["lsbench", *sys.argv[1:]]
from lsbench.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
finally:
    loaded = [m for m in ("numpy", "lsbench.generators.runner", "lsbench.benchmark.configs", "lsbench.study.config",
                          "lsbench.cli.generate", "lsbench.cli.bench", "lsbench.cli.study") if m in sys.modules]
    print("LOADED=" + ",".join(loaded), file=sys.stderr)
"""


def test_info_registers_only_its_own_commands(folders):
    """The console script loads the command modules of the command given: ``lsbench info`` imports no
    generator, trainer or study config, nor numpy (what its start-up time is made of)."""
    proc = subprocess.run([sys.executable, "-c", MAIN_PROBE, "info", str(folders / "ds")],
                          capture_output=True, text=True, timeout=300)
    assert "mnist-ls-3digit" in proc.stdout, proc.stderr[-2000:]
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("LOADED=")] == ["LOADED="], proc.stderr[-2000:]
    full = subprocess.run([sys.executable, "-c", MAIN_PROBE, "--help"], capture_output=True, text=True, timeout=300)
    assert all(f" {name} " in full.stdout for name in ("generate", "info", "train", "study", "card")), full.stdout
