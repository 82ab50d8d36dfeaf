"""Original release files: find the encoder's state dict inside the container and strip its wrappers (the
family modules in ``families/`` then recognise the layout and map it to timm's names, with timm's own converters
where timm has one); JAX ``.npz`` files; what an official release file holds.

* facebookresearch/mae: ``{'model': sd}`` encoder-only and full (with decoder) releases and training
  checkpoints ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``; timm state dicts, DeiT (``dist_token``).
* DINO and iBOT: raw backbones and training checkpoints with ``teacher``/``student`` and ``module.``/
  ``backbone.`` prefixes (projection heads and iBOT's ``masked_embed`` are dropped).
* DINOv2 ``dinov2_vit*14_pretrain.pth`` and ``*_reg4_pretrain.pth`` (``register_tokens``, LayerScale,
  packed SwiGLU ``w12``/``w3`` for ViT-g).
* MoCo v3 ``{'state_dict': {'module.base_encoder.*', 'module.momentum_encoder.*', ...}}``.
* BEiT / BEiT v2 (microsoft/unilm layout): timm's ``beit.checkpoint_filter_fn``.
* EVA / EVA-02 in timm's ``Eva`` layout (built as timm's ``Eva``, or by name from a timm snapshot's config).
* OpenAI CLIP and open_clip visual weights (``visual.*``): timm's ``_convert_openai_clip``.
* Google's JAX ViT ``.npz`` (AugReg and the original release): timm's ``_load_weights``.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .families.beit import convert_beit, is_beit  # noqa: F401  (re-exported: each family's converter lives with it)
from .families.clip import convert_clip  # noqa: F401
from .families.eva import is_eva  # noqa: F401
from .files import EXPECTED


def unwrap(obj, path: Path, prefer: str) -> tuple[dict, str, dict, list[str]]:
    """Find the model's state dict inside a checkpoint container: (state dict, container, meta, notes)."""
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict; expected {EXPECTED}")
    meta = dict(obj["maeprobe"]) if isinstance(obj.get("maeprobe"), dict) else {}
    notes: list[str] = []
    args = obj.get("args")
    if isinstance(args, argparse.Namespace):
        meta.setdefault("norm_pix_loss", bool(getattr(args, "norm_pix_loss", False)))
        if isinstance(getattr(args, "mask_ratio", None), (int, float)):
            meta.setdefault("pretrain_mask_ratio", float(args.mask_ratio))
    if "teacher" in obj or "student" in obj:
        which = prefer if prefer in obj else ("teacher" if "teacher" in obj else "student")
        return obj[which], f"DINO training checkpoint ({which})", meta, notes
    if isinstance(obj.get("model"), dict):
        kind = "training checkpoint" if "optimizer" in obj else "{'model': state_dict}"
        return obj["model"], kind, meta, notes
    for key in ("state_dict", "module", "model_state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key], f"{{'{key}': state_dict}}", meta, notes
    return obj, "state dict", meta, notes


def strip_prefixes(sd: dict, prefer: str = "teacher") -> tuple[dict, list[str], str | None]:
    """Remove wrapper prefixes (DDP ``module.``, ``backbone.``, MoCo v3 encoders, ``visual.`` of CLIP) and
    heads that are not the encoder. Returns (state dict, notes, family when a prefix names it)."""
    notes: list[str] = []
    hint = None
    for prefix in ("module.", "_orig_mod.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    if any(k.startswith("base_encoder.") for k in sd):  # MoCo v3
        which = "momentum_encoder" if prefer == "momentum" else "base_encoder"
        kept = {k[len(which) + 1:]: v for k, v in sd.items() if k.startswith(which + ".")}
        notes.append(f"MoCo v3: kept the {which}, ignored {len(sd) - len(kept)} other tensors "
                     "(the other encoder, predictor)")
        sd, hint = kept, "mocov3"
    if any(k.startswith("backbone.") for k in sd):
        dropped = [k for k in sd if not k.startswith("backbone.")]
        if dropped:
            notes.append(f"ignored {len(dropped)} tensors outside the backbone (e.g. {dropped[0]})")
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    heads = [k for k in sd if k.startswith(("head.mlp", "head.last_layer", "head.0.", "head.1.", "head.2.",
                                            "head.3.", "head.4.", "head.5.", "head.6.", "head.7.", "head.8."))]
    if heads:
        notes.append(f"ignored the projection head ({len(heads)} tensors)")
        sd = {k: v for k, v in sd.items() if k not in heads}
    if "masked_embed" in sd:  # iBOT's mask token
        sd = dict(sd)
        sd.pop("masked_embed")
        notes.append("ignored iBOT's masked_embed")
        hint = hint or "ibot"
    if "register_tokens" in sd:  # DINOv2 naming
        sd = dict(sd)
        sd["reg_token"] = sd.pop("register_tokens")
    if "mask_token" in sd and sd["mask_token"].ndim == 2 and "decoder_embed.weight" not in sd:
        sd = {k: v for k, v in sd.items() if k != "mask_token"}  # DINOv2's iBOT mask token
        notes.append("ignored the iBOT mask_token")
    if any(re.match(r"blocks\.\d+\.mlp\.w12\.", k) for k in sd):  # DINOv2 ViT-g packed SwiGLU
        sd = {re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)): v
              for k, v in sd.items()}
    return sd, notes, hint


