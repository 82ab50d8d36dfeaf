"""Attention statistics without N x N maps: the probed model takes its fused branch and the statistics come
from q and k in blocks of query rows (``capture(..., block_queries=n)``); the layer output is p @ v of the same
blocks (CPU) or the fused kernel's. Checked against transformers' eager
attentions (an independent implementation), against the full-map path, and by hand."""
from __future__ import annotations

import math

import pytest
import torch
from helpers.oracles import hf_forward
from typer.testing import CliRunner

import maeprobe
from maeprobe.capture import AttentionMap, CaptureRequest, capture
from maeprobe.metrics import AttentionEntropy


def _block_rows(model, x, noise, mask_ratio, block):
    """Every encoder and decoder layer's probabilities assembled from the blocks a consumer receives."""
    got, blocks_seen = {}, []

    def consumer(kind, module, layer, rows, cache):
        assert not isinstance(rows, torch.Tensor)  # q/k rows, not a map
        parts = [probs.clone() for _, _, probs in rows.blocks()]  # a block's buffer is reused by the next
        blocks_seen.append(len(parts))
        got[(module, layer)] = torch.cat(parts, dim=2)

    layers = {"encoder": range(model.config.depth), "decoder": range(model.config.decoder_depth)}
    consumers = {("attention", m, i): [consumer] for m, ls in layers.items() for i in ls}
    with capture(model, CaptureRequest.of(attention=layers), consumers, block_queries=block), torch.no_grad():
        latent, _, ids_restore = model.forward_encoder(x, mask_ratio, noise)
        pred = model.forward_decoder(latent, ids_restore)
    order = [("encoder", i) for i in layers["encoder"]] + [("decoder", i) for i in layers["decoder"]]
    return [got[k] for k in order], pred, blocks_seen


@pytest.mark.parametrize("block", [1, 3, 64])
def test_block_rows_equal_transformers_attentions(hf_mae, images32, block):
    """Masked encoder (5 tokens: CLS + 4 visible) and decoder (17 tokens), blocks that divide and that do not."""
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    noise = torch.rand(images32.shape[0], 16, generator=torch.Generator().manual_seed(3))
    out, hf_enc, hf_dec = hf_forward(hf, images32, noise)
    theirs, logits = hf_enc + hf_dec, out.logits
    ours, pred, blocks_seen = _block_rows(model, images32, noise, 0.75, block)
    assert len(ours) == len(theirs) == 5
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)
    torch.testing.assert_close(pred, logits, atol=1e-5, rtol=1e-4)  # the output (p @ v of the blocks) is right
    assert blocks_seen == [math.ceil(5 / block)] * 3 + [math.ceil(17 / block)] * 2


@pytest.mark.parametrize("reads", ["none", "odd rows", "all rows twice", "odd rows, then all"])
@pytest.mark.parametrize("block_output", ["blocks", "fused"])
def test_the_output_is_right_whatever_rows_the_consumers_read(hf_mae, images32, reads, block_output):
    """On the block path the layer output comes from the statistics' own probabilities (``blocks``: rows the
    consumers read are written as they go, the others afterwards) or from the fused kernel: either way the
    model's prediction equals transformers'."""
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    noise = torch.rand(images32.shape[0], 16, generator=torch.Generator().manual_seed(5))
    out, _, _ = hf_forward(hf, images32, noise)

    def consumer(kind, module, layer, rows, cache):
        if reads.startswith("odd rows"):
            for _ in rows.blocks(torch.arange(1, rows.shape[2], 2)):
                pass
        if reads.endswith("then all"):
            for _ in rows.blocks():
                pass
        elif reads == "all rows twice":
            for _ in range(2):
                for _ in rows.blocks():
                    pass

    layers = {"encoder": range(3), "decoder": range(2)}
    consumers = {("attention", m, i): [consumer] for m, ls in layers.items() for i in ls}
    with capture(model, CaptureRequest.of(attention=layers), consumers, block_queries=2,
                 block_output=block_output), torch.no_grad():
        latent, _, ids_restore = model.forward_encoder(images32, 0.75, noise)
        pred = model.forward_decoder(latent, ids_restore)
    torch.testing.assert_close(pred, out.logits, atol=1e-5, rtol=1e-4)


def test_block_path_keeps_gradients_when_the_forward_trains(hf_mae, images32):
    """Under autograd the output still comes from the differentiable kernel: gradients equal a plain forward's."""
    _, folder = hf_mae
    model = maeprobe.load(folder)
    noise = torch.rand(images32.shape[0], 16, generator=torch.Generator().manual_seed(2))

    def loss():
        latent, _, ids_restore = model.forward_encoder(images32, 0.75, noise)
        return model.forward_decoder(latent, ids_restore).square().mean()

    plain = torch.autograd.grad(loss(), model.blocks[0].attn.qkv.weight)[0]
    seen = []
    consumers = {("attention", "encoder", i): [lambda *a: seen.append(1)] for i in range(3)}
    with capture(model, CaptureRequest.of(attention={"encoder": range(3)}), consumers, block_queries=2):
        probed = torch.autograd.grad(loss(), model.blocks[0].attn.qkv.weight)[0]
    assert seen == [1, 1, 1]
    torch.testing.assert_close(probed, plain, atol=1e-6, rtol=1e-5)


