"""Fourier analysis of token features (``fourier``): Δ log amplitude along the half diagonal, relative to DC.

The oracle is the notebooks' code (xxxnell/how-do-vits-work ``fourier_analysis.ipynb``; naver-ai/cl-vs-mim
``get_fourier_latents``) written again in numpy: the whole 2-D FFT, ln(|F| + 1e-6), roll by h/2, mean over the batch
and channels, ``diag()[h/2:]``, minus the DC entry. Hand-made maps check it by formula: a constant map has energy at
DC only, a cosine along the diagonal at its own frequency, a checkerboard at (π, π)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import maeprobe
from maeprobe import api
from maeprobe.capture import ActivationCache, CaptureRequest, capture
from maeprobe.errors import MaeprobeError
from maeprobe.metrics.fourier import FeatureFourier, delta_log_amplitude

EPS = 1e-6


def notebook_curve(maps: np.ndarray) -> np.ndarray:
    """The notebooks' steps in numpy on feature maps [B, h, w, D]: one curve for the batch, [ceil(h / 2)]."""
    x = np.transpose(maps, (0, 3, 1, 2))  # b h w c -> b c h w
    h, w = x.shape[-2:]
    logs = np.log(np.abs(np.fft.fft2(x, axes=(-2, -1))) + EPS)  # fourier(x)
    shifted = np.roll(logs, shift=(h // 2, w // 2), axis=(-2, -1)).mean(axis=(0, 1))  # shift(x).mean(dim=(0, 1))
    half = np.diag(shifted)[h // 2:]  # only use the half-diagonal components
    return half - half[0]


@pytest.fixture(scope="module")
def model():
    """A random tiny MAE with a 6 x 6 patch grid (48 px, patch 8), three blocks, non-trivial weights."""
    torch.manual_seed(5)
    model = maeprobe.build_mae(img_size=48, patch_size=8, embed_dim=24, depth=3, num_heads=2, decoder_embed_dim=16,
                               decoder_depth=1, decoder_num_heads=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(2)
    return torch.nn.functional.interpolate(torch.randn(6, 3, 12, 12, generator=g), size=48, mode="bilinear")


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return maeprobe.save_checkpoint(model, tmp_path_factory.mktemp("fourier") / "tiny.pth")


# ----------------------------------------------------------------------------- the per-image function
def test_constant_map_has_energy_at_dc_only():
    h, c = 6, 2.5
    maps = torch.full((1, h, h, 4), c, dtype=torch.float64)
    got = delta_log_amplitude(maps)[0].numpy()
    expected = np.r_[0.0, np.full(h // 2 - 1, math.log(EPS) - math.log(c * h * h + EPS))]  # |F| = c h^2 at DC only
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8)
    np.testing.assert_allclose(got, notebook_curve(maps.numpy()), rtol=0, atol=1e-8)


def test_diagonal_cosine_puts_its_energy_at_its_frequency():
    h, offset = 7, 1.0  # odd grid: the half diagonal runs k = 0..3, the last at 6/7 pi per axis
    k0 = h // 2
    m = np.arange(h)
    wave = offset + np.cos(2 * np.pi * k0 * (m[:, None] + m[None, :]) / h)  # F = h^2/2 at (k0, k0), h^2 at DC
    maps = torch.as_tensor(np.repeat(wave[None, :, :, None], 3, axis=-1))
    got = delta_log_amplitude(maps)[0].numpy()
    floor = math.log(EPS) - math.log(offset * h * h + EPS)
    np.testing.assert_allclose(got, [0.0, floor, floor, math.log(h * h / 2 + EPS) - math.log(h * h + EPS)], atol=1e-6)
    np.testing.assert_allclose(got, notebook_curve(maps.numpy()), rtol=0, atol=1e-8)


def test_checkerboard_energy_sits_at_pi():
    # odd grid: (-1)^(m+n) is not periodic on 5 x 5, its energy peaks at the highest diagonal frequency (0.8 pi)
    odd = torch.as_tensor((-1.0) ** np.add.outer(np.arange(5), np.arange(5)))[None, :, :, None].repeat(1, 1, 1, 2)
    curve = delta_log_amplitude(odd)[0].numpy()
    assert np.argmax(curve) == len(curve) - 1 and curve[-1] > 0
    np.testing.assert_allclose(curve, notebook_curve(odd.numpy()), rtol=0, atol=1e-9)
    # even grid: its whole energy is at (pi, pi), the Nyquist entry, which the notebooks' half diagonal leaves out
    even = 0.5 + torch.as_tensor((-1.0) ** np.add.outer(np.arange(6), np.arange(6)))[None, :, :, None]
    spectrum = np.abs(np.fft.fft2(even[0, :, :, 0].numpy()))
    assert spectrum[3, 3] == pytest.approx(36) and spectrum[0, 0] == pytest.approx(18)
    assert np.count_nonzero(spectrum > 1e-9) == 2
    got = delta_log_amplitude(even)[0].numpy()
    np.testing.assert_allclose(got, [0.0, *[math.log(EPS) - math.log(18 + EPS)] * 2], atol=1e-8)


@pytest.mark.parametrize("h", [5, 6])
def test_random_maps_match_the_notebook(h):
    maps = torch.randn(4, h, h, 8, generator=torch.Generator().manual_seed(h), dtype=torch.float64)
    per_image = delta_log_amplitude(maps).numpy()  # [B, K]
    np.testing.assert_allclose(per_image.mean(0), notebook_curve(maps.numpy()), rtol=0, atol=1e-10)
    for b in range(4):
        np.testing.assert_allclose(per_image[b], notebook_curve(maps[b:b + 1].numpy()), rtol=0, atol=1e-10)


def test_amplitude_average_is_the_log_of_the_channel_mean():
    maps = torch.randn(2, 6, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    amp = np.abs(np.fft.fft2(np.transpose(maps.numpy(), (0, 3, 1, 2)), axes=(-2, -1)))  # [B, D, h, w]
    diag = np.stack([amp[:, :, k, k] for k in range(3)], -1).mean(1)  # [B, K]
    expected = np.log(diag + EPS) - np.log(diag[:, :1] + EPS)
    np.testing.assert_allclose(delta_log_amplitude(maps, "amplitude").numpy(), expected, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- the metric on a model
def test_rows_match_numpy_on_captured_block_outputs(model, images):
    with capture(model, CaptureRequest.of(features={"encoder": [0, 1, 2]})) as cache, torch.no_grad():
        model.forward_encoder(images, 0.0)
        outputs = {layer: cache.features[("encoder", layer)].double().numpy() for layer in range(3)}
    table = api.fourier_spectrum(model, images, bootstrap=0, batch_size=4, device="cpu")
    curves = table[table["metric"] == "feature_fourier_by_frequency"].sort_values(["layer", "frequency_index"])
    summary = table[table["metric"] == "feature_fourier"].sort_values("layer")
    P = model.num_prefix_tokens
    for layer, out in outputs.items():
        maps = out[:, P:].reshape(len(images), 6, 6, -1)  # b (h w) c -> b h w c, CLS dropped
        expected = notebook_curve(maps)
        part = curves[curves["layer"] == layer]
        np.testing.assert_allclose(part["value"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(part["frequency"].to_numpy(), [0, 1 / 3, 2 / 3])
        np.testing.assert_allclose(summary[summary["layer"] == layer]["value"], expected[-1], rtol=1e-5, atol=1e-6)
    assert (summary["frequency_index"] == 2).all() and (table["n_images"] == 6).all()
    assert (table["channel_average"] == "log").all() and (table["grid"] == 6).all()


def _cache(model, images, indices):
    with capture(model, CaptureRequest.of(features={"encoder": [0, 2]})) as cache, torch.no_grad():
        model.forward_encoder(images[indices], 0.0)
        out = ActivationCache(features=dict(cache.features))
    out.image_indices = torch.as_tensor(indices)
    return out


def test_merge_of_two_halves_equals_one_pass(model, images):
    whole, first, second = (FeatureFourier(model, layers=[0, 2], bootstrap=30, bootstrap_seed=4) for _ in range(3))
    whole.update(_cache(model, images, [0, 1, 2, 3, 4, 5]))
    first.update(_cache(model, images, [0, 1, 2]))  # the indices are global, as each process of a gloo run has them
    second.update(_cache(model, images, [3, 4, 5]))
    merged = first.merge(second)
    a, b = pd.DataFrame(whole.rows()), pd.DataFrame(merged.rows())
    for key in ("value", "std", "ci_low", "ci_high"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-12)
    assert (b["n_images"] == 6).all() and merged.n_units == 6


def test_bootstrap_interval_is_present(model, images):
    table = api.fourier_spectrum(model, images, bootstrap=50, device="cpu")
    off_dc = table[table["frequency_index"] > 0]
    assert off_dc[["ci_low", "ci_high"]].notna().all().all()
    assert (off_dc["ci_low"] <= off_dc["value"]).all() and (off_dc["value"] <= off_dc["ci_high"]).all()
    assert (off_dc["ci_high"] > off_dc["ci_low"]).all()
    assert (table.loc[table["frequency_index"] == 0, ["value", "ci_low", "ci_high"]] == 0).all().all()


def test_a_mask_is_refused(model, images):
    with pytest.raises(MaeprobeError, match="mask_ratio"):
        api.fourier_spectrum(model, images, mask_ratio=0.5, bootstrap=0, device="cpu")


def test_a_grid_without_frequencies_is_refused():
    small = maeprobe.build_mae(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(MaeprobeError, match="3 x 3"):
        FeatureFourier(small)


# ----------------------------------------------------------------------------- run, the CLI, the figure
def test_run_gives_the_functions_rows(ckpt, images):
    direct = api.fourier_spectrum(str(ckpt), images, bootstrap=20, channel_average="amplitude")
    via_run = api.run(str(ckpt), images, metrics=["fourier"], bootstrap=20, channel_average="amplitude")
    cols = ["metric", "layer", "frequency_index"]
    a, b = direct.sort_values(cols), via_run.sort_values(cols)
    np.testing.assert_allclose(a[["value", "ci_low", "ci_high"]], b[["value", "ci_low", "ci_high"]], rtol=0, atol=0)
    assert set(via_run["metric"]) == {"feature_fourier", "feature_fourier_by_frequency"}
    assert (via_run["channel_average"] == "amplitude").all()


def test_cli_command_and_run(ckpt, image_folder, tmp_path):
    from maeprobe.cli import app

    out = tmp_path / "f.csv"
    result = CliRunner().invoke(app, ["fourier", str(ckpt), "--images", str(image_folder / "val"), "--bootstrap", "0",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "highest diagonal frequency" in result.output
    table = pd.read_csv(out)
    assert len(table[table["metric"] == "feature_fourier"]) == 3 and len(table) == 3 * 4
    out2 = tmp_path / "r.csv"
    result = CliRunner().invoke(app, ["run", str(ckpt), "--metrics", "fourier", "--channel-average", "amplitude",
                                      "--images", str(image_folder / "val"), "--bootstrap", "0", "--out", str(out2)])
    assert result.exit_code == 0, result.output
    assert (pd.read_csv(out2)["channel_average"] == "amplitude").all()


def test_figure_draws_the_per_layer_summary(model, images, tmp_path):
    first = api.fourier_spectrum(model, images, bootstrap=30, device="cpu").assign(checkpoint="model A")
    second = api.fourier_spectrum(model, images.flip(-1), bootstrap=30, device="cpu").assign(checkpoint="model B")
    paths = maeprobe.make_figures(pd.concat([first, second]), tmp_path)  # drawn by default
    assert {p.name for p in paths} == {"fourier.png", "fourier.pdf"}
    assert (tmp_path / "fourier.png").stat().st_size > 10_000
    mixed = pd.concat([first, second.assign(channel_average="amplitude")])
    with pytest.raises(MaeprobeError, match="channel_average"):
        maeprobe.make_figures(mixed, tmp_path / "mixed", figures=["fourier"])
