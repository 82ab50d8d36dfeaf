"""The demo's teaching summary (maeprobe/demo.py) and the encoder render's row labels (plots/render.py).

Expected values are worked out by hand from hand-made tables, and Eq. 8's chance level is checked against a
simulation of unrelated binary affinity matrices (numpy), not against the code under test. The end-to-end demo run
is marked slow."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from helpers.figures import inside

UNTRAINED, TRAINED = "mae_tiny_untrained.pth", "mae_tiny_trained.pth"


def _heads(metric: str, values: dict[str, list[tuple[float, float, float]]], level: float) -> pd.DataFrame:
    """Rows of a per-(layer, head) metric: two heads per layer with the same value and interval (so the mean over
    heads is that value), per checkpoint a list of (value, ci_low, ci_high) by layer."""
    rows = []
    for checkpoint, layers in values.items():
        for layer, (value, low, high) in enumerate(layers):
            for head in range(2):
                rows.append({"metric": metric, "module": "encoder", "layer": layer, "head": head, "value": value,
                             "ci_low": low, "ci_high": high, "uniform_level": level, "checkpoint": checkpoint,
                             "n_images": 13, "n_units": 12})
    return pd.DataFrame(rows)


def test_sentence_counts_the_layers_whose_intervals_are_apart():
    from maeprobe.demo import compare

    table = _heads("attention_entropy", {
        UNTRAINED: [(4.10, 4.08, 4.12), (4.11, 4.09, 4.13), (4.12, 4.10, 4.14)],
        TRAINED: [(3.90, 3.85, 3.95), (4.05, 4.00, 4.10), (3.70, 3.60, 3.80)],  # apart in layers 1 and 3
    }, level=math.log(65))
    (entropy,) = compare(table)
    # by hand: gaps 4.10 - 3.90 = 0.200 and 4.12 - 3.70 = 0.420; layer 2's intervals overlap (4.09 < 4.10)
    assert "below the untrained one in 2 of 3 layers (1, 3; by 0.200-0.420 nats)" in entropy.at_this_scale
    assert "overlap elsewhere" in entropy.at_this_scale
    # ln 65 = 4.174: the untrained model within |4.10 - 4.174| / 4.174 = 1.8%, the trained within 11.4%
    assert "the untrained model within 1.8% and the trained model within 11.4%" in entropy.at_this_scale


def test_overlapping_intervals_say_the_measure_does_not_tell_the_models_apart():
    from maeprobe.demo import compare

    table = _heads("attention_distance", {UNTRAINED: [(32.4, 32.0, 32.8), (32.5, 32.1, 32.9)],
                                          TRAINED: [(31.8, 30.8, 32.5), (33.5, 32.2, 35.1)]}, level=32.58)
    (distance,) = compare(table)
    assert distance.at_this_scale.startswith("The trained model's 95% intervals overlap the untrained model's in "
                                             "both layers")
    assert "below" not in distance.at_this_scale and "above" not in distance.at_this_scale


def test_no_interval_is_said_instead_of_a_verdict():
    from maeprobe.demo import compare

    table = _heads("attention_distance", {UNTRAINED: [(32.4, np.nan, np.nan)], TRAINED: [(30.0, np.nan, np.nan)]},
                   level=32.58)
    (distance,) = compare(table)
    assert distance.at_this_scale.startswith("No intervals")


def test_chance_similarity_is_the_mean_cosine_of_unrelated_binary_matrices():
    """A simulation: symmetric binary W with a diagonal of ones and independent off-diagonal entries."""
    from maeprobe.demo import chance_similarity

    rng = np.random.default_rng(0)
    n, off_p, off_q = 16, 0.3, 0.6

    def draw(off):
        upper = np.triu(rng.random((n, n)) < off, 1)
        return (upper | upper.T | np.eye(n, dtype=bool)).astype(float)

    cosines, p, q = [], [], []
    for _ in range(4000):
        a, b = draw(off_p), draw(off_q)
        cosines.append((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
        p.append(a.mean())
        q.append(b.mean())
    expected = chance_similarity(np.mean(p), np.mean(q), n)
    assert np.mean(cosines) == pytest.approx(expected, abs=0.005)
    assert abs(np.mean(cosines) - math.sqrt(np.mean(p) * np.mean(q))) > 0.01  # the diagonal matters at n = 16


def test_chance_against_an_all_ones_matrix_is_the_square_root_of_the_other_density():
    from maeprobe.demo import chance_similarity

    # |W_ref|^2 = n^2 q, W . W_ref = n^2 q when W is all ones: cos = n^2 q / (n * n sqrt(q)) = sqrt(q)
    assert chance_similarity(1.0, 0.36, 64) == pytest.approx(0.6)
    assert chance_similarity(0.25, 0.36) == pytest.approx(0.3)  # the large-n limit sqrt(p q)


def _demo_table() -> pd.DataFrame:
    """Every metric the demo summarises, for two checkpoints (Eq. 7 and 8 per layer, the effective rank per
    feature, a 4-wide spectrum so that the rank's upper bound is min(13 - 1, 4) = 4)."""
    parts = [
        _heads("attention_distance", {UNTRAINED: [(32.4, 32.0, 32.8)], TRAINED: [(31.0, 30.5, 31.5)]}, 32.58),
        _heads("attention_entropy", {UNTRAINED: [(4.1, 4.08, 4.12)], TRAINED: [(3.9, 3.85, 3.95)]}, 4.174),
    ]
    rows = []
    for checkpoint, (s7, s8, rank) in ((UNTRAINED, (0.97, 0.876, 3.1)), (TRAINED, (0.83, 0.752, 2.9))):
        base = {"checkpoint": checkpoint, "n_images": 13, "n_units": 12, "head": None}
        rows.append({**base, "metric": "decoder_attention_similarity", "module": "decoder", "layer": 0,
                     "value": s7, "ci_low": s7 - 0.01, "ci_high": s7 + 0.01})
        rows.append({**base, "metric": "decoder_semantic_similarity", "module": "decoder", "layer": 0, "value": s8,
                     "ci_low": s8 - 0.05, "ci_high": s8 + 0.05, "w_density": 0.5, "ref_w_density": 0.5, "tau": 0.15})
        rows.append({**base, "metric": "effective_rank", "module": "encoder", "layer": 5, "feature": "cls",
                     "value": rank, "ci_low": rank - 0.5, "ci_high": rank + 0.5})
        rows += [{**base, "metric": "feature_spectrum", "module": "encoder", "layer": 5, "feature": "cls",
                  "component": k, "value": 1.0 / (k + 1)} for k in range(4)]
    return pd.concat([*parts, pd.DataFrame(rows)], ignore_index=True)


def test_summary_shows_every_metric_with_its_level_interval_and_both_scales():
    from maeprobe.demo import compare, summary_text

    comparisons = compare(_demo_table(), num_patches=64)
    assert [c.metric for c in comparisons] == ["attention_distance", "attention_entropy",
                                               "decoder_attention_similarity", "decoder_semantic_similarity",
                                               "effective_rank"]
    text = summary_text(comparisons, scale="a test", reference="a stand-in")
    assert "32.40 [32.00, 32.80]" in text and "31.00 [30.50, 31.50]" in text  # estimate [95% interval]
    assert "uniform attention" in text and "32.58" in text and "4.174" in text and "1.000" in text
    assert "upper bound" in text and "4.00" in text  # min(13 - 1, 4)
    # chance at densities 0.5 and 0.5 on 64 patches, by hand: p' = (4096 * 0.5 - 64) / 4032 = 0.49206;
    # (64 + 4032 * 0.49206^2) / (4096 * 0.5) = 1040.25 / 2048 = 0.5079
    assert "0.508" in text
    for cited in ("LC-MAE Section 4.2, Fig. 5", "LC-MAE Section 4.1, Fig. 2", "LC-MAE Section 4.1, Fig. 3",
                  "U-MAE", "neither LC-MAE nor U-MAE"):
        assert f"Full scale: {cited}" in text.replace("\n    ", " ")
    assert text.count("At this scale:") == 5
    assert max(len(line) for line in text.splitlines() if "[" not in line) <= 116


def test_overview_figure_names_checkpoints_units_intervals_and_levels(tmp_path, captured):
    from maeprobe.demo import compare, overview_figure

    comparisons = compare(_demo_table(), num_patches=64)
    overview_figure(comparisons, tmp_path / "demo_overview", scale="a test run")
    (fig,) = captured
    texts = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any(UNTRAINED in t for t in texts) and any(TRAINED in t for t in texts)
    panels = [ax for ax in fig.axes if ax.get_ylabel()]
    assert len(panels) == 5
    assert any("(px)" in ax.get_ylabel() for ax in panels) and any("(nats)" in ax.get_ylabel() for ax in panels)
    for ax in panels:
        assert "dotted:" in ax.get_title()  # the level is named in the title ...
        assert any(line.get_linestyle() == ":" for line in ax.get_lines())  # ... and drawn
        assert ax.collections or any(c for c in ax.containers)  # bands or error bars: the intervals
        assert inside(fig, ax.title)
    caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    for c in comparisons:  # what each comparison shows at this scale, under the panels
        assert f"{c.title}: {c.at_this_scale}" in caption


def test_encoder_render_names_the_layer_beside_the_photo_not_over_it(tmp_path, captured):
    import torch

    from maeprobe.capture import ActivationCache
    from maeprobe.plots.render import render_encoder_attention

    grid, prefix = 4, 1
    N = grid * grid + prefix
    cache = ActivationCache()
    cache.attention[("encoder", 5)] = torch.softmax(torch.randn(1, 2, N, N), -1)
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    render_encoder_attention(image, cache, layers=[5], grid=grid, out=tmp_path / "enc", title="mae_tiny_trained.pth")
    (fig,) = captured
    photo = fig.axes[0]
    assert photo.get_title() == "input"
    (label,) = [t for t in photo.texts if t.get_text() == "encoder layer 6"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the drawing code closed the figure, detaching its canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    box, frame = label.get_window_extent(renderer), photo.get_window_extent(renderer)
    assert box.x1 <= frame.x0 + 1  # left of the photo, not on or above it
    assert frame.y0 <= (box.y0 + box.y1) / 2 <= frame.y1  # centred on the photo's row
    assert inside(fig, label)


def test_demo_outputs_cover_the_new_files_and_keep_results_csv_first(tmp_path):
    from maeprobe.demo import demo_outputs

    names = [str(p.relative_to(tmp_path)) for p in demo_outputs(tmp_path)]
    assert names[0] == "results.csv"  # the table compared byte for byte across commits
    for name in ("results-extra.csv", "summary.txt", "figures/demo_overview.png", "figures/entropy.png",
                 "renders/decoder_attention_trained.png", "renders/decoder_attention_untrained.png",
                 "renders/encoder_attention_trained.png", "renders/encoder_attention_untrained.pdf"):
        assert name in names


@pytest.mark.slow
def test_demo_runs_end_to_end_and_keeps_results_csv_to_its_four_metrics(tmp_path):
    """Two optimiser steps: the pipeline, not the training. results.csv holds exactly the four metrics it always
    held (attention entropy goes to results-extra.csv), every output is written, the summary is printed."""
    from maeprobe.demo import demo_outputs, run_demo
    from maeprobe.results import read_table

    printed = []
    run_demo(tmp_path / "d", steps=2, progress=False, echo=printed.append)
    assert all(p.is_file() for p in demo_outputs(tmp_path / "d"))
    table, extra = read_table(tmp_path / "d" / "results.csv"), read_table(tmp_path / "d" / "results-extra.csv")
    assert set(table["metric"]) == {"attention_distance", "decoder_attention_similarity",
                                    "decoder_semantic_similarity", "feature_spectrum", "effective_rank"}
    assert set(extra["metric"]) == {"attention_entropy"}
    summary = (tmp_path / "d" / "summary.txt").read_text()
    assert summary.strip() in "\n".join(printed)
    assert summary.count("At this scale:") == 5
