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
  keep (or get) timm's fused branch, which calls ``scaled_dot_product_attention``. While a probed attention
  module runs, ``capture`` wraps ``torch.nn.functional.scaled_dot_product_attention`` and hands q and k
  exactly as the model passes them (after q/k norms and rotary embeddings; the family's scale and its
  additive bias, e.g. BEiT's relative position bias, are the call's own arguments) to the consumers as
  ``AttentionRows``, which compute ``softmax(q k^T * scale + bias)`` for n query rows at a time in float32.
  Memory grows with n x N, not N^2. The layer's output is p @ v from those same probabilities (on CPU, and
  whenever all N queries fit in one block: half the attention work of running the fused kernel beside
  them) or, on GPUs, the fused kernel's (``block_output``); both equal a bare forward to float tolerance.
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
            import numbers

            if d is not None and not isinstance(d, dict):
                raise MaeprobeError(f"CaptureRequest.of: expected {{'encoder'|'decoder': [layer, ...]}}, got "
                                    f"{type(d).__name__}")
            frozen = {}
            for module, layers in (d or {}).items():
                if module not in ("encoder", "decoder"):
                    raise MaeprobeError(f"CaptureRequest.of: module must be 'encoder' or 'decoder', got {module!r:.40}")
                if isinstance(layers, (str, bytes, dict)) or not isinstance(layers, Iterable):
                    raise MaeprobeError(f"CaptureRequest.of: the {module}'s layers must be a list of whole numbers")
                layers = list(layers)
                if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in layers):
                    raise MaeprobeError(f"CaptureRequest.of: the {module}'s layers must be whole numbers, got "
                                        f"{layers!r:.60}")
                frozen[module] = frozenset(int(i) for i in layers)
            return frozen

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
    ``unit_indices``: the independent unit of every image (its source photo or file; see
    ``data.resample_units``), which bootstrap intervals resample (None: each image is its own unit);
    ``references``: caches of reference models run on the same images (by reference name).
    """

    attention: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    features: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    keys: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    mask: MaskInfo | None = None
    image_indices: torch.Tensor | None = None
    unit_indices: torch.Tensor | None = None
    references: dict[str, "ActivationCache"] = field(default_factory=dict)

    def clear(self) -> None:
        self.attention.clear()
        self.features.clear()
        self.keys.clear()
        self.mask = None
        self.image_indices = None
        self.unit_indices = None
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
                 scale: float | None = None, block: int = 128, value: torch.Tensor | None = None) -> None:
        self.scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        # one contiguous float32 copy of each (the model's q and k are usually strided views of its qkv
        # projection, which every block's matmul would otherwise copy again); q carries the scale
        self.q = (q.float() * self.scale).contiguous()
        self.k_t = k.float().contiguous().transpose(-2, -1)
        self.bias = bias
        self.block = max(1, int(block))
        self.shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        self.device = q.device
        # with ``value``: a pass over the blocks also writes the attention output p @ v of the rows not written
        # yet (``output()`` adds the rows no consumer asked for), so the fused kernel need not run at all
        self.value = None if value is None else value.float().contiguous()
        self._out: torch.Tensor | None = None
        self._covered: torch.Tensor | None = None

    def _buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two [B, H, rows, Nk] float32 views (logits, probabilities) of buffers kept across blocks: a fresh
        block-sized tensor per block costs page faults (large allocations are mapped and unmapped each time)
        that on CPU took as long as the block's matrix product."""
        B, H, _, Nk = self.shape
        need = B * H * rows * Nk
        if getattr(self, "_flat", None) is None or self._flat[0].numel() < need:
            self._flat = tuple(torch.empty(need, device=self.device) for _ in range(2))
        return tuple(flat[:need].view(B, H, rows, Nk) for flat in self._flat)

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Probabilities of the query rows ``index`` ([n] indices or a slice): [B, H, n, Nk] float32, in a buffer
        that the next call overwrites (reduce a block before asking for the next)."""
        q = self.q[:, :, index]
        logits, probs = self._buffers(q.shape[2])
        with torch.autocast(self.device.type, enabled=False):  # float32 logits under a bf16 forward too
            torch.matmul(q, self.k_t, out=logits)
        if self.bias is not None:
            bias = self.bias if self.bias.shape[-2] == 1 else self.bias[..., index, :]
            if bias.dtype == torch.bool:
                logits.masked_fill_(~bias, float("-inf"))
            else:
                logits.add_(bias.float())
        return torch.softmax(logits, -1, out=probs)

    def blocks(self, queries: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(position of the block's first query in ``queries``, the query rows, their probabilities) for
        ``queries`` (default: all rows) in blocks of ``block`` rows. Each block's probabilities are overwritten
        by the next block's: reduce them (or copy what must be kept) before the loop goes on."""
        if queries is None:
            queries = torch.arange(self.shape[2], device=self.device)
        queries = queries.to(self.device)
        writing = self.value is not None  # output rows not written yet are written from these blocks
        if writing:
            self._allocate_output()
        for start, index, which in self._chunks(queries):
            probs = self.rows(which)
            if writing and not bool(self._covered[which].all()):
                self._write(which, probs)
            yield start, index, probs

    def _allocate_output(self) -> None:
        if self._out is None:
            B, H, Nq, _ = self.shape
            self._out = torch.empty(B, H, Nq, self.value.shape[-1], device=self.device)
            self._covered = torch.zeros(Nq, dtype=torch.bool, device=self.device)  # rows written so far

    def _write(self, which: torch.Tensor | slice, probs: torch.Tensor) -> None:
        with torch.autocast(self.device.type, enabled=False):
            self._out[:, :, which] = probs @ self.value
        self._covered[which] = True

    def output(self) -> torch.Tensor:
        """The attention output [B, H, Nq, dv] (float32) from the same probabilities: the rows written while a
        consumer went over the blocks, and the others (prefix tokens, unmasked decoder rows, or all rows when no
        consumer asked) computed now, in blocks."""
        self._allocate_output()
        for _, _, which in self._chunks((~self._covered).nonzero().squeeze(1)):
            self._write(which, self.rows(which))
        return self._out

    def _chunks(self, queries: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | slice]]:
        """(start, query rows, what to index q with) per block of ``queries``: a slice when the rows are
        consecutive (all but Eq. 7's masked rows), which avoids gathering q, else the rows themselves."""
        first = int(queries[0]) if len(queries) else 0
        run = bool((queries == torch.arange(first, first + len(queries), device=queries.device)).all())
        for start in range(0, len(queries), self.block):
            index = queries[start:start + self.block]
            yield start, index, slice(first + start, first + start + len(index)) if run else index


