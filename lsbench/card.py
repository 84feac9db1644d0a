"""A dataset's cards: ``croissant.json`` (MLCommons Croissant 1.1) and a ``README.md`` datasheet.

NeurIPS Datasets & Benchmarks, Hugging Face, Kaggle and OpenML read Croissant; people read a
datasheet.  Both are written from the complete manifest plus what the generator knows about its
sources (:class:`CardFacts`: licences, how the data was made, known biases and limitations), so
they are derived data: ``lsbench card DIR`` rewrites them, and :func:`check_card` (run by
``lsbench validate``) reports a card that no longer matches the manifest.

**Croissant layout.**  ``distribution`` lists every shard as a ``cr:FileObject`` (relative
``contentUrl``, ``application/x-tar``, sha256, size) and, per split and member kind, a ``cr:FileSet``
``containedIn`` that split's shards (``*.json``, the image, ``*.cls``, ``*.mask.png``).  Record sets:
``splits`` (``cr:Split``) and, per split, ``{split}`` (key + the sample's metadata JSON),
``{split}_images``, and ``{split}_labels`` or ``{split}_masks``; the records of one sample share
their ``key`` (the WebDataset ``__key__``).  The metadata is one JSON text per sample rather than
a field per key because ``mlcroissant`` 1.1 does not parse JSON files found inside an archive
(only their file properties), and a card it cannot load would be worse than a coarser one.

**The datasheet** opens with Hugging Face dataset-card YAML (licence, task, ``configs`` mapping
each split to its shards), so a dataset folder uploaded to the Hub as it is shows up with its
splits, and ``datasets.load_dataset(DIR)`` reads it locally the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .shards import iter_tar
from .util import atomic_open, dumps_json

CROISSANT = "croissant.json"
DATASHEET = "README.md"
CONFORMS_TO = "http://mlcommons.org/croissant/1.1"

# The Croissant 1.1 JSON-LD context (as the spec's examples write it), plus ``rai`` and ``prov``.
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "prov": "http://www.w3.org/ns/prov#",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

PAPER_CITATION = (
    "Deep Equilibrium Canonicalizer for local scale equivariance (DEC); datasets generated with lsbench "
    "(https://github.com/lsbench/lsbench)"
)
_IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


@dataclass(frozen=True)
class Source:
    """Data a dataset is made from, with its licence."""

    name: str
    licence: str  # SPDX id where there is one ("CC-BY-SA-3.0"), else a short phrase
    url: str = ""
    licence_url: str = ""
    note: str = ""


@dataclass(frozen=True)
class CardFacts:
    """What only the generator knows: the prose and the licences of a dataset's card."""

    title: str
    summary: str  # what the dataset is, one paragraph
    sources: tuple[Source, ...]
    licence: str  # the dataset's own licence (what its sources impose), SPDX id or "other"
    licence_url: str
    collection: str  # how it was made (rai:dataCollection)
    biases: str  # rai:dataBiases
    limitations: str  # rai:dataLimitations
    command: str  # the command that reproduces it
    use_cases: str = (
        "Measuring and improving the robustness of vision models to local scale changes (objects that change "
        "apparent size independently): accuracy per scale, invariance and equivariance errors (lsbench evaluate)."
    )
    sensitive: str = "None: no personal or sensitive information is collected or inferred."
    keywords: tuple[str, ...] = field(default=("local scale", "scale equivariance", "robustness", "lsbench"))


# --------------------------------------------------------------------------- what the shards hold


def _members(directory: Path, manifest: dict[str, Any], split: str) -> tuple[str, ...]:
    """The member kinds of one split's samples (``json``, ``png``|``jpg``, ``cls``, ``mask.png``),
    read from its first sample (every sample of a split has the same kinds: the schema)."""
    shards = manifest["splits"][split]["shards"]
    if not shards:
        return ()
    for raw in iter_tar(directory / shards[0]["name"]):
        return tuple(sorted(k for k in raw if not k.startswith("__")))
    return ()


def _task(manifest: dict[str, Any]) -> str:
    return "segmentation" if manifest.get("config", {}).get("task") == "seg" else "classification"


# --------------------------------------------------------------------------- croissant.json


def _field(record: str, name: str, data_type: str | list[str], source: dict[str, Any], description: str):
    return {"@type": "cr:Field", "@id": f"{record}/{name}", "name": name, "description": description,
            "dataType": data_type, "source": source}


