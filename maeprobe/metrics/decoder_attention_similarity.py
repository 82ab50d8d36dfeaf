"""Decoder attention-map similarity across images, LC-MAE Eq. 7 (Fig. 2).

All images share one seeded mask (Section 4.1: "we deliberately mask all the images with identical random
binary masks"). For decoder layer l and image i, A_{l,i} in R^{k x h x n} is the attention of the k masked
query tokens (rows 1 + masked patch index, ascending) of all h heads over the n patch keys: prefix keys (CLS)
are left out by default, as n is "the number of patches"; ``include_cls_key=True`` keeps the CLS column
(k x h x (1 + n)). Probabilities are used as the softmax gave them (no renormalisation after dropping CLS).
S_l = mean over ordered pairs i != j of cos(A_{l,i}, A_{l,j}).

Streaming and exact: with unit vectors a_i, sum_{i != j} cos = |sum_i a_i|^2 - N, so a running sum of unit
vectors (one vector per layer) replaces the N x N matrix. ``per_head`` also reports each head alone
(its k x n block normalised on its own).

Confidence interval: a pairwise statistic has no per-image value to resample, so the images' independent
units (source photos or files, ``metrics.base``) are put in G fixed groups (unit index mod G: with at most G
units each group is one unit) whose unit-vector sums are kept; a bootstrap replicate draws the non-empty
groups with replacement (counts m) and evaluates the mean cosine over the pairs the original sample could
hold (two images of one draw, or of draws of different groups; two draws of one group, copies of the same
photos, are never paired) from the G x G Gram matrix of the group sums (``base.pairwise_bootstrap_replicates``).
Memory is G x layers x k x h x n, independent of N.

Query blocks: the rows come in blocks (``AttentionRows``), so the per-image normalisation takes two passes
over the blocks, one for each image's norm (and each head's) and one for the normalised sums; no batch-sized
[B, H, k, n] copy is made (in the block path the rows are computed twice, from q and k).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..capture import ActivationCache, CaptureRequest, attention_rows, blocks_of, resolve_layers
from ..errors import MaeprobeError
from .base import (MIN_UNITS, Reducer, check_bootstrap, group_bootstrap_weights, pairwise_bootstrap_replicates, percentile_interval,
                   unit_groups)


def pairwise_cosine_mean(unit_sum: torch.Tensor, count: float) -> torch.Tensor:
    """Mean cosine over ordered pairs i != j from the sum of N unit vectors (last axis)."""
    return ((unit_sum**2).sum(-1) - count) / (count * (count - 1))


class DecoderAttentionSimilarity(Reducer):
    """Streaming Eq. 7 per decoder layer (and per head)."""

    metric = "decoder_attention_similarity"
    module = "decoder"

    def __init__(self, model, *, layers=None, per_head: bool = False, include_cls_key: bool = False,
                 bootstrap: int = 0, bootstrap_seed: int = 0, groups: int = 16) -> None:
        super().__init__()
        bootstrap, bootstrap_seed, groups = check_bootstrap(bootstrap, bootstrap_seed, groups)
        self.include_cls_key = include_cls_key
        self.layers = resolve_layers(model, "decoder", layers)
        from ..limits import check_attention

        check_attention(model, "decoder")
        self.num_heads = blocks_of(model, "decoder")[0].attn.num_heads
        self.num_prefix = model.num_prefix_tokens
        self.per_head, self.bootstrap, self.bootstrap_seed = per_head, bootstrap, bootstrap_seed
        self.groups = groups if bootstrap else 0
        self.masked_rows: torch.Tensor | None = None
        self.add_state("count", torch.zeros(()))
        self._pending: dict[int, torch.Tensor] = {}

    def request(self) -> CaptureRequest:
        return CaptureRequest.of(attention={"decoder": self.layers})

    def consumes(self):
        return {("attention", "decoder", layer) for layer in self.layers}

    def _rows_of(self, cache: ActivationCache) -> torch.Tensor:
        mask = cache.mask.mask
        if not bool((mask == mask[:1]).all()):
            raise MaeprobeError("decoder attention similarity (Eq. 7) needs one mask shared by all images; "
                                "do not use per-image masks")
        masked = torch.nonzero(mask[0] > 0.5).flatten()  # ascending patch indices
        if masked.numel() == 0:
            raise MaeprobeError("decoder attention similarity (Eq. 7) needs masked patches: use --mask-ratio > 0")
        rows = self.num_prefix + masked
        if self.masked_rows is None:
            self.masked_rows = rows.cpu()
        elif not torch.equal(self.masked_rows, rows.cpu()):
            raise MaeprobeError("decoder attention similarity (Eq. 7): the mask changed between batches")
        return rows

    def consume(self, kind, module, layer, tensor, cache) -> None:
        self._pending[layer] = self._reduce_layer(tensor, self._rows_of(cache), cache)

    def _reduce_layer(self, attn, rows, cache) -> dict[str, torch.Tensor]:
        """Sums of unit vectors of one batch and layer: overall [H*k*n], per head [H, k*n], and per group, with
        A_i laid out as [H, k, n] (heads, masked queries, keys) and flattened."""
        source = attention_rows(attn)
        first_key = 0 if self.include_cls_key else self.num_prefix
        B, H = source.shape[:2]
        k, n = len(rows), source.shape[3] - first_key
        device = rows.device
        squares = torch.zeros(B, H, dtype=torch.float64, device=device)
        for _, _, probs in source.blocks(rows):  # pass 1: |A_i|^2 per image and head
            squares += probs[..., first_key:].double().pow(2).sum((-1, -2))
        norm_whole = squares.sum(1).sqrt().clamp_min(1e-300)  # [B]
        norm_heads = squares.sqrt().clamp_min(1e-300)  # [B, H]
        onehot = None
        units = self.note_units(cache)
        if self.groups:
            groups = unit_groups(units, self.groups).to(device)
            onehot = torch.nn.functional.one_hot(groups, self.groups).double().T  # [G, B]
        whole = torch.zeros(H, k, n, dtype=torch.float64, device=device)
        heads = torch.zeros_like(whole) if self.per_head else None
        group_whole = torch.zeros(self.groups, H, k, n, dtype=torch.float64, device=device) if self.groups else None
        group_heads = torch.zeros_like(group_whole) if self.groups and self.per_head else None
        for start, index, probs in source.blocks(rows):  # pass 2: sums of the unit vectors
            stop = start + len(index)
            a = probs[..., first_key:].double()  # [B, H, q, n]
            unit = a / norm_whole[:, None, None, None]
            whole[:, start:stop] += unit.sum(0)
            if onehot is not None:
                group_whole[:, :, start:stop] += torch.einsum("gb,bhqn->ghqn", onehot, unit)
            if self.per_head:
                unit_heads = a / norm_heads[:, :, None, None]
                heads[:, start:stop] += unit_heads.sum(0)
                if onehot is not None:
                    group_heads[:, :, start:stop] += torch.einsum("gb,bhqn->ghqn", onehot, unit_heads)
        out = {"whole": whole.flatten()}
        if self.per_head:
            out["heads"] = heads.flatten(1)
        if onehot is not None:
            out["group_whole"] = group_whole.flatten(1).float()
            if self.per_head:
                out["group_heads"] = group_heads.flatten(2).float()
            out["group_count"] = onehot.sum(1)
        return out

    def _accumulate(self, layer: int, parts: dict[str, torch.Tensor]) -> None:
        for name, value in parts.items():
            key = f"{name}_{layer}"
            if key not in self._state:
                self._state[key] = torch.zeros_like(value, dtype=value.dtype)
            self._state[key] = self._state[key] + value

    def update(self, cache: ActivationCache) -> None:
        pending, self._pending = self._pending, {}
        for layer in self.layers:
            parts = pending.get(layer)
            if parts is None:
                attn = cache.attention[("decoder", layer)]
                parts = self._reduce_layer(attn, self._rows_of(cache), cache)
            self._accumulate(layer, parts)
        if cache.image_indices is None:
            raise MaeprobeError("image indices missing from the cache")
        self._state["count"] += len(cache.image_indices)

    def merge(self, other: "Reducer") -> "Reducer":
        for name, value in other._state.items():
            self._state[name] = self._state[name] + value.to(self._state[name].device) if name in self._state \
                else value.clone()
        self._units |= other._units
        return self

    def all_reduce(self, group=None) -> None:
        """Sum across processes. The state is created at the first batch (its size depends on the mask), so a
        process that saw no images first learns the others' shapes and the mask rows."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        shapes = [None] * dist.get_world_size(group)
        mine = ({k: (tuple(v.shape), v.dtype) for k, v in self._state.items()},
                None if self.masked_rows is None else self.masked_rows.tolist())
        dist.all_gather_object(shapes, mine, group=group)
        for states, rows in shapes:
            for key, (shape, dtype) in states.items():
                if key not in self._state:
                    self._state[key] = torch.zeros(shape, dtype=dtype, device=self._state["count"].device)
            if rows is not None:
                if self.masked_rows is None:
                    self.masked_rows = torch.tensor(rows)
                elif self.masked_rows.tolist() != rows:
                    raise MaeprobeError("decoder attention similarity (Eq. 7): processes used different masks")
        for key in sorted(self._state):
            dist.all_reduce(self._state[key], op=dist.ReduceOp.SUM, group=group)
        self._gather_units(group)

    @property
    def count(self) -> int:
        return int(self._state["count"].item())

    def _interval(self, group_sums: torch.Tensor, group_counts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Group bootstrap of Eq. 7. group_sums [G, ..., d] -> (low, high) of shape [...]."""
        g = group_sums.double().flatten(1, -2) if group_sums.ndim > 2 else group_sums.double().unsqueeze(1)
        gram = torch.einsum("gsd,hsd->sgh", g, g).cpu().numpy()  # [S, G, G]
        counts = group_counts.double().cpu().numpy()  # [G]
        filled = counts > 0  # groups with images: the units actually seen
        gram, counts = gram[:, filled][:, :, filled], counts[filled]
        shape = group_sums.shape[1:-1]
        if len(counts) < MIN_UNITS:  # too few units (or groups) to resample: no interval
            return np.full(shape, np.nan), np.full(shape, np.nan)
        draws = group_bootstrap_weights(len(counts), self.bootstrap, self.bootstrap_seed)  # [R, G']
        reps = pairwise_bootstrap_replicates(gram, counts, draws)  # [R, S]
        low, high = percentile_interval(reps)
        return low.reshape(shape), high.reshape(shape)

    def rows(self) -> list[dict]:
        n = self.count
        if n < 2:
            raise MaeprobeError("decoder attention similarity (Eq. 7) needs at least 2 images")
        out = []
        for layer in self.layers:
            whole = pairwise_cosine_mean(self._state[f"whole_{layer}"], n).item()
            low = high = np.nan
            if self.groups:
                lo, hi = self._interval(self._state[f"group_whole_{layer}"], self._state[f"group_count_{layer}"])
                low, high = float(lo), float(hi)
            out.append({"metric": self.metric, "module": "decoder", "layer": layer, "head": pd.NA, "value": whole,
                        "std": np.nan, "ci_low": low, "ci_high": high, "n_images": n})
            if self.per_head:
                per_head = pairwise_cosine_mean(self._state[f"heads_{layer}"], n)
                lows = highs = np.full(self.num_heads, np.nan)
                if self.groups:
                    lows, highs = self._interval(self._state[f"group_heads_{layer}"],
                                                 self._state[f"group_count_{layer}"])
                for head in range(self.num_heads):
                    out.append({"metric": self.metric, "module": "decoder", "layer": layer, "head": head,
                                "value": float(per_head[head]), "std": np.nan, "ci_low": float(lows[head]),
                                "ci_high": float(highs[head]), "n_images": n})
        return out

    def settings(self) -> dict:
        return {"masked_queries": int(self.masked_rows.numel()) if self.masked_rows is not None else 0,
                "cls_key": bool(self.include_cls_key)}
