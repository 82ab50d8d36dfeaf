"""Hooks: only what was asked, always removed, fused attention restored; bf16 and CUDA paths."""
import pytest
import torch

import maeprobe
from maeprobe.capture import CaptureRequest, capture


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3,
                              decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2).eval()


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_captures_only_requested_layers_and_restores_state(model):
    for block in model.blocks:
        block.attn.fused_attn = True
    request = CaptureRequest.of(attention={"encoder": [1]}, features={"encoder": [0], "decoder": [1]})
    with capture(model, request) as cache:
        assert model.blocks[1].attn.fused_attn is False and model.blocks[0].attn.fused_attn is True
        with torch.no_grad():
            latent, _, ids_restore = model.forward_encoder(torch.randn(2, 3, 32, 32), 0.5)
            model.forward_decoder(latent, ids_restore)
    assert set(cache.attention) == {("encoder", 1)}
    assert set(cache.features) == {("encoder", 0), ("decoder", 1)}
    attn = cache.attention[("encoder", 1)]
    assert attn.shape == (2, 3, 9, 9)  # 1 CLS + 8 visible patches
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 9))
    assert cache.features[("decoder", 1)].shape == (2, 17, 32)
    assert all(block.attn.fused_attn is True for block in model.blocks)
    assert _hook_count(model) == 0


def test_hooks_are_removed_when_the_forward_pass_raises(model):
    with pytest.raises(RuntimeError):
        with capture(model, CaptureRequest.of(attention={"encoder": [0, 1, 2]}, features={"decoder": [0]})):
            model.forward_encoder(torch.randn(1, 5, 32, 32))  # wrong channel count
    assert _hook_count(model) == 0
    assert all(block.attn.fused_attn == block.attn.__class__(8, 2).fused_attn for block in model.blocks)


def test_captured_attention_equals_explicit_softmax(model):
    x = torch.randn(2, 3, 32, 32)
    features = {}
    handle = model.blocks[0].norm1.register_forward_hook(lambda m, i, o: features.__setitem__("x", o))
    with capture(model, CaptureRequest.of(attention={"encoder": [0]})) as cache, torch.no_grad():
        model.forward_encoder(x)
    handle.remove()
    attn = model.blocks[0].attn
    qkv = features["x"] @ attn.qkv.weight.T + attn.qkv.bias  # [B, N, 3D]
    q, k, _ = qkv.reshape(2, 17, 3, 3, 16).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
    torch.testing.assert_close(cache.attention[("encoder", 0)], expected, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_on_cpu_agrees_with_fp32(model):
    x = torch.randn(4, 3, 32, 32)
    fp32 = maeprobe.attention_distance(model, x, device="cpu")["value"].to_numpy()
    bf16 = maeprobe.attention_distance(model, x, device="cpu", dtype="bf16")["value"].to_numpy()
    assert abs(bf16 - fp32).max() / fp32.mean() < 0.03


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cuda_matches_cpu(model, dtype, ieee_convolutions):
    x = torch.randn(4, 3, 32, 32)
    cpu = maeprobe.attention_distance(model, x, device="cpu", mask_ratio=0.5)["value"].to_numpy()
    gpu = maeprobe.attention_distance(model, x, device="cuda", mask_ratio=0.5, dtype=dtype)["value"].to_numpy()
    assert abs(gpu - cpu).max() / cpu.mean() < (1e-4 if dtype == "fp32" else 0.03)
