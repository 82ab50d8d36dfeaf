"""Streaming reducers: update per batch, merge across processes, compute once at the end.

A reducer keeps only sums (never per-image lists), so a pass over 50,000 images runs in constant
memory, and the states of several processes simply add up (``merge`` in one process,
``all_reduce`` under torch.distributed).

Confidence intervals come from the Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012):
replicate b gives image i the weight w_ib ~ Poisson(1), drawn from a generator seeded by
(bootstrap seed, image index), so the weights, and thus the intervals, do not depend on batch size,
image order or the number of processes. Each replicate is a weighted sum, so it streams like the mean.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ..capture import ActivationCache, CaptureRequest
from ..errors import MaeprobeError


def poisson_weights(image_indices: torch.Tensor, num_replicates: int, seed: int) -> torch.Tensor:
    """Bootstrap weights [B, num_replicates] ~ Poisson(1), a pure function of (seed, image index)."""
    rows = []
    for index in image_indices.tolist():
        rng = np.random.default_rng([int(seed), int(index), 0x9E3779B9])
        rows.append(rng.poisson(1.0, num_replicates))
    return torch.as_tensor(np.stack(rows), dtype=torch.float64)


class Reducer:
    """Base class: subclasses register additive state tensors and implement request/update/rows."""

    metric: str = ""
    module: str = "encoder"

    def __init__(self) -> None:
        self._state: dict[str, torch.Tensor] = {}

    # --- state -------------------------------------------------------------------------------
    def add_state(self, name: str, value: torch.Tensor) -> None:
        self._state[name] = value.to(torch.float64)

    def state(self) -> dict[str, torch.Tensor]:
        return self._state

    def merge(self, other: "Reducer") -> "Reducer":
        """Add another reducer's state (same settings, other images) into this one."""
        for name, value in other._state.items():
            self._state[name] = self._state[name] + value.to(self._state[name].device)
        return self

    def all_reduce(self, group=None) -> None:
        """Sum the state over all processes of a torch.distributed group (no-op when not initialised)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        for name, value in self._state.items():
            dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)

    # --- interface -----------------------------------------------------------------------------
    def request(self) -> CaptureRequest:  # pragma: no cover - interface
        raise NotImplementedError

    def update(self, cache: ActivationCache) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def rows(self) -> list[dict]:  # pragma: no cover - interface
        raise NotImplementedError

    def consumes(self) -> set[tuple[str, str, int]]:
        """Captured tensors ``(kind, module, layer)`` this reducer can digest inside the hook via
        ``consume`` (so they need not be stored). Default: none; ``update`` reads the cache."""
        return set()

    def consume(self, kind: str, module: str, layer: int, tensor: torch.Tensor,
                cache: ActivationCache) -> None:  # pragma: no cover - interface
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
        self.shape, self.bootstrap, self.bootstrap_seed, self.confidence = shape, bootstrap, bootstrap_seed, confidence
        self.add_state("count", torch.zeros(()))
        self.add_state("sum", torch.zeros(shape))
        self.add_state("sum_sq", torch.zeros(shape))
        if bootstrap:
            self.add_state("boot_weight", torch.zeros(bootstrap))
            self.add_state("boot_sum", torch.zeros(bootstrap, *shape))

    def add(self, values: torch.Tensor, image_indices: torch.Tensor) -> None:
        values = values.detach().to(torch.float64).cpu()  # [B, *shape]
        self._state["count"] += values.shape[0]
        self._state["sum"] += values.sum(0)
        self._state["sum_sq"] += (values**2).sum(0)
        if self.bootstrap:
            weights = poisson_weights(image_indices, self.bootstrap, self.bootstrap_seed)  # [B, R]
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
        if self.bootstrap:
            weight = self._state["boot_weight"].clamp_min(1e-12).reshape(-1, *[1] * len(self.shape))
            replicates = (self._state["boot_sum"] / weight).numpy()  # [R, *shape]
            alpha = (1 - self.confidence) / 2
            out["ci_low"] = np.quantile(replicates, alpha, axis=0)
            out["ci_high"] = np.quantile(replicates, 1 - alpha, axis=0)
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

    def request(self) -> CaptureRequest:
        return CaptureRequest.of(attention={self.module: self.layers})

    def consumes(self) -> set[tuple[str, str, int]]:
        return {("attention", self.module, layer) for layer in self.layers}

    def _prepare(self, cache: ActivationCache, batch_size: int, device) -> None:
        """Per-batch set-up shared by the batch's layers (default: none)."""

    def _layer_values(self, attention) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def consume(self, kind, module, layer, tensor, cache) -> None:
        batch = (cache.mask, tensor.shape[0])  # a new batch brings a new mask (or another size)
        prepared = getattr(self, "_prepared_for", None)
        if not getattr(self, "_pending", None) or prepared is None or prepared[0] is not batch[0] \
                or prepared[1] != batch[1]:  # the batch's first layer (``update`` ends each batch)
            self._prepare(cache, tensor.shape[0], tensor.device)
            self._prepared_for, self._pending = batch, {}
        self._pending[layer] = self._layer_values(tensor)  # the attention tensor itself is not kept

    def update(self, cache: ActivationCache) -> None:
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
        self.add(values, cache.image_indices if cache.image_indices is not None else torch.arange(values.shape[0]))

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


def image_groups(image_indices: torch.Tensor, num_groups: int, seed: int) -> torch.Tensor:
    """Random but fixed group of every image, a pure function of (seed, image index). Returns [B]."""
    groups = [np.random.default_rng([int(seed), int(i), 0x51ED]).integers(num_groups) for i in image_indices.tolist()]
    return torch.as_tensor(groups, dtype=torch.long)


def group_bootstrap_weights(num_groups: int, num_replicates: int, seed: int) -> np.ndarray:
    """Multinomial resampling of groups with replacement: counts [num_replicates, num_groups]."""
    rng = np.random.default_rng([int(seed), 0xB007])
    return rng.multinomial(num_groups, np.full(num_groups, 1.0 / num_groups), size=num_replicates).astype(float)


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over axis 0 (NaN replicates ignored)."""
    alpha = (1 - confidence) / 2
    return np.nanquantile(replicates, alpha, axis=0), np.nanquantile(replicates, 1 - alpha, axis=0)
