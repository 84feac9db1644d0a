"""The learned backends: GroundingDINO (detect), SAM (segment) and LaMa (inpaint), from local checkpoints.

Nothing is downloaded: every model loads from a local path, once per process (a module-level cache
keyed by the checkpoint's files with their sizes and mtimes, and the device), and runs batched on the device.

=========  ==================================================  =============================================
backend    checkpoint (option)                                 implementation
=========  ==================================================  =============================================
``gdino``  ``gdino_checkpoint``: a transformers-format folder  ``transformers.GroundingDinoForObjectDetection``
           (``config.json``, ``model.safetensors``, the        + its processor (``AutoProcessor``); the
           processor and tokenizer files), e.g. a local copy   tokenizer may instead come from
           of ``IDEA-Research/grounding-dino-tiny``            ``text_encoder`` (a bert-base-uncased folder)
``sam``    ``sam_checkpoint``: ``sam_vit_{h,l,b}_*.pth``       ``segment_anything``'s ``Sam`` modules, built
           (``sam_type`` checks which one)                     with the encoder read off the state dict
``lama``   ``lama_checkpoint``: TorchScript ``big-lama.pt``    ``torch.jit.load`` (the file simple-lama-
                                                               inpainting uses; that package is not needed)
=========  ==================================================  =============================================

Batching never changes a photo's result: photos are only batched with photos of the same model input
shape (GroundingDINO: the processor's resized size; LaMa: the size padded to a multiple of 8; SAM pads
every photo to its square input anyway), so a photo's output does not depend on its batch companions
(batched == one-by-one up to float rounding).  On CUDA, GroundingDINO and SAM run under float16 autocast
(``fp16``, default on); LaMa always runs float32 (its Fourier convolutions use cuFFT, whose half precision
only takes power-of-two sizes).  A CUDA out-of-memory error halves the batch and retries
(:func:`run_in_batches`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ...errors import ConfigError, LsbenchError
from .cache import file_fingerprint
from .types import Box, Detection, Segmentation

T = TypeVar("T")
R = TypeVar("R")

INSTALL_HINT = "pip install lsbench[imagenet]"
DEFAULT_BATCH_SIZE = 8
BOX_THRESHOLD = 0.35
TEXT_THRESHOLD = 0.25
LAMA_MODULO = 8

# segment_anything/build_sam.py: encoder (embed_dim, depth, num_heads, global_attn_indexes) of each type;
# all three use 1024-pixel inputs, 16-pixel patches, 14-token windows and a 256-wide prompt space.
SAM_TYPES: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
}
SAM_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}

_MODELS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


# --------------------------------------------------------------------------- shared helpers


def _oom_errors() -> tuple[type[BaseException], ...]:
    kinds = {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)}
    return tuple(k for k in kinds if k is not None)


OOM_ERRORS = _oom_errors()


def run_in_batches(
    fn: Callable[[list[T]], list[R]], items: Sequence[T], batch_size: int, what: str
) -> tuple[list[R], int]:
    """``fn`` over ``items`` in chunks of at most ``batch_size``, halving the chunk on out-of-memory.

    ``fn`` maps a chunk to one result per item.  When it raises ``torch.OutOfMemoryError`` (CUDA's
    out-of-memory error is the same class) the CUDA cache is emptied and the same items are retried at
    half the chunk size, down to 1; out of memory at 1 raises :class:`LsbenchError` (one line naming
    ``what``).  Returns the results in item order and the batch size that finally worked (callers keep
    it for their next call).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    items = list(items)
    results: list[R] = []
    size, start = batch_size, 0
    while start < len(items):
        chunk = items[start : start + size]
        try:
            out = fn(chunk)
        except OOM_ERRORS:
            out = None
        if out is None:  # handled outside the except block so the failed batch's tensors are freed first
            if len(chunk) == 1:
                raise LsbenchError(
                    f"{what} ran out of GPU memory on a single photo: free the GPU, use another --device, "
                    "or an offline backend"
                ) from None
            size = len(chunk) // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        if len(out) != len(chunk):
            raise RuntimeError(f"{what}: {len(out)} results for a batch of {len(chunk)}")
        results.extend(out)
        start += len(chunk)
    return results, size


