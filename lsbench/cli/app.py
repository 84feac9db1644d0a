"""The ``lsbench`` app: error handling, progress bars and the root command shared by every command.

User mistakes surface as one ``error: ...`` line on stderr and a non-zero exit code (1; 130
after Ctrl-C/SIGTERM), never a traceback.
"""

from __future__ import annotations

import functools
import signal
import sys
from contextlib import contextmanager

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
from rich.text import Text

from .. import __version__
from ..errors import Interrupted, LsbenchError

app = typer.Typer(
    help="lsbench: local-scale robustness for vision — datasets, models, metrics, leaderboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
generate_app = typer.Typer(help="Generate a locally scaled dataset as WebDataset shards.", no_args_is_help=True)
app.add_typer(generate_app, name="generate")
study_app = typer.Typer(help="Studies: datasets × archs × methods × seeds, each method fine-tuned from the same "
                        "starting run, with mean ± std over seeds.", no_args_is_help=True)

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
        try:
            return fn(*args, **kwargs)
        except Interrupted as e:
            _fail(str(e), 130)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except LsbenchError as e:
            _fail(_one_line(e))
        except (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            _fail(f"{e.strerror}: {e.filename}" if e.filename else str(e))
        except RuntimeError as e:
            torch = sys.modules.get("torch")  # only a command that imported torch can run out of GPU memory
            if torch is not None and isinstance(e, torch.cuda.OutOfMemoryError):
                _fail("the GPU ran out of memory; lower --batch-size (or --img-size)")
            raise

    return wrapper


class RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {task.fields.get('unit', 'it')}/s" if speed else "", style="progress.data.speed")


def progress_columns() -> list[ProgressColumn]:
    """The columns of every lsbench bar: description, bar, n/total, %, rate, elapsed, ETA."""
    return [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]


@contextmanager
def progress_bar(description: str, quiet: bool, unit: str = "img"):
    """Yields a ``(done, total)`` callback driving a rich bar (rate, ETA), or a no-op if quiet."""
    if quiet:
        yield None
        return
    bar = Progress(*progress_columns(), console=err_console, transient=False)
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

