"""Exceptions for user mistakes and environment problems.

Library code raises these with one readable sentence that says what to do; ``lsbench.cli`` prints the
message (no traceback) and exits non-zero.  Anything else escaping is a bug in lsbench.
"""


class LsbenchError(Exception):
    """Base class: a problem the user can fix; ``str(error)`` is the whole message."""


class ConfigError(LsbenchError, ValueError):
    """Impossible or inconsistent options."""


class DataError(LsbenchError):
    """Missing, corrupt or wrongly laid out input data."""


class DatasetError(LsbenchError):
    """An output/input dataset folder that does not match the contract."""


class DiskFullError(LsbenchError):
    """No space left while writing; finished shards are kept and a rerun resumes."""


class Interrupted(LsbenchError):
    """Stopped by Ctrl-C/SIGTERM; finished shards are kept and a rerun resumes."""


class UnknownSplitError(DatasetError, ConfigError):
    """A split the dataset does not have: a wrong option (``--split``) as much as a dataset mismatch."""
