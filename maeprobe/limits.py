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
``MAEPROBE_MAX_PROBE_BYTES``    2147483648 bytes of the probe set ``reproduce`` holds (images x 3 x size^2 x 4), checked
                                           before any image is decoded
``MAEPROBE_MAX_METRIC_MEMORY``  8589934592 bytes a metric keeps or builds beyond the attention maps, computed from the
                                           model's sizes before the first image: Eq. 7's sums of attention maps
                                           (layers x heads x masked queries x keys, per bootstrap group),
                                           Eq. 8's affinity matrices of one image (tokens^2) and the features
                                           Eq. 8 reads from every requested decoder layer of a batch, the
                                           spectrum's sums (layers x features x (1 + groups) x width^2)
``MAEPROBE_MAX_TABLE_ROWS``     1000000    rows of one Parquet results table, read from its metadata before any
                                           column is decoded
``MAEPROBE_MAX_TABLE_BYTES``    268435456  bytes of one Parquet results table once decoded (fixed-width cells from
                                           the metadata; text cells from the dictionary and run-length encoded
                                           values, measured before they are expanded)
``MAEPROBE_MAX_FIGURE_LINES``   20         lines (labels) of one figure, counted before anything is drawn (more
                                           do not fit its legend)
``MAEPROBE_MAX_PANELS``         256        maps of one attention render (rows x columns: queries x layers, or
                                           layers x heads), counted before the model runs
``MAEPROBE_MAX_MODEL_BYTES``    8589934592 bytes of the parameters a training recipe asks for (parameters x 4, counted
                                           on the meta device before the model is built; training holds ~4x)
``MAEPROBE_MAX_BATCH_BYTES``    17179869184 bytes of one training micro-batch: images x (pixels + one layer's
                                           attention maps) x 4
``MAEPROBE_MAX_EPOCH_SAMPLES``  50000000   samples of one training epoch (its order is one permutation of 8-byte
                                           indices)
``MAEPROBE_MAX_WORKERS``        64         DataLoader worker processes a recipe asks for (``data.num_workers``)
``MAEPROBE_DIST_TIMEOUT``       600        seconds a process waits for the others when joining a torchrun process
                                           group (and in each collective operation)
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
    "MAEPROBE_MAX_PROBE_BYTES": 1 << 31,
    "MAEPROBE_MAX_METRIC_MEMORY": 1 << 33,
    "MAEPROBE_MAX_TABLE_ROWS": 1_000_000,
    "MAEPROBE_MAX_TABLE_BYTES": 1 << 28,  # the figures hold a few copies of a table (labels, groups)
    "MAEPROBE_MAX_FIGURE_LINES": 20,
    "MAEPROBE_MAX_PANELS": 256,
    "MAEPROBE_MAX_MODEL_BYTES": 1 << 33,
    "MAEPROBE_MAX_BATCH_BYTES": 1 << 34,
    "MAEPROBE_MAX_EPOCH_SAMPLES": 50_000_000,
    "MAEPROBE_MAX_WORKERS": 64,
    "MAEPROBE_DIST_TIMEOUT": 600,
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
