"""BEiT / BEiT v2 / data2vec-vision and EVA / EVA-02 encoders: timm's own ``Beit`` and ``Eva`` behind
maeprobe's probing interface.

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


class TimmEncoder(nn.Module):
    """A timm model (``self.net``) with the attributes maeprobe's capture, metrics and references use."""

    has_decoder = False

    def __init__(self, config: ArchConfig, net: nn.Module):
        super().__init__()
        self.config = config
        self.net = net

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.net, "num_prefix_tokens", 1))

    @property
    def blocks(self) -> nn.ModuleList:
        return self.net.blocks

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float = 0.0, noise: torch.Tensor | None = None):
        """Encode all patches (timm's ``forward_features``). Returns (tokens [B, P + L, D], mask [B, L] of
        zeros, ids_restore [B, L]) like ``MaskedAutoencoderViT.forward_encoder``."""
        if mask_ratio > 0:
            raise MaeprobeError("this encoder's position encoding (relative position bias or rotary embedding) is "
                                f"defined on the full patch grid ({self.config.extra.get('family', 'timm')}); "
                                "probe it with mask ratio 0")
        B, L = imgs.shape[0], self.config.num_patches
        tokens = self.net.forward_features(imgs)
        mask = torch.zeros(B, L, device=imgs.device)
        ids_restore = torch.arange(L, device=imgs.device).expand(B, L)
        return tokens, mask, ids_restore

    def forward_head(self, latent: torch.Tensor, global_pool: bool | None = None) -> torch.Tensor:
        return self.net.forward_head(latent)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.net(imgs)


class EvaEncoder(TimmEncoder):
    """timm ``Eva`` (EVA: fused qkv with q/v biases; EVA-02: separate projections, SwiGLU, scaled MLP norm,
    rotary position embedding). ``config.extra`` holds the switches read from the weights."""

    def __init__(self, config: ArchConfig):
        from timm.models.eva import Eva

        extra = config.extra
        grid = extra.get("rope_grid", config.grid_size)
        net = Eva(
            img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
            num_classes=config.num_classes, embed_dim=config.embed_dim, depth=config.depth,
            num_heads=config.num_heads, qkv_bias=config.qkv_bias, qkv_fused=bool(extra.get("qkv_fused", True)),
            mlp_ratio=config.mlp_ratio, swiglu_mlp=bool(extra.get("swiglu", False)),
            scale_mlp=bool(extra.get("scale_mlp", False)), scale_attn_inner=bool(extra.get("scale_attn_inner", False)),
            norm_layer=partial(nn.LayerNorm, eps=config.norm_eps), init_values=config.init_values,
            class_token=config.class_token, num_reg_tokens=config.num_reg_tokens,
            no_embed_class=config.num_pos_prefix == 0 and config.num_prefix_tokens > 0,
            use_abs_pos_emb=bool(extra.get("abs_pos_emb", True)), use_rot_pos_emb=bool(extra.get("rope", False)),
            ref_feat_shape=(grid, grid) if extra.get("rope") else None, use_fc_norm=not config.final_norm,
        )
        if not config.final_norm and not config.fc_norm:
            net.fc_norm = nn.Identity()
        super().__init__(config, net)


class BeitEncoder(TimmEncoder):
    """timm ``Beit`` (CLS token, relative position bias, q/v biases, LayerScale)."""

    def __init__(self, config: ArchConfig):
        from timm.models.beit import Beit

        extra = config.extra
        net = Beit(
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
            net.fc_norm = nn.Identity()
        super().__init__(config, net)
