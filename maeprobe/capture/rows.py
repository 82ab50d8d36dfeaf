"""One layer's attention probabilities in blocks of query rows (``AttentionRows``), or over a full map.

The block path never holds a [B, H, N, N] map: consumers reduce one block of rows at a time, computed in float32
from q and k as the model passed them to ``scaled_dot_product_attention`` (``sdpa.py`` intercepts that call).
Memory grows with block x N, not N^2.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch


class BufferPool:
    """Float32 buffers that the layers of one capture pass on to each other (``AttentionRows.release``): each
    layer needs the same few block- and layer-sized buffers, and allocating them afresh per layer cost page
    faults on CPU (benchmarks/README.md). Holds only what was given back; a buffer is handed to one holder."""

    def __init__(self) -> None:
        self.free: list[torch.Tensor] = []

    def take(self, numel: int, device) -> torch.Tensor:
        """The smallest free buffer of at least ``numel`` elements on ``device``, else a new one."""
        fits = [b for b in self.free if b.numel() >= numel and b.device == torch.device(device)]
        if not fits:
            return torch.empty(numel, device=device)
        best = min(fits, key=torch.Tensor.numel)
        self.free = [b for b in self.free if b is not best]
        return best

    def give(self, flat: torch.Tensor) -> None:
        self.free.append(flat)


class AttentionRows:
    """One layer's attention probabilities served in blocks of query rows, never as a whole [B, H, N, N] map.

    ``q`` [B, H, Nq, d] and ``k`` [B, H, Nk, d] as the model passed them to scaled_dot_product_attention,
    ``bias``: its ``attn_mask`` (None, an additive float bias or a boolean keep-mask, broadcastable to
    [B, H, Nq, Nk]), ``scale``: its ``scale`` (None: d^-0.5, SDPA's default). Probabilities are computed in
    float32 whatever the autocast dtype of the forward pass.
    """

    def __init__(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                 scale: float | None = None, block: int = 128, value: torch.Tensor | None = None,
                 pool: BufferPool | None = None) -> None:
        self.scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        self.pool = pool if pool is not None else BufferPool()
        self._held: list[torch.Tensor] = []  # this layer's buffers from the pool, given back by ``release``
        # k as one contiguous float32 copy carrying the scale, kept transposed ([B, H, d, Nk]): on CPU q @ k^T
        # from it took half the time of the same product from a transposed view of a contiguous k (2.5 against
        # 4.6 ms per 64-row block at 518 px). q stays the model's tensor (usually a strided view of its qkv
        # projection): each block's rows are copied by the product itself, a block-sized copy, not a layer-sized one
        self.q = q
        self.k_t = self._take(k.shape[:2] + (k.shape[3], k.shape[2]), k.device)
        if k.dtype == torch.float32:
            torch.mul(k.transpose(-2, -1), self.scale, out=self.k_t)
        else:  # (a bf16 k: scaled after the exact cast to float32, as the statistics are computed in float32)
            self.k_t.copy_(k.transpose(-2, -1)).mul_(self.scale)
        self.bias = bias
        self.block = max(1, int(block))
        self.shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        self.device = q.device
        # with ``value``: a pass over the blocks also writes the attention output p @ v of the rows not written
        # yet (``output()`` adds the rows no consumer asked for), so the fused kernel need not run at all
        self.value = None if value is None else self._take(value.shape, value.device).copy_(value)
        self._out: torch.Tensor | None = None
        self._covered: torch.Tensor | None = None

    def _take(self, shape, device) -> torch.Tensor:
        """A float32 tensor of ``shape`` from the pool, held until ``release``."""
        flat = self.pool.take(math.prod(shape), device)
        self._held.append(flat)
        return flat[:math.prod(shape)].view(shape)

    def release(self) -> None:
        """Give this layer's buffers (the k and v copies, the block buffers, the work buffer) back to the pool: the
        next layer reuses them instead of allocating (and on CPU page-faulting) its own. The capture calls it when
        the layer's attention call returns; the rows cannot be read after that."""
        for flat in self._held:
            self.pool.give(flat)
        self._held, self._flat, self._work, self.q, self.k_t, self.value = [], None, None, None, None, None

    def scratch(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 [shape] work buffer for a consumer's per-block temporaries (e.g. a ln a of a block), from the
        same pool as the block buffers and given back with them: the next call overwrites it."""
        need = math.prod(shape)
        if getattr(self, "_work", None) is None or self._work.numel() < need:
            self._work = self._take((need,), self.device)
        return self._work[:need].view(shape)

    def _buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two [B, H, rows, Nk] float32 views (logits, probabilities) of buffers kept across blocks: a fresh
        block-sized tensor per block costs page faults (large allocations are mapped and unmapped each time)
        that on CPU took as long as the block's matrix product."""
        B, H, _, Nk = self.shape
        need = B * H * rows * Nk
        if getattr(self, "_flat", None) is None or self._flat[0].numel() < need:
            self._flat = tuple(self._take((need,), self.device) for _ in range(2))
        return tuple(flat[:need].view(B, H, rows, Nk) for flat in self._flat)

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Probabilities of the query rows ``index`` ([n] indices or a slice): [B, H, n, Nk] float32, in a buffer
        that the next call overwrites (reduce a block before asking for the next)."""
        return self.probs_of(index)[0]

    def probs_of(self, index: torch.Tensor | slice, log: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities softmax(z), and with ``log`` their logarithms, else None) of the query rows ``index``, both
        [B, H, n, Nk] float32 in buffers that the next call overwrites; z is scaled q.k^T plus the bias (-inf where
        a boolean mask drops a key). With ``log``: ln p = log_softmax(z) and p = exp(ln p), one pass more than a
        softmax, so that a consumer of -sum p ln p needs no logarithm per entry (on CPU, ViT-S/14 at 518 px, 4.1
        against 5.3 ms per 64-row block; ``attention_entropy.alna_sums``); None when a logit is -inf (ln p too).
        Each call gets a new ``serial``: consumers of one block may share what they derive from it (keyed by it)."""
        self.serial = getattr(self, "serial", 0) + 1
        if self.q is None:
            raise RuntimeError("AttentionRows read after its layer's forward returned; reduce the rows in the consumer")
        q = self.q[:, :, index].float()
        logits, probs = self._buffers(q.shape[2])
        with torch.autocast(self.device.type, enabled=False):  # float32 logits under a bf16 forward too
            torch.matmul(q, self.k_t, out=logits)
        if self.bias is not None:
            bias = self.bias if self.bias.shape[-2] == 1 else self.bias[..., index, :]
            if bias.dtype == torch.bool:
                logits.masked_fill_(~bias, float("-inf"))
            else:
                logits.add_(bias.float())
        if log and self._finite():  # ln p into the probabilities' buffer, p into the logits' (no aliasing)
            log_probs = torch.log_softmax(logits, -1, out=probs)
            return torch.exp(log_probs, out=logits), log_probs
        return torch.softmax(logits, -1, out=probs), None

    def _finite(self) -> bool:
        """No logit is -inf: no boolean mask and an additive bias without infinities (checked once)."""
        if getattr(self, "_all_finite", None) is None:
            self._all_finite = self.bias is None or (self.bias.dtype != torch.bool and
                                                     bool(torch.isfinite(self.bias).all()))
        return self._all_finite

    def blocks(self, queries: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(position of the block's first query in ``queries``, the query rows, their probabilities) for
        ``queries`` (default: all rows) in blocks of ``block`` rows. Each block's probabilities are overwritten
        by the next block's: reduce them (or copy what must be kept) before the loop goes on."""
        for start, index, probs, _ in self.block_pass(queries):
            yield start, index, probs

    def block_pass(self, queries: torch.Tensor | None = None, log: bool = False) -> Iterator[
            tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """As ``blocks``, with each block's log-probabilities too when ``log`` (``probs_of``; None without, for a
        full map, or where a logit is -inf): (start, query rows, probabilities, log-probabilities), both
        overwritten by the next block."""
        if queries is None:
            queries = torch.arange(self.shape[2], device=self.device)
        queries = queries.to(self.device)
        writing = self.value is not None  # output rows not written yet are written from these blocks
        if writing:
            self._allocate_output()
        for start, index, which in self._chunks(queries):
            probs, log_probs = self.probs_of(which, log)
            if writing and not bool(self._covered[which].all()):
                self._write(which, probs)
            yield start, index, probs, log_probs

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
        self.value = self.bias = None
        self.pool, self._held = BufferPool(), []  # (``scratch``: a buffer of this map's own)
        self.q, self.device = attn, attn.device  # (``blocks`` moves the queries to it)

    def probs_of(self, index: torch.Tensor | slice, log: bool = False) -> tuple[torch.Tensor, None]:
        self.serial = getattr(self, "serial", 0) + 1
        return self.attn[:, :, index].float(), None


def attention_rows(tensor) -> AttentionRows:
    """A consumer's attention input as ``AttentionRows`` (a full map is wrapped)."""
    return tensor if isinstance(tensor, AttentionRows) else AttentionMap(tensor)