def _groups(keys: Sequence[Any]) -> list[list[int]]:
    """Indices grouped by equal key, in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _device(options: dict[str, Any]) -> torch.device:
    name = options.get("device") or "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {name!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: torch sees no CUDA GPU here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise ConfigError(f"--device {name!r}: the learned backends run on cpu or cuda")
    return device


def _batch_size(options: dict[str, Any]) -> int:
    value = options.get("batch_size")
    if value is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {value!r}")
    return value


def _threshold(options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key)
    if value is None:
        return default
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{key.replace('_', '-')} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--{key.replace('_', '-')} must be in [0, 1], got {value}")
    return value


def _fp16(options: dict[str, Any]) -> bool:
    """``options['fp16']``, on unless set false (it only takes effect on CUDA)."""
    value = options.get("fp16")
    return True if value is None else bool(value)


def _autocast(device: torch.device, fp16: bool) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA when ``fp16``; nothing (float32) otherwise."""
    if fp16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _require(module: str, backend: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = error.name or module
        raise ConfigError(
            f"the {backend} backend needs the python package {missing!r}, which is not installed: {INSTALL_HINT}"
        ) from None


def _local_path(options: dict[str, Any], key: str, what: str, hint: str) -> Path:
    """``options[key]`` as an existing, readable path, else a one-line :class:`ConfigError`.

    ``hint`` completes "…: pass <flag> with <hint>".
    """
    flag = "--" + key.replace("_", "-")
    value = options.get(key)
    if not value:
        raise ConfigError(f"{what} needs a local checkpoint: pass {flag} with {hint}")
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"{what} checkpoint {path} not found: pass {flag} with {hint}")
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise ConfigError(f"{what} checkpoint {path} is not readable: pass {flag} with {hint}")
    return path


def _cached(key: tuple, build: Callable[[], T]) -> T:
    """The model under ``key``, built once per process."""
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = build()
        return _MODELS[key]


def clear_model_cache() -> None:
    """Forget every loaded model (tests, or to free GPU memory)."""
    with _LOCK:
        _MODELS.clear()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and info logs off while loading (library code does not print)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- GroundingDINO

GDINO_HINT = (
    "a local transformers-format GroundingDINO folder (config.json, model.safetensors, processor and tokenizer "
    "files, e.g. a copy of IDEA-Research/grounding-dino-tiny), or use --detector annotation or prior (offline)"
)


def _caption(prompt: str) -> str:
    """GroundingDINO's caption for a class name: lower case, stripped, ending with '.'."""
    caption = prompt.lower().strip()
    return caption if caption.endswith(".") else caption + "."


