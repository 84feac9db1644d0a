"""GroundingDINO (detect): transformers' ``GroundingDinoForObjectDetection`` from a local folder."""


from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ....errors import ConfigError
from ..cache import file_fingerprint
from ..types import Box, Detection
from .common import (
    BOX_THRESHOLD,
    DEFAULT_BATCH_SIZE,
    TEXT_THRESHOLD,
    _autocast,
    _batch_size,
    _cached,
    _device,
    _fp16,
    _groups,
    _local_path,
    _quiet_transformers,
    _require,
    _rgb,
    _threshold,
    run_in_batches,
)

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



