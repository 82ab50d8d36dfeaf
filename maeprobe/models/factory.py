"""Building a model from a state dict, and rebuilding it for another input size.

The three builders: 'vit' (``MaskedAutoencoderViT``, timm ``VisionTransformer`` names plus MAE's decoder), 'beit'
(timm ``Beit``) and 'eva' (timm ``Eva``, or a timm EVA definition named by its config). ``build`` checks a
state dict against the empty model before anything of that size is allocated; ``resize`` gives a model another
patch grid by the rule of the family it was loaded from (``pos_embed``), the way timm's ``set_input_size`` does.
"""
from __future__ import annotations

import torch

from ..errors import CheckpointError
from ..limits import check as check_limit
from .beit import BeitEncoder, EvaEncoder, TimmEncoder
from .mae import ArchConfig, MaskedAutoencoderViT
from .pos_embed import resample_pos_embed, resample_rel_pos_table

MAX_WEIGHT = 1e6  # far above any trained ViT's weights; above it float32 attention logits overflow to NaN


def construct(cfg: ArchConfig, builder: str):
    """The empty model for ``cfg``: (model, the module whose state dict the file fills)."""
    if builder in ("beit", "eva"):
        arch = cfg.extra.get("timm_architecture")
        if builder == "eva" and arch:  # timm's own definition, named by the snapshot's config.json: the name and
            import timm  # the switches passed the allow-list of checkpoints/meta.py; sizes come from the weights

            net = timm.create_model(arch, pretrained=False, num_classes=cfg.num_classes, img_size=cfg.img_size,
                                    embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                                    patch_size=cfg.patch_size,
                                    **{k: v for k, v in cfg.extra.get("timm_model_args", {}).items()})
            model = TimmEncoder(cfg, net)
        else:
            model = (BeitEncoder if builder == "beit" else EvaEncoder)(cfg)
        return model, model.net
    model = MaskedAutoencoderViT(cfg)
    return model, model


def build(cfg: ArchConfig, builder: str, state: dict, path):
    """The model for ``cfg`` filled strictly with ``state``; CheckpointError naming ``path`` when the keys,
    shapes or values do not fit."""
    # First on the meta device (no memory, no time): the keys and shapes must be exactly the file's before a
    # real model of that size is built. BEiT and EVA are then built on the CPU (their index buffers and rotary
    # tables are not in the file); maeprobe's ViT is filled in place (assign=True).
    with torch.device("meta"):
        model, target = construct(cfg, builder)
    expected = target.state_dict()
    _check_keys(expected, state, path)
    _check_values(expected, state, path)
    if builder != "vit":
        model, target = construct(cfg, builder)
    try:
        target.load_state_dict(state, strict=True, assign=builder == "vit")
    except RuntimeError as exc:
        detail = " ".join(str(exc).split("\n\t")[1:2]).strip() or str(exc)
        raise CheckpointError(path, f"tensor shapes do not fit a ViT/MAE model ({detail})") from None
    return model


