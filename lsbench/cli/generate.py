"""``lsbench generate mnist|gso|imagenet``: one command per generator, options derived from its config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from ..generators.gso.config import GsoConfig
from ..generators.imagenet.config import ImagenetConfig
from ..generators.mnist.config import MnistConfig
from ..generators.runner import RunOptions
from .app import _log, console, generate_app, progress_bar, user_errors
from .derive import Override, options_from

OUT = typer.Option(..., "--out", "-o", help="Dataset folder to create (or resume).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar or notices.")


def run_options(config: type, **help_texts: str) -> Override:
    """:class:`RunOptions` with the generator's default shard size (and its own help texts)."""
    fields: dict[str, dict] = {"shard_size": {"default": config.DEFAULT_SHARD_SIZE}}
    for name, text in help_texts.items():
        fields.setdefault(name, {})["help"] = text
    return Override(RunOptions, fields)


def _report_build(result, quiet: bool) -> None:
    """The one-line summary every generator prints when it finishes."""
    if quiet:
        return
    state = (
        "complete" if result.complete
        else "this rank's shards done; run `lsbench merge-manifests` when all ranks finish"
    )
    console.print(
        f"{result.directory}: {result.samples:,} samples, {result.shards_written} shards written, "
        f"{result.shards_reused} reused ({state})"
    )


@generate_app.command("mnist")
@user_errors
@options_from(run=run_options(MnistConfig))
def generate_mnist(out: Path = OUT, cfg: MnistConfig = ..., run: RunOptions = ..., quiet: bool = QUIET) -> None:
    """Locally scaled MNIST (paper Sec. 5.2): K-digit numbers, each digit its own scale."""
    from ..generators.mnist import generate

    with progress_bar("mnist-ls", quiet) as update:
        result = generate(cfg, out, replace(run, progress=update, log=_log(quiet)))
    _report_build(result, quiet)


@generate_app.command("gso")
@user_errors
@options_from(run=run_options(
    GsoConfig, workers="Local worker processes, one Blender each (shards are split between them).",
    shard_size="Samples per shard (rounded down to whole groups); small, as renders take seconds each.",
))
def generate_gso(out: Path = OUT, cfg: GsoConfig = ..., run: RunOptions = ..., quiet: bool = QUIET) -> None:
    """Locally scaled Google Scanned Objects (paper Sec. 5.1): two objects per image on an HDRI, each
    at its own distance, rendered with Blender; segmentation masks from an object-index pass."""
    from ..generators import gso

    with progress_bar("gso-ls", quiet) as update:
        result = gso.generate(cfg, out, replace(run, progress=update, log=_log(quiet)))
    _report_build(result, quiet)


@generate_app.command("imagenet")
@user_errors
@options_from(
    run=run_options(ImagenetConfig, workers="Local worker processes (each loads the models once)."),
)
def generate_imagenet(out: Path = OUT, cfg: ImagenetConfig = ..., run: RunOptions = ..., quiet: bool = QUIET) -> None:
    """Locally scaled ImageNet (paper Sec. 5.3): detect, segment, inpaint, paste each object rescaled."""
    from ..generators.imagenet import pipeline

    with progress_bar("imagenet-ls", quiet) as update:
        result = pipeline.generate(cfg, out, replace(run, progress=update, log=_log(quiet)))
    _report_build(result, quiet)
    line = pipeline.rejection_summary_line(result.directory) if result.complete else None
    if line and not quiet:
        console.print(line)
