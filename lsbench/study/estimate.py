"""What a study will cost here, from one timed training step and one timed forward per model kind.

For each distinct (model, size, input size, batch, classes) of the plan the step is measured on
this machine: the model is built as its run builds it, one warm-up step, then one timed step of the
method's own loss (forward, backward, AdamW) on a batch of the run's shape, and one timed eval
forward.  A run's estimate is its remaining steps (epochs × steps per epoch, capped as the run caps
them) times the step, plus its per-epoch validation and its evaluations at the forward's rate.  The
batch content does not change the cost of these models, so the timing batch is random; no output of
it is used.  On SLURM the figure is this machine's, not the cluster's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .plan import DONE, Plan, Run


@dataclass(frozen=True)
class Timing:
    step_s: float  # one training step at the run's batch size
    forward_s: float  # one eval forward at the run's batch size


def _kind(run: Run) -> tuple:
    t = run.train
    return (t.model, t.size, t.batch_size, *t.model_options().values())


def time_step(run: Run, num_classes: int, task: str) -> Timing:
    """Measure one step and one forward of ``run``'s model (see the module docstring)."""
    import torch

    from ..dec_models.methods import get_method
    from ..dec_models.registry import create_model

    t = run.train
    model = create_model(t.model, num_classes, task=task, size=t.size, **t.model_options())
    loss_fn = get_method(model.config.method).loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(t.batch_size, 3, t.img_size, t.img_size, generator=generator)
    shape = (t.batch_size,) if task == "cls" else (t.batch_size, t.img_size, t.img_size)
    y = torch.randint(0, num_classes, shape, generator=generator)

    def step() -> float:
        start = time.perf_counter()
        loss, _ = loss_fn(model, x, y, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    model.train()
    step()  # warm-up: allocations, first-call dispatch
    step_s = step()
    model.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        model(x)
        forward_s = time.perf_counter() - start
    return Timing(step_s, forward_s)


def estimate(plan: Plan) -> float:
    """Fill each run's ``estimate_s`` (0 for done runs); returns the total in seconds."""
    timings: dict[tuple, Timing] = {}
    total = 0.0
    for run in plan.runs:
        if run.status == DONE:
            run.estimate_s = 0.0
            continue
        info = plan.datasets[run.dataset]
        kind = _kind(run)
        if kind not in timings:
            timings[kind] = time_step(run, info.num_classes, info.task)
        timing, t = timings[kind], run.train
        per_epoch = math.ceil(info.splits[t.train_split] / t.batch_size)
        if t.max_steps_per_epoch:
            per_epoch = min(per_epoch, t.max_steps_per_epoch)
        epochs = max(0, t.epochs - run.epochs_done)
        val = min(info.splits[t.val_split], t.val_limit or info.splits[t.val_split])
        forward_per_image = timing.forward_s / t.batch_size
        evals = sum(info.splits[s] for s in run.splits if not (run.results.get(s) and run.results[s].is_file()))
        run.estimate_s = epochs * (per_epoch * timing.step_s + val * forward_per_image) + evals * forward_per_image
        total += run.estimate_s
    return total
