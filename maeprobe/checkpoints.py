"""Read checkpoints safely, detect their format, map their keys to the official MAE names, load.

Supported (detected from the file, never from its name alone):

* facebookresearch/mae: ``{'model': sd}`` encoder-only and full (with decoder) releases, training
  checkpoints ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``; keys must match strictly.
* timm-keyed state dicts (``.pth``/``.bin``) and ``.safetensors`` files, DeiT (``dist_token``), models with
  register tokens (timm ``reg_token``, DINOv2 ``register_tokens``).
* DINO: raw backbone dicts and training checkpoints with ``teacher``/``student`` and ``module.``/``backbone.``
  prefixes (the DINO projection head is ignored).
* HuggingFace ViTMAE / ViT folders (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) in the
  transformers 4.x / hub layout (``decoder.decoder_layers.N``), the transformers 5.x ``save_pretrained``
  layout (``decoder.decoder_encoder.layer.N``) and 5.x module names (``layers.N.attention.q_proj``).

Pickles are untrusted: they load with ``torch.load(weights_only=True)`` and an allow-list holding only
``argparse.Namespace`` and numpy scalar types (found in real training checkpoints).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, MaeprobeError
from .models import registry
from .models.mae import ArchConfig, MaskedAutoencoderViT

_EXPECTED = ("a ViT/MAE checkpoint: a PyTorch .pth/.pt/.bin file, a .safetensors file, "
             "or a HuggingFace folder with config.json")


def _safe_globals() -> list:
    allowed: list = [argparse.Namespace, np.dtype]
    try:  # numpy scalars are pickled through this reconstructor
        allowed.append(np._core.multiarray.scalar)  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        allowed.append(np.core.multiarray.scalar)
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


SAFE_GLOBALS = _safe_globals()


@dataclass
class RawCheckpoint:
    """A state dict in canonical (official MAE / timm) key names, with what was learned about it."""

    path: str
    state_dict: dict[str, torch.Tensor]
    format: str
    meta: dict = field(default_factory=dict)  # num_heads, decoder_num_heads, norm_eps, mean, std, ...
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckpointInfo:
    """Attached to a loaded model as ``model.checkpoint``."""

    path: str
    format: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    notes: list[str]
    pretrain_mask_ratio: float | None = None  # from the training args, when the file has them

    @property
    def name(self) -> str:
        return Path(self.path).name


# --------------------------------------------------------------------------- reading files
def _torch_load(path: Path):
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global|GLOBAL|global)[:\s]+([\w.]+(?:\.[\w]+)*)", str(exc))
        what = found.group(1) if found else "a Python object"
        if "weights_only" in str(exc) or found:
            raise CheckpointError(path, f"refused to load: the pickle asks for `{what}`, which is not on "
                                        "maeprobe's allow-list; checkpoints must hold only tensors and plain "
                                        "containers (untrusted pickles never run code here)") from None
        raise CheckpointError(path, f"corrupt pickle ({exc}); expected {_EXPECTED}") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, IndexError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"truncated or corrupt PyTorch file ({first}); expected {_EXPECTED}") from None


def read_pickle(path: str | os.PathLike):
    """``torch.load(weights_only=True)`` with maeprobe's allow-list; CheckpointError on anything else."""
    return _torch_load(Path(path))


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"truncated or corrupt safetensors file ({exc}); expected {_EXPECTED}") from None
    meta = {}
    if "maeprobe" in metadata:
        try:
            meta = json.loads(metadata["maeprobe"])
        except json.JSONDecodeError:
            pass
    return tensors, meta


