"""Forward hooks that capture attention probabilities and block outputs, without editing model code.

Hooks are global state on the model: they live in the ``capture`` context manager and are removed
(and timm's fused-attention switches restored) on exit, also when the forward pass raises.

Two ways to get attention probabilities:

* **Full maps** (``block_queries=0``, the reference path). timm's ``Attention`` computes
  ``attn = softmax(q k^T * scale)`` and passes it through ``attn_drop`` only on its explicit path; with
  ``fused_attn`` on, the probabilities never exist. ``capture`` therefore turns ``fused_attn`` off for the
  probed blocks only and reads the *input* of ``attn_drop`` (the probabilities before dropout, also in
  training mode): one [B, heads, N, N] tensor per layer.
* **Query blocks** (``block_queries=n > 0``, for consumers that accept ``AttentionRows``). The probed blocks
  keep (or get) timm's fused path, so the model's output comes from ``scaled_dot_product_attention`` as in a
  bare forward. While a probed attention module runs, ``capture`` wraps ``torch.nn.functional.
  scaled_dot_product_attention`` and hands q and k exactly as the model passes them (after q/k norms and
  rotary embeddings; the family's scale and its additive bias, e.g. BEiT's relative position bias, are the
  call's own arguments) to the consumers as ``AttentionRows``, which compute ``softmax(q k^T * scale + bias)``
  for n query rows at a time. Memory grows with n x N, not N^2. When all N queries fit in one block, the
  probabilities the statistics need are computed once and also give the output (p @ v) instead of the fused
  kernel computing them again (the same memory bound, half the attention work).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .errors import MaeprobeError
from .masking import MaskInfo

MODULES = ("encoder", "decoder")


@dataclass(frozen=True)
class CaptureRequest:
    """What to record: per module, the layers whose attention / block output / attention keys are needed."""

    attention: dict[str, frozenset[int]] = field(default_factory=dict)
    features: dict[str, frozenset[int]] = field(default_factory=dict)
    keys: dict[str, frozenset[int]] = field(default_factory=dict)

    @staticmethod
    def of(attention: dict[str, Iterable[int]] | None = None,
           features: dict[str, Iterable[int]] | None = None,
           keys: dict[str, Iterable[int]] | None = None) -> "CaptureRequest":
        def freeze(d):
            return {m: frozenset(v) for m, v in (d or {}).items()}

        return CaptureRequest(freeze(attention), freeze(features), freeze(keys))

    def __or__(self, other: "CaptureRequest") -> "CaptureRequest":
        def union(a, b):
            return {m: a.get(m, frozenset()) | b.get(m, frozenset()) for m in set(a) | set(b)}

        return CaptureRequest(union(self.attention, other.attention), union(self.features, other.features),
                              union(self.keys, other.keys))

    def needs(self, module: str) -> bool:
        return bool(self.attention.get(module) or self.features.get(module) or self.keys.get(module))


@dataclass
class ActivationCache:
    """What one hooked forward pass recorded, keyed by (module, layer).

    ``attention[(m, l)]``: [B, heads, N, N] probabilities; ``features[(m, l)]``: [B, N, D] block outputs;
    ``keys[(m, l)]``: [B, N, D] attention keys, all heads concatenated (CutLER / MaskCut features).
    ``mask``: the MaskInfo of the batch; ``image_indices``: global index of every image of the batch;
    ``references``: caches of reference models run on the same images (by reference name).
    """

    attention: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    features: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    keys: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    mask: MaskInfo | None = None
    image_indices: torch.Tensor | None = None
    references: dict[str, "ActivationCache"] = field(default_factory=dict)

    def clear(self) -> None:
        self.attention.clear()
        self.features.clear()
        self.keys.clear()
        self.mask = None
        self.image_indices = None
        for ref in self.references.values():
            ref.clear()


def blocks_of(model: nn.Module, module: str) -> nn.ModuleList:
    """The transformer blocks of ``'encoder'`` or ``'decoder'``."""
    if module == "encoder":
        return model.blocks
    if module == "decoder":
        if not getattr(model, "has_decoder", False):
            raise MaeprobeError("this model has no decoder; decoder analyses need a full MAE checkpoint at its own input size (no --img-size)")
        if not hasattr(model, "decoder_blocks"):
            raise MaeprobeError(f"this checkpoint's decoder ({model.config.decoder_type}) has no attention blocks; "
                                "decoder analyses need a transformer decoder")
        return model.decoder_blocks
    raise MaeprobeError(f"module must be 'encoder' or 'decoder', got {module!r}")


def resolve_layers(model: nn.Module, module: str, layers: Iterable[int] | None) -> list[int]:
    """Validate 0-based layer indices (negative ones count from the end); None means all layers."""
    depth = len(blocks_of(model, module))
    if layers is None:
        return list(range(depth))
    out = []
    for layer in layers:
        index = layer + depth if layer < 0 else layer
        if not 0 <= index < depth:
            raise MaeprobeError(f"{module} layer {layer} does not exist (the {module} has {depth} layers, 0-{depth - 1})")
        out.append(index)
    return sorted(set(out))


class AttentionRows:
    """One layer's attention probabilities served in blocks of query rows, never as a whole [B, H, N, N] map.

    ``q`` [B, H, Nq, d] and ``k`` [B, H, Nk, d] as the model passed them to scaled_dot_product_attention,
    ``bias``: its ``attn_mask`` (None, an additive float bias or a boolean keep-mask, broadcastable to
    [B, H, Nq, Nk]), ``scale``: its ``scale`` (None: d^-0.5, SDPA's default). Probabilities are computed in
    float32 whatever the autocast dtype of the forward pass.
    """

    def __init__(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                 scale: float | None = None, block: int = 128) -> None:
        self.q, self.k_t = q, k.float().transpose(-2, -1)
        self.bias = bias
        self.scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        self.block = max(1, int(block))
        self.shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        self.device = q.device

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Probabilities of the query rows ``index`` [n]: [B, H, n, Nk] float32."""
        logits = (self.q[:, :, index].float() * self.scale) @ self.k_t
        if self.bias is not None:
            bias = self.bias if self.bias.shape[-2] == 1 else self.bias[..., index, :]
            logits = logits.masked_fill(~bias, float("-inf")) if bias.dtype == torch.bool else logits + bias.float()
        return logits.softmax(-1)

    def blocks(self, queries: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(position of the block's first query in ``queries``, the query rows, their probabilities) for
        ``queries`` (default: all rows) in blocks of ``block`` rows."""
        if queries is None:
            queries = torch.arange(self.shape[2], device=self.q.device)
        queries = queries.to(self.q.device)
        for start in range(0, len(queries), self.block):
            index = queries[start:start + self.block]
            yield start, index, self.rows(index)


class AttentionMap(AttentionRows):
    """The same interface over a materialised [B, H, N, N] map (the full-map path): one block of all rows."""

    def __init__(self, attn: torch.Tensor) -> None:
        self.attn, self.shape, self.block = attn, tuple(attn.shape), attn.shape[2]
        self.q, self.device = attn, attn.device  # (``blocks`` moves the queries to it)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.attn[:, :, index].float()


def attention_rows(tensor) -> AttentionRows:
    """A consumer's attention input as ``AttentionRows`` (a full map is wrapped)."""
    return tensor if isinstance(tensor, AttentionRows) else AttentionMap(tensor)


Consumer = Callable[[str, str, int, torch.Tensor, "ActivationCache"], None]

# Within one block the captured tensors appear in this order: keys (qkv), attention (softmax), features (output).
_EVENT_ORDER = {"keys": 0, "attention": 1, "features": 2}


class StopForward(Exception):
    """Raised by ``capture(..., stop_early=True)`` once the last requested tensor has been recorded: nothing
    after it is needed, so the rest of the forward pass is skipped (as an fx graph pruned after its last output)."""


def last_event(request: CaptureRequest, module: str = "encoder") -> tuple[str, str, int] | None:
    """The (kind, module, layer) that a forward pass through ``module`` produces last among the requested ones."""
    events = [(layer, _EVENT_ORDER[kind], kind) for kind in _EVENT_ORDER
              for layer in getattr(request, kind).get(module, ())]
    if not events:
        return None
    layer, _, kind = max(events)
    return kind, module, layer


@contextmanager
def capture(model: nn.Module, request: CaptureRequest,
            consumers: dict[tuple[str, str, int], list[Consumer]] | None = None,
            stop_after: tuple[str, str, int] | None = None, block_queries: int = 0) -> Iterator[ActivationCache]:
    """Record the requested attention maps and block outputs during forward passes inside the block.

    Args:
        model: a MaskedAutoencoderViT (or any model with timm blocks at ``blocks``/``decoder_blocks``).
        request: which layers' attention / features to capture.
        consumers: optional ``{(kind, module, layer): [fn, ...]}`` with kind ``'attention'`` or
            ``'features'``. Such tensors are handed to ``fn(kind, module, layer, tensor, cache)`` inside
            the hook and are *not* stored, so they are freed as soon as the model is done with them
            (the streaming path that keeps peak memory at the level of a bare forward pass).
        stop_after: ``(kind, module, layer)`` (see ``last_event``): once that tensor is recorded, raise
            ``StopForward`` so that the caller skips the rest of the forward pass, which nothing needs.
        block_queries: > 0: attention that goes to consumers is handed over as ``AttentionRows`` computed in
            blocks of this many query rows from q and k, and the model keeps its fused attention (module
            docstring); 0: full [B, H, N, N] maps from timm's explicit path. Attention stored in the cache is
            always a full map.

    Example:
        >>> with capture(model, CaptureRequest.of(attention={"encoder": [0, 11]})) as cache:
        ...     model.forward_encoder(images)
        >>> cache.attention[("encoder", 11)].shape  # [B, heads, N, N]
    """
    import torch.nn.functional as F

    cache = ActivationCache()
    consumers = consumers or {}
    handles: list[torch.utils.hooks.RemovableHandle] = []
    fused_before: list[tuple[nn.Module, bool]] = []
    active: dict[str, tuple[str, int] | None] = {"key": None}  # the probed attention now running (block path)
    original_sdpa = F.scaled_dot_product_attention

    def store(kind: str, key: tuple[str, int], tensor) -> None:
        listeners = consumers.get((kind, *key))
        if listeners:
            for fn in listeners:
                fn(kind, key[0], key[1], tensor.detach() if isinstance(tensor, torch.Tensor) else tensor, cache)
        else:
            getattr(cache, kind)[key] = tensor.detach()
        if stop_after == (kind, *key):
            raise StopForward

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        probed = active["key"]
        if probed is None or is_causal or dropout_p or kwargs or key.shape[1] != query.shape[1]:
            return original_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                 scale=scale, **kwargs)
        active["key"] = None
        rows = AttentionRows(query.detach(), key.detach(), None if attn_mask is None else attn_mask.detach(), scale,
                             block_queries)
        if query.shape[2] <= block_queries:
            # every query fits in one block: its probabilities, which the statistics need anyway, also give the
            # output (p @ v), instead of the fused kernel computing them a second time; memory stays within
            # the block bound (block x tokens per head and image)
            probs = rows.rows(torch.arange(query.shape[2], device=query.device))
            store("attention", probed, AttentionMap(probs))
            return (probs @ value.float()).to(value.dtype)
        out = original_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, **kwargs)
        store("attention", probed, rows)
        return out

    def attention_hook(key):
        def hook(_module, inputs):
            store("attention", key, inputs[0])
        return hook

    def enter_hook(key):
        def hook(_module, _inputs):
            active["key"] = key
        return hook

    def leave_hook(key):
        def hook(module, _inputs, _output):
            missed = active["key"] == key
            active["key"] = None
            if missed:
                raise MaeprobeError(f"{key[0]} layer {key[1]}: {type(module).__name__} did not call "
                                    "scaled_dot_product_attention, so its attention cannot be computed in query "
                                    "blocks; use --block-queries 0 (full maps)")
        return hook

    def feature_hook(key):
        def hook(_module, _inputs, output):
            store("features", key, output)
        return hook

    def key_hook(key, width):
        def hook(_module, _inputs, output):  # qkv output [B, N, 3 * width], laid out as (q | k | v);
            store("keys", key, output[..., width: 2 * width] if width else output)  # width 0: a k projection
        return hook

    def separate_bias_key_hook(key, attn, width):
        # BEiT-style attention adds q/v biases in F.linear and never calls its qkv module: compute the keys
        # (which have no bias there) from the attention's input with the middle third of the weight.
        def hook(_module, inputs):
            weight = attn.qkv.weight[width: 2 * width]
            bias = attn.k_bias if getattr(attn, "k_bias", None) is not None else None
            store("keys", key, torch.nn.functional.linear(inputs[0], weight, bias))
        return hook

    blocked = False
    try:
        for module, layers in request.attention.items():
            blocks = blocks_of(model, module)
            for layer in sorted(layers):
                attn = blocks[layer].attn
                if not hasattr(attn, "attn_drop"):
                    raise TypeError(f"{module} layer {layer}: {type(attn).__name__} has no attn_drop; "
                                    "only timm-style attention can be probed")
                by_rows = block_queries > 0 and bool(consumers.get(("attention", module, layer)))
                if hasattr(attn, "fused_attn"):
                    fused_before.append((attn, attn.fused_attn))
                    attn.fused_attn = by_rows  # block path: the fused kernel gives the output
                elif by_rows:
                    raise MaeprobeError(f"{module} layer {layer}: {type(attn).__name__} has no fused attention "
                                        "path; use --block-queries 0 (full maps)")
                if by_rows:
                    blocked = True
                    handles.append(attn.register_forward_pre_hook(enter_hook((module, layer))))
                    handles.append(attn.register_forward_hook(leave_hook((module, layer))))
                else:
                    handles.append(attn.attn_drop.register_forward_pre_hook(attention_hook((module, layer))))
        for module, layers in request.features.items():
            blocks = blocks_of(model, module)
            for layer in sorted(layers):
                handles.append(blocks[layer].register_forward_hook(feature_hook((module, layer))))
        for module, layers in request.keys.items():
            blocks = blocks_of(model, module)
            for layer in sorted(layers):
                attn = blocks[layer].attn
                qkv = getattr(attn, "qkv", None)
                if qkv is None:  # EVA-02: separate projections, keys are the k_proj output (before rotary)
                    handles.append(attn.k_proj.register_forward_hook(key_hook((module, layer), 0)))
                    continue
                width = getattr(attn, "attn_dim", qkv.out_features // 3)
                if getattr(attn, "q_bias", None) is not None:  # BEiT / EVA: biases added outside the module
                    handles.append(attn.register_forward_pre_hook(separate_bias_key_hook((module, layer), attn, width)))
                else:
                    handles.append(qkv.register_forward_hook(key_hook((module, layer), width)))
        if blocked:
            F.scaled_dot_product_attention = sdpa
        yield cache
    finally:
        active["key"] = None
        if blocked:
            F.scaled_dot_product_attention = original_sdpa
        for handle in handles:
            handle.remove()
        for attn, fused in fused_before:
            attn.fused_attn = fused
