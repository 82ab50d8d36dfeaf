"""MAE (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners"): facebookresearch/mae releases and
HuggingFace ViTMAE; a file with the decoder (``decoder_embed``) is a full MAE."""
from .base import IMAGENET, Family, HfType, Layout

FAMILY = Family("mae", "MAE", *IMAGENET, pos_resample="size", file_label="MAE (encoder + decoder)")


def _matches(sd: dict, container: str) -> bool:
    return "decoder_embed.weight" in sd


LAYOUT = Layout(FAMILY, _matches)
HF_TYPES = {"vit_mae": HfType("mae", {"hidden_act": "gelu", "layer_norm_eps": 1e-12})}