class AttentionMap(AttentionRows):
    """The same interface over a materialised [B, H, N, N] map (the full-map path): slices of at most 256 rows,
    so that a reduction's temporary (e.g. a contiguous copy of a slice) stays block-sized next to the map."""

    def __init__(self, attn: torch.Tensor) -> None:
        self.attn, self.shape, self.block = attn, tuple(attn.shape), min(attn.shape[2], 256)
        self.value = None
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
            stop_after: tuple[str, str, int] | None = None, block_queries: int = 0,
            block_output: str = "auto") -> Iterator[ActivationCache]:
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
            blocks of this many query rows from q and k, and the model takes its fused branch (module
            docstring); 0: full [B, H, N, N] maps from timm's explicit path. Attention stored in the cache is
            always a full map.
        block_output: where a layer's output comes from on the block path when its queries need several
            blocks: ``"blocks"``: p @ v from the same float32 probabilities, row block by row block (the
            statistics compute them anyway); ``"fused"``: the model's fused kernel, the probabilities computed
            beside it; ``"auto"`` (default): blocks on CPU (cheaper there), fused on other devices. Either way
            memory stays within the block bound; a layer whose queries fit in one block uses p @ v. A forward
            that trains (autograd on, or attention dropout) always takes the kernel's output.

    Example:
        >>> with capture(model, CaptureRequest.of(attention={"encoder": [0, 11]})) as cache:
        ...     model.forward_encoder(images)
        >>> cache.attention[("encoder", 11)].shape  # [B, heads, N, N]
    """
    import torch.nn.functional as F

    if block_output not in ("auto", "blocks", "fused"):
        raise MaeprobeError(f"block_output must be 'auto', 'blocks' or 'fused', got {block_output!r:.40}")
    if not isinstance(model, nn.Module):
        raise MaeprobeError(f"capture: model must be a model from maeprobe.load or build_mae, got "
                            f"{type(model).__name__}")
    if not isinstance(request, CaptureRequest):
        raise MaeprobeError(f"capture: request must be a CaptureRequest (CaptureRequest.of(...)), got "
                            f"{type(request).__name__}")
    for kind in ("attention", "features", "keys"):  # every layer exists (negative indices would silently wrap)
        for module, layers in getattr(request, kind).items():
            try:
                depth = len(blocks_of(model, module)) if layers else 0
            except (AttributeError, TypeError):
                depth = 0
            bad = sorted(i for i in layers if not 0 <= i < depth)
            if bad:
                raise MaeprobeError(f"capture: the {module} has {depth} layers (0-{depth - 1}); {kind} of layer "
                                    f"{bad[0]} asked")
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
        if probed is None:
            return original_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                 scale=scale, **kwargs)
        active["key"] = None
        if is_causal or kwargs or key.shape[1] != query.shape[1]:
            raise MaeprobeError(f"{probed[0]} layer {probed[1]}: its attention call (causal, grouped heads or extra "
                                "arguments) cannot be computed in query blocks; use --block-queries 0 (full maps)")
        trains = bool(dropout_p) or (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (query, key, value, attn_mask)))
        several = query.shape[2] > block_queries
        kernel_output = trains or (several and (block_output == "fused" or (block_output == "auto"
                                                                             and query.device.type != "cpu")))
        rows = AttentionRows(query.detach(), key.detach(), None if attn_mask is None else attn_mask.detach(), scale,
                             block_queries, value=value.detach() if several and not kernel_output else None)
        if kernel_output:
            # the model's kernel gives the output: a forward that trains (the statistics' rows are detached and
            # dropout-free, as the full maps are read before dropout), or by choice; the statistics beside it
            store("attention", probed, rows)
            return original_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                 scale=scale, **kwargs)
        if not several:
            # every query fits in one block: its probabilities, which the statistics need anyway, also give the
            # output (p @ v), instead of the fused kernel computing them a second time; memory stays within
            # the block bound (block x tokens per head and image)
            probs = rows.rows(slice(None))
            store("attention", probed, AttentionMap(probs))
            with torch.autocast(query.device.type, enabled=False):  # float32, as the multi-block output
                return (probs @ value.float()).to(value.dtype)
        # the statistics' probabilities also give the output (p @ v, block by block): on CPU cheaper than the
        # fused kernel computing them a second time (benchmarks/README.md); memory stays in the bound
        store("attention", probed, rows)
        return rows.output().to(value.dtype)

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
                    attn.fused_attn = by_rows  # block path: the fused branch, its SDPA call served above
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


class _CallableModule(type(math)):
    """``maeprobe.capture`` names both this module and its function ``capture`` (the package exports the function).
    Importing this module, which every metric does, rebinds the package's attribute ``capture`` to the module, so
    the module forwards calls to the function: ``maeprobe.capture(model, request)`` works either way."""

    def __call__(self, *args, **kwargs):
        return capture(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
