"""The ``lsbench`` command line: parses options, calls one library function, shows progress.

User mistakes surface as one ``error: ...`` line on stderr and a non-zero exit code (1; 130
after Ctrl-C/SIGTERM), never a traceback.  Options are derived from the config objects the
Python API takes (:mod:`.derive`); each module here registers one group of commands on
:data:`app`, in the order ``lsbench --help`` lists them.

**Start-up.**  Registering a command imports the config classes its options derive from (and
what they import); ``lsbench info DIR`` needs none of the generators', trainers' or studies'.
:func:`main` registers only the module of the command named on the command line (all of them
for ``--help``, no command or an unknown one); ``lsbench.cli.app`` from Python is always complete.
"""

from __future__ import annotations

import importlib
import sys

from . import app as _app_module

del app  # noqa: F821 - the submodule's name; ``app`` here is the Typer app (see __getattr__)

# isort: off
MODULES = ("generate", "data", "bench", "study")  # registration order is the help's order
# isort: on
COMMANDS = {
    "generate": "generate", "validate": "data", "info": "data", "preview": "data", "card": "data",
    "merge-manifests": "data", "models": "bench", "train": "bench", "evaluate": "bench", "leaderboard": "bench",
    "study": "study",
}


def register(*modules: str) -> None:
    """Import the command modules named (all of them without names): each registers its commands."""
    for name in modules or MODULES:
        importlib.import_module(f".{name}", __name__)


def main() -> None:
    """The ``lsbench`` console script."""
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if command in COMMANDS and not {"--help", "-h"} & set(sys.argv[1:2]):
        register(COMMANDS[command])
    else:
        register()
    _app_module.main()


def __getattr__(name: str):
    if name == "app":  # the complete app (tests, Python users, docs)
        register()
        return _app_module.app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
