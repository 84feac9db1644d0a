"""Pretrained weights, read from disk only: checkpoint files and the local Hugging Face cache.

Kept apart from the registry because both model families load weights (``{arch}_{method}`` models
copy a backbone's matching tensors, ``timm:`` models need every tensor) and because the one promise
here — weights never come from the network — is easiest to audit in one small module.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, as ``huggingface_hub`` resolves it (``HF_HUB_CACHE``, ``HF_HOME``)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return Path(os.environ.get("HF_HUB_CACHE") or home / "hub")


def pretrained_cfg(timm_name: str):
    """timm's pretrained config of ``NAME[.TAG]``; an unknown tag or a name without published weights is one
    :class:`ConfigError` line naming the tags there are."""
    import timm
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(timm_name)
    except RuntimeError as e:  # timm: "Invalid pretrained tag (x) for resnet18."
        base = timm_name.split(".", 1)[0]
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(base) if n.split(".", 1)[0] == base]
        raise ConfigError(f"{e} Published tags: {', '.join(tags) or 'none'}") from None
    if cfg is None:
        raise ConfigError(f"timm has no published weights for {timm_name}")
    return cfg


def cached_weights(timm_name: str,
                   otherwise: str = "or pass --pretrained PATH to a checkpoint file, or --pretrained none") -> Path:
    """The weights file of ``timm_name``'s pretrained tag (``NAME.TAG``, or the default) in the local HF
    cache — looked up locally only, never downloaded; ``otherwise`` ends the error's hint."""
    from huggingface_hub import hf_hub_download

    repo = pretrained_cfg(timm_name).hf_hub_id
    if not repo:
        raise ConfigError(f"timm publishes the weights of {timm_name} at a URL, not on the Hugging Face hub: "
                          f"download them once and {otherwise.removeprefix('or ')}")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=True, cache_dir=hub_cache()))
        except Exception:  # noqa: BLE001 - not in the cache under this name
            continue
    raise ConfigError(
        f"pretrained weights for {timm_name} are not in the local cache: put the Hugging Face repo {repo} "
        f"(model.safetensors) at {hub_cache() / ('models--' + repo.replace('/', '--'))}, {otherwise}"
    )


def load_problem(error: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a few words (torch's own text is a
    dozen lines on ``weights_only`` that end in a documentation link)."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global[^\w]+(?:\[)?([\w.]+)", text)
    if "Weights only load failed" in text and found:
        return (f"loading it would import Python code ({found.group(1)}), which lsbench refuses: weights are read "
                "with weights_only=True, so only tensors and plain data load and nothing in a file runs")
    if "Weights only load failed" in text or isinstance(error, EOFError) or "inline_container" in text:
        return "it is not a complete torch file (empty, truncated, damaged, or pickled some other way)"
    if "TorchScript" in text:
        return "it is a TorchScript archive, not a checkpoint or a state dict"
    first = " ".join(text.split("\n", 1)[0].split())[:200]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def torch_load(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's warnings about the file (they
    come just before a refusal); a failure is one :class:`ConfigError` line (:func:`load_problem`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, not a torch file, or refused by weights_only
        raise ConfigError(f"cannot read {what} {path}: {load_problem(e)}") from e


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from a ``.pth``/``.bin`` (``weights_only``) or ``.safetensors`` file, unwrapped from
    the usual ``state_dict``/``model``/``state_dict_ema`` keys; of an lsbench checkpoint, its plain
    backbone (without canonicalizers, :func:`.transfer.backbone_state`)."""
    if not path.is_file():
        raise ConfigError(f"pretrained checkpoint {path} not found; pass an existing file or --pretrained none")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - any reader failure means an unusable file
            raise ConfigError(f"cannot read pretrained checkpoint {path}: {load_problem(e)}") from e
    else:
        state = torch_load(path, "pretrained checkpoint")
    from .checkpoint import FORMAT  # lazily: checkpoint imports the registry, which imports this module

    if isinstance(state, dict) and state.get("format") == FORMAT:
        from .transfer import backbone_state

        return backbone_state(state)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{path} does not hold a state dict")
    return state


def load_backbone_weights(backbone: nn.Module, state: dict[str, Tensor], source: str) -> int:
    """Copy matching tensors (classifier heads of another size are skipped); returns the count."""
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise ConfigError(
            f"{source} matches only {len(usable)} of {len(own)} tensors of this backbone; "
            "is it a checkpoint of the same timm architecture and size?"
        )
    backbone.load_state_dict(usable, strict=False)
    return len(usable)


def apply_pretrained(backbone: nn.Module, pretrained: str | Path | None, *, timm_name: str,
                     timm_kwargs: dict[str, Any], unpublished: str | None = None) -> None:
    """Load ``pretrained`` into ``backbone``: ``None``/``"none"`` keeps the random init, ``"timm"`` reads
    ``timm_name``'s default tag from the local cache (built with ``timm_kwargs``), anything else is a
    checkpoint file.  ``unpublished`` names a model that has no published weights (``"timm"`` is refused)."""
    import timm

    if pretrained is None or str(pretrained).lower() == "none":
        return
    if str(pretrained).lower() == "timm":
        if unpublished:
            raise ConfigError(f"no published weights for {unpublished}; use --pretrained none")
        path = cached_weights(timm_name)
        try:  # timm's own loader applies the model's checkpoint filter (e.g. position-embedding resize)
            ref = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                    num_classes=0, **timm_kwargs)
        except Exception as e:  # noqa: BLE001 - corrupt or mismatched file
            raise ConfigError(f"cannot load the cached weights {path} ({type(e).__name__}: {e})") from e
        load_backbone_weights(backbone, ref.state_dict(), f"the cached {timm_name}")
        return
    load_backbone_weights(backbone, read_state_dict(Path(pretrained)), str(pretrained))
