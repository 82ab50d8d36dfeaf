"""Models: the MAE encoder-decoder on timm parts, timm's BEiT and EVA behind the same interface, the table of
known releases, position-embedding resampling (``pos_embed``) and building from a state dict or for another input
size (``factory``). Nothing here imports ``maeprobe.checkpoints``, which builds on this package."""
from .mae import ArchConfig, MaskedAutoencoderViT, build_mae, resize_input, sincos_pos_embed
from .registry import IMAGENET_MEAN, IMAGENET_STD, PRESETS

__all__ = ["ArchConfig", "MaskedAutoencoderViT", "build_mae", "resize_input", "sincos_pos_embed", "IMAGENET_MEAN",
           "IMAGENET_STD", "PRESETS"]
