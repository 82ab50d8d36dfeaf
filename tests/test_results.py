"""Streaming reducers and the tidy table: batch-size invariance, merging, bootstrap, file formats."""
import pandas as pd
import pytest
import torch
from helpers import spawn_gloo, tiny_mae

import maeprobe
from maeprobe.metrics import AttentionDistance
from maeprobe.probe import run_probe
from maeprobe.results import read_table, write_table


@pytest.fixture(scope="module")
def model():
    return tiny_mae(depth=2, decoder_depth=1).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_table_shape_and_columns(model, images):
    table = maeprobe.attention_distance(model, images, mask_ratio=0.5, seed=3, device="cpu")
    assert list(table.columns[:6]) == ["metric", "module", "layer", "head", "value", "n_images"]
    assert len(table) == 2 * 3 and not table.duplicated(["metric", "module", "layer", "head"]).any()
    assert set(table["metric"]) == {"attention_distance"} and set(table["module"]) == {"encoder"}
    assert table["layer"].tolist() == [0, 0, 0, 1, 1, 1] and table["head"].tolist() == [0, 1, 2] * 2
    assert {"checkpoint", "mask_ratio", "seed", "units", "renormalize"} <= set(table.columns)
    assert (table["mask_ratio"] == 0.5).all() and (table["n_images"] == 10).all()


def test_batch_size_does_not_change_results(model, images):
    kw = dict(mask_ratio=0.75, seed=1, shared_mask=False, bootstrap=20, device="cpu")
    one = maeprobe.attention_distance(model, images, batch_size=1, **kw)
    many = maeprobe.attention_distance(model, images, batch_size=7, **kw)
    cols = ["value", "std", "ci_low", "ci_high"]
    pd.testing.assert_frame_equal(one[cols], many[cols], atol=1e-6, rtol=1e-5)  # fp32 BLAS


def test_merging_shards_equals_one_pass(model, images):
    whole, first, second = (AttentionDistance(model) for _ in range(3))
    run_probe(model, [whole], images, device="cpu")
    run_probe(model, [first], images[:4], device="cpu")
    run_probe(model, [second], images[4:], device="cpu")
    merged = first.merge(second)
    for a, b in zip(whole.rows(), merged.rows()):
        for key in ("value", "std", "n_images"):
            assert a[key] == pytest.approx(b[key], rel=1e-5)


def _distributed_worker(rank, model_state, images, out_file):
    model = tiny_mae(depth=2, decoder_depth=1, seed=None)
    model.load_state_dict(model_state)
    table = maeprobe.attention_distance(model, images, mask_ratio=0.5, shared_mask=False, bootstrap=25,
                                        batch_size=2, device="cpu")
    if rank == 0:
        table.to_csv(out_file, index=False)


@pytest.mark.slow
def test_two_process_gloo_run_equals_one_process(model, images, tmp_path):
    """Each process takes every 2nd image; all-reduced sums give the single-process table."""
    single = maeprobe.attention_distance(model, images, mask_ratio=0.5, shared_mask=False, bootstrap=25,
                                         device="cpu")
    out = tmp_path / "rank0.csv"
    spawn_gloo(_distributed_worker, 2, tmp_path / "init", model.state_dict(), images, out)
    both = pd.read_csv(out)
    for key in ("value", "std", "ci_low", "ci_high"):
        assert both[key].to_numpy() == pytest.approx(single[key].to_numpy(), rel=1e-5)
    assert (both["n_images"] == 10).all()


def test_bootstrap_interval_brackets_the_mean(model, images):
    table = maeprobe.attention_distance(model, images, bootstrap=200, device="cpu")
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    assert (table["ci_high"] > table["ci_low"]).all()


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_tables_round_trip(model, images, tmp_path, suffix):
    table = maeprobe.attention_distance(model, images, device="cpu", bootstrap=5)
    back = read_table(write_table(table, tmp_path / f"table{suffix}"))
    assert list(back.columns) == list(table.columns)
    pd.testing.assert_series_equal(back["value"], table["value"], check_exact=False, rtol=1e-12)
    assert back["layer"].tolist() == table["layer"].tolist()


def test_unknown_extension_is_an_error(model, images, tmp_path):
    table = maeprobe.attention_distance(model, images[:2], device="cpu")
    with pytest.raises(maeprobe.MaeprobeError, match="unknown table format"):
        write_table(table, tmp_path / "table.xlsx")


def test_a_missing_table_and_a_file_that_is_not_one_say_which(tmp_path):
    from maeprobe import MaeprobeError

    with pytest.raises(MaeprobeError, match=r"missing\.csv: no such file$"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "notes.txt").write_text("x")
    for path in (tmp_path / "notes.txt", tmp_path):  # a text file; a folder
        with pytest.raises(MaeprobeError, match="not a results table"):
            read_table(path)
