"""Pretraining losses beyond MAE's own (``MaskedAutoencoderViT.forward_loss``, Eq. 1 of LC-MAE).

* LC-MAE (Yue et al. 2023, Section 3.3): two views of each image with independent masks m1, m2; a linear
  projector p gives v = p(h(x, m)); ``cross_view_loss`` is Eq. 5 and ``in_view_loss`` Eq. 6.
  The equations are written as sums; ``reduction='mean'`` (default) divides by the number of terms of the
  batch, as MAE's own loss does for Eq. 1, ``reduction='sum'`` gives each image's sum, averaged over images.
* U-MAE (Zhang et al. 2022, zhangq327/U-MAE ``loss_func.py``): ``uniformity_loss``, the mean over all
  pairs (i, j) of the gathered batch, the diagonal included, of (cos(f_i, f_j) / tau)^2.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import MaeprobeError

REDUCTIONS = ("mean", "sum")


def _reduce(terms: torch.Tensor, weights: torch.Tensor, reduction: str) -> torch.Tensor:
    """terms, weights [B, ...]: sum of weighted terms / number of terms ('mean'), or / B ('sum')."""
    if reduction == "mean":
        return (terms * weights).sum() / weights.sum().clamp_min(1.0)
    if reduction == "sum":
        return (terms * weights).flatten(1).sum(1).mean()
    raise MaeprobeError(f"lcmae.reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def cross_view_loss(proj1: torch.Tensor, proj2: torch.Tensor, mask1: torch.Tensor, mask2: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """Eq. 5: sum_i m1_i m2_i (1 - cos(v1_i, v2_i)) over positions masked in both views.

    Args:
        proj1, proj2: projected outputs v of the two views [B, L, E].
        mask1, mask2: [B, L], 1 = masked.
        reduction: 'mean' over the both-masked positions of the batch, or 'sum' per image then mean over images.
    """
    both = (mask1 * mask2).to(proj1.dtype)  # [B, L]
    return _reduce(1 - F.cosine_similarity(proj1, proj2, dim=-1), both, reduction)


def in_view_loss(proj: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 6: sum over ordered pairs i != j of masked positions of |cos(v_i, v_j) - cos(x_i, x_j)|.

    Args:
        proj: projected outputs v [B, L, E].
        target: the patches x that the decoder reconstructs [B, L, p*p*C].
        mask: [B, L], 1 = masked.
        reduction: 'mean' over the pairs of the batch, or 'sum' per image then mean over images.
    """
    z = F.normalize(proj, dim=-1)
    x = F.normalize(target, dim=-1)
    diff = (z @ z.transpose(1, 2) - x @ x.transpose(1, 2)).abs()  # [B, L, L]
    m = mask.to(proj.dtype)
    pairs = m.unsqueeze(2) * m.unsqueeze(1)  # [B, L, L]
    pairs = pairs * (1 - torch.eye(m.shape[1], device=m.device, dtype=m.dtype))
    return _reduce(diff, pairs, reduction)


class _GatherKeepLocalGrad(torch.autograd.Function):
    """All-gather whose backward returns this process's slice of the incoming gradient only (no sum over
    processes): the semantics of U-MAE's ``GatherLayer``."""

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        parts = [torch.zeros_like(features) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, features.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), features.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows].contiguous()


def gather_with_grad(features: torch.Tensor, mode: str = "exact") -> torch.Tensor:
    """Concatenate ``features`` [b, D] from all processes (identity without torch.distributed).

    ``mode='exact'``: torch.distributed.nn's all_gather, whose backward sums every process's gradient for
    each slice, so that after DDP's averaging the update is that of one process holding the whole batch.
    ``mode='reference'``: each process keeps the gradient of its own slice only (U-MAE's GatherLayer), so the
    averaged update is 1/W of the full-batch one for W processes.
    """
    if mode not in ("exact", "reference"):
        raise MaeprobeError(f"umae.gather must be 'exact' or 'reference', got {mode!r}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    if mode == "reference":
        return _GatherKeepLocalGrad.apply(features)
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.simplefilter("ignore")
        return torch.cat(all_gather(features), dim=0)


def uniformity(features: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """mean over all pairs (i, j) of ``features`` [N, D], the diagonal included, of (cos(f_i, f_j) / tau)^2."""
    with torch.autocast(features.device.type, enabled=False):  # float32 also under bf16 autocast
        f = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)  # float64 stays
        return ((f @ f.T) / tau).pow(2).mean()


def gather_rows(features: torch.Tensor) -> torch.Tensor:
    """All processes' ``features`` [b, D] concatenated in rank order, without gradient (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    parts = [torch.zeros_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, features.contiguous())
    return torch.cat(parts, dim=0)


def uniformity_loss(features: torch.Tensor, tau: float = 0.1, gather: str = "exact") -> torch.Tensor:
    """U-MAE's uniformity term: mean over all pairs (i, j) of the gathered batch of (cos(f_i, f_j) / tau)^2.

    The batch is that of one micro-step on all processes. The training engine takes the term over the whole
    global batch under gradient accumulation (``umae.batch='global'``, see ``Objective.uniformity_targets``);
    this function is the single-micro-step form it reduces to without accumulation.

    Every process computes the same global value. See ``gather_with_grad`` for the two gradient semantics.
    """
    return uniformity(gather_with_grad(features, gather), tau)
