"""The probe points: where in a timm block each captured quantity is read, with which hook, and how.

One ``ProbePoint`` per (quantity, family layout), as TransformerLens declares one ``HookPoint`` per captured
quantity. A block's point for a kind is the first in ``POINTS`` that fits it, so family-specific sites (EVA-02's
``k_proj``, BEiT's ``q_bias``) come before timm's default. Attention on the block path is not a hook on a site but
the interception of the attention's SDPA call (``sdpa.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# Within one block the captured tensors appear in this order: keys (qkv), attention (softmax), features (output).
BLOCK_ORDER = {"keys": 0, "attention": 1, "features": 2}

Extract = Callable[[nn.Module, tuple, object], torch.Tensor]  # (block, the site's inputs, its output) -> tensor


@dataclass(frozen=True)
class ProbePoint:
    """One captured quantity's place in a block: ``site(block)`` is the module hooked, with a forward pre-hook
    (``before``: it reads the site's inputs) or a forward hook (its output), and ``extract`` takes the quantity
    from what the hook sees. ``fits(block)``: whether the block has this layout."""

    kind: str
    layout: str
    fits: Callable[[nn.Module], bool]
    site: Callable[[nn.Module], nn.Module]
    before: bool
    extract: Extract

    def attach(self, block: nn.Module, record: Callable[[torch.Tensor], None]) -> torch.utils.hooks.RemovableHandle:
        """Hook the block's site so that every forward pass hands the quantity to ``record``."""
        site = self.site(block)
        if self.before:
            return site.register_forward_pre_hook(lambda _module, inputs: record(self.extract(block, inputs, None)))
        return site.register_forward_hook(lambda _module, inputs, output: record(self.extract(block, inputs, output)))


def _qkv_width(attn: nn.Module) -> int:
    """The width of each of q, k and v in a fused qkv projection (timm's ``attn_dim`` where it is not dim)."""
    return getattr(attn, "attn_dim", attn.qkv.out_features // 3)


def _middle_third(block: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    width = _qkv_width(block.attn)
    return output[..., width: 2 * width]  # qkv output [B, N, 3 * width], laid out as (q | k | v) -> [B, N, width]


def _keys_from_input(block: nn.Module, inputs: tuple, _output: None) -> torch.Tensor:
    # BEiT-style attention adds q/v biases in F.linear and never calls its qkv module: compute the keys
    # (which have no bias there) from the attention's input with the middle third of the weight.
    attn = block.attn
    width = _qkv_width(attn)
    weight = attn.qkv.weight[width: 2 * width]  # [width, D]
    bias = attn.k_bias if getattr(attn, "k_bias", None) is not None else None
    return torch.nn.functional.linear(inputs[0], weight, bias)  # [B, N, width]


def _always(_block: nn.Module) -> bool:
    return True


POINTS = (
    # attention probabilities [B, H, N, N]: the input of attn_drop on timm's explicit path (before dropout, also
    # in training mode); ``capture`` turns ``fused_attn`` off for the probed blocks so that they exist at all
    ProbePoint("attention", "timm explicit softmax", _always, lambda block: block.attn.attn_drop, True,
               lambda _block, inputs, _output: inputs[0]),
    # block output [B, N, D]
    ProbePoint("features", "transformer block", _always, lambda block: block, False,
               lambda _block, _inputs, output: output),
    # attention keys [B, N, D], all heads concatenated (CutLER / MaskCut features), where each family makes them:
    # EVA-02: separate projections, keys are the k_proj output (before rotary)
    ProbePoint("keys", "EVA-02 k_proj", lambda block: getattr(block.attn, "qkv", None) is None,
               lambda block: block.attn.k_proj, False, lambda _block, _inputs, output: output),
    # BEiT / EVA: q/v biases added outside the qkv module (``q_bias``), keys from the attention's input
    ProbePoint("keys", "BEiT q_bias", lambda block: getattr(block.attn, "q_bias", None) is not None,
               lambda block: block.attn, True, _keys_from_input),
    # timm ViT: the middle third of the fused qkv projection's output
    ProbePoint("keys", "timm fused qkv", _always, lambda block: block.attn.qkv, False, _middle_third),
)


def point_for(kind: str, block: nn.Module) -> ProbePoint:
    """The first point of ``POINTS`` that reads ``kind`` from this block's layout."""
    return next(point for point in POINTS if point.kind == kind and point.fits(block))
