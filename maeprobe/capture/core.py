"""``capture``: attach the requested probe points to a model for the duration of a ``with`` block."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import torch
from torch import nn

from ..errors import MaeprobeError
from .blocks import blocks_of, check_layers
from .points import BLOCK_ORDER, point_for
from .request import ActivationCache, CaptureRequest, Consumer
from .rows import AttentionRows
from .sdpa import BlockServer, intercept

Handles = list[torch.utils.hooks.RemovableHandle]


class StopForward(Exception):
    """Raised by ``capture(..., stop_early=True)`` once the last requested tensor has been recorded: nothing
    after it is needed, so the rest of the forward pass is skipped (as an fx graph pruned after its last output)."""


def last_event(request: CaptureRequest, module: str = "encoder") -> tuple[str, str, int] | None:
    """The (kind, module, layer) that a forward pass through ``module`` produces last among the requested ones."""
    events = [(layer, BLOCK_ORDER[kind], kind) for kind in BLOCK_ORDER
              for layer in getattr(request, kind).get(module, ())]
    if not events:
        return None
    layer, _, kind = max(events)
    return kind, module, layer


@dataclass(frozen=True)
class _Recorder:
    """Where a hooked tensor goes: to its consumers (not stored, freed once they are done) or into the cache;
    then ``StopForward`` if it was the last one needed."""

    cache: ActivationCache
    consumers: dict[tuple[str, str, int], list[Consumer]]
    stop_after: tuple[str, str, int] | None

    def __call__(self, kind: str, module: str, layer: int, tensor) -> None:
        listeners = self.consumers.get((kind, module, layer))
        if listeners:
            if isinstance(tensor, AttentionRows):
                listeners = shared_block_pass(listeners, kind, module, layer, tensor, self.cache)
            for fn in listeners:
                fn(kind, module, layer, tensor.detach() if isinstance(tensor, torch.Tensor) else tensor, self.cache)
        else:
            self.cache[kind, module, layer] = tensor.detach()
        if self.stop_after == (kind, module, layer):
            raise StopForward


def block_visitor(fn: Consumer, kind: str, module: str, layer: int, rows: AttentionRows, cache: ActivationCache):
    """The block visitor of a consumer that reduces a layer's attention block by block, else None.

    A consumer declares it by being a bound method of an object with ``attention_visitor(kind, module, layer, rows,
    cache)``, which returns None (it iterates the rows itself) or a visitor: ``queries`` (the sorted query rows it
    reads, [n] indices of the layer's rows), ``visit(start, index, probs, log_probs)`` per block (``start``: the
    position of the block's first row in its ``queries``; ``log_probs``: ln probs when a visitor of the pass
    declares ``log_probs = True`` and the logits are finite, else None), and ``finish()`` after the last block."""
    make = getattr(getattr(fn, "__self__", None), "attention_visitor", None)
    return None if make is None else make(kind, module, layer, rows, cache)


def shared_block_pass(listeners: list[Consumer], kind: str, module: str, layer: int, rows: AttentionRows,
                      cache: ActivationCache) -> list[Consumer]:
    """One pass over a layer's query blocks for every consumer that declares a block visitor (``block_visitor``):
    q.k^T, the softmax (and the output p @ v written from them) once per block, not once per consumer. Each
    visitor sees its own queries' rows of each block (a view), in order. Returns the listeners left, which get
    ``rows`` as before and iterate it themselves."""
    visitors, rest = [], []
    for fn in listeners:
        visitor = block_visitor(fn, kind, module, layer, rows, cache)
        (rest if visitor is None else visitors).append(fn if visitor is None else visitor)
    if not visitors:
        return rest
    N = rows.shape[2]
    wanted = []  # per visitor: which of the N rows it reads, and each row's position in its queries
    for visitor in visitors:
        want = torch.zeros(N, dtype=torch.bool)
        want[torch.as_tensor(visitor.queries).cpu().long()] = True
        wanted.append((want, want.cumsum(0) - 1))
    union = torch.stack([want for want, _ in wanted]).any(0).nonzero().squeeze(1)
    log = any(getattr(visitor, "log_probs", False) for visitor in visitors)
    for start, index, probs, log_probs in rows.block_pass(union.to(rows.device), log):
        rows_here = union[start:start + len(index)]  # the block's rows, on the CPU (no device sync)
        for visitor, (want, position) in zip(visitors, wanted):
            picked = want[rows_here].nonzero().squeeze(1).tolist()
            if not picked:
                continue
            first, last = picked[0], picked[-1] + 1
            if last - first == len(picked):  # consecutive rows (always, for query sets that are ranges): views
                part = slice(first, last)
            else:
                part = torch.tensor(picked, device=probs.device)
            visitor.visit(int(position[rows_here[first]]), index[part], probs[:, :, part],
                          None if log_probs is None else log_probs[:, :, part])
    for visitor in visitors:
        visitor.finish()
    return rest


def _check_arguments(model, request, block_output: str) -> None:
    if block_output not in ("auto", "blocks", "fused"):
        raise MaeprobeError(f"block_output must be 'auto', 'blocks' or 'fused', got {block_output!r:.40}")
    if not isinstance(model, nn.Module):
        raise MaeprobeError(f"capture: model must be a model from maeprobe.load or build_mae, got "
                            f"{type(model).__name__}")
    if not isinstance(request, CaptureRequest):
        raise MaeprobeError(f"capture: request must be a CaptureRequest (CaptureRequest.of(...)), got "
                            f"{type(request).__name__}")
    check_layers(model, request)


def _attach_attention(block: nn.Module, probed: tuple[str, int], record: _Recorder, by_rows: bool,
                      server: BlockServer, fused_before: list[tuple[nn.Module, bool]]) -> Handles:
    """Full maps from timm's explicit path (``fused_attn`` off), or query blocks from its fused branch's SDPA call
    (``by_rows``); the attention's ``fused_attn`` as it was goes to ``fused_before``."""
    attn = block.attn
    module, layer = probed
    if not hasattr(attn, "attn_drop"):
        raise TypeError(f"{module} layer {layer}: {type(attn).__name__} has no attn_drop; "
                        "only timm-style attention can be probed")
    if hasattr(attn, "fused_attn"):
        fused_before.append((attn, attn.fused_attn))
        attn.fused_attn = by_rows  # block path: the fused branch, its SDPA call served by ``server``
    elif by_rows:
        raise MaeprobeError(f"{module} layer {layer}: {type(attn).__name__} has no fused attention "
                            "path; use block_queries=0 (full maps)")
    if by_rows:
        return intercept(attn, probed, server)
    return [point_for("attention", block).attach(block, partial(record, "attention", module, layer))]


