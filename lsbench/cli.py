"""The ``lsbench`` command line: parses options, calls one library function, shows progress.

User mistakes surface as one ``error: ...`` line on stderr and a non-zero exit code (1; 130
after Ctrl-C/SIGTERM), never a traceback.
"""

from __future__ import annotations

import functools
import json
import signal
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import Interrupted, LsbenchError

app = typer.Typer(
    help="lsbench: local-scale robustness for vision — datasets, models, metrics, leaderboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
generate_app = typer.Typer(help="Generate a locally scaled dataset as WebDataset shards.", no_args_is_help=True)
app.add_typer(generate_app, name="generate")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # errors stay one line, whatever the terminal width


def _fail(message: str, code: int = 1) -> None:
    err_console.print(Text("error: ", style="bold red") + Text(message))
    raise typer.Exit(code)


def _one_line(error: BaseException) -> str:
    """The message of an lsbench error; one raised in a DataLoader worker arrives wrapped in the
    worker's traceback text, whose last line is the message itself."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def user_errors(fn):
    """Turn library exceptions for user mistakes (and the environment's: disk, permissions, GPU
    memory) into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        try:
            return fn(*args, **kwargs)
        except Interrupted as e:
            _fail(str(e), 130)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except LsbenchError as e:
            _fail(_one_line(e))
        except torch.cuda.OutOfMemoryError:
            _fail("the GPU ran out of memory; lower --batch-size (or --img-size)")
        except (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            _fail(f"{e.strerror}: {e.filename}" if e.filename else str(e))

    return wrapper


class RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {task.fields.get('unit', 'it')}/s" if speed else "", style="progress.data.speed")


@contextmanager
def progress_bar(description: str, quiet: bool, unit: str = "img"):
    """Yields a ``(done, total)`` callback driving a rich bar (rate, ETA), or a no-op if quiet."""
    if quiet:
        yield None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    bar = Progress(*columns, console=err_console, transient=False)
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:  # start on first report, so option errors print without an empty bar
            bar.start()
            task = bar.add_task(description, total=total, unit=unit)
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


def _log(quiet: bool):
    return None if quiet else (lambda msg: err_console.print(Text(msg, style="dim")))


def _scale_range(values: list[float]) -> tuple[float, float]:
    if len(values) != 2:
        raise typer.BadParameter("give two numbers: --scale-range MIN MAX")
    return values[0], values[1]


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
def generate_mnist(
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (or resume)."),
    mnist_dir: Path | None = typer.Option(
        None, help="Folder with the MNIST idx files (*-idx3-ubyte[.gz]); default: the embedded 5,000 real digits."
    ),
    digits: int = typer.Option(3, help="Digits per image, 1–4 (10**K classes; 1 gives a 10-class task)."),
    size: int | None = typer.Option(None, help="Image side in px (default 224; the tiles layout uses 70*K)."),
    scale_range: tuple[float, float] = typer.Option((0.4, 2.0), help="Per-digit scale factor range MIN MAX."),
    train: int = typer.Option(6000, help="Number of train images."),
    test: int = typer.Option(50000, help="Number of test images, counting every variant of every group."),
    variants: int = typer.Option(4, help="Scaled variants per test group, besides the reference."),
    brackets: bool = typer.Option(False, help="Also write the scale-bracket test splits [0.4,1], [1,2], [2,3]."),
    bracket_count: int = typer.Option(10000, help="Images per bracket split."),
    layout: str = typer.Option("reading", help="'reading' (digits left to right, wrapping) or 'tiles' (paper code)."),
    seed: int = typer.Option(0, help="Seed: the same command gives byte-identical shards."),
    workers: int = typer.Option(1, help="Local worker processes (shards are split between them)."),
    shard_size: int = typer.Option(1000, help="Samples per shard (rounded down to whole groups)."),
    overwrite: bool = typer.Option(False, help="Replace a different dataset already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or notices."),
) -> None:
    """Locally scaled MNIST (paper Sec. 5.2): K-digit numbers, each digit its own scale."""
    from .generators import mnist

    with progress_bar("mnist-ls", quiet) as update:
        result = mnist.generate(
            out, mnist_dir=mnist_dir, digits=digits, size=size, scale_range=_scale_range(list(scale_range)),
            train=train, test=test, variants=variants, brackets=brackets, bracket_count=bracket_count,
            layout=layout, seed=seed, workers=workers, shard_size=shard_size, overwrite=overwrite,
            progress=update, log=_log(quiet),
        )
    _report_build(result, quiet)


@generate_app.command("gso")
@user_errors
def generate_gso(
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (or resume)."),
    gso: Path | None = typer.Option(
        None, "--gso", help="Google Scanned Objects folder: one folder or .zip per object (meshes/model.obj, "
        "materials/textures/texture.png, metadata.pbtxt)."
    ),
    hdri: Path | None = typer.Option(None, "--hdri", help="Folder of .hdr/.exr environment maps (split train/test)."),
    demo: bool = typer.Option(
        False, "--demo", help="Use the embedded assets (pybullet_data meshes, Blender's studio-light HDRIs); "
        "also the default when neither --gso nor --hdri is given."
    ),
    objects: int | None = typer.Option(None, help="Objects (classes) drawn from the source [default: 100, or all]."),
    size: int = typer.Option(256, help="Image side in px."),
    train: int = typer.Option(6000, help="Number of train images."),
    test: int = typer.Option(2000, help="Number of test images, counting every variant of every group."),
    variants: int = typer.Option(4, help="Scaled variants per test group, besides the reference."),
    scale_range: tuple[float, float] = typer.Option((0.5, 2.0), help="Per-object apparent scale range MIN MAX."),
    engine: str = typer.Option("cycles", help="Render engine: cycles or eevee (masks always come from Cycles)."),
    samples: int = typer.Option(32, help="Samples per pixel."),
    denoise: bool = typer.Option(True, help="Denoise with OpenImageDenoise (Cycles)."),
    device: str = typer.Option("cpu", help="Cycles device: cpu, cuda or optix."),
    seed: int = typer.Option(0, help="Seed: the same command gives the same dataset whatever --workers."),
    workers: int = typer.Option(1, help="Local worker processes, one Blender each (shards are split between them)."),
    shard_size: int = typer.Option(
        100, help="Samples per shard (rounded down to whole groups); small, as renders take seconds each."
    ),
    overwrite: bool = typer.Option(False, help="Replace a different dataset already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or notices."),
) -> None:
    """Locally scaled Google Scanned Objects (paper Sec. 5.1): two objects per image on an HDRI, each
    at its own distance, rendered with Blender; segmentation masks from an object-index pass."""
    from .errors import ConfigError
    from .generators import gso as gso_generator

    if demo and (gso is not None or hdri is not None):
        raise ConfigError("--demo uses the embedded assets; drop it to use --gso/--hdri")
    with progress_bar("gso-ls", quiet) as update:
        result = gso_generator.generate(
            out, gso_dir=gso, hdri_dir=hdri, objects=objects, size=size, train=train, test=test, variants=variants,
            scale_range=_scale_range(list(scale_range)), engine=engine, samples=samples, denoise=denoise,
            device=device, seed=seed, workers=workers, shard_size=shard_size, overwrite=overwrite,
            progress=update, log=_log(quiet),
        )
    _report_build(result, quiet)


@generate_app.command("imagenet")
@user_errors
def generate_imagenet(
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (or resume)."),
    src: Path | None = typer.Option(None, help="ImageNet root (train/<wnid>/, val/) or any ImageFolder."),
    demo: bool = typer.Option(False, help="Use the real photos bundled with scikit-image/matplotlib (offline)."),
    boxes: Path | None = typer.Option(None, help="Folder of ILSVRC XML box annotations (default: found in --src)."),
    train: int = typer.Option(10000, help="Number of train images (one random scale each)."),
    test: int = typer.Option(50000, help="Number of test images: groups of every --scales value (7 per photo)."),
    scales: str = typer.Option("0.7,0.8,0.9,1.0,1.1,1.2,1.3", help="Test scale factors (must include 1.0)."),
    scale_range: tuple[float, float] = typer.Option((0.7, 1.3), help="Train scale factor range MIN MAX."),
    detector: str = typer.Option("gdino", help="gdino (GroundingDINO), annotation (dataset boxes) or prior."),
    segmenter: str = typer.Option("sam", help="sam (Segment Anything) or grabcut (OpenCV)."),
    inpainter: str = typer.Option("lama", help="lama (big-lama.pt TorchScript) or opencv (Telea)."),
    offline: bool = typer.Option(
        False, help="Classical backends for every stage not set explicitly: annotation boxes with --demo, else "
        "the box prior; grabcut; opencv."
    ),
    gdino_checkpoint: str | None = typer.Option(None, help="Local GroundingDINO checkpoint (HF-format folder)."),
    gdino_config: str | None = typer.Option(None, help="Not used (lsbench loads transformers-format folders)."),
    text_encoder: str | None = typer.Option(None, help="Local bert-base-uncased folder for GroundingDINO."),
    sam_checkpoint: str | None = typer.Option(None, help="Local SAM checkpoint (e.g. sam_vit_h_4b8939.pth)."),
    sam_type: str = typer.Option("vit_h", help="SAM architecture: vit_h, vit_l or vit_b."),
    lama_checkpoint: str | None = typer.Option(None, help="Local big-lama.pt (TorchScript)."),
    box_threshold: float = typer.Option(0.35, help="GroundingDINO box threshold."),
    text_threshold: float = typer.Option(0.25, help="GroundingDINO text threshold."),
    min_mask: float = typer.Option(0.01, help="Reject masks smaller than this fraction of the photo."),
    max_mask: float = typer.Option(0.7, help="Reject masks larger than this fraction of the photo."),
    min_in_box: float = typer.Option(0.8, help="Reject masks with less than this fraction inside the box."),
    dilate: int = typer.Option(15, help="Inpaint the mask dilated by this many px (covers the object's edge)."),
    feather: float = typer.Option(1.0, help="Gaussian feather of the pasted object's alpha, in px."),
    anchor: str = typer.Option("centre", help="Scale objects about their box 'centre' or 'bottom' centre."),
    max_side: int = typer.Option(512, help="Downscale larger photos to this longest side first (px)."),
    image_format: str = typer.Option("jpg", "--format", help="Sample image format: jpg (quality 95) or png."),
    max_attempts: int = typer.Option(20, help="Give up after this many rejected photos in a row for one group."),
    device: str = typer.Option("cpu", help="Device for the learned backends (cpu, cuda, cuda:1)."),
    batch_size: int = typer.Option(8, help="Photos per batch through the stages (halved on GPU out-of-memory)."),
    fp16: bool = typer.Option(True, help="Half precision on CUDA where safe."),
    cache_dir: Path | None = typer.Option(None, help="Stage cache (default: OUT/cache); share it between runs."),
    seed: int = typer.Option(0, help="Seed: the same command and sources give the same dataset."),
    workers: int = typer.Option(1, help="Local worker processes (each loads the models once)."),
    shard_size: int = typer.Option(1000, help="Samples per shard (rounded down to whole groups)."),
    overwrite: bool = typer.Option(False, help="Replace a different dataset already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or notices."),
) -> None:
    """Locally scaled ImageNet (paper Sec. 5.3): detect, segment, inpaint, paste each object rescaled."""
    from .generators.imagenet import pipeline

    try:
        scale_list = tuple(float(v) for v in scales.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"--scales takes comma-separated numbers, got {scales!r}") from None
    if offline:
        detector = ("annotation" if demo else "prior") if detector == "gdino" else detector
        segmenter = "grabcut" if segmenter == "sam" else segmenter
        inpainter = "opencv" if inpainter == "lama" else inpainter
    with progress_bar("imagenet-ls", quiet) as update:
        result = pipeline.generate(
            out, src=src, demo=demo, boxes=boxes, train=train, test=test, scales=scale_list,
            scale_range=_scale_range(list(scale_range)), cache_dir=cache_dir, workers=workers, shard_size=shard_size,
            overwrite=overwrite, progress=update, log=_log(quiet), detector=detector, segmenter=segmenter,
            inpainter=inpainter, gdino_checkpoint=gdino_checkpoint, gdino_config=gdino_config,
            text_encoder=text_encoder, sam_checkpoint=sam_checkpoint, sam_type=sam_type,
            lama_checkpoint=lama_checkpoint, box_threshold=box_threshold, text_threshold=text_threshold,
            min_mask=min_mask, max_mask=max_mask, min_in_box=min_in_box, dilate=dilate, feather=feather,
            anchor=anchor, max_side=max_side, image_format=image_format, max_attempts=max_attempts,
            device=device, batch_size=batch_size, fp16=fp16, seed=seed,
        )
    _report_build(result, quiet)
    line = pipeline.rejection_summary_line(result.directory) if result.complete else None
    if line and not quiet:
        console.print(line)


@app.command()
@user_errors
def validate(
    directory: Path = typer.Argument(..., help="Dataset folder."),
    images: bool = typer.Option(True, help="Decode every image (--no-images: checksums, schema, counts only)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Check checksums, schema, counts and groups; list every problem (exit 1 if any)."""
    from .shards import validate as run_validation

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
    from .shards import summarize

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
    from .preview import contact_sheet

    console.print(f"wrote {contact_sheet(directory, out, split=split, n=n)}")


@app.command("merge-manifests")
@user_errors
def merge_manifests(directory: Path = typer.Argument(..., help="Dataset folder written by several ranks.")) -> None:
    """Join the partial manifests of a multi-node (RANK/WORLD_SIZE or SLURM) run into manifest.json."""
    from .generators.runner import merge_manifests as merge

    console.print(f"wrote {merge(directory)}")


@app.command()
@user_errors
def models(
    size: str = typer.Option("tiny", help="Backbone size: micro, tiny, small or base."),
    num_classes: int = typer.Option(1000, help="Classes of the classification head."),
    counts: bool = typer.Option(True, help="Build each model to count its parameters (--no-counts: names only)."),
) -> None:
    """List every {arch}_{method} model with its timm backbone and parameter count."""
    from .dec_models import registry

    table = Table("model", "backbone (timm)", "method", "parameters")
    for name in registry.model_names():
        arch, method = registry.parse_name(name)
        timm_name = registry.BACKBONES[arch][size][0] if size in registry.SIZES else "?"
        params = ""
        if counts:
            params = f"{registry.count_parameters(registry.create_model(name, num_classes, size=size)) / 1e6:.2f} M"
        table.add_row(name, timm_name, method, params)
    console.print(table)


@app.command()
@user_errors
def train(
    model: str = typer.Option(..., "--model", "-m", help="{arch}_{method}, e.g. swin_dec (see `lsbench models`)."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder (made by `lsbench generate`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: last.pt, best.pt, log.jsonl, config.json."),
    size: str = typer.Option("tiny", help="Backbone size: micro, tiny, small, base."),
    pretrained: str | None = typer.Option(None, help="Checkpoint file, 'timm' (local cache) or 'none'."),
    epochs: int | None = typer.Option(None, help="Default: the paper's for this dataset."),
    batch_size: int | None = typer.Option(None),
    lr: float | None = typer.Option(None),
    weight_decay: float | None = typer.Option(None),
    warmup_epochs: float | None = typer.Option(None),
    scheduler: str | None = typer.Option(None, help="cosine or constant."),
    label_smoothing: float | None = typer.Option(None),
    mixup: float | None = typer.Option(None),
    random_erase: float | None = typer.Option(None),
    layer_decay: float | None = typer.Option(None),
    img_size: int | None = typer.Option(None, help="Model input size (images are resized)."),
    max_steps_per_epoch: int | None = typer.Option(None, help="Cap steps per epoch (quick runs)."),
    val_limit: int | None = typer.Option(2000, help="Validation samples per epoch."),
    train_split: str = typer.Option("train"),
    val_split: str = typer.Option("test"),
    grid: int = typer.Option(4, help="Monotone-scaling grid cells per axis."),
    latent_mode: str = typer.Option("equivariant", help="equivariant or invariant adapted layers."),
    dec_backward: str = typer.Option("implicit", help="DEC backward: implicit or phantom (the paper code's)."),
    aug_strength: float = typer.Option(0.25, help="Strength of Ω for aug/invl/augl."),
    workers: int = typer.Option(2, help="DataLoader workers."),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, help="Continue the run in --out from last.pt."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train or fine-tune a model on a dataset folder (paper defaults per dataset)."""
    from .benchmark.train import TrainConfig
    from .benchmark.train import train as run_training

    cfg = TrainConfig(
        model=model, data=str(data), out=str(out), size=size, pretrained=pretrained, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, scheduler=scheduler,
        label_smoothing=label_smoothing, mixup=mixup, random_erase=random_erase, layer_decay=layer_decay,
        img_size=img_size, max_steps_per_epoch=max_steps_per_epoch, val_limit=val_limit, train_split=train_split,
        val_split=val_split, grid=grid, latent_mode=latent_mode, dec_backward=dec_backward,
        aug_strength=aug_strength, workers=workers, seed=seed,
    )
    with progress_bar(f"train {model}", quiet, unit="step") as update:
        result = run_training(cfg, resume=resume, progress=update, log=_log(quiet))
    if not quiet:
        acc = result.metrics.get("val_accuracy")
        console.print(f"{result.out}: best {result.best}, last {result.last}"
                      + (f"; final {val_split} accuracy {acc:.4f}" if acc is not None else ""))


@app.command()
@user_errors
def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="{arch}_{method} (with --checkpoint) or timm:NAME."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="best.pt/last.pt from `lsbench train`."),
    split: str = typer.Option("test", help="Split to evaluate."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Folder for the result JSON."),
    batch_size: int = typer.Option(64),
    limit: int | None = typer.Option(None, help="Evaluate only the first N samples (quick looks)."),
    workers: int | None = typer.Option(None, help="DataLoader workers (default: 0 on CPU, up to 8 with CUDA)."),
    img_size: int | None = typer.Option(None, help="Input size (default: the model's)."),
    eque_draws: int = typer.Option(4, help="Scalings Φ~Ω per image for EquE (segmentation)."),
    skip_corrupt: bool = typer.Option(False, help="Skip corrupt shards (named in the output) instead of stopping."),
    amp: bool = typer.Option(True, help="Mixed precision on CUDA (--no-amp: full float32)."),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Score a model on a dataset split: Acc/mIoU, InvE, EquE, per-scale tables, throughput → results JSON."""
    from .benchmark.evaluate import evaluate as run_evaluation

    with progress_bar(f"evaluate {model}", quiet) as update:
        result, path = run_evaluation(
            model, data, checkpoint=checkpoint, split=split, out=out, batch_size=batch_size, limit=limit,
            workers=workers, img_size=img_size, eque_draws=eque_draws, skip_corrupt=skip_corrupt, amp=amp, seed=seed,
            progress=update, log=_log(quiet),
        )
    if not quiet and path is not None:
        m = result["metrics"]
        parts = [f"{k} {m[k]:.4f}" for k in ("accuracy", "miou", "inve", "eque") if m.get(k) is not None]
        e = result["efficiency"]
        console.print(f"{model} on {result['dataset']['name']}/{split}: " + ", ".join(parts)
                      + f"; {e['images_per_s']:.0f} img/s → {path}")


@app.command()
@user_errors
def leaderboard(
    results: Path = typer.Argument(..., help="Folder of result JSONs (from `lsbench evaluate`)."),
    out: Path = typer.Option(Path("site"), "--out", "-o", help="Site folder to write."),
) -> None:
    """Build leaderboard.md, a static sortable index.html and plots per dataset, with the paper's rows."""
    from .benchmark.leaderboard import build

    folders = build(results, out)
    for folder in folders:
        md = folder / "leaderboard.md"
        if md.is_file():
            console.print(md.read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"open {(Path(out) / 'index.html').resolve()}", markup=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"lsbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """lsbench: local-scale robustness for vision."""


def _sigterm(signum, frame):  # kill/SIGTERM behaves like Ctrl-C: finished shards are kept
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _sigterm)
    app()


if __name__ == "__main__":
    main()
