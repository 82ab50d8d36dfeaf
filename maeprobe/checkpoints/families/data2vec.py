"""data2vec-vision (Baevski et al., 2022): BEiT's architecture (built as timm's ``Beit``), from HuggingFace
folders or files whose metadata names the family."""
from .base import HALF, Family, HfType

FAMILY = Family("data2vec", "data2vec-vision", *HALF, builder="beit")
HF_TYPES = {"data2vec-vision": HfType("data2vec", {"hidden_act": "gelu", "layer_norm_eps": 1e-12})}