def read_npz_vit(path: Path, arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Google's JAX ViT ``.npz`` -> timm names, through timm's own ``_load_weights`` into a timm
    ``VisionTransformer`` whose shape is read from the arrays (the head count from the query kernel)."""
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise CheckpointError(path, f"a .npz without a ViT patch embedding (embedding/kernel); expected {EXPECTED}")
    kernel = arrays[f"{prefix}embedding/kernel"]  # [p, p, C, D]
    p, C, D = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    block = re.compile(rf"{re.escape(prefix)}Transformer/encoderblock_(\d+)/")
    depth = len({m.group(1) for k in arrays if (m := block.match(k))})
    block = f"{prefix}Transformer/encoderblock_0/"
    heads = arrays[f"{block}MultiHeadDotProductAttention_1/query/kernel"].shape[1]
    hidden = arrays[f"{block}MlpBlock_3/Dense_0/kernel"].shape[1]
    pos = arrays[f"{prefix}Transformer/posembed_input/pos_embedding"]  # [1, N, D]
    class_token = f"{prefix}cls" in arrays
    grid = math.isqrt(pos.shape[1] - int(class_token))
    num_classes = arrays[f"{prefix}head/kernel"].shape[1] if f"{prefix}head/kernel" in arrays else 0
    model = VisionTransformer(img_size=grid * p, patch_size=p, in_chans=C, embed_dim=D, depth=depth,
                              num_heads=heads, mlp_ratio=hidden / D, class_token=class_token,
                              global_pool="token" if class_token else "avg", num_classes=num_classes,
                              fc_norm=False)
    _load_weights(model, str(path), prefix=prefix)
    sd = {k: v for k, v in model.state_dict().items()}
    if not num_classes:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    return sd, {"num_heads": heads, "pos_resample": "timm"}


# --------------------------------------------------------------------------- what a release file holds
# A file is described as an official release only when its contents match the release: the architecture and the
# parameter count read from its weights (every release below is a 224 px ViT; the DINOv2 files hold a 518 px
# position grid), and, where the release's name carries it (DeiT: torch.hub checks the first 8 hex digits of the
# file's SHA-256), the hash. Numbers: facebookresearch/mae models_mae.py (mae_vit_base_patch16_dec512d8b: ViT-B/16
# encoder, 8 decoder blocks 512 wide, 16 x 16 x 3 pixel predictions), dino vision_transformer.py (vit_base /
# vit_small, patch 16, no head), deit models.py (deit_base_patch16_224: ViT-B/16 with a 1000-class head), dinov2
# (vit_base, patch 14, 518 px grid, LayerScale; reg4: 4 register tokens). Parameter counts are the sums of the
# tensors maeprobe loads (MAE's and DINO's fixed position embeddings included; DINOv2's mask token left out).
_VIT_B16 = dict(embed_dim=768, depth=12, patch_size=16, img_size=224, class_token=True, num_reg_tokens=0,
                dist_token=False, decoder_depth=0, num_classes=0)
_MAE_B16 = dict(_VIT_B16, decoder_embed_dim=512, decoder_depth=8)
_DINOV2_B14 = dict(_VIT_B16, patch_size=14, img_size=518)
RELEASES: dict[str, tuple[dict, int, str | None]] = {  # name -> (architecture, parameters, SHA-256 prefix)
    "mae_pretrain_vit_base_full.pth": (_MAE_B16, 111_907_840, None),
    "mae_visualize_vit_base.pth": (_MAE_B16, 111_907_840, None),
    "mae_pretrain_vit_base.pth": (_VIT_B16, 85_798_656, None),
    "dino_vitbase16_pretrain.pth": (_VIT_B16, 85_798_656, None),
    # moco-v3 vits.py vit_base: ViT-B/16, fixed 2-D sin-cos position embedding (stored), projection head dropped
    "vit-b-300ep.pth.tar": (_VIT_B16, 85_798_656, None),
    "timm/vit_base_patch16_224.dino": (_VIT_B16, 85_798_656, None),
    "dino_deitsmall16_pretrain.pth": (dict(_VIT_B16, embed_dim=384), 21_665_664, None),
    "timm/vit_small_patch16_224.dino": (dict(_VIT_B16, embed_dim=384), 21_665_664, None),
    "deit_base_patch16_224-b5f2ef4d.pth": (dict(_VIT_B16, num_classes=1000), 86_567_656, "b5f2ef4d"),
    "timm/deit_base_patch16_224.fb_in1k": (dict(_VIT_B16, num_classes=1000), 86_567_656, None),
    "dinov2_vitb14_pretrain.pth": (_DINOV2_B14, 86_579_712, None),
    "dinov2_vitb14_reg4_pretrain.pth": (dict(_DINOV2_B14, num_reg_tokens=4), 86_582_784, None),
}


def _shape_text(arch: dict, params: int) -> str:
    text = (f"width {arch['embed_dim']}, {arch['depth']} blocks, patch {arch['patch_size']} at {arch['img_size']} px, "
            f"{params:,} parameters")
    if arch.get("decoder_depth"):
        text += f", decoder of {arch['decoder_depth']} blocks {arch.get('decoder_embed_dim')} wide"
    return text


def release_mismatch(name: str, model, sha256: str | None = None) -> str | None:
    """Why the model loaded from a file named like release ``name`` is not that release, or None when its contents
    match (``RELEASES``: architecture, parameter count and, where the name carries it, the SHA-256 prefix;
    ``sha256``: the file's hex digest). A name maeprobe knows no contents of is reported as unchecked."""
    if name not in RELEASES:
        return "maeprobe knows no contents of a release of this name to check it against"
    expected, params, prefix = RELEASES[name]
    cfg = model.config
    found = {key: getattr(cfg, key, None) for key in expected}
    found["decoder_depth"] = found.get("decoder_depth") or 0
    found["num_classes"] = found.get("num_classes") or 0
    count = sum(p.numel() for p in model.parameters())
    if found != expected or count != params:
        return f"it holds {_shape_text(found, count)}; the release has {_shape_text(expected, params)}"
    if prefix is not None and (sha256 is None or not sha256.startswith(prefix)):
        return f"its SHA-256 starts with {(sha256 or '?')[:8]}, the release's with {prefix}"
    family = RELEASE_FAMILIES.get(name)
    found_family = getattr(getattr(model, "checkpoint", None), "family", None)
    if family is not None and found_family != family:  # e.g. DINO's file (same shapes) under MoCo v3's name
        return f"it is laid out as {found_family or 'an unknown family'}, the release as {family}"
    return None


# Releases whose shapes another family shares (MoCo v3's ViT-B/16 has DINO's parameter count): the family the
# file's own layout must show (MoCo v3: main_moco.py's ``module.base_encoder.*`` keys)
RELEASE_FAMILIES = {"vit-b-300ep.pth.tar": "mocov3"}
