"""``load()``: the one entry point. Read (``files``), unwrap (``hf``, ``originals``), recognise the family's
layout and map its keys (the ``families.LAYOUTS`` list, first match), take what the weights cannot say from
the family (``families``), resample to another input size and build strictly (``models.factory``).
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError, MaeprobeError
from ..limits import check as check_limit
from ..models import registry
from ..models.factory import MAX_WEIGHT, build, resize, resized  # noqa: F401  (resize, MAX_WEIGHT: re-exported)
from ..models.mae import ArchConfig, MaskedAutoencoderViT
from . import hf, originals
from .families import FAMILIES, detect
from .files import (
    EXPECTED,
    check_storage,
    memory_error,
    out_of_memory,
    read_json,
    read_npz,
    read_safetensors,
    refuse_code,
    refuse_pickle,
    sniff,
    torch_load,
)
from .meta import clean_meta


@dataclass
class RawCheckpoint:
    """A state dict in canonical (official MAE / timm) key names, with what was learned about it."""

    path: str
    state_dict: dict[str, torch.Tensor]
    format: str
    meta: dict = field(default_factory=dict)  # num_heads, decoder_num_heads, norm_eps, mean, std, ...
    notes: list[str] = field(default_factory=list)
    family: str = "vit"


@dataclass
class CheckpointInfo:
    """Attached to a loaded model as ``model.checkpoint``."""

    path: str
    format: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    notes: list[str]
    pretrain_mask_ratio: float | None = None  # from the training args, when the file has them
    family: str = "vit"
    pos_resample: str = "timm"  # how the position embedding is resampled for another input size
    rel_pos_resample: str = "timm"  # the same for BEiT's relative position bias tables
    decoder_img_size: int | None = None  # the checkpoint's own input size when img_size= left its MAE decoder out

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def family_label(self) -> str:
        return FAMILIES[self.family].label if self.family in FAMILIES else self.family


# --------------------------------------------------------------------------- reading
def _user_path(path, what: str) -> Path:
    """``path`` (a str or os.PathLike) as a Path; anything else is one ``MaeprobeError``."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise MaeprobeError(f"{what}: expected a file path (str or pathlib.Path), got {type(path).__name__} "
                            f"{path!r:.60}")
    return Path(path)


def read_checkpoint(path: str | os.PathLike, *, prefer: str = "teacher") -> RawCheckpoint:
    """Read any supported checkpoint into canonical key names and name its family. Raises CheckpointError."""
    path = _user_path(path, "read_checkpoint")
    try:  # an over-long name or path (ENAMETOOLONG), a link loop, a folder without search permission
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(path, f"no such file or folder; expected {EXPECTED}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise CheckpointError(path, f"cannot read it ({getattr(exc, 'strerror', None) or exc}); expected "
                                    f"{EXPECTED}") from None
    if is_dir and (weights := _timm_folder(path)) is not None:
        raw = _read_file(weights, prefer, path / "config.json")
    elif is_dir:
        sd, fam, fmt, meta, notes = hf.read_folder(path)
        raw = RawCheckpoint(str(path), sd, fmt, meta, notes, fam)
    else:
        raw = _read_file(path, prefer, path.parent / "config.json" if _in_hub_snapshot(path) else None)
    raw.meta = clean_meta(raw.meta, path)
    if raw.family not in FAMILIES:
        raise CheckpointError(path, f"unknown model family {raw.family!r}")
    _check_is_vit(raw)
    raw.format = _describe(raw)
    return raw


_TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                 "open_clip_pytorch_model.bin")


