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
