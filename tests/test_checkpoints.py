"""Loading: official MAE files (keys enumerated here, independently of maeprobe), timm / DeiT / DINO /
registers (timm's own models as the oracle), safetensors, and files that must be refused."""
from __future__ import annotations

import argparse
import os

import pytest
import torch
from safetensors.torch import save_file
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

import maeprobe
from maeprobe import CheckpointError


def official_mae_shapes(D=768, depth=12, Dd=512, ddepth=8, p=16, grid=14, ratio=4, C=3, decoder=True):
    """Parameter names and shapes of facebookresearch/mae's MaskedAutoencoderViT (models_mae.py)."""
    L = grid * grid
    shapes = {"cls_token": (1, 1, D), "pos_embed": (1, L + 1, D),
              "patch_embed.proj.weight": (D, C, p, p), "patch_embed.proj.bias": (D,)}

    def block(prefix, d):
        h = d * ratio
        shapes.update({f"{prefix}.norm1.weight": (d,), f"{prefix}.norm1.bias": (d,),
                       f"{prefix}.attn.qkv.weight": (3 * d, d), f"{prefix}.attn.qkv.bias": (3 * d,),
                       f"{prefix}.attn.proj.weight": (d, d), f"{prefix}.attn.proj.bias": (d,),
                       f"{prefix}.norm2.weight": (d,), f"{prefix}.norm2.bias": (d,),
                       f"{prefix}.mlp.fc1.weight": (h, d), f"{prefix}.mlp.fc1.bias": (h,),
                       f"{prefix}.mlp.fc2.weight": (d, h), f"{prefix}.mlp.fc2.bias": (d,)})

    for i in range(depth):
        block(f"blocks.{i}", D)
    shapes.update({"norm.weight": (D,), "norm.bias": (D,)})
    if decoder:
        shapes.update({"decoder_embed.weight": (Dd, D), "decoder_embed.bias": (Dd,), "mask_token": (1, 1, Dd),
                       "decoder_pos_embed": (1, L + 1, Dd)})
        for i in range(ddepth):
            block(f"decoder_blocks.{i}", Dd)
        shapes.update({"decoder_norm.weight": (Dd,), "decoder_norm.bias": (Dd,),
                       "decoder_pred.weight": (p * p * C, Dd), "decoder_pred.bias": (p * p * C,)})
    return shapes


def random_state(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}


def test_official_vit_b16_full_checkpoint_loads_strictly_with_no_flags(tmp_path):
    shapes = official_mae_shapes()
    path = tmp_path / "mae_visualize_vit_base.pth"
    torch.save({"model": random_state(shapes)}, path)
    model = maeprobe.load(path)
    cfg = model.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == (768, 12, 12, 16, 224)
    assert (cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads) == (512, 8, 16)
    ours = model.state_dict()
    assert set(ours) == set(shapes)
    assert all(tuple(ours[k].shape) == s for k, s in shapes.items())
    assert "MAE (encoder + decoder)" in model.checkpoint.format


def test_official_encoder_only_release(tmp_path):
    shapes = official_mae_shapes(D=384, depth=2, decoder=False)
    torch.save({"model": random_state(shapes)}, tmp_path / "enc.pth")
    model = maeprobe.load(tmp_path / "enc.pth")
    assert not model.has_decoder and model.config.num_heads == 6


def test_training_checkpoint_with_namespace_args(tmp_path):
    shapes = official_mae_shapes(D=96, depth=2, Dd=64, ddepth=1, p=8, grid=4)
    args = argparse.Namespace(model="mae_custom", norm_pix_loss=True, mask_ratio=0.75, lr=None)
    torch.save({"model": random_state(shapes), "optimizer": {"state": {}, "param_groups": []}, "epoch": 7,
                "scaler": {"scale": 65536.0}, "args": args}, tmp_path / "checkpoint-7.pth")
    with pytest.raises(CheckpointError, match="--num-heads"):
        maeprobe.load(tmp_path / "checkpoint-7.pth")
    model = maeprobe.load(tmp_path / "checkpoint-7.pth", num_heads=3, decoder_num_heads=4)
    assert model.config.norm_pix_loss is True and model.config.num_heads == 3
    assert "training checkpoint" in model.checkpoint.format


def test_extra_key_is_rejected_strictly(tmp_path):
    state = random_state(official_mae_shapes(D=384, depth=1, decoder=False))
    state["blocks.0.attn.extra_scale"] = torch.ones(1)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="unexpected 1 keys"):
        maeprobe.load(tmp_path / "bad.pth")


def test_maeprobe_checkpoints_round_trip_in_both_formats(tmp_path):
    model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                               decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    official = set(official_mae_shapes(D=48, depth=2, Dd=32, ddepth=1, p=8, grid=4))
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    expected = model(x, 0.5, noise)[1]
    for name in ("ckpt.pth", "ckpt.safetensors"):
        path = maeprobe.save_checkpoint(model, tmp_path / name)
        loaded = maeprobe.load(path)  # heads come from maeprobe's metadata: no flags
        assert set(loaded.state_dict()) == official
        torch.testing.assert_close(loaded(x, 0.5, noise)[1], expected)
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    assert set(saved["model"]) == official  # what facebookresearch/mae's load_state_dict expects


