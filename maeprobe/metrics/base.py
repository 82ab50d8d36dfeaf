"""Streaming reducers: update per batch, merge across processes, compute once at the end.

A reducer keeps only sums (never per-image lists), so a pass over 50,000 images runs in constant
memory, and the states of several processes simply add up (``merge`` in one process,
``all_reduce`` under torch.distributed).

Confidence intervals resample independent units, not images: a unit is what was sampled independently (a
source photograph, whose several crops are not independent; an image file of a user's folder; or a grouping
the user names). Every image carries its unit's index (``ActivationCache.unit_indices``; by default each
image is its own unit). For means, the Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012):
replicate b gives unit u the weight w_ub ~ Poisson(1), drawn from a generator seeded by (bootstrap seed, unit
index), and every image of the unit takes that weight (a cluster bootstrap), so the weights, and thus the
intervals, do not depend on batch size, image order or the number of processes. Each replicate is a weighted
sum, so it streams like the mean. Pairwise and covariance statistics keep per-group sums over G groups of
whole units (``unit_groups``) and resample or delete groups.
"""
from __future__ import annotations

from .._lazy import lazy
from ..errors import MaeprobeError

np = lazy("numpy")
torch = lazy("torch")
dist = lazy("torch.distributed")
_capture = lazy("maeprobe.capture")


def check_bootstrap(bootstrap, seed, groups=None) -> tuple:
    """Replicates, seed (and groups) as bounded whole numbers, or one MaeprobeError."""
    from ..validate import integer

    out = (integer("--bootstrap", bootstrap, 0, 100_000), integer("--seed", seed, 0, 2**63 - 1))
    return out if groups is None else (*out, integer("groups", groups, 1, 4096))


# Fewer independent units than this give no interval (NaN): with two, a pairwise statistic's replicates are
# the estimate or undefined (a zero-width band), and a mean's rest on two values.
MIN_UNITS = 3


