"""Dataset commands: ``validate``, ``info``, ``preview``, ``card``, ``merge-manifests``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from .app import _fail, app, console, err_console, user_errors


@app.command()
@user_errors
def validate(
    directory: Path = typer.Argument(..., help="Dataset folder."),
    images: bool = typer.Option(True, help="Decode every image (--no-images: checksums, schema, counts only)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Check checksums, schema, counts and groups; list every problem (exit 1 if any)."""
    from ..dataset import validate as run_validation

    problems = run_validation(directory, check_images=images)
    if problems:
        for p in problems:
            err_console.print(Text("problem: ", style="bold red") + Text(p))
        _fail(f"{directory}: {len(problems)} problem(s) found")
    if not quiet:
        console.print(f"{directory}: valid")


@app.command()
@user_errors
def info(
    directory: Path = typer.Argument(..., help="Dataset folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Splits, counts, sizes and generator config of a dataset."""
    from ..dataset import summarize

    summary = summarize(directory)
    if as_json:
        console.print_json(json.dumps(summary))
        return
    console.print(
        f"[bold]{summary['name']}[/bold]  generator={summary['generator']}  lsbench {summary['lsbench_version']}  "
        f"created {summary['created']}  {'complete' if summary['complete'] else '[red]incomplete[/red]'}"
    )
    table = Table("split", "samples", "groups", "group size", "shards", "size")
    for split, s in sorted(summary["splits"].items()):
        table.add_row(split, f"{s['samples']:,}", f"{s['groups']:,}", str(s["group_size"]), s["shards"],
                      f"{s['bytes'] / 1e6:.1f} MB")
    console.print(table)
    console.print("config: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["config"].items())), highlight=False)
    console.print(f"manifest sha256: {summary['manifest_sha256']}")


@app.command()
@user_errors
def preview(
    directory: Path = typer.Argument(..., help="Dataset folder."),
    out: Path = typer.Option(Path("sheet.png"), "--out", "-o", help="PNG to write."),
    split: str | None = typer.Option(None, help="Split to show (default: test)."),
    n: int = typer.Option(16, "-n", help="Number of samples."),
) -> None:
    """Contact sheet of N samples with labels, scale factors and boxes drawn on."""
    from ..preview import contact_sheet

    console.print(f"wrote {contact_sheet(directory, out, split=split, n=n)}")


@app.command()
@user_errors
def card(directory: Path = typer.Argument(..., help="Complete dataset folder.")) -> None:
    """(Re)write the dataset's croissant.json (Croissant 1.1) and README.md datasheet from its manifest."""
    from ..card import CROISSANT, DATASHEET
    from ..generators.cards import write_dataset_card

    write_dataset_card(directory)
    console.print(f"wrote {directory / CROISSANT} and {directory / DATASHEET}")


@app.command("merge-manifests")
@user_errors
def merge_manifests(directory: Path = typer.Argument(..., help="Dataset folder written by several ranks.")) -> None:
    """Join the partial manifests of a multi-node (RANK/WORLD_SIZE or SLURM) run into manifest.json."""
    from ..generators.runner import merge_manifests as merge

    console.print(f"wrote {merge(directory)}")


