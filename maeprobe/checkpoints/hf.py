"""HuggingFace folders (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``) of every ViT family
that self-supervised learning papers compare: ViTMAE, ViT, DeiT, DINOv2 (also with registers), BEiT,
data2vec-vision, CLIP (vision tower or the vision part of a full CLIP) and SigLIP (likewise).

The folder's ``model_type`` names the family. Keys are mapped to timm's names (q, k, v fused into one
``qkv``); both the transformers 4.x / hub layout (``encoder.layer.N.attention.attention.query``) and the 5.x
module names (``layers.N.attention.q_proj``, ``decoder.decoder_encoder.layer.N``) are read. This key map is
the one piece no kept library provides: timm converts original releases, not HuggingFace layouts.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError, MaeprobeError
from .families import FAMILIES, HF_TYPES
from .files import EXPECTED, check_storage, read_json, read_safetensors, torch_load

# model_type -> its family and the defaults HF uses when config.json leaves a field out (declared by each family
# module in ``families/``)
MODEL_TYPES = HF_TYPES
_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh"}
_MODEL_PREFIXES = ("vit.", "deit.", "beit.", "data2vec_vision.", "dinov2.", "vision_model.")

_BLOCK = re.compile(r"^(?:encoder\.layers?|layers)\.(\d+)\.(.+)$"
                    r"|^decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.(.+)$")
_QKV = {  # HF attention input projections -> which third of timm's fused qkv
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
}
_PARTS = {  # HF block sub-modules -> timm Block / Beit Block sub-modules
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj", "self_attn.out_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2",  # DINOv2 ViT-g SwiGLU
    "layernorm_before": "norm1", "layernorm_after": "norm2", "norm1": "norm1", "norm2": "norm2",
    "layer_norm1": "norm1", "layer_norm2": "norm2",
}
_WHOLE = {  # whole block keys
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",  # DINOv2
    "lambda_1": "gamma_1", "lambda_2": "gamma_2",  # BEiT / data2vec
    "attention.attention.relative_position_bias.relative_position_bias_table": "attn.relative_position_bias_table",
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",  # CLIP / SigLIP
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
    "embeddings.class_embedding": "cls_token",
    "embeddings.position_embedding.weight": "pos_embed",
    "pre_layrnorm.weight": "norm_pre.weight", "pre_layrnorm.bias": "norm_pre.bias",
    "post_layernorm.weight": "norm.weight", "post_layernorm.bias": "norm.bias",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    "pooler.layernorm.weight": "fc_norm.weight", "pooler.layernorm.bias": "fc_norm.bias",  # BEiT mean pooling
    "encoder.relative_position_bias.relative_position_bias_table": "rel_pos_bias.relative_position_bias_table",
    "classifier.weight": "head.weight", "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight", "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight", "distillation_classifier.bias": "head_dist.bias",
    "decoder.decoder_embed.weight": "decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_norm.weight": "decoder_norm.weight",
    "decoder.decoder_norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
}
_IGNORED = (  # (key prefix, why) - parts that are not the vision encoder
    ("embeddings.mask_token", "the masked-image-modelling mask token"),
    ("embeddings.position_ids", "a position-id buffer"),
    ("pooler.dense.", "the ViT pooler"),
    ("head.", "the SigLIP attention-pooling head"),
    ("lm_head.", "the BEiT masked-image-modelling head"),
    ("text_model.", "the text tower"), ("text_projection", "the text tower"),
    ("visual_projection", "the image-text projection"), ("logit_", "the contrastive logit scale"),
)


def read_folder(path: Path) -> tuple[dict, str, str, dict, list[str]]:
    """(state dict in timm names, family, format description, meta, notes) of a HuggingFace folder."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(path, f"folder has no config.json; expected {EXPECTED}")
    config = read_json(config_file, "config.json")
    model_type = config.get("model_type", "?")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        shown = repr(model_type) if len(repr(model_type)) <= 60 else repr(model_type)[:57] + "..."
        raise CheckpointError(path, f"HuggingFace model_type {shown} is not supported (supported: "
                                    f"{', '.join(MODEL_TYPES)})")
    hf_type = MODEL_TYPES[model_type]
    family, defaults = hf_type.family, hf_type.defaults
    vision = config.get("vision_config") if hf_type.vision_config else None
    if vision is not None and not isinstance(vision, dict):
        raise CheckpointError(config_file, f"vision_config is a {type(vision).__name__}; expected a JSON object")
    conf = {**defaults, **(vision or config)}

    act = conf.get("hidden_act")
    if not isinstance(act, str) or act not in _ACTIVATIONS:
        raise CheckpointError(config_file, f"hidden_act {act!r} is not supported (known: {', '.join(_ACTIVATIONS)})")
    # checked (types and bounds) with every other metadata by meta.clean_meta; a bad value names config.json
    meta = {
        "num_heads": conf.get("num_attention_heads", 12),  # transformers' own default when absent
        "decoder_num_heads": conf.get("decoder_num_attention_heads"),
        "norm_eps": conf.get("layer_norm_eps"),
        "norm_pix_loss": config.get("norm_pix_loss", False),
        "act_layer": _ACTIVATIONS[act],
        "pos_resample": hf_type.pos_resample,
        "rel_pos_resample": "hf",
    }
    from .meta import clean_meta

    meta = clean_meta(meta, config_file)
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        pconf = read_json(pre, "preprocessor_config.json")
        if "image_mean" in pconf and "image_std" in pconf:
            meta.update(clean_meta({"mean": pconf["image_mean"], "std": pconf["image_std"]}, pre))
    tensors = _read_weights(path)
    sd, notes = from_hf_keys(tensors, family)
    layout = "transformers 5.x" if any(".decoder_encoder." in k or re.match(r"^(vit\.)?layers\.", k)
                                       for k in tensors) else "transformers 4.x / hub"
    return sd, family, f"HuggingFace {model_type} folder ({layout} layout)", meta, notes


