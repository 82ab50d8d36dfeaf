"""Issue 27, metrics memory and image decoding: small files and hostile folders cannot make a metric allocate
without bound, nor make image decoding print tracebacks, forged lines or two greys for one 16-bit level.

Every checkpoint here is built in the test with few weights but a large declared size (patch 1 on a 64 x 64 or
128 x 128 grid, decoder heads of width 1), every image and folder is generated in ``tmp_path``. The CLI cases run
in the limited child of ``tests/helpers/hostile.py`` (1.5 GB of address space above the runner); expected sizes are
computed here from the shapes (an independent lower bound of what the metric must hold), never read from
maeprobe."""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.hostile import assert_clean_exit, assert_refused, run_cases
from PIL import Image

import maeprobe
from maeprobe.checkpoints import save_checkpoint
from maeprobe.errors import MaeprobeError
from maeprobe.limits import LimitError

LIMIT = "MAEPROBE_MAX_METRIC_MEMORY"


def _mae(img_size: int, *, decoder_depth: int = 0, decoder_heads: int = 1, decoder_width: int = 16,
         patch: int = 1, width: int = 8, heads: int = 1):
    torch.manual_seed(0)
    return maeprobe.build_mae(img_size=img_size, patch_size=patch, embed_dim=width, depth=1, num_heads=heads,
                              mlp_ratio=1.0, decoder_embed_dim=decoder_width, decoder_depth=decoder_depth,
                              decoder_num_heads=decoder_heads)


