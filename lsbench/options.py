"""Options declared once: dataclass fields that carry their command-line help, flag and range.

The Python API takes config objects (``MnistConfig``, ``TrainConfig``, ...); the ``lsbench``
command line is derived from their fields (:mod:`lsbench.cli.derive`), so an option is written
once — its type, default, help text and valid range — and a Python user and a CLI user get the
same defaults and the same one-line errors::

    @dataclass(frozen=True)
    class MnistConfig:
        digits: int = option(3, help="Digits per image.", min=1, max=4)

:func:`check_ranges` enforces ``min``/``max``/``choices`` with messages in the CLI's words
(``--digits must be 1–4, got 7``), and that every float is finite (``--lr must be a finite number, got
nan``); checks that involve several fields stay with the config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import ConfigError

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    help: str = "",
    flag: str | None = None,
    short: str | None = None,
    min: float | None = None,
    max: float | None = None,
    choices: Sequence[Any] | None = None,
    cli: bool = True,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field with its command-line declaration.

    ``flag`` overrides the long option name (default ``--field-name``); ``short`` adds e.g. ``-o``.
    ``min``/``max``/``choices`` are checked by :func:`check_ranges`.  ``parse`` turns the CLI's
    text into the field's value (the option is then a string on the command line, e.g. a comma
    list).  ``cli=False`` keeps a field out of the command line (set by the program, or Python only).
    """
    metadata = {
        "help": help, "flag": flag, "short": short, "min": min, "max": max,
        "choices": tuple(choices) if choices is not None else None, "cli": cli, "parse": parse,
    }
    return dataclasses.field(default=default, metadata=metadata)


def flag(cls_or_obj: Any, name: str) -> str:
    """The long command-line flag of field ``name`` (``--scale-range``)."""
    field = {f.name: f for f in dataclasses.fields(cls_or_obj)}[name]
    return field.metadata.get("flag") or "--" + name.replace("_", "-")


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def range_text(meta: Mapping[str, Any]) -> str:
    """``1–4``, ``at least 1``, ``one of a, b``: how help texts and errors state a field's range
    (``meta`` is the field's metadata)."""
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{_number(lo)}–{_number(hi)}"
    if lo is not None:
        return f"at least {_number(lo)}"
    if hi is not None:
        return f"at most {_number(hi)}"
    return ""


def non_finite(value: Any) -> float | None:
    """The first NaN or infinite float in ``value`` (a number, or a tuple/list of them), else ``None``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    if isinstance(value, tuple | list):
        return next((v for v in map(non_finite, value) if v is not None), None)
    return None


def check_finite(obj: Any) -> None:
    """Raise :class:`ConfigError` for the first field of ``obj`` holding NaN or an infinity (``--lr nan``,
    ``1e999``): no option of lsbench means anything with one, so every float field of every config is
    checked, declared range or not."""
    for field in dataclasses.fields(obj):
        bad = non_finite(getattr(obj, field.name))
        if bad is not None:
            raise ConfigError(f"{flag(obj, field.name)} must be a finite number, got {bad}")


def check_ranges(obj: Any, names: Sequence[str] | None = None) -> None:
    """Raise :class:`ConfigError` for the first field of ``obj`` outside its declared range.

    ``None`` values are not checked (they mean "the default"); tuples are checked element-wise.
    Every field (whatever ``names`` says) must be finite (:func:`check_finite`).
    """
    check_finite(obj)
    for field in dataclasses.fields(obj):
        if names is not None and field.name not in names:
            continue
        meta = field.metadata
        value = getattr(obj, field.name)
        if value is None or not (meta.get("choices") or meta.get("min") is not None or meta.get("max") is not None):
            continue
        values = value if isinstance(value, tuple | list) else (value,)
        for v in values:
            bad = (
                (meta.get("choices") and v not in meta["choices"])
                or (meta.get("min") is not None and v < meta["min"])
                or (meta.get("max") is not None and v > meta["max"])
            )
            if bad:
                shown = repr(v) if isinstance(v, str) else _number(v)
                raise ConfigError(f"{flag(obj, field.name)} must be {range_text(field.metadata)}, got {shown}")
