"""Bootstrap intervals over independent units, against brute-force bootstraps of explicit lists.

Every replicate here is built by hand: the resampled images are written out as a list (an image drawn twice
appears twice) and the statistic is computed on that list by its definition. The replicates' weights come
from the documented generators (numpy seeded with the bootstrap seed and the unit index), re-created here,
not read from maeprobe. Simulations check that on exchangeable data the estimate sits mid-band.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import builders
from helpers.oracles import hf_decoder_outputs

import maeprobe
from maeprobe.masking import mask_noise

R = 60  # replicates


def poisson_draws(unit: int, seed: int, replicates: int = R) -> np.ndarray:
    """The documented Poisson(1) weights of one unit (metrics/base.py)."""
    return np.random.default_rng([seed, unit, 0x9E3779B9]).poisson(1.0, replicates)


def group_draws(num_groups: int, seed: int, replicates: int = R) -> np.ndarray:
    """The documented multinomial draws of the non-empty groups (metrics/base.py)."""
    rng = np.random.default_rng([seed, 0xB007])
    return rng.multinomial(num_groups, np.full(num_groups, 1.0 / num_groups), size=replicates)


def mean_cosine_of_list(vectors: list[np.ndarray], entries: list[tuple[int, int, int]]) -> float:
    """Eq. 7 on an explicit resampled list of (draw, unit, image) entries: mean cosine over ordered pairs of
    entries that the original sample could hold: two different images of one draw, or images of draws of two
    different units (two draws of one unit are copies of one photo, never paired)."""
    sims = [float(vectors[i] @ vectors[j] / np.linalg.norm(vectors[i]) / np.linalg.norm(vectors[j]))
            for (d, u, i), (e, v, j) in itertools.permutations(entries, 2)
            if (d == e and i != j) or (d != e and u != v)]
    return float(np.mean(sims)) if sims else np.nan


def brute_force_pairwise_interval(vectors, units, seed):
    """Groups = units (fewer than 16), drawn with the documented multinomial; replicate = Eq. 7 on the list."""
    units = np.asarray(units)
    order = list(dict.fromkeys(units.tolist()))  # units in order of first appearance = group order
    draws = group_draws(len(order), seed)
    reps = []
    for draw in draws:
        entries, d = [], 0
        for g, u in enumerate(order):
            for _ in range(draw[g]):
                entries += [(d, u, int(i)) for i in np.flatnonzero(units == u)]
                d += 1
        reps.append(mean_cosine_of_list(vectors, entries))  # NaN (left out) when the list has no pair
    return np.nanquantile(reps, 0.025), np.nanquantile(reps, 0.975), np.asarray(reps)


def test_pairwise_replicates_equal_explicit_lists():
    """``pairwise_bootstrap_replicates`` = Eq. 7 on every explicitly resampled list. The formula before this
    test removed only each slot's pair with itself (m_g N_g), keeping the pairs between copies: it fails here."""
    from maeprobe.metrics.base import pairwise_bootstrap_replicates

    rng = np.random.default_rng(0)
    vectors = [rng.random(7) for _ in range(9)]
    units = [0, 0, 1, 2, 2, 2, 3, 4, 4]
    unit_vectors = [v / np.linalg.norm(v) for v in vectors]
    sums = np.stack([sum(unit_vectors[i] for i in range(9) if units[i] == u) for u in range(5)])
    counts = np.bincount(units).astype(float)
    draws = group_draws(5, seed=11).astype(float)
    got = pairwise_bootstrap_replicates((sums @ sums.T)[None], counts, draws)[:, 0]
    _, _, expected = brute_force_pairwise_interval(vectors, units, seed=11)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_eq7_interval_resamples_units_as_explicit_lists(hf_mae, images32):
    """The whole metric: Eq. 7's interval on a model's decoder attention (HF's own attentions, captured
    independently) equals the brute-force bootstrap of explicit lists of the images, with crops of one photo
    (here images 0-1 and 2-3) resampled together. Fails on main: no unit grouping, copy pairs kept."""
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    n = images32.shape[0]
    noise = mask_noise(16, seed=4, batch_size=n)
    out, _, hf_dec, _ = hf_decoder_outputs(hf, images32, noise)
    rows = 1 + torch.nonzero(out.mask[0]).flatten()
    units = ["a", "a", "b", "b", "c", "d"]
    table = maeprobe.decoder_attention_similarity(model, images32, mask_ratio=0.75, seed=4, batch_size=4,
                                                  bootstrap=R, device="cpu", resample_by=units)
    for layer in range(2):
        vectors = [hf_dec[layer][i][:, rows][:, :, 1:].flatten().double().numpy() for i in range(n)]
        low, high, _ = brute_force_pairwise_interval(vectors, [0, 0, 1, 1, 2, 3], seed=4)
        row = table[table["layer"] == layer].iloc[0]
        assert row["ci_low"] == pytest.approx(low, abs=1e-6)
        assert row["ci_high"] == pytest.approx(high, abs=1e-6)
        assert row["n_units"] == 4 and row["n_images"] == 6