def _noise_images(folder, count: int, size: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _broken_avif() -> bytes:
    """A valid 16 x 16 AVIF whose coded picture (the ``mdat`` payload) is zeroed: Pillow's AVIF decoder raises
    RuntimeError, a type outside the usual decoding errors."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="AVIF")
    data = bytearray(buf.getvalue())
    start = data.index(b"mdat") + 4
    data[start:] = bytes(len(data) - start)
    return bytes(data)


def _nest(root, depth: int, leaf: bytes | None = None) -> None:
    """``root/d/d/.../d`` ``depth`` levels deep (built through directory descriptors, so no path is ever longer
    than one name), with ``x.png`` = ``leaf`` at the bottom."""
    fd = os.open(root, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        below = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = below
    if leaf is not None:
        out = os.open("x.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, leaf)
        os.close(out)
    os.close(fd)


def _unnest(root, depth: int) -> None:
    """Remove what ``_nest`` made, bottom up through ``..`` (pytest's recursive removal would overflow)."""
    fd = os.open(root, os.O_RDONLY)
    for _ in range(depth):
        try:
            below = os.open("d", os.O_RDONLY, dir_fd=fd)
        except FileNotFoundError:
            break
        os.close(fd)
        fd = below
    for name in os.listdir(fd):
        os.unlink(name, dir_fd=fd)
    while True:
        above = os.open("..", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = above
        try:
            os.rmdir("d", dir_fd=fd)
        except FileNotFoundError:
            break
        if os.path.samestat(os.fstat(fd), os.stat(root)):
            break
    os.close(fd)


def _brute_mean_distance(grid: int) -> float:
    """Mean Euclidean distance between the centres of all ordered pairs of a grid's patches (i = j included),
    summed row block by row block in numpy."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    total = 0.0
    for start in range(0, grid * grid, 512):
        dr = rows[start:start + 512, None] - rows[None, :]
        dc = cols[start:start + 512, None] - cols[None, :]
        total += np.sqrt(dr * dr + dc * dc).sum()
    return total / (grid * grid) ** 2


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    out.mkdir()
    # Eq. 7: a 64 x 64 grid (4096 patches), 8 decoder blocks of 16 heads of width 1: 0.45 MB of weights, 1 GB of
    # attention per image and layer (within MAEPROBE_MAX_ATTENTION), 1.6 GB of float64 sums per layer
    save_checkpoint(_mae(64, decoder_depth=8, decoder_heads=16), inputs / "eq7.safetensors")
    # Eq. 8: one decoder block 4 wide on the same grid: a 4096 x 4096 affinity matrix (67 MB) per image and side
    save_checkpoint(_mae(64, decoder_depth=1, decoder_width=4), inputs / "eq8.safetensors")
    # attention distance: a 128 x 128 grid, one head (1 GB of attention per image, within the limit); the
    # distances between all patches would be 16384^2
    save_checkpoint(_mae(128), inputs / "grid128.safetensors")
    save_checkpoint(_mae(16, patch=8), inputs / "small.safetensors")
    _noise_images(inputs / "two", 2, 64)
    _noise_images(inputs / "four", 4, 64)
    _noise_images(inputs / "one128", 1, 128)
    # images that cannot be used beside a good PNG: a broken AVIF (RuntimeError inside Pillow), a float TIFF with
    # NaN pixels (its skip must name the file), names that carry newlines, carriage returns and escapes
    mixed = inputs / "mixed"
    _noise_images(mixed, 1, 16)
    (mixed / "broken.avif").write_bytes(_broken_avif())
    Image.fromarray(np.full((16, 16), np.nan, np.float32)).save(mixed / "nan.tif")
    (mixed / "a\nerror: forged by a file name.png").write_bytes(b"not a png")
    sub = mixed / "sub\nerror: forged by a folder"
    sub.mkdir()
    (sub / "b\rerror: forged\x1b[31m.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    # symlink loops: a folder linking to itself and its parent, a file linking to itself, two links to each other
    loops = inputs / "loops"
    _noise_images(loops, 1, 16)
    (loops / "self").symlink_to(".")
    (loops / "up").symlink_to("..")
    (loops / "self.png").symlink_to("self.png")
    (loops / "a.png").symlink_to("b.png")
    (loops / "b.png").symlink_to("a.png")
    # folders nested 1,200 levels (a path of 2,400 characters) and 2,100 levels (beyond PATH_MAX)
    png = (inputs / "two" / "0.png").read_bytes()
    deep, deeper = root / "deep", root / "deeper"
    deep.mkdir()
    deeper.mkdir()
    _nest(deep, 1200, png)
    _nest(deeper, 2100, png)
    long_name = inputs / ("x" * 300)
    eq7, eq8, grid128, small = (inputs / f"{n}.safetensors" for n in ("eq7", "eq8", "grid128", "small"))
    # Eq. 7's sums of unit vectors of one layer: heads x masked queries x patch keys in float64 (0.75 of 4096 masked)
    one_layer = 16 * 3072 * 4096 * 8
    cases = {
        "eq7:bootstrap": {"argv": ["decoder-attn-sim", eq7, "--images", inputs / "two", "--out", out / "eq7.csv"]},
        "eq7:plain": {"argv": ["decoder-attn-sim", eq7, "--images", inputs / "two", "--bootstrap", "0"]},
        "eq7:run": {"argv": ["run", eq7, "--metrics", "decoder-attn-sim", "--images", inputs / "two",
                             "--bootstrap", "0"]},
        "eq7:one_layer": {"argv": ["decoder-attn-sim", eq7, "--images", inputs / "two", "--bootstrap", "0",
                                   "--layers", "0"], "env": {LIMIT: str(one_layer - 1)}},
        "eq8:tau": {"argv": ["decoder-semantics", eq8, "--ref", eq8, "--images", inputs / "four", "--bootstrap", "0",
                             "--out", out / "eq8.csv"]},
        "eq8:limit": {"argv": ["decoder-semantics", eq8, "--ref", eq8, "--images", inputs / "two", "--bootstrap", "0"],
                      "env": {LIMIT: str(2 * 4096 * 4096 * 4 - 1)}},  # W of the reference and of a layer, one image
        "dist": {"argv": ["attn-distance", grid128, "--images", inputs / "one128", "--bootstrap", "0", "--units",
                          "patches", "--per-image-mask", "--mask-ratio", "0.25", "--out", out / "dist.csv"]},
        "long": {"argv": ["attn-distance", small, "--images", long_name, "--bootstrap", "0"]},
        "deep": {"argv": ["attn-distance", small, "--images", deep, "--bootstrap", "0", "--out", out / "deep.csv"]},
        "deeper": {"argv": ["attn-distance", small, "--images", deeper, "--bootstrap", "0"]},
        "loops": {"argv": ["attn-distance", small, "--images", loops, "--bootstrap", "0", "--out", out / "loops.csv"]},
        "loop_itself": {"argv": ["attn-distance", small, "--images", loops / "self.png", "--bootstrap", "0"]},
    }
    cases["mixed:0"] = {"argv": ["attn-distance", small, "--images", mixed, "--bootstrap", "0", "--num-workers", "0"]}
    cases["bad_limit"] = {"argv": ["attn-distance", small, "--images", mixed, "--bootstrap", "0", "--num-workers", "1"],
                          "env": {"MAEPROBE_MAX_IMAGE_PIXELS": "lots"}}
    cases["mixed:1"] = {"argv": ["attn-distance", small, "--images", mixed, "--bootstrap", "0", "--num-workers", "1"]}
    try:
        results = dict(zip(cases, run_cases(list(cases.values()), root)))
    finally:
        _unnest(deep, 1200)
        _unnest(deeper, 2100)
    return {"root": root, "out": out, "results": results}


@pytest.mark.parametrize("case", ["eq7:bootstrap", "eq7:plain", "eq7:run", "eq7:one_layer"])
@pytest.mark.slow
def test_eq7_sums_beyond_the_limit_are_refused_before_any_image(attack, case):
    assert_refused(attack["results"][case], LIMIT, budget_mb=300)
    assert not (attack["out"] / "eq7.csv").exists()


@pytest.mark.slow
def test_eq8_affinities_stream_in_bounded_memory(attack):
    # 4 images of 4096 tokens: a batch-wide W is 268 MB, and its binarisation made three more of them
    assert_clean_exit(attack["results"]["eq8:tau"], budget_mb=600)
    table = pd.read_csv(attack["out"] / "eq8.csv")
    assert table["n_images"].tolist() == [4]
    assert 0 < table["value"].item() <= 1 + 1e-6  # cosine of two matrices of positive entries


@pytest.mark.slow
def test_eq8_affinities_beyond_the_limit_are_refused(attack):
    assert_refused(attack["results"]["eq8:limit"], LIMIT, budget_mb=300)


@pytest.mark.slow
def test_attention_distance_needs_no_patch_by_patch_distance_matrix(attack):
    # [16384, 16384] distances: 2 GB (float64), 1 GB (float32); per image with per-image masks
    assert_clean_exit(attack["results"]["dist"], budget_mb=700)
    table = pd.read_csv(attack["out"] / "dist.csv")
    assert table["uniform_level"].item() == pytest.approx(_brute_mean_distance(128) * 16384 / 16385, rel=1e-9)
    assert 0 < table["value"].item() < 128 * 2 ** 0.5


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.slow
def test_images_that_cannot_be_used_are_one_warning_each_naming_them(attack, workers):
    """A decoder's RuntimeError (the AVIF), NaN pixels, names with newlines: each one line ``warning: skipping``
    naming the file, also when a DataLoader worker decoded it (its traceback was the error before)."""
    result = attack["results"][f"mixed:{workers}"]
    assert_clean_exit(result, budget_mb=500)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 4 and all(line.startswith("warning: skipping ") for line in lines), result.describe()
    for name in ("broken.avif", "nan.tif", "a\\nerror: forged by a file name.png",
                 "sub\\nerror: forged by a folder/b\\rerror: forged\\x1b[31m.jpg"):
        assert sum(name in line for line in lines) == 1, (name, result.describe())
    assert not any(ord(ch) < 32 and ch != "\n" or 0x7f <= ord(ch) < 0xa0 for ch in result.stderr + result.stdout)
    assert "1 images" in result.stdout


@pytest.mark.slow
def test_a_bad_image_limit_is_refused_not_every_image_skipped(attack):
    result = attack["results"]["bad_limit"]
    assert_refused(result, "MAEPROBE_MAX_IMAGE_PIXELS", "positive whole number", budget_mb=300)
    assert "warning" not in result.stderr, result.describe()


@pytest.mark.slow
def test_a_folder_name_too_long_is_one_line(attack):
    assert_refused(attack["results"]["long"], "not a folder", "File name too long", budget_mb=300)


@pytest.mark.slow
def test_a_folder_nested_1200_levels_is_walked(attack):
    assert_clean_exit(attack["results"]["deep"], budget_mb=500)
    assert pd.read_csv(attack["out"] / "deep.csv")["n_images"].tolist() == [1]


@pytest.mark.slow
def test_a_folder_nested_beyond_path_max_is_one_line(attack):
    result = attack["results"]["deeper"]
    assert_refused(result, "no image files", budget_mb=300)
    assert result.stderr.count("warning: ") == 1 and "File name too long" in result.stderr, result.describe()


@pytest.mark.slow
def test_symlink_loops_are_not_followed(attack):
    assert_clean_exit(attack["results"]["loops"], budget_mb=500)
    assert pd.read_csv(attack["out"] / "loops.csv")["n_images"].tolist() == [1]
    assert_refused(attack["results"]["loop_itself"], "not a folder", budget_mb=300)


# --- the Python API ---------------------------------------------------------------------------------------------

def test_api_eq7_refuses_with_a_limit_error_before_the_forward_pass():
    model = _mae(64, decoder_depth=8, decoder_heads=16)
    calls = []
    model.forward_encoder = lambda *a, **k: calls.append(1)  # never reached
    with pytest.raises(LimitError, match=LIMIT):
        maeprobe.decoder_attention_similarity(model, torch.zeros(2, 3, 64, 64), bootstrap=0, device="cpu")
    assert calls == []


@pytest.mark.parametrize("per_head, bootstrap", [(False, 0), (True, 0), (False, 50)])
def test_api_eq7_limit_counts_the_sums_it_keeps(per_head, bootstrap):
    """Below the bytes of the float64 sums of every layer (an independent lower bound): refused; far above: run."""
    model = _mae(16, decoder_depth=2, decoder_heads=2, patch=2)  # 64 patches, 48 masked at 0.75
    images = torch.randn(4, 3, 16, 16)
    sums = 2 * (2 * 48 * 64 * 8) * (2 if per_head else 1)  # layers x (heads x k x n float64) [x 2 per head]
    kwargs = dict(per_head=per_head, bootstrap=bootstrap, device="cpu", batch_size=2)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(LIMIT, str(sums - 1))
        with pytest.raises(LimitError, match=LIMIT):
            maeprobe.decoder_attention_similarity(model, images, **kwargs)
        env.setenv(LIMIT, str(1 << 30))
        table = maeprobe.decoder_attention_similarity(model, images, **kwargs)
    assert (table["n_images"] == 4).all() and table["value"].between(0, 1 + 1e-9).all()


def test_api_eq8_refuses_affinities_beyond_the_limit():
    model = _mae(32, decoder_depth=1, decoder_width=4)  # 1024 tokens: a 4 MB W per image and side
    with pytest.MonkeyPatch.context() as env:
        env.setenv(LIMIT, str(2 * 1024 * 1024 * 4 - 1))
        with pytest.raises(LimitError, match=LIMIT):
            maeprobe.decoder_semantic_similarity(model, model, torch.zeros(2, 3, 32, 32), bootstrap=0, device="cpu")


def test_api_spectrum_sums_are_bounded_before_they_are_allocated():
    """The spectrum's outer-product sums (layers x features x width^2 x 8 bytes, an independent lower bound) are
    checked before the reducer allocates them; raising the limit lets the same run through."""
    torch.manual_seed(0)
    model = maeprobe.build_mae(img_size=16, patch_size=8, embed_dim=64, depth=6, num_heads=1, decoder_depth=0)
    outer = 6 * 2 * 64 * 64 * 8  # every layer, CLS and patch mean, one D x D sum each
    with pytest.MonkeyPatch.context() as env:
        env.setenv(LIMIT, str(outer - 1))
        with pytest.raises(LimitError, match=LIMIT):
            maeprobe.feature_spectrum(model, torch.randn(3, 3, 16, 16), layers=range(6), bootstrap=0, device="cpu")
        env.setenv(LIMIT, str(1 << 30))
        table = maeprobe.feature_spectrum(model, torch.randn(3, 3, 16, 16), layers=range(6), bootstrap=20,
                                          device="cpu")
    assert set(table["layer"]) == set(range(6)) and (table["n_images"] == 3).all()


def _grey(img: Image.Image) -> np.ndarray:
    from maeprobe.data import to_rgb

    out = np.asarray(to_rgb(img))
    assert out.dtype == np.uint8 and (out == out[..., :1]).all()
    return out[..., 0].astype(int)


def test_16_bit_levels_map_by_one_fixed_rule(tmp_path):
    """Every 16-bit level v becomes round(v / 257), whatever else the image holds: two images that differ by one
    level get equal or adjacent greys (a 0..255 image was read as 8-bit before, so 255 and 256 became 255 and 1)."""
    from maeprobe.data import open_image

    rng = np.random.default_rng(0)
    levels = np.concatenate([np.arange(0, 600), np.arange(65000, 65535), rng.integers(0, 65535, 2000)])
    for v in levels[::7]:
        pair = [np.full((4, 4), v, np.uint16), np.full((4, 4), v + 1, np.uint16)]
        greys = []
        for k, arr in enumerate(pair):
            Image.fromarray(arr).save(tmp_path / f"{k}.png")  # a 16-bit grey PNG
            greys.append(_grey(open_image(tmp_path / f"{k}.png"))[0, 0])
        assert greys == [int(np.floor(v / 257 + 0.5)), int(np.floor((v + 1) / 257 + 0.5))]
        assert 0 <= greys[1] - greys[0] <= 1
    mixed = np.array([[0, 1, 255, 256], [257, 32896, 65534, 65535]], np.uint16)
    assert _grey(Image.fromarray(mixed)).tolist() == [[0, 0, 1, 1], [1, 128, 255, 255]]


def test_32_bit_integer_and_float_images_map_by_fixed_rules(tmp_path):
    """'I' (32-bit integers) as 16-bit levels (clipped to 0..65535); 'F' (floats) as intensities in [0, 1]."""
    from maeprobe.data import open_image

    ints = np.array([[-5, 0, 128, 257], [65535, 70000, 2**31 - 1, 32896]], np.int32)
    Image.fromarray(ints).save(tmp_path / "i.tif")
    assert _grey(open_image(tmp_path / "i.tif")).tolist() == [[0, 0, 0, 1], [255, 255, 255, 128]]
    one = np.array([[0.2, 0.2 + 1e-6]], np.float32)  # two near-constant images: no stretch of their own range
    Image.fromarray(one).save(tmp_path / "f.tif")
    assert _grey(open_image(tmp_path / "f.tif")).tolist() == [[51, 51]]
    floats = np.array([[-1.0, 0.0, 0.5, 1.0, 7.0]], np.float32)
    assert _grey(Image.fromarray(floats)).tolist() == [[0, 0, 128, 255, 255]]


def test_messages_naming_a_folder_escape_control_characters(tmp_path):
    from maeprobe.data import find_images

    for folder in (tmp_path / "gone\nerror: forged", tmp_path / ("y" * 300)):
        with pytest.raises(MaeprobeError) as caught:
            find_images(folder)
        assert "\n" not in str(caught.value) and "not a folder" in str(caught.value)
    empty = tmp_path / "empty\r\nerror: forged\x1b[2J"
    empty.mkdir()
    with pytest.raises(MaeprobeError) as caught:
        find_images(empty)
    assert not any(ord(ch) < 32 for ch in str(caught.value)) and "\\n" in str(caught.value)


def test_api_warnings_for_skipped_images_are_one_line(tmp_path):
    folder = tmp_path / "imgs"
    _noise_images(folder, 2, 16)
    (folder / "c\nerror: forged.png").write_bytes(b"broken")
    (folder / "d\u2028error: forged.avif").write_bytes(_broken_avif())
    model = _mae(16, patch=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = maeprobe.attention_distance(model, folder, bootstrap=0, device="cpu", num_workers=1)
    messages = [str(w.message) for w in caught if "skipping" in str(w.message)]
    assert len(messages) == 2 and set(table["n_images"]) == {2}
    assert all(len(m.splitlines()) == 1 for m in messages), messages
    assert any("forged.avif" in m for m in messages) and all("Traceback" not in m for m in messages)
