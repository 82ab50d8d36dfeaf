"""The MAE encoder-decoder, assembled from timm parts under facebookresearch/mae's parameter names.

One class covers every checkpoint maeprobe loads: an official MAE with its decoder, an encoder-only
release, a fine-tuned ViT with a classification head, DeiT (distillation token), DINO and models with
register tokens. Parts that a checkpoint lacks are simply not built, so ``load_state_dict(strict=True)``
checks every key.

Token layout: ``[cls?, dist?, reg_1..reg_R, patch_1..patch_L]``. ``pos_embed`` covers the patches and the
first ``num_pos_prefix`` prefix tokens (MAE/DINO/DeiT: all of them; timm ``no_embed_class``: none;
DINOv2 with registers: the CLS token only).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import MaeprobeError
from ..masking import random_masking


@dataclass
class ArchConfig:
    """Shapes of a ViT / MAE model. Everything here is read from the weights, except head counts."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    init_values: float | None = None  # layer scale (DINOv2, CaiT-style)
    act_layer: str = "gelu"  # MLP activation: 'gelu' (exact), 'quick_gelu' (OpenAI CLIP), 'gelu_tanh' (SigLIP)
    pre_norm: bool = False  # LayerNorm before the blocks (CLIP's ln_pre, timm ``norm_pre``)
    patch_bias: bool = True  # the patch projection has a bias (not in CLIP)
    mlp_layer: str = "mlp"  # 'mlp' or 'swiglu' (DINOv2 ViT-g: packed SwiGLU, fc1 holds both halves)
    drop_path_rate: float = 0.0  # stochastic depth of the encoder blocks, linear in depth (fine-tuning)
    class_token: bool = True
    dist_token: bool = False
    num_reg_tokens: int = 0
    num_pos_prefix: int | None = None  # prefix tokens that get a position embedding (None: all)
    pos_embed_learned: bool = False  # MAE: fixed sin-cos; timm/DINO/DeiT: learned
    final_norm: bool = True  # ``norm`` after the blocks (absent in MAE global-pool fine-tunes)
    fc_norm: bool = False
    num_classes: int = 0
    # decoder (MAE); decoder_depth == 0 means encoder only
    decoder_embed_dim: int = 512
    decoder_depth: int = 0
    decoder_num_heads: int = 16
    decoder_mlp_ratio: float | None = None  # None: same as the encoder
    decoder_type: str = "transformer"  # 'transformer', 'gaussian' (weighted average + MLP), 'conv' (one 5x5 conv)
    pred_size: int | None = None  # side of the predicted pixel block per token (AE(k)); None: the patch size
    norm_pix_loss: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.dist_token) + self.num_reg_tokens

    def to_dict(self) -> dict:
        return asdict(self)


def activation(name: str) -> type[nn.Module]:
    """The MLP activation of a family: exact GELU (ViT, MAE, DINO, BEiT), QuickGELU (OpenAI CLIP) or the
    tanh approximation of GELU (SigLIP, HF ``gelu_pytorch_tanh`` / ``gelu_new``)."""
    from timm.layers import GELUTanh, QuickGELU

    table = {"gelu": nn.GELU, "quick_gelu": QuickGELU, "gelu_tanh": GELUTanh}
    if name not in table:
        raise MaeprobeError(f"activation {name!r} is not supported (known: {', '.join(table)})")
    return table[name]