def _sniff(path: Path) -> str:
    """'zip' (torch.save), 'pickle' (legacy torch.save), 'safetensors' or 'unknown', from the bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _read_hf_folder(path: Path) -> RawCheckpoint:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(path, f"folder has no config.json; expected {_EXPECTED}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(config_file, f"invalid JSON ({exc})") from None
    if (path / "model.safetensors").is_file():
        tensors, _ = _read_safetensors(path / "model.safetensors")
    elif (path / "pytorch_model.bin").is_file():
        tensors = _torch_load(path / "pytorch_model.bin")
    else:
        raise CheckpointError(path, "HuggingFace folder without model.safetensors or pytorch_model.bin")
    model_type = config.get("model_type", "?")
    if model_type not in ("vit_mae", "vit"):
        raise CheckpointError(path, f"HuggingFace model_type {model_type!r} is not supported "
                                    "(expected 'vit_mae' or 'vit')")
    meta = {
        "num_heads": config.get("num_attention_heads"),
        "decoder_num_heads": config.get("decoder_num_attention_heads"),
        "norm_eps": config.get("layer_norm_eps", 1e-12),
        "norm_pix_loss": config.get("norm_pix_loss", False),
    }
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(path, f"hidden_act {config['hidden_act']!r} is not supported (expected 'gelu')")
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        pconf = json.loads(pre.read_text())
        if "image_mean" in pconf and "image_std" in pconf:
            meta["mean"], meta["std"] = tuple(pconf["image_mean"]), tuple(pconf["image_std"])
    sd, notes = _from_hf_keys(tensors)
    layout = "transformers 5.x" if any(".decoder_encoder." in k or k.startswith(("vit.layers.", "layers."))
                                       for k in tensors) else "transformers 4.x / hub"
    return RawCheckpoint(str(path), sd, f"HuggingFace {model_type} folder ({layout} layout)", meta, notes)


# --------------------------------------------------------------------------- key mapping
_HF_BLOCK = re.compile(
    r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.(.+)$"
    r"|^decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.(.+)$"
)
_HF_BLOCK_PARTS = {  # HF sub-module -> timm Block sub-module ('q'/'k'/'v' are fused into attn.qkv)
    "attention.attention.query": "q", "attention.q_proj": "q",
    "attention.attention.key": "k", "attention.k_proj": "k",
    "attention.attention.value": "v", "attention.v_proj": "v",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2", "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1", "layernorm_after": "norm2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "decoder.decoder_embed.weight": "decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_norm.weight": "decoder_norm.weight",
    "decoder.decoder_norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def _from_hf_keys(tensors: dict) -> tuple[dict, list[str]]:
    """HuggingFace ViTMAE / ViT names -> official MAE names (q, k, v fused into qkv)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    notes = []
    for key, value in tensors.items():
        block = _HF_BLOCK.match(key)
        if block:
            idx, rest = (block.group(1), block.group(2)) if block.group(1) else (block.group(3), block.group(4))
            stem = "blocks" if block.group(1) else "decoder_blocks"
            part, _, leaf = rest.rpartition(".")
            target = _HF_BLOCK_PARTS.get(part)
            if target in ("q", "k", "v"):
                qkv.setdefault((f"{stem}.{idx}.attn.qkv.{leaf}", leaf), {})[target] = value
            elif target is not None:
                out[f"{stem}.{idx}.{target}.{leaf}"] = value
            else:
                out[key] = value  # unknown: reported by the strict load
            continue
        bare = key[4:] if key.startswith("vit.") else key
        if bare.startswith("pooler.") or bare == "embeddings.mask_token":
            notes.append(f"ignored {key} (not part of the encoder)")
            continue
        out[_HF_TOP.get(bare, key)] = value
    for (name, _), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise MaeprobeError(f"incomplete query/key/value set for {name}")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out, notes