def test_image_mean_interval_is_a_cluster_bootstrap_of_explicit_lists():
    """ImageMean: replicate = plain mean of the list in which every image of unit u appears w_u times."""
    from maeprobe.metrics.base import ImageMean

    rng = np.random.default_rng(1)
    values = rng.normal(size=(10, 2))
    units = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 5])
    reducer = ImageMean((2,), bootstrap=R, bootstrap_seed=5)
    reducer.add(torch.as_tensor(values[:4]), torch.as_tensor(units[:4]))  # two batches: streaming
    reducer.add(torch.as_tensor(values[4:]), torch.as_tensor(units[4:]))
    summary = reducer.summary()
    weights = {u: poisson_draws(u, seed=5) for u in np.unique(units)}
    reps = []
    for r in range(R):
        ids = [i for i in range(10) for _ in range(weights[units[i]][r])]
        reps.append(values[ids].mean(0) if ids else np.full(2, np.nan))
    reps = np.asarray(reps)
    np.testing.assert_allclose(summary["ci_low"], np.nanquantile(reps, 0.025, axis=0), rtol=1e-10)
    np.testing.assert_allclose(summary["ci_high"], np.nanquantile(reps, 0.975, axis=0), rtol=1e-10)
    assert reducer.n_units == 6


def test_one_unit_has_no_interval():
    from maeprobe.metrics.base import ImageMean

    reducer = ImageMean((1,), bootstrap=20)
    reducer.add(torch.randn(5, 1), torch.zeros(5, dtype=torch.long))  # five crops of one photo
    assert np.isnan(reducer.summary()["ci_low"]).all()


@pytest.fixture(scope="module")
def tiny_mae():
    return builders.tiny_mae(depth=2, decoder_depth=2)


def test_copies_declared_as_one_unit_give_the_interval_of_the_originals(tiny_mae, images32):
    """Pseudo-replication: each image twice. Declared as one unit per original, the interval is exactly the
    originals' (every replicate weighs both copies alike); counted as 12 independent images it is narrower."""
    doubled = torch.cat([images32, images32])
    labels = list(range(6)) * 2
    kwargs = dict(bootstrap=200, device="cpu", seed=2)
    original = maeprobe.attention_distance(tiny_mae, images32, **kwargs)
    declared = maeprobe.attention_distance(tiny_mae, doubled, resample_by=labels, **kwargs)
    naive = maeprobe.attention_distance(tiny_mae, doubled, **kwargs)
    np.testing.assert_allclose(declared["ci_low"], original["ci_low"], rtol=1e-6)  # float32 forwards
    np.testing.assert_allclose(declared["ci_high"], original["ci_high"], rtol=1e-6)
    assert (declared["n_units"] == 6).all() and (naive["n_units"] == 12).all()
    width = lambda t: (t["ci_high"] - t["ci_low"]).mean()
    assert width(naive) < 0.85 * width(declared)


