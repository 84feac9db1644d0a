"""LaMa (inpaint): the TorchScript ``big-lama.pt``, padded to a multiple of 8, pixels outside the mask exact."""


from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ....errors import ConfigError
from ..cache import file_fingerprint
from .common import (
    DEFAULT_BATCH_SIZE,
    LAMA_MODULO,
    _batch_size,
    _cached,
    _device,
    _groups,
    _local_path,
    _rgb,
    run_in_batches,
)

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
