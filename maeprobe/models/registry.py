"""Known releases: what the weights do not say (head counts, normalisation constants).

Architecture functions set shapes only; this table holds the facts that cannot be read off a state
dict, in the spirit of timm's ``PretrainedCfg`` split.
"""
from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Encoder width -> number of heads of the published ViT families (DeiT, ViT, MAE, DINO, DINOv2).
# ViT-Ti/S/B/L use 64-wide heads; ViT-H/14 (1280) and ViT-g/14 (1408) use 16 heads of 80/88;
# DINOv2's ViT-g (1536) uses 24 heads of 64.
ENCODER_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1536: 24}

# MAE decoder width -> heads (facebookresearch/mae and the HuggingFace facebook/vit-mae-* releases).
DECODER_HEADS_BY_WIDTH = {512: 16}


def encoder_heads(width: int) -> int | None:
    """Number of encoder heads of the known releases of this width, or None."""
    return ENCODER_HEADS_BY_WIDTH.get(width)


def decoder_heads(width: int) -> int | None:
    """Number of decoder heads of the known MAE releases of this width, or None."""
    return DECODER_HEADS_BY_WIDTH.get(width)


# Architecture presets for models that maeprobe builds itself (pretraining, demo, tests).
# Named like facebookresearch/mae's ``mae_vit_base_patch16``.
PRESETS: dict[str, dict] = {
    "mae_vit_tiny_patch8_64": dict(
        img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3,
        decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4, mlp_ratio=4.0,
    ),
    "mae_vit_small_patch8_96": dict(  # maeprobe reproduce --scale small
        img_size=96, patch_size=8, embed_dim=384, depth=12, num_heads=6,
        decoder_embed_dim=256, decoder_depth=8, decoder_num_heads=8, mlp_ratio=4.0,
    ),
    "mae_vit_small_patch16_224": dict(
        img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
    ),
    "mae_vit_base_patch16": dict(
        img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
    ),
    "mae_vit_large_patch16": dict(
        img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
    ),
    "mae_vit_huge_patch14": dict(
        img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
    ),
}