def _check_keys(expected: dict, state: dict, path) -> None:
    """The same key names and shapes as the empty model's (``expected``), or one line naming the first misfit."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:4])}"
                         f"{', ...' if len(unexpected) > 4 else ''})")
        raise CheckpointError(path, "keys do not match a ViT/MAE model: " + "; ".join(parts))
    wrong = next((k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)), None)
    if wrong is not None:
        raise CheckpointError(path, f"tensor shapes do not fit a ViT/MAE model ({wrong}: {tuple(state[wrong].shape)} "
                                    f"in the file, {tuple(expected[wrong].shape)} expected)")


def _check_values(expected: dict, state: dict, path) -> None:
    """A NaN, inf or absurd weight gives NaN tables: refuse it instead."""
    for key, value in state.items():
        if value.is_complex() or (expected[key].is_floating_point() and not value.is_floating_point()):
            raise CheckpointError(path, f"{key} holds {str(value.dtype).replace('torch.', '')} values; expected "
                                        "real floating-point weights")
        if value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise CheckpointError(path, f"{key} holds NaN or infinite values; expected finite weights")
            if value.numel() and float(value.abs().max()) > MAX_WEIGHT:
                raise CheckpointError(path, f"{key} holds values of magnitude {float(value.abs().max()):.3g}; "
                                            f"expected the weights of a network (|w| <= {MAX_WEIGHT:g})")


def resized(cfg: ArchConfig, state: dict, img_size: int, rule: str, rel_rule: str, path) -> tuple[ArchConfig, dict]:
    """(config, state dict) of the encoder at ``img_size``: the position embedding resampled by ``rule`` and
    BEiT's relative position bias tables by ``rel_rule`` (``pos_embed``); an MAE decoder is left out."""
    if img_size < cfg.patch_size or img_size % cfg.patch_size:
        raise CheckpointError(path, f"--img-size {img_size} is not a positive multiple of the patch size "
                                    f"{cfg.patch_size}")
    grid = img_size // cfg.patch_size
    check_limit("MAEPROBE_MAX_PATCHES", grid * grid, f"--img-size {img_size}: a {grid}x{grid} patch grid")
    state = dict(state)
    if "decoder_embed.weight" in state or cfg.decoder_depth:
        # the decoder's patch grid is fixed (its position embedding and, for AE(k), its block layout): the
        # encoder is resampled and the decoder left out; decoder metrics run at the checkpoint's own size
        state = {k: v for k, v in state.items() if not k.startswith(("decoder_", "mask_token"))}
        cfg = ArchConfig(**{**cfg.to_dict(), "decoder_depth": 0, "decoder_type": "transformer"})
    if "pos_embed" in state:
        num_prefix = cfg.num_prefix_tokens if cfg.num_pos_prefix is None else cfg.num_pos_prefix
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], grid, num_prefix, rule)
    for key in [k for k in state if k.endswith("relative_position_bias_table")]:
        state[key] = resample_rel_pos_table(state[key], grid, rel_rule)
    return ArchConfig(**{**cfg.to_dict(), "img_size": img_size}), state


def decoder_left_out(model) -> str | None:
    """Why ``model`` has no decoder when ``load(img_size=...)`` left its MAE decoder out (``resized``; the loader
    records the checkpoint's own size as ``model.checkpoint.decoder_img_size``), naming ``img_size``; else None.

    The decoder is left out rather than resampled: the official MAE's ``decoder_pos_embed`` is a fixed 2-D sin-cos
    table of the trained grid (facebookresearch/mae, models_mae.py, ``initialize_weights``), which a bicubic
    resampling does not reproduce, and the conv / Gaussian / AE(k) decoders are laid out on that grid."""
    own = getattr(getattr(model, "checkpoint", None), "decoder_img_size", None)
    if own is None:
        return None
    grid = own // model.config.patch_size
    return (f"img_size={model.config.img_size} left out the MAE decoder (it keeps the fixed {grid}x{grid} patch grid "
            f"it was trained on); decoder analyses need the checkpoint at its own input size (img_size={own})")


def builder_of(model) -> str:
    """Which builder made ``model``: 'beit', 'eva' (timm ``Eva`` or a timm EVA definition) or 'vit'."""
    if isinstance(model, BeitEncoder):
        return "beit"
    return "eva" if isinstance(model, TimmEncoder) else "vit"


def resize(model, img_size: int):
    """An encoder-only copy of a loaded model that takes ``img_size`` inputs, resampled with the rule of the
    family it was loaded from (``model.checkpoint.pos_resample``; timm's without one). Used to give a reference
    model the probed model's patch grid."""
    info = getattr(model, "checkpoint", None)
    rule, rel_rule = (info.pos_resample, info.rel_pos_resample) if info is not None else ("timm", "timm")
    path = info.path if info is not None else "model"
    cfg = ArchConfig(**{**model.config.to_dict(), "decoder_depth": 0, "decoder_type": "transformer"})
    source = model.net if isinstance(model, TimmEncoder) else model
    state = {k: v for k, v in source.state_dict().items()
             if not k.startswith(("decoder_", "mask_token")) and "relative_position_index" not in k}
    cfg, state = resized(cfg, state, img_size, rule, rel_rule, path)
    copy = build(cfg, builder_of(model), state, path)
    if info is not None:
        copy.checkpoint = info
    return copy.to(next(model.parameters()).device).eval()
