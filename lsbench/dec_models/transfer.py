"""Starting one lsbench model from another's checkpoint (``lsbench train --init-from``).

The paper's protocol (Sec. 5.1) trains Aug first and fine-tunes every other method from Aug's
weights, so any method must start from any other method's checkpoint of the same backbone.  Two
models of one arch and size share every backbone tensor; they differ only in where the adapted
layers sit inside a :class:`~.latent.CanonicalizedLayer` (``backbone.layer1.0.conv1.weight`` is
``backbone.layer1.layer.0.conv1.weight`` once ``layer1`` is adapted) and in the canonicalizers'
own tensors (``backbone.layer1.canonicalizer.*``).  :func:`split_state` maps a state dict to the
plain backbone's key names plus one state per canonicalizer, so

- the backbone and the heads (classifier, DPT) are copied whatever the two methods are;
- a canonicalizer of the target whose source layer holds one of the same kind and shapes (DEC from
  DEC, Canon from Canon) is copied; the others keep their fresh initialisation, which is the
  identity (zero-initialised output layers, :mod:`.canonicalizer`), so at step 0 the new model
  computes exactly what the source computes (tested for every family);
- a source canonicalizer the target has no place for is dropped (named in the report: the target
  then differs from the source, e.g. dec → aug).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import ConfigError
from .methods import get_method

CANONICALIZER, LAYER = "canonicalizer", "layer"


def split_state(state: dict[str, Tensor],
                layers: list[str] | None) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """``(plain, canon)``: ``plain`` under the keys the model has without adapted layers,
    ``canon[path]`` the tensors of the canonicalizer at backbone ``path``."""
    prefixes = {f"backbone.{p}.": p for p in layers or ()}
    plain: dict[str, Tensor] = {}
    canon: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        for prefix, path in prefixes.items():
            if key.startswith(prefix):
                head, _, rest = key[len(prefix):].partition(".")
                if head == LAYER:
                    plain[prefix + rest] = value
                elif head == CANONICALIZER:
                    canon.setdefault(path, {})[rest] = value
                else:  # a wrapper of a newer lsbench: refuse rather than guess
                    raise ConfigError(f"unexpected tensor {key} in an adapted layer")
                break
        else:
            plain[key] = value
    return plain, canon


def backbone_state(ckpt: dict[str, Any]) -> dict[str, Tensor]:
    """An lsbench checkpoint's backbone as a plain timm state dict (``--pretrained`` of one)."""
    plain, _ = split_state(ckpt["state_dict"], ckpt["model_config"].get("layers"))
    return {k[len("backbone."):]: v for k, v in plain.items() if k.startswith("backbone.")}


@dataclass
class InitReport:
    """What :func:`init_from` copied: tensor count and the adapted layers by outcome."""

    tensors: int = 0
    copied: list[str] = field(default_factory=list)  # canonicalizers taken from the source
    fresh: list[str] = field(default_factory=list)  # canonicalizers starting at the identity
    dropped: list[str] = field(default_factory=list)  # source canonicalizers with no place in the target

    def summary(self) -> str:
        parts = [f"{self.tensors} tensors"]
        for what, paths in (("canonicalizers copied", self.copied), ("new at the identity", self.fresh),
                            ("source canonicalizers dropped", self.dropped)):
            if paths:
                parts.append(f"{what}: {', '.join(paths)}")
        return "; ".join(parts)


# The fields two models must share for one's weights to be the other's starting point.
MATCH = ("task", "size", "num_classes", "in_chans")


def check_compatible(source: dict[str, Any], target: dict[str, Any], path: Path | str,
                     any_input_size: bool) -> None:
    """One line naming both models when ``source`` (a stored model config) cannot start ``target``."""
    src_arch, tgt_arch = source["name"].partition("_")[0], target["name"].partition("_")[0]
    fields = list(MATCH) + ([] if any_input_size else ["img_size"])
    diffs = [f"{k} {source.get(k)} vs {target.get(k)}" for k in fields if source.get(k) != target.get(k)]
    if src_arch != tgt_arch:
        diffs.insert(0, f"arch {src_arch} vs {tgt_arch}")
    if diffs:
        raise ConfigError(
            f"--init-from {path} holds a {source['name']} ({source['size']}, {source['num_classes']} classes, "
            f"{source['task']}) that cannot start {target['name']}: {'; '.join(diffs)}"
        )


def _same_kind(source: dict[str, Any], target: dict[str, Any]) -> bool:
    """Whether the two models' canonicalizers are one design (same method factory, grid, candidates)."""
    src, tgt = get_method(source["name"].partition("_")[2]), get_method(target["name"].partition("_")[2])
    keys = ("grid", "canon_candidates", "canon_width", "canon_resolution", "dec_width", "dec_resolution")
    return src.canonicalizer is tgt.canonicalizer and all(source.get(k) == target.get(k) for k in keys)


def init_from(model: Any, ckpt: dict[str, Any], path: Path | str, *, any_input_size: bool) -> InitReport:
    """Load ``ckpt`` (an lsbench checkpoint dict) into ``model`` (an :class:`~.registry.LSModel`) as its
    starting point; see the module docstring.  Incompatible models are one :class:`ConfigError` line."""
    from dataclasses import asdict

    source, target = ckpt["model_config"], asdict(model.config)
    check_compatible(source, target, path, any_input_size)
    own = model.state_dict()
    src_plain, src_canon = split_state(ckpt["state_dict"], source.get("layers"))
    tgt_plain, tgt_canon = split_state(own, target.get("layers"))
    missing = [k for k in tgt_plain if k not in src_plain or src_plain[k].shape != tgt_plain[k].shape]
    if missing:
        raise ConfigError(f"--init-from {path}: {len(missing)} tensors of {target['name']} are missing or of "
                          f"another shape in the checkpoint (first: {missing[0]}); is it from this lsbench version?")
    report = InitReport()
    new = {}
    prefixes = {p: f"backbone.{p}." for p in target.get("layers") or ()}
    for key in own:
        for prefix in prefixes.values():
            if key.startswith(prefix + LAYER + "."):
                new[key] = src_plain[prefix + key[len(prefix + LAYER + "."):]]
                break
        else:
            if key in tgt_plain:
                new[key] = src_plain[key]
    same = _same_kind(source, target)
    for p, tensors in tgt_canon.items():
        theirs = src_canon.get(p)
        fits = same and theirs is not None and theirs.keys() == tensors.keys() and all(
            theirs[k].shape == v.shape for k, v in tensors.items())
        (report.copied if fits else report.fresh).append(p)
        for k, v in tensors.items():
            new[f"{prefixes[p]}{CANONICALIZER}.{k}"] = theirs[k] if fits else v
    report.dropped = [p for p in src_canon if p not in report.copied]
    model.load_state_dict(new, strict=True)
    report.tensors = len(new)
    return report
