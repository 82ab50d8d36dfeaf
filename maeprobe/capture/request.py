"""What a forward pass should record and what it recorded, both keyed by (kind, module, layer)."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from ..errors import MaeprobeError
from ..masking import MaskInfo

MODULES = ("encoder", "decoder")
# The captured quantities, in the order ``capture`` attaches their hooks (which is also the order of hooks that
# share a module, so of their consumers' calls).
KINDS = ("attention", "features", "keys")


@dataclass(frozen=True)
class CaptureRequest:
    """What to record: per module, the layers whose attention / block output / attention keys are needed."""

    attention: dict[str, frozenset[int]] = field(default_factory=dict)
    features: dict[str, frozenset[int]] = field(default_factory=dict)
    keys: dict[str, frozenset[int]] = field(default_factory=dict)

    @staticmethod
    def of(attention: dict[str, Iterable[int]] | None = None,
           features: dict[str, Iterable[int]] | None = None,
           keys: dict[str, Iterable[int]] | None = None) -> "CaptureRequest":
        return CaptureRequest(_freeze(attention), _freeze(features), _freeze(keys))

    def __or__(self, other: "CaptureRequest") -> "CaptureRequest":
        def union(a, b):
            return {m: a.get(m, frozenset()) | b.get(m, frozenset()) for m in set(a) | set(b)}

        return CaptureRequest(union(self.attention, other.attention), union(self.features, other.features),
                              union(self.keys, other.keys))

    def needs(self, module: str) -> bool:
        return bool(self.attention.get(module) or self.features.get(module) or self.keys.get(module))

    def items(self) -> Iterator[tuple[str, str, list[int]]]:
        """(kind, module, its layers in ascending order) per requested kind and module, kinds in ``KINDS`` order."""
        for kind in KINDS:
            for module, layers in getattr(self, kind).items():
                yield kind, module, sorted(layers)


def _freeze(layers_by_module: dict[str, Iterable[int]] | None) -> dict[str, frozenset[int]]:
    """``{'encoder'|'decoder': [layer, ...]}`` checked (one-line errors for a caller's mistake) and frozen."""
    if layers_by_module is not None and not isinstance(layers_by_module, dict):
        raise MaeprobeError(f"CaptureRequest.of: expected {{'encoder'|'decoder': [layer, ...]}}, got "
                            f"{type(layers_by_module).__name__}")
    frozen = {}
    for module, layers in (layers_by_module or {}).items():
        if module not in MODULES:
            raise MaeprobeError(f"CaptureRequest.of: module must be 'encoder' or 'decoder', got {module!r:.40}")
        if isinstance(layers, (str, bytes, dict)) or not isinstance(layers, Iterable):
            raise MaeprobeError(f"CaptureRequest.of: the {module}'s layers must be a list of whole numbers")
        layers = list(layers)
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in layers):
            raise MaeprobeError(f"CaptureRequest.of: the {module}'s layers must be whole numbers, got "
                                f"{layers!r:.60}")
        frozen[module] = frozenset(int(i) for i in layers)
    return frozen


@dataclass
class ActivationCache:
    """What one hooked forward pass recorded, keyed by (module, layer) per kind, or ``cache[kind, module, layer]``.

    ``attention[(m, l)]``: [B, heads, N, N] probabilities; ``features[(m, l)]``: [B, N, D] block outputs;
    ``keys[(m, l)]``: [B, N, D] attention keys, all heads concatenated (CutLER / MaskCut features).
    ``mask``: the MaskInfo of the batch; ``image_indices``: global index of every image of the batch;
    ``unit_indices``: the independent unit of every image (its source photo or file; see
    ``data.resample_units``), which bootstrap intervals resample (None: each image is its own unit);
    ``references``: caches of reference models run on the same images (by reference name).
    """

    attention: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    features: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    keys: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    mask: MaskInfo | None = None
    image_indices: torch.Tensor | None = None
    unit_indices: torch.Tensor | None = None
    references: dict[str, "ActivationCache"] = field(default_factory=dict)

    def __getitem__(self, name: tuple[str, str, int]) -> torch.Tensor:
        kind, module, layer = name
        return getattr(self, kind)[(module, layer)]

    def __setitem__(self, name: tuple[str, str, int], tensor: torch.Tensor) -> None:
        kind, module, layer = name
        getattr(self, kind)[(module, layer)] = tensor

    def __contains__(self, name: tuple[str, str, int]) -> bool:
        kind, module, layer = name
        return (module, layer) in getattr(self, kind)

    def clear(self) -> None:
        self.attention.clear()
        self.features.clear()
        self.keys.clear()
        self.mask = None
        self.image_indices = None
        self.unit_indices = None
        for ref in self.references.values():
            ref.clear()


# ``fn(kind, module, layer, tensor, cache)``: receives a requested tensor inside the hook instead of the cache.
Consumer = Callable[[str, str, int, torch.Tensor, ActivationCache], None]
