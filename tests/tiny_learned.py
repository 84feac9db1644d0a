"""GroundingDINO and SAM at tiny configurations of their real architectures, with seeded random weights.

Shared by ``test_imagenet_learned.py`` and ``perf/imagenet_learned.py --tiny`` (the CPU dry run of
``perf/gpu_check.py``): transformers' ``GroundingDinoForObjectDetection`` with a 1-block-per-stage Swin
and a 1-layer BERT, saved with ``save_pretrained`` as a released folder is; segment_anything's ``Sam``
with a 2-block ``ImageEncoderViT`` at 128² (the state dict layout of ``sam_vit_*.pth``).  Random weights
give arbitrary boxes and masks: fine for contracts and timing paths, meaningless as detections.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

WORDS = ["goldfish", "tench", "great", "white", "shark", "cat"]


def tiny_vocab(words: list[str] = WORDS) -> dict[str, int]:
    """A BERT word-piece vocabulary with bert-base-uncased's ids for [PAD] [UNK] [CLS] [SEP] [MASK] . ?
    (GroundingDINO's text masks look for ids 101, 102, 1012 and 1029); ``words`` from id 200."""
    tokens = [f"[unused{i}]" for i in range(1100)]
    for i, t in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}.items():
        tokens[i] = t
    for i, w in enumerate(words):
        tokens[200 + i] = w
    return {t: i for i, t in enumerate(tokens)}


def save_tiny_gdino(folder: Path, *, with_tokenizer: bool = True, words: list[str] = WORDS) -> Path:
    """A tiny GroundingDINO folder (model, image processor, tokenizer; ``with_tokenizer=False``: the
    tokenizer in ``folder.parent / 'bert'``, as a separate text-encoder folder)."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=1100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=20, max_text_len=32, encoder_n_points=2, decoder_n_points=2,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    tokenizer = BertTokenizer(vocab=tiny_vocab(words), do_lower_case=True)
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    if with_tokenizer:
        GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    else:
        image_processor.save_pretrained(folder)
        tokenizer.save_pretrained(folder.parent / "bert")
    return folder


def tiny_sam_state() -> dict[str, torch.Tensor]:
    """segment_anything's Sam assembled from its own modules (as build_sam does) with a tiny ViT encoder."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=32, img_size=128, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=16,
                                      qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=4,
                                      out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(8, 8), input_image_size=(128, 128),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    with torch.no_grad():  # ImageEncoderViT starts pos_embed and rel_pos at zero: give them values
        for name, p in sam.image_encoder.named_parameters():
            if "pos" in name:
                p.normal_(0, 0.02)
    return sam.state_dict()
