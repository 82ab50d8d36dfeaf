"""ViT (Dosovitskiy et al., 2021): timm state dicts, JAX ``.npz`` releases, MAE encoder-only releases and
HuggingFace ViT; the layout every other plain-ViT family is told apart from, so it matches last."""
from .base import IMAGENET, Family, HfType, Layout


def _file_label(sd: dict) -> str:
    return "ViT with register tokens" if "reg_token" in sd else "ViT encoder (MAE encoder-only / timm keys)"


FAMILY = Family("vit", "ViT", *IMAGENET, file_label=_file_label)


def _matches(sd: dict, container: str) -> bool:
    return True


LAYOUT = Layout(FAMILY, _matches)
HF_TYPES = {"vit": HfType("vit", {"hidden_act": "gelu", "layer_norm_eps": 1e-12})}