def test_img_size_on_an_mae_file_with_decoder_probes_the_encoder(tmp_path):
    """Encoder metrics at another size work on a full MAE file (the decoder, whose grid is fixed, is left out
    and a note says so); the resampled encoder equals MAE's own interpolation (bicubic, no antialias)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                               decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    path = maeprobe.save_checkpoint(model, tmp_path / "full.pth")
    big = maeprobe.load(path, img_size=48)
    assert big.config.grid_size == 6 and not big.config.decoder_depth
    assert any("decoder metrics run at the checkpoint's own 32 px" in n for n in big.checkpoint.notes)
    grid = model.pos_embed[:, 1:].reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)  # MAE's interpolate_pos_embed
    torch.testing.assert_close(big.pos_embed[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 36, 48))
    table = maeprobe.attention_distance(big, torch.randn(2, 3, 48, 48))
    assert len(table) == 2 * 3
    with pytest.raises(maeprobe.MaeprobeError, match=r"img_size=48 left out the MAE decoder.*\(img_size=32\)"):
        maeprobe.decoder_attention_similarity(big, torch.randn(2, 3, 48, 48))


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0  # norms scale around 1
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + offset)
    return module.eval()


TIMM_CASES = {
    "vit": dict(cls=VisionTransformer, kw={}),
    "vit_layerscale_no_qkv_bias": dict(cls=VisionTransformer, kw=dict(init_values=0.1, qkv_bias=False)),
    "registers_no_embed_class": dict(cls=VisionTransformer, kw=dict(reg_tokens=4, no_embed_class=True)),
    "registers_embedded": dict(cls=VisionTransformer, kw=dict(reg_tokens=2)),
    "mae_finetune_global_pool": dict(cls=VisionTransformer, kw=dict(global_pool="avg", fc_norm=True, num_classes=10)),
    "deit_distilled": dict(cls=VisionTransformerDistilled, kw=dict(num_classes=10)),
}


@pytest.mark.parametrize("case", sorted(TIMM_CASES))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_models_give_identical_features_and_logits(tmp_path, case, suffix):
    spec = TIMM_CASES[case]
    kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0)
    kw.update(spec["kw"])
    reference = _randomize(spec["cls"](**kw))
    path = tmp_path / f"{case}{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state} if case == "deit_distilled" else state, path)
    model = maeprobe.load(path, num_heads=4)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference.forward_features(x)
        latent, _, _ = model.forward_encoder(x, 0.0)
        torch.testing.assert_close(latent, expected, atol=1e-5, rtol=1e-4)
        if kw.get("num_classes"):
            torch.testing.assert_close(model.forward_head(latent), reference(x), atol=1e-5, rtol=1e-4)


def test_dino_training_checkpoint_teacher_and_student(tmp_path):
    teacher = _randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=384, depth=1, num_heads=6,
                                           num_classes=0), seed=1)
    student = _randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=384, depth=1, num_heads=6,
                                           num_classes=0), seed=2)
    dino_head = {"head.mlp.0.weight": torch.randn(32, 384), "head.last_layer.weight_g": torch.ones(100, 1)}
    ckpt = {"teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **dino_head},
            "student": {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                        **{f"module.{k}": v for k, v in dino_head.items()}},
            "optimizer": {}, "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=8)}
    torch.save(ckpt, tmp_path / "dino_checkpoint.pth")
    x = torch.randn(2, 3, 32, 32)
    for prefer, reference in (("teacher", teacher), ("student", student)):
        model = maeprobe.load(tmp_path / "dino_checkpoint.pth", prefer=prefer)  # width 384 -> 6 heads
        assert f"DINO training checkpoint ({prefer})" in model.checkpoint.format
        with torch.no_grad():
            torch.testing.assert_close(model.forward_encoder(x)[0], reference.forward_features(x), atol=1e-5, rtol=1e-4)
    raw = tmp_path / "dino_backbone.pth"
    torch.save(teacher.state_dict(), raw)
    assert maeprobe.load(raw).config.num_heads == 6


# --------------------------------------------------------------------------- refused files
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}, "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused to load.*system"):
        maeprobe.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "random_bytes", "resnet", "missing", "empty_dir", "not_a_dict"])
def test_unusable_files_give_one_clear_error(tmp_path, kind):
    path = tmp_path / "model.pth"
    if kind == "truncated":
        torch.save({"model": random_state(official_mae_shapes(D=384, depth=1, decoder=False))}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        pattern = "truncated or corrupt"
    elif kind == "random_bytes":
        path.write_bytes(bytes(range(7, 250)) * 20)
        pattern = "unrecognised file content"
    elif kind == "resnet":
        from torchvision.models import resnet18

        torch.save(resnet18(weights=None).state_dict(), path)
        pattern = "not a ViT/MAE checkpoint.*conv1.weight"
    elif kind == "missing":
        path = tmp_path / "nowhere.pth"
        pattern = "no such file"
    elif kind == "empty_dir":
        path = tmp_path / "folder"
        path.mkdir()
        pattern = "no config.json"
    else:
        torch.save([1, 2, 3], path)
        pattern = "not a state dict"
    with pytest.raises(CheckpointError, match=pattern) as info:
        maeprobe.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