def _key(record: str, fileset: str, suffix: str) -> dict[str, Any]:
    regex = "^(.+)\\." + suffix.replace(".", "\\.") + "$"
    return _field(record, "key", "sc:Text", {"fileSet": {"@id": fileset}, "extract": {"fileProperty": "filename"},
                                             "transform": {"regex": regex}},
                  "The sample's WebDataset __key__ (shared by its records in every record set of the split).")


def _content(fileset: str) -> dict[str, Any]:
    return {"fileSet": {"@id": fileset}, "extract": {"fileProperty": "content"}}


def croissant(directory: Path, manifest: dict[str, Any], facts: CardFacts) -> dict[str, Any]:
    """The Croissant 1.1 card of the complete dataset in ``directory`` (see the module docstring)."""
    distribution: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = [{
        "@type": "cr:RecordSet", "@id": "splits", "name": "splits", "dataType": "cr:Split",
        "description": "The dataset's splits.", "key": {"@id": "splits/name"},
        "field": [{"@type": "cr:Field", "@id": "splits/name", "name": "name", "dataType": "sc:Text",
                   "description": "The split's name (its shards are {split}-NNNNNN.tar)."}],
        "data": [{"splits/name": split} for split in sorted(manifest["splits"])],
    }]
    for split, entry in sorted(manifest["splits"].items()):
        shards = [{"@id": rec["name"]} for rec in entry["shards"]]
        for rec in entry["shards"]:
            distribution.append({
                "@type": "cr:FileObject", "@id": rec["name"], "name": rec["name"], "contentUrl": rec["name"],
                "encodingFormat": "application/x-tar", "sha256": rec["sha256"], "contentSize": f"{rec['bytes']} B",
                "description": f"WebDataset shard of split {split!r}: {rec['num_samples']} samples.",
            })
        members = _members(directory, manifest, split)

        def fileset(kind: str, fmt: str, what: str, split: str = split, shards=shards, members=members) -> str:
            entry = {"@type": "cr:FileSet", "@id": f"{split}/{kind}", "name": f"{split}/{kind}",
                     "description": f"The {what} of split {split!r}.", "containedIn": shards,
                     "includes": f"*.{kind}", "encodingFormat": fmt}
            if kind == "png" and "mask.png" in members:
                # "*.png" would take the masks too; keys end in a digit ({group:07d}_{variant:02d}), and
                # mlcroissant 1.1 ignores ``excludes`` (kept for the tools that read it).
                entry.update(includes="*[0-9].png", excludes=["*.mask.png"])
            distribution.append(entry)
            return f"{split}/{kind}"

        grouped = "in groups of one reference and its scaled variants" if entry["grouped"] else "single images"
        meta = fileset("json", "application/json", "per-sample metadata")
        records.append({
            "@type": "cr:RecordSet", "@id": split, "name": split, "key": {"@id": f"{split}/key"},
            "description": f"Split {split!r}: {entry['num_samples']} samples, {grouped}.",
            "field": [_key(split, meta, "json"), _field(
                split, "metadata", "sc:Text", _content(meta),
                "The sample's metadata, a JSON object: group, variant, reference (bool), split, the per-object "
                "scale factors and everything needed to audit the sample (source ids, boxes, backends).")],
        })
        image = next((m for m in members if m in _IMAGE_TYPES), None)
        if image is not None:
            images = fileset(image, _IMAGE_TYPES[image], "images")
            records.append({"@type": "cr:RecordSet", "@id": f"{split}_images", "name": f"{split}_images",
                            "description": f"The images of split {split!r}.", "key": {"@id": f"{split}_images/key"},
                            "field": [_key(f"{split}_images", images, image), _field(
                                f"{split}_images", "image", "sc:ImageObject", _content(images), "The image.")]})
        if "cls" in members:
            labels = fileset("cls", "text/plain", "class labels")
            records.append({"@type": "cr:RecordSet", "@id": f"{split}_labels", "name": f"{split}_labels",
                            "description": f"The class labels of split {split!r}.",
                            "key": {"@id": f"{split}_labels/key"},
                            "field": [_key(f"{split}_labels", labels, "cls"), _field(
                                f"{split}_labels", "label", "sc:Integer", _content(labels),
                                f"Class id, 0–{manifest['config'].get('num_classes', 0) - 1}.")]})
        if "mask.png" in members:
            masks = fileset("mask.png", "image/png", "segmentation masks")
            records.append({"@type": "cr:RecordSet", "@id": f"{split}_masks", "name": f"{split}_masks",
                            "description": f"The segmentation masks of split {split!r}.",
                            "key": {"@id": f"{split}_masks/key"},
                            "field": [_key(f"{split}_masks", masks, "mask.png"), _field(
                                f"{split}_masks", "mask", ["cr:SegmentationMask", "sc:ImageObject"],
                                _content(masks), "Per-pixel class ids (uint8; 0 = background).")]})
    licences = sorted({facts.licence_url or facts.licence} | {s.licence_url or s.licence for s in facts.sources})
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": manifest["name"],
        "alternateName": facts.title,
        "description": facts.summary,
        "license": licences,
        "url": "https://github.com/lsbench/lsbench",
        "version": manifest["lsbench_version"],
        "datePublished": manifest["created"],
        "citeAs": PAPER_CITATION,
        "creator": {"@type": "sc:Organization", "name": "lsbench", "url": "https://github.com/lsbench/lsbench"},
        "keywords": list(facts.keywords),
        "isBasedOn": [
            {"@type": "sc:CreativeWork", "name": s.name, "license": s.licence_url or s.licence,
             **({"url": s.url} if s.url else {}), **({"description": s.note} if s.note else {})}
            for s in facts.sources
        ],
        "rai:dataCollection": facts.collection,
        "rai:dataCollectionType": ["Software generated (procedural composition / rendering)"],
        "rai:dataPreprocessingProtocol": f"Reproduce with: {facts.command}",
        "rai:dataBiases": facts.biases,
        "rai:dataLimitations": facts.limitations,
        "rai:dataUseCases": facts.use_cases,
        "rai:personalSensitiveInformation": facts.sensitive,
        "prov:wasGeneratedBy": {
            "@type": "prov:Activity", "name": facts.command,
            "description": "generator " + manifest["generator"] + ", seed " + str(manifest["seed"]) + ", config "
            + json.dumps(manifest["config"], sort_keys=True),
        },
        "distribution": distribution,
        "recordSet": records,
    }


