"""Pretraining losses beyond MAE's own (``MaskedAutoencoderViT.forward_loss``, Eq. 1).

* LC-MAE (Yue et al. 2023, Section 3.3): two views of each image with independent masks, a linear
  projector on the decoder output; ``cross_view_loss`` (Eq. 5) and ``in_view_loss`` (Eq. 6).
* U-MAE (Zhang et al. 2022): ``uniformity_loss``, the mean of (cos / tau)^2 over all pairs of the
  normalised features of the global batch (gathered across processes, with gradients).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def cross_view_loss(proj1: torch.Tensor, proj2: torch.Tensor, mask1: torch.Tensor, mask2: torch.Tensor) -> torch.Tensor:
    """Eq. 5: mean of 1 - cos(z1_p, z2_p) over positions p masked in both views.

    Args:
        proj1, proj2: projected decoder outputs of the two views [B, L, E].
        mask1, mask2: [B, L], 1 = masked.
    """
    both = (mask1 * mask2).to(proj1.dtype)  # [B, L]
    loss = 1 - F.cosine_similarity(proj1, proj2, dim=-1)  # [B, L]
    return (loss * both).sum() / both.sum().clamp_min(1.0)


def in_view_loss(proj: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 6: mean over ordered pairs i != j of masked positions of |cos(z_i, z_j) - cos(x_i, x_j)|.

    Args:
        proj: projected decoder outputs [B, L, E].
        pixels: pixel targets of the patches [B, L, p*p*C].
        mask: [B, L], 1 = masked.
    """
    z = F.normalize(proj, dim=-1)
    x = F.normalize(pixels, dim=-1)
    diff = (z @ z.transpose(1, 2) - x @ x.transpose(1, 2)).abs()  # [B, L, L]
    m = mask.to(proj.dtype)
    pairs = m.unsqueeze(2) * m.unsqueeze(1)  # [B, L, L]
    pairs = pairs * (1 - torch.eye(m.shape[1], device=m.device, dtype=m.dtype))
    return (diff * pairs).sum() / pairs.sum().clamp_min(1.0)


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Concatenate ``features`` from all processes, differentiably (identity without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.simplefilter("ignore")
        return torch.cat(all_gather(features), dim=0)


def uniformity_loss(features: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """U-MAE's uniformity term: mean over all pairs (i, j) of the global batch of (cos(f_i, f_j) / tau)^2.

    Under DDP every process computes the same global value; the gather's backward sums the gradient
    contributions, so after DDP's gradient averaging the update equals one process with the global batch.
    """
    f = F.normalize(gather_with_grad(features), dim=-1)
    return ((f @ f.T) / tau).pow(2).mean()
