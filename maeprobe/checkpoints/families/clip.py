"""CLIP (Radford et al., 2021): OpenAI CLIP and open_clip visual weights (``visual.conv1.weight`` ...) through
timm's ``_convert_openai_clip``, and HuggingFace CLIP folders (the vision tower, or the vision part of a full
CLIP under ``vision_config``)."""
from .base import OPENAI_CLIP, Family, HfType, Layout

FAMILY = Family("clip", "CLIP", *OPENAI_CLIP)


def _prefix(sd: dict) -> str | None:
    """'visual.' (a full CLIP) or '' (its visual tower alone) for a ViT CLIP; None otherwise (a ResNet CLIP too)."""
    prefix = "visual." if "visual.conv1.weight" in sd else ("" if "conv1.weight" in sd and
                                                             "transformer.resblocks.0.attn.in_proj_weight" in sd
                                                             else None)
    if prefix is None or f"{prefix}transformer.resblocks.0.attn.in_proj_weight" not in sd:
        return None
    return prefix


def convert_clip(sd: dict) -> dict | None:
    """OpenAI CLIP / open_clip visual weights (``visual.conv1.weight`` ...) -> timm names, or None."""
    prefix = _prefix(sd)
    if prefix is None:
        return None
    from timm.models.vision_transformer import _convert_openai_clip

    converted = _convert_openai_clip(sd, None, prefix=prefix)
    if prefix == "":
        converted = {k: v for k, v in converted.items() if not k.startswith(("token_embedding", "transformer."))}
    return converted


def _matches(sd: dict, container: str) -> bool:
    return _prefix(sd) is not None


def _convert(sd: dict) -> tuple[dict, list[str]]:
    return convert_clip(sd), []


LAYOUT = Layout(FAMILY, _matches, _convert, meta={"act_layer": "quick_gelu", "norm_eps": 1e-5},
                container=" (OpenAI CLIP / open_clip visual)", named_by=())
_HF_DEFAULTS = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
HF_TYPES = {
    "clip": HfType("clip", _HF_DEFAULTS, vision_config=True),
    "clip_vision_model": HfType("clip", _HF_DEFAULTS),
}
