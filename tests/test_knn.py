"""Per-layer weighted k-NN accuracy (``knn``; DINO's ``knn_classifier`` per encoder block, as Walmer et al.).

Checked against independent computations: scikit-learn's ``KNeighborsClassifier`` (cosine metric, weights exp(cos /
T)) and a direct numpy implementation of DINO's formula, both on features captured from the model with
``maeprobe.capture``, labels read from the paths here; hand-built features for leave-one-out and for ties; a
brute-force cluster bootstrap for the interval. Folders of small PNGs (3 classes) are written by the tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import spawn_gloo, tiny_mae
from PIL import Image
from typer.testing import CliRunner

import maeprobe
from maeprobe import api
from maeprobe.capture import ActivationCache, CaptureRequest, capture
from maeprobe.metrics.knn import KnnAccuracy

COLOURS = {"ant": (150, 110, 100), "bee": (110, 150, 100), "cat": (100, 110, 150)}  # close means, noisy pixels
DEPTH = 3


def _write_folder(root: Path, split: bool, per_class=(6, 3), seed: int = 0) -> Path:
    """root/train/<class>/i.png and root/val/<class>/i.png (``split``), else root/<class>/i.png: 32 x 32 PNGs."""
    rng = np.random.default_rng(seed)
    parts = (("train", per_class[0]), ("val", per_class[1])) if split else (("", per_class[0]),)
    for part, count in parts:
        for name, colour in COLOURS.items():
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 70, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _write_labels_only(root: Path, names: list[str]) -> Path:
    """Tiny PNGs at the relative paths ``names`` (their pixels are not read by the hand-built cases)."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / name)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random tiny MAE (32 px, patch 8, width 32, 3 layers), larger random weights than the initialisation's."""
    torch.manual_seed(3)
    model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=32, depth=DEPTH, num_heads=2,
                               decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.2)
    return maeprobe.save_checkpoint(model, tmp_path_factory.mktemp("knn") / "tiny.pth")


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("labelled") / "data", split=True)


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("flat") / "data", split=False, per_class=(5,), seed=1)


# ----------------------------------------------------------------------------- independent computations
def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png"))


def _captured(ckpt, root: Path, features: str) -> tuple[dict[int, np.ndarray], list[Path]]:
    """Features of every encoder layer of every image (sorted paths), from one hooked forward pass here:
    CLS of the block output, or the mean of its patch tokens; float64, not normalised."""
    from maeprobe.checkpoints import normalization
    from maeprobe.data import make_transform, open_image

    model = maeprobe.load(str(ckpt)).eval()
    files = _files(root)
    transform = make_transform(model.config.img_size, *normalization(model))
    x = torch.stack([transform(open_image(p)) for p in files])  # [N, 3, 32, 32]
    noise = maeprobe.mask_noise(model.config.num_patches, seed=0, batch_size=len(x))
    with capture(model, CaptureRequest.of(features={"encoder": list(range(DEPTH))})) as cache, torch.inference_mode():
        model.forward_encoder(x, 0.0, noise)
        out = {}
        for layer in range(DEPTH):
            tokens = cache.features[("encoder", layer)]  # [N, 1 + 16, D]
            out[layer] = (tokens[:, 0] if features == "cls" else tokens[:, 1:].mean(1)).double().numpy()
    return out, files


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _no_near_ties(bank: np.ndarray, queries: np.ndarray, k: int, self_excluded: bool = False) -> None:
    """The k-th and (k+1)-th similarities of every query differ by more than float32 noise: the comparison below
    is then decided by the features, not by rounding."""
    s = _unit(queries) @ _unit(bank).T
    if self_excluded:
        np.fill_diagonal(s, -np.inf)
    ordered = -np.sort(-s, axis=1)
    assert (ordered[:, k - 1] - ordered[:, k] > 1e-5).all()


def _sklearn_predict(bank, bank_labels, queries, k: int, temperature: float) -> np.ndarray:
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1.0 - d) / temperature))  # 1 - cosine distance = cos
    return clf.fit(bank, bank_labels).predict(queries)