# --------------------------------------------------------------------------- README.md


def _yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML flow scalar


def datasheet(manifest: dict[str, Any], facts: CardFacts) -> str:
    """The human datasheet (with Hugging Face dataset-card YAML in front)."""
    task = _task(manifest)
    splits = sorted(manifest["splits"])
    total = sum(e["num_samples"] for e in manifest["splits"].values())
    size = "n<1K" if total < 1000 else "1K<n<10K" if total < 10_000 else "10K<n<100K" if total < 100_000 else "n>100K"
    front = ["---", f"pretty_name: {_yaml_str(facts.title)}", f"license: {facts.licence.lower()}",
             "task_categories:", f"  - {'image-segmentation' if task == 'segmentation' else 'image-classification'}",
             "tags:", *[f"  - {_yaml_str(k)}" for k in facts.keywords], f"size_categories:\n  - {size}",
             "configs:", "  - config_name: default", "    data_files:"]
    for split in splits:
        front += [f"      - split: {split}", f"        path: \"{split}-*.tar\""]
    front.append("---")
    rows = "\n".join(
        f"| `{s}` | {manifest['splits'][s]['num_samples']:,} | {manifest['splits'][s]['num_groups']:,} | "
        f"{manifest['splits'][s]['num_shards']} | {manifest['splits'][s]['bytes'] / 1e6:.1f} MB |"
        for s in splits
    )
    sources = "\n".join(
        f"- **{s.name}** — {s.licence}" + (f" ({s.licence_url})" if s.licence_url else "")
        + (f"; {s.url}" if s.url else "") + (f". {s.note}" if s.note else "")
        for s in facts.sources
    )
    image = manifest.get("config", {}).get("image_format", "png")
    member = f"`json` (metadata), the image (`{image}`), " + (
        "`mask.png` (uint8 class ids, 0 = background)" if task == "segmentation" else "`cls` (class id)")
    first = splits[0] if splits else "train"
    return "\n".join(front) + f"""

# {facts.title}

{facts.summary}

Generated by lsbench {manifest['lsbench_version']} (generator `{manifest['generator']}`, seed {manifest['seed']}) on
{manifest['created']}. `manifest.json` holds the full generator config and every shard's sha256;
`croissant.json` is the same description as an MLCommons Croissant 1.1 card.

## Contents

| split | samples | groups | shards | size |
|---|---:|---:|---:|---:|
{rows}

Each sample is one WebDataset record: {member}. Test splits come in *groups* sharing `group`:
one `reference` (every object at scale 1.0) and its variants with other local scales, written
consecutively. The metadata records the per-object scale factors and everything needed to audit
the sample.

## How it was made

{facts.collection}

Reproduce it (byte-identical shards) with:

```bash
{facts.command}
```

## Licences

This dataset: **{facts.licence}**{f" ({facts.licence_url})" if facts.licence_url else ""}. Its sources:

{sources}

## Known biases and limitations

{facts.biases}

{facts.limitations}

## How to load it

```python
import lsbench.dataset as D                       # lsbench's reader (checks, groups, torch tensors)
for sample in D.read_split("DIR", "{first}", limit=4):
    print(sample["__key__"], sample["meta"]["scales"])

import datasets                                   # Hugging Face datasets, straight from the shards
ds = datasets.load_dataset("webdataset", data_files={{"{first}": "DIR/{first}-*.tar"}}, streaming=True)
# or, with this README's configs: datasets.load_dataset("DIR", streaming=True)

import mlcroissant                                # Croissant
records = mlcroissant.Dataset(jsonld="DIR/croissant.json").records("{first}")
```

Check it with `lsbench validate DIR`. Use it as: {facts.use_cases}

## Citation

{PAPER_CITATION}
"""


