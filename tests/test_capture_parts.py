"""The parts of ``maeprobe.capture``: the block path's output-source decision (hand-worked cases), the probe-point
table (each family's key site against a direct computation), and the SDPA interception scoped to the probed
attention's own forward (another model in the process is untouched; nothing stays patched or pushed)."""
from __future__ import annotations

import threading

import pytest
import torch
from timm.models.beit import Block as BeitBlock
from timm.models.eva import EvaBlock
from timm.models.vision_transformer import Block as VitBlock

import maeprobe
from maeprobe.capture import ActivationCache, CaptureRequest, StopForward, capture
from maeprobe.capture.points import point_for
from maeprobe.capture.sdpa import output_source

SDPA = torch._C._nn.scaled_dot_product_attention


@pytest.mark.parametrize("trains, queries, block, choice, device, expected", [
    (True, 5, 128, "blocks", "cpu", "kernel"),      # a forward that trains always takes the kernel's output
    (True, 5, 128, "auto", "cuda", "kernel"),
    (False, 197, 64, "auto", "cpu", "blocks"),      # several blocks, auto on CPU: p @ v block by block
    (False, 197, 64, "auto", "cuda", "kernel"),     # several blocks, auto off the CPU: the fused kernel
    (False, 197, 64, "fused", "cpu", "kernel"),     # chosen
    (False, 197, 64, "blocks", "cuda", "blocks"),   # chosen
    (False, 64, 64, "auto", "cuda", "single"),      # exactly one block: its p @ v, whatever the choice
    (False, 64, 64, "fused", "cpu", "single"),
    (False, 65, 64, "auto", "cpu", "blocks"),       # one row over the block
    (False, 1, 1, "blocks", "cpu", "single"),
])
def test_output_source(trains, queries, block, choice, device, expected):
    assert output_source(trains, queries, block, choice, device) == expected


def _record_keys(block, x):
    seen = []
    handle = point_for("keys", block).attach(block, seen.append)
    try:
        with torch.no_grad():
            block(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def test_key_sites_per_family_equal_a_direct_computation():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    vit, beit, eva = VitBlock(16, 2, qkv_bias=True), BeitBlock(16, 2, qkv_bias=True), EvaBlock(16, 2, qkv_fused=False)
    with torch.no_grad():
        beit.attn.q_bias.normal_()
        beit.attn.v_bias.normal_()
        expected = {
            "timm fused qkv": vit.attn.qkv(vit.norm1(x))[..., 16:32],
            "BEiT q_bias": torch.nn.functional.linear(beit.norm1(x), beit.attn.qkv.weight[16:32]),  # no k bias
            "EVA-02 k_proj": eva.attn.k_proj(eva.norm1(x)),
        }
    for block, layout in ((vit, "timm fused qkv"), (beit, "BEiT q_bias"), (eva, "EVA-02 k_proj")):
        assert point_for("keys", block).layout == layout
        torch.testing.assert_close(_record_keys(block, x), expected[layout])  # [B, N, 16]


def test_request_and_cache_are_keyed_by_kind_module_layer():
    request = CaptureRequest.of(features={"decoder": [1, 0]}, attention={"encoder": [2, 0]}, keys={"encoder": [1]})
    assert list(request.items()) == [("attention", "encoder", [0, 2]), ("features", "decoder", [0, 1]),
                                     ("keys", "encoder", [1])]
    cache = ActivationCache()
    cache["features", "decoder", 1] = torch.ones(1)
    assert cache.features == {("decoder", 1): torch.ones(1)} and ("features", "decoder", 1) in cache
    assert cache["features", "decoder", 1] is cache.features[("decoder", 1)]


@pytest.fixture()
def models():
    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=32,
                  decoder_depth=1, decoder_num_heads=2)
    probed, other = maeprobe.build_mae(**kwargs).eval(), maeprobe.build_mae(**kwargs).eval()
    for block in other.blocks:
        block.attn.fused_attn = True  # the other model calls SDPA too
    return probed, other


def _rows_of_layer0(probed, x, during_qkv=None):
    """Layer 0's probabilities on the block path (4 query rows a block), ``during_qkv`` run from a hook on the
    probed attention's qkv, i.e. inside the window in which its SDPA call is intercepted."""
    got = []

    def consumer(kind, module, layer, rows, cache):
        assert torch.nn.functional.scaled_dot_product_attention is SDPA  # nothing patched, not even now
        got.append(torch.cat([p.clone() for _, _, p in rows.blocks()], 2))  # [B, H, N, N]

    hook = probed.blocks[0].attn.qkv.register_forward_hook(lambda *_: during_qkv and during_qkv())
    try:
        with torch.no_grad(), capture(probed, CaptureRequest.of(attention={"encoder": [0]}),
                                      {("attention", "encoder", 0): [consumer]}, block_queries=4):
            probed.forward_encoder(x, 0.0)
    finally:
        hook.remove()
    return got


def test_another_thread_s_model_is_untouched_while_the_probed_sdpa_call_is_intercepted(models):
    probed, other = models
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        bare = other.forward_encoder(x, 0.0)[0]
    outputs = []

    def run_other_on_a_thread():
        def run():
            with torch.no_grad():
                outputs.append(other.forward_encoder(x, 0.0)[0])
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()

    alone = _rows_of_layer0(probed, x)
    beside = _rows_of_layer0(probed, x, during_qkv=run_other_on_a_thread)
    assert len(alone) == len(beside) == 1
    torch.testing.assert_close(beside[0], alone[0], rtol=0, atol=0)  # the probed layer's own q and k
    torch.testing.assert_close(outputs[0], bare, rtol=0, atol=0)  # the other model's SDPA calls were not served


def test_a_model_run_by_a_consumer_is_untouched(models):
    probed, other = models
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        bare = other.forward_encoder(x, 0.0)[0]
    outputs = []

    def consumer(kind, module, layer, rows, cache):
        outputs.append(other.forward_encoder(x, 0.0)[0])

    with torch.no_grad(), capture(probed, CaptureRequest.of(attention={"encoder": [0, 1]}),
                                  {("attention", "encoder", 0): [consumer]}, block_queries=4):
        probed.forward_encoder(x, 0.0)
    torch.testing.assert_close(outputs[0], bare, rtol=0, atol=0)


def test_no_mode_stays_pushed_when_the_forward_stops_or_raises(models):
    probed, _ = models
    x = torch.randn(2, 3, 32, 32)
    consumers = {("attention", "encoder", 0): [lambda *args: None]}
    with torch.no_grad(), capture(probed, CaptureRequest.of(attention={"encoder": [0]}), consumers,
                                  stop_after=("attention", "encoder", 0), block_queries=4):
        with pytest.raises(StopForward):  # raised inside the intercepted SDPA call
            probed.forward_encoder(x, 0.0)
        assert torch._C._len_torch_function_stack() == 0
        fail = probed.blocks[0].attn.qkv.register_forward_hook(lambda *_: 1 / 0)
        with pytest.raises(ZeroDivisionError):  # a forward that fails inside the attention, before its SDPA call
            probed.forward_encoder(x, 0.0)
        fail.remove()
        assert torch._C._len_torch_function_stack() == 0
    assert all(len(m._forward_hooks) + len(m._forward_pre_hooks) == 0 for m in probed.modules())
