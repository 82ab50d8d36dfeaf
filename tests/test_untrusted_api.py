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
    assert torch.equal(maeprobe.mask_noise(6, -3),
                       torch.rand(1, 6, generator=torch.Generator().manual_seed(2 ** 64 - 3)))
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


# ---------------------------------------------------------------- found by the final independent attack (issue 27)
def test_recipe_keys_given_twice_and_a_bare_tilde_are_refused(tmp_path):
    from maeprobe.train.config import load_recipe, parse_override

    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: tiny-mae\nname: a\nname: b\n")
    with pytest.raises(MaeprobeError, match="given twice"):
        load_recipe(recipe)
    with pytest.raises(MaeprobeError, match="home folder"):
        parse_override("data.path=~")
    assert parse_override("data.path=null") == (["data", "path"], None)
    assert parse_override("data.path=~/photos") == (["data", "path"], "~/photos")


def _tiny_pair(tmp_path):
    import shutil

    first, second = maeprobe.build_mae(**TINY), maeprobe.build_mae(**TINY)
    maeprobe.save_checkpoint(first, tmp_path / "a.pth")
    shutil.copy(tmp_path / "a.pth", tmp_path / "copy.pth")
    maeprobe.save_checkpoint(first, tmp_path / "a.safetensors")
    maeprobe.save_checkpoint(second, tmp_path / "b.pth")
    return tmp_path


def test_the_same_weights_under_another_name_or_format_are_one_checkpoint(tmp_path):
    """Two rows per (layer, head) under two labels would double one model's weight in every comparison."""
    from maeprobe.results import read_tables

    folder = _tiny_pair(tmp_path)
    for pair in (["a.pth", "copy.pth"], ["a.pth", "a.safetensors"]):
        with pytest.raises(MaeprobeError, match="same weights"):
            maeprobe.run([folder / p for p in pair], metrics=["attn-distance"], bootstrap=0)
    table = maeprobe.run([folder / "a.pth", folder / "b.pth"], metrics=["attn-distance"], bootstrap=0)
    assert sorted(table["checkpoint"].unique()) == ["a.pth", "b.pth"]
    maeprobe.write_table(table, folder / "t.csv")
    maeprobe.write_table(table, folder / "t.parquet")
    (folder / "t2.csv").write_bytes((folder / "t.csv").read_bytes())
    for pair in (["t.csv", "t2.csv"], ["t.csv", "t.parquet"]):
        with pytest.raises(MaeprobeError, match="same rows"):
            read_tables([folder / p for p in pair])
    other = maeprobe.run(folder / "b.pth", metrics=["attn-distance"], bootstrap=0)
    maeprobe.write_table(other, folder / "o.csv")
    assert len(read_tables([folder / "t.csv", folder / "o.csv"])) == len(table) + len(other)


@pytest.mark.parametrize("request_of", [dict(attention={"encoder": [99]}), dict(features={"encoder": [-1]}),
                                        dict(keys={"encoder": [1]})])
def test_capture_refuses_layers_the_model_lacks(request_of):
    model = maeprobe.build_mae(**TINY)
    with pytest.raises(MaeprobeError, match="has 1 layers"):
        with maeprobe.capture(model, maeprobe.CaptureRequest.of(**request_of)):
            pass
    for args in ((None, maeprobe.CaptureRequest()), (model, None)):
        with pytest.raises(MaeprobeError):
            with maeprobe.capture(*args):
                pass


@pytest.mark.parametrize("shape", [(2, 3, 31, 32), (2, 1, 32, 32), (2, 3, 64, 64), (3, 32, 32)])
def test_image_tensors_at_another_size_are_refused(shape):
    with pytest.raises(MaeprobeError, match="image tensor"):
        maeprobe.attention_distance(maeprobe.build_mae(**TINY), torch.zeros(shape), bootstrap=0)


def test_maeprobe_dino_that_is_not_a_file_is_refused(tmp_path, monkeypatch):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("MAEPROBE_DINO", str(fifo))
    with pytest.raises(MaeprobeError, match="MAEPROBE_DINO=.*not a checkpoint file or folder"):
        maeprobe.load_reference("dino")


def test_a_table_that_decodes_to_hundreds_of_megabytes_is_refused_before_reading(tmp_path):
    """999,000 rows of one 900-character label: 374 KB on disk, 0.9 GB decoded, which the figures copy several
    times (the attack ran out of memory under a 4 GB cap); the default bound is 256 MiB of decoded cells."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 999_000

    def repeated(text):
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([text]))

    pq.write_table(pa.table({"metric": repeated("attention_distance"), "module": repeated("encoder"),
                             "layer": pa.array(np.arange(n) % 12), "head": pa.array(np.arange(n) // 12),
                             "value": pa.array(np.zeros(n)), "checkpoint": repeated("x" * 900)}),
                   tmp_path / "t.parquet", compression="zstd")
    with pytest.raises(MaeprobeError, match="MAEPROBE_MAX_TABLE_BYTES"):
        maeprobe.read_table(tmp_path / "t.parquet")


def test_out_of_memory_is_recognised_without_importing_torch():
    """The CLI asks after an allocation failed: importing torch or timm then could fail too (the attack's
    table ended in a second traceback inside the error handler)."""
    import subprocess
    import sys

    code = ("import sys; from maeprobe.errors import out_of_memory; "
            "assert out_of_memory(MemoryError()) and out_of_memory(RuntimeError('malloc of size 8 failed')); "
            "assert not out_of_memory(RuntimeError('shape mismatch')); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
