"""A local Hugging Face hub cache laid out as a real download, holding seeded random timm weights.

``populate(hub, "resnet18.a1_in1k")`` writes ``hub/models--timm--resnet18.a1_in1k/snapshots/<rev>/
model.safetensors`` and ``refs/main`` — the layout ``huggingface_hub`` leaves after
``hf_hub_download`` — so the real loading path (``local_files_only`` lookup, timm's pretrained
loader and its checkpoint filters) runs on it.  Random weights of the real architecture: predictions
are arbitrary but deterministic, which is all an oracle comparison needs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def populate(hub: Path, timm_name: str, seed: int = 0) -> Path:
    """Save seeded random weights of ``timm_name`` (``NAME.TAG``) into ``hub``; returns the weights file."""
    import timm
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(timm_name).hf_hub_id
    torch.manual_seed(seed)
    model = timm.create_model(timm_name, pretrained=False)
    with torch.no_grad():  # timm zero-initialises some layers (e.g. ViT heads): give every tensor values
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    revision = hashlib.sha1(f"{timm_name}-{seed}".encode()).hexdigest()
    folder = hub / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
