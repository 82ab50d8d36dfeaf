"""Mean attention distance (Dosovitskiy et al. 2021, Fig. 7; LC-MAE Fig. 5/6), per layer and head.

For query patch i and key patch j at grid positions g_i, g_j, the distance is ``|g_i - g_j|`` between
patch centres (times the patch size for pixels). Per head: ``sum_j a_ij d_ij``, averaged over query
patches, then over images. Prefix tokens (CLS, distillation, registers) are dropped as queries and as
keys, and rows are not renormalised, so attention spent on prefix tokens counts as distance 0 (the ViT
authors' convention). ``renormalize=True`` divides each row by its mass on patch keys instead. With a
mask, visible tokens keep their original grid positions.

The sums run over blocks of query rows (``AttentionRows``): from the model's q and k in the block path, or
slices of a full map; either way no [B, H, N, N] temporary beyond what the rows themselves hold. The distances
are made per block too, from the tokens' grid positions: a checkpoint of half a megabyte (patch 1 on a 128 x 128
grid, one head) passes the attention limit, and its patch-to-patch distances alone would be 16384^2 (2 GB in
float64; per image, with per-image masks). They are kept for a whole batch only when that is small
(``DISTANCE_CACHE_BYTES``); the uniform level is a sum over the grid's offsets, not over pairs of patches.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._lazy import lazy
from ..errors import MaeprobeError
from .base import BlockVisitor, LayerHeadMean
from .registry import FigureSpec, MetricSpec, check_flag, checkpoint_name, heads_by_layer, images_text, option, register

np = lazy("numpy")
torch = lazy("torch")
_capture = lazy("maeprobe.capture")


# The distances from every query to every key of a batch are computed once per batch when they take at most this
# many bytes (float32), else for each block of queries.
DISTANCE_CACHE_BYTES = 16 << 20


def patch_distances(grid_size: int, patch_size: int = 1) -> torch.Tensor:
    """Euclidean distances between patch centres of a grid, row-major order. Returns [L, L] (L^2 entries: for
    small grids; the metric itself never builds it)."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).double() * patch_size  # [L, 2]
    return torch.cdist(centres, centres)


def mean_patch_distance(grid_size: int, patch_size: float = 1) -> float:
    """Mean distance between the centres of all ordered pairs of a grid's patches (a patch with itself included),
    from the (2g - 1)^2 offsets (dy, dx), each shared by (g - |dy|) (g - |dx|) pairs: O(g^2), not O(g^4)."""
    g = int(grid_size)
    offsets = np.arange(-(g - 1), g, dtype=np.float64)
    pairs = g - np.abs(offsets)
    return float((pairs[:, None] * pairs[None, :] * np.hypot(offsets[:, None], offsets[None, :])).sum()
                 / float(g) ** 4 * patch_size)


