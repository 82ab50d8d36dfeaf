"""What a family module declares: its ``Family`` (what the weights cannot say), the ``Layout`` that recognises
its release files by their keys and maps them to timm's names (timm's ``checkpoint_filter_fn``), and its
HuggingFace ``model_type`` names (``HfType``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class Family:
    """One model family. ``builder``: 'vit' (MaskedAutoencoderViT), 'beit' (timm Beit) or 'eva' (timm Eva);
    ``pos_resample``: the rule of its release files (``POS_RESAMPLE``; HuggingFace folders set their own);
    ``file_label``: how a release file of the family is described (text, or a function of its state dict;
    default ``label``)."""

    name: str
    label: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder: str = "vit"
    pos_resample: str = "timm"
    file_label: str | Callable[[dict], str] | None = None

    def describe(self, sd: dict) -> str:
        """The family part of a release file's ``format`` (e.g. 'DeiT (distilled)')."""
        text = self.label if self.file_label is None else self.file_label
        return text(sd) if callable(text) else text


def _unchanged(sd: dict) -> tuple[dict, list[str]]:
    return sd, []


@dataclass(frozen=True)
class Layout:
    """How a release file of ``family`` is recognised and mapped to timm's names.

    ``matches(state dict, container)``: the keys (after wrapper prefixes are stripped) are this layout;
    ``convert``: (state dict in timm's names, notes); ``meta``: defaults the keys cannot show;
    ``container``: added to the format description; ``named_by``: names given outside the keys that win over
    ``family`` ('file': the file's own ``maeprobe`` metadata, 'prefix': its wrapper prefixes, e.g. MoCo v3's
    ``base_encoder.``) - none where the layout settles the family.
    """

    family: Family
    matches: Callable[[dict, str], bool]
    convert: Callable[[dict], tuple[dict, list[str]]] = _unchanged
    meta: dict = field(default_factory=dict)
    container: str = ""
    named_by: tuple[str, ...] = ("file", "prefix")

    def family_name(self, named: str | None, hint: str | None) -> str:
        """The family of a file of this layout: ``named`` (its metadata) or ``hint`` (its prefixes) where
        ``named_by`` lets them decide, else this layout's family."""
        given = {"file": named, "prefix": hint}
        return next((given[k] for k in self.named_by if given[k]), self.family.name)


@dataclass(frozen=True)
class HfType:
    """A HuggingFace ``model_type`` of ``family``: the defaults transformers uses when ``config.json`` leaves a
    field out, whether the vision tower's settings sit under ``vision_config`` (a full CLIP / SigLIP) and the
    position-embedding resampling of its ``interpolate_pos_encoding``."""

    family: str
    defaults: dict
    vision_config: bool = False
    pos_resample: str = "size"