class GroundingDinoDetector:
    """GroundingDINO (transformers' ``GroundingDinoForObjectDetection``) prompted with the class name.

    Per photo: the caption is the lower-cased class name ending with ``"."``; a query counts when its best
    text-token probability exceeds ``box_threshold`` (0.35) and one of the class name's own tokens
    exceeds ``text_threshold`` (0.25) (GroundingDINO's phrase for it is not empty); the top-scoring such
    query's box, clipped to the photo, is the detection.  ``score`` is that best probability in [0, 1].
    """

    name = "gdino"

    def __init__(
        self,
        model: Any,
        processor: Any,
        device: torch.device,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        fp16: bool = True,
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
        backend: str = "gdino:transformers",
    ):
        self.model, self.processor, self.device = model, processor, device
        self.batch_size, self.fp16 = batch_size, fp16
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.backend = backend
        tok = processor.tokenizer
        extra = [tok.convert_tokens_to_ids(t) for t in (".", "?")]
        self._non_word_ids = torch.tensor(
            sorted({i for i in [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, *extra] if i is not None})
        )

    @classmethod
    def load(cls, options: dict[str, Any]) -> GroundingDinoDetector:
        """From ``options['gdino_checkpoint']`` (a transformers folder); see the module docstring.

        The tokenizer comes from ``options['text_encoder']`` when given (a bert-base-uncased folder), else
        from the checkpoint folder.  ``gdino_config`` (the original repository's python config) is not used.
        """
        path = _local_path(options, "gdino_checkpoint", "GroundingDINO", GDINO_HINT)
        if path.is_file():
            raise ConfigError(
                f"GroundingDINO checkpoint {path} is a file (the original groundingdino .pth format, which lsbench "
                "does not load): convert it with convert_grounding_dino_to_hf.py from the transformers repository "
                f"or pass --gdino-checkpoint with {GDINO_HINT}"
            )
        if not (path / "config.json").is_file():
            raise ConfigError(f"GroundingDINO checkpoint {path} has no config.json: pass --gdino-checkpoint with "
                              f"{GDINO_HINT}")
        text_encoder = options.get("text_encoder")
        text_path = _local_path(options, "text_encoder", "the GroundingDINO tokenizer",
                                "a local bert-base-uncased folder") if text_encoder else None
        device, batch_size = _device(options), _batch_size(options)
        box_threshold = _threshold(options, "box_threshold", BOX_THRESHOLD)
        text_threshold = _threshold(options, "text_threshold", TEXT_THRESHOLD)
        _require("transformers", "gdino")
        key = ("gdino", file_fingerprint(path), file_fingerprint(text_path) if text_path else None, str(device))
        model, processor = _cached(key, lambda: _load_gdino(path, text_path, device))
        return cls(
            model,
            processor,
            device,
            batch_size=batch_size,
            fp16=_fp16(options),
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            backend=f"gdino:transformers:{path.name}",
        )

    def detect(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], annotations: Sequence[list[Box] | None]
    ) -> list[Detection | None]:
        """One detection per ``(H, W, 3)`` uint8 photo (box in pixels), ``None`` where no box passes.

        ``annotations`` are not used (the detector only sees the photo and its class name).
        """
        if not len(images) == len(prompts) == len(annotations):
            raise ValueError(f"{len(images)} images, {len(prompts)} prompts, {len(annotations)} annotation lists")
        pixels = [self.processor.image_processor(images=[_rgb(im)], return_tensors="pt")["pixel_values"]
                  for im in images]
        captions = [_caption(p) for p in prompts]
        results: list[Detection | None] = [None] * len(images)
        for group in _groups([tuple(p.shape) for p in pixels]):

            def run(idx: list[int]) -> list[Detection | None]:
                return self._run(torch.cat([pixels[i] for i in idx]), [captions[i] for i in idx],
                                 [images[i].shape[:2] for i in idx])

            out, self.batch_size = run_in_batches(run, group, self.batch_size, "GroundingDINO")
            for i, det in zip(group, out):
                results[i] = det
        return results

    def _run(self, pixel_values: torch.Tensor, captions: list[str], sizes: list[tuple[int, int]]
             ) -> list[Detection | None]:
        text = self.processor.tokenizer(captions, padding="longest", return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in text.items()}
        pixel_values = pixel_values.to(self.device)
        with torch.inference_mode(), _autocast(self.device, self.fp16):
            pixel_mask = torch.ones_like(pixel_values[:, 0], dtype=torch.long)  # same-size photos: no padding
            out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, **inputs)
        probs = out.logits.float().sigmoid().cpu()  # (B, queries, text positions); padded positions are 0
        boxes = out.pred_boxes.float().cpu()  # (B, queries, 4) centre x, centre y, w, h relative to the photo
        # the class name's own tokens (not [CLS], [SEP], '.', padding), on the logits' text positions
        n = min(probs.shape[-1], text["input_ids"].shape[1])
        words = torch.zeros(probs.shape[0], probs.shape[-1], dtype=torch.bool)
        ids = text["input_ids"][:, :n]
        words[:, :n] = (text["attention_mask"][:, :n] > 0) & ~torch.isin(ids, self._non_word_ids)
        return [self._pick(p, b, w, hw) for p, b, w, hw in zip(probs, boxes, words, sizes)]

    def _pick(self, probs: torch.Tensor, boxes: torch.Tensor, words: torch.Tensor, hw: tuple[int, int]
              ) -> Detection | None:
        h, w = hw
        scores = probs.max(dim=-1).values
        grounded = (probs[:, words] > self.text_threshold).any(dim=-1)
        cx, cy, bw, bh = boxes.unbind(-1)
        x0 = ((cx - bw / 2) * w).clamp(0, w)
        x1 = ((cx + bw / 2) * w).clamp(0, w)
        y0 = ((cy - bh / 2) * h).clamp(0, h)
        y1 = ((cy + bh / 2) * h).clamp(0, h)
        keep = (scores > self.box_threshold) & grounded & (x1 > x0) & (y1 > y0)
        if not bool(keep.any()):
            return None
        q = int(torch.where(keep, scores, torch.full_like(scores, -1.0)).argmax())
        box = (float(x0[q]), float(y0[q]), float(x1[q]), float(y1[q]))
        return Detection(box=box, score=float(scores[q]), backend=self.backend)


def _load_gdino(path: Path, text_path: Path | None, device: torch.device) -> tuple[Any, Any]:
    from transformers import (
        AutoImageProcessor,
        AutoProcessor,
        AutoTokenizer,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
    )

    def bad(error: BaseException) -> ConfigError:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return ConfigError(f"GroundingDINO checkpoint {path} could not be loaded ({first}): pass --gdino-checkpoint "
                           f"with {GDINO_HINT}")

    with _quiet_transformers():
        try:
            model = GroundingDinoForObjectDetection.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise bad(error) from None
        try:
            if text_path is not None:
                tokenizer = AutoTokenizer.from_pretrained(text_path, local_files_only=True)
                processor = GroundingDinoProcessor(
                    image_processor=AutoImageProcessor.from_pretrained(path, local_files_only=True),
                    tokenizer=tokenizer,
                )
            else:
                processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"GroundingDINO processor/tokenizer files could not be loaded from {text_path or path} ({first}): "
                "keep the processor and tokenizer files in the --gdino-checkpoint folder or pass --text-encoder "
                "with a local bert-base-uncased folder"
            ) from None
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise ConfigError(f"GroundingDINO checkpoint {path} holds no GroundingDINO processor: pass "
                          f"--gdino-checkpoint with {GDINO_HINT}")
    return model.to(device).eval(), processor


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    return image


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