def _read_weights(path: Path) -> dict:
    if (path / "model.safetensors").exists():
        return read_safetensors(path / "model.safetensors")[0]
    if (path / "pytorch_model.bin").exists():
        weights = torch_load(path / "pytorch_model.bin")
        if not isinstance(weights, dict):
            raise CheckpointError(path / "pytorch_model.bin",
                                  f"holds a {type(weights).__name__}; expected a state dict")
        weights = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
        check_storage(weights, path / "pytorch_model.bin")
        return weights
    index = path / "model.safetensors.index.json"
    if index.is_file():  # the index names the shard of every tensor; other files in the folder are ignored
        weight_map = read_json(index, "model.safetensors.index.json").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(index, "has no weight_map of tensor names to shard files")
        files = sorted(set(weight_map.values()))
        bad = next((f for f in files
                    if "/" in f or "\\" in f or f.startswith(".") or not f.endswith(".safetensors")), None)
        if bad is not None:
            raise CheckpointError(index, f"names the shard {bad!r}; expected .safetensors files in the folder")
        tensors: dict = {}
        for name in files:
            shard = read_safetensors(path / name)[0]
            tensors.update({k: v for k, v in shard.items() if weight_map.get(k) == name})
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(index, f"lists {missing[0]} in {weight_map[missing[0]]}, which does not hold it")
        return tensors
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    if shards:
        tensors = {}
        for shard in shards:
            part = read_safetensors(shard)[0]
            twice = next((k for k in part if k in tensors), None)
            if twice is not None:
                raise CheckpointError(shard, f"holds {twice} again (also in an earlier shard); expected each tensor "
                                             "in one shard (add model.safetensors.index.json to say which)")
            tensors.update(part)
        return tensors
    raise CheckpointError(path, "HuggingFace folder without model.safetensors or pytorch_model.bin")


def looks_like_hf(tensors: dict) -> bool:
    """A bare state dict in HuggingFace names (e.g. a ViTMAE ``pytorch_model.bin`` copied out of its folder)."""
    return any("embeddings.patch_embeddings.projection.weight" in k or "embeddings.patch_embedding.weight" in k
               for k in tensors)


def from_hf_keys(tensors: dict, family: str = "vit") -> tuple[dict, list[str]]:
    """HuggingFace names -> timm names. q, k, v are fused into ``qkv`` (Beit layout: ``qkv.weight`` with
    separate ``q_bias``/``v_bias``, as BEiT has no key bias)."""
    beit = FAMILIES[family].builder == "beit"
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    ignored: dict[str, int] = {}
    for key, value in tensors.items():
        bare = key
        for prefix in _MODEL_PREFIXES:
            if bare.startswith(prefix):
                bare = bare[len(prefix):]
                break
        block = _BLOCK.match(bare)
        if block:
            idx, rest = (block.group(1), block.group(2)) if block.group(1) else (block.group(3), block.group(4))
            stem = "blocks" if block.group(1) else "decoder_blocks"
            if rest.endswith("relative_position_index"):
                continue  # a buffer rebuilt from the grid
            if rest in _WHOLE:
                out[f"{stem}.{idx}.{_WHOLE[rest]}"] = value
                continue
            part, _, leaf = rest.rpartition(".")
            if part in _QKV:
                qkv.setdefault((f"{stem}.{idx}.attn", leaf), {})[_QKV[part]] = value
            elif part in _PARTS:
                out[f"{stem}.{idx}.{_PARTS[part]}.{leaf}"] = value
            else:
                out[key] = value  # unknown: reported by the strict load
            continue
        why = next((w for p, w in _IGNORED if bare.startswith(p)), None)
        if why is not None:
            ignored[why] = ignored.get(why, 0) + 1
            continue
        target = _TOP.get(bare, key)
        if bare == "embeddings.class_embedding":
            value = value.reshape(1, 1, -1)
        elif bare == "embeddings.position_embedding.weight":
            value = value.unsqueeze(0)
        out[target] = value
    for (stem, leaf), parts in qkv.items():
        if leaf == "weight":
            if set(parts) != {"q", "k", "v"}:
                raise MaeprobeError(f"incomplete query/key/value weights for {stem} (found {', '.join(sorted(parts))}; "
                                    "expected query, key and value)")
            out[f"{stem}.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        elif beit:
            out[f"{stem}.q_bias"] = parts["q"]
            out[f"{stem}.v_bias"] = parts["v"]
        else:
            zeros = torch.zeros_like(parts["q"])
            out[f"{stem}.qkv.bias"] = torch.cat([parts["q"], parts.get("k", zeros), parts["v"]], dim=0)
    notes = [f"ignored {why} ({n} tensors)" for why, n in ignored.items()]
    return out, notes
