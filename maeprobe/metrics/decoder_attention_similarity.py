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
[B, H, k, n] copy is made (in the block path the rows are computed twice, from q and k). Each block is reduced
in pieces of at most ``WORK_BYTES`` per float64 temporary, and added into the sums in place.

Memory bound. The sums depend on the model's sizes only, not on the images: a checkpoint of half a megabyte
(a 64 x 64 patch grid, 16 decoder heads of width 1) asks for 1.6 GB of float64 per layer, and 14.5 GB per layer
with 16 bootstrap groups. ``memory_bytes`` computes the peak from the sizes, the mask ratio and the batch size, and
``check_memory`` (called by ``run_probe`` before any image, and again before the sums are first allocated)
refuses a run beyond ``MAEPROBE_MAX_METRIC_MEMORY`` with a ``LimitError``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._lazy import lazy
from ..errors import MaeprobeError
from .base import (
    MIN_UNITS,
    Reducer,
    check_bootstrap,
    group_bootstrap_weights,
    pairwise_bootstrap_replicates,
    percentile_interval,
    unit_groups,
)
from .registry import FigureSpec, MetricSpec, check_flag, checkpoint_name, images_text, option, per_layer, register

np = lazy("numpy")
pd = lazy("pandas")
torch = lazy("torch")
_capture = lazy("maeprobe.capture")


# Bytes of one float64 temporary of the reduction (a piece of a query block, [max(B, G), H, rows, n]): blocks are
# cut into pieces of at most this size (one query row at the least), and the Gram matrices of the interval are
# summed over pieces of the group sums of this size.
WORK_BYTES = 32 << 20


def pairwise_cosine_mean(unit_sum: torch.Tensor, count: float) -> torch.Tensor:
    """Mean cosine over ordered pairs i != j from the sum of N unit vectors (last axis); |sum|^2 from the norm,
    which makes no squared copy of the sums."""
    return (torch.linalg.vector_norm(unit_sum, dim=-1).square() - count) / (count * (count - 1))