def weighted_replicates(weighted_sums: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """Replicates sum_i w_i x_i / sum_i w_i ([R, ...] / [R]); a replicate that drew no unit (all weights 0, chance
    e^-U for U units) is undefined: NaN, left out by ``percentile_interval`` (before, it counted as 0)."""
    weight = weights.reshape(-1, *[1] * (weighted_sums.ndim - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = (weighted_sums / weight).numpy()
    replicates[(weights <= 0).numpy()] = np.nan
    return replicates


def poisson_weights(image_indices: torch.Tensor, num_replicates: int, seed: int) -> torch.Tensor:
    """Bootstrap weights [B, num_replicates] ~ Poisson(1), a pure function of (seed, image index)."""
    rows = []
    for index in image_indices.tolist():
        rng = np.random.default_rng([int(seed), int(index), 0x9E3779B9])
        rows.append(rng.poisson(1.0, num_replicates))
    return torch.as_tensor(np.stack(rows), dtype=torch.float64)


def units_of(cache: _capture.ActivationCache) -> torch.Tensor:
    """The independent unit of every image of the batch ([B]; each image its own unit when none are given)."""
    units = cache.unit_indices if cache.unit_indices is not None else cache.image_indices
    if units is None:
        raise MaeprobeError("image indices missing from the cache")
    return torch.as_tensor(units).cpu()


class Reducer:
    """Base class: subclasses register additive state tensors and implement request/update/rows.

    Every reducer also records which independent units (``units_of``) it saw, so that its rows can say how
    many units their intervals rest on (``n_units``); subclasses call ``note_units(cache)`` once per batch.
    """

    metric: str = ""
    module: str = "encoder"

    def __init__(self) -> None:
        self._state: dict[str, torch.Tensor] = {}
        self._units: set[int] = set()

    def note_units(self, cache: _capture.ActivationCache) -> torch.Tensor:
        units = units_of(cache)
        self._units.update(int(u) for u in units.tolist())
        return units

    @property
    def n_units(self) -> int | None:
        """Number of distinct independent units seen (None when the reducer does not track them)."""
        return len(self._units) if self._units else None

    # --- state -------------------------------------------------------------------------------
    def add_state(self, name: str, value: torch.Tensor) -> None:
        self._state[name] = value.to(torch.float64)

    def state(self) -> dict[str, torch.Tensor]:
        return self._state

    def merge(self, other: "Reducer") -> "Reducer":
        """Add another reducer's state (same settings, other images) into this one."""
        for name, value in other._state.items():
            self._state[name] = self._state[name] + value.to(self._state[name].device)
        self._units |= other._units
        return self

    def all_reduce(self, group=None) -> None:
        """Sum the state over all processes of a torch.distributed group (no-op when not initialised)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        for name, value in self._state.items():
            dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
        self._gather_units(group)

    def _gather_units(self, group=None) -> None:
        """Union of the units every process saw (a unit's images may be split across processes)."""
        seen = [None] * dist.get_world_size(group)
        dist.all_gather_object(seen, sorted(self._units), group=group)
        self._units = {int(u) for part in seen for u in part}

    # --- interface -----------------------------------------------------------------------------
    def request(self) -> _capture.CaptureRequest:  # pragma: no cover - interface
        raise NotImplementedError

    def update(self, cache: _capture.ActivationCache) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def rows(self) -> list[dict]:  # pragma: no cover - interface
        raise NotImplementedError

    def check_memory(self, *, mask_ratio: float = 0.0, batch_size: int = 1) -> None:
        """Refuse (``LimitError`` naming ``MAEPROBE_MAX_METRIC_MEMORY``), before any image, a run whose state and
        working memory, computed from the model's sizes, the mask ratio and the batch size, exceed the limit.
        ``run_probe`` calls it for every reducer; default: nothing beyond the attention maps (``limits``)."""

    def consumes(self) -> set[tuple[str, str, int]]:
        """Captured tensors ``(kind, module, layer)`` this reducer can digest inside the hook via
        ``consume`` (so they need not be stored). Default: none; ``update`` reads the cache."""
        return set()

    def consume(self, kind: str, module: str, layer: int, tensor: torch.Tensor,
                cache: _capture.ActivationCache) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> dict:
        """Settings columns that this metric adds to each of its rows."""
        return {}


class ImageMean(Reducer):
    """Mean over images of a per-image quantity of fixed shape, with std and bootstrap CI.

    ``add(values [B, *shape], image_indices [B])`` is all a metric calls; ``summary()`` returns
    mean, std, ci_low, ci_high (each of ``shape``) and the number of images.
    """

    def __init__(self, shape: tuple[int, ...], bootstrap: int = 0, bootstrap_seed: int = 0,
                 confidence: float = 0.95) -> None:
        super().__init__()
        bootstrap, bootstrap_seed = check_bootstrap(bootstrap, bootstrap_seed)
        self.shape, self.bootstrap, self.bootstrap_seed, self.confidence = shape, bootstrap, bootstrap_seed, confidence
        self.add_state("count", torch.zeros(()))
        self.add_state("sum", torch.zeros(shape))
        self.add_state("sum_sq", torch.zeros(shape))
        if bootstrap:
            self.add_state("boot_weight", torch.zeros(bootstrap))
            self.add_state("boot_sum", torch.zeros(bootstrap, *shape))

    def add(self, values: torch.Tensor, units: torch.Tensor) -> None:
        """Add per-image values [B, *shape]; ``units`` [B] is each image's independent unit (``units_of``):
        images of one unit share every replicate's weight."""
        values = values.detach().to(torch.float64).cpu()  # [B, *shape]
        units = torch.as_tensor(units).cpu()
        self._units.update(int(u) for u in units.tolist())
        self._state["count"] += values.shape[0]
        self._state["sum"] += values.sum(0)
        self._state["sum_sq"] += (values**2).sum(0)
        if self.bootstrap:
            weights = poisson_weights(units, self.bootstrap, self.bootstrap_seed)  # [B, R], one row per unit
            self._state["boot_weight"] += weights.sum(0)
            self._state["boot_sum"] += torch.einsum("br,b...->r...", weights, values)

    @property
    def count(self) -> int:
        return int(self._state["count"].item())

    def summary(self) -> dict[str, np.ndarray]:
        n = self._state["count"].item()
        if n == 0:
            raise MaeprobeError(f"{self.metric}: no images were processed (all unreadable?)")
        mean = self._state["sum"] / n
        var = (self._state["sum_sq"] / n - mean**2).clamp_min(0) * (n / max(n - 1, 1))
        out = {"value": mean.numpy(), "std": var.sqrt().numpy()}
        if self.bootstrap and len(self._units) >= MIN_UNITS:
            replicates = weighted_replicates(self._state["boot_sum"], self._state["boot_weight"])  # [R, *shape]
            out["ci_low"], out["ci_high"] = percentile_interval(replicates, self.confidence)
        else:
            out["ci_low"] = out["ci_high"] = np.full(self.shape, np.nan)
        return out


class LayerHeadMean(ImageMean):
    """An ``ImageMean`` of one value per image and (layer, head) of the encoder or decoder, digested from each
    layer's attention as the forward pass produces it (``consume``) or from the cache (``update``).

    Subclasses set ``module``, ``layers``, ``num_heads`` and ``uniform_level`` (the value of uniform attention,
    drawn in the figures and used as a control) and implement ``_layer_values(attention) -> [B, H]``;
    ``_prepare(cache, batch_size, device)`` runs before a batch's first layer.
    """

    layers: list[int]
    num_heads: int
    uniform_level: float

    def request(self) -> _capture.CaptureRequest:
        return _capture.CaptureRequest.of(attention={self.module: self.layers})

    def consumes(self) -> set[tuple[str, str, int]]:
        return {("attention", self.module, layer) for layer in self.layers}

    def _prepare(self, cache: _capture.ActivationCache, batch_size: int, device) -> None:
        """Per-batch set-up shared by the batch's layers (default: none)."""

    def _visitor(self, rows):
        """A block visitor of one layer's ``AttentionRows`` (``queries``, ``visit(start, index, probs, log_probs)``,
        ``result() -> [B, H]``), for a subclass that reduces block by block; None: it implements ``_layer_values``
        itself. A visitor lets the capture go over a layer's blocks once for all its consumers
        (``capture.core.shared_block_pass``)."""
        return None

    def _layer_values(self, attention) -> torch.Tensor:
        """One layer's attention (a [B, H, N, N] map or ``AttentionRows``) -> [B, H], by its block visitor."""
        rows = _capture.attention_rows(attention)
        visitor = self._visitor(rows)
        if visitor is None:  # pragma: no cover - interface
            raise NotImplementedError
        for block in rows.block_pass(visitor.queries, visitor.log_probs):
            visitor.visit(*block)
        return visitor.result()

    def _begin(self, cache, batch_size: int, device) -> None:
        batch = (cache.mask, batch_size)  # a new batch brings a new mask (or another size)
        prepared = getattr(self, "_prepared_for", None)
        if not getattr(self, "_pending", None) or prepared is None or prepared[0] is not batch[0] \
                or prepared[1] != batch[1]:  # the batch's first layer (``update`` ends each batch)
            self._prepare(cache, batch_size, device)
            self._prepared_for, self._pending = batch, {}

    def attention_visitor(self, kind, module, layer, rows, cache):
        """The capture's shared block pass (``capture.core.block_visitor``): this layer's visitor, whose result
        goes where ``consume`` puts it; None when the subclass has no block visitor."""
        if type(self)._visitor is LayerHeadMean._visitor:
            return None
        self._begin(cache, rows.shape[0], rows.device)
        return _PendingVisitor(self._visitor(rows), self._pending, layer)

    def consume(self, kind, module, layer, tensor, cache) -> None:
        self._begin(cache, tensor.shape[0], tensor.device)
        self._pending[layer] = self._layer_values(tensor)  # the attention tensor itself is not kept

    def update(self, cache: _capture.ActivationCache) -> None:
        pending, self._pending = getattr(self, "_pending", None) or {}, {}
        prepared = getattr(self, "_prepared_for", None)
        if pending and (prepared is None or prepared[0] is not cache.mask):
            pending = {}  # left by an aborted batch, not this one: recompute from the cache
        missing = [layer for layer in self.layers if layer not in pending]
        if missing:
            first = cache.attention[(self.module, missing[0])]
            self._prepare(cache, first.shape[0], first.device)
            for layer in missing:
                pending[layer] = self._layer_values(cache.attention[(self.module, layer)])
        values = torch.stack([pending[layer] for layer in self.layers], dim=1)  # [B, layers, H]
        self.add(values, units_of(cache) if cache.image_indices is not None else torch.arange(values.shape[0]))

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


class BlockVisitor:
    """A metric's reduction of one layer's attention, block by block: ``queries`` (the rows it reads), ``visit(start,
    index, probs, log_probs)`` per block of them, ``result()`` after the last block. ``log_probs``: the visitor
    reads ln probs (``AttentionRows.probs_of``; still None where a logit is -inf or for a full map)."""

    def __init__(self, queries, visit, result, log_probs: bool = False) -> None:
        self.queries, self.visit, self.result, self.log_probs = queries, visit, result, log_probs


class _PendingVisitor:
    """A metric's block visitor whose ``finish`` files its result among the batch's pending layers."""

    def __init__(self, visitor, pending: dict, layer: int) -> None:
        self.visitor, self.pending, self.layer = visitor, pending, layer
        self.queries, self.visit, self.log_probs = visitor.queries, visitor.visit, visitor.log_probs

    def finish(self) -> None:
        self.pending[self.layer] = self.visitor.result()


def unit_groups(units: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Fixed group of every image: its unit index modulo ``num_groups`` ([B]). All images of a unit share a
    group, so resampling or deleting groups resamples whole units; units are numbered 0, 1, ... in the order
    the data gives them, so with at most ``num_groups`` units every group is exactly one unit (an exact cluster
    bootstrap), and with more, groups hold equally many units."""
    return torch.as_tensor(units).long() % num_groups


def group_bootstrap_weights(num_groups: int, num_replicates: int, seed: int) -> np.ndarray:
    """Multinomial resampling of ``num_groups`` (non-empty) groups with replacement: counts
    [num_replicates, num_groups]."""
    rng = np.random.default_rng([int(seed), 0xB007])
    return rng.multinomial(num_groups, np.full(num_groups, 1.0 / num_groups), size=num_replicates).astype(float)


def pairwise_bootstrap_replicates(gram: np.ndarray, counts: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Bootstrap replicates of a mean cosine over pairs of distinct images, from group sums of unit vectors.

    Args:
        gram: [S, G, G] inner products <S_g, S_h> of the groups' sums of unit vectors (S statistics at once).
        counts: [G] images per group (every group non-empty). A group holds whole independent units.
        draws: [R, G] how often each group is drawn (``group_bootstrap_weights``).

    A replicate is a sample of m_g draws of each group g, each draw a copy of its images. It is paired as the
    original sample is: two images of one draw (i != j), and any two images of draws of different groups. Two
    draws of the same group are never paired with each other: the original sample never holds two
    independent copies of one photo, and such pairs (cosine 1 for an image and its copy; crops of one photo
    for a unit of several) would bias every replicate upwards (by m_g (m_g - 1) pairs per image when only the
    draw's own diagonal is removed). Sum of cosines: m' Gram m - sum_g (m_g^2 - m_g) Gram_gg - sum_g m_g N_g;
    number of pairs: n^2 - sum_g (m_g^2 - m_g) N_g^2 - sum_g m_g N_g, n = sum_g m_g N_g. With every m_g = 1
    this is the estimate itself, (|sum a|^2 - N) / (N (N - 1)).
    Returns [R, S]; NaN where a replicate has no pair.
    """
    n = draws @ counts  # [R]
    repeats = draws**2 - draws  # [R, G] ordered pairs of two different draws of one group
    quad = np.einsum("rg,sgh,rh->rs", draws, gram, draws)  # [R, S] every ordered pair of image slots
    diagonal = np.einsum("sgg->sg", gram)  # [S, G]
    total = quad - repeats @ diagonal.T - (draws @ counts)[:, None]
    pairs = n * n - repeats @ counts**2 - draws @ counts
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = total / pairs[:, None]
    reps[pairs <= 0] = np.nan
    return reps


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over axis 0 (NaN replicates ignored)."""
    alpha = (1 - confidence) / 2
    return np.nanquantile(replicates, alpha, axis=0), np.nanquantile(replicates, 1 - alpha, axis=0)
