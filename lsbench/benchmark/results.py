"""The results JSON: its schema, its version, its file name, and how it is written, read and checked.

One result file is what ``lsbench evaluate`` writes and the leaderboard (or anyone else) reads, so
both sides go through this module and nothing else: the writer never depends on a renderer, and a
file that the writer accepts is exactly a file the reader accepts (one :func:`validate_result`, one
cached validator of the shipped ``result.schema.json``, one message form).

- :func:`write_result` validates a result and writes it atomically (through
  :func:`lsbench.util.write_json_atomic`: complete under its final name or absent) as
  :func:`lsbench.util.dumps_json` text, under :func:`result_filename`.
- :func:`read_result` parses one file as strict JSON (no NaN/Infinity) and validates it;
  :func:`load_results` does that for every ``*.json`` under a folder.

Every problem is one :class:`ResultError` line naming the file, and the field where it applies.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..util import loads_json, safe_name, write_json_atomic

SCHEMA_VERSION = 1  # the ``schema_version`` const of result.schema.json
SCHEMA_PATH = resources.files(__package__).joinpath("result.schema.json")


class ResultError(DataError):
    """A result (file or folder of files) that cannot be read or does not follow the schema."""


@dataclass
class Result:
    """One validated result file."""

    path: Path
    rel: str  # path relative to the results folder, for display
    data: dict[str, Any]


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace (newlines included) and cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.lru_cache(maxsize=1)
def result_validator() -> Any:
    """The JSON-Schema validator of ``result.schema.json`` (loaded once)."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def validate_result(result: Any, path: Path | str | None = None) -> None:
    """Raise one :class:`ResultError` line, naming ``path`` (if given), the field and the problem, if
    ``result`` does not follow the schema.  The writer calls it before writing, the reader after parsing."""
    import jsonschema

    error = jsonschema.exceptions.best_match(result_validator().iter_errors(result))
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    problem = f"not a valid lsbench result at {where}: {one_line(error.message, 160)}"
    if path is None:
        raise ResultError(one_line(f"result: {problem}"))
    raise ResultError(one_line(f"{path}: {problem} (results come from `lsbench evaluate`)"))


def result_filename(result: dict[str, Any]) -> str:
    """``{model}__{dataset}__{split}__{checkpoint sha256[:8]}.json``, each part a safe file-name part."""
    sha = (result["model"]["checkpoint_sha256"] or "none")[:8]
    parts = (result["model"]["name"], result["dataset"]["name"], result["dataset"]["split"], sha)
    return "__".join(safe_name(p) for p in parts) + ".json"


def write_result(result: dict[str, Any], out_dir: Path | str) -> Path:
    """Validate ``result`` and write it atomically into ``out_dir`` (created if needed); returns its path."""
    validate_result(result)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / result_filename(result)
    write_json_atomic(path, result)
    return path


def read_json(path: Path) -> Any:
    """Parse ``path`` as strict JSON (:func:`lsbench.util.loads_json`: no NaN/Infinity, no number that
    overflows to infinity); any problem is one :class:`ResultError` line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ResultError(one_line(f"{path}: not valid JSON (not UTF-8 text); fix or remove the file")) from None
    except OSError as e:
        raise ResultError(one_line(f"{path}: cannot read ({e.strerror or e})")) from None
    try:
        return loads_json(text)
    except json.JSONDecodeError as e:
        problem = f"{e.msg} at line {e.lineno} column {e.colno}"
        raise ResultError(one_line(f"{path}: not valid JSON ({problem}); fix or remove the file")) from None
    except ValueError as e:
        raise ResultError(one_line(f"{path}: not valid JSON ({e}); fix or remove the file")) from None


def read_result(path: Path | str) -> dict[str, Any]:
    """One result file, parsed and validated."""
    path = Path(path)
    data = read_json(path)
    validate_result(data, path)
    return data


def load_results(results_dir: Path | str) -> list[Result]:
    """Every ``*.json`` under ``results_dir`` (recursively), parsed and validated, sorted by path."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ResultError(one_line(f"results folder {results_dir} does not exist or is not a folder"))
    paths = sorted(p for p in results_dir.rglob("*.json") if p.is_file())
    if not paths:
        raise ResultError(
            one_line(f"no result files (*.json) in {results_dir}: run `lsbench evaluate` first, or point at its folder")
        )
    return [Result(path, path.relative_to(results_dir).as_posix(), read_result(path)) for path in paths]
