"""Issue 27, tables, figures, renders and the Python API: every input stays its own row and line, a figure never
mixes units or settings on one axis nor drops values without a word, its size and a render's are bounded by named
limits, output paths are checked before anything is computed, CSV cells cannot become spreadsheet formulas, a
Parquet table is bounded by what its metadata says it decodes to, and the Python API refuses bad arguments with a
MaeprobeError. Command-line cases run in limited children (``tests/helpers/hostile.py``); figure contents are read from
the figure objects; expectations are computed here from the generated numbers."""
from __future__ import annotations

import csv
import math
import os
import stat
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers.hostile import assert_clean_exit, assert_refused, changed_outside, run_cases, snapshot  # noqa: E402


def _tiny_mae(seed: int, **kwargs):
    from maeprobe.models import build_mae

    torch.manual_seed(seed)
    arch = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=16,
                decoder_depth=2, decoder_num_heads=2)
    return build_mae(**{**arch, **kwargs}).eval()


def _image(path: Path, size: int = 32) -> Path:
    from PIL import Image

    pixels = (np.random.default_rng(0).random((size, size, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(path)
    return path


def _distance_rows(name: str, values, *, layers: int = 2, heads: int = 2, **extra) -> list[dict]:
    """Attention-distance rows of one checkpoint: ``values[layer][head]``."""
    return [{"metric": "attention_distance", "module": "encoder", "layer": layer, "head": head,
             "value": values[layer][head], "n_images": 5, "ci_low": np.nan, "ci_high": np.nan,
             "checkpoint": name, "mask_ratio": 0.0, "shared_mask": True, "units": "px", **extra}
            for layer in range(layers) for head in range(heads)]


def _eq8_rows(name: str, tau: float, ref_features: str = "keys") -> list[dict]:
    return [{"metric": "decoder_semantic_similarity", "module": "decoder", "layer": layer, "head": np.nan,
             "value": 0.5 + 0.1 * layer, "n_images": 5, "ci_low": np.nan, "ci_high": np.nan, "checkpoint": name,
             "mask_ratio": 0.75, "shared_mask": True, "reference": "dino", "ref_features": ref_features,
             "decoder_features": ref_features, "tau": tau, "eps": 1e-5} for layer in range(2)]


def _dictionary_parquet(path: Path, rows: int, text_columns: int) -> None:
    """A results table of ``rows`` rows whose text columns hold one 999-character value each, dictionary and
    run-length encoded: a few kilobytes on disk and in its stated uncompressed size, gigabytes once decoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    indices = pa.array(np.zeros(rows, dtype=np.int32))
    columns = {"metric": pa.DictionaryArray.from_arrays(indices, pa.array(["attention_distance"])),
               "module": pa.DictionaryArray.from_arrays(indices, pa.array(["encoder"])),
               "layer": pa.array(np.zeros(rows, dtype=np.int64)), "value": pa.array(np.ones(rows))}
    for i in range(text_columns):
        columns[f"label{i}"] = pa.DictionaryArray.from_arrays(indices, pa.array(["x" * 999]))
    pq.write_table(pa.table(columns), path, compression="zstd")


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    from maeprobe.checkpoints import save_checkpoint

    root = tmp_path_factory.mktemp("figures")
    inputs, out = root / "in", root / "out"
    (inputs / "runs" / "a").mkdir(parents=True)
    (inputs / "runs" / "b").mkdir(parents=True)
    out.mkdir()
    ckpt_a = save_checkpoint(_tiny_mae(0), inputs / "runs" / "a" / "checkpoint-last.pth")
    ckpt_b = save_checkpoint(_tiny_mae(1), inputs / "runs" / "b" / "checkpoint-last.pth")
    formula = save_checkpoint(_tiny_mae(2), inputs / "=1+2.pth")
    wide = save_checkpoint(_tiny_mae(3, embed_dim=64, depth=8, num_heads=32), inputs / "wide.pth")  # 8 x 33 panels
    image = _image(inputs / "photo.png")
    # the same base name in two run folders, stored by an older maeprobe (no checkpoint_path column)
    table_a, table_b = inputs / "runs" / "a" / "results.csv", inputs / "runs" / "b" / "results.csv"
    pd.DataFrame(_distance_rows("checkpoint-last.pth", [[1, 2], [3, 4]])).to_csv(table_a, index=False)
    pd.DataFrame(_distance_rows("checkpoint-last.pth", [[5, 6], [7, 8]])).to_csv(table_b, index=False)
    mixed_units = inputs / "units.csv"
    pd.DataFrame(_distance_rows("m.pth", [[1, 2], [3, 4]]) +
                 _distance_rows("n.pth", [[0.1, 0.2], [0.3, 0.4]], units="patches")).to_csv(mixed_units, index=False)
    taus = inputs / "taus.csv"
    pd.DataFrame(_eq8_rows("m.pth", 0.15) + _eq8_rows("n.pth", 0.3)).to_csv(taus, index=False)
    non_finite = inputs / "nonfinite.csv"
    pd.DataFrame(_distance_rows("m.pth", [[1, np.nan], [3, np.inf]]) +
                 _distance_rows("n.pth", [[1, 2], [3, -np.inf]])).to_csv(non_finite, index=False)
    many = inputs / "many.csv"
    pd.DataFrame([row for i in range(3000) for row in _distance_rows(f"c{i}.pth", [[1]], layers=1, heads=1)]
                 ).to_csv(many, index=False)
    rows_bomb, bytes_bomb = inputs / "rows.parquet", inputs / "bytes.parquet"
    _dictionary_parquet(rows_bomb, 2_000_000, 1)  # 2 GB of text once decoded
    _dictionary_parquet(bytes_bomb, 600_000, 2)  # 1.2 GB, under the row limit
    long_label = _distance_rows("y" * 5000, [[1, 2], [3, 4]])
    long_tables = [inputs / f"long.{ext}" for ext in ("csv", "parquet", "json")]
    pd.DataFrame(long_label).to_csv(long_tables[0], index=False)
    pd.DataFrame(long_label).to_parquet(long_tables[1], index=False)
    pd.DataFrame(long_label).to_json(long_tables[2], orient="records")
    (out / "adir").mkdir()
    os.mkfifo(out / "fifo")
    device = None
    if os.geteuid() == 0:  # as root, a device node named as the output stem (the issue's /dev/stdout case)
        device = out / "device"
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    render = ["render-attn", ckpt_a, "--image", image]
    cases = {
        "run two": {"argv": ["run", ckpt_a, ckpt_b, "--bootstrap", "0", "--out", out / "two.csv"]},
        "alone a": {"argv": ["attn-distance", ckpt_a, "--bootstrap", "0", "--out", out / "a.csv"]},
        "alone b": {"argv": ["attn-distance", ckpt_b, "--bootstrap", "0", "--out", out / "b.csv"]},
        "run twice": {"argv": ["run", ckpt_a, ckpt_a, "--bootstrap", "0", "--out", out / "twice.csv"]},
        "run twice, two spellings": {"argv": ["run", ckpt_a, inputs / "runs" / ".." / "runs" / "a" /
                                              "checkpoint-last.pth", "--bootstrap", "0", "--out", out / "twice2.csv"]},
        "figures twice": {"argv": ["figures", table_a, table_a, "--out", out / "f_twice"]},
        "figures units": {"argv": ["figures", mixed_units, "--out", out / "f_units"]},
        "figures taus": {"argv": ["figures", taus, "--out", out / "f_taus"]},
        "figures non-finite": {"argv": ["figures", non_finite, "--out", out / "f_nonfinite"]},
        "figures many": {"argv": ["figures", many, "--out", out / "f_many"], "timeout": 30},
        "render queries": {"argv": [*render, "--query", "0-15", "--out", out / "r_queries"],
                           "env": {"MAEPROBE_MAX_PANELS": "20"}},
        "render heads": {"argv": ["render-attn", wide, "--image", image, "--encoder", "--layers", "0-7", "--out",
                                  out / "r_heads"], "timeout": 60},
        "out .": {"argv": [*render, "--out", "."], "cwd": out / "adir"},
        "out /": {"argv": [*render, "--out", "/"]},
        "out empty": {"argv": [*render, "--out", ""], "cwd": out / "adir"},
        "out long": {"argv": [*render, "--out", out / ("x" * 300)]},
        "out folder": {"argv": [*render, "--out", out / "adir"]},
        "out fifo": {"argv": [*render, "--out", out / "fifo"], "timeout": 20},
        "out /dev/stdout": {"argv": [*render, "--out", "/dev/stdout"]},
        "run formula": {"argv": ["run", formula, "--bootstrap", "0", "--out", out / "formula.csv"]},
        "parquet rows": {"argv": ["figures", rows_bomb, "--out", out / "f_rows"]},
        "parquet bytes": {"argv": ["figures", bytes_bomb, "--out", out / "f_bytes"]},
        **{f"long {path.suffix}": {"argv": ["figures", path, "--out", out / "f_long"]} for path in long_tables},
        "figures apart": {"argv": ["figures", table_a, table_b, "--out", out / "f_apart"]},
    }
    if device is not None:
        cases["out device"] = {"argv": [*render, "--out", device]}
    before = snapshot(root)
    results = dict(zip(cases, run_cases(list(cases.values()), root, timeout=60)))
    written_in_dev = [p for p in (Path("/dev/stdout.png"), Path("/dev/stdout.pdf")) if p.is_file()]
    for path in written_in_dev:  # the case, should a regression write there as root
        path.unlink()
    return {"root": root, "out": out, "results": results, "device": device, "tables": (table_a, table_b),
            "changed": changed_outside(before, snapshot(root), ["out"]), "written_in_dev": written_in_dev}


def _result(attack, name: str):
    return attack["results"][name]


@pytest.mark.slow
def test_nothing_written_outside_the_output(attack):
    assert attack["changed"] == [], attack["changed"]


# -------------------------------------------------------------------------------- 1. no silent merge of inputs
@pytest.mark.slow
def test_run_keeps_same_named_checkpoints_apart(attack):
    for name in ("run two", "alone a", "alone b"):
        assert_clean_exit(_result(attack, name))
    out = attack["out"]
    both, alone_a, alone_b = (pd.read_csv(out / name) for name in ("two.csv", "a.csv", "b.csv"))
    assert sorted(set(both["checkpoint"])) == ["a/checkpoint-last.pth", "b/checkpoint-last.pth"]
    assert len(both) == len(alone_a) + len(alone_b)
    for label, alone in (("a/checkpoint-last.pth", alone_a), ("b/checkpoint-last.pth", alone_b)):
        mine = both[both["checkpoint"] == label].sort_values(["layer", "head"])["value"].to_numpy()
        np.testing.assert_allclose(mine, alone.sort_values(["layer", "head"])["value"].to_numpy(), rtol=1e-6)
    # each row says which file it measured, so figures can tell inputs apart later
    assert both.groupby("checkpoint")["checkpoint_path"].nunique().eq(1).all()
    assert both["checkpoint_path"].nunique() == 2


@pytest.mark.parametrize("name", ["run twice", "run twice, two spellings"])
@pytest.mark.slow
def test_the_same_checkpoint_twice_is_refused(attack, name):
    assert_refused(_result(attack, name), "given twice")


@pytest.mark.slow
def test_the_same_results_file_twice_is_refused(attack):
    assert_refused(_result(attack, "figures twice"), "given twice")


@pytest.mark.slow
def test_figures_of_two_same_named_runs_succeed(attack):
    assert_clean_exit(_result(attack, "figures apart"))


@pytest.fixture
def captured(monkeypatch):
    """The figure objects as they are saved."""
    from maeprobe.plots import figures as figmod

    seen = []

    def keep(fig, paths, dpi):
        seen.append(fig)
        return paths

    monkeypatch.setattr(figmod, "save_figure", keep)
    return seen


def _lines(fig) -> dict[str, np.ndarray]:
    """Legend text -> y data of each drawn line (dots and reference lines excluded)."""
    ax = fig.axes[0]
    return {line.get_label(): np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()
            if not line.get_label().startswith(("_", "uniform"))}


@pytest.mark.slow
def test_figures_draw_same_named_tables_as_two_lines(attack, captured, tmp_path):
    from maeprobe.plots import make_figures
    from maeprobe.results import read_tables

    make_figures(read_tables(list(attack["tables"])), tmp_path, figures=["fig5"])
    lines = _lines(captured[0])
    assert len(lines) == 2, lines
    a = [v for k, v in lines.items() if "a/" in k.replace("\n", "")]
    b = [v for k, v in lines.items() if "b/" in k.replace("\n", "")]
    np.testing.assert_allclose(a[0], [1.5, 3.5])  # per layer, the mean of that table's heads
    np.testing.assert_allclose(b[0], [5.5, 7.5])


def test_rows_of_two_files_under_one_label_stay_two_lines(captured, tmp_path):
    from maeprobe.plots import make_figures

    table = pd.DataFrame(_distance_rows("checkpoint-last.pth", [[1, 2], [3, 4]], checkpoint_path="x/1/c.pth") +
                         _distance_rows("checkpoint-last.pth", [[5, 6], [7, 8]], checkpoint_path="y/1/c.pth"))
    make_figures(table, tmp_path, figures=["fig5"])
    lines = _lines(captured[0])
    assert sorted(np.round(v[0], 6) for v in lines.values()) == [1.5, 5.5], lines
    assert all("x/1" in k or "y/1" in k for k in (k.replace("\n", "") for k in lines)), lines


def test_one_input_measured_twice_under_one_label_is_refused(tmp_path):
    from maeprobe import MaeprobeError
    from maeprobe.plots import make_figures

    table = pd.DataFrame(_distance_rows("m.pth", [[1, 2], [3, 4]], seed=0) +
                         _distance_rows("m.pth", [[5, 6], [7, 8]], seed=1))
    with pytest.raises(MaeprobeError, match="seed"):
        make_figures(table, tmp_path, figures=["fig5"])


@pytest.mark.parametrize("metric", ["attention_nmi", "knn_accuracy", "attention_distance", "attention_entropy"])
@pytest.mark.parametrize("lost", ["layer", "head"])
def test_a_hand_edited_table_with_a_row_missing_its_layer_or_head_is_one_line(tmp_path, metric, lost):
    """A per-head row whose head was deleted looks like a second per-layer row of that layer; a row without its
    layer has no place on any axis: both a MaeprobeError of one line, not pandas' own error (pandas 3 keeps NaN
    through ``astype(str)``)."""
    from maeprobe import MaeprobeError
    from maeprobe.plots import make_figures

    rows = [{"metric": metric, "module": "encoder", "layer": layer, "head": head, "value": 0.1 + layer / 10 + head / 50,
             "checkpoint": "a.pth", "mask_ratio": 0.0, "images": 8, "chance_level": 0.5, "include_prefix": False}
            for layer in range(3) for head in (0, 1)]
    rows += [{**row, "head": np.nan} for row in rows if row["head"] == 0]  # the per-layer rows
    table = pd.DataFrame(rows)
    table.loc[0 if lost == "head" else len(table) - 1, lost] = np.nan
    with pytest.raises(MaeprobeError) as refused:
        make_figures(table, tmp_path / "figs")
    message = str(refused.value)
    assert "\n" not in message and ("without a layer" in message if lost == "layer" else "layer 0" in message)


def test_knn_chance_levels_are_one_per_line(tmp_path):
    """The k-NN figure draws each line's chance level: a hand-edited table whose chance level changes along a line
    is refused in one line (so the levels drawn are at most the lines, which MAEPROBE_MAX_FIGURE_LINES bounds)."""
    from maeprobe import MaeprobeError
    from maeprobe.plots import make_figures

    rows = [{"metric": "knn_accuracy", "module": "encoder", "layer": layer, "head": np.nan, "value": 0.5 + layer / 10,
             "checkpoint": name, "mask_ratio": 0.0, "images": 8, "chance_level": level}
            for name, level in (("a.pth", 0.25), ("b.pth", 0.5)) for layer in range(3)]
    assert make_figures(pd.DataFrame(rows), tmp_path / "ok", figures=["knn"])  # two lines, two levels
    rows[1]["chance_level"] = 0.3
    with pytest.raises(MaeprobeError, match="a.pth.* different chance_level") as refused:
        make_figures(pd.DataFrame(rows), tmp_path / "bad", figures=["knn"])
    assert "\n" not in str(refused.value)


# ----------------------------------------------------------------------- 2. one unit and one setting per axis
@pytest.mark.slow
def test_units_are_not_mixed_on_one_axis(attack):
    assert_refused(_result(attack, "figures units"), "units", "px", "patches")


@pytest.mark.slow
def test_eq8_settings_are_not_mixed_on_one_axis(attack):
    assert_refused(_result(attack, "figures taus"), "tau", "0.15", "0.3")


def test_eq8_feature_settings_are_not_mixed(tmp_path):
    from maeprobe import MaeprobeError
    from maeprobe.plots import make_figures

    table = pd.DataFrame(_eq8_rows("m.pth", 0.15, "keys") + _eq8_rows("n.pth", 0.15, "tokens"))
    with pytest.raises(MaeprobeError, match="ref_features"):
        make_figures(table, tmp_path, figures=["fig3"])


# -------------------------------------------------------------------------------- 3. non-finite values named
@pytest.mark.slow
def test_non_finite_values_are_counted_on_the_console(attack):
    result = _result(attack, "figures non-finite")
    assert_clean_exit(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert any("3 non-finite values" in line and "2 of m.pth" in line and "1 of n.pth" in line
               for line in warnings), result.describe()


def test_non_finite_values_are_counted_in_the_caption(captured, tmp_path):
    from maeprobe.plots import make_figures

    table = pd.DataFrame(_distance_rows("m.pth", [[1, np.nan], [3, np.inf]]) +
                         _distance_rows("n.pth", [[1, 2], [3, 4]]))
    with pytest.warns(UserWarning, match="non-finite"):
        make_figures(table, tmp_path, figures=["fig5"])
    fig = captured[0]
    text = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "2 non-finite values" in text and "m.pth" in text, text
    lines = _lines(fig)
    np.testing.assert_allclose(lines["m.pth"], [1.0, 3.0])  # the finite heads of each layer
    np.testing.assert_allclose(lines["n.pth"], [1.5, 3.5])


# ----------------------------------------------------------------------------------- 4. bounded figure size
@pytest.mark.slow
def test_thousands_of_labels_are_refused_quickly(attack):
    result = _result(attack, "figures many")
    assert_refused(result, "3,000", "MAEPROBE_MAX_FIGURE_LINES")


# ------------------------------------------------------------------------------------ 5. bounded renders
@pytest.mark.slow
def test_render_query_count_is_bounded(attack):
    assert_refused(_result(attack, "render queries"), "64", "MAEPROBE_MAX_PANELS")  # 16 queries x (2 + 2 layers)
    assert not list(attack["out"].glob("r_queries*"))


@pytest.mark.slow
def test_render_head_count_is_bounded(attack):
    assert_refused(_result(attack, "render heads"), "264", "MAEPROBE_MAX_PANELS")  # 8 layers x (32 heads + 1)
    assert not list(attack["out"].glob("r_heads*"))


# --------------------------------------------------------------------------------------- 6. output paths
@pytest.mark.parametrize("name, text", [("out .", "names a folder"), ("out /", "--out"), ("out empty", "--out"),
                                        ("out long", "255 bytes"), ("out folder", "is a folder"),
                                        ("out fifo", "not a regular file"), ("out /dev/stdout", "/dev")])
@pytest.mark.slow
def test_render_output_paths_are_checked(attack, name, text):
    assert_refused(_result(attack, name), "--out", text)
    assert not attack["written_in_dev"]


@pytest.mark.slow
def test_render_next_to_a_device_is_refused(attack):
    if attack["device"] is None:
        pytest.skip("creating a device node needs root")
    assert_refused(_result(attack, "out device"), "not a regular file")
    assert not (attack["out"] / "device.png").exists() and not (attack["out"] / "device.pdf").exists()


@pytest.mark.parametrize("out", ["", ".", "/", "x" * 300, "a/..", 17, None])
def test_api_writers_check_output_paths(tmp_path, monkeypatch, out):
    from maeprobe import MaeprobeError
    from maeprobe.plots.figures import save_figure

    monkeypatch.chdir(tmp_path)
    import matplotlib.pyplot as plt

    fig = plt.figure()
    try:
        with pytest.raises(MaeprobeError):
            save_figure(fig, [out], dpi=50)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------ 7. CSV formula injection
@pytest.mark.slow
def test_checkpoint_names_never_become_formulas(attack):
    assert_clean_exit(_result(attack, "run formula"))
    with open(attack["out"] / "formula.csv", newline="") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert "'=1+2.pth" in cells and "=1+2.pth" not in cells


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "'quoted"])
def test_csv_cells_are_neutralised_and_read_back(tmp_path, text):
    from maeprobe.results import read_table, write_table

    frame = pd.DataFrame(_distance_rows(text, [[1, 2], [3, 4]]))
    path = write_table(frame, tmp_path / "t.csv")
    with open(path, newline="") as f:
        cells = [row[list(frame.columns).index("checkpoint")] for row in list(csv.reader(f))[1:]]
    assert all(cell == "'" + text for cell in cells), cells  # OWASP: a leading quote makes it text
    assert set(read_table(path)["checkpoint"]) == {text}


# ------------------------------------------------------------------------------------------- 8. Parquet bombs
@pytest.mark.slow
def test_parquet_rows_are_bounded_before_reading(attack):
    assert_refused(_result(attack, "parquet rows"), "2,000,000", "MAEPROBE_MAX_TABLE_ROWS", budget_mb=300)


@pytest.mark.slow
def test_parquet_decoded_size_is_bounded_before_reading(attack):
    assert_refused(_result(attack, "parquet bytes"), "MAEPROBE_MAX_TABLE_BYTES", budget_mb=300)


# --------------------------------------------------------------------- 9. the label check on every string dtype
@pytest.mark.slow
def test_text_columns_read_as_pandas_strings_are_checked(attack, tmp_path):
    assert pd.read_csv(attack["root"] / "in" / "long.csv")["checkpoint"].dtype != object  # pandas 3: str dtype
    for suffix in (".csv", ".parquet", ".json"):
        assert_refused(_result(attack, f"long {suffix}"), "longer than 1000 characters")


def test_read_table_checks_pandas_string_columns(tmp_path):
    from maeprobe import MaeprobeError
    from maeprobe.results import read_table

    frame = pd.DataFrame(_distance_rows("z" * 1001, [[1, 2], [3, 4]]))
    frame["checkpoint"] = frame["checkpoint"].astype("string")
    frame.to_parquet(tmp_path / "s.parquet", index=False)
    with pytest.raises(MaeprobeError, match="longer than 1000"):
        read_table(tmp_path / "s.parquet")


# --------------------------------------------------------------------------------------------- 10. Python API
@pytest.fixture(scope="module")
def api_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    return {"model": _tiny_mae(0), "images": torch.randn(3, 3, 32, 32), "image": _image(root / "p.png"),
            "root": root}


def _api_cases():
    import maeprobe as mp

    nan = math.nan
    table = pd.DataFrame(_distance_rows("m.pth", [[1, 2], [3, 4]]))
    cases = {
        "run tau nan": lambda m, x, p, r: mp.run([m], x, metrics=["decoder-semantics"], reference=m, tau=nan,
                                                  bootstrap=0),
        "run tau inf": lambda m, x, p, r: mp.run([m], x, metrics=["decoder-semantics"], reference=m, tau=math.inf,
                                                  bootstrap=0),
        "run tau text": lambda m, x, p, r: mp.run([m], x, metrics=["decoder-semantics"], reference=m, tau="0.1",
                                                   bootstrap=0),
        "semantic tau nan": lambda m, x, p, r: mp.decoder_semantic_similarity(m, m, x, tau=nan, bootstrap=0),
        "semantic center text": lambda m, x, p, r: mp.decoder_semantic_similarity(m, m, x, center="no", bootstrap=0),
        "semantic reference int": lambda m, x, p, r: mp.decoder_semantic_similarity(m, 5, x, bootstrap=0),
        "run no checkpoints": lambda m, x, p, r: mp.run([], x, bootstrap=0),
        "run checkpoint None": lambda m, x, p, r: mp.run(None, x, bootstrap=0),
        "run checkpoint int": lambda m, x, p, r: mp.run([7], x, bootstrap=0),
        "run same model twice": lambda m, x, p, r: mp.run([m, m], x, bootstrap=0),
        "run metrics empty": lambda m, x, p, r: mp.run([m], x, metrics=[], bootstrap=0),
        "run metrics None": lambda m, x, p, r: mp.run([m], x, metrics=None, bootstrap=0),
        "run metrics int": lambda m, x, p, r: mp.run([m], x, metrics=[1], bootstrap=0),
        "run mask text": lambda m, x, p, r: mp.run([m], x, mask_ratio="half", bootstrap=0),
        "run mask_ratios list": lambda m, x, p, r: mp.run([m], x, mask_ratios=[0.5], bootstrap=0),
        "run mask_ratios text": lambda m, x, p, r: mp.run([m], x, mask_ratios={"attn-distance": "x"}, bootstrap=0),
        "run layers empty": lambda m, x, p, r: mp.run([m], x, layers=[], bootstrap=0),
        "run reference int": lambda m, x, p, r: mp.run([m], x, metrics=["decoder-semantics"], reference=3,
                                                        bootstrap=0),
        "distance model int": lambda m, x, p, r: mp.attention_distance(123, x, bootstrap=0),
        "distance model None": lambda m, x, p, r: mp.attention_distance(None, x, bootstrap=0),
        "distance images int": lambda m, x, p, r: mp.attention_distance(m, 123, bootstrap=0),
        "distance images list of paths": lambda m, x, p, r: mp.attention_distance(m, [str(p)], bootstrap=0),
        "distance images integer tensor": lambda m, x, p, r: mp.attention_distance(m, x.long(), bootstrap=0),
        "distance images nan": lambda m, x, p, r: mp.attention_distance(m, torch.full_like(x, nan), bootstrap=0),
        "distance layers empty": lambda m, x, p, r: mp.attention_distance(m, x, layers=[], bootstrap=0),
        "distance layers text": lambda m, x, p, r: mp.attention_distance(m, x, layers="0", bootstrap=0),
        "distance layers fraction": lambda m, x, p, r: mp.attention_distance(m, x, layers=[0.5], bootstrap=0),
        "distance layers nan": lambda m, x, p, r: mp.attention_distance(m, x, layers=[nan], bootstrap=0),
        "distance layers int": lambda m, x, p, r: mp.attention_distance(m, x, layers=1, bootstrap=0),
        "distance renormalize text": lambda m, x, p, r: mp.attention_distance(m, x, renormalize="yes", bootstrap=0),
        "distance load option on a model": lambda m, x, p, r: mp.attention_distance(m, x, bogus=1, bootstrap=0),
        "distance unknown load option": lambda m, x, p, r: mp.attention_distance(str(r / "none.pth"), x, bogus=1,
                                                                                 bootstrap=0),
        "entropy layers empty": lambda m, x, p, r: mp.attention_entropy(m, x, layers=[], bootstrap=0),
        "entropy model int": lambda m, x, p, r: mp.attention_entropy(1, x, bootstrap=0),
        "eq7 layers empty": lambda m, x, p, r: mp.decoder_attention_similarity(m, x, layers=[], bootstrap=0),
        "eq7 images int": lambda m, x, p, r: mp.decoder_attention_similarity(m, 5, bootstrap=0),
        "spectrum layers empty": lambda m, x, p, r: mp.feature_spectrum(m, x, layers=[], bootstrap=0),
        "spectrum images nan": lambda m, x, p, r: mp.feature_spectrum(m, torch.full_like(x, nan), bootstrap=0),
        "load_reference int": lambda m, x, p, r: mp.load_reference(123),
        "load_reference None": lambda m, x, p, r: mp.load_reference(None),
        "render image int": lambda m, x, p, r: mp.render_attention(m, 123, r / "o"),
        "render image None": lambda m, x, p, r: mp.render_attention(m, None, r / "o"),
        "render out int": lambda m, x, p, r: mp.render_attention(m, p, 123),
        "render out None": lambda m, x, p, r: mp.render_attention(m, p, None),
        "render out empty": lambda m, x, p, r: mp.render_attention(m, p, ""),
        "render out root": lambda m, x, p, r: mp.render_attention(m, p, "/"),
        "render queries empty": lambda m, x, p, r: mp.render_attention(m, p, r / "o", queries=[]),
        "render queries nan": lambda m, x, p, r: mp.render_attention(m, p, r / "o", queries=[nan]),
        "render queries fraction": lambda m, x, p, r: mp.render_attention(m, p, r / "o", queries=[1.5]),
        "render queries text": lambda m, x, p, r: mp.render_attention(m, p, r / "o", queries="x"),
        "render queries int": lambda m, x, p, r: mp.render_attention(m, p, r / "o", queries=5),
        "render layers empty": lambda m, x, p, r: mp.render_attention(m, p, r / "o", layers=[]),
        "render encoder layers empty": lambda m, x, p, r: mp.render_attention(m, p, r / "o", layers=[],
                                                                              encoder=True),
        "render encoder text": lambda m, x, p, r: mp.render_attention(m, p, r / "o", encoder="yes"),
        "render load option on a model": lambda m, x, p, r: mp.render_attention(m, p, r / "o", bogus=1),
        "render queries bool": lambda m, x, p, r: mp.render_attention(m, p, r / "o", queries=[True]),
        "figures table int": lambda m, x, p, r: mp.make_figures(123, r / "f"),
        "figures table None": lambda m, x, p, r: mp.make_figures(None, r / "f"),
        "figures empty table": lambda m, x, p, r: mp.make_figures(pd.DataFrame(), r / "f"),
        "figures no module": lambda m, x, p, r: mp.make_figures(table.drop(columns=["module"]), r / "f"),
        "figures out int": lambda m, x, p, r: mp.make_figures(table, 123),
        "figures unknown": lambda m, x, p, r: mp.make_figures(table, r / "f", figures=["fig9"]),
        "figures names int": lambda m, x, p, r: mp.make_figures(table, r / "f", figures=[1]),
        "figures label_by int": lambda m, x, p, r: mp.make_figures(table, r / "f", label_by=1),
        "figures mix text": lambda m, x, p, r: mp.make_figures(table, r / "f", mix_mask_settings="no"),
        "figures values text": lambda m, x, p, r: mp.make_figures(table.assign(value="x"), r / "f"),
        "read_table int": lambda m, x, p, r: mp.read_table(123),
        "read_table None": lambda m, x, p, r: mp.read_table(None),
        "write_table int path": lambda m, x, p, r: mp.write_table(table, 123),
        "write_table list": lambda m, x, p, r: mp.write_table([1, 2], r / "t.csv"),
        "write_table empty path": lambda m, x, p, r: mp.write_table(table, ""),
        "to_frame int": lambda m, x, p, r: mp.to_frame(123),
        "to_frame list of int": lambda m, x, p, r: mp.to_frame([1]),
        "to_frame context int": lambda m, x, p, r: mp.to_frame([], context=5),
    }
    return cases


API_CASES = _api_cases()


@pytest.mark.parametrize("name", list(API_CASES))
def test_python_api_refuses_bad_arguments(api_inputs, name):
    from maeprobe import MaeprobeError

    with pytest.raises(MaeprobeError):
        API_CASES[name](api_inputs["model"], api_inputs["images"], api_inputs["image"], api_inputs["root"])
    assert not list(api_inputs["root"].glob("o.*")) and not (api_inputs["root"] / "f").exists()
