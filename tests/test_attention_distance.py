"""Mean attention distance against brute-force loops over HF's own attentions and hand-checked cases."""
from __future__ import annotations

import math

import pytest
import torch
from helpers.oracles import hf_forward

import maeprobe
from maeprobe.capture import ActivationCache
from maeprobe.masking import MaskInfo, mask_noise
from maeprobe.metrics import AttentionDistance


def brute_force(attn, positions, patch_size, num_prefix=1, renormalize=False):
    """attn [H, N, N] of one image; positions: grid index of each patch token. Returns [H] in pixels."""
    grid = 4
    heads = []
    for h in range(attn.shape[0]):
        total = 0.0
        for qi, q in enumerate(positions):
            row, mass = 0.0, 0.0
            for ki, k in enumerate(positions):
                a = float(attn[h, num_prefix + qi, num_prefix + ki])
                dr, dc = q // grid - k // grid, q % grid - k % grid
                row += a * math.hypot(dr, dc) * patch_size
                mass += a
            total += row / mass if renormalize else row
        heads.append(total / len(positions))
    return torch.tensor(heads)


@pytest.mark.parametrize("renormalize", [False, True])
def test_encoder_distance_with_per_image_masks_matches_brute_force(hf_mae, images32, renormalize):
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    n = images32.shape[0]
    noise = mask_noise(16, seed=7, batch_size=n, shared=False, image_indices=range(n))
    out, hf_enc, _ = hf_forward(hf, images32, noise)
    ids_keep = torch.argsort(out.ids_restore, dim=1)[:, :4]  # HF's own kept patches
    expected = torch.stack([
        torch.stack([brute_force(hf_enc[layer][i], ids_keep[i].tolist(), 8, renormalize=renormalize)
                     for layer in range(3)])
        for i in range(n)]).mean(0)  # [layers, heads]
    table = maeprobe.attention_distance(model, images32, mask_ratio=0.75, seed=7, shared_mask=False,
                                        renormalize=renormalize, batch_size=4, device="cpu")
    assert len(table) == 3 * 4 and set(table["n_images"]) == {n}
    got = torch.tensor(table.sort_values(["layer", "head"])["value"].to_numpy()).reshape(3, 4)
    torch.testing.assert_close(got, expected.double(), atol=1e-4, rtol=1e-5)


def test_unmasked_and_decoder_distance_match_brute_force(hf_mae, images32):
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    n = images32.shape[0]
    noise = mask_noise(16, seed=0, batch_size=n)  # shared mask, ratio 0.75, for the decoder
    _, _, hf_dec = hf_forward(hf, images32, noise)
    expected_dec = torch.stack([torch.stack([brute_force(hf_dec[l][i], list(range(16)), 8) for l in range(2)])
                                for i in range(n)]).mean(0)
    table = maeprobe.attention_distance(model, images32, module="decoder", mask_ratio=0.75, seed=0, device="cpu")
    got = torch.tensor(table.sort_values(["layer", "head"])["value"].to_numpy()).reshape(2, 3)
    torch.testing.assert_close(got, expected_dec.double(), atol=1e-4, rtol=1e-5)

    hf.config.mask_ratio = 0.0
    try:
        _, hf_enc, _ = hf_forward(hf, images32, torch.arange(16.0).expand(n, 16))
    finally:
        hf.config.mask_ratio = 0.75
    expected_enc = torch.stack([torch.stack([brute_force(hf_enc[l][i], list(range(16)), 1) for l in range(3)])
                                for i in range(n)]).mean(0)
    table = maeprobe.attention_distance(model, images32, units="patches", layers=[0, -1], device="cpu")
    got = table.sort_values(["layer", "head"])
    assert list(got["layer"].unique()) == [0, 2]
    got = torch.tensor(got["value"].to_numpy()).reshape(2, 4)
    torch.testing.assert_close(got, expected_enc[[0, 2]].double(), atol=1e-4, rtol=1e-5)


def _hand_cache(attn):
    cache = ActivationCache()
    cache.attention[("encoder", 0)] = attn
    noise = torch.zeros(attn.shape[0], 4)
    cache.mask = MaskInfo.from_noise(noise, 0.0, True)
    cache.image_indices = torch.arange(attn.shape[0])
    return cache


def test_hand_checked_two_by_two_grid():
    """2x2 grid, patch 3 px. Each patch query puts 0.5 on CLS and 0.5 on the diagonally opposite patch."""
    model = maeprobe.build_mae(img_size=6, patch_size=3, embed_dim=8, depth=1, num_heads=1, decoder_depth=0)
    attn = torch.zeros(1, 1, 5, 5)
    attn[0, 0, 0, 0] = 1.0
    for q, k in ((0, 3), (1, 2), (2, 1), (3, 0)):
        attn[0, 0, 1 + q, 0] = 0.5
        attn[0, 0, 1 + q, 1 + k] = 0.5
    plain = AttentionDistance(model)
    plain.update(_hand_cache(attn))
    assert plain.rows()[0]["value"] == pytest.approx(0.5 * 3 * math.sqrt(2))  # CLS mass counts as distance 0
    renorm = AttentionDistance(model, renormalize=True, units="patches")
    renorm.update(_hand_cache(attn))
    assert renorm.rows()[0]["value"] == pytest.approx(math.sqrt(2))
