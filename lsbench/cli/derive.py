"""Typer commands derived from config dataclasses: one declaration per option.

A command names the config objects it takes as parameters annotated with their class; the
:func:`options_from` decorator replaces each such parameter by one ``--option`` per field
(type, default, help text and range from the field's :func:`lsbench.options.option`
metadata) and hands the command the built object::

    @generate_app.command("mnist")
    @user_errors
    @options_from(run=Override(RunOptions, {"shard_size": {"default": 1000}}))
    def generate_mnist(out: Path = OUT, cfg: MnistConfig = ..., run: RunOptions = ...): ...

Parameters that are not configs (``--out``, ``--quiet``) stay ordinary typer options.  A
per-command override (:class:`Override`) changes a field's default or help text, not its type; with
``flags=True`` the command gets only the options the user gave, as a dict, because another source
fills the rest (``lsbench study run FILE --seeds 0,1``: the file, then the flags over it).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.markup import escape

from ..errors import ConfigError, LsbenchError
from ..options import flag, non_finite, range_text


@dataclass(frozen=True)
class Override:
    """A config class with per-command defaults/help: ``Override(RunOptions, {"shard_size": {"default": 100}})``."""

    cls: type
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    flags: bool = False  # hand the command {field: value} of the options given (each defaults to None)


def _is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _cli_default(f: dataclasses.Field, meta: dict[str, Any]) -> Any:
    if "default" in meta:
        return meta["default"]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return ...  # required


def _help(meta: dict[str, Any]) -> str:
    text = meta.get("help", "")
    rng = range_text(meta)
    return f"{text} {escape(f'[{rng}]')}" if rng else text  # escaped: "[at least 1]" is not rich markup


def _parameter(f: dataclasses.Field, hint: Any, meta: dict[str, Any]) -> inspect.Parameter:
    default = _cli_default(f, meta)
    names = [meta["flag"]] if meta.get("flag") else []
    if meta.get("short"):
        names = names or ["--" + f.name.replace("_", "-")]
        names.append(meta["short"])
    annotation = hint
    if meta.get("parse") is not None:  # typed on the command line as text, parsed by the config
        annotation = str | None
        if default is not None and default is not ...:
            default = ",".join(map(str, default)) if isinstance(default, tuple | list) else str(default)
    option = typer.Option(default, *names, help=_help(meta))
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _given_only(f: dataclasses.Field, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` of an option that defaults to None (not given), its real default in the help text."""
    default = _cli_default(f, meta)
    shown = ",".join(map(str, default)) if isinstance(default, tuple | list) else default
    text = meta.get("help", "")
    if default not in (None, ..., (), []) and "default" not in text.lower():
        text = f"{text} (default: {shown})"
    return {**meta, "default": None, "help": text}


def _fields(source: type | Override) -> tuple[type, list[tuple[dataclasses.Field, Any, dict[str, Any]]]]:
    cls, overrides = (source.cls, source.fields) if isinstance(source, Override) else (source, {})
    flags = isinstance(source, Override) and source.flags
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = {**f.metadata, **overrides.get(f.name, {})}
        if meta.get("cli", True) is False or not f.init:
            continue
        hint = hints[f.name]
        if flags:
            meta, hint = _given_only(f, meta), hint | None
        out.append((f, hint, meta))
    return cls, out


def options_from(**overrides: type | Override):
    """Expand every parameter annotated with a config dataclass into its fields' options.

    ``overrides`` maps a parameter name to an :class:`Override` of its class (per-command
    defaults); parameters not named take their annotation's class as it is.
    """

    def decorate(fn):
        hints = typing.get_type_hints(fn)
        params: list[inspect.Parameter] = []
        expanded: dict[str, tuple[type, list[tuple[str, Any]], bool]] = {}
        seen: set[str] = set()
        for p in inspect.signature(fn).parameters.values():
            annotation = hints.get(p.name, p.annotation)
            source = overrides.get(p.name, annotation if _is_config(annotation) else None)
            if source is None:
                params.append(p.replace(annotation=annotation, kind=inspect.Parameter.KEYWORD_ONLY))
                seen.add(p.name)
                continue
            cls, fields = _fields(source)
            for f, hint, meta in fields:
                if f.name in seen:
                    raise TypeError(f"{fn.__name__}: option {f.name!r} is declared twice")
                seen.add(f.name)
                params.append(_parameter(f, hint, meta))
            flags = isinstance(source, Override) and source.flags
            expanded[p.name] = (cls, [(f.name, meta.get("parse")) for f, _, meta in fields], flags)

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            for name, (cls, names, flags) in expanded.items():
                values = {}
                for field_name, parse in names:
                    value = kwargs.pop(field_name)
                    if value is None and (flags or parse is not None):
                        continue  # not given: the dataclass default, or (flags) the other source's value
                    if parse is not None:
                        try:
                            value = parse(value)
                        except LsbenchError as e:  # malformed text is a usage error (exit 2), like a bad number
                            raise typer.BadParameter(str(e)) from None
                    if non_finite(value) is not None:  # --lr nan, --strength inf, 1e999: never a setting
                        raise ConfigError(f"{flag(cls, field_name)} must be a finite number, got {non_finite(value)}")
                    values[field_name] = value
                kwargs[name] = values if flags else cls(**values)
            return fn(**kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must see the derived signature, not fn's
        return command

    return decorate
