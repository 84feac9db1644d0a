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

from .common import (
    BOX_THRESHOLD,
    DEFAULT_BATCH_SIZE,
    INSTALL_HINT,
    LAMA_MODULO,
    OOM_ERRORS,
    TEXT_THRESHOLD,
    clear_model_cache,
    run_in_batches,
)
from .gdino import GDINO_HINT, GroundingDinoDetector
from .lama import LAMA_HINT, LamaInpainter
from .sam import SAM_FILES, SAM_TYPES, SamSegmenter, build_sam, sam_config, sam_type_of

__all__ = [
    "BOX_THRESHOLD", "DEFAULT_BATCH_SIZE", "GDINO_HINT", "INSTALL_HINT", "LAMA_HINT", "LAMA_MODULO", "OOM_ERRORS",
    "SAM_FILES", "SAM_TYPES", "TEXT_THRESHOLD", "GroundingDinoDetector", "LamaInpainter", "SamSegmenter", "build_sam",
    "clear_model_cache", "run_in_batches", "sam_config", "sam_type_of",
]
