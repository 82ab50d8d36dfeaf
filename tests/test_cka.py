"""Linear CKA between every layer of two models (issue 29, part 3), against independent computations.

Oracles: numpy linear CKA of the full feature matrices (Kornblith et al.'s ``feature_space_linear_cka``: centre,
||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)) on block outputs captured directly; for the minibatch estimator,
HSIC_1 written with Szekely & Rizzo's U-centring (the other formulation of the unbiased estimator, not Song et al.'s
formula that the metric uses), averaged over the same batches; a brute-force delete-a-group jackknife recomputed on
the data without each group."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_mae
from scipy.stats import t as student_t
from typer.testing import CliRunner

import maeprobe
from maeprobe import api
from maeprobe.capture import CaptureRequest, capture
from maeprobe.metrics.cka import LinearCKA

# ----------------------------------------------------------------------------- numpy oracles


def np_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def np_u_centred(K: np.ndarray) -> np.ndarray:
    """Szekely & Rizzo (2014) U-centring of a Gram matrix (zero diagonal)."""
    n = K.shape[0]
    K = K.copy()
    np.fill_diagonal(K, 0)
    U = K - K.sum(0)[None, :] / (n - 2) - K.sum(1)[:, None] / (n - 2) + K.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(U, 0)
    return U


def np_hsic1(x: np.ndarray, y: np.ndarray) -> float:
    n = x.shape[0]
    return float((np_u_centred(x @ x.T) * np_u_centred(y @ y.T)).sum() / (n * (n - 3)))


def np_minibatch_cka(xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    """Nguyen et al.: mean over batches of HSIC_1(K, L) / sqrt(mean HSIC_1(K, K) * mean HSIC_1(L, L))."""
    xy = np.mean([np_hsic1(x, y) for x, y in zip(xs, ys)])
    xx = np.mean([np_hsic1(x, x) for x in xs])
    yy = np.mean([np_hsic1(y, y) for y in ys])
    return xy / np.sqrt(xx * yy)


def block_outputs(model, images) -> dict[int, np.ndarray]:
    """Every encoder block's output [n, tokens, width] of the unmasked images, float64."""
    layers = list(range(len(model.blocks)))
    with capture(model, CaptureRequest.of(features={"encoder": layers})) as cache, torch.no_grad():
        model.forward_encoder(images, 0.0)
        return {layer: cache.features[("encoder", layer)].double().numpy() for layer in layers}


def pooled(tokens: np.ndarray, features: str, num_prefix: int = 1) -> np.ndarray:
    if features == "cls":
        return tokens[:, 0]
    if features == "mean":
        return tokens[:, num_prefix:].mean(1)
    return tokens.reshape(tokens.shape[0], -1)  # all tokens flattened


