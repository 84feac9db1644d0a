"""Options declared once (:mod:`lsbench.options`) and the CLI derived from them (:mod:`lsbench.cli.derive`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import typer
from typer.testing import CliRunner

from lsbench.cli.derive import Override, options_from
from lsbench.errors import ConfigError
from lsbench.options import check_ranges, flag, option


def _parse_pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--pair takes two comma-separated integers, got {text!r}") from None
    return a, b


@dataclass(frozen=True)
class Toy:
    count: int = option(3, help="How many.", min=1, max=4)
    mode: str = option("a", help="Which mode.", choices=("a", "b"))
    ratio: float | None = option(None, help="A ratio.", min=0)
    pair: tuple[int, int] = option((1, 2), help="Two numbers.", parse=_parse_pair)
    label: str = option("x", help="Renamed flag.", flag="--name", short="-n")
    internal: str = option("set by the program", cli=False)


@dataclass(frozen=True)
class Run:
    workers: int = option(1, help="Workers.", min=1)


def _app(**overrides):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    seen = {}

    @app.command()
    @options_from(**overrides)
    def main(toy: Toy = ..., run: Run = ..., quiet: bool = typer.Option(False, "--quiet")) -> None:
        seen.update(toy=toy, run=run, quiet=quiet)

    return app, seen


@pytest.mark.parametrize(("obj", "message"), [
    (Toy(count=0), "--count must be 1–4, got 0"),
    (Toy(count=5), "--count must be 1–4, got 5"),
    (Toy(mode="c"), "--mode must be one of a, b, got 'c'"),
    (Toy(ratio=-0.5), "--ratio must be at least 0, got -0.5"),
])
def test_check_ranges_speaks_in_flags(obj, message):
    with pytest.raises(ConfigError) as info:
        check_ranges(obj)
    assert str(info.value) == message


def test_check_ranges_skips_none_and_unnamed_fields():
    check_ranges(Toy(ratio=None))
    check_ranges(Toy(count=9), names=("mode",))
    assert flag(Toy, "label") == "--name" and flag(Toy, "count") == "--count"


def test_the_command_gets_the_config_objects_it_declares():
    app, seen = _app()
    result = CliRunner().invoke(app, ["--count", "2", "--mode", "b", "--pair", "5,6", "-n", "y", "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert seen["toy"] == Toy(count=2, mode="b", pair=(5, 6), label="y")
    assert seen["run"] == Run(workers=3) and seen["quiet"] is False


def test_defaults_are_the_dataclass_defaults():
    app, seen = _app()
    assert CliRunner().invoke(app, []).exit_code == 0
    assert seen["toy"] == Toy() and seen["run"] == Run()


def test_help_shows_every_cli_field_with_its_range_and_no_internal_one():
    app, _ = _app()
    text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    for needle in ("--count", "How many. [1–4]", "--mode", "[one of a, b]", "--ratio", "[at least 0]",
                   "--pair", "[default: 1,2]", "--name", "--workers", "--quiet"):
        assert needle in text
    assert "--internal" not in text and "--label" not in text


def test_text_that_does_not_parse_is_a_usage_error():
    app, seen = _app()
    result = CliRunner().invoke(app, ["--pair", "x"])
    assert result.exit_code == 2 and "--pair takes two comma-separated integers" in result.output
    assert not seen


def test_an_override_changes_a_commands_default_and_help_only():
    app, seen = _app(run=Override(Run, {"workers": {"default": 4, "help": "Blender processes."}}))
    assert CliRunner().invoke(app, []).exit_code == 0
    assert seen["run"] == Run(workers=4)
    assert "Blender processes." in CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    with pytest.raises(TypeError, match="no fields"):
        _app(run=Override(Run, {"nope": {"default": 1}}))


@dataclass(frozen=True)
class Clash:
    workers: int = option(1)


def test_one_option_declared_twice_is_refused():
    with pytest.raises(TypeError, match="declared twice"):
        @options_from()
        def main(run: Run = ..., clash: Clash = ...) -> None: ...


def test_generate_mnist_options_are_the_config_fields(cli):
    """The real command: its options are MnistConfig's and RunOptions' CLI fields, nothing else."""
    from lsbench.generators.mnist import MnistConfig
    from lsbench.generators.runner import RunOptions

    text = cli("generate", "mnist", "--help").output
    for cls in (MnistConfig, RunOptions):
        for f in dataclasses.fields(cls):
            shown = "--" + f.name.replace("_", "-") in text
            assert shown == f.metadata.get("cli", True), f.name