def test_builtin_stereo_pair_and_folders_are_one_unit(tmp_path):
    from PIL import Image

    from maeprobe.data import image_items, resample_units

    items = image_items(None)
    names = [item.name for item in items]
    units = resample_units(items)
    if "skimage:motorcycle_left" in names:
        left, right = names.index("skimage:motorcycle_left"), names.index("skimage:motorcycle_right")
        assert units[left] == units[right]
        assert len(set(units.tolist())) == len(items) - 1
    for scene in ("s1", "s2"):
        (tmp_path / scene).mkdir()
        for k in range(3):
            Image.new("RGB", (8, 8), (k * 40, 0, 0)).save(tmp_path / scene / f"{k}.png")
    files = image_items(tmp_path)
    assert resample_units(files, "folder").tolist() == [0, 0, 0, 1, 1, 1]
    assert resample_units(files, "image").tolist() == list(range(6))
    with pytest.raises(maeprobe.MaeprobeError, match="resample-by"):
        resample_units(files, "scene")
    with pytest.raises(maeprobe.MaeprobeError, match="one label per image"):
        resample_units(files, [0, 1])


def _band_position(estimate, low, high):
    return (estimate - low) / (high - low)


def test_simulated_exchangeable_data_sit_mid_band():
    """13 photos x 3 crops, features = photo effect + noise: over 40 simulated sets, the estimate of the mean
    (cluster Poisson bootstrap) and of Eq. 7 (pairwise group bootstrap) sits in the middle of its 95% band on
    average. With the copy pairs kept (the old Eq. 7 formula) the estimate sits low in its band."""
    from maeprobe.metrics.base import ImageMean, pairwise_bootstrap_replicates, percentile_interval

    rng = np.random.default_rng(7)
    units = np.repeat(np.arange(13), 3)
    mean_pos, pair_pos, old_pos = [], [], []
    for sim in range(40):
        photo = rng.normal(size=(13, 16))
        x = photo[units] + 0.7 * rng.normal(size=(39, 16))
        reducer = ImageMean((1,), bootstrap=400, bootstrap_seed=sim)
        reducer.add(torch.as_tensor(x[:, :1]), torch.as_tensor(units))
        s = reducer.summary()
        mean_pos.append(_band_position(s["value"][0], s["ci_low"][0], s["ci_high"][0]))
        a = np.abs(x) / np.linalg.norm(np.abs(x), axis=1, keepdims=True)  # positive, like attention rows
        sums = np.stack([a[units == u].sum(0) for u in range(13)])
        counts = np.full(13, 3.0)
        gram = (sums @ sums.T)[None]
        estimate = (np.sum(a.sum(0) ** 2) - 39) / (39 * 38)
        draws = group_draws(13, seed=sim, replicates=400).astype(float)
        reps = pairwise_bootstrap_replicates(gram, counts, draws)
        low, high = percentile_interval(reps)
        pair_pos.append(_band_position(estimate, low[0], high[0]))
        n = draws @ counts
        old = (np.einsum("rg,gh,rh->r", draws, gram[0], draws) - n) / (n * (n - 1))
        old_pos.append(_band_position(estimate, *np.quantile(old, [0.025, 0.975])))
    assert 0.4 < np.mean(mean_pos) < 0.6
    assert 0.4 < np.mean(pair_pos) < 0.6
    assert np.mean(old_pos) < 0.35


def test_metrics_sit_mid_band_on_exchangeable_images(tiny_mae):
    """Attention distance, entropy and Eq. 7 of one model on 40 exchangeable random images: the estimate lies
    mid-band on average over layers (and heads). Eq. 7 sat at 0.14-0.49 of its band before the copy pairs were
    removed."""
    g = torch.Generator().manual_seed(3)
    images = torch.nn.functional.interpolate(torch.randn(40, 3, 8, 8, generator=g), size=32, mode="bilinear")
    table = maeprobe.run(tiny_mae, images, metrics=("attn-distance", "attn-entropy", "decoder-attn-sim"),
                         bootstrap=300, device="cpu")
    for metric, rows in table.groupby("metric"):
        position = _band_position(rows["value"], rows["ci_low"], rows["ci_high"]).mean()
        assert 0.3 < position < 0.7, (metric, position)


