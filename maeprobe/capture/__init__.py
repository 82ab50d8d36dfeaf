"""Forward hooks that capture attention probabilities, block outputs and attention keys, without editing model code.

Hooks are global state on the model: they live in the ``capture`` context manager and are removed (and timm's
fused-attention switches restored) on exit, also when the forward pass raises. The parts, each importable alone:

* ``request``: ``CaptureRequest`` (what to record) and ``ActivationCache`` (what was recorded), both keyed by
  (kind, module, layer).
* ``blocks``: the encoder's or decoder's blocks and the layer checks.
* ``points``: the table of probe points, kind -> site in the block, hook, extraction (family-specific key sites
  included).
* ``rows``: ``AttentionRows``, one layer's probabilities in blocks of query rows.
* ``sdpa``: the block path's interception of a probed attention's SDPA call, and ``output_source``.
* ``core``: ``capture`` itself, ``last_event`` and ``StopForward``.

Two ways to get attention probabilities:

* **Full maps** (``block_queries=0``, the reference path). timm's ``Attention`` computes
  ``attn = softmax(q k^T * scale)`` and passes it through ``attn_drop`` only on its explicit path; with
  ``fused_attn`` on, the probabilities never exist. ``capture`` therefore turns ``fused_attn`` off for the
  probed blocks only and reads the *input* of ``attn_drop`` (the probabilities before dropout, also in
  training mode): one [B, heads, N, N] tensor per layer.
* **Query blocks** (``block_queries=n > 0``, for consumers that accept ``AttentionRows``). The probed blocks
  keep (or get) timm's fused branch, which calls ``scaled_dot_product_attention``. While a probed attention
  module runs, ``capture`` intercepts that call (a ``TorchFunctionMode`` scoped to the module's forward) and hands
  q and k exactly as the model passes them (after q/k norms and rotary embeddings; the family's scale and its
  additive bias, e.g. BEiT's relative position bias, are the call's own arguments) to the consumers as
  ``AttentionRows``, which compute ``softmax(q k^T * scale + bias)`` for n query rows at a time in float32.
  Memory grows with n x N, not N^2. The layer's output is p @ v from those same probabilities (on CPU, and
  whenever all N queries fit in one block: half the attention work of running the fused kernel beside
  them) or, on GPUs, the fused kernel's (``block_output``); both equal a bare forward to float tolerance.
"""
from __future__ import annotations

import math
import sys

from .blocks import blocks_of, resolve_layers
from .core import StopForward, capture, last_event
from .request import MODULES, ActivationCache, CaptureRequest, Consumer
from .rows import AttentionMap, AttentionRows, attention_rows

__all__ = ["MODULES", "ActivationCache", "AttentionMap", "AttentionRows", "CaptureRequest", "Consumer",
           "StopForward", "attention_rows", "blocks_of", "capture", "last_event", "resolve_layers"]


class _CallableModule(type(math)):
    """``maeprobe.capture`` names both this package and its function ``capture`` (the package exports the
    function). Importing this package, which every metric does, rebinds the package's attribute ``capture`` to the
    package, so the package forwards calls to the function: ``maeprobe.capture(model, request)`` works either way."""

    def __call__(self, *args, **kwargs):
        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