# --------------------------------------------------------------------------- write and check


def write_card(directory: Path, manifest: dict[str, Any], facts: CardFacts) -> None:
    """Write ``croissant.json`` and ``README.md`` of the complete dataset in ``directory`` (atomically)."""
    directory = Path(directory)
    card = dumps_json(croissant(directory, manifest, facts))
    sheet = datasheet(manifest, facts)
    with atomic_open(directory / CROISSANT, "w") as f:
        f.write(card)
    if (directory / DATASHEET).exists() and not is_datasheet(directory / DATASHEET):
        return  # the user's own README stays
    with atomic_open(directory / DATASHEET, "w") as f:
        f.write(sheet)


def is_datasheet(path: Path) -> bool:
    """Whether ``path`` is a datasheet lsbench wrote (a user's own README is never replaced or removed)."""
    try:
        head = Path(path).read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return False
    return head.startswith("---\n") and "\nGenerated by lsbench " in head


def check_card(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems of ``croissant.json`` against the manifest (missing, unreadable, other shards,
    sha256s, splits or dataset); empty when it matches."""
    path = Path(directory) / CROISSANT
    fix = f"rewrite it with `lsbench card {directory}`"
    if not path.is_file():
        return [f"{CROISSANT} is missing (datasets made before lsbench wrote cards have none); {fix}"]
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"{CROISSANT} is not readable JSON ({e}); {fix}"]
    if not isinstance(card, dict) or card.get("conformsTo") != CONFORMS_TO:
        return [f"{CROISSANT} is not a Croissant 1.1 card; {fix}"]
    problems = []
    if card.get("name") != manifest.get("name"):
        problems.append(f"{CROISSANT} describes dataset {card.get('name')!r}, the manifest {manifest.get('name')!r}")
    files = {d.get("@id"): d for d in card.get("distribution", []) if isinstance(d, dict)
             and d.get("@type") == "cr:FileObject"}
    listed = {rec["name"]: rec for entry in manifest["splits"].values() for rec in entry.get("shards", [])}
    for name in sorted(set(listed) - set(files)):
        problems.append(f"{CROISSANT} does not list shard {name}; {fix}")
    for name in sorted(set(files) - set(listed)):
        problems.append(f"{CROISSANT} lists {name}, which the manifest does not; {fix}")
    for name in sorted(set(files) & set(listed)):
        if files[name].get("sha256") != listed[name].get("sha256"):
            problems.append(f"{CROISSANT}: the sha256 of {name} differs from the manifest's; {fix}")
    split_set = next((r for r in card.get("recordSet", []) if isinstance(r, dict) and r.get("@id") == "splits"), {})
    splits = sorted(row.get("splits/name") for row in split_set.get("data", []) if isinstance(row, dict))
    if splits != sorted(manifest["splits"]):
        problems.append(f"{CROISSANT} lists splits {splits}, the manifest {sorted(manifest['splits'])}; {fix}")
    return problems
