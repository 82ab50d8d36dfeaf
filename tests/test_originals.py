"""Original release layouts, written by the tests with the key names of the upstream code, loaded with no flags
and compared with timm's own model loaded through timm's own converter (or strictly, where timm has none)."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import QuickGELU
from timm.models.beit import Beit
from timm.models.beit import checkpoint_filter_fn as beit_filter
from timm.models.vision_transformer import VisionTransformer, _load_weights, checkpoint_filter_fn

import maeprobe

D, HEADS, DEPTH = 32, 2, 2


def _random_state(model: torch.nn.Module) -> dict:
    torch.manual_seed(0)
    return {k: (v + torch.randn_like(v) * 0.05 if v.is_floating_point() else v) for k, v in model.state_dict().items()}


def _tokens(model, x):
    with torch.no_grad():
        return model.forward_encoder(x, 0.0)[0]


def _timm_vit(**kwargs):
    return VisionTransformer(embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=0, **kwargs).eval()


# ----------------------------------------------------------------------------------------------- DINOv2
def _dinov2_state(patch: int, img: int, registers: int) -> dict:
    """dinov2/models/vision_transformer.py DinoVisionTransformer.state_dict() (blocks not chunked)."""
    g = img // patch
    sd = {"cls_token": torch.randn(1, 1, D), "pos_embed": torch.randn(1, 1 + g * g, D),
          "mask_token": torch.randn(1, D), "patch_embed.proj.weight": torch.randn(D, 3, patch, patch) * 0.05,
          "patch_embed.proj.bias": torch.randn(D) * 0.05, "norm.weight": 1 + torch.randn(D) * 0.05,
          "norm.bias": torch.randn(D) * 0.05}
    if registers:
        sd["register_tokens"] = torch.randn(1, registers, D)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + torch.randn(D) * 0.05, b + "norm1.bias": torch.randn(D) * 0.05,
                   b + "attn.qkv.weight": torch.randn(3 * D, D) * 0.2, b + "attn.qkv.bias": torch.randn(3 * D) * 0.05,
                   b + "attn.proj.weight": torch.randn(D, D) * 0.1, b + "attn.proj.bias": torch.randn(D) * 0.05,
                   b + "ls1.gamma": torch.rand(D), b + "norm2.weight": 1 + torch.randn(D) * 0.05,
                   b + "norm2.bias": torch.randn(D) * 0.05, b + "mlp.fc1.weight": torch.randn(4 * D, D) * 0.1,
                   b + "mlp.fc1.bias": torch.randn(4 * D) * 0.05, b + "mlp.fc2.weight": torch.randn(D, 4 * D) * 0.1,
                   b + "mlp.fc2.bias": torch.randn(D) * 0.05, b + "ls2.gamma": torch.rand(D)})
    return sd


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_release_matches_timm(tmp_path, registers):
    torch.manual_seed(1)
    sd = _dinov2_state(14, 56, registers)
    name = f"dinov2_vits14{'_reg4' if registers else ''}_pretrain.pth"
    torch.save(sd, tmp_path / name)
    model = maeprobe.load(tmp_path / name, num_heads=HEADS)
    assert model.checkpoint.family_label == "DINOv2" and model.num_prefix_tokens == 1 + registers
    timm_model = _timm_vit(img_size=56, patch_size=14, init_values=1e-5, reg_tokens=registers,
                           no_embed_class=bool(registers))
    timm_model.load_state_dict(checkpoint_filter_fn(dict(sd), timm_model))
    x = torch.randn(2, 3, 56, 56)
    torch.testing.assert_close(_tokens(model, x), timm_model.forward_features(x), atol=1e-5, rtol=1e-4)


def test_dinov2_img_size_follows_dinov2_interpolation(tmp_path):
    """DINOv2's interpolate_pos_encoding: bicubic, scale factor (w0 + 0.1) / M, no antialias (typed in from
    facebookresearch/dinov2 vision_transformer.py, interpolate_offset 0.1, interpolate_antialias False)."""
    torch.manual_seed(2)
    sd = _dinov2_state(14, 56, 0)
    torch.save(sd, tmp_path / "dinov2_vits14_pretrain.pth")
    model = maeprobe.load(tmp_path / "dinov2_vits14_pretrain.pth", num_heads=HEADS, img_size=42)
    assert model.checkpoint.pos_resample == "offset"
    M, w0 = 4, 3
    patch_pos = sd["pos_embed"][:, 1:].reshape(1, M, M, D).permute(0, 3, 1, 2)
    expected = F.interpolate(patch_pos, scale_factor=((w0 + 0.1) / M, (w0 + 0.1) / M), mode="bicubic",
                             antialias=False).permute(0, 2, 3, 1).reshape(1, w0 * w0, D)
    torch.testing.assert_close(model.pos_embed[:, 1:], expected)
    torch.testing.assert_close(model.pos_embed[:, :1], sd["pos_embed"][:, :1])
    assert model.config.grid_size == 3


# ----------------------------------------------------------------------------------------------- MoCo v3
def test_mocov3_checkpoint_keeps_the_base_encoder(tmp_path):
    """moco-v3 main_moco.py saves {'epoch', 'arch', 'state_dict': DDP(MoCo_ViT).state_dict(), 'optimizer'}."""
    encoder = _timm_vit(img_size=32, patch_size=8)
    base, momentum = _random_state(encoder), {k: v * 0 + 1 for k, v in encoder.state_dict().items()}
    sd = {f"module.base_encoder.{k}": v for k, v in base.items()}
    sd.update({f"module.momentum_encoder.{k}": v for k, v in momentum.items()})
    for enc in ("base_encoder", "momentum_encoder"):  # 3-layer projection MLP with BatchNorm
        sd.update({f"module.{enc}.head.0.weight": torch.randn(64, D), f"module.{enc}.head.1.weight": torch.ones(64),
                   f"module.{enc}.head.1.bias": torch.zeros(64), f"module.{enc}.head.1.running_mean": torch.zeros(64),
                   f"module.{enc}.head.1.running_var": torch.ones(64),
                   f"module.{enc}.head.1.num_batches_tracked": torch.tensor(0)})
    sd.update({"module.predictor.0.weight": torch.randn(64, 64), "module.predictor.1.weight": torch.ones(64)})
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "mocov3.pth.tar")
    model = maeprobe.load(tmp_path / "mocov3.pth.tar", num_heads=HEADS)
    assert model.checkpoint.family_label == "MoCo v3"
    encoder.load_state_dict(base)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_tokens(model, x), encoder.forward_features(x), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- iBOT
def test_ibot_teacher_backbone(tmp_path):
    """iBOT main_ibot.py saves {'student', 'teacher', ...}: MultiCropWrapper(backbone, iBOTHead)."""
    encoder = _timm_vit(img_size=32, patch_size=8)
    backbone = _random_state(encoder)
    teacher = {f"backbone.{k}": v for k, v in backbone.items()}
    teacher["backbone.masked_embed"] = torch.zeros(D)
    teacher.update({"head.mlp.0.weight": torch.randn(64, D), "head.last_layer.weight_g": torch.ones(8, 1),
                    "head.last_layer2.weight_g": torch.ones(8, 1)})
    torch.save({"teacher": teacher, "student": teacher, "epoch": 100}, tmp_path / "checkpoint.pth")
    model = maeprobe.load(tmp_path / "checkpoint.pth", num_heads=HEADS)
    assert model.checkpoint.family_label == "iBOT"
    encoder.load_state_dict(backbone)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_tokens(model, x), encoder.forward_features(x), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- BEiT
@pytest.mark.parametrize("layout", ["finetuned", "pretraining"])
def test_unilm_beit_matches_timm(tmp_path, layout):
    """microsoft/unilm beit/modeling_finetune.py and modeling_pretrain.py state dicts, saved as {'model': sd}."""
    pretraining = layout == "pretraining"
    kwargs = dict(img_size=32, patch_size=8, embed_dim=D, depth=DEPTH, num_heads=HEADS, init_values=0.1,
                  use_abs_pos_emb=False, use_rel_pos_bias=not pretraining, use_shared_rel_pos_bias=pretraining,
                  num_classes=0 if pretraining else 5, use_fc_norm=not pretraining)
    reference = Beit(**kwargs).eval()
    sd = _random_state(reference)
    sd = {k: v for k, v in sd.items()}
    for i in range(DEPTH):  # the upstream files keep the index buffers, which timm does not persist
        if not pretraining:
            sd[f"blocks.{i}.attn.relative_position_index"] = reference.blocks[i].attn.relative_position_index
    if pretraining:
        sd["rel_pos_bias.relative_position_index"] = reference.rel_pos_bias.relative_position_index
        sd.update({"mask_token": torch.zeros(1, 1, D), "lm_head.weight": torch.randn(99, D),
                   "lm_head.bias": torch.zeros(99)})
    torch.save({"model": sd}, tmp_path / "beit.pth")
    model = maeprobe.load(tmp_path / "beit.pth", num_heads=HEADS)
    assert model.checkpoint.family_label == "BEiT"
    reference.load_state_dict(beit_filter({k: v for k, v in sd.items() if not k.startswith(("lm_head", "mask_token"))},
                                          reference))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_tokens(model, x), reference.forward_features(x), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- CLIP
def _openai_clip_state(width=D, layers=DEPTH, patch=8, img=32, embed=16) -> dict:
    """openai/CLIP clip/model.py CLIP.state_dict(): visual.* (VisionTransformer) and the text tower."""
    g = img // patch
    r = lambda *s: torch.randn(*s) * 0.1  # noqa: E731
    sd = {"visual.class_embedding": r(width), "visual.positional_embedding": r(1 + g * g, width),
          "visual.proj": r(width, embed), "visual.conv1.weight": r(width, 3, patch, patch),
          "visual.ln_pre.weight": 1 + r(width), "visual.ln_pre.bias": r(width),
          "visual.ln_post.weight": 1 + r(width), "visual.ln_post.bias": r(width),
          "token_embedding.weight": r(99, width), "positional_embedding": r(7, width),
          "text_projection": r(width, embed), "logit_scale": torch.tensor(4.6),
          "ln_final.weight": torch.ones(width), "ln_final.bias": torch.zeros(width)}
    for stem in ("visual.transformer", "transformer"):
        for i in range(layers):
            b = f"{stem}.resblocks.{i}."
            sd.update({b + "attn.in_proj_weight": r(3 * width, width) * 3, b + "attn.in_proj_bias": r(3 * width),
                       b + "attn.out_proj.weight": r(width, width), b + "attn.out_proj.bias": r(width),
                       b + "ln_1.weight": 1 + r(width), b + "ln_1.bias": r(width),
                       b + "mlp.c_fc.weight": r(4 * width, width), b + "mlp.c_fc.bias": r(4 * width),
                       b + "mlp.c_proj.weight": r(width, 4 * width), b + "mlp.c_proj.bias": r(width),
                       b + "ln_2.weight": 1 + r(width), b + "ln_2.bias": r(width)})
    return sd


def test_openai_clip_and_open_clip_visual_match_timm(tmp_path):
    torch.manual_seed(3)
    sd = _openai_clip_state()
    torch.save(sd, tmp_path / "clip_state_dict.pt")
    model = maeprobe.load(tmp_path / "clip_state_dict.pt", num_heads=HEADS)
    assert model.checkpoint.family_label == "CLIP"
    assert model.config.act_layer == "quick_gelu" and model.config.pre_norm
    reference = VisionTransformer(img_size=32, patch_size=8, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                                  pre_norm=True, act_layer=QuickGELU, num_classes=16, class_token=True,
                                  norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-5),
                                  global_pool="token").eval()
    reference.load_state_dict(checkpoint_filter_fn(dict(sd), reference))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_tokens(model, x), reference.forward_features(x), atol=1e-5, rtol=1e-4)
    # open_clip training checkpoints: {'epoch', 'name', 'state_dict': {'module.visual.*', ...}}
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "epoch_32.pt")
    again = maeprobe.load(tmp_path / "epoch_32.pt", num_heads=HEADS)
    torch.testing.assert_close(_tokens(again, x), reference.forward_features(x), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- JAX .npz
def test_jax_npz_matches_timm_load_weights(tmp_path):
    """google-research/vision_transformer checkpoints: Flax parameter paths joined by '/'."""
    rng = np.random.default_rng(0)
    r = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)  # noqa: E731
    p, g, hd = 8, 4, D // HEADS
    arrays = {"embedding/kernel": r(p, p, 3, D), "embedding/bias": r(D), "cls": r(1, 1, D),
              "Transformer/posembed_input/pos_embedding": r(1, 1 + g * g, D),
              "Transformer/encoder_norm/scale": 1 + r(D), "Transformer/encoder_norm/bias": r(D),
              "head/kernel": r(D, 5), "head/bias": r(5)}
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}/"
        arrays.update({b + "LayerNorm_0/scale": 1 + r(D), b + "LayerNorm_0/bias": r(D),
                       b + "LayerNorm_2/scale": 1 + r(D), b + "LayerNorm_2/bias": r(D),
                       b + "MlpBlock_3/Dense_0/kernel": r(D, 4 * D), b + "MlpBlock_3/Dense_0/bias": r(4 * D),
                       b + "MlpBlock_3/Dense_1/kernel": r(4 * D, D), b + "MlpBlock_3/Dense_1/bias": r(D),
                       b + "MultiHeadDotProductAttention_1/out/kernel": r(HEADS, hd, D),
                       b + "MultiHeadDotProductAttention_1/out/bias": r(D)})
        for n in ("query", "key", "value"):
            arrays[b + f"MultiHeadDotProductAttention_1/{n}/kernel"] = r(D, HEADS, hd) * 3
            arrays[b + f"MultiHeadDotProductAttention_1/{n}/bias"] = r(HEADS, hd)
    np.savez(tmp_path / "ViT-Ti_8.npz", **arrays)
    model = maeprobe.load(tmp_path / "ViT-Ti_8.npz")  # head count read from the query kernel: no flag
    assert model.config.num_heads == HEADS and model.config.num_classes == 5
    reference = VisionTransformer(img_size=32, patch_size=8, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                                  num_classes=5).eval()
    _load_weights(reference, str(tmp_path / "ViT-Ti_8.npz"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_tokens(model, x), reference.forward_features(x), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features_logits(x), reference(x), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- refusals
def test_torchscript_archive_is_refused_with_one_line(tmp_path):
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "ViT-B-32.pt"))
    with pytest.raises(maeprobe.MaeprobeError, match="TorchScript archive runs its own code"):
        maeprobe.load(tmp_path / "ViT-B-32.pt")


def test_family_is_named_for_timm_files_too(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                              num_classes=0)
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    loaded = maeprobe.load(tmp_path / "timm.pth")
    assert loaded.checkpoint.family_label == "ViT"
    assert math.isclose(loaded.config.mlp_ratio, 4.0)


# ----------------------------------------------------------------------------------------------- EVA
def _eva_distance_brute_force(net, x, num_prefix, grid, patch):
    """Mean attention distance from timm's own AttentionExtract (an fx graph, not maeprobe's hooks)."""
    from timm.utils import AttentionExtract

    for block in net.blocks:
        block.attn.fused_attn = False  # the explicit softmax path, which the fx graph names
    maps = AttentionExtract(net, method="fx")(x)
    out = []
    for attn in maps.values():  # [B, H, N, N]
        a = attn[:, :, num_prefix:, num_prefix:]
        coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).reshape(-1, 2)
        dist = torch.cdist(coords.float(), coords.float()) * patch
        out.append((a * dist).sum(-1).mean(dim=(0, 2)))
    return torch.stack(out).double()


@pytest.mark.parametrize("style", ["eva02", "eva01"])
def test_timm_eva_files_match_timm(tmp_path, style):
    from timm.models.eva import Eva

    eva02 = style == "eva02"
    kwargs = dict(img_size=56, patch_size=14, embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=0,
                  qkv_fused=not eva02, swiglu_mlp=eva02, scale_mlp=eva02, mlp_ratio=4 * 2 / 3 if eva02 else 4,
                  use_rot_pos_emb=eva02, ref_feat_shape=(4, 4) if eva02 else None,
                  init_values=0.1 if not eva02 else None)
    net = Eva(**kwargs).eval()
    net.load_state_dict(_random_state(net))
    torch.save(net.state_dict(), tmp_path / f"{style}.pth")
    model = maeprobe.load(tmp_path / f"{style}.pth", num_heads=HEADS)
    assert model.checkpoint.family_label == "EVA"
    x = torch.randn(2, 3, 56, 56)
    torch.testing.assert_close(_tokens(model, x), net.forward_features(x), atol=1e-5, rtol=1e-4)
    expected = _eva_distance_brute_force(net, x, 1, 4, 14)
    for block_queries in (0, 5, None):  # full maps, rotary q/k rows in blocks of 5, the default blocks
        table = maeprobe.attention_distance(model, x, device="cpu", block_queries=block_queries)
        got = torch.tensor(table.sort_values(["layer", "head"])["value"].to_numpy()).reshape(DEPTH, HEADS)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_timm_eva_snapshot_builds_timm_own_definition(tmp_path):
    """A timm hub snapshot (config.json with 'architecture') is built with timm.create_model(architecture)."""
    import json

    from safetensors.torch import save_file

    args = {"embed_dim": D, "depth": DEPTH, "num_heads": HEADS}
    net = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0, **args).eval()
    net.load_state_dict(_random_state(net))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "eva02_tiny_patch14_224", "model_args": args,
                                                      "pretrained_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                                         "std": [0.26862954, 0.26130258, 0.27577711]}}))
    model = maeprobe.load(tmp_path)  # the repository folder: its config.json is read as data
    assert model.checkpoint.family_label == "EVA" and model.config.num_heads == HEADS
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(_tokens(model, x), net.forward_features(x), atol=1e-5, rtol=1e-4)
