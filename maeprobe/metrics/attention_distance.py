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
        self.num_heads = blocks_of(model, module)[0].attn.num_heads
        self.num_prefix = model.num_prefix_tokens
        cfg = model.config
        scale = cfg.patch_size if units == "px" else 1
        self.distances = patch_distances(cfg.grid_size, scale).float()  # [L, L]
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

    def update(self, cache: ActivationCache) -> None:
        P = self.num_prefix
        first = cache.attention[(self.module, self.layers[0])]
        B, device = first.shape[0], first.device
        positions = self._token_positions(cache, B).to(device)  # [B, K]
        distances = self.distances.to(device)
        K = positions.shape[1]
        same_positions = bool((positions == positions[:1]).all())
        if same_positions:
            pos = positions[0]
            token_dist = distances[pos][:, pos]  # [K, K]
            if not self.renormalize:
                N = P + K  # distance matrix over the whole sequence, zero on prefix rows/columns
                full = torch.zeros(N, N, device=device)
                full[P:, P:] = token_dist
                full_flat = full.flatten() / K
        else:
            token_dist = distances[positions.unsqueeze(-1), positions.unsqueeze(-2)]  # [B, K, K]
        per_layer = []
        for layer in self.layers:
            attn = cache.attention[(self.module, layer)].float()  # [B, H, N, N]
            if same_positions and not self.renormalize:
                # sum_{q,k} a_qk d_qk / K as one matrix-vector product, no [B, H, N, N] temporary
                per_layer.append(attn.flatten(2) @ full_flat)  # [B, H]
                continue
            patch_attn = attn[:, :, P:, P:]  # [B, H, K, K]
            d = token_dist if token_dist.ndim == 2 else token_dist[:, None]
            per_query = (patch_attn * d).sum(-1)  # [B, H, K]
            if self.renormalize:
                per_query = per_query / patch_attn.sum(-1).clamp_min(1e-12)
            per_layer.append(per_query.mean(-1))  # [B, H]
        values = torch.stack(per_layer, dim=1)  # [B, layers, H]
        self.add(values, cache.image_indices if cache.image_indices is not None else torch.arange(B))

    def rows(self) -> list[dict]:
        s = self.summary()
        n = self.count
        return [
            {"metric": self.metric, "module": self.module, "layer": layer, "head": head,
             "value": float(s["value"][i, head]), "std": float(s["std"][i, head]),
             "ci_low": float(s["ci_low"][i, head]), "ci_high": float(s["ci_high"][i, head]), "n_images": n}
            for i, layer in enumerate(self.layers) for head in range(self.num_heads)
        ]
