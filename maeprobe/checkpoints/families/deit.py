"""DeiT (Touvron et al., 2021): facebookresearch/deit releases and HuggingFace DeiT; the distilled models
carry a distillation token (``dist_token``)."""
from .base import IMAGENET, Family, HfType, Layout

FAMILY = Family("deit", "DeiT", *IMAGENET, file_label="DeiT (distilled)")


def _matches(sd: dict, container: str) -> bool:
    return "dist_token" in sd


LAYOUT = Layout(FAMILY, _matches)
HF_TYPES = {"deit": HfType("deit", {"hidden_act": "gelu", "layer_norm_eps": 1e-12})}
