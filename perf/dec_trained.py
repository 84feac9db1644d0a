"""DEC's cost with *trained* heads: a study's DEC checkpoints beside the same backbone trained as Aug.

Used by ``perf/dec_overhead.py --trained STUDY_DIR`` (a folder written by ``lsbench study run``, e.g.
``make demo``'s ``demo-out/study``).  For every arch with both an ``{arch}_aug`` and an
``{arch}_dec`` run (the first seed found), on a batch of the study's own test images:

- **forward**: eval mode, ``torch.inference_mode``, min over interleaved rounds after a warm-up;
  ``ratio = dec / aug``, ``dec_share = (dec - aug) / dec`` (the paper's A4 form), solver steps per
  adapted layer, and the canonicalizer's design (channels, resolution) read from the checkpoint;
- **training step**: each model's own registered loss (Aug's random scaling; DEC's task loss through
  the implicit backward), forward + backward + AdamW step, min over rounds, ``step_ratio = dec / aug``;
- **peak memory** of one training step (:func:`dec_overhead.memory_worker` in a fresh process);
- **Canon** beside them: the study's Canon run if it has one, else a fresh ``{arch}_canon`` (its cost
  does not depend on its weights), with ``train_step_ratio_canon_over_dec``.

Random-head figures (``dec_random`` in ``dec_overhead``) stay beside these as the second column:
a trained head is what a user runs, a random one only a stand-in.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lsbench.benchmark.data import loader
from lsbench.benchmark.preprocess import Preprocess
from lsbench.dataset import open_dataset
from lsbench.dec_models import checkpoint
from lsbench.dec_models.checkpoint import load_model
from lsbench.dec_models.latent import adapted_layers
from lsbench.dec_models.registry import create_model, get_method, parse_name


def find_runs(study_dir: Path) -> dict[str, dict[str, Path]]:
    """``{arch: {"aug": run folder, "dec": run folder, ...}}`` of finished runs, lowest seed first."""
    found: dict[str, dict[str, Path]] = {}
    for record in sorted(study_dir.glob("runs/*/*/run.json"), key=lambda p: p.parent.name):
        folder = record.parent
        if not (folder / "done.json").is_file() or not (folder / "last.pt").is_file():
            continue
        arch, method = parse_name(json.loads(record.read_text())["train"]["model"])
        found.setdefault(arch, {}).setdefault(method, folder)
    return {arch: runs for arch, runs in found.items() if "aug" in runs and "dec" in runs}


def _batch(run: Path, img_size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    record = json.loads((run / "run.json").read_text())
    data = Path(record["train"]["data"])  # as the study was given it: maybe relative to where it ran
    study = run.parents[2]  # STUDY/runs/{dataset}/{run}
    data = next((p for p in (data, study.parent / data, study / data) if p.is_dir()), data)
    dataset = open_dataset(data)
    recorded = checkpoint.read(run / "last.pt").get("preprocess")  # fed as the run was trained
    pre = Preprocess.from_dict(recorded).with_size(img_size) if recorded else None
    images, targets, _ = next(iter(loader(dataset, "test", size=img_size, batch_size=batch, train=False,
                                          preprocess=pre)))
    return images, targets


def _min_time(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _design(model) -> dict[str, Any]:
    cfg = model.config
    return {"dec_width": cfg.dec_width, "dec_channels": [cfg.dec_width, 2 * cfg.dec_width],
            "dec_resolution": cfg.dec_resolution, "dec_tol": cfg.dec_tol, "dec_backward": cfg.dec_backward}


def measure(arch: str, runs: dict[str, Path], *, batch: int, rounds: int, memory, breakdown=None) -> dict[str, Any]:
    """Forward, training-step and memory figures of ``arch``'s trained Aug and DEC, and of Canon."""
    models = {m: load_model(runs[m] / "last.pt")[0] for m in ("aug", "dec", "canon") if m in runs}
    img = models["dec"].config.img_size
    canon_note = "trained"
    if "canon" not in models:  # Canon's cost does not depend on its weights: a fresh one, saved for the memory run
        cfg = models["aug"].config
        models["canon"] = create_model(f"{arch}_canon", cfg.num_classes, task=cfg.task, size=cfg.size, img_size=img)
        runs = {**runs, "canon": Path(tempfile.mkdtemp(prefix="lsbench-canon-"))}
        checkpoint.save(runs["canon"] / "last.pt", models["canon"])
        canon_note = "fresh (untrained: its cost does not depend on its weights)"
    x, y = _batch(runs["dec"], img, batch)
    forward = {m: float("inf") for m in models}
    with torch.inference_mode():
        for model in models.values():
            model.eval()(x)
        for _ in range(rounds):  # interleaved: background load hits every model alike
            for m, model in models.items():
                forward[m] = min(forward[m], _min_time(lambda model=model: model(x), 1))
        models["dec"](x)
    steps = [layer.canonicalizer.last_stats.steps for layer in adapted_layers(models["dec"].backbone)]
    step_s = {}
    for m, model in models.items():
        model.train()
        loss_fn = get_method(model.config.method).loss
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        generator = torch.Generator().manual_seed(0)

        def step(model=model, loss_fn=loss_fn, optimizer=optimizer, generator=generator) -> None:
            loss, _ = loss_fn(model, x, y, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()  # warm-up
        step_s[m] = _min_time(step, max(2, rounds // 2))
    aug, dec = forward["aug"], forward["dec"]
    out: dict[str, Any] = {
        "runs": {m: str(p) for m, p in runs.items() if m in models}, "canon_weights": canon_note,
        "batch": batch, "img_size": img, "design": _design(models["dec"]),
        "forward_ms": {m: round(1e3 * t, 2) for m, t in forward.items()},
        "forward_ratio_dec_over_aug": round(dec / aug, 3),
        "dec_share": round((dec - aug) / dec, 4),
        "solver_steps_per_layer": steps,
        "train_step_ms": {m: round(1e3 * t, 1) for m, t in step_s.items()},
        "train_step_ratio_dec_over_aug": round(step_s["dec"] / step_s["aug"], 3),
    }
    out["forward_ratio_canon_over_aug"] = round(forward["canon"] / aug, 3)
    out["train_step_ratio_canon_over_dec"] = round(step_s["canon"] / step_s["dec"], 3)
    if breakdown is not None:  # where the trained DEC's forward time goes
        out["breakdown"] = breakdown(models["dec"], x)
    if memory is not None:
        spec = {"batch": batch, "img_size": img}
        out["train_step_peak_delta_mb"] = {
            m: memory({**spec, "checkpoint": str(runs[m] / "last.pt")}).get("step_peak_delta_mb") for m in models
        }
    return out