class DecoderAttentionSimilarity(Reducer):
    """Streaming Eq. 7 per decoder layer (and per head)."""

    metric = "decoder_attention_similarity"
    module = "decoder"

    def __init__(self, model, *, layers=None, per_head: bool = False, include_cls_key: bool = False,
                 bootstrap: int = 0, bootstrap_seed: int = 0, groups: int = 16) -> None:
        super().__init__()
        bootstrap, bootstrap_seed, groups = check_bootstrap(bootstrap, bootstrap_seed, groups)
        self.include_cls_key = include_cls_key
        self.layers = _capture.resolve_layers(model, "decoder", layers)
        from ..limits import check_attention

        check_attention(model, "decoder")
        self.num_heads = _capture.blocks_of(model, "decoder")[0].attn.num_heads
        self.num_prefix = model.num_prefix_tokens
        self.num_patches = model.config.num_patches
        self.num_keys = self.num_patches + (self.num_prefix if include_cls_key else 0)  # n of A_{l,i}
        self.per_head, self.bootstrap, self.bootstrap_seed = per_head, bootstrap, bootstrap_seed
        self.groups = groups if bootstrap else 0
        self.masked_rows: torch.Tensor | None = None
        self.add_state("count", torch.zeros(()))
        self._done: set[int] = set()  # layers of the current batch already added in the hook
        self._checked = False

    def _piece_rows(self, rows: int, batch_size: int) -> int:
        """Query rows per piece of a block: a float64 [max(B, G), H, rows, n] temporary within ``WORK_BYTES``."""
        row = max(batch_size, self.groups, 1) * self.num_heads * self.num_keys * 8
        return max(1, min(rows, WORK_BYTES // row))

    def memory_bytes(self, masked: int, batch_size: int = 1) -> int:
        """Peak bytes of the metric with ``masked`` query rows and batches of ``batch_size`` images: per layer the
        float64 sum of unit vectors (heads x masked x keys; with ``per_head`` a second one) and, with a bootstrap,
        a float32 copy of each per group; and at most six pieces of the reduction at once (``_piece_rows``)."""
        vector = self.num_heads * masked * self.num_keys
        per_layer = vector * (2 if self.per_head else 1) * (8 + 4 * self.groups) + 8 * self.groups
        piece = self._piece_rows(masked, batch_size) * max(batch_size, self.groups, 1) * self.num_heads \
            * self.num_keys * 8
        return len(self.layers) * per_layer + 6 * piece

    def check_memory(self, *, mask_ratio: float = 0.0, batch_size: int = 1) -> None:
        from ..masking import num_kept

        self._check(self.num_patches - num_kept(self.num_patches, mask_ratio), batch_size)

    def _check(self, masked: int, batch_size: int) -> None:
        from ..limits import check

        copies = (" twice (whole and per head)" if self.per_head else "") + \
            (f", and x 4 bytes for each of {self.groups} bootstrap groups" if self.groups else "")
        check("MAEPROBE_MAX_METRIC_MEMORY", self.memory_bytes(masked, batch_size),
              f"decoder attention similarity (Eq. 7): the sums it keeps over the images ({len(self.layers)} decoder "
              f"layer(s) x {self.num_heads} heads x {masked} masked queries x {self.num_keys} keys x 8 bytes"
              f"{copies}; fewer --layers{' or --bootstrap 0' if self.groups else ''} need less)")

    def request(self) -> _capture.CaptureRequest:
        return _capture.CaptureRequest.of(attention={"decoder": self.layers})

    def consumes(self):
        return {("attention", "decoder", layer) for layer in self.layers}

    def _rows_of(self, cache: _capture.ActivationCache) -> torch.Tensor:
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
        self._reduce_layer(layer, tensor, self._rows_of(cache), cache)
        self._done.add(layer)

    def _sums(self, layer: int, H: int, k: int, n: int, batch_size: int, device) -> dict[str, torch.Tensor | None]:
        """The layer's sums, allocated at its first batch (their size depends on the mask), after the bound of
        all layers' sums has been checked (``_check``): overall [H*k*n] and per head [H, k*n] (float64), per
        group [G, H*k*n] and [G, H, k*n] (float32) and the group counts [G]."""
        if f"whole_{layer}" not in self._state:
            if not self._checked:
                self._check(k, batch_size)
                self._checked = True
            G, f64 = self.groups, dict(dtype=torch.float64, device=device)
            self._state[f"whole_{layer}"] = torch.zeros(H * k * n, **f64)
            if self.per_head:
                self._state[f"heads_{layer}"] = torch.zeros(H, k * n, **f64)
            if G:
                self._state[f"group_whole_{layer}"] = torch.zeros(G, H * k * n, device=device)
                if self.per_head:
                    self._state[f"group_heads_{layer}"] = torch.zeros(G, H, k * n, device=device)
                self._state[f"group_count_{layer}"] = torch.zeros(G, **f64)
        return {name: self._state.get(f"{name}_{layer}")
                for name in ("whole", "heads", "group_whole", "group_heads", "group_count")}

    def _reduce_layer(self, layer: int, attn, rows, cache) -> None:
        """Add one batch's unit vectors of one layer to its sums, in place: overall, per head and per group, with
        A_i laid out as [H, k, n] (heads, masked queries, keys) and flattened."""
        source = _capture.attention_rows(attn)
        first_key = 0 if self.include_cls_key else self.num_prefix
        B, H = source.shape[:2]
        k, n = len(rows), source.shape[3] - first_key
        device = rows.device
        sums = self._sums(layer, H, k, n, B, device)
        step = self._piece_rows(k, B)
        squares = torch.zeros(B, H, dtype=torch.float64, device=device)
        for _, _, probs in source.blocks(rows):  # pass 1: |A_i|^2 per image and head
            for lo in range(0, probs.shape[2], step):
                squares += probs[:, :, lo:lo + step, first_key:].double().pow_(2).sum((-1, -2))
        norm_whole = squares.sum(1).sqrt().clamp_min(1e-300)  # [B]
        norm_heads = squares.sqrt().clamp_min(1e-300)  # [B, H]
        onehot = None
        units = self.note_units(cache)
        if self.groups:
            groups = unit_groups(units, self.groups).to(device)
            onehot = torch.nn.functional.one_hot(groups, self.groups).double().T  # [G, B]
            sums["group_count"] += onehot.sum(1)
        whole = sums["whole"].view(H, k, n)
        heads = sums["heads"].view(H, k, n) if self.per_head else None
        group_whole = sums["group_whole"].view(self.groups, H, k, n) if onehot is not None else None
        group_heads = sums["group_heads"].view(self.groups, H, k, n) if onehot is not None and self.per_head \
            else None
        for start, index, probs in source.blocks(rows):  # pass 2: sums of the unit vectors, piece by piece
            for lo in range(0, probs.shape[2], step):
                a = probs[:, :, lo:lo + step, first_key:].double()  # [B, H, q, n], a copy
                first, stop = start + lo, start + lo + a.shape[2]
                if self.per_head:
                    unit_heads = a / norm_heads[:, :, None, None]
                    heads[:, first:stop] += unit_heads.sum(0)
                    if onehot is not None:
                        group_heads[:, :, first:stop] += torch.einsum("gb,bhqn->ghqn", onehot, unit_heads)
                    del unit_heads
                unit = a.div_(norm_whole[:, None, None, None])
                whole[:, first:stop] += unit.sum(0)
                if onehot is not None:
                    group_whole[:, :, first:stop] += torch.einsum("gb,bhqn->ghqn", onehot, unit)

    def update(self, cache: _capture.ActivationCache) -> None:
        done, self._done = self._done, set()
        for layer in self.layers:
            if layer not in done:  # not digested in the hook: from the cache
                self._reduce_layer(layer, cache.attention[("decoder", layer)], self._rows_of(cache), cache)
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
        g = group_sums.flatten(1, -2) if group_sums.ndim > 2 else group_sums.unsqueeze(1)  # [G, S, d], a view
        G, S, d = g.shape
        gram = torch.zeros(S, G, G, dtype=torch.float64, device=g.device)
        step = max(1, WORK_BYTES // (G * S * 8))
        for lo in range(0, d, step):  # float64 pieces: no float64 copy of all the group sums
            piece = g[..., lo:lo + step].double()
            gram += torch.einsum("gsd,hsd->sgh", piece, piece)
        gram = gram.cpu().numpy()  # [S, G, G]
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


@dataclass(frozen=True)
class DecoderAttentionSimilarityOptions:
    per_head: bool = option(False, "Also one row per head.", check=check_flag)
    include_cls_key: bool = option(False, "Keep the CLS key column in A_{l,i} (Eq. 7 as written has the n patch keys "
                                          "only).", flag="--cls-key", check=check_flag)
    groups: int = option(16, "Fixed image groups that the interval of the pairwise statistic resamples.", low=1,
                         high=4096)


def _report(table) -> list[str]:
    first = table.iloc[0]
    keys = "CLS key included" if bool(first["cls_key"]) else "patch keys only"
    lines = per_layer(table, f"{checkpoint_name(table)}: S_attn per decoder layer ({images_text(table)}, mask ratio "
                             f"{first['mask_ratio']:g}, seed {first['seed']}, {keys})")
    heads = table[table["head"].notna()][["layer", "head", "value", "ci_low", "ci_high"]]
    if len(heads):
        lines += ["per head (layer and head 0-based, as in the table):", heads.to_string(index=False,
                                                                                        float_format="%.4f")]
    return lines


SPEC = register(MetricSpec(
    name="decoder-attn-sim", function="decoder_attention_similarity", column="decoder_attention_similarity",
    reducer=DecoderAttentionSimilarity, options=DecoderAttentionSimilarityOptions,
    summary="LC-MAE Eq. 7: similarity of the masked queries' decoder attention across images (one shared mask).",
    doc="""LC-MAE Eq. 7: mean pairwise cosine of the masked queries' decoder attention across images.

    All images share one seeded mask. A_{l,i} holds the masked queries' attention over the n patch keys
    (Eq. 7: k x h x n); ``include_cls_key=True`` adds the CLS key column. ``per_head`` adds one row per head.
    ``bootstrap`` replicates resample ``groups`` fixed image groups for ``ci_low``/``ci_high``.""",
    mask_ratio=0.75, per_image_mask=False, needs_decoder=True,
    layers_help="0-based decoder layers, e.g. 0,7 or 0-3 (default all).", report=_report,
    figures=(FigureSpec("fig2", "Decoder attention similarity (Eq. 7)", "layers", ylabel="$S_{attn}$",
                        settings={"cls_key": False}, default=True, uniform=1.0),)))
