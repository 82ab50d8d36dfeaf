"""The registry of model families: what a checkpoint's weights cannot say about it.

Each reader (``hf.py`` for HuggingFace folders, ``originals.py`` for release files) detects the family from
the file and maps its keys to one of two canonical layouts: timm's ``VisionTransformer`` names (built as
``MaskedAutoencoderViT``, which uses the same names and adds MAE's decoder) or timm's ``Beit`` names (built
as ``BeitEncoder``). What the weights do not carry lives here, per family, in the spirit of timm's
``PretrainedCfg``: the display name, the input normalisation, which prefix tokens the model has and which
metrics read them, and how its position embedding is resampled for another input size.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

# How a position embedding is resampled to another patch grid, as each family's own code does it.
POS_RESAMPLE = {
    # F.interpolate(size=new grid, bicubic, align_corners=False, no antialias): facebookresearch/mae's
    # interpolate_pos_embed and every HuggingFace model's interpolate_pos_encoding
    "size": "bicubic to the new grid size, no antialias (MAE, HuggingFace)",
    # the same with antialias: HuggingFace's Dinov2WithRegisters (its interpolate_pos_encoding sets antialias=True)
    "size-antialias": "bicubic to the new grid size, antialias (HuggingFace DINOv2 with registers)",
    # F.interpolate(scale_factor=(new + 0.1) / old, bicubic, no antialias): DINO, iBOT and DINOv2's
    # interpolate_pos_encoding (interpolate_offset 0.1, interpolate_antialias False)
    "offset": "bicubic with scale factor (new + 0.1) / old, no antialias (DINO, DINOv2, iBOT)",
    # timm.layers.resample_abs_pos_embed (bicubic, antialias): timm, DeiT, MoCo v3, open_clip, JAX ViT
    "timm": "bicubic with antialias (timm's resample_abs_pos_embed; DeiT, MoCo v3, open_clip, JAX ViT)",
}


@dataclass(frozen=True)
class Family:
    """One model family. ``builder``: 'vit' (MaskedAutoencoderViT), 'beit' (timm Beit) or 'eva' (timm Eva);
    ``pos_resample``: the rule of its release files (``POS_RESAMPLE``; HuggingFace folders set their own)."""

    name: str
    label: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder: str = "vit"
    pos_resample: str = "timm"


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("mae", "MAE", *IMAGENET, pos_resample="size"),
    Family("vit", "ViT", *IMAGENET),
    Family("deit", "DeiT", *IMAGENET),
    Family("dino", "DINO", *IMAGENET, pos_resample="offset"),
    Family("dinov2", "DINOv2", *IMAGENET, pos_resample="offset"),
    Family("mocov3", "MoCo v3", *IMAGENET),
    Family("ibot", "iBOT", *IMAGENET, pos_resample="offset"),
    Family("clip", "CLIP", *OPENAI_CLIP),
    Family("siglip", "SigLIP", *HALF),
    Family("beit", "BEiT", *HALF, builder="beit"),
    Family("data2vec", "data2vec-vision", *HALF, builder="beit"),
    Family("eva", "EVA", *OPENAI_CLIP, builder="eva"),
)}


def family(name: str) -> Family:
    return FAMILIES[name]
