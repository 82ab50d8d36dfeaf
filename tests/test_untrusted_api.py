"""The Python API's lower-level exports refuse bad arguments with one MaeprobeError (issue 27: they raised
TypeError, AttributeError or RuntimeError, or allocated what an argument asked for), and ``maeprobe.capture`` stays
callable after its module has been imported. Expectations are written out by hand, not taken from the code."""
from __future__ import annotations

import pytest
import torch

import maeprobe
import maeprobe.capture  # noqa: F401  (rebinds the package attribute to the module: the case that broke)
from maeprobe import MaeprobeError

TINY = dict(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)


@pytest.mark.parametrize("kwargs", [
    {"foo": 1}, {"depth": "2"}, {"depth": 2.0}, {"depth": -1}, {"embed_dim": True}, {"mlp_ratio": float("nan")},
    {"mlp_ratio": "4"}, {"img_size": 0}, {"img_size": 8, "patch_size": 16}, {"num_heads": 5},
    {"qkv_bias": 1}, {"act_layer": 3}, {"embed_dim": 12 * 10 ** 7, "num_heads": 12}, {"depth": 10 ** 6},
    {"img_size": 16 * 1000},
])
def test_build_mae_refuses_bad_settings_before_building(kwargs):
    with pytest.raises(MaeprobeError):
        maeprobe.build_mae(**{**TINY, **kwargs})


def test_build_mae_still_builds_what_it_should():
    model = maeprobe.build_mae(**TINY, decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2)
    assert model.config.num_patches == 4 and len(model.decoder_blocks) == 1
    assert maeprobe.build_mae(None, **TINY).config.depth == 1


@pytest.mark.parametrize("call", [
    lambda: maeprobe.mask_noise("4", 0), lambda: maeprobe.mask_noise(4.0, 0), lambda: maeprobe.mask_noise(0, 0),
    lambda: maeprobe.mask_noise(10 ** 12, 0), lambda: maeprobe.mask_noise(4, 0, batch_size=10 ** 12),
    lambda: maeprobe.mask_noise(4, 0.5), lambda: maeprobe.mask_noise(4, 2 ** 70),
    lambda: maeprobe.mask_noise(4, 0, shared=False, image_indices=[-1]),
    lambda: maeprobe.mask_noise(4, 0, shared=False, image_indices="ab"),
    lambda: maeprobe.mask_noise(4, 0, batch_size=1, shared=False, image_indices=[0, 1]),
    lambda: maeprobe.random_masking(torch.zeros(2, 3), 0.5),
    lambda: maeprobe.random_masking([[1.0]], 0.5),
    lambda: maeprobe.random_masking(torch.zeros(1, 4, 2), "0.5"),
    lambda: maeprobe.random_masking(torch.zeros(1, 4, 2), float("nan")),
    lambda: maeprobe.random_masking(torch.zeros(1, 4, 2), 1.0),
    lambda: maeprobe.random_masking(torch.zeros(1, 4, 2), 0.5, noise=torch.zeros(1, 5)),
    lambda: maeprobe.read_checkpoint(123), lambda: maeprobe.read_checkpoint(b"x.pth"),
    lambda: maeprobe.read_checkpoint(""), lambda: maeprobe.read_checkpoint(None),
    lambda: maeprobe.save_checkpoint("model", "x.pth"),
])
def test_lower_level_exports_refuse_in_one_error(call):
    with pytest.raises(MaeprobeError):
        call()


def test_masking_values_are_unchanged():
    """The seeded noise is torch.rand under manual_seed(seed) (a negative seed is the same 64-bit generator state as
    seed + 2^64, as torch has it), and random_masking keeps the lowest-noise patches."""
    expected = torch.rand(1, 6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(maeprobe.mask_noise(6, 7), expected)
    assert torch.equal(maeprobe.mask_noise(6, -3), torch.rand(1, 6, generator=torch.Generator().manual_seed(2 ** 64 - 3)))
    x = torch.arange(4.0).reshape(1, 4, 1)
    kept, mask, _ = maeprobe.random_masking(x, 0.5, noise=torch.tensor([[0.9, 0.1, 0.5, 0.2]]))
    assert kept.flatten().tolist() == [1.0, 3.0] and mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_run_probe_and_save_checkpoint_check_their_arguments(tmp_path):
    model = maeprobe.build_mae(**TINY)
    for reducers in ([1], [], "x", None):
        with pytest.raises(MaeprobeError):
            maeprobe.run_probe(model, reducers)
    with pytest.raises(MaeprobeError):
        maeprobe.run_probe("model", [])
    with pytest.raises(MaeprobeError):
        maeprobe.save_checkpoint(model, tmp_path / "m.pth", maeprobe={})
    assert not list(tmp_path.iterdir())


def test_capture_stays_callable_after_its_module_is_imported():
    model = maeprobe.build_mae(**TINY)
    request = maeprobe.CaptureRequest.of(attention={"encoder": [0]})
    with maeprobe.capture(model, request) as cache:
        model.forward_encoder(torch.zeros(1, 3, 32, 32))
    assert cache is not None and callable(maeprobe.capture)


@pytest.mark.parametrize("attention", [{"encoder": ["x"]}, {"encoder": "01"}, {"encoder": [True]}, {"body": [0]},
                                       {"encoder": 3}, [0]])
def test_capture_request_refuses_what_is_not_a_layer(attention):
    with pytest.raises(MaeprobeError):
        maeprobe.CaptureRequest.of(attention=attention)
