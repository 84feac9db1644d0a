"""The ``lsbench`` app: error handling, progress bars and the root command shared by every command.

User mistakes surface as one ``error: ...`` line on stderr and a non-zero exit code (1; 130
after Ctrl-C/SIGTERM; 2 for a bad option or argument), never a traceback.  That holds for every
kind of message (an outside probe found three that were not one line): usage errors are one line
instead of click's usage + boxed panel (:class:`LsbenchGroup`); an error whose text spans lines is
joined into one; and the Python warnings a command raised are held back (:func:`_hold_warnings`) —
shown, one line each, when it succeeds, dropped when it fails, since they are then the failing
library call's own noise (torch warns "pickle protocol 4" just before refusing a checkpoint).
``lsbench --verbose COMMAND`` shows them as Python prints them, and a failure's traceback and
chained causes (e.g. torch's whole ``weights_only`` explanation) before its ``error:`` line.
"""

from __future__ import annotations

import functools
import signal
import sys
import traceback
import warnings
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
from typer.core import TyperGroup

from .. import __version__
from ..errors import Interrupted, LsbenchError
from ..util import os_error_line

LIMIT = 2000  # characters of an error line: a longer (joined) text is cut, --verbose shows all of it
# click's base of the errors it shows the user (typer vendors click, so found through a public class)
CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class LsbenchGroup(TyperGroup):
    """The root command: a usage error (bad option value, unknown option or command, missing argument)
    is one ``error:`` line naming the command's ``--help`` (exit 2), not click's usage + boxed panel.

    Every invocation comes through :meth:`main` (the console script and ``CliRunner`` alike): it runs
    click's own ``main`` in non-standalone mode, so click hands the error over instead of printing it."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except CLICK_ERROR as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # the help is printed already (rich) or is the message
                text = e.format_message().strip()
                if text:
                    console.print(text, markup=False, highlight=False)
                sys.exit(e.exit_code)
            if _state["verbose"]:
                e.show()
            err_console.print(Text("error: ", style="bold red") + Text(_usage_line(e)))
            sys.exit(e.exit_code)
        except typer.Abort:
            err_console.print(Text("error: ", style="bold red") + Text("aborted"))
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _usage_line(error: Exception) -> str:
    """``Invalid value for '--digits': ...`` as one line, with where to look."""
    text = " ".join(error.format_message().split()).rstrip(".")
    if text[:1].isupper() and text[1:2].islower():
        text = text[0].lower() + text[1:]
    ctx = getattr(error, "ctx", None)
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        text += f" (see `{ctx.command_path} {ctx.help_option_names[0]}`)"
    return text


app = typer.Typer(
    cls=LsbenchGroup,
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


_state = {"verbose": False, "held": None}  # set per invocation by the root callback


def _fail(message: str, code: int = 1) -> None:
    text = " ".join(str(message).split())  # one line, whatever the library put in it
    if len(text) > LIMIT:
        text = text[: LIMIT - 1] + "…" + ("" if _state["verbose"] else " (lsbench --verbose shows all)")
    err_console.print(Text("error: ", style="bold red") + Text(text))
    raise typer.Exit(code)


def _one_line(error: BaseException) -> str:
    """The message of an lsbench error; one raised in a DataLoader worker arrives wrapped in the
    worker's traceback text, whose last line is the message itself."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def _failing(error: BaseException) -> None:
    """A command is failing with ``error``: drop the warnings it raised (see the module docstring),
    or with ``--verbose`` print them and the traceback with its causes first."""
    _state["held"] = None
    if _state["verbose"]:
        err_console.file.write("".join(traceback.format_exception(error)))
        err_console.file.flush()


def user_errors(fn):
    """Turn library exceptions for user mistakes (and the environment's: disk, permissions, the path's
    shape, GPU memory) into one line and an exit code; anything else escapes as a bug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Interrupted as e:
            _failing(e)
            _fail(str(e), 130)
        except KeyboardInterrupt as e:
            _failing(e)
            _fail("interrupted", 130)
        except LsbenchError as e:
            _failing(e)
            _fail(_one_line(e))
        except OSError as e:  # raised outside lsbench's writers (a mkdir, a read): the same line as theirs
            line = os_error_line(e)
            if line is None:
                raise
            _failing(e)
            _fail(line)
        except RuntimeError as e:
            torch = sys.modules.get("torch")  # only a command that imported torch can run out of GPU memory
            if torch is not None and isinstance(e, torch.cuda.OutOfMemoryError):
                _failing(e)
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


def _hold_warnings(ctx: typer.Context) -> None:
    """Hold the Python warnings of this invocation (one line each) until it ends: printed when the
    command succeeds, dropped by :func:`_failing` when it fails; the previous hook comes back after."""
    held: list[str] = []
    _state["held"] = held
    previous = warnings.showwarning

    def hold(message, category, filename, lineno, file=None, line=None):
        if _state["held"] is held:
            text = " ".join(str(message).split())
            held.append(f"{category.__name__}: {text[:LIMIT]}")

    def release() -> None:
        warnings.showwarning = previous
        pending, _state["held"] = _state["held"], None
        for text in pending or []:
            err_console.print(Text("warning: ", style="yellow") + Text(text))

    warnings.showwarning = hold
    ctx.call_on_close(release)


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    verbose: bool = typer.Option(False, "--verbose", help="On an error, show its traceback and full text (and "
                                 "Python's warnings as they come) before the one error line."),
) -> None:
    """lsbench: local-scale robustness for vision."""
    _state["verbose"] = verbose
    if not verbose:
        _hold_warnings(ctx)


def _sigterm(signum, frame):  # kill/SIGTERM behaves like Ctrl-C: finished shards are kept
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _sigterm)
    app()

