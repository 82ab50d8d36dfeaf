"""The model families: one module each, declaring what a checkpoint's weights cannot say about it.

Each reader (``hf.py`` for HuggingFace folders, ``core.read_checkpoint`` for release files) maps a file's keys to
one of three canonical layouts: timm's ``VisionTransformer`` names (built as ``MaskedAutoencoderViT``, which uses
the same names and adds MAE's decoder), timm's ``Beit`` names or timm's ``Eva`` names. A family module declares,
in the spirit of timm's ``PretrainedCfg`` and ``checkpoint_filter_fn``:

* ``FAMILY``: the display name, the input normalisation, the builder and how its position embedding is resampled
  for another input size;
* ``LAYOUT`` (where its release files can be told by their keys): how they are recognised and mapped;
* ``HF_TYPES`` (where HuggingFace has it): its ``model_type`` names.

A new family is one module here, placed in the lists below (their orders are the detection order and the order
in which messages list the names).
"""
from __future__ import annotations

from ...models.pos_embed import POS_RESAMPLE
from . import beit, clip, data2vec, deit, dino, dinov2, eva, ibot, mae, mocov3, siglip, vit
from .base import HALF, IMAGENET, OPENAI_CLIP, Family, HfType, Layout

FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in (
    mae, vit, deit, dino, dinov2, mocov3, ibot, clip, siglip, beit, data2vec, eva)}

# Release files: the first layout that matches names the family. CLIP, BEiT and EVA have keys of their own;
# the plain ViT layouts are told apart by their extra tokens and container, the bare ViT last.
LAYOUTS: tuple[Layout, ...] = tuple(m.LAYOUT for m in (clip, beit, eva, mae, dino, deit, dinov2, vit))

# HuggingFace folders: config.json's model_type -> its family and defaults.
HF_TYPES: dict[str, HfType] = {t: h for m in (mae, vit, deit, dinov2, beit, data2vec, clip, siglip)
                               for t, h in m.HF_TYPES.items()}


def detect(sd: dict, container: str) -> Layout:
    """The layout of a release file's state dict (wrapper prefixes already stripped)."""
    return next(layout for layout in LAYOUTS if layout.matches(sd, container))


__all__ = ["FAMILIES", "HALF", "HF_TYPES", "IMAGENET", "LAYOUTS", "OPENAI_CLIP", "POS_RESAMPLE", "Family", "HfType",
           "Layout", "detect"]
