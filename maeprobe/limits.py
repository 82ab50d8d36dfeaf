"""Bounds on what an untrusted input may cost, checked before anything is read, decoded or built.

Every limit has a default that fits legitimate inputs by a wide margin and an environment variable that raises
it; a refusal names the limit and the variable (``LimitError``). The checks look at sizes that a file states
about itself (image headers, zip directories, key names) before the expensive step happens.

==============================  =========  ==================================================================
variable                        default    bounds
==============================  =========  ==================================================================
``MAEPROBE_MAX_IMAGE_PIXELS``   200000000  width x height of an image, read from its header before decoding
``MAEPROBE_MAX_ASPECT``         20         longer / shorter side of an image (the resize to the model's size
                                           scales the longer side by the same factor as the shorter one)
``MAEPROBE_MAX_INFLATE``        20         uncompressed / compressed size of a compressed entry of a zip-based
                                           checkpoint (``torch.save`` stores entries uncompressed)
``MAEPROBE_MAX_DEPTH``          256        transformer blocks of one encoder or decoder
``MAEPROBE_MAX_PATCHES``        16384      patches per image at the probed input size (128 x 128 grid)
``MAEPROBE_MAX_METADATA``       1000000    bytes of metadata / configuration text read from a checkpoint
``MAEPROBE_MAX_ATTENTION``      4294967296 bytes of one image's attention maps of one layer (heads x tokens^2 x 4),
                                           which the attention metrics hold at once
==============================  =========  ==================================================================
"""
from __future__ import annotations

import os

from .errors import MaeprobeError

DEFAULTS = {
    "MAEPROBE_MAX_IMAGE_PIXELS": 200_000_000,
    "MAEPROBE_MAX_ASPECT": 20,
    "MAEPROBE_MAX_INFLATE": 20,
    "MAEPROBE_MAX_DEPTH": 256,
    "MAEPROBE_MAX_PATCHES": 16_384,
    "MAEPROBE_MAX_METADATA": 1_000_000,
    "MAEPROBE_MAX_ATTENTION": 1 << 32,
}


class LimitError(MaeprobeError):
    """An input larger than a limit allows; the message says which limit and how to raise it."""


def limit(name: str) -> int:
    """The value of limit ``name`` (environment variable, else the default); a bad value is one line."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return DEFAULTS[name]
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        raise MaeprobeError(f"{name}={text!r}: expected a positive whole number") from None
    if value < 1:
        raise MaeprobeError(f"{name}={text!r}: expected a positive whole number")
    return value


def check_attention(model, module: str) -> None:
    """Refuse, before anything is allocated, a model whose attention maps of one layer for a single image exceed
    ``MAEPROBE_MAX_ATTENTION`` bytes (the attention metrics hold [B, heads, N, N] probabilities at once)."""
    cfg = model.config
    tokens = cfg.num_patches + int(getattr(model, "num_prefix_tokens", 1))
    heads = cfg.num_heads if module == "encoder" else (getattr(cfg, "decoder_num_heads", None) or 1)
    check("MAEPROBE_MAX_ATTENTION", heads * tokens * tokens * 4,
          f"the {module}'s attention maps of one image ({heads} heads x {tokens}^2 tokens x 4 bytes)")


def check(name: str, value: float, what: str) -> None:
    """Raise ``LimitError`` when ``value`` exceeds limit ``name``; ``what`` starts the message."""
    bound = limit(name)
    if value > bound:
        raise LimitError(f"{what}: {value:,.0f} exceeds maeprobe's limit of {bound:,} "
                         f"(raise it with the environment variable {name})")
