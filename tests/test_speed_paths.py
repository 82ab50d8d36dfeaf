"""The fast paths change no number: DataLoader workers, Pillow draft decoding, the Pillow transform, the early
stop of the forward pass; and progress output stays short when it is not a terminal."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import RECIPES
from PIL import Image
from torchvision.transforms import v2

import maeprobe
from maeprobe.capture import CaptureRequest, StopForward, capture, last_event
from maeprobe.data import make_transform, open_image
from maeprobe.train.config import load_recipe
from maeprobe.train.engine import pretrain_recipe

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(200, 150), (150, 200), (64, 64), (90, 300), (256, 256), (120, 80), (300, 200)]):
        smooth = Image.fromarray(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)).resize((w, h))
        smooth.save(folder / f"{i}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, decoder_embed_dim=32,
                              decoder_depth=2, decoder_num_heads=2)


def test_same_table_with_0_and_2_workers(jpeg_folder, tiny_model):
    kwargs = dict(metrics=["attn-distance", "decoder-attn-sim", "spectrum"], bootstrap=20, batch_size=3, device="cpu")
    serial = maeprobe.run([tiny_model], jpeg_folder, num_workers=0, **kwargs)
    parallel = maeprobe.run([tiny_model], jpeg_folder, num_workers=2, **kwargs)
    assert (serial["n_images"] == 7).all()
    for column in ("value", "ci_low", "ci_high"):
        np.testing.assert_array_equal(serial[column].to_numpy(), parallel[column].to_numpy())


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (64, 64), (100, 64), (63, 200)])
def test_transform_equals_torchvision(size):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    reference = v2.Compose([v2.Resize(64, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                            v2.CenterCrop(64), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(MEAN, STD)])(img)
    torch.testing.assert_close(make_transform(64, MEAN, STD)(img), reference, atol=1e-6, rtol=0)


def test_draft_decoding_is_used_only_when_much_larger_and_stays_close(jpeg_folder):
    big = jpeg_folder / "0.jpg"  # 200 x 150 for a 32 px model: decoded at 1/4 scale
    assert open_image(big, 32).size == (50, 38) and open_image(big).size == (200, 150)
    assert open_image(jpeg_folder / "5.jpg", 64).size == (120, 80)  # less than twice the size: full decode
    transform = make_transform(32, MEAN, STD)
    drafted, full = transform(open_image(big, 32)), transform(open_image(big))
    std = torch.tensor(STD).view(3, 1, 1)
    # DCT-domain downscaling vs decoding every pixel, then resizing: a few grey levels apart on average
    assert ((drafted - full) * std).abs().mean() < 0.05


def test_forward_stops_after_the_last_requested_tensor(tiny_model):
    request = CaptureRequest.of(attention={"encoder": [1]})
    assert last_event(request) == ("attention", "encoder", 1)
    assert last_event(request | CaptureRequest.of(features={"encoder": [1]})) == ("features", "encoder", 1)
    ran = []
    hooks = [tiny_model.blocks[1].mlp.register_forward_hook(lambda *a: ran.append("mlp1")),
             tiny_model.blocks[2].register_forward_hook(lambda *a: ran.append("block2")),
             tiny_model.norm.register_forward_hook(lambda *a: ran.append("norm"))]
    try:
        with capture(tiny_model, request, stop_after=last_event(request)) as cache, torch.inference_mode():
            with pytest.raises(StopForward):
                tiny_model.forward_encoder(torch.randn(2, 3, 32, 32), 0.0)
            assert cache.attention[("encoder", 1)].shape == (2, 3, 17, 17)
        assert ran == []
        table = maeprobe.attention_distance(tiny_model, torch.randn(2, 3, 32, 32), layers=[1], device="cpu")
        assert len(table) == 3 and ran == []  # the probe stops there too
    finally:
        for h in hooks:
            h.remove()


def _updates(text: str) -> int:
    return len([part for part in re.split(r"[\r\n]", text) if part.strip()])


def test_training_progress_off_a_terminal_stays_short(tmp_path, capsys):
    config = load_recipe(RECIPES / "tiny-mae.yaml", ["optim.epochs=2", "data.samples_per_epoch=32",
                                                     "optim.global_batch=8", f"run.output_dir={tmp_path}"])
    pretrain_recipe(config, progress=True)  # 8 steps over 2 epochs; stderr is captured, not a terminal
    err = capsys.readouterr().err
    assert "8/8" in err
    assert _updates(err) <= 5, err  # the start, the plan line, at most one refresh per 10 s, the end
