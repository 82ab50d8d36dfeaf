"""Mean attention distance (Dosovitskiy et al. 2021, Fig. 7; LC-MAE Fig. 5/6), per layer and head.

For query patch i and key patch j at grid positions g_i, g_j, the distance is ``|g_i - g_j|`` between
patch centres (times the patch size for pixels). Per head: ``sum_j a_ij d_ij``, averaged over query
patches, then over images. Prefix tokens (CLS, distillation, registers) are dropped as queries and as
keys, and rows are not renormalised, so attention spent on prefix tokens counts as distance 0 (the ViT
authors' convention). ``renormalize=True`` divides each row by its mass on patch keys instead. With a
mask, visible tokens keep their original grid positions.

The sums run over blocks of query rows (``AttentionRows``): from the model's q and k in the block path, or
slices of a full map; either way no [B, H, N, N] temporary beyond what the rows themselves hold.
"""
from __future__ import annotations

import torch

from ..capture import ActivationCache, AttentionRows, attention_rows, blocks_of, resolve_layers
from ..errors import MaeprobeError
from .base import LayerHeadMean


def patch_distances(grid_size: int, patch_size: int = 1) -> torch.Tensor:
    """Euclidean distances between patch centres of a grid, row-major order. Returns [L, L]."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).double() * patch_size  # [L, 2]
    return torch.cdist(centres, centres)


class AttentionDistance(LayerHeadMean):
    """Streaming mean attention distance of every (layer, head) of the encoder or decoder."""

    metric = "attention_distance"

    def __init__(self, model, *, module: str = "encoder", layers=None, units: str = "px",
                 renormalize: bool = False, bootstrap: int = 0, bootstrap_seed: int = 0) -> None:
        if units not in ("px", "patches"):
            raise MaeprobeError(f"units must be 'px' or 'patches', got {units!r}")
        self.module, self.units, self.renormalize = module, units, renormalize
        self.layers = resolve_layers(model, module, layers)
        from ..limits import check_attention

        check_attention(model, module)  # before the [L, L] distances and any [B, heads, N, N] map
        self.num_heads = blocks_of(model, module)[0].attn.num_heads
        self.num_prefix = model.num_prefix_tokens
        cfg = model.config
        scale = cfg.patch_size if units == "px" else 1
        self.distances = patch_distances(cfg.grid_size, scale).float()  # [L, L]
        # the value of uniform attention over every token (prefix keys count 0 unless renormalised): the level
        # of an untrained ViT, drawn in the figures and used as a control by the findings
        L = cfg.grid_size ** 2
        mean = float(patch_distances(cfg.grid_size, scale).mean())
        self.uniform_level = mean if renormalize else mean * L / (L + self.num_prefix)
        super().__init__((len(self.layers), self.num_heads), bootstrap, bootstrap_seed)

    def settings(self) -> dict:
        return {"units": self.units, "renormalize": self.renormalize}

    def _token_positions(self, cache: ActivationCache, batch_size: int) -> torch.Tensor:
        """Grid index of every patch token in the sequence, [B, K] (decoder: all patches in order)."""
        if self.module == "encoder" and cache.mask is not None:
            return cache.mask.ids_keep
        L = self.distances.shape[0]
        return torch.arange(L).expand(batch_size, L)

    def _prepare(self, cache: ActivationCache, batch_size: int, device) -> None:
        """Distances from every patch query to every key of this batch's sequence (zero for prefix keys), once
        per batch: [K, N] when all images share the token positions, else [B, K, N]."""
        P = self.num_prefix
        positions = self._token_positions(cache, batch_size).to(device)  # [B, K]
        distances = self.distances.to(device)
        self._shared = bool((positions == positions[:1]).all())
        if self._shared:
            pos = positions[0]
            self._query_dist = torch.nn.functional.pad(distances[pos][:, pos], (P, 0))  # [K, P + K]
        else:
            d = distances[positions.unsqueeze(-1), positions.unsqueeze(-2)]  # [B, K, K]
            self._query_dist = torch.nn.functional.pad(d, (P, 0))  # [B, K, P + K]

    def _layer_values(self, attn) -> torch.Tensor:
        """Per-image mean distance of one layer: attention (a [B, H, N, N] map or ``AttentionRows``) -> [B, H]."""
        rows: AttentionRows = attention_rows(attn)
        P = self.num_prefix
        B, H, N, _ = rows.shape
        total = torch.zeros(B, H, device=self._query_dist.device)
        queries = torch.arange(P, N, device=self._query_dist.device)  # patch queries only
        for start, index, probs in rows.blocks(queries):  # probs [B, H, n, N]
            d = self._query_dist[start:start + len(index)] if self._shared \
                else self._query_dist[:, start:start + len(index)]
            if self.renormalize and P:  # each row divided by its mass on patch keys
                per_query = torch.linalg.vecdot(probs, d if self._shared else d.unsqueeze(1))
                total += (per_query / (1.0 - probs[..., :P].sum(-1)).clamp_min(1e-12)).sum(-1)
            elif self._shared:  # sum over queries and keys of p * d: one matrix-vector product, no temporary
                total += (probs.reshape(B * H, -1) @ d.reshape(-1)).reshape(B, H)
            else:
                total += (probs.reshape(B, H, -1) @ d.reshape(B, -1, 1)).reshape(B, H)
        return total / (N - P)