def matrix_of(table: pd.DataFrame) -> np.ndarray:
    return table.pivot(index="layer", columns="ref_layer", values="value").to_numpy(dtype=float)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images():
    """Twelve smooth random images [12, 3, 32, 32] (normalised)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def model():
    return tiny_mae(depth=3, seed=0).eval()


@pytest.fixture(scope="module")
def reference():
    """Another architecture: 2 blocks, width 32, 2 heads."""
    return tiny_mae(depth=2, seed=1, embed_dim=32, num_heads=2).eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, model, reference):
    folder = tmp_path_factory.mktemp("cka")
    return (str(maeprobe.save_checkpoint(model, folder / "tiny.pth")),
            str(maeprobe.save_checkpoint(reference, folder / "other.pth")))


# ----------------------------------------------------------------------------- against numpy on the full features


@pytest.mark.parametrize("features", ["cls", "mean"])
def test_exact_equals_numpy_cka_of_the_full_features(model, images, features):
    table = api.cka(model, images, features=features, bootstrap=0, batch_size=5)  # batches of 5, 5, 2
    feats = {k: pooled(v, features) for k, v in block_outputs(model, images).items()}
    expected = np.array([[np_linear_cka(feats[a], feats[b]) for b in range(3)] for a in range(3)])
    np.testing.assert_allclose(matrix_of(table), expected, rtol=0, atol=1e-6)
    assert (table["reference"] == "(itself)").all() and (table["n_images"] == 12).all()
    assert table["head"].isna().all() and set(table["estimator"]) == {"exact"}


def test_exact_with_a_reference_equals_numpy(model, reference, images):
    table = api.cka(model, images, reference=reference, bootstrap=0, batch_size=4)
    mine = {k: pooled(v, "mean") for k, v in block_outputs(model, images).items()}
    theirs = {k: pooled(v, "mean") for k, v in block_outputs(reference, images).items()}
    expected = np.array([[np_linear_cka(mine[a], theirs[b]) for b in range(2)] for a in range(3)])
    assert matrix_of(table).shape == (3, 2)
    np.testing.assert_allclose(matrix_of(table), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("features", ["mean", "tokens"])
def test_minibatch_equals_numpy_unbiased_hsic_over_the_same_batches(model, reference, images, features):
    table = api.cka(model, images, reference=reference, estimator="minibatch", features=features, bootstrap=0,
                    batch_size=4)
    mine = {k: pooled(v, features) for k, v in block_outputs(model, images).items()}
    theirs = {k: pooled(v, features) for k, v in block_outputs(reference, images).items()}
    batches = [slice(0, 4), slice(4, 8), slice(8, 12)]
    expected = np.array([[np_minibatch_cka([mine[a][s] for s in batches], [theirs[b][s] for s in batches])
                          for b in range(2)] for a in range(3)])
    np.testing.assert_allclose(matrix_of(table), expected, rtol=0, atol=1e-9)
    assert (table["minibatch_size"] == 4).all() and (table["minibatches"] == 3).all()


def test_minibatch_leaves_out_a_batch_too_small_for_hsic1(model, images):
    with pytest.warns(UserWarning, match="2 image"):
        table = api.cka(model, images, estimator="minibatch", bootstrap=0, batch_size=5)  # 5, 5, then 2
    feats = {k: pooled(v, "mean") for k, v in block_outputs(model, images).items()}
    batches = [slice(0, 5), slice(5, 10)]
    expected = np_minibatch_cka([feats[0][s] for s in batches], [feats[2][s] for s in batches])
    assert table[(table["layer"] == 0) & (table["ref_layer"] == 2)]["value"].item() == pytest.approx(expected, abs=1e-9)
    assert (table["n_images"] == 10).all() and (table["skipped_images"] == 2).all()


# ----------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("estimator", ["exact", "minibatch"])
def test_orthogonal_transform_and_scaling_give_one(estimator):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)) @ rng.normal(size=(8, 8))  # correlated features
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    reducer = LinearCKA(1, 8, 3, 8, estimator=estimator)
    for lo in range(0, 64, 16):
        xa = torch.tensor(x[None, lo:lo + 16])  # [1, 16, 8]
        xb = torch.tensor(np.stack([x[lo:lo + 16] @ q, 3.7 * x[lo:lo + 16], x[lo:lo + 16] + 5.0]))  # [3, 16, 8]
        reducer.add_features(xa, xb, torch.arange(lo, lo + 16))
    np.testing.assert_allclose(reducer.matrix(), np.ones((1, 3)), rtol=0, atol=1e-10)


def test_independent_noise_is_near_zero_with_the_unbiased_estimator():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4000, 4)), rng.normal(size=(4000, 4))
    minibatch, exact = LinearCKA(1, 4, 1, 4, estimator="minibatch"), LinearCKA(1, 4, 1, 4, estimator="exact")
    for lo in range(0, 4000, 16):
        for reducer in (minibatch, exact):
            reducer.add_features(torch.tensor(x[None, lo:lo + 16]), torch.tensor(y[None, lo:lo + 16]),
                                 torch.arange(lo, lo + 16))
    assert abs(minibatch.matrix().item()) < 0.03
    assert exact.matrix().item() < 0.01  # all 4000 images: the biased estimate's bias ~ width / n is small
    # on batches of 16 the biased estimator sits far from 0 (~ width / (n + width)): the unbiased one is what helps
    biased = np.mean([np_linear_cka(x[lo:lo + 16], y[lo:lo + 16]) for lo in range(0, 4000, 16)])
    assert biased > 0.1


# ----------------------------------------------------------------------------- merging and intervals


def _synthetic(n=24, seed=2):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 6))
    xa = np.stack([base, np.tanh(base @ rng.normal(size=(6, 6)))])  # [2, n, 6]
    xb = np.stack([base[:, :5] + rng.normal(size=(n, 5)) * s for s in (0.3, 1.0, 3.0)])  # [3, n, 5]
    return xa, xb


@pytest.mark.parametrize("estimator", ["exact", "minibatch"])
@pytest.mark.parametrize("self_mode", [False, True])
def test_merge_of_two_shards_equals_one_pass(estimator, self_mode, monkeypatch):
    xa, xb = _synthetic()
    units = torch.arange(24) // 2  # two images per independent unit

    def reducer():
        return LinearCKA(2, 6, None if self_mode else 3, None if self_mode else 5, estimator=estimator, groups=4)

    shards = [reducer(), reducer()]  # exact: features buffered until the merge
    monkeypatch.setattr("maeprobe.metrics.cka.BUFFER_BYTES", 1)
    one = reducer()  # exact: every batch added to the sums at once
    for k, lo in enumerate(range(0, 24, 4)):  # batches of 4; shard k % 2 takes batch k, as 2 processes would
        args = (torch.tensor(xa[:, lo:lo + 4]), None if self_mode else torch.tensor(xb[:, lo:lo + 4]), units[lo:lo + 4])
        one.add_features(*args)
        shards[k % 2].add_features(*args)
    merged = shards[0].merge(shards[1])
    np.testing.assert_allclose(merged.matrix(), one.matrix(), rtol=0, atol=1e-12)
    for got, want in zip(merged.interval(), one.interval()):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert merged.n_units == 12


@pytest.mark.parametrize("estimator", ["exact", "minibatch"])
def test_jackknife_equals_brute_force_deletion_of_groups(estimator):
    xa, xb = _synthetic(n=30, seed=3)
    units = np.arange(30) // 3  # 10 units of 3 images; group = unit % 4
    reducer = LinearCKA(2, 6, 3, 5, estimator=estimator, groups=4)
    batches = [np.arange(lo, lo + 6) for lo in range(0, 30, 6)]
    for idx in batches:
        reducer.add_features(torch.tensor(xa[:, idx]), torch.tensor(xb[:, idx]), torch.tensor(units[idx]))

    def statistic(keep: np.ndarray) -> np.ndarray:
        if estimator == "exact":
            return np.array([[np_linear_cka(xa[a][keep], xb[b][keep]) for b in range(3)] for a in range(2)])
        parts = [idx[keep[idx]] for idx in batches]
        parts = [p for p in parts if len(p) >= 4]
        return np.array([[np_minibatch_cka([xa[a][p] for p in parts], [xb[b][p] for p in parts]) for b in range(3)]
                         for a in range(2)])

    estimate = statistic(np.ones(30, dtype=bool))
    np.testing.assert_allclose(reducer.matrix(), estimate, rtol=0, atol=1e-9)
    reps = np.array([statistic(units % 4 != g) for g in range(4)])  # [4, 2, 3]
    half = student_t.ppf(0.975, 3) * np.sqrt(3 / 4 * ((reps - reps.mean(0)) ** 2).sum(0))
    low, high = reducer.interval()
    np.testing.assert_allclose(low, estimate - half, rtol=0, atol=1e-9)
    np.testing.assert_allclose(high, estimate + half, rtol=0, atol=1e-9)
    assert (half > 1e-4).all()


# ----------------------------------------------------------------------------- run, one pass, the CLI


def test_run_with_and_without_a_reference(ckpts, images):
    tiny, other = ckpts
    alone = api.run(tiny, images, metrics=["cka"], bootstrap=20)
    assert len(alone) == 9 and (alone["reference"] == "(itself)").all()
    np.testing.assert_allclose(np.diag(matrix_of(alone)), 1.0, atol=1e-12)
    assert alone["ci_low"].notna().all() and (alone["n_units"] == 12).all()
    # the same checkpoint as an explicit reference (a second model run beside it) gives the same matrix
    twice = api.run(tiny, images, metrics=["cka"], reference=tiny, bootstrap=20)
    assert (twice["reference"] == "tiny.pth").all()
    np.testing.assert_allclose(matrix_of(twice), matrix_of(alone), rtol=0, atol=1e-9)
    against = api.run(tiny, images, metrics=["cka"], reference=other, bootstrap=0)
    assert sorted(set(zip(against["layer"], against["ref_layer"]))) == [(a, b) for a in range(3) for b in range(2)]
    assert (against["reference"] == "other.pth").all()


def test_without_a_reference_the_model_runs_once_per_batch(model, images):
    calls = []
    handle = model.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        api.cka(model, images, bootstrap=0, batch_size=4)
        alone = len(calls)
        calls.clear()
        api.cka(model, images, reference=model, bootstrap=0, batch_size=4)  # a copy with the same hooks runs too
        with_reference = len(calls)
    finally:
        handle.remove()
    assert alone == 3 and with_reference == 6


def test_cli_with_and_without_a_reference(ckpts, tmp_path):
    from maeprobe.cli import app

    tiny, other = ckpts
    out = tmp_path / "alone.csv"
    result = CliRunner().invoke(app, ["cka", tiny, "--bootstrap", "0", "--layers", "0,2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert sorted(set(zip(table["layer"], table["ref_layer"]))) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert "linear CKA" in result.output
    out = tmp_path / "ref.csv"
    result = CliRunner().invoke(app, ["cka", tiny, "--ref", other, "--ref-layers", "1", "--estimator", "minibatch",
                                      "--features", "tokens", "--batch-size", "4", "--bootstrap", "0", "--out",
                                      str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert set(table["ref_layer"]) == {1} and set(table["layer"]) == {0, 1, 2}
    assert set(table["reference"]) == {"other.pth"} and set(table["features"]) == {"tokens"}


# ----------------------------------------------------------------------------- the heat map


def test_heatmap_one_panel_per_pair_numbered_as_the_table(ckpts, images, tmp_path, captured):
    tiny, other = ckpts
    alone = api.run(tiny, images, metrics=["cka"], layers=[0, 2], bootstrap=10)
    against = api.run(tiny, images, metrics=["cka"], reference=other, ref_layers=[1], bootstrap=10)
    paths = maeprobe.make_figures(pd.concat([alone, against], ignore_index=True), tmp_path, figures=["cka"])
    assert [p.name for p in paths] == ["cka.png", "cka.pdf"]
    fig = captured[-1]
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    titles = [ax.get_title().replace("\n", " ") for ax in panels]
    assert "tiny.pth vs tiny.pth (itself)" in titles[0] and "tiny.pth vs other.pth" in titles[1]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["0", "2"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["0", "2"]
    assert [t.get_text() for t in panels[1].get_xticklabels()] == ["1"]
    assert [t.get_text() for t in panels[1].get_yticklabels()] == ["0", "1", "2"]
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "linear CKA"]
    assert len(bars) == 2
    np.testing.assert_allclose(panels[1].images[0].get_array(), matrix_of(against), atol=1e-12)


def test_heatmap_files_are_written(ckpts, images, tmp_path):
    table = api.run(ckpts[0], images, metrics=["cka"], bootstrap=0)
    paths = maeprobe.make_figures(table, tmp_path)  # drawn by default
    assert {p.name for p in paths} == {"cka.png", "cka.pdf"} and all(p.stat().st_size > 0 for p in paths)


# ----------------------------------------------------------------------------- refusals


def test_refusals_are_one_line_and_name_the_parameter(model, reference, images, monkeypatch):
    with pytest.raises(maeprobe.MaeprobeError, match="estimator='minibatch'"):
        api.cka(model, images, features="tokens")
    with pytest.raises(maeprobe.MaeprobeError, match="ref_layers: applies to a reference"):
        api.cka(model, images, ref_layers=[0])
    with pytest.raises(maeprobe.MaeprobeError, match="features: expected"):
        api.cka(model, images, features="patch")
    monkeypatch.setenv("MAEPROBE_MAX_METRIC_MEMORY", "100000")  # the groups' sums of 3 x 2 pairs of width 48 / 32
    with pytest.raises(maeprobe.MaeprobeError, match="MAEPROBE_MAX_METRIC_MEMORY") as refused:
        api.cka(model, images, reference=reference, bootstrap=10)
    assert "\n" not in str(refused.value) and "bootstrap=0" in str(refused.value)
    api.cka(model, images, reference=reference, bootstrap=0, estimator="minibatch", batch_size=4)  # fits


def test_identical_images_have_no_variance_and_give_nan():
    """Eight copies of one image: the centred sums are float32 rounding of batched features (CKA was 1.07); every
    layer has no variance, so CKA is undefined (NaN), as the unbiased estimator says too."""
    torch.manual_seed(0)
    model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3)
    table = maeprobe.cka(model, torch.randn(1, 3, 32, 32).repeat(8, 1, 1, 1), bootstrap=0, device="cpu")
    assert table["value"].isna().all()


def test_heat_map_of_a_hand_edited_table_is_one_line(tmp_path):
    """NaN or infinite layer numbers, or thousands of distinct layers, are refused before any pivot (hostile review:
    25,000 distinct layers asked a 5 GB table; NaN was a pandas cast error)."""
    import pandas as pd

    base = {"metric": "cka", "module": "encoder", "head": float("nan"), "value": 0.5, "ci_low": 0.4, "ci_high": 0.6,
            "n_images": 8, "checkpoint": "a.pth", "reference": "(itself)", "features": "mean",
            "estimator": "exact", "minibatch_size": float("nan"), "mask_ratio": 0.0}
    for layer, ref_layer, text in ((float("nan"), 0, "without a layer number"), (0, float("inf"), "ref_layer column"),
                                   (None, None, "distinct layers")):
        rows = [dict(base, layer=layer, ref_layer=ref_layer)] if layer is not None or ref_layer is not None else \
            [dict(base, layer=i, ref_layer=i) for i in range(600)]
        with pytest.raises(maeprobe.MaeprobeError, match=text):
            maeprobe.make_figures(pd.DataFrame(rows), tmp_path / "f", figures=["cka"])
