"""DINOv2 (Oquab et al., 2024) and DINOv2 with registers (Darcet et al., 2024): register tokens, or LayerScale
with 14-pixel patches; HuggingFace ``dinov2`` and ``dinov2_with_registers`` (which resamples with antialias)."""
from .base import IMAGENET, Family, HfType, Layout

FAMILY = Family("dinov2", "DINOv2", *IMAGENET, pos_resample="offset")


def _matches(sd: dict, container: str) -> bool:
    proj = sd.get("patch_embed.proj.weight")
    return "reg_token" in sd or ("blocks.0.ls1.gamma" in sd and proj is not None and proj.shape[-1] == 14)


LAYOUT = Layout(FAMILY, _matches)
_HF_DEFAULTS = {"hidden_act": "gelu", "layer_norm_eps": 1e-6}
HF_TYPES = {
    "dinov2": HfType("dinov2", _HF_DEFAULTS),
    "dinov2_with_registers": HfType("dinov2", _HF_DEFAULTS, pos_resample="size-antialias"),
}
