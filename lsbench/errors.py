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


class OutputError(LsbenchError):
    """A path the command cannot write (or read): a read-only file system, no permission, a file where a
    folder should be or the reverse; the message names the path and what to do (:func:`lsbench.util.os_error`)."""


class Interrupted(LsbenchError):
    """Stopped by Ctrl-C/SIGTERM; finished shards are kept and a rerun resumes."""


class UnknownSplitError(DatasetError, ConfigError):
    """A split the dataset does not have: a wrong option (``--split``) as much as a dataset mismatch."""


class FolderInUseError(LsbenchError):
    """Another lsbench run holds the output folder's lock (:mod:`lsbench.lock`); the message names it."""


class ManifestError(DatasetError):
    """A manifest that cannot be read or does not follow ``lsbench/manifest.schema.json``.

    ``reason`` is what is wrong, without the file's name or advice, for a caller that words it its own way
    (a rerun of ``generate`` says ``--overwrite``)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


class CorruptSampleError(DatasetError):
    """A sample of a shard (whose sha256 may well match its manifest) that does not decode: one line naming
    the shard and the sample's key.  One argument, so it survives a DataLoader worker's re-raise."""
