"""The block path: a probed attention's ``scaled_dot_product_attention`` call served from query blocks.

The probed blocks keep (or get) timm's fused branch, which calls ``scaled_dot_product_attention``. While a probed
attention module runs, its SDPA call is intercepted and q and k, exactly as the model passes them (after q/k norms
and rotary embeddings; the family's scale and its additive bias, e.g. BEiT's relative position bias, are the
call's own arguments), go to the consumers as ``AttentionRows``. The layer's output is p @ v from those same
probabilities, or the fused kernel's (``output_source``); both equal a bare forward to float tolerance.

The interception is a ``TorchFunctionMode`` entered by the attention module's forward pre-hook and left by its
forward hook (``always_call``: also when the forward raises), so it covers that one forward on the thread that
runs it: another model run meanwhile (a reference model, a consumer's, another thread's) calls the kernel
untouched, and ``torch.nn.functional`` is never patched. A model run on the same thread from a hook inside the
probed attention's forward, before its SDPA call, would be served in its place; and the hooks are shared state
of the probed model, which one capture runs one forward at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import MaeprobeError
from .rows import AttentionMap, AttentionRows, BufferPool

# the kernel itself (``torch.nn.functional.scaled_dot_product_attention`` is this builtin), which is what a
# TorchFunctionMode sees called whatever name the model used for it
_SDPA = torch._C._nn.scaled_dot_product_attention

Record = Callable[[str, str, int, object], None]  # (kind, module, layer, tensor)


def output_source(trains: bool, queries: int, block_queries: int, block_output: str, device_type: str) -> str:
    """Where a probed layer's attention output comes from on the block path.

    ``"kernel"``: the model's fused kernel, the probabilities computed beside it for the statistics; always for
    a forward that trains (the statistics' rows are detached and dropout-free, as the full maps are read before
    dropout), else by choice when the queries need several blocks (``block_output="fused"``, or ``"auto"`` off
    the CPU). ``"single"``: every query fits in one block, whose probabilities (needed anyway) give p @ v
    instead of the kernel computing them a second time. ``"blocks"``: p @ v written block by block from the
    statistics' probabilities, on CPU cheaper than the kernel (benchmarks/README.md). Memory stays within the
    block bound in all three.
    """
    several = queries > block_queries
    if trains or (several and (block_output == "fused" or (block_output == "auto" and device_type != "cpu"))):
        return "kernel"
    return "blocks" if several else "single"


@dataclass(frozen=True)
class BlockServer:
    """Serves one intercepted SDPA call: records the layer's ``AttentionRows`` and returns its output."""

    record: Record
    block_queries: int
    block_output: str
    pool: BufferPool = field(default_factory=BufferPool, compare=False)  # one capture's buffers, layer to layer

    def __call__(self, probed: tuple[str, int], query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                 scale=None, **kwargs) -> torch.Tensor:
        if is_causal or kwargs or key.shape[1] != query.shape[1]:
            raise MaeprobeError(f"{probed[0]} layer {probed[1]}: its attention call (causal, grouped heads or extra "
                                "arguments) cannot be computed in query blocks; use block_queries=0 (full maps)")
        trains = bool(dropout_p) or (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (query, key, value, attn_mask)))
        source = output_source(trains, query.shape[2], self.block_queries, self.block_output, query.device.type)
        rows = AttentionRows(query.detach(), key.detach(), None if attn_mask is None else attn_mask.detach(), scale,
                             self.block_queries, value=value.detach() if source == "blocks" else None,
                             pool=self.pool)
        try:
            if source == "kernel":
                self.record("attention", *probed, rows)
                return _SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                             scale=scale, **kwargs)
            if source == "single":  # memory within the block bound: block x tokens per head and image
                probs = rows.rows(slice(None))  # [B, H, N, N] with N <= block
                self.record("attention", *probed, AttentionMap(probs))
                with torch.autocast(query.device.type, enabled=False):  # float32, as the multi-block output
                    return (probs @ value.float()).to(value.dtype)  # [B, H, N, dv]
            self.record("attention", *probed, rows)
            return rows.output().to(value.dtype)  # [B, H, N, dv]
        finally:
            rows.release()  # the next layer reuses q, k, v's copies and the block buffers


class _ProbedCall(TorchFunctionMode):
    """While entered, the first SDPA call goes to ``serve`` (every other torch call passes through)."""

    def __init__(self, probed: tuple[str, int], serve: BlockServer) -> None:
        super().__init__()
        self.probed, self.serve, self.pending, self.inside = probed, serve, False, False

    def open(self) -> None:
        self.pending = self.inside = True
        self.__enter__()

    def close(self) -> None:
        self.pending = False
        if self.inside:  # (not when a hook before ``open`` raised)
            self.inside = False
            self.__exit__(None, None, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not _SDPA or not self.pending:
            return func(*args, **kwargs)
        self.pending = False  # the kernel below, and any model a consumer runs, pass through
        return self.serve(self.probed, *args, **kwargs)


def intercept(attn: nn.Module, probed: tuple[str, int],
              serve: BlockServer) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that serve ``attn``'s SDPA call with ``serve`` during each of its forward passes."""
    mode = _ProbedCall(probed, serve)

    def enter(_module, _inputs):
        mode.open()

    def check(module, _inputs, _output):  # only after a forward that returned
        if mode.pending:
            raise MaeprobeError(f"{probed[0]} layer {probed[1]}: {type(module).__name__} did not call "
                                "scaled_dot_product_attention, so its attention cannot be computed in query "
                                "blocks; use block_queries=0 (full maps)")

    def leave(_module, _inputs, _output):  # also after a forward (or ``check``) that raised
        mode.close()

    return [attn.register_forward_pre_hook(enter), attn.register_forward_hook(check),
            attn.register_forward_hook(leave, always_call=True)]
