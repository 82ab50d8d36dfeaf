"""Position embeddings at another input size: resample the absolute position embedding (and BEiT's relative
position bias tables) to a new patch grid the way each family's own code does it at that size.

A leaf, like timm's ``layers/pos_embed.py``: the model factory (``models.factory.resize``) and the checkpoint
loader (``checkpoints.load(img_size=...)``) both use it. The result is a function of the weights alone, so it
is done once when a model is built; the model then runs at the new size exactly as the family's implementation
would with interpolation turned on.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table

from ..errors import MaeprobeError

# How a position embedding is resampled to another patch grid, as each family's own code does it.
POS_RESAMPLE = {
    # F.interpolate(size=new grid, bicubic, align_corners=False, no antialias): facebookresearch/mae's
    # interpolate_pos_embed and every HuggingFace model's interpolate_pos_encoding
    "size": "bicubic to the new grid size, no antialias (MAE, HuggingFace)",
    # the same with antialias: HuggingFace's Dinov2WithRegisters (its interpolate_pos_encoding sets antialias=True)
    "size-antialias": "bicubic to the new grid size, antialias (HuggingFace DINOv2 with registers)",
    # F.interpolate(scale_factor=(new + 0.1) / old, bicubic, no antialias): DINO, iBOT and DINOv2's
    # interpolate_pos_encoding (interpolate_offset 0.1, interpolate_antialias False)
    "offset": "bicubic with scale factor (new + 0.1) / old, no antialias (DINO, DINOv2, iBOT)",
    # timm.layers.resample_abs_pos_embed (bicubic, antialias): timm, DeiT, MoCo v3, open_clip, JAX ViT
    "timm": "bicubic with antialias (timm's resample_abs_pos_embed; DeiT, MoCo v3, open_clip, JAX ViT)",
}

# How BEiT's relative position bias tables are resampled: 'hf' (HuggingFace's BeitRelativePositionBias) or
# 'timm' (timm's resize_rel_pos_bias_table, as its BEiT checkpoint_filter_fn does).
REL_POS_RESAMPLE = ("timm", "hf")


def resample_pos_embed(pos: torch.Tensor, new_grid: int, num_prefix: int, rule: str) -> torch.Tensor:
    """pos [1, P + g*g, D] -> [1, P + new*new, D]; the first ``num_prefix`` rows are kept as they are.

    Rules (``POS_RESAMPLE``): 'size' (bicubic to the new size, no antialias: MAE, HuggingFace;
    'size-antialias' with antialias: HuggingFace DINOv2 with registers),
    'offset' (bicubic, scale factor (new + 0.1) / old, no antialias: DINO, DINOv2, iBOT), 'timm'
    (``timm.layers.resample_abs_pos_embed``, bicubic with antialias).
    """
    if rule not in POS_RESAMPLE:
        raise MaeprobeError(f"unknown position-embedding resampling rule {rule!r} (known: {', '.join(POS_RESAMPLE)})")
    prefix, grid_part = pos[:, :num_prefix], pos[:, num_prefix:]  # [1, P, D], [1, g*g, D]
    old = math.isqrt(grid_part.shape[1])
    if old == new_grid:
        return pos
    if rule == "timm":
        return resample_abs_pos_embed(pos, [new_grid, new_grid], old_size=[old, old], num_prefix_tokens=num_prefix)
    dim = pos.shape[-1]
    dtype = pos.dtype
    grid = grid_part.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()  # [1, D, g, g]
    if rule in ("size", "size-antialias"):
        grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False,
                             antialias=rule == "size-antialias")
    else:
        scale = (new_grid + 0.1) / old
        grid = F.interpolate(grid, scale_factor=(scale, scale), mode="bicubic", align_corners=False,
                             antialias=False)
        if grid.shape[-1] != new_grid:  # (new + 0.1) / old * old always floors to new
            raise MaeprobeError(f"position embedding resampled to {grid.shape[-1]}, expected {new_grid}")
    grid = grid.to(dtype).permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim)  # [1, new*new, D]
    return torch.cat([prefix, grid], dim=1)


def resample_rel_pos_table(table: torch.Tensor, new_grid: int, rule: str) -> torch.Tensor:
    """BEiT relative position bias table [(2g-1)^2 + 3, heads] -> [(2n-1)^2 + 3, heads].

    'hf': bilinear on the (2g-1) x (2g-1) grid of offsets (HuggingFace's ``BeitRelativePositionBias``);
    anything else: timm's ``resize_rel_pos_bias_table`` (used by its BEiT ``checkpoint_filter_fn``).
    The last three rows (CLS to token, token to CLS, CLS to CLS) are kept.
    """
    heads = table.shape[1]
    old = (math.isqrt(table.shape[0] - 3) + 1) // 2
    if old == new_grid:
        return table
    side_old, side_new = 2 * old - 1, 2 * new_grid - 1
    if rule == "hf":
        sub = table[:-3].reshape(1, side_old, side_old, heads).permute(0, 3, 1, 2)  # [1, heads, 2g-1, 2g-1]
        sub = F.interpolate(sub.float(), size=(side_new, side_new), mode="bilinear").to(table.dtype)
        sub = sub.permute(0, 2, 3, 1).reshape(side_new * side_new, heads)  # [(2n-1)^2, heads]
        return torch.cat([sub, table[-3:]], dim=0)
    return resize_rel_pos_bias_table(table, new_window_size=(new_grid, new_grid),
                                     new_bias_shape=(side_new * side_new + 3, heads))
