"""Mean attention distance (Dosovitskiy et al. 2021, Fig. 7; LC-MAE Fig. 5/6), per layer and head.

For query patch i and key patch j at grid positions g_i, g_j, the distance is ``|g_i - g_j|`` between
patch centres (times the patch size for pixels). Per head: ``sum_j a_ij d_ij``, averaged over query
patches, then over images. Prefix tokens (CLS, distillation, registers) are dropped as queries and as
keys, and rows are not renormalised, so attention spent on prefix tokens counts as distance 0 (the ViT
authors' convention). ``renormalize=True`` divides each row by its mass on patch keys instead. With a
mask, visible tokens keep their original grid positions.
"""
from __future__ import annotations

import torch

from ..capture import ActivationCache, CaptureRequest, blocks_of, resolve_layers
from ..errors import MaeprobeError
from .base import ImageMean


def patch_distances(grid_size: int, patch_size: int = 1) -> torch.Tensor:
    """Euclidean distances between patch centres of a grid, row-major order. Returns [L, L]."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).double() * patch_size  # [L, 2]
    return torch.cdist(centres, centres)


class AttentionDistance(ImageMean):
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

    def request(self) -> CaptureRequest:
        return CaptureRequest.of(attention={self.module: self.layers})

    def settings(self) -> dict:
        return {"units": self.units, "renormalize": self.renormalize}

    def _token_positions(self, cache: ActivationCache, batch_size: int) -> torch.Tensor:
        """Grid index of every patch token in the sequence, [B, K] (decoder: all patches in order)."""
        if self.module == "encoder" and cache.mask is not None:
            return cache.mask.ids_keep
        L = self.distances.shape[0]
        return torch.arange(L).expand(batch_size, L)

    def _prepare(self, cache: ActivationCache, batch_size: int, device) -> None:
        """Distance matrices for this batch's token positions (once per batch)."""
        P = self.num_prefix
        positions = self._token_positions(cache, batch_size).to(device)  # [B, K]
        distances = self.distances.to(device)
        K = positions.shape[1]
        self._shared = bool((positions == positions[:1]).all())
        if self._shared:
            pos = positions[0]
            self._token_dist = distances[pos][:, pos]  # [K, K]
            full = torch.zeros(P + K, P + K, device=device)  # whole sequence, zero on prefix rows/cols
            full[P:, P:] = self._token_dist
            self._full_flat = full.flatten() / K
        else:
            self._token_dist = distances[positions.unsqueeze(-1), positions.unsqueeze(-2)]  # [B, K, K]
        self._prepared_for = cache.mask

    def _layer_values(self, attn: torch.Tensor) -> torch.Tensor:
        """Per-image mean distance of one layer: attention [B, H, N, N] -> [B, H]."""
        attn = attn.float()
        if self._shared and not self.renormalize:
            # sum_{q,k} a_qk d_qk / K as one matrix-vector product, no [B, H, N, N] temporary
            return attn.flatten(2) @ self._full_flat
        P = self.num_prefix
        patch_attn = attn[:, :, P:, P:]  # [B, H, K, K]
        d = self._token_dist if self._token_dist.ndim == 2 else self._token_dist[:, None]
        per_query = (patch_attn * d).sum(-1)  # [B, H, K]
        if self.renormalize:
            per_query = per_query / patch_attn.sum(-1).clamp_min(1e-12)
        return per_query.mean(-1)

    def consumes(self) -> set[tuple[str, str, int]]:
        return {("attention", self.module, layer) for layer in self.layers}

    def consume(self, kind, module, layer, tensor, cache) -> None:
        if getattr(self, "_prepared_for", None) is not cache.mask or not hasattr(self, "_pending"):
            self._prepare(cache, tensor.shape[0], tensor.device)
            self._pending = {}
        self._pending[layer] = self._layer_values(tensor)  # the attention tensor itself is not kept

    def update(self, cache: ActivationCache) -> None:
        pending = getattr(self, "_pending", {})
        self._pending = {}
        missing = [layer for layer in self.layers if layer not in pending]
        if missing:
            first = cache.attention[(self.module, missing[0])]
            self._prepare(cache, first.shape[0], first.device)
            for layer in missing:
                pending[layer] = self._layer_values(cache.attention[(self.module, layer)])
        values = torch.stack([pending[layer] for layer in self.layers], dim=1)  # [B, layers, H]
        B = values.shape[0]
        self.add(values, cache.image_indices if cache.image_indices is not None else torch.arange(B))
        self._prepared_for = None

    def rows(self) -> list[dict]:
        s = self.summary()
        n = self.count
        return [
            {"metric": self.metric, "module": self.module, "layer": layer, "head": head,
             "value": float(s["value"][i, head]), "std": float(s["std"][i, head]),
             "ci_low": float(s["ci_low"][i, head]), "ci_high": float(s["ci_high"][i, head]), "n_images": n,
             "uniform_level": self.uniform_level}
            for i, layer in enumerate(self.layers) for head in range(self.num_heads)
        ]
