"""BEiT / BEiT v2 / data2vec-vision encoders: timm's own ``Beit`` behind maeprobe's probing interface.

These families differ from a plain ViT in ways that a key map cannot hide: a relative position bias
inside every attention (or one shared by all blocks), separate q and v biases (no k bias) and LayerScale
named ``gamma_1``/``gamma_2``. maeprobe therefore builds timm's implementation and only adds what the
probes need: ``blocks``, ``config``, ``num_prefix_tokens`` and ``forward_encoder``.

The relative position bias is defined on the full patch grid, so these encoders are probed without
masking (``mask_ratio`` 0); asking for a mask is an error rather than a silently different model.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..errors import MaeprobeError
from .mae import ArchConfig


class BeitEncoder(nn.Module):
    """timm ``Beit`` with the attributes maeprobe's capture, metrics and references use."""

    has_decoder = False
    num_prefix_tokens = 1  # CLS only

    def __init__(self, config: ArchConfig):
        super().__init__()
        from timm.models.beit import Beit

        extra = config.extra
        self.config = config
        self.net = Beit(
            img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
            num_classes=config.num_classes, global_pool="avg" if config.fc_norm else "token",
            embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
            qkv_bias=config.qkv_bias, mlp_ratio=config.mlp_ratio,
            norm_layer=partial(nn.LayerNorm, eps=config.norm_eps), init_values=config.init_values,
            use_abs_pos_emb=bool(extra.get("abs_pos_emb", False)),
            use_rel_pos_bias=bool(extra.get("rel_pos_bias", True)),
            use_shared_rel_pos_bias=bool(extra.get("shared_rel_pos_bias", False)),
            use_fc_norm=not config.final_norm,
        )
        if not config.final_norm and not config.fc_norm:  # e.g. data2vec-vision saved without its pooler
            self.net.fc_norm = nn.Identity()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.net.blocks

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float = 0.0, noise: torch.Tensor | None = None):
        """Encode all patches (timm's ``forward_features``). Returns (tokens [B, 1 + L, D], mask [B, L] of
        zeros, ids_restore [B, L]) like ``MaskedAutoencoderViT.forward_encoder``."""
        if mask_ratio > 0:
            raise MaeprobeError("this encoder has a relative position bias defined on the full patch grid "
                                f"({self.config.extra.get('family', 'BEiT')}); probe it with mask ratio 0")
        B, L = imgs.shape[0], self.config.num_patches
        tokens = self.net.forward_features(imgs)
        mask = torch.zeros(B, L, device=imgs.device)
        ids_restore = torch.arange(L, device=imgs.device).expand(B, L)
        return tokens, mask, ids_restore

    def forward_head(self, latent: torch.Tensor, global_pool: bool | None = None) -> torch.Tensor:
        return self.net.forward_head(latent)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.net(imgs)