def _timm_folder(path: Path) -> Path | None:
    """The weights file of a timm hub repository folder (``config.json`` with ``architecture`` and no
    ``model_type``, beside the weights), or None for any other folder."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    config = read_json(config_file, "config.json")
    if "architecture" not in config or "model_type" in config:
        return None
    weights = next((path / n for n in _TIMM_WEIGHTS if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(path, f"a timm folder without weights; expected one of {', '.join(_TIMM_WEIGHTS)}")
    return weights


def _read_file(path: Path, prefer: str, timm_config: Path | None = None) -> RawCheckpoint:
    kind = sniff(path)
    refuse_code(path, kind)
    if kind == "unknown":
        refuse_pickle(path)  # a protocol 0/1 pickle (no magic bytes) that asks for a callable is named as such
        raise CheckpointError(path, f"unrecognised file content; expected {EXPECTED}")
    if kind == "npz":
        sd, meta = originals.read_npz_vit(path, read_npz(path))
        return RawCheckpoint(str(path), sd, "JAX .npz", meta, [], "vit")
    if kind == "safetensors":
        tensors, meta = read_safetensors(path)
        container, notes = "safetensors", []
    else:
        tensors, container, meta, notes = originals.unwrap(torch_load(path), path, prefer)
    if not isinstance(tensors, dict):
        raise CheckpointError(path, f"its state dict is a {type(tensors).__name__}; expected a dict of tensors")
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    check_storage(tensors, path)
    odd = next((k for k in tensors if not isinstance(k, str)), None)
    if odd is not None:
        raise CheckpointError(path, f"a tensor is stored under the key {odd!r} ({type(odd).__name__}); expected "
                                    "parameter names (strings)")
    named = meta.get("family") if isinstance(meta.get("family"), str) else None
    if hf.looks_like_hf(tensors):
        tensors, hf_notes = hf.from_hf_keys(tensors)
        notes = notes + hf_notes
        container += " (HuggingFace keys)"
        meta.setdefault("pos_resample", "size")
    tensors, strip_notes, hint = originals.strip_prefixes(tensors, prefer)
    notes = notes + strip_notes
    layout = detect(tensors, container)
    tensors, layout_notes = layout.convert(tensors)
    notes = notes + layout_notes
    for key, value in layout.meta.items():
        meta.setdefault(key, value)
    container += layout.container
    family = layout.family_name(named, hint)
    if timm_config is not None:
        _timm_pretrained_cfg(timm_config, meta)
    return RawCheckpoint(str(path), tensors, container, meta, notes, family)


def _in_hub_snapshot(path: Path) -> bool:
    """True for a weights file of a HuggingFace hub cache snapshot (``models--org--name/snapshots/<rev>/file``),
    the only place where a ``config.json`` beside the weights belongs to them (timm's hub layout)."""
    parts = path.absolute().parts
    return len(parts) >= 4 and parts[-3] == "snapshots" and parts[-4].startswith("models--")


def _timm_pretrained_cfg(config_file: Path, meta: dict) -> None:
    """A timm repository keeps ``config.json`` beside the weights: its ``pretrained_cfg`` holds the mean/std
    (e.g. 0.5 for CLIP-derived models) and ``model_args`` may hold the head count. Read only when the user named
    the folder, or a model name whose hub cache snapshot holds it (never a file the user did not name), and only
    as data (``meta.clean_meta``)."""
    if not config_file.is_file():
        return
    config = read_json(config_file, "timm config.json")
    if "architecture" not in config:
        return
    meta.setdefault("timm_architecture", config["architecture"])
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise CheckpointError(config_file, f"model_args is a {type(model_args).__name__}; expected a JSON object")
    meta.setdefault("timm_model_args", model_args)
    pretrained = config.get("pretrained_cfg") or {}
    if not isinstance(pretrained, dict):
        raise CheckpointError(config_file, f"pretrained_cfg is a {type(pretrained).__name__}; expected a JSON object")
    if "mean" in pretrained and "std" in pretrained:
        meta.setdefault("mean", pretrained["mean"])
        meta.setdefault("std", pretrained["std"])
    if "num_heads" in model_args:
        meta.setdefault("num_heads", model_args["num_heads"])


def _check_is_vit(raw: RawCheckpoint) -> None:
    sd = raw.state_dict
    if not sd:
        raise CheckpointError(raw.path, f"contains no tensors; expected {EXPECTED}")
    needed = ("patch_embed.proj.weight",
              "blocks.0.attn.q_proj.weight" if raw.family == "eva" and "blocks.0.attn.q_proj.weight" in sd
              else "blocks.0.attn.qkv.weight")
    if not all(k in sd for k in needed) or ("pos_embed" not in sd and FAMILIES[raw.family].builder == "vit"):
        sample = ", ".join(list(sd)[:3])
        raise CheckpointError(raw.path, f"not a ViT/MAE checkpoint: its {len(sd)} tensors are named like "
                                        f"{sample}, ... (expected {', '.join(needed)}, pos_embed)")


def _describe(raw: RawCheckpoint) -> str:
    if raw.format.startswith("HuggingFace"):
        return raw.format
    return f"{FAMILIES[raw.family].describe(raw.state_dict)}, {raw.format}"


# --------------------------------------------------------------------------- architecture
def _count(sd: dict, stem: str, path="checkpoint") -> int:
    """Number of blocks ``stem.0`` ... ``stem.N-1``: every index present, at most ``MAEPROBE_MAX_DEPTH``
    (checked from the key names, before anything is built)."""
    indices = {int(m.group(1)) for k in sd if (m := re.match(rf"^{stem}\.(\d{{1,12}})\.", k))}
    if not indices:
        return 0
    check_limit("MAEPROBE_MAX_DEPTH", max(indices) + 1, f"{path}: {stem} up to index {max(indices)}")
    missing = sorted(set(range(max(indices) + 1)) - indices)
    if missing:
        raise CheckpointError(path, f"{stem}.{missing[0]} is missing ({len(missing)} of {max(indices) + 1} blocks "
                                    f"absent); expected {stem}.0 ... {stem}.{max(indices)}")
    return max(indices) + 1


def _tensor(sd: dict, key: str, ndim: int, path) -> torch.Tensor:
    """``sd[key]`` with ``ndim`` dimensions, none of them empty; CheckpointError otherwise."""
    value = sd.get(key)
    if value is None:
        raise CheckpointError(path, f"{key} is missing; expected {EXPECTED}")
    if value.ndim != ndim or 0 in value.shape:
        raise CheckpointError(path, f"{key} has shape {tuple(value.shape)}; expected {ndim} non-empty dimensions")
    return value


def infer_config(raw: RawCheckpoint, *, num_heads: int | None = None,
                 decoder_num_heads: int | None = None) -> ArchConfig:
    """Read the architecture from the weights; head counts come from flags, metadata or known releases."""
    sd, meta, path = raw.state_dict, raw.meta, raw.path
    num_heads = _user_heads("--num-heads", num_heads)
    decoder_num_heads = _user_heads("--decoder-num-heads", decoder_num_heads)
    proj = sd["patch_embed.proj.weight"]  # [D, C, p, p]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3] or 0 in proj.shape:
        raise CheckpointError(raw.path, f"patch_embed.proj.weight has shape {tuple(proj.shape)}; "
                                        "expected [width, channels, p, p] with p >= 1")
    D, C, p = proj.shape[0], proj.shape[1], proj.shape[2]
    if C not in (1, 3, 4):
        raise CheckpointError(path, f"the patch embedding takes {C} input channels; expected 3 (RGB)")
    depth = _count(sd, "blocks", path)
    if "blocks.0.mlp.fc1_g.weight" in sd:  # timm SwiGLU with separate gate and value (EVA-02 with scale_mlp)
        hidden, swiglu = _tensor(sd, "blocks.0.mlp.fc1_g.weight", 2, path).shape[0], True
    else:
        hidden = _tensor(sd, "blocks.0.mlp.fc1.weight", 2, path).shape[0]
        swiglu = _tensor(sd, "blocks.0.mlp.fc2.weight", 2, path).shape[1] * 2 == hidden
    class_token, dist_token = "cls_token" in sd, "dist_token" in sd
    for key in ("cls_token", "dist_token", "reg_token", "pos_embed"):
        if key in sd and (sd[key].ndim != 3 or sd[key].shape[0] != 1 or sd[key].shape[2] != D):
            raise CheckpointError(path, f"{key} has shape {tuple(sd[key].shape)}; expected [1, tokens, {D}]")
    num_reg = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    num_prefix = int(class_token) + int(dist_token) + num_reg
    beit = FAMILIES[raw.family].builder == "beit"
    grid = num_pos_prefix = None
    if "pos_embed" in sd:
        pos_len = sd["pos_embed"].shape[1]
        for candidate in dict.fromkeys((num_prefix, int(class_token), 0)):
            side = math.isqrt(max(pos_len - candidate, 0))
            if side > 0 and side * side == pos_len - candidate:
                grid, num_pos_prefix = side, candidate
                break
        if grid is None:
            raise CheckpointError(raw.path, f"pos_embed has {pos_len} positions, which is not a square patch "
                                            f"grid plus {num_prefix} prefix tokens")
    else:  # BEiT without absolute positions: the grid from the relative position bias table
        table = sd.get("blocks.0.attn.relative_position_bias_table",
                       sd.get("rel_pos_bias.relative_position_bias_table"))
        if table is None:
            raise CheckpointError(raw.path, "no position embedding and no relative position bias")
        side = math.isqrt(max(table.shape[0] - 3, 0)) if table.ndim == 2 else 0
        if side < 1 or side * side != table.shape[0] - 3 or side % 2 == 0:
            raise CheckpointError(path, f"relative_position_bias_table has shape {tuple(table.shape)}; expected "
                                        "[(2 grid - 1)^2 + 3, heads]")
        grid = (side + 1) // 2
    check_limit("MAEPROBE_MAX_PATCHES", grid * grid, f"{path}: a {grid}x{grid} patch grid")

    heads = num_heads or meta.get("num_heads") or registry.encoder_heads(D)
    if not depth:
        raise CheckpointError(path, "no transformer blocks (blocks.0 ...); expected a ViT encoder")
    if not heads:
        raise CheckpointError(raw.path, f"the number of attention heads is not stored in the weights and a "
                                        f"{D}-wide encoder is not a known release; pass --num-heads N "
                                        f"(num_heads=N in Python)")
    if D % heads:
        raise CheckpointError(raw.path, f"width {D} is not divisible by {heads} heads; pass the right --num-heads")
    if FAMILIES[raw.family].builder == "eva" and swiglu and (D // heads) % 2:
        raise CheckpointError(path, f"{heads} heads of width {D // heads}: EVA-02's rotary embedding needs an even "
                                    "head width; pass the right --num-heads")
    cfg = dict(
        img_size=grid * p, patch_size=p, in_chans=C, embed_dim=D, depth=depth, num_heads=int(heads),
        mlp_ratio=hidden / D,  # SwiGLU: fc1 holds both halves, as timm's SwiGLUPacked
        qkv_bias=any(f"blocks.0.attn.{k}" in sd for k in ("qkv.bias", "q_bias", "q_proj.bias")),
        norm_eps=float(meta.get("norm_eps", 1e-6)),
        init_values=1.0 if ("blocks.0.ls1.gamma" in sd or "blocks.0.gamma_1" in sd) else None,
        act_layer=meta.get("act_layer", "gelu"), pre_norm="norm_pre.weight" in sd,
        patch_bias="patch_embed.proj.bias" in sd, mlp_layer="swiglu" if swiglu else "mlp",
        class_token=class_token, dist_token=dist_token, num_reg_tokens=num_reg,
        num_pos_prefix=num_pos_prefix, final_norm="norm.weight" in sd, fc_norm="fc_norm.weight" in sd,
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        norm_pix_loss=bool(meta.get("norm_pix_loss", False)),
    )
    if beit:
        cfg["extra"] = {"family": FAMILIES[raw.family].label, "abs_pos_emb": "pos_embed" in sd,
                        "rel_pos_bias": "blocks.0.attn.relative_position_bias_table" in sd,
                        "shared_rel_pos_bias": "rel_pos_bias.relative_position_bias_table" in sd}
    if FAMILIES[raw.family].builder == "eva":
        packed = "blocks.0.mlp.fc1_g.weight" not in sd
        cfg["mlp_ratio"] = hidden / D / (2 if swiglu and packed else 1)
        cfg["extra"] = {"family": "EVA", "qkv_fused": "blocks.0.attn.qkv.weight" in sd, "swiglu": swiglu,
                        "scale_mlp": "blocks.0.mlp.norm.weight" in sd,
                        "scale_attn_inner": "blocks.0.attn.norm.weight" in sd, "abs_pos_emb": "pos_embed" in sd,
                        # EVA-02 (SwiGLU) adds a rotary embedding that no tensor records; its reference grid is
                        # taken as the file's (timm's eva02_*_224 definitions) unless timm's config.json says more
                        "rope": swiglu, "rope_grid": grid,
                        "timm_architecture": meta.get("timm_architecture"),
                        "timm_model_args": meta.get("timm_model_args") or {}}
    if "decoder_embed.weight" in sd:
        Dd = _tensor(sd, "decoder_embed.weight", 2, path).shape[0]
        dheads = decoder_num_heads or meta.get("decoder_num_heads") or registry.decoder_heads(Dd)
        attention_decoder = "decoder_blocks.0.attn.qkv.weight" in sd
        if attention_decoder and not dheads:
            raise CheckpointError(raw.path, f"the number of decoder heads is not stored in the weights and a "
                                            f"{Dd}-wide MAE decoder is not a known release; pass "
                                            f"--decoder-num-heads N (decoder_num_heads=N in Python)")
        pred_out = _tensor(sd, "decoder_pred.weight", 2, path).shape[0]
        k = math.isqrt(pred_out // C)
        if k < 1 or k * k * C != pred_out:
            raise CheckpointError(path, f"decoder_pred.weight has {pred_out} outputs; expected k x k x {C} pixel "
                                        "values per patch")
        if dheads and Dd % int(dheads):
            raise CheckpointError(path, f"decoder width {Dd} is not divisible by {dheads} heads; pass the right "
                                        "--decoder-num-heads")
        cfg.update(decoder_embed_dim=Dd, pred_size=k if k != p else None)
        if "decoder_conv.weight" in sd:
            cfg.update(decoder_type="conv")
        elif "decoder_mlp.fc1.weight" in sd:
            cfg.update(decoder_type="gaussian", decoder_mlp_ratio=sd["decoder_mlp.fc1.weight"].shape[0] / Dd)
        else:
            decoder_depth = _count(sd, "decoder_blocks", path)
            if not decoder_depth:
                raise CheckpointError(path, "an MAE decoder without decoder_blocks.0; expected a full MAE checkpoint")
            cfg.update(decoder_depth=decoder_depth, decoder_num_heads=int(dheads),
                       decoder_mlp_ratio=_tensor(sd, "decoder_blocks.0.mlp.fc1.weight", 2, path).shape[0] / Dd)
    return ArchConfig(**cfg)


def _user_heads(option: str, value):
    """A head count given by the user: None, or a whole number in [1, 1024]."""
    if value is None:
        return None
    from ..validate import integer

    return integer(option, value, 1, 1024)


# Exceptions that a malformed file can raise inside the readers, converters and builders (ours and timm's):
# turned into one line naming the file, never a traceback.
_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError, ZeroDivisionError,
              OverflowError, RecursionError, AssertionError, NotImplementedError, UnicodeError)


# --------------------------------------------------------------------------- load / save
def load(path: str | os.PathLike, *, num_heads: int | None = None, decoder_num_heads: int | None = None,
         prefer: str = "teacher", img_size: int | None = None, device: str | torch.device = "cpu"):
    """Load any supported ViT/MAE checkpoint (eval mode). The format and family are detected from the file.

    Args:
        path: checkpoint file, HuggingFace folder, or a model name (``hf-hub:org/name``, ``timm/name``,
            an official release file name; see ``maeprobe.checkpoints.hub``), resolved from the local caches
            and downloaded only when the network is reachable and offline mode is off.
        num_heads: encoder heads, when the checkpoint is not a known release.
        decoder_num_heads: decoder heads, when the decoder is not a known release.
        prefer: for DINO / iBOT training checkpoints ``'teacher'`` (default) or ``'student'``; for MoCo v3
            ``'momentum'`` keeps the momentum encoder instead of the base encoder.
        img_size: probe at this input size: the position embedding (and BEiT's relative position bias) is
            resampled to the new patch grid as the family's own code does (``checkpoints.resample``).
        device: where the model goes.

    Returns:
        A ``MaskedAutoencoderViT`` (or ``BeitEncoder`` for BEiT / data2vec-vision) with ``model.checkpoint``
        (a CheckpointInfo: path, format, family, mean/std, notes).
    """
    from .hub import resolve

    if prefer not in ("teacher", "student", "momentum", "base"):
        raise MaeprobeError(f"prefer={prefer!r}: expected teacher, student, momentum or base")
    try:
        path = resolve(path)  # inside: the hub caches' places come from environment variables
        return _load(path, num_heads, decoder_num_heads, prefer, img_size, device)
    except MaeprobeError:
        raise
    except (MemoryError, OSError, *_MALFORMED) as exc:
        if out_of_memory(exc):  # an allocation refused under a memory cap: not a malformed file
            raise memory_error(path, exc) from None
        if isinstance(exc, OSError) and exc.filename is not None:  # a file of the checkpoint cannot be read
            raise CheckpointError(exc.filename, f"cannot read it ({exc.strerror or exc}); expected "
                                                f"{EXPECTED}") from None
        if not isinstance(exc, _MALFORMED):
            raise
        from ..validate import first_line

        raise CheckpointError(path, f"malformed checkpoint ({type(exc).__name__}: {first_line(exc)}); "
                                    f"expected {EXPECTED}") from None


def _load(path, num_heads, decoder_num_heads, prefer, img_size, device):
    if img_size is not None:
        from ..validate import integer

        integer("--img-size", img_size, 1, 65536)
    raw = read_checkpoint(path, prefer=prefer)
    cfg = infer_config(raw, num_heads=num_heads, decoder_num_heads=decoder_num_heads)
    family = FAMILIES[raw.family]
    rule = raw.meta.get("pos_resample") or family.pos_resample
    rel_rule = raw.meta.get("rel_pos_resample", "timm")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in raw.state_dict.items()}
    notes = list(raw.notes)
    decoder_img_size = None
    if img_size is not None and img_size != cfg.img_size:
        if cfg.decoder_depth or "decoder_embed.weight" in state:  # ``resized`` leaves the decoder out
            decoder_img_size = cfg.img_size
            notes.append(f"--img-size {img_size}: encoder only; the MAE decoder has a fixed {cfg.grid_size}x"
                         f"{cfg.grid_size} patch grid, so decoder metrics run at the checkpoint's own "
                         f"{cfg.img_size} px (without --img-size)")
        cfg, state = resized(cfg, state, img_size, rule, rel_rule, path)
    model = build(cfg, family.builder, state, path)
    mean = tuple(raw.meta.get("mean", family.mean))
    std = tuple(raw.meta.get("std", family.std))
    model.checkpoint = CheckpointInfo(str(path), raw.format, mean, std, notes,
                                      raw.meta.get("pretrain_mask_ratio"), raw.family, rule, rel_rule,
                                      decoder_img_size)
    return model.to(device).eval()


def normalization(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model's inputs are normalised with: from its checkpoint, ImageNet's by default."""
    info = getattr(model, "checkpoint", None)
    if info is None:
        return registry.IMAGENET_MEAN, registry.IMAGENET_STD
    return tuple(info.mean), tuple(info.std)


def checkpoint_metadata(model: MaskedAutoencoderViT) -> dict:
    """What maeprobe stores beside the weights so that its own checkpoints load without flags."""
    cfg = model.config
    info = getattr(model, "checkpoint", None)
    mean, std = normalization(model)
    return {
        "format_version": 1,
        "num_heads": cfg.num_heads,
        "decoder_num_heads": cfg.decoder_num_heads if cfg.decoder_depth else None,
        "decoder_type": cfg.decoder_type,
        "norm_eps": cfg.norm_eps,
        "norm_pix_loss": cfg.norm_pix_loss,
        "mean": list(mean),
        "std": list(std),
        **({"pretrain_mask_ratio": info.pretrain_mask_ratio} if info and info.pretrain_mask_ratio is not None else {}),
    }


def save_checkpoint(model: MaskedAutoencoderViT, path: str | os.PathLike, **extra) -> Path:
    """Save in facebookresearch/mae's format (``{'model': sd, ...}``) or as ``.safetensors`` by extension.

    The write is atomic (temporary file, then rename); under torch.distributed only the main process writes.
    ``extra`` entries (optimizer, epoch, scaler, args) go into the ``.pth`` dict as in an official training
    checkpoint.
    """
    from ..distributed import is_main
    from ..io import atomic_path

    if not isinstance(model, MaskedAutoencoderViT):
        raise MaeprobeError(f"save_checkpoint: model must be a model from maeprobe.load or build_mae, got "
                            f"{type(model).__name__}")
    path = _user_path(path, "save_checkpoint")
    bad = sorted(k for k in extra if k in ("model", "maeprobe"))
    if bad:
        raise MaeprobeError(f"save_checkpoint: {bad[0]!r} is written by maeprobe itself; pass other extra entries")
    if not is_main():
        return path
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = checkpoint_metadata(model)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={"format": "pt", "maeprobe": json.dumps(meta)})
        else:
            torch.save({"model": state, **extra, "maeprobe": meta}, tmp)
    return path