class AttentionDistance(LayerHeadMean):
    """Streaming mean attention distance of every (layer, head) of the encoder or decoder."""

    metric = "attention_distance"

    def __init__(self, model, *, module: str = "encoder", layers=None, units: str = "px",
                 renormalize: bool = False, bootstrap: int = 0, bootstrap_seed: int = 0) -> None:
        if units not in ("px", "patches"):
            raise MaeprobeError(f"units must be 'px' or 'patches', got {units!r}")
        self.module, self.units, self.renormalize = module, units, renormalize
        self.layers = _capture.resolve_layers(model, module, layers)
        from ..limits import check_attention

        check_attention(model, module)  # before any [B, heads, N, N] map
        self.num_heads = _capture.blocks_of(model, module)[0].attn.num_heads
        self.num_prefix = model.num_prefix_tokens
        cfg = model.config
        self.grid_size, self.scale = cfg.grid_size, cfg.patch_size if units == "px" else 1
        # the value of uniform attention over every token (prefix keys count 0 unless renormalised): the level
        # of an untrained ViT, drawn in the figures and used as a control by the findings
        L = cfg.grid_size ** 2
        mean = mean_patch_distance(cfg.grid_size, self.scale)
        self.uniform_level = mean if renormalize else mean * L / (L + self.num_prefix)
        super().__init__((len(self.layers), self.num_heads), bootstrap, bootstrap_seed)

    def settings(self) -> dict:
        return {"units": self.units, "renormalize": self.renormalize}

    def _token_positions(self, cache: _capture.ActivationCache, batch_size: int) -> torch.Tensor:
        """Grid index of every patch token in the sequence, [B, K] (decoder: all patches in order)."""
        if self.module == "encoder" and cache.mask is not None:
            return cache.mask.ids_keep
        L = self.grid_size ** 2
        return torch.arange(L).expand(batch_size, L)

    def _prepare(self, cache: _capture.ActivationCache, batch_size: int, device) -> None:
        """Grid coordinates of this batch's patch tokens ([K, 2] when all images share the token positions, else
        [B, K, 2]), and the distances of all queries to all keys when they are small (``DISTANCE_CACHE_BYTES``)."""
        positions = self._token_positions(cache, batch_size).to(device)  # [B, K]
        self._shared = bool((positions == positions[:1]).all())
        pos = positions[0] if self._shared else positions
        self._centres = torch.stack([pos // self.grid_size, pos % self.grid_size], dim=-1).float()
        K = pos.shape[-1]
        self._query_dist = None
        if pos.numel() * (self.num_prefix + K) * 4 <= DISTANCE_CACHE_BYTES:
            self._query_dist = self._distances(0, K)  # [K, P + K] or [B, K, P + K]

    def _distances(self, start: int, stop: int) -> torch.Tensor:
        """Distances from the patch queries ``start:stop`` (0 = the first patch token) to every key of the
        sequence, zero for prefix keys: [q, P + K] or [B, q, P + K]. Grid coordinates are small integers, so the
        squared distances are exact in float32; the square root is correctly rounded."""
        if self._query_dist is not None:
            return self._query_dist[..., start:stop, :]
        centres = self._centres
        queries = centres[..., start:stop, :]
        dy = queries[..., 0].unsqueeze(-1) - centres[..., 0].unsqueeze(-2)  # [.., q, K]
        dx = queries[..., 1].unsqueeze(-1) - centres[..., 1].unsqueeze(-2)
        d = dy.mul_(dy).add_(dx.mul_(dx)).sqrt_()
        if self.scale != 1:
            d.mul_(float(self.scale))
        return torch.nn.functional.pad(d, (self.num_prefix, 0))

    def _visitor(self, rows) -> BlockVisitor:
        """Per-image mean distance of one layer from its blocks of patch-query rows -> [B, H]."""
        P = self.num_prefix
        B, H, N, _ = rows.shape
        total = torch.zeros(B, H, device=self._centres.device)

        def visit(start, index, probs, log_probs) -> None:  # probs [B, H, n, N]
            nonlocal total
            d = self._distances(start, start + len(index))  # [n, N] shared, else [B, n, N]
            if self.renormalize and P:  # each row divided by its mass on patch keys
                per_query = torch.linalg.vecdot(probs, d if self._shared else d.unsqueeze(1))
                total += (per_query / (1.0 - probs[..., :P].sum(-1)).clamp_min(1e-12)).sum(-1)
            elif self._shared:  # sum over queries and keys of p * d: one matrix-vector product, no temporary
                total += (probs.reshape(B * H, -1) @ d.reshape(-1)).reshape(B, H)
            else:
                total += (probs.reshape(B, H, -1) @ d.reshape(B, -1, 1)).reshape(B, H)

        queries = torch.arange(P, N, device=self._centres.device)  # patch queries only
        return BlockVisitor(queries, visit, lambda: total / (N - P))


@dataclass(frozen=True)
class AttentionDistanceOptions:
    module: str = option("encoder", "encoder or decoder.", choices=("encoder", "decoder"))
    units: str = option("px", "px or patches.", choices=("px", "patches"))
    renormalize: bool = option(False, "Renormalise each query row over patch keys (prefix keys otherwise count "
                                      "distance 0, the ViT authors' convention).", check=check_flag)


def _report(table) -> list[str]:
    uniform = (f"; uniform attention: {table['uniform_level'].iloc[0]:.3f}"
               if "uniform_level" in table and table["uniform_level"].notna().any() else "")
    return heads_by_layer(table, f"{checkpoint_name(table)}: mean attention distance ({table['units'].iloc[0]}) of the "
                                 f"{table['module'].iloc[0]}, {images_text(table)}, mask ratio "
                                 f"{table['mask_ratio'].iloc[0]:g}{uniform}", 2, True)


SPEC = register(MetricSpec(
    name="attn-distance", function="attention_distance", column="attention_distance", reducer=AttentionDistance,
    options=AttentionDistanceOptions,
    summary="Mean attention distance per layer and head (ViT authors' convention), in pixels by default.",
    doc="""Mean attention distance per (layer, head) (ViT Fig. 7; LC-MAE Fig. 5/6), in pixels by default: for each
    patch query the attention-weighted distance to the key patches, averaged over queries and images.
    ``uniform_level`` is the value of uniform attention.""",
    report=_report,
    figures=(FigureSpec("fig5", "Mean attention distance per layer", "heads", quantity="mean attention distance",
                        module="encoder", settings={"units": "px", "renormalize": False}, default=True),
             FigureSpec("fig6", "Attention distance vs pretraining mask ratio", "heads",
                        quantity="mean attention distance", module="encoder",
                        settings={"units": "px", "renormalize": False}, label_by="pretrain_mask_ratio"),
             FigureSpec("figA1", "Attention distance per layer (Fig. A.1 layout)", "heads",
                        quantity="mean attention distance", module="encoder",
                        settings={"units": "px", "renormalize": False}, names_in_title=True,
                        note="Fig. A.1 compares autoencoders AE(k) that predict a k x k pixel block per patch; the "
                             "table does not record what a checkpoint predicts, so these lines are not known to be "
                             "AE(k) models"))))