def sincos_pos_embed(embed_dim: int, grid_size: int, num_prefix: int = 1) -> torch.Tensor:
    """2-D sine-cosine position embedding of MAE (zeros for the prefix tokens). Returns [1, P + L, D]."""
    assert embed_dim % 4 == 0, "sin-cos position embedding needs a width divisible by 4"
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0))
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # [g, g] each
    # MAE's numpy code builds the grid as meshgrid(w, h): first half encodes the column, second the row.
    halves = []
    for axis in (cols.flatten(), rows.flatten()):
        angles = axis[:, None] * omega[None, :]  # [L, D/4]
        halves.append(torch.cat([angles.sin(), angles.cos()], dim=1))  # [L, D/2]
    emb = torch.cat(halves, dim=1)  # [L, D]
    emb = torch.cat([torch.zeros(num_prefix, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


class MaskedAutoencoderViT(nn.Module):
    """ViT encoder (+ optional MAE decoder) with facebookresearch/mae parameter names."""

    def __init__(self, config: ArchConfig | None = None, **overrides):
        super().__init__()
        cfg = config or ArchConfig()
        if overrides:
            cfg = ArchConfig(**{**cfg.to_dict(), **overrides})
        self.config = cfg
        # One draw of the global random stream, before any module is built, seeds ``initialize_weights``' own
        # generators: the encoder's initial weights then depend on the seed and the encoder's shape only, never on
        # the decoder's (a wider ``decoder_pred`` draws more numbers at construction; the findings compare AE(k),
        # Gaussian and conv runs with MAE's same-seed initial encoder). The global stream is never rewound.
        # (built on the meta device to check a checkpoint's keys, no weight is drawn: the file fills them)
        on_meta = torch.empty(0).device.type == "meta"
        self._init_seed = 0 if on_meta else int(torch.randint(0, 2**62, (1,)).item())
        norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)
        D, L = cfg.embed_dim, cfg.num_patches
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.num_pos_prefix = cfg.num_prefix_tokens if cfg.num_pos_prefix is None else cfg.num_pos_prefix

        # --- encoder ---
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, D, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.dist_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_reg_tokens, D)) if cfg.num_reg_tokens else None
        self.pos_embed = nn.Parameter(
            torch.zeros(1, L + self.num_pos_prefix, D), requires_grad=cfg.pos_embed_learned
        )
        self.norm_pre = norm_layer(D) if cfg.pre_norm else nn.Identity()
        act_layer = activation(cfg.act_layer)
        mlp = {}
        if cfg.mlp_layer == "swiglu":
            from timm.layers import SwiGLUPacked

            mlp = dict(mlp_layer=SwiGLUPacked)
            act_layer = nn.SiLU
        self.blocks = nn.ModuleList(
            Block(D, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, init_values=cfg.init_values,
                  drop_path=cfg.drop_path_rate * i / max(cfg.depth - 1, 1), norm_layer=norm_layer,
                  act_layer=act_layer, **mlp)
            for i in range(cfg.depth)
        )
        self.norm = norm_layer(D) if cfg.final_norm else nn.Identity()
        self.fc_norm = norm_layer(D) if cfg.fc_norm else None
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes else None
        self.head_dist = nn.Linear(D, cfg.num_classes) if (cfg.num_classes and cfg.dist_token) else None

        # --- decoder ---
        if cfg.decoder_type not in ("transformer", "gaussian", "conv"):
            raise MaeprobeError(f"decoder_type must be transformer, gaussian or conv, got {cfg.decoder_type!r}")
        self.has_decoder = cfg.decoder_depth > 0 if cfg.decoder_type == "transformer" else True
        if self.has_decoder:
            Dd = cfg.decoder_embed_dim
            dec_ratio = cfg.decoder_mlp_ratio or cfg.mlp_ratio
            self.decoder_embed = nn.Linear(D, Dd, bias=True)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
            self.decoder_pos_embed = nn.Parameter(
                torch.zeros(1, L + self.num_prefix_tokens, Dd), requires_grad=False
            )
            if cfg.decoder_type == "transformer":
                self.decoder_blocks = nn.ModuleList(
                    Block(Dd, cfg.decoder_num_heads, dec_ratio, qkv_bias=True, norm_layer=norm_layer)
                    for _ in range(cfg.decoder_depth)
                )
            elif cfg.decoder_type == "gaussian":
                from timm.layers import Mlp

                self.decoder_mlp = Mlp(Dd, int(Dd * dec_ratio))
            else:
                self.decoder_conv = nn.Conv2d(Dd, Dd, kernel_size=5, padding=2)
            self.decoder_norm = norm_layer(Dd)
            k = cfg.pred_size or cfg.patch_size
            self.decoder_pred = nn.Linear(Dd, k**2 * cfg.in_chans, bias=True)
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """MAE's initialisation: sin-cos position embeddings, xavier linears, normal(0.02) tokens.

        Drawn from two private generators seeded at construction (``_init_seed``): one for the encoder (and the
        heads), one for the decoder, so at one seed every decoder type, depth and ``pred_size`` starts from the
        same encoder (official MAE draws the mask token before the encoder's linears, so its encoder depends on
        whether a decoder exists). Calling it again gives the same weights and leaves the global stream alone.
        Parameters MAE leaves at PyTorch's construction-time init keep it (the patch embedding's bias, the conv
        decoder's kernel)."""
        cfg = self.config
        device = self.pos_embed.device
        if device.type == "meta":  # shapes only (``models.factory.build``): nothing to draw
            return
        encoder_gen = torch.Generator(device=device).manual_seed(self._init_seed)
        decoder_gen = torch.Generator(device=device).manual_seed(self._init_seed + 1)
        self.pos_embed.data.copy_(sincos_pos_embed(cfg.embed_dim, cfg.grid_size, self.num_pos_prefix))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1), generator=encoder_gen)
        for token in (self.cls_token, self.dist_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=0.02, generator=encoder_gen)
        decoder = [module for name, module in self.named_children() if name.startswith("decoder_")]
        decoder_ids = {id(m) for top in decoder for m in top.modules()}
        for module in self.modules():  # encoder (and heads), in registration order
            if id(module) not in decoder_ids:
                self._init_module(module, encoder_gen)
        if self.has_decoder:
            self.decoder_pos_embed.data.copy_(
                sincos_pos_embed(cfg.decoder_embed_dim, cfg.grid_size, self.num_prefix_tokens)
            )
            nn.init.normal_(self.mask_token, std=0.02, generator=decoder_gen)
            for top in decoder:
                for module in top.modules():
                    self._init_module(module, decoder_gen)

    @staticmethod
    def _init_module(module: nn.Module, generator: torch.Generator | None = None) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth (timm convention), for layer-wise lr decay when fine-tuning."""
        return dict(stem=r"^cls_token|^dist_token|^reg_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    # ------------------------------------------------------------------ patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, L, p*p*C] in MAE's (p, q, c) order."""
        p = self.config.patch_size
        B, C, H, W = imgs.shape
        h, w = H // p, W // p
        x = imgs.reshape(B, C, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(B, h * w, p * p * C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, p*p*C] -> [B, C, H, W]."""
        p, C = self.config.patch_size, self.config.in_chans
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], C, h * p, w * p)

    # ------------------------------------------------------------------ encoder
    def _prefix_tokens(self, batch_size: int) -> torch.Tensor | None:
        """Prefix tokens with their position embeddings added where the checkpoint has them."""
        tokens = [t for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        if not tokens:
            return None
        prefix = torch.cat(tokens, dim=1)  # [1, P, D]
        if self.num_pos_prefix:
            pos = self.pos_embed[:, : self.num_pos_prefix]
            prefix = torch.cat([prefix[:, : self.num_pos_prefix] + pos, prefix[:, self.num_pos_prefix:]], dim=1)
        return prefix.expand(batch_size, -1, -1)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float = 0.0, noise: torch.Tensor | None = None):
        """Encode the visible patches. Returns (latent [B, P + K, D], mask [B, L], ids_restore [B, L])."""
        x = self.patch_embed(imgs)  # [B, L, D]
        x = x + self.pos_embed[:, self.num_pos_prefix:]
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)  # [B, K, D]
        prefix = self._prefix_tokens(x.shape[0])
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)  # [B, P + K, D]
        x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x, mask, ids_restore

    def forward_head(self, latent: torch.Tensor, global_pool: bool | None = None) -> torch.Tensor:
        """Classification logits from encoder output (mean-pooled patches with fc_norm, else CLS)."""
        if self.head is None:
            raise RuntimeError("this model has no classification head")
        pool = self.fc_norm is not None if global_pool is None else global_pool
        P = self.num_prefix_tokens
        x = latent[:, P:].mean(dim=1) if pool else latent[:, 0]
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        logits = self.head(x)
        if self.head_dist is not None:
            logits = (logits + self.head_dist(latent[:, 1])) / 2
        return logits

    def forward_features_logits(self, imgs: torch.Tensor) -> torch.Tensor:
        """Classification logits of full (unmasked) images."""
        return self.forward_head(self.forward_encoder(imgs, 0.0)[0])

    # ------------------------------------------------------------------ decoder
    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, return_features: bool = False):
        """Predict pixels of every patch: [B, L, k*k*C] (prefix tokens removed). With ``return_features``
        also the normalised decoder features of the patches [B, L, Dd] (LC-MAE's projector input)."""
        if not self.has_decoder:
            raise RuntimeError("this checkpoint has no decoder")
        P = self.num_prefix_tokens
        x = self.decoder_embed(latent)  # [B, P + K, Dd]
        B, L = ids_restore.shape
        K = x.shape[1] - P
        mask_tokens = self.mask_token.expand(B, L - K, -1)
        x_ = torch.cat([x[:, P:], mask_tokens], dim=1)  # [B, L, Dd] in shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :P], x_], dim=1) + self.decoder_pos_embed  # [B, P + L, Dd]
        if self.config.decoder_type == "transformer":
            for block in self.decoder_blocks:
                x = block(x)
        else:
            visible = (ids_restore < K).to(x.dtype)  # [B, L] 1 = visible patch
            x = torch.cat([x[:, :P], self._local_decoder(x[:, P:], visible)], dim=1)
        x = self.decoder_norm(x)
        pred = self.decoder_pred(x)[:, P:]
        return (pred, x[:, P:]) if return_features else pred

    def _local_decoder(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """LC-MAE Table 2 decoders on the patch grid: Gaussian weighted average of the visible tokens
        (sigma 1, 5 x 5 window, non-parametric) + MLP, or a single 5 x 5 convolution."""
        B, L, Dd = tokens.shape
        g = self.config.grid_size
        grid = tokens.transpose(1, 2).reshape(B, Dd, g, g)  # [B, Dd, g, g]
        if self.config.decoder_type == "conv":
            return self.decoder_conv(grid).flatten(2).transpose(1, 2)
        offsets = torch.arange(-2, 3, device=tokens.device, dtype=tokens.dtype)
        kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / 2)  # sigma = 1
        vis = visible.reshape(B, 1, g, g)
        weighted = torch.nn.functional.conv2d((grid * vis).reshape(1, B * Dd, g, g),  # depthwise, fixed kernel
                                              kernel.expand(B * Dd, 1, 5, 5), padding=2, groups=B * Dd)
        norm = torch.nn.functional.conv2d(vis, kernel.view(1, 1, 5, 5), padding=2)  # [B, 1, g, g]
        averaged = weighted.reshape(B, Dd, g, g) / norm.clamp_min(1e-6)
        averaged = torch.where(norm > 1e-6, averaged, grid)  # no visible neighbour: keep the mask token
        x = averaged.flatten(2).transpose(1, 2)  # [B, L, Dd]
        return x + self.decoder_mlp(x)

    def targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """Pixel targets per patch token [B, L, k*k*C]: the patch itself (MAE), or for AE(k) the k x k block
        centred on the patch (zero padding at the image border, in normalised pixel space)."""
        k, p = self.config.pred_size or self.config.patch_size, self.config.patch_size
        if k == p:
            return self.patchify(imgs)
        if (k - p) % 2:
            raise MaeprobeError(f"pred_size {k} and patch size {p} must differ by an even number")
        pad = (k - p) // 2
        blocks = torch.nn.functional.unfold(torch.nn.functional.pad(imgs, (pad, pad, pad, pad)), k, stride=p)
        B, C = imgs.shape[:2]
        blocks = blocks.reshape(B, C, k, k, -1)  # [B, C, k, k, L]
        return blocks.permute(0, 4, 2, 3, 1).reshape(B, -1, k * k * C)  # (row, col, channel) order as MAE

    def loss_targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """What the decoder reconstructs [B, L, k*k*C]: ``targets``, each normalised to zero mean and unit
        variance when ``norm_pix_loss`` is on (MAE's norm-pix loss)."""
        target = self.targets(imgs)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on masked patches (Eq. 1 of the MAE paper), optional norm-pix targets."""
        target = self.loss_targets(imgs)  # [B, L, k*k*C]
        loss = ((pred - target) ** 2).mean(dim=-1)  # [B, L]
        masked = mask.sum()
        # no masking (ratio 0, AE): every patch. Branch-free (torch.where, no Python `if` on a tensor), so that
        # torch.compile keeps the step in one graph and a GPU never waits for this value
        return torch.where(masked > 0, (loss * mask).sum() / masked.clamp_min(1), loss.mean())

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        """Official MAE forward: (loss, pred, mask)."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask


def build_mae(preset: str | None = None, **kwargs) -> MaskedAutoencoderViT:
    """Build a model from a preset name of ``registry.PRESETS`` and/or ArchConfig keyword arguments."""
    from .registry import PRESETS

    params: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise MaeprobeError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        params.update(PRESETS[preset])
    params.update(kwargs)
    return MaskedAutoencoderViT(_checked_arch(params))


def _checked_arch(params: dict) -> ArchConfig:
    """``ArchConfig(**params)`` for values a caller passed (``build_mae``): unknown names and values of the wrong
    kind are refused in one line (``MaeprobeError``), and the model's parameters, counted on PyTorch's meta device
    before anything is allocated, stay within ``MAEPROBE_MAX_MODEL_BYTES`` (x 4 bytes)."""
    import dataclasses
    import numbers

    from ..limits import check

    fields = {f.name: f for f in dataclasses.fields(ArchConfig)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise MaeprobeError(f"build_mae: unknown setting {unknown[0]!r:.60}; known: {', '.join(sorted(fields))}")
    for name, value in params.items():
        kind = str(fields[name].type)
        if name == "extra":
            ok = isinstance(value, dict)
        elif kind.startswith("int"):
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0
        elif kind.startswith("float"):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        elif kind.startswith("bool"):
            ok = isinstance(value, bool)
        elif kind.startswith("str"):
            ok = isinstance(value, str)
        else:
            ok = True
        ok = ok or (value is None and "None" in kind)
        if not ok:
            raise MaeprobeError(f"build_mae: {name}={value!r:.60} is not a valid {kind}")
    cfg = ArchConfig(**params)
    for name in ("img_size", "patch_size", "in_chans", "embed_dim", "num_heads"):
        if getattr(cfg, name) < 1:
            raise MaeprobeError(f"build_mae: {name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.img_size < cfg.patch_size:
        raise MaeprobeError(f"build_mae: img_size={cfg.img_size} is smaller than patch_size={cfg.patch_size}")
    check("MAEPROBE_MAX_DEPTH", max(cfg.depth, cfg.decoder_depth), "build_mae: depth")
    check("MAEPROBE_MAX_PATCHES", cfg.num_patches, "build_mae: patches per image")
    try:
        with torch.device("meta"):
            meta = MaskedAutoencoderViT(cfg)
    except MaeprobeError:
        raise
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:
        raise MaeprobeError(f"build_mae: these settings do not make a model ({str(exc).splitlines()[0][:200]})") \
            from None
    size = sum(t.numel() for t in list(meta.parameters()) + list(meta.buffers()))
    check("MAEPROBE_MAX_MODEL_BYTES", 4 * size, f"build_mae: the model's {size:,} parameters x 4 bytes")
    return cfg


def resize_input(model, img_size: int):
    """An encoder-only copy of ``model`` that takes ``img_size`` inputs, its position embedding resampled by
    the rule of the family it was loaded from (``models.factory.resize``)."""
    from .factory import resize  # the factory builds on this module: imported when first used

    if img_size % model.config.patch_size:
        raise MaeprobeError(f"input size {img_size} is not a multiple of the patch size {model.config.patch_size}")
    return resize(model, img_size)
