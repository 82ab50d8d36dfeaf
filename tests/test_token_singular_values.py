"""Singular values of token representations (``token-svd``): per image the spectrum of its patch tokens'
covariance, log-scaled, averaged over images.

The oracle is numpy on the same tokens: ``np.cov`` over the tokens of one image (variables the channels, N - 1),
``np.linalg.svd`` of it, the log of the first min(N - 1, D) values, the mean over images; for ``svd_matrix='tokens'``
the singular values of the token matrix itself. Hand-checked cases: tokens on two orthogonal directions."""
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
from maeprobe.metrics.token_singular_values import TokenSingularValues, log_singular_values


def numpy_log_spectrum(tokens: np.ndarray, svd_matrix: str = "covariance") -> np.ndarray:
    """[B, N, D] -> [B, r] with numpy, image by image."""
    out = []
    for z in tokens:
        N, D = z.shape
        if svd_matrix == "covariance":
            s = np.linalg.svd(np.cov(z, rowvar=False), compute_uv=False)[:min(N - 1, D)]
        else:
            s = np.linalg.svd(z, compute_uv=False)[:min(N, D)]
        out.append(np.log(s))
    return np.stack(out)


@pytest.fixture(scope="module")
def model():
    """A random tiny MAE: 40 px, patch 8 (5 x 5 = 25 patch tokens), width 16 (so r = 16), three blocks."""
    torch.manual_seed(7)
    model = maeprobe.build_mae(img_size=40, patch_size=8, embed_dim=16, depth=3, num_heads=2, decoder_embed_dim=16,
                               decoder_depth=1, decoder_num_heads=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(3)
    return torch.nn.functional.interpolate(torch.randn(6, 3, 10, 10, generator=g), size=40, mode="bilinear")


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return maeprobe.save_checkpoint(model, tmp_path_factory.mktemp("tsvd") / "tiny.pth")


# ----------------------------------------------------------------------------- the per-image function
def test_two_orthogonal_directions_by_hand():
    # 4 tokens: +-2 e1 and +-1 e2 in 3 channels; mean 0, covariance diag(8, 2, 0) / 3
    z = torch.tensor([[[2.0, 0, 0], [-2.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]], dtype=torch.float64)
    got = log_singular_values(z)[0].numpy()
    np.testing.assert_allclose(got[:2], [math.log(8 / 3), math.log(2 / 3)], rtol=1e-12)
    assert got.shape == (3,) and got[2] < -30  # rank 2: the third is zero up to rounding
    tokens = log_singular_values(z, "tokens")[0].numpy()  # singular values of the matrix: sqrt(8), sqrt(2), 0
    np.testing.assert_allclose(tokens[:2], [math.log(math.sqrt(8)), math.log(math.sqrt(2))], rtol=1e-12)


@pytest.mark.parametrize("svd_matrix", ["covariance", "tokens"])
@pytest.mark.parametrize("n,d", [(9, 5), (5, 9)])
def test_random_tokens_match_numpy(svd_matrix, n, d):
    z = torch.randn(3, n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64) + 0.5
    np.testing.assert_allclose(log_singular_values(z, svd_matrix).numpy(), numpy_log_spectrum(z.numpy(), svd_matrix),
                               rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- the metric on a model
def test_rows_match_numpy_on_captured_block_outputs(model, images):
    with capture(model, CaptureRequest.of(features={"encoder": [0, 1, 2]})) as cache, torch.no_grad():
        model.forward_encoder(images, 0.0)
        outputs = {layer: cache.features[("encoder", layer)].double().numpy() for layer in range(3)}
    table = api.token_singular_values(model, images, bootstrap=0, batch_size=4, device="cpu")
    assert len(table) == 3 * 16 and (table["n_images"] == 6).all() and (table["svd_matrix"] == "covariance").all()
    P = model.num_prefix_tokens
    for layer, out in outputs.items():
        expected = numpy_log_spectrum(out[:, P:]).mean(0)  # CLS dropped; mean over images of the logs
        part = table[table["layer"] == layer].sort_values("component")
        np.testing.assert_allclose(part["value"].to_numpy(), expected, rtol=1e-5, atol=1e-5)
        assert part["component"].tolist() == list(range(16))


def _cache(model, images, indices):
    with capture(model, CaptureRequest.of(features={"encoder": [1, 2]})) as cache, torch.no_grad():
        model.forward_encoder(images[indices], 0.0)
        out = ActivationCache(features=dict(cache.features))
    out.image_indices = torch.as_tensor(indices)
    return out


def test_merge_of_two_halves_equals_one_pass(model, images):
    whole, first, second = (TokenSingularValues(model, layers=[1, 2], bootstrap=30, bootstrap_seed=2)
                            for _ in range(3))
    whole.update(_cache(model, images, [0, 1, 2, 3, 4, 5]))
    first.update(_cache(model, images, [0, 1, 2, 3]))  # global indices, as each process of a gloo run has them
    second.update(_cache(model, images, [4, 5]))
    merged = first.merge(second)
    a, b = pd.DataFrame(whole.rows()), pd.DataFrame(merged.rows())
    for key in ("value", "std", "ci_low", "ci_high"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-12)
    assert (b["n_images"] == 6).all() and merged.n_units == 6


def test_bootstrap_interval_is_present(model, images):
    table = api.token_singular_values(model, images, layers=[2], bootstrap=50, device="cpu")
    assert table[["ci_low", "ci_high"]].notna().all().all()
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    assert (table["ci_high"] > table["ci_low"]).all()


def test_a_mask_is_refused(model, images):
    with pytest.raises(MaeprobeError, match="mask_ratio"):
        api.token_singular_values(model, images, mask_ratio=0.25, bootstrap=0, device="cpu")


# ----------------------------------------------------------------------------- run and the CLI
def test_run_gives_the_functions_rows(ckpt, images):
    direct = api.token_singular_values(str(ckpt), images, bootstrap=20, svd_matrix="tokens")
    via_run = api.run(str(ckpt), images, metrics=["token-svd"], bootstrap=20, svd_matrix="tokens")
    cols = ["layer", "component"]
    a, b = direct.sort_values(cols), via_run.sort_values(cols)
    np.testing.assert_allclose(a[["value", "ci_low", "ci_high"]], b[["value", "ci_low", "ci_high"]], rtol=0, atol=0)
    assert (via_run["svd_matrix"] == "tokens").all() and len(via_run) == 3 * 16


def test_cli_command_and_run(ckpt, image_folder, tmp_path):
    from maeprobe.cli import app

    out = tmp_path / "s.csv"
    result = CliRunner().invoke(app, ["token-svd", str(ckpt), "--images", str(image_folder / "val"), "--layers", "2",
                                      "--bootstrap", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "mean log singular value" in result.output
    table = pd.read_csv(out)
    assert set(table["layer"]) == {2} and len(table) == 16
    out2 = tmp_path / "r.csv"
    result = CliRunner().invoke(app, ["run", str(ckpt), "--metrics", "token-svd", "--svd-matrix", "tokens",
                                      "--images", str(image_folder / "val"), "--bootstrap", "0", "--out", str(out2)])
    assert result.exit_code == 0, result.output
    assert (pd.read_csv(out2)["svd_matrix"] == "tokens").all()
