"""Eq. 8's density, flags, centring and per-image quantile against hand-made features and numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from maeprobe.metrics.semantic_similarity import affinity, density, w_flag


def numpy_cosines(x: np.ndarray) -> np.ndarray:
    f = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return f @ f.T


def test_density_counts_entries_above_tau_for_any_eps():
    """W holds 1 (cosine > tau) or eps. With eps = 0.6 the old threshold (W > 0.5) counted every entry."""
    x = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]])  # two similar tokens and one orthogonal
    cos = numpy_cosines(x[0].numpy())
    above = float((cos > 0.15).mean())  # 5 of 9 entries
    for eps in (1e-5, 0.3, 0.6, 0.9):
        W = affinity(x, tau=0.15, eps=eps)
        assert density(W, True, eps).item() == pytest.approx(above)
    assert density(affinity(x, tau=None), False).item() == pytest.approx(cos.mean(), rel=1e-6)


def test_flag_names_the_side_that_has_no_structure():
    assert w_flag(0.5, 0.5) == ""
    assert w_flag(0.99, 0.5) == "decoder saturated"
    assert w_flag(0.01, 0.99) == "reference saturated; decoder empty"  # before: 'empty', read as the reference's
    assert w_flag(0.5, 0.01) == "reference empty"


def test_centring_removes_a_common_component():
    """Tokens = a large shared vector + small distinct ones: every raw cosine exceeds tau (saturated W); after
    subtracting the image's mean token the cosines are numpy's cosines of the centred tokens."""
    rng = np.random.default_rng(0)
    small = rng.normal(size=(6, 8))
    tokens = small + 20.0
    raw = affinity(torch.tensor(tokens[None]), tau=0.15)
    assert density(raw, True).item() == 1.0
    centred = affinity(torch.tensor(tokens[None]), tau=None, center=True)[0].numpy()
    np.testing.assert_allclose(centred, numpy_cosines(tokens - tokens.mean(0)), atol=1e-5)


def test_tau_quantile_is_per_image():
    """Each image gets its own tau = the q-quantile of its cosines, so the density is about 1 - q on each image
    whatever its scale of cosines."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 4))
    b = a + 5.0  # the same tokens shifted: cosines all high
    x = torch.tensor(np.stack([a, b]))
    W = affinity(x, tau_quantile=0.7)
    for i, img in enumerate((a, b)):
        cos = numpy_cosines(img)
        tau = np.quantile(cos.ravel(), 0.7)
        np.testing.assert_array_equal(W[i].numpy() == 1.0, cos > tau + 0.0)
    got = density(W, True).numpy()
    assert np.all(np.abs(got - 0.3) < 0.06)
