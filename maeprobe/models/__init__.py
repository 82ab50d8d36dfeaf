"""Models: the MAE encoder-decoder on timm parts, and the table of known releases."""
from .mae import ArchConfig, MaskedAutoencoderViT, build_mae, resize_input, sincos_pos_embed
from .registry import IMAGENET_MEAN, IMAGENET_STD, PRESETS

__all__ = ["ArchConfig", "MaskedAutoencoderViT", "build_mae", "resize_input", "sincos_pos_embed", "IMAGENET_MEAN",
           "IMAGENET_STD", "PRESETS"]
