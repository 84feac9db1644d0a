"""Read a generated dataset back through the tools its cards promise: mlcroissant and Hugging Face datasets.

Both run in a subprocess: mlcroissant caches archive extractions by URL under ``CROISSANT_CACHE``
(read at import), so each check gets a fresh cache, and neither tool's import (pandas, pyarrow,
rdflib) weighs on the test process.  What comes back is JSON: keys, metadata, labels, and each
image and mask as its sha256 of the decoded pixels, compared with lsbench's own reader.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from lsbench.dataset import read_split

_CROISSANT = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    import mlcroissant as mlc
    ds = mlc.Dataset(jsonld=sys.argv[1])  # raises ValidationError on a card that is not valid Croissant
    out = {}
    for rs in json.loads(sys.argv[2]):
        rows = []
        for r in ds.records(rs):
            row = {}
            for k, v in r.items():
                name = k.split("/", 1)[1]
                if hasattr(v, "size"):  # PIL image
                    arr = np.asarray(v.convert("L") if name == "mask" else v)
                    v = hashlib.sha256(arr.tobytes()).hexdigest()
                elif isinstance(v, bytes):
                    v = v.decode()
                row[name] = v
            rows.append(row)
        out[rs] = rows
    print(json.dumps(out))
""")

_HF = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    import datasets
    directory, files = sys.argv[1], json.loads(sys.argv[2])
    if files:
        ds = datasets.load_dataset("webdataset", data_files=files, streaming=True)
    else:  # the README's configs
        ds = datasets.load_dataset(directory, streaming=True)
    out = {}
    for split in ds:
        rows = []
        for r in ds[split]:
            image = r.get("png") or r.get("jpg")
            digest = hashlib.sha256(np.asarray(image).tobytes()).hexdigest()
            row = {"key": r["__key__"], "json": r["json"], "image": digest}
            if "cls" in r:
                row["cls"] = r["cls"]
            if "mask.png" in r:
                row["mask"] = hashlib.sha256(np.asarray(r["mask.png"].convert("L")).tobytes()).hexdigest()
            rows.append(row)
        out[split] = rows
    print(json.dumps(out))
""")


def _run(script: str, args: list[str], tmp: Path) -> dict:
    env = {"CROISSANT_CACHE": str(tmp / "croissant-cache"), "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def croissant_records(directory: Path, record_sets: list[str], tmp: Path) -> dict[str, list[dict]]:
    """``{record set: [record, ...]}`` as mlcroissant reads them from ``directory/croissant.json``."""
    return _run(_CROISSANT, [str(directory / "croissant.json"), json.dumps(record_sets)], tmp)


def hf_records(directory: Path, tmp: Path, data_files: dict[str, str] | None = None) -> dict[str, list[dict]]:
    """``{split: [record, ...]}`` as Hugging Face ``datasets`` streams them (``data_files`` given:
    the ``webdataset`` builder; else ``load_dataset(directory)`` with the datasheet's configs)."""
    return _run(_HF, [str(directory), json.dumps(data_files or {})], tmp)


def pixels(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def lsbench_records(directory: Path, split: str) -> list[dict]:
    """The same fields through lsbench's reader, in shard order."""
    rows = []
    for s in read_split(directory, split):
        row = {"key": s["__key__"], "json": s["meta"], "image": pixels(s["image"])}
        if "cls" in s:
            row["cls"] = s["cls"]
        if "mask" in s:
            row["mask"] = pixels(s["mask"])
        rows.append(row)
    return rows


def assert_cards_load(directory: Path, tmp: Path) -> None:
    """Every split's records, read through mlcroissant and through HF ``datasets``, equal lsbench's."""
    manifest = json.loads((directory / "manifest.json").read_text())
    splits = sorted(manifest["splits"])
    card = json.loads((directory / "croissant.json").read_text())
    record_sets = [r["@id"] for r in card["recordSet"]]
    got = croissant_records(directory, record_sets, tmp)
    assert [r["name"] for r in got["splits"]] == splits
    hf = hf_records(directory, tmp, {s: str(directory / f"{s}-*.tar") for s in splits})
    hf_readme = hf_records(directory, tmp)
    assert sorted(hf) == sorted(hf_readme) == splits
    for split in splits:
        want = lsbench_records(directory, split)
        keys = [w["key"] for w in want]
        meta = {r["key"]: json.loads(r["metadata"]) for r in got[split]}
        assert sorted(meta) == sorted(keys) and all(meta[w["key"]] == w["json"] for w in want)
        images = {r["key"]: r["image"] for r in got[f"{split}_images"]}
        assert images == {w["key"]: w["image"] for w in want}
        if "cls" in want[0]:
            assert {r["key"]: r["label"] for r in got[f"{split}_labels"]} == {w["key"]: w["cls"] for w in want}
        if "mask" in want[0]:
            assert {r["key"]: r["mask"] for r in got[f"{split}_masks"]} == {w["key"]: w["mask"] for w in want}
        for rows in (hf[split], hf_readme[split]):
            assert rows == want  # same order, keys, metadata, labels/masks and pixels
