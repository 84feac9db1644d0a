"""SAM (segment): segment-anything's modules, built from the checkpoint's own state-dict shapes."""


from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ....errors import ConfigError
from ..cache import file_fingerprint
from ..types import Box, Segmentation
from .common import (
    DEFAULT_BATCH_SIZE,
    _autocast,
    _batch_size,
    _cached,
    _device,
    _fp16,
    _local_path,
    _require,
    _rgb,
    run_in_batches,
)

# segment_anything/build_sam.py: encoder (embed_dim, depth, num_heads, global_attn_indexes) of each type;
# all three use 1024-pixel inputs, 16-pixel patches, 14-token windows and a 256-wide prompt space.
SAM_TYPES: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
}
SAM_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}


# --------------------------------------------------------------------------- SAM


def _sam_hint(sam_type: str | None) -> str:
    file = SAM_FILES.get(sam_type or "vit_h", "sam_vit_h_4b8939.pth")
    return f"a local {file}, or use --segmenter grabcut (offline)"


def sam_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The image-encoder configuration of a SAM state dict, read off its tensor shapes.

    Returns ``embed_dim``, ``depth``, ``num_heads``, ``global_attn_indexes``, ``window_size``, ``img_size``,
    ``patch_size`` and ``out_chans`` (the prompt-space width): what ``segment_anything.build_sam`` passes to
    ``ImageEncoderViT`` (``pos_embed`` is ``(1, img/patch, img/patch, embed_dim)``; each block's
    ``rel_pos_h`` is ``(2 * tokens - 1, head_dim)`` with ``tokens`` the grid side for global blocks, the
    window side for windowed ones).
    """
    pos = state["image_encoder.pos_embed"]
    patch = int(state["image_encoder.patch_embed.proj.weight"].shape[-1])
    grid, embed_dim = int(pos.shape[1]), int(pos.shape[-1])
    depth = 0
    while f"image_encoder.blocks.{depth}.norm1.weight" in state:
        depth += 1
    if depth == 0:
        raise KeyError("image_encoder.blocks.0")
    rel = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
    head_dim = int(rel[0][1])
    global_idx = tuple(i for i, shape in enumerate(rel) if shape[0] == 2 * grid - 1)
    windows = {(int(shape[0]) + 1) // 2 for i, shape in enumerate(rel) if i not in global_idx}
    if len(windows) > 1:
        raise KeyError(f"image_encoder blocks with different window sizes {sorted(windows)}")
    return {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": embed_dim // head_dim,
        "global_attn_indexes": global_idx,
        "window_size": windows.pop() if windows else 14,
        "img_size": grid * patch,
        "patch_size": patch,
        "out_chans": int(state["image_encoder.neck.0.weight"].shape[0]),
    }


def sam_type_of(config: dict[str, Any]) -> str | None:
    """``vit_h``/``vit_l``/``vit_b`` when ``config`` (:func:`sam_config`) is that released model, else None."""
    for name, (dim, depth, heads, global_idx) in SAM_TYPES.items():
        standard = dict(embed_dim=dim, depth=depth, num_heads=heads, global_attn_indexes=global_idx, window_size=14,
                        img_size=1024, patch_size=16, out_chans=256)
        if config == standard:
            return name
    return None


def build_sam(config: dict[str, Any]) -> torch.nn.Module:
    """segment_anything's ``Sam`` exactly as ``build_sam._build_sam`` assembles it, for an encoder ``config``.

    For the released types this is the same module tree as ``sam_model_registry[type]()``; other
    (smaller) encoders are built the same way around the standard prompt encoder and mask decoder.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    prompt_dim = config["out_chans"]
    embedding = config["img_size"] // config["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=config["depth"],
            embed_dim=config["embed_dim"],
            img_size=config["img_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config["num_heads"],
            patch_size=config["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(config["global_attn_indexes"]),
            window_size=config["window_size"],
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(embedding, embedding),
            input_image_size=(config["img_size"], config["img_size"]),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


class SamSegmenter:
    """SAM prompted with the box; ``multimask_output=False`` (one mask), as in the paper's code.

    Per photo (like ``SamPredictor``): resize so the long side is the encoder's input size (1024 for the
    released models), normalise, pad to the square input; the image encoder runs on the whole batch, the
    prompt encoder and mask decoder per photo (they are cheap), the low-resolution mask logits are upscaled
    to the photo and thresholded at ``mask_threshold`` (0).  ``score`` is SAM's predicted IoU.
    """

    name = "sam"

    def __init__(self, model: Any, device: torch.device, *, batch_size: int = DEFAULT_BATCH_SIZE, fp16: bool = True,
                 backend: str = "sam"):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.model, self.device = model, device
        self.batch_size, self.fp16, self.backend = batch_size, fp16, backend
        self.transform = ResizeLongestSide(model.image_encoder.img_size)

    @classmethod
    def load(cls, options: dict[str, Any]) -> SamSegmenter:
        """From ``options['sam_checkpoint']`` (a SAM state dict); ``sam_type`` (vit_h|vit_l|vit_b) is checked
        against the checkpoint when given."""
        sam_type = options.get("sam_type") or None
        if sam_type is not None and sam_type not in SAM_TYPES:
            raise ConfigError(f"--sam-type {sam_type!r}: choose one of {', '.join(SAM_TYPES)}")
        path = _local_path(options, "sam_checkpoint", "SAM", _sam_hint(sam_type))
        if path.is_dir():
            raise ConfigError(f"SAM checkpoint {path} is a folder: pass --sam-checkpoint with {_sam_hint(sam_type)}")
        device, batch_size = _device(options), _batch_size(options)
        _require("segment_anything", "sam")
        model, found = _cached(("sam", file_fingerprint(path), str(device)), lambda: _load_sam(path, device))
        if sam_type is not None and found != sam_type:
            raise ConfigError(
                f"SAM checkpoint {path} holds a {found} model, not {sam_type}: pass --sam-type {found} "
                f"or --sam-checkpoint with {_sam_hint(sam_type)}"
            )
        return cls(model, device, batch_size=batch_size, fp16=_fp16(options), backend=f"sam:{found}")

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[Box]) -> list[Segmentation]:
        """One ``(H, W)`` bool mask per ``(H, W, 3)`` uint8 photo, prompted by its ``(x0, y0, x1, y1)`` pixel box."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        out, self.batch_size = run_in_batches(
            lambda idx: self._run([images[i] for i in idx], [boxes[i] for i in idx]),
            list(range(len(images))), self.batch_size, "SAM",
        )
        return out

    def _run(self, images: list[np.ndarray], boxes: list[Box]) -> list[Segmentation]:
        sam = self.model
        resized = [self.transform.apply_image(_rgb(im)) for im in images]  # long side = encoder input, uint8
        results = []
        with torch.inference_mode(), _autocast(self.device, self.fp16):
            batch = torch.cat([  # normalised, padded to the encoder's square input: (B, 3, 1024, 1024)
                sam.preprocess(torch.as_tensor(r, device=self.device).permute(2, 0, 1)[None].float())
                for r in resized
            ])
            embeddings = sam.image_encoder(batch)  # (B, 256, 64, 64) for the released models
            dense_pe = sam.prompt_encoder.get_dense_pe()
            for j, (image, box) in enumerate(zip(images, boxes)):
                size = image.shape[:2]
                prompt = self.transform.apply_boxes(np.asarray(box, dtype=np.float64).reshape(1, 4), size)
                sparse, dense = sam.prompt_encoder(
                    points=None, boxes=torch.as_tensor(prompt, dtype=torch.float, device=self.device), masks=None
                )
                low_res, iou = sam.mask_decoder(
                    image_embeddings=embeddings[j : j + 1],
                    image_pe=dense_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
                logits = sam.postprocess_masks(low_res.float(), resized[j].shape[:2], size)
                mask = (logits[0, 0] > sam.mask_threshold).cpu().numpy()
                results.append(Segmentation(mask=mask, score=float(iou[0, 0].float()), backend=self.backend))
        return results


def _load_sam(path: Path, device: torch.device) -> tuple[Any, str]:
    hint = _sam_hint(None)
    try:
        with warnings.catch_warnings():  # torch warns before failing on a TorchScript file (e.g. big-lama.pt)
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds (pickle, zip, EOF) for a file that is not a checkpoint
        raise ConfigError(f"SAM checkpoint {path} is not a readable PyTorch checkpoint ({type(error).__name__}): "
                          f"pass --sam-checkpoint with {hint}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"SAM checkpoint {path} is not a state dict: pass --sam-checkpoint with {hint}")
    try:
        config = sam_config(state)
    except KeyError as error:
        raise ConfigError(f"SAM checkpoint {path} is not a segment-anything state dict (no {error.args[0]}): "
                          f"pass --sam-checkpoint with {hint}") from None
    found = sam_type_of(config) or "vit-{embed_dim}x{depth}-{img_size}px".format(**config)
    model = build_sam(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"SAM checkpoint {path} does not fit segment-anything's Sam ({first}): pass "
                          f"--sam-checkpoint with {hint}") from None
    return model.to(device).eval(), found


