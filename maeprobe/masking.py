"""Reproducible random masks: facebookresearch/mae's algorithm with seeded noise.

For seed S, ratio r and L patches: ``noise = torch.rand(1, L, generator=torch.Generator().manual_seed(S))``,
``ids = argsort(noise)``, keep the first ``int(L * (1 - r))`` patches (in that order, as the official code
does). One mask is shared by all images by default. With per-image masks, image number i (its position in
the sorted image list) uses the seed ``numpy.random.SeedSequence([S, i]).generate_state(1)[0]``, so a mask
depends neither on the batch size nor on how images are split across processes. Ratio 0 keeps every
patch in its original order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import MaeprobeError


def mask_noise(num_patches: int, seed: int, *, batch_size: int = 1, shared: bool = True,
               image_indices: torch.Tensor | list[int] | None = None) -> torch.Tensor:
    """Seeded noise whose argsort defines the mask. Returns [batch_size, num_patches] (float32, CPU).

    Args:
        num_patches: L, the number of patches of the image grid.
        seed: S, the mask seed.
        batch_size: rows to return.
        shared: one mask for all images (default) or one per image.
        image_indices: global index of each image in the batch (per-image masks only).
    """
    num_patches, seed = _whole(num_patches, "num_patches", 1), _whole(seed, "seed", -(2 ** 63), 2 ** 64 - 1)
    batch_size = _whole(batch_size, "batch_size", 1)
    from .limits import check

    check("MAEPROBE_MAX_PATCHES", num_patches, "mask_noise: num_patches")
    check("MAEPROBE_MAX_METRIC_MEMORY", 4 * num_patches * batch_size,
          f"mask_noise: the noise of {batch_size:,} x {num_patches:,} patches (bytes)")
    if shared:
        gen = torch.Generator().manual_seed(int(seed) % 2 ** 64)
        return torch.rand(1, num_patches, generator=gen).expand(batch_size, -1).contiguous()
    if image_indices is None:
        image_indices = range(batch_size)
    elif not isinstance(image_indices, (torch.Tensor, list, tuple, range)) or len(image_indices) > batch_size:
        raise MaeprobeError(f"mask_noise: image_indices must be a list or tensor of at most batch_size={batch_size} "
                            f"whole numbers, got {type(image_indices).__name__}")
    image_indices = [_whole(i, "an image index", 0) for i in (image_indices.tolist() if isinstance(
        image_indices, torch.Tensor) else image_indices)]
    rows = []
    for index in [int(i) for i in image_indices]:
        state = np.random.SeedSequence([int(seed), index]).generate_state(1)[0]
        rows.append(torch.rand(1, num_patches, generator=torch.Generator().manual_seed(int(state))))
    return torch.cat(rows, dim=0)


def _whole(value, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int when it is a whole number in [low, high] (a bool, float or string is refused)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (
            high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise MaeprobeError(f"{name} must be a whole number {bounds}, got {value!r:.60}")
    return int(value)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Number of visible patches: ``int(L * (1 - r))`` as in the official code."""
    import numbers

    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, numbers.Real) or not 0.0 <= mask_ratio < 1.0:
        raise MaeprobeError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def shuffle_order(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """Patch order ``ids_shuffle`` [B, L]: argsort of the noise; identity when nothing is masked."""
    B, L = noise.shape
    if num_kept(L, mask_ratio) == L:
        return torch.arange(L, device=noise.device).expand(B, L)
    return torch.argsort(noise, dim=1)


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """Keep a random subset of patch tokens (facebookresearch/mae ``random_masking``).

    Args:
        x: patch tokens [B, L, D].
        mask_ratio: fraction of patches removed.
        noise: [B, L] noise; drawn from the global RNG when None (as in training).

    Returns:
        x_kept [B, K, D], mask [B, L] (1 = removed, in original patch order), ids_restore [B, L].
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise MaeprobeError(f"random_masking: x must be a tensor of patch tokens [B, L, D], got "
                            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    B, L, D = x.shape
    if noise is not None and (not isinstance(noise, torch.Tensor) or tuple(noise.shape) != (B, L)):
        raise MaeprobeError(f"random_masking: noise must be a tensor of shape [B, L] = [{B}, {L}], got "
                            f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    if noise is None:
        noise = torch.rand(B, L, device=x.device)
    noise = noise.to(x.device)
    len_keep = num_kept(L, mask_ratio)
    ids_shuffle = shuffle_order(noise, mask_ratio)  # [B, L]
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # [B, L]
    ids_keep = ids_shuffle[:, :len_keep]  # [B, K]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))  # [B, K, D]
    mask = torch.ones(B, L, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_kept, mask, ids_restore


@dataclass
class MaskInfo:
    """Which patches a batch saw: ``ids_keep`` [B, K] (encoder token order), ``mask`` [B, L] (1 = removed)."""

    ids_keep: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    shared: bool

    @classmethod
    def from_noise(cls, noise: torch.Tensor, mask_ratio: float, shared: bool) -> "MaskInfo":
        L = noise.shape[1]
        ids_shuffle = shuffle_order(noise, mask_ratio)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        len_keep = num_kept(L, mask_ratio)
        mask = torch.ones_like(noise)
        mask[:, :len_keep] = 0
        return cls(ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore, shared)
