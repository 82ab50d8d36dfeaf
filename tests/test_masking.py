"""Masks follow the documented recipe exactly."""
import torch

import maeprobe
from maeprobe.masking import mask_noise


def test_shared_noise_is_the_documented_recipe():
    expected = torch.rand(1, 64, generator=torch.Generator().manual_seed(5))
    noise = mask_noise(64, seed=5, batch_size=3)
    assert noise.shape == (3, 64) and all(torch.equal(row, expected[0]) for row in noise)


def test_model_keeps_the_first_int_L_times_one_minus_r_of_argsort():
    model = maeprobe.build_mae("mae_vit_tiny_patch8_64").eval()
    noise = mask_noise(64, seed=11, batch_size=2)
    x = torch.randn(2, 3, 64, 64)
    for ratio in (0.75, 0.6, 0.3):
        _, mask, _ = model.forward_encoder(x, ratio, noise)
        kept = torch.argsort(noise[0])[: int(64 * (1 - ratio))]
        expected = torch.ones(64)
        expected[kept] = 0
        assert torch.equal(mask[0], expected) and torch.equal(mask[1], expected)


def test_ratio_zero_keeps_every_token_in_order():
    model = maeprobe.build_mae(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_depth=0)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        shuffled = model.forward_encoder(x, 0.0, torch.rand(1, 4))[0]
        plain = model.forward_encoder(x, 0.0, torch.arange(4.0)[None])[0]
    torch.testing.assert_close(shuffled, plain)


def test_per_image_masks_do_not_depend_on_batching():
    whole = mask_noise(16, seed=2, batch_size=5, shared=False, image_indices=range(5))
    one = mask_noise(16, seed=2, batch_size=1, shared=False, image_indices=[3])
    assert torch.equal(whole[3], one[0])
    assert not torch.equal(whole[0], whole[1])
    assert not torch.equal(mask_noise(16, seed=3, shared=False, image_indices=[2])[0], whole[2])
