"""Metadata is data: what a file says about itself (safetensors metadata, a ``{'maeprobe': ...}`` entry, a
HuggingFace or timm ``config.json``, training ``args``) passes through an allow-list of keys maeprobe
understands, each with a type and bounds. Unknown keys are dropped; a known key with a bad value is refused with
one line naming the file, the key and what was expected. Nothing read here ever becomes keyword arguments, a
path or a size without these checks (timm's ``create_model(**kwargs)`` accepts ``checkpoint_path`` and
``hf-hub:`` names, so file metadata never reaches it as such).
"""
from __future__ import annotations

import numbers
import re

from ..errors import CheckpointError, MaeprobeError
from ..models.pos_embed import POS_RESAMPLE, REL_POS_RESAMPLE
from ..validate import real, short
from .families import FAMILIES

ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")
MAX_HEADS = 1024


def _int(value, lo: int, hi: int):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= int(value) <= hi:
        raise ValueError(f"a whole number in [{lo}, {hi}]")
    return int(value)


def _heads(value):
    return None if value is None else _int(value, 1, MAX_HEADS)


def _real(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    """A check of a finite number within the bounds (``validate.real``), failing with what was expected."""
    def check(value):
        try:
            return real("metadata", value, lo, hi, lo_open=lo_open, hi_open=hi_open)
        except MaeprobeError:
            raise ValueError(f"a finite number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}") \
                from None
    return check


def _ratio(value):
    return None if value is None else _real(0.0, 1.0, hi_open=True)(value)


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _triple(lo: float, hi: float, lo_open: bool):
    def check(value):
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(f"three finite numbers in {'(' if lo_open else '['}{lo}, {hi}]")
        return tuple(_real(lo, hi, lo_open=lo_open)(v) for v in value)
    return check


def _choice(*choices):
    def check(value):
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return value
    return check


_TIMM_NAME = re.compile(r"^eva[a-z0-9_]*$")


def _timm_architecture(value):
    """A timm EVA architecture name known to timm (pretrained tags dropped), or None: only EVA files are built
    by name, and any other text (``hf-hub:...``, paths, unknown names) is ignored rather than passed to timm."""
    if not isinstance(value, str) or len(value) > 100:
        raise ValueError("the name of a timm architecture")
    name = value.split(".")[0]
    if not _TIMM_NAME.match(name):
        return None
    import timm

    return name if timm.is_model(name) else None


def _feat_shape(value):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value, value]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("two whole numbers (the rotary embedding's reference grid)")
    return tuple(_int(v, 1, 1024) for v in value)


# timm Eva arguments that the weights cannot show (switches and the rotary reference grid). Sizes (width, depth,
# heads, image size, classes) always come from the weights and are never taken from a file's model_args.
TIMM_ARGS = {
    "ref_feat_shape": _feat_shape,
    "use_rot_pos_emb": _bool,
    "rope_mixed_mode": _bool,
    "scale_mlp": _bool,
    "scale_attn_inner": _bool,
    "swiglu_mlp": _bool,
    "qkv_fused": _bool,
    "no_embed_class": _bool,
    "use_abs_pos_emb": _bool,
}


def _timm_args(value):
    if not isinstance(value, dict):
        raise ValueError("a JSON object of timm arguments")
    out = {}
    for key, item in value.items():
        if key in TIMM_ARGS:
            out[key] = TIMM_ARGS[key](item)
    return out


SPEC = {
    "num_heads": _heads,
    "decoder_num_heads": _heads,
    "norm_eps": _real(0.0, 0.1, lo_open=True),
    "norm_pix_loss": _bool,
    "mean": _triple(-10.0, 10.0, False),
    "std": _triple(1e-6, 10.0, False),  # a std that rounds to 0 in float32 would divide by zero
    "act_layer": _choice(*ACTIVATIONS),
    "pos_resample": _choice(*POS_RESAMPLE),
    "rel_pos_resample": _choice(*REL_POS_RESAMPLE),
    "pretrain_mask_ratio": _ratio,
    "family": _choice(*FAMILIES),
    "decoder_type": _choice("transformer", "gaussian", "conv"),
    "format_version": lambda v: _int(v, 0, 1000),
    "timm_architecture": _timm_architecture,
    "timm_model_args": _timm_args,
}


def clean_meta(meta: dict, path) -> dict:
    """The allow-listed, checked part of ``meta``; CheckpointError naming the key for a value out of bounds."""
    if not isinstance(meta, dict):
        raise CheckpointError(path, f"its metadata is a {type(meta).__name__}; expected a JSON object")
    out = {}
    for key, check in SPEC.items():
        if key not in meta:
            continue
        value = meta[key]
        if value is None and key in ("decoder_num_heads", "pretrain_mask_ratio", "num_heads"):
            continue
        try:
            checked = check(value)
            if checked is not None:
                out[key] = checked
        except (ValueError, TypeError, RecursionError) as exc:
            shown = short(value, 60)
            raise CheckpointError(path, f"metadata {key!r} is {shown}; expected {exc}") from None
    return out
