"""Benchmark commands: ``models``, ``train``, ``evaluate``, ``leaderboard``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from ..benchmark.configs import EvaluateConfig, TrainConfig
from .app import _log, app, console, err_console, progress_bar, user_errors
from .derive import Override, options_from


@app.command()
@user_errors
def models(
    size: str = typer.Option("tiny", help="Backbone size: micro, tiny, small or base."),
    num_classes: int = typer.Option(1000, help="Classes of the classification head."),
    counts: bool = typer.Option(True, help="Build each model to count its parameters (--no-counts: names only)."),
) -> None:
    """List every {arch}_{method} model with its timm backbone and parameter count, and the other families."""
    from ..dec_models import registry

    families = [registry.get_family(prefix) for prefix in registry.list_families()]
    table = Table("model", "backbone (timm)", "method", "parameters",
                  caption="also " + "; ".join(f"{f.usage}, {f.summary}" for f in families) if families else None)
    for name in registry.list_models():
        arch, method = registry.parse_name(name)
        sizes = registry.get_arch(arch).sizes
        timm_name = sizes[size][0] if size in sizes else "?"
        params = ""
        if counts:
            params = f"{registry.count_parameters(registry.create_model(name, num_classes, size=size)) / 1e6:.2f} M"
        table.add_row(name, timm_name, method, params)
    console.print(table)


@app.command()
@user_errors
@options_from()
def train(
    cfg: TrainConfig = ...,
    resume: bool = typer.Option(False, help="Continue the run in --out from last.pt."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train or fine-tune a model on a dataset folder (paper defaults per dataset)."""
    from ..benchmark.train import train as run_training

    with progress_bar(f"train {cfg.model}", quiet, unit="step") as update:
        result = run_training(cfg, resume=resume, progress=update, log=_log(quiet))
    if not quiet:
        acc = result.metrics.get("val_accuracy")
        console.print(f"{result.out}: best {result.best}, last {result.last}"
                      + (f"; final {cfg.val_split} accuracy {acc:.4f}" if acc is not None else ""))


# The command line always writes a result (Python callers may write none); --model is declared below
# (repeatable), with EvaluateConfig.model's help.
EVALUATE_CLI = {"out": {"default": Path("results"), "help": "Folder for the result JSON."}, "model": {"cli": False}}
MODEL_HELP = next(f.metadata["help"] for f in dataclasses.fields(EvaluateConfig) if f.name == "model")


@app.command()
@user_errors
@options_from(given=Override(EvaluateConfig, EVALUATE_CLI, flags=True))
def evaluate(
    model: list[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Repeat it for several models."),
    models: Path | None = typer.Option(None, "--models", help="File with one model name per line (# comments); "
                                       "models whose result for this dataset and weights exists are skipped."),
    given: dict = ...,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Score models on a dataset split: Acc/mIoU, InvE, EquE, per-scale tables, throughput → a results JSON each."""
    from ..benchmark.evaluate import evaluate as run_evaluation
    from ..benchmark.zoo import evaluate_many, read_model_list
    from ..errors import ConfigError

    names = list(model or []) + (read_model_list(models) if models else [])
    if not names:
        raise ConfigError("pass --model NAME (repeatable) or --models FILE")
    if "data" not in given:
        raise ConfigError("pass --data DIR, the dataset folder (made by `lsbench generate`)")
    given.setdefault("out", EVALUATE_CLI["out"]["default"])
    cfg = EvaluateConfig(model=names[0], **given)
    split = cfg.split

    def run(c: EvaluateConfig):
        with progress_bar(f"evaluate {c.model}", quiet) as update:
            result, path = run_evaluation(c, progress=update, log=_log(quiet), warn=_warn)
        if not quiet and path is not None:
            m = result["metrics"]
            parts = [f"{k} {m[k]:.4f}" for k in ("accuracy", "miou", "inve", "eque") if m.get(k) is not None]
            e = result["efficiency"]
            console.print(f"{c.model} on {result['dataset']['name']}/{split}: " + ", ".join(parts)
                          + f"; {e['images_per_s']:.0f} img/s → {path}")
        return result, path

    if len(names) == 1 and not models:
        run(cfg)
        return
    outcomes = evaluate_many(cfg, names, log=_log(quiet), run=run)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped")}
        raise ConfigError(f"{len(failed)} of {len(outcomes)} models failed ({', '.join(o.model for o in failed)}); "
                          f"{counts['done']} evaluated, {counts['skipped']} skipped: see the lines above")


def _warn(message: str) -> None:
    """What --skip-corrupt leaves out is said even with -q: one line per corrupt shard or sample."""
    err_console.print(Text("warning: ", style="bold yellow") + Text(message))


@app.command()
@user_errors
def leaderboard(
    results: Path = typer.Argument(..., help="Folder of result JSONs (from `lsbench evaluate`)."),
    out: Path = typer.Option(Path("site"), "--out", "-o", help="Site folder to write."),
) -> None:
    """Build leaderboard.md, a static sortable index.html and plots per dataset, with the paper's rows."""
    from ..benchmark.leaderboard import build

    folders = build(results, out)
    for folder in folders:
        md = folder / "leaderboard.md"
        if md.is_file():
            console.print(md.read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"open {(Path(out) / 'index.html').resolve()}", markup=False)