# --------------------------------------------------------------------------- LaMa

LAMA_HINT = "a local TorchScript big-lama.pt, or use --inpainter opencv (offline)"


def _pad_to_modulo(array: np.ndarray, mod: int) -> np.ndarray:
    """Pad an ``(H, W, ...)`` array at the bottom/right to multiples of ``mod``, mirroring the edge
    (numpy 'symmetric', as LaMa's and simple-lama-inpainting's ``pad_img_to_modulo``)."""
    h, w = array.shape[:2]
    pad = [(0, -h % mod), (0, -w % mod)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="symmetric")


class LamaInpainter:
    """LaMa from the TorchScript ``big-lama.pt``: ``model(image, mask)`` with ``image`` ``(B, 3, H, W)``
    float in [0, 1], ``mask`` ``(B, 1, H, W)`` float {0, 1} (1 = fill), H and W multiples of 8, returns
    ``(B, 3, H, W)`` in [0, 1].

    Photos are padded (mirrored) to multiples of 8 and batched with photos of the same padded size; the
    output is cropped back, converted like simple-lama (``clip(x * 255, 0, 255).astype(uint8)``) and
    composited so pixels outside the mask are exactly the input's, whatever the network returns.
    """

    name = "lama"

    def __init__(self, model: Any, device: torch.device, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 backend: str = "lama:torchscript"):
        self.model, self.device, self.batch_size, self.backend = model, device, batch_size, backend

    @classmethod
    def load(cls, options: dict[str, Any]) -> LamaInpainter:
        """From ``options['lama_checkpoint']`` (a TorchScript file)."""
        path = _local_path(options, "lama_checkpoint", "LaMa", LAMA_HINT)
        if path.is_dir():
            raise ConfigError(f"LaMa checkpoint {path} is a folder: pass --lama-checkpoint with {LAMA_HINT}")
        device, batch_size = _device(options), _batch_size(options)
        model = _cached(("lama", file_fingerprint(path), str(device)), lambda: _load_lama(path, device))
        return cls(model, device, batch_size=batch_size, backend=f"lama:torchscript:{path.name}")

    def inpaint(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Fill ``masks`` (``(H, W)`` bool, True = fill) in ``(H, W, 3)`` uint8 photos; returns ``(H, W, 3)`` uint8."""
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        for image, mask in zip(images, masks):
            _rgb(image)
            if np.shape(mask) != image.shape[:2]:
                raise ValueError(f"mask {np.shape(mask)} does not match image {image.shape[:2]}")
        results: list[np.ndarray | None] = [None] * len(images)
        todo = []
        for i, mask in enumerate(masks):
            if np.any(mask):
                todo.append(i)
            else:
                results[i] = np.array(images[i], copy=True)  # nothing to fill
        keys = [tuple(-(-s // LAMA_MODULO) * LAMA_MODULO for s in images[i].shape[:2]) for i in todo]
        for group in _groups(keys):
            idx = [todo[g] for g in group]
            out, self.batch_size = run_in_batches(
                lambda chunk: self._run([images[i] for i in chunk], [masks[i] for i in chunk]),
                idx, self.batch_size, "LaMa",
            )
            for i, result in zip(idx, out):
                results[i] = result
        return results  # type: ignore[return-value]

    def _run(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        bool_masks = [np.asarray(m, dtype=bool) for m in masks]
        x = np.stack([_pad_to_modulo(im, LAMA_MODULO) for im in images]).astype(np.float32) / 255.0
        m = np.stack([_pad_to_modulo(mk, LAMA_MODULO) for mk in bool_masks]).astype(np.float32)
        image = torch.from_numpy(x).permute(0, 3, 1, 2).to(self.device)
        mask = torch.from_numpy(m)[:, None].to(self.device)
        with torch.inference_mode():
            pred = self.model(image, mask)  # float32 always: see the module docstring
        pred = pred.float().permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for p, im, mk in zip(pred, images, bool_masks):
            h, w = im.shape[:2]
            filled = np.clip(p[:h, :w] * 255, 0, 255).astype(np.uint8)
            out.append(np.where(mk[..., None], filled, im))
        return out


def _load_lama(path: Path, device: torch.device) -> Any:
    try:
        with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated; big-lama.pt is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location=device)
    except Exception as error:  # TorchScript raises RuntimeError/ValueError/zip errors for a non-TorchScript file
        raise ConfigError(f"LaMa checkpoint {path} is not a TorchScript model ({type(error).__name__}): pass "
                          f"--lama-checkpoint with {LAMA_HINT}") from None
    return model.eval()