def test_the_python_api_computes_intervals_by_default(tiny_mae, images32):
    """As the CLI: 200 replicates unless bootstrap=0 (before, the API's default 0 gave NaN bands that figures
    titled '95% CI')."""
    table = maeprobe.attention_distance(tiny_mae, images32, device="cpu")
    assert np.isfinite(table["ci_low"]).all() and (table["ci_low"] <= table["value"]).all()
    assert np.isnan(maeprobe.attention_distance(tiny_mae, images32, device="cpu", bootstrap=0)["ci_low"]).all()


def test_the_findings_probe_set_resamples_its_source_photos():
    """The findings' probe set: crop i is cut from photo i mod the number of photos, and its unit is that photo
    (the stereo pair is one photo), so 128 crops rest on the photos, not on 128 independent images."""
    from maeprobe.data import builtin_images, builtin_source
    from maeprobe.findings.toydata import probe_units

    photos = [builtin_source(name) for name, _ in builtin_images()]
    units = probe_units(128)
    assert units[: len(photos)] == photos and units[len(photos)] == photos[0]
    assert len(set(units)) == len(set(photos)) < len(photos) <= 13


@pytest.mark.parametrize("kwargs, message", [
    (dict(resample_by=7), "one label per image"),
    (dict(resample_by=[True, 1, 0, 0, 2, 2]), "string or an integer"),  # True would merge with 1
    (dict(resample_by="Folder"), "must be one of image, folder"),
    (dict(resample_by="folder"), "needs image files"),
    (dict(resample_by=[0, 1]), "one label per image"),
    (dict(bootstrap=-1), "--bootstrap"),
    (dict(bootstrap=1.5), "--bootstrap"),
])
def test_bad_grouping_or_replicates_are_one_line_errors(tiny_mae, images32, kwargs, message):
    with pytest.raises(maeprobe.MaeprobeError, match=message):
        maeprobe.attention_distance(tiny_mae, images32, device="cpu", **kwargs)


def test_a_tensor_of_labels_names_the_units(tiny_mae, images32):
    table = maeprobe.attention_distance(tiny_mae, images32, device="cpu", resample_by=torch.tensor([0, 0, 1, 1, 2, 2]))
    assert (table["n_units"] == 3).all()


@pytest.mark.parametrize("labels", [np.array(5), b"abcdef", np.array([[0, 1, 2], [0, 1, 2]])])
def test_labels_that_are_not_one_per_image_are_refused(tiny_mae, images32, labels):
    with pytest.raises(maeprobe.MaeprobeError, match="one label per image"):
        maeprobe.attention_distance(tiny_mae, images32, device="cpu", resample_by=labels)


def test_figure_captions_state_no_interval_for_infinite_bounds_and_no_count_for_nonsense():
    """Crafted tables: infinite or inverted bounds are not an interval; an infinite, negative or fractional
    n_units is not a count (an infinite one raised OverflowError)."""
    import pandas as pd

    from maeprobe.plots.figures import _count, _interval_text

    rows = pd.DataFrame({"ci_low": [-np.inf, 2.0], "ci_high": [np.inf, 1.0], "n_units": [4, 4], "n_images": [8, 8]})
    assert _interval_text(rows).startswith("no interval")
    for bad in (np.inf, -3, 2.5):
        assert _count(pd.DataFrame({"n_units": [bad]}), "n_units") is None
    good = pd.DataFrame({"ci_low": [1.0], "ci_high": [2.0], "n_units": [12], "n_images": [128]})
    assert "over 12 source images" in _interval_text(good)
