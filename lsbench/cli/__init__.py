"""The ``lsbench`` command line: parses options, calls one library function, shows progress.

User mistakes surface as one ``error: ...`` line on stderr and a non-zero exit code (1; 130
after Ctrl-C/SIGTERM), never a traceback.  Options are derived from the config objects the
Python API takes (:mod:`.derive`); each module here registers one group of commands on
:data:`app`, in the order ``lsbench --help`` lists them.
"""

from .app import app, main

# isort: off
from . import generate, data, bench, study  # noqa: F401, E402 - registration order is the help's order
# isort: on

__all__ = ["app", "main"]
