"""SigLIP (Zhai et al., 2023): HuggingFace SigLIP folders (the vision tower, or the vision part of a full
SigLIP under ``vision_config``)."""
from .base import HALF, Family, HfType

FAMILY = Family("siglip", "SigLIP", *HALF)
_HF_DEFAULTS = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
HF_TYPES = {
    "siglip": HfType("siglip", _HF_DEFAULTS, vision_config=True),
    "siglip_vision_model": HfType("siglip", _HF_DEFAULTS),
}
