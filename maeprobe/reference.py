"""Reference models: a second model run on the same images in the same pass (e.g. DINO for Eq. 8)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .capture import CaptureRequest


@dataclass
class Reference:
    """A second model run on the same images in the same pass (e.g. DINO for Eq. 8).

    ``prepare`` gives it the probed model's patch grid: its input becomes grid x its own patch size
    (position embedding resampled when needed); ``adapt`` turns the probed model's input batch into the
    reference's (resize in pixel space, bicubic + antialias, then its own mean/std).
    """

    name: str
    model: torch.nn.Module
    request: CaptureRequest

    def prepare(self, probed) -> "Reference":
        from .models import resize_input

        if self.model is probed:  # hooks live on module instances: the reference must be its own copy
            import copy

            self.model = copy.deepcopy(probed)
        size = probed.config.grid_size * self.model.config.patch_size
        if self.model.config.img_size != size:
            self.model = resize_input(self.model, size)
        return self

    def adapt(self, x: torch.Tensor, probed) -> torch.Tensor:
        src_mean, src_std = _mean_std(probed, x)
        dst_mean, dst_std = _mean_std(self.model, x)
        size = self.model.config.img_size
        if size == x.shape[-1] and torch.equal(src_mean, dst_mean) and torch.equal(src_std, dst_std):
            return x
        pixels = x.float() * src_std + src_mean
        if size != x.shape[-1]:
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True,
                                   align_corners=False).clamp(0, 1)
        return (pixels - dst_mean) / dst_std


def _mean_std(model, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from .checkpoints import normalization

    mean, std = normalization(model)
    return (torch.tensor(mean, device=like.device).view(1, 3, 1, 1),
            torch.tensor(std, device=like.device).view(1, 3, 1, 1))