def test_block_path_under_attention_dropout_reads_the_probabilities_before_dropout(hf_mae, images32):
    """A training-mode forward with attention dropout: the kernel (with its dropout) gives the output, the
    statistics see the probabilities before dropout, as the full-map path reads them."""
    _, folder = hf_mae
    model = maeprobe.load(folder)
    noise = torch.rand(images32.shape[0], 16, generator=torch.Generator().manual_seed(4))
    eval_rows, _, _ = _block_rows(model, images32, noise, 0.75, 2)
    model.train()
    for block in model.blocks:
        block.attn.attn_drop.p = 0.5
    try:
        train_rows, _, _ = _block_rows(model, images32, noise, 0.75, 2)
    finally:
        model.eval()
    torch.testing.assert_close(train_rows[0], eval_rows[0])  # layer 0: same input, no dropout in the rows


def test_block_path_takes_the_fused_branch_and_restores_the_model(hf_mae, images32):
    _, folder = hf_mae
    model = maeprobe.load(folder)
    for block in model.blocks:
        block.attn.fused_attn = False  # whatever the model had is restored afterwards
    seen, explicit = [], []
    pre = model.blocks[0].attn.register_forward_pre_hook(lambda m, i: seen.append(m.fused_attn))
    drop = model.blocks[0].attn.attn_drop.register_forward_pre_hook(lambda m, i: explicit.append(1))
    sdpa_before = torch.nn.functional.scaled_dot_product_attention
    try:
        maeprobe.attention_distance(model, images32, layers=[0], device="cpu", block_queries=4)
        assert seen == [True] and explicit == []  # the fused branch ran (its SDPA call served by blocks); no map
        seen.clear()
        maeprobe.attention_distance(model, images32, layers=[0], device="cpu", block_queries=0)
        assert seen == [False] and explicit == [1]  # the reference path: timm's explicit attention
    finally:
        pre.remove()
        drop.remove()
    assert torch.nn.functional.scaled_dot_product_attention is sdpa_before
    assert all(block.attn.fused_attn is False for block in model.blocks)


@pytest.mark.parametrize("mask_ratio, shared", [(0.0, True), (0.5, True), (0.5, False)])
def test_every_attention_metric_agrees_across_block_sizes(hf_mae, images32, mask_ratio, shared):
    _, folder = hf_mae
    model = maeprobe.load(folder)
    common = dict(mask_ratio=mask_ratio, shared_mask=shared, device="cpu", bootstrap=30, batch_size=4)
    for metric, kwargs in ((maeprobe.attention_distance, {"renormalize": True}),
                           (maeprobe.attention_distance, {"module": "decoder"}),
                           (maeprobe.attention_entropy, {"patch_keys_only": True}),
                           (maeprobe.attention_entropy, {"module": "decoder"})):
        full = metric(model, images32, block_queries=0, **common, **kwargs)
        for block in (1, 2, 7):
            blocked = metric(model, images32, block_queries=block, **common, **kwargs)
            for column in ("value", "ci_low", "ci_high"):
                torch.testing.assert_close(torch.tensor(blocked[column].to_numpy()),
                                           torch.tensor(full[column].to_numpy()), atol=2e-5, rtol=1e-5)
    eq7 = dict(device="cpu", bootstrap=30, per_head=True, batch_size=4)
    full = maeprobe.decoder_attention_similarity(model, images32, block_queries=0, **eq7)
    for block in (1, 5):
        blocked = maeprobe.decoder_attention_similarity(model, images32, block_queries=block, **eq7)
        for column in ("value", "ci_low", "ci_high"):
            torch.testing.assert_close(torch.tensor(blocked[column].to_numpy()),
                                       torch.tensor(full[column].to_numpy()), atol=1e-6, rtol=1e-6)