@contextmanager
def capture(model: nn.Module, request: CaptureRequest,
            consumers: dict[tuple[str, str, int], list[Consumer]] | None = None,
            stop_after: tuple[str, str, int] | None = None, block_queries: int = 0,
            block_output: str = "auto") -> Iterator[ActivationCache]:
    """Record the requested attention maps and block outputs during forward passes inside the block.

    Args:
        model: a MaskedAutoencoderViT (or any model with timm blocks at ``blocks``/``decoder_blocks``).
        request: which layers' attention / features to capture.
        consumers: optional ``{(kind, module, layer): [fn, ...]}`` with kind ``'attention'`` or
            ``'features'``. Such tensors are handed to ``fn(kind, module, layer, tensor, cache)`` inside
            the hook and are *not* stored, so they are freed as soon as the model is done with them
            (the streaming path that keeps peak memory at the level of a bare forward pass). On the block path,
            consumers that declare a block visitor (``block_visitor``) share one pass over each layer's query
            blocks (``shared_block_pass``); the others get the ``AttentionRows`` and iterate them themselves.
        stop_after: ``(kind, module, layer)`` (see ``last_event``): once that tensor is recorded, raise
            ``StopForward`` so that the caller skips the rest of the forward pass, which nothing needs.
        block_queries: > 0: attention that goes to consumers is handed over as ``AttentionRows`` computed in
            blocks of this many query rows from q and k, and the model takes its fused branch (``sdpa.py``);
            0: full [B, H, N, N] maps from timm's explicit path. Attention stored in the cache is always a
            full map.
        block_output: where a layer's output comes from on the block path when its queries need several
            blocks: ``"blocks"``: p @ v from the same float32 probabilities, row block by row block (the
            statistics compute them anyway); ``"fused"``: the model's fused kernel, the probabilities computed
            beside it; ``"auto"`` (default): blocks on CPU (cheaper there), fused on other devices. Either way
            memory stays within the block bound; a layer whose queries fit in one block uses p @ v. A forward
            that trains (autograd on, or attention dropout) always takes the kernel's output
            (``sdpa.output_source``).

    Example:
        >>> with capture(model, CaptureRequest.of(attention={"encoder": [0, 11]})) as cache:
        ...     model.forward_encoder(images)
        >>> cache.attention[("encoder", 11)].shape  # [B, heads, N, N]
    """
    _check_arguments(model, request, block_output)
    cache = ActivationCache()
    consumers = consumers or {}
    record = _Recorder(cache, consumers, stop_after)
    server = BlockServer(record, block_queries, block_output)
    handles: Handles = []
    fused_before: list[tuple[nn.Module, bool]] = []
    try:
        for kind, module, layers in request.items():  # hooks sharing a module run in this order
            blocks = blocks_of(model, module)
            for layer in layers:
                if kind == "attention":
                    by_rows = block_queries > 0 and bool(consumers.get((kind, module, layer)))
                    handles += _attach_attention(blocks[layer], (module, layer), record, by_rows, server,
                                                 fused_before)
                else:
                    point = point_for(kind, blocks[layer])
                    handles.append(point.attach(blocks[layer], partial(record, kind, module, layer)))
        yield cache
    finally:
        for handle in handles:
            handle.remove()
        for attn, fused in fused_before:
            attn.fused_attn = fused