def _strip_prefixes(sd: dict) -> tuple[dict, list[str]]:
    """Remove DDP ``module.`` and DINO ``backbone.`` prefixes; drop the DINO projection head."""
    notes = []
    for prefix in ("module.", "_orig_mod.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):
        dropped = [k for k in sd if not k.startswith("backbone.")]
        if dropped:
            notes.append(f"ignored {len(dropped)} tensors outside the backbone (e.g. {dropped[0]})")
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    dino_head = [k for k in sd if k.startswith(("head.mlp.", "head.last_layer."))]
    if dino_head:
        notes.append(f"ignored the DINO projection head ({len(dino_head)} tensors)")
        sd = {k: v for k, v in sd.items() if k not in dino_head}
    if "register_tokens" in sd:  # DINOv2 naming
        sd["reg_token"] = sd.pop("register_tokens")
    if "mask_token" in sd and sd["mask_token"].ndim == 2 and "decoder_embed.weight" not in sd:
        sd.pop("mask_token")  # DINOv2's iBOT mask token: not used at inference
        notes.append("ignored the iBOT mask_token")
    return sd, notes


def _unwrap(obj, path: Path, prefer: str) -> tuple[dict, str, dict, list[str]]:
    """Find the model's state dict inside a checkpoint container."""
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict; expected {_EXPECTED}")
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


def read_checkpoint(path: str | os.PathLike, *, prefer: str = "teacher") -> RawCheckpoint:
    """Read any supported checkpoint into canonical key names. Raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, f"no such file or folder; expected {_EXPECTED}")
    if path.is_dir():
        raw = _read_hf_folder(path)
    else:
        kind = _sniff(path)
        if kind == "unknown":
            raise CheckpointError(path, f"unrecognised file content; expected {_EXPECTED}")
        if kind == "safetensors":
            tensors, meta = _read_safetensors(path)
            container, notes = "safetensors", []
        else:
            obj = _torch_load(path)
            tensors, container, meta, notes = _unwrap(obj, path, prefer)
        tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
        if any("embeddings.patch_embeddings.projection.weight" in k for k in tensors):
            tensors, hf_notes = _from_hf_keys(tensors)
            notes += hf_notes
            container += " (HuggingFace keys)"
        tensors, strip_notes = _strip_prefixes(tensors)
        raw = RawCheckpoint(str(path), tensors, container, meta, notes + strip_notes)
    _check_is_vit(raw)
    raw.format = _describe(raw)
    return raw


def _check_is_vit(raw: RawCheckpoint) -> None:
    sd = raw.state_dict
    if not sd:
        raise CheckpointError(raw.path, f"contains no tensors; expected {_EXPECTED}")
    needed = ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "pos_embed")
    if not all(k in sd for k in needed):
        sample = ", ".join(list(sd)[:3])
        raise CheckpointError(raw.path, f"not a ViT/MAE checkpoint: its {len(sd)} tensors are named like "
                                        f"{sample}, ... (expected {', '.join(needed)})")


def _describe(raw: RawCheckpoint) -> str:
    sd = raw.state_dict
    if raw.format.startswith("HuggingFace"):
        return raw.format
    if "decoder_embed.weight" in sd:
        family = "MAE (encoder + decoder)"
    elif raw.format.startswith("DINO"):
        family = "DINO"
    elif "dist_token" in sd:
        family = "DeiT (distilled)"
    elif "reg_token" in sd:
        family = "ViT with register tokens"
    else:
        family = "ViT encoder (MAE encoder-only / timm / DINO / DeiT keys)"
    return f"{family}, {raw.format}"


# --------------------------------------------------------------------------- architecture
def _count(sd: dict, stem: str) -> int:
    indices = {int(m.group(1)) for k in sd if (m := re.match(rf"^{stem}\.(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def infer_config(raw: RawCheckpoint, *, num_heads: int | None = None,
                 decoder_num_heads: int | None = None) -> ArchConfig:
    """Read the architecture from the weights; head counts come from flags, metadata or known releases."""
    sd, meta = raw.state_dict, raw.meta
    proj = sd["patch_embed.proj.weight"]  # [D, C, p, p]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise CheckpointError(raw.path, f"patch_embed.proj.weight has shape {tuple(proj.shape)}; "
                                        "expected [width, channels, p, p]")
    D, C, p = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = _count(sd, "blocks")
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    class_token, dist_token = "cls_token" in sd, "dist_token" in sd
    num_reg = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    num_prefix = int(class_token) + int(dist_token) + num_reg
    pos_len = sd["pos_embed"].shape[1]
    grid = num_pos_prefix = None
    for candidate in dict.fromkeys((num_prefix, int(class_token), 0)):
        side = math.isqrt(max(pos_len - candidate, 0))
        if side > 0 and side * side == pos_len - candidate:
            grid, num_pos_prefix = side, candidate
            break
    if grid is None:
        raise CheckpointError(raw.path, f"pos_embed has {pos_len} positions, which is not a square patch grid "
                                        f"plus {num_prefix} prefix tokens")

    heads = num_heads or meta.get("num_heads") or registry.encoder_heads(D)
    if not heads:
        raise CheckpointError(raw.path, f"the number of attention heads is not stored in the weights and a "
                                        f"{D}-wide encoder is not a known release; pass --num-heads N "
                                        f"(num_heads=N in Python)")
    if D % heads:
        raise CheckpointError(raw.path, f"width {D} is not divisible by {heads} heads")
    cfg = dict(
        img_size=grid * p, patch_size=p, in_chans=C, embed_dim=D, depth=depth, num_heads=int(heads),
        mlp_ratio=hidden / D, qkv_bias="blocks.0.attn.qkv.bias" in sd,
        norm_eps=float(meta.get("norm_eps", 1e-6)),
        init_values=1.0 if "blocks.0.ls1.gamma" in sd else None,
        class_token=class_token, dist_token=dist_token, num_reg_tokens=num_reg,
        num_pos_prefix=num_pos_prefix, final_norm="norm.weight" in sd, fc_norm="fc_norm.weight" in sd,
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        norm_pix_loss=bool(meta.get("norm_pix_loss", False)),
    )
    if "decoder_embed.weight" in sd:
        Dd = sd["decoder_embed.weight"].shape[0]
        dheads = decoder_num_heads or meta.get("decoder_num_heads") or registry.decoder_heads(Dd)
        attention_decoder = "decoder_blocks.0.attn.qkv.weight" in sd
        if attention_decoder and not dheads:
            raise CheckpointError(raw.path, f"the number of decoder heads is not stored in the weights and a "
                                            f"{Dd}-wide MAE decoder is not a known release; pass "
                                            f"--decoder-num-heads N (decoder_num_heads=N in Python)")
        pred_out = sd["decoder_pred.weight"].shape[0]
        k = math.isqrt(pred_out // C)
        cfg.update(decoder_embed_dim=Dd, pred_size=k if k != p else None)
        if "decoder_conv.weight" in sd:
            cfg.update(decoder_type="conv")
        elif "decoder_mlp.fc1.weight" in sd:
            cfg.update(decoder_type="gaussian", decoder_mlp_ratio=sd["decoder_mlp.fc1.weight"].shape[0] / Dd)
        else:
            cfg.update(decoder_depth=_count(sd, "decoder_blocks"), decoder_num_heads=int(dheads),
                       decoder_mlp_ratio=sd["decoder_blocks.0.mlp.fc1.weight"].shape[0] / Dd)
    return ArchConfig(**cfg)


# --------------------------------------------------------------------------- load / save
def load(path: str | os.PathLike, *, num_heads: int | None = None, decoder_num_heads: int | None = None,
         prefer: str = "teacher", device: str | torch.device = "cpu") -> MaskedAutoencoderViT:
    """Load any supported ViT/MAE checkpoint into a ``MaskedAutoencoderViT`` (eval mode).

    Args:
        path: checkpoint file or HuggingFace folder.
        num_heads: encoder heads, when the checkpoint is not a known release.
        decoder_num_heads: decoder heads, when the decoder is not a known release.
        prefer: for DINO training checkpoints, ``'teacher'`` (default) or ``'student'``.
        device: where the model goes.

    Returns:
        The model, with ``model.checkpoint`` (a CheckpointInfo: path, format, mean/std, notes).
    """
    raw = read_checkpoint(path, prefer=prefer)
    cfg = infer_config(raw, num_heads=num_heads, decoder_num_heads=decoder_num_heads)
    with torch.device("meta"):  # no time spent initialising weights that are overwritten
        model = MaskedAutoencoderViT(cfg)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in raw.state_dict.items()}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:4])}"
                         f"{', ...' if len(unexpected) > 4 else ''})")
        raise CheckpointError(path, "keys do not match a ViT/MAE model: " + "; ".join(parts))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split("\n\t")[1:2]).strip() or str(exc)
        raise CheckpointError(path, f"tensor shapes do not fit a ViT/MAE model ({detail})") from None
    mean = tuple(raw.meta.get("mean", registry.IMAGENET_MEAN))
    std = tuple(raw.meta.get("std", registry.IMAGENET_STD))
    model.checkpoint = CheckpointInfo(str(path), raw.format, mean, std, raw.notes,
                                      raw.meta.get("pretrain_mask_ratio"))
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
    from .distributed import is_main
    from .io import atomic_path

    path = Path(path)
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