def test_entropy_of_hand_made_rows():
    """Grid 2 x 2 with CLS (N = 5): uniform rows give ln 5, one-hot rows 0, a half/half row ln 2."""
    model = maeprobe.build_mae(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2, decoder_depth=1,
                               decoder_embed_dim=8, decoder_num_heads=1)
    metric = AttentionEntropy(model)
    attn = torch.zeros(1, 2, 5, 5)
    attn[0, 0] = 0.2  # head 0 uniform over all 5 keys
    attn[0, 1, :, 0] = 1.0  # head 1: CLS row ignored; patch rows: two one-hot, two half/half
    attn[0, 1, 3] = torch.tensor([0.5, 0.5, 0, 0, 0])
    attn[0, 1, 4] = torch.tensor([0, 0, 0.5, 0, 0.5])
    got = metric._layer_values(AttentionMap(attn))
    torch.testing.assert_close(got, torch.tensor([[math.log(5), (0 + 0 + math.log(2) + math.log(2)) / 4]],
                                                 dtype=torch.float64))
    assert metric.uniform_level == pytest.approx(math.log(5))
    only = AttentionEntropy(model, patch_keys_only=True)
    attn[0, 1, 1] = torch.tensor([0.5, 0.25, 0.25, 0, 0])  # patch keys only: (0.5, 0.5) after renormalising
    got = only._layer_values(AttentionMap(attn))
    # head 0: uniform over 4 patch keys; head 1: rows 1..4 -> ln 2, 0 (CLS only: 0/0 -> all zero), 0 (one key), ln 2
    torch.testing.assert_close(got, torch.tensor([[math.log(4), (math.log(2) + 0 + 0 + math.log(2)) / 4]],
                                                 dtype=torch.float64), atol=1e-6, rtol=0)
    assert only.uniform_level == pytest.approx(math.log(4))


def test_block_path_under_bf16_autocast(hf_mae, images32):
    _, folder = hf_mae
    model = maeprobe.load(folder)
    fp32 = maeprobe.attention_distance(model, images32, device="cpu", block_queries=3)
    bf16 = maeprobe.attention_distance(model, images32, device="cpu", block_queries=3, dtype="bf16")
    torch.testing.assert_close(torch.tensor(bf16["value"].to_numpy()), torch.tensor(fp32["value"].to_numpy()),
                               rtol=2e-2, atol=0)  # q and k in bf16, the softmax in float32


def test_cli_attn_entropy_and_block_queries(hf_mae, tmp_path):
    from maeprobe.cli import app

    _, folder = hf_mae
    out = tmp_path / "entropy.csv"
    result = CliRunner().invoke(app, ["attn-entropy", str(folder), "--bootstrap", "0", "--block-queries", "2",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "mean attention entropy (nats)" in result.output and "uniform attention: 2.833" in result.output  # ln 17
    table = maeprobe.read_table(out)
    assert set(table["metric"]) == {"attention_entropy"} and (table["value"] <= table["uniform_level"] + 1e-6).all()
    bad = CliRunner().invoke(app, ["attn-distance", str(folder), "--block-queries", "-1"])
    assert bad.exit_code == 2 and "--block-queries" in bad.output


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cuda_block_path_equals_the_cpu_full_maps(hf_mae, images32, dtype):
    """On a GPU the blocks run on the device (fused SDPA for the output, float32 rows for the statistics): every
    attention metric equals the CPU full-map path (fp32 within 1e-4, TF32 matmuls off; bf16 within 2%)."""
    _, folder = hf_mae
    model = maeprobe.load(folder)
    tol = dict(rtol=2e-2, atol=0) if dtype == "bf16" else dict(rtol=1e-4, atol=1e-5)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for metric, kwargs in ((maeprobe.attention_distance, {"mask_ratio": 0.75}),
                               (maeprobe.attention_entropy, {"module": "decoder"}),
                               (maeprobe.decoder_attention_similarity, {"per_head": True})):
            cpu = metric(model, images32, device="cpu", block_queries=0, batch_size=4, **kwargs)
            for block in (3, 256):
                gpu = metric(model, images32, device="cuda", dtype=dtype, block_queries=block, batch_size=4, **kwargs)
                torch.testing.assert_close(torch.tensor(gpu["value"].to_numpy()),
                                           torch.tensor(cpu["value"].to_numpy()), **tol)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_more_than_256_tokens_full_maps_in_slices_equal_the_blocks():
    """290 tokens (17 x 17 patches + CLS): the full-map path is read in slices of 256 rows, the block path in
    blocks of 64 and 300; all agree, and the entropy of the map matches a direct computation over all rows."""
    torch.manual_seed(0)
    model = maeprobe.build_mae(img_size=136, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_depth=1,
                               decoder_embed_dim=16, decoder_num_heads=1).eval()
    images = torch.randn(2, 3, 136, 136, generator=torch.Generator().manual_seed(0))
    for metric in (maeprobe.attention_distance, maeprobe.attention_entropy):
        full = metric(model, images, device="cpu", block_queries=0, bootstrap=0)
        for block in (64, 300):
            blocked = metric(model, images, device="cpu", block_queries=block, bootstrap=0)
            torch.testing.assert_close(torch.tensor(blocked["value"].to_numpy()),
                                       torch.tensor(full["value"].to_numpy()),
                                       atol=1e-5, rtol=1e-5)
    attn = torch.randn(2, 2, 290, 290).softmax(-1)
    got = AttentionEntropy(model)._layer_values(AttentionMap(attn))
    direct = -torch.special.xlogy(attn[:, :, 1:], attn[:, :, 1:]).sum(-1).double().mean(-1)
    torch.testing.assert_close(got, direct, atol=1e-6, rtol=1e-6)