def _numpy_leave_one_out(x: np.ndarray, labels: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """DINO's formula written out: cosine similarities, the image itself removed, k largest, votes exp(s / T)."""
    s = _unit(x) @ _unit(x).T
    np.fill_diagonal(s, -np.inf)
    classes = np.unique(labels)
    predicted = []
    for i in range(len(x)):
        top = np.argsort(-s[i], kind="stable")[:k]
        votes = {c: np.exp(s[i, top][labels[top] == c] / temperature).sum() for c in classes}
        predicted.append(max(votes, key=votes.get))
    return np.asarray(predicted)


def _layer_values(table: pd.DataFrame) -> np.ndarray:
    return table.sort_values("layer")["value"].to_numpy(dtype=float)


# ----------------------------------------------------------------------------- the definition
def test_train_val_cls_accuracy_equals_scikit_learn(ckpt, split_folder):
    """Bank = train/, queries = val/ (DINO's layout), CLS features, k 5, T 0.07, every layer."""
    k, temperature = 5, 0.07
    table = api.knn_accuracy(str(ckpt), str(split_folder), k=k, temperature=temperature, bootstrap=0)
    feats, files = _captured(ckpt, split_folder, "cls")
    split = np.array([p.relative_to(split_folder).parts[0] for p in files])
    labels = np.array([p.parent.name for p in files])
    expected = []
    for layer in range(DEPTH):
        bank, queries = feats[layer][split == "train"], feats[layer][split == "val"]
        _no_near_ties(bank, queries, k)
        predicted = _sklearn_predict(bank, labels[split == "train"], queries, k, temperature)
        expected.append(np.mean(predicted == labels[split == "val"]))
    np.testing.assert_allclose(_layer_values(table), expected, rtol=0, atol=1e-12)
    assert len(set(expected)) > 1 and 0 < min(expected) and max(expected) < 1  # a comparison that can fail
    assert (table["n_images"] == 9).all() and (table["n_bank"] == 18).all() and (table["n_classes"] == 3).all()
    assert (table["protocol"] == "train/val").all() and table["head"].isna().all()
    assert table["chance_level"].eq(1 / 3).all()  # balanced val/: the majority-class rate is 1 / n_classes


def test_leave_one_out_mean_features_equal_dino_formula(ckpt, flat_folder):
    """No train/ and val/: every image is a query against all others; mean-pooled patch tokens, k 3, T 0.1."""
    k, temperature = 3, 0.1
    table = api.knn_accuracy(str(ckpt), str(flat_folder), k=k, temperature=temperature, knn_features="mean",
                             bootstrap=0)
    feats, files = _captured(ckpt, flat_folder, "mean")
    labels = np.array([p.parent.name for p in files])
    expected = []
    for layer in range(DEPTH):
        _no_near_ties(feats[layer], feats[layer], k, self_excluded=True)
        expected.append(np.mean(_numpy_leave_one_out(feats[layer], labels, k, temperature) == labels))
    np.testing.assert_allclose(_layer_values(table), expected, rtol=0, atol=1e-12)
    assert len(set(expected)) > 1  # layers differ: a comparison that can fail
    assert (table["protocol"] == "leave-one-out").all() and (table["n_images"] == 15).all()


def _cache(tokens: torch.Tensor, indices: list[int], layers: list[int]) -> ActivationCache:
    """A cache as the probe leaves it: block outputs [B, N, D] of ``layers``, image indices, units = images."""
    cache = ActivationCache()
    cache.image_indices = cache.unit_indices = torch.tensor(indices)
    for layer in layers:
        cache.features[("encoder", layer)] = tokens
    return cache


def _hand_built(model, root: Path, cls_vectors: dict[int, list[float]], k: int, temperature: float):
    """A reducer of layer 0 fed CLS tokens chosen here (image index -> first components; the rest 0)."""
    reducer = KnnAccuracy(model, layers=[0], k=k, temperature=temperature, images=root)
    width = model.config.embed_dim
    indices = sorted(cls_vectors)
    tokens = torch.zeros(len(indices), 1 + model.config.num_patches, width)
    for row, index in enumerate(indices):
        tokens[row, 0, :len(cls_vectors[index])] = torch.tensor(cls_vectors[index])
    reducer.update(_cache(tokens, indices, [0]))
    return reducer.rows()[0]


def test_leave_one_out_excludes_the_image_itself(tmp_path):
    """a0 at 0 degrees, b0 at 10, b1 at 80, a1 at 90: each image's nearest other image is of the other class, so
    1-NN leave-one-out is 0 (with the image itself among its neighbours it would be 1)."""
    root = _write_labels_only(tmp_path / "flat", ["a/0.png", "a/1.png", "b/0.png", "b/1.png"])  # indices 0-3
    angle = {0: 0.0, 1: 90.0, 2: 10.0, 3: 80.0}
    vectors = {i: [np.cos(np.radians(a)), np.sin(np.radians(a))] for i, a in angle.items()}
    row = _hand_built(tiny_mae(depth=1), root, vectors, k=1, temperature=0.07)
    assert row["value"] == 0.0 and row["protocol"] == "leave-one-out" and row["n_images"] == 4


def test_a_tie_at_the_kth_place_takes_the_lower_bank_index(tmp_path):
    """Query (val/a) = e0. Bank: c0 at cos 0.7; a0, a1 and c1 all at cos 0.6 for the last two of k = 3 places. The
    lower bank indices (a0, a1) give a: 2 e^0.6 = 3.64 against c: e^0.7 = 2.01 at T = 1, right; c1 in their
    place would give c (e^0.7 + e^0.6 = 3.84 > e^0.6), wrong."""
    names = ["train/a/0.png", "train/a/1.png", "train/c/0.png", "train/c/1.png", "val/a/0.png"]
    root = _write_labels_only(tmp_path / "split", names)  # sorted: a0 0, a1 1, c0 2, c1 3, query 4

    def at(cos, axis):  # a unit vector with cosine ``cos`` to e0, the rest along its own axis
        v = [0.0] * 6
        v[0], v[axis] = cos, float(np.sqrt(1 - cos**2))
        return v

    vectors = {0: at(0.6, 1), 1: at(0.6, 2), 2: at(0.7, 3), 3: at(0.6, 4), 4: at(1.0, 5)}
    row = _hand_built(tiny_mae(depth=1), root, vectors, k=3, temperature=1.0)
    assert row["value"] == 1.0 and row["n_bank"] == 4


def test_a_tie_between_classes_goes_to_the_lower_class(tmp_path):
    """Query val/b/0 = e0 has a0 and b0 at cos 0.5 (equal votes for a and b at k = 2): the lower class, a, is
    predicted, wrong for a b image (0; the other way round it would be 1)."""
    root = _write_labels_only(tmp_path / "split", ["train/a/0.png", "train/a/1.png", "train/b/0.png",
                                                   "train/b/1.png", "val/b/0.png"])
    s = float(np.sqrt(0.75))
    vectors = {0: [0.5, s, 0, 0, 0], 1: [0, 0, 0, 1.0, 0], 2: [0.5, 0, s, 0, 0], 3: [0, 0, 0, 0, 1.0],
               4: [1.0, 0, 0, 0, 0]}
    row = _hand_built(tiny_mae(depth=1), root, vectors, k=2, temperature=0.07)
    assert row["value"] == 0.0


# ----------------------------------------------------------------------------- intervals, merging, processes
def test_interval_is_a_bootstrap_over_query_units(ckpt, split_folder):
    """resample_by pairs the val images (units of 2 queries; train images their own): ci_low/ci_high equal a
    brute-force Poisson cluster bootstrap of the per-query correctness (scikit-learn's predictions), each unit's
    weights drawn from (seed, unit index), the bank fixed."""
    files = _files(split_folder)
    split = np.array([p.relative_to(split_folder).parts[0] for p in files])
    names = [f"pair{i // 2}" if s == "val" else str(p) for i, (s, p) in enumerate(zip(split, files))]
    seed, replicates = 5, 300
    table = api.knn_accuracy(str(ckpt), str(split_folder), k=5, bootstrap=replicates, seed=seed, resample_by=names)
    numbers: dict = {}
    units = np.array([numbers.setdefault(n, len(numbers)) for n in names])[split == "val"]  # first appearance
    feats, _ = _captured(ckpt, split_folder, "cls")
    labels = np.array([p.parent.name for p in files])
    weights = np.stack([np.random.default_rng([seed, int(u), 0x9E3779B9]).poisson(1.0, replicates) for u in units])
    for layer in range(DEPTH):
        predicted = _sklearn_predict(feats[layer][split == "train"], labels[split == "train"],
                                     feats[layer][split == "val"], 5, 0.07)
        correct = (predicted == labels[split == "val"]).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = (weights * correct[:, None]).sum(0) / weights.sum(0)
        row = table[table["layer"] == layer].iloc[0]
        assert row["ci_low"] == pytest.approx(np.nanquantile(reps, 0.025), abs=1e-12)
        assert row["ci_high"] == pytest.approx(np.nanquantile(reps, 0.975), abs=1e-12)
        assert row["n_units"] == 5  # 9 val images in pairs


def test_merge_of_two_halves_equals_one_pass(ckpt, split_folder):
    """Even and odd images in two reducers (what two processes see), merged: the rows of one reducer of all."""
    model = maeprobe.load(str(ckpt))
    feats, files = _captured(ckpt, split_folder, "cls")
    tokens = torch.zeros(len(files), 1 + model.config.num_patches, model.config.embed_dim)

    def reducer(indices):
        r = KnnAccuracy(model, k=4, bootstrap=40, bootstrap_seed=1, images=split_folder)
        for lo in range(0, len(indices), 4):
            batch = indices[lo:lo + 4]
            cache = ActivationCache()
            cache.image_indices = cache.unit_indices = torch.tensor(batch)
            for layer in range(DEPTH):
                block = tokens[batch].clone()
                block[:, 0] = torch.as_tensor(feats[layer][batch], dtype=torch.float32)
                cache.features[("encoder", layer)] = block
            r.update(cache)
        return r

    everything = reducer(list(range(len(files))))
    halves = reducer(list(range(0, len(files), 2))).merge(reducer(list(range(1, len(files), 2))))
    assert pd.DataFrame(halves.rows()).equals(pd.DataFrame(everything.rows()))


def _gloo_worker(rank, state, folder, out):
    model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=32, depth=DEPTH, num_heads=2,
                               decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    model.load_state_dict(state)
    table = maeprobe.knn_accuracy(model, folder, k=4, bootstrap=20, device="cpu")
    if rank == 0:
        table.to_csv(out, index=False)


@pytest.mark.slow
def test_two_gloo_processes_equal_one(ckpt, split_folder, tmp_path):
    """Each process probes every second image; the banks are gathered, so both give the one-process rows."""
    model = maeprobe.load(str(ckpt))
    single = api.knn_accuracy(model, str(split_folder), k=4, bootstrap=20, device="cpu")
    spawn_gloo(_gloo_worker, 2, tmp_path / "init", model.state_dict(), str(split_folder), tmp_path / "out.csv")
    both = pd.read_csv(tmp_path / "out.csv")
    np.testing.assert_allclose(both[["value", "ci_low", "ci_high"]].to_numpy(),
                               single[["value", "ci_low", "ci_high"]].to_numpy(dtype=float), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- API, run, CLI, figure
def test_run_equals_the_metric_function(ckpt, split_folder):
    direct = api.knn_accuracy(str(ckpt), str(split_folder), k=5, bootstrap=30)
    via_run = api.run(str(ckpt), str(split_folder), metrics=["knn"], k=5, bootstrap=30)
    assert set(via_run["metric"]) == {"knn_accuracy"} and len(via_run) == DEPTH
    columns = ["value", "ci_low", "ci_high", "chance_level"]
    np.testing.assert_array_equal(via_run.sort_values("layer")[columns].to_numpy(dtype=float),
                                  direct.sort_values("layer")[columns].to_numpy(dtype=float))


def test_cli_command_writes_one_row_per_layer(ckpt, split_folder, tmp_path):
    from maeprobe.cli import app

    out = tmp_path / "knn.csv"
    result = CliRunner().invoke(app, ["knn", str(ckpt), "--images", str(split_folder), "--k", "5",
                                      "--temperature", "0.07", "--knn-features", "cls", "--bootstrap", "0",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "k-NN top-1 accuracy" in result.output and "chance (majority class) 0.333" in result.output
    table = pd.read_csv(out)
    direct = api.knn_accuracy(str(ckpt), str(split_folder), k=5, bootstrap=0)
    np.testing.assert_array_equal(_layer_values(table), _layer_values(direct))


def test_images_must_be_a_labelled_folder(ckpt, tmp_path):
    with pytest.raises(maeprobe.MaeprobeError, match="^images: k-NN accuracy needs a labelled folder"):
        api.knn_accuracy(str(ckpt), torch.zeros(4, 3, 32, 32))
    loose = _write_folder(tmp_path / "loose", split=False, per_class=(3,))
    shutil.copy(_files(loose)[0], loose / "stray.png")  # an image outside any class folder
    with pytest.raises(maeprobe.MaeprobeError, match="^images: .*stray.png is not in a class folder"):
        api.knn_accuracy(str(ckpt), str(loose))


def test_k_beyond_the_bank_is_refused_before_the_pass(ckpt, split_folder):
    with pytest.raises(maeprobe.MaeprobeError, match="^k: 19 neighbours, but a query of train/val has only 18"):
        api.knn_accuracy(str(ckpt), str(split_folder), k=19)


@pytest.mark.parametrize("name,value", [("temperature", 0.0), ("knn_features", "max"), ("k", 1.5)])
def test_options_are_checked_and_named(ckpt, split_folder, name, value):
    with pytest.raises(maeprobe.MaeprobeError, match=f"^{name}: expected"):
        api.knn_accuracy(str(ckpt), str(split_folder), **{name: value})


def test_bank_is_bounded_before_any_image_is_read(ckpt, split_folder, monkeypatch):
    """27 images x 3 layers x 32 x 4 bytes, twice, + 3 x 27 x 32 x 4 + a 9 x 18 x 20 byte block = 34,344 bytes."""
    from maeprobe import data
    from maeprobe.limits import LimitError

    def never(*args, **kwargs):
        raise AssertionError("an image was decoded before the bank was checked")

    monkeypatch.setattr(data, "open_image", never)
    monkeypatch.setenv("MAEPROBE_MAX_METRIC_MEMORY", "34343")
    with pytest.raises(LimitError, match="k-NN accuracy: its feature bank .*34,344 exceeds .*METRIC_MEMORY"):
        api.knn_accuracy(str(ckpt), str(split_folder), k=5, num_workers=0)


def test_figure_draws_accuracy_per_layer_with_chance_level(ckpt, split_folder, tmp_path, captured):
    a = api.knn_accuracy(str(ckpt), str(split_folder), k=5, bootstrap=50)
    b = a.copy()
    b["checkpoint"], b["checkpoint_path"] = "second.pth", "/elsewhere/second.pth"
    b["value"], b["ci_low"], b["ci_high"] = b["value"] / 2, b["ci_low"] / 2, b["ci_high"] / 2  # a second line
    paths = maeprobe.make_figures(pd.concat([a, b]), tmp_path / "figures", figures=["knn"])
    assert [p.name for p in paths] == ["knn.png", "knn.pdf"]
    ax = captured[0].axes[0]
    chance = [line for line in ax.lines if str(line.get_label()).startswith("chance level")]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(1 / 3)
    curves = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(curves) == 2 and list(curves[0].get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(curves[0].get_ydata(), _layer_values(a))
    assert ax.get_xlabel().startswith("encoder layer") and len(ax.collections) == 2  # one interval band per line
