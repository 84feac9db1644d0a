"""``perf/gpu_check.py``: its CPU dry mode runs every section (so the GPU script cannot rot between GPU
runs), a section past its time box is killed and reported while the rest go on, and bad invocations
are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "gpu_check.py"
CORRECTNESS = ("warp", "dec", "ddp", "train", "oom")
THROUGHPUT = ("dec_overhead", "evaluate", "imagenet_learned", "render")


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_dry_mode_runs_every_section(tmp_path):
    out = tmp_path / "results" / "gpu_check_dry.json"
    proc = _run("--dry", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "dry" and list(report["sections"]) == [*CORRECTNESS, *THROUGHPUT]
    assert report["summary"]["ok"] == [*CORRECTNESS, *THROUGHPUT]
    for name in CORRECTNESS:
        checks = report["sections"][name]["checks"]
        assert checks and all(c["passed"] for c in checks), (name, checks)
    sec = report["sections"]
    assert sec["ddp"]["figures"]["metrics"]["num_samples"] == 40 and sec["ddp"]["figures"]["ranks"] == 2
    assert sec["oom"]["figures"]["simulated"] is True and sec["oom"]["figures"]["oom_at_chunk_sizes"] == [16, 8, 4]
    assert set(sec["train"]["figures"]["losses"]) == {f"{a}_dec" for a in
                                                       ("resnet", "vit", "deit", "swin", "beit", "dinov2")}
    # The perf scripts' own JSONs are kept beside the report, and their headline figures in it.
    for name in ("dec_overhead", "evaluate_throughput", "imagenet_learned", "render_gso_cpu"):
        assert (out.parent / f"gpu_check_{name}.json").is_file()
    assert sec["evaluate"]["figures"]["harness_images_per_s"] > 0
    assert json.loads((out.parent / "gpu_check_imagenet_learned.json").read_text())["tiny"] is True
    table = proc.stdout.splitlines()
    assert table[0].split()[:4] == ["section", "status", "s", "checks"]
    assert all(any(line.startswith(n + " ") and " ok " in line for line in table) for n in sec)


@pytest.mark.slow
def test_a_section_past_its_box_is_killed_and_the_rest_go_on(tmp_path):
    out = tmp_path / "check.json"
    proc = _run("--dry", "--sections", "warp", "oom", "--box", "warp=1", "--out", str(out), timeout=300)
    assert proc.returncode == 1
    report = json.loads(out.read_text())
    warp, oom = report["sections"]["warp"], report["sections"]["oom"]
    assert warp["status"] == "timeout" and warp["box_s"] == 1 and "killed after its 1 s box" in warp["error"]
    assert oom["status"] == "ok"
    assert report["summary"] == {"ok": ["oom"], "failed": [], "timeout": ["warp"]}


def test_bad_invocations_are_one_line(tmp_path):
    proc = _run("--dry", "--box", "nosuch=3", "--out", str(tmp_path / "x.json"), timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: --box 'nosuch=3': write SECTION=SECONDS")
    import torch

    if not torch.cuda.is_available():
        proc = _run("--out", str(tmp_path / "x.json"), timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.strip() == ("error: no CUDA device here; run on the GPU machine, or pass --dry for the "
                                       "CPU dry mode")
    assert not (tmp_path / "x.json").exists()
