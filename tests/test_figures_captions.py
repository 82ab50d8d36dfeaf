"""What each figure states, read from the figure objects (issue 26, items 3 and 7): a title of at most two short
lines; a caption below the axes that says "no interval" when the table has none and otherwise over how many
independent units the 95% CI was computed; the band drawn when there is one; the title, x label and caption inside
the canvas even with a long legend entry; Fig. A.1 not titled "autoencoders" for checkpoints not known to be; the
feature spectrum's layer, its n-1 cap and its per-component band. Hand-made tables, no model runs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from helpers.figures import inside  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from maeprobe.plots import figures as figmod  # noqa: E402

# ``captured`` (the figure objects as saved) is a fixture of conftest.py


def _caption(fig) -> str:
    """The figure-level text below the axes, its wrapped lines joined."""
    return " ".join(" ".join(t.get_text() for t in fig.texts).split())


def _bands(ax) -> int:
    return sum(isinstance(c, PolyCollection) for c in ax.collections)


def _per_layer(metric, names, ci=True, n_units=None, layers=4, **extra):
    rows = []
    for c, name in enumerate(names):
        for layer in range(layers):
            v = 0.5 + 0.05 * layer + 0.1 * c
            rows.append({"metric": metric, "module": "decoder", "layer": layer, "head": np.nan, "value": v,
                         "ci_low": v - 0.02 if ci else np.nan, "ci_high": v + 0.02 if ci else np.nan,
                         "n_images": 16, "checkpoint": name, "mask_ratio": 0.75, "shared_mask": True,
                         **({"n_units": n_units} if n_units is not None else {}), **extra})
    return pd.DataFrame(rows)


def _per_head(names, ratios=None, ci=True, n_units=None):
    rows = []
    for c, (name, ratio) in enumerate(zip(names, ratios or [np.nan] * len(names))):
        for layer in range(4):
            for head in range(3):
                v = 20 + 3 * layer + c + head
                rows.append({"metric": "attention_distance", "module": "encoder", "layer": layer, "head": head,
                             "value": v, "ci_low": v - 1 if ci else np.nan, "ci_high": v + 1 if ci else np.nan,
                             "n_images": 16, "checkpoint": name, "units": "px", "mask_ratio": 0.0,
                             "shared_mask": True, "uniform_level": 32.58, "pretrain_mask_ratio": ratio,
                             **({"n_units": n_units} if n_units is not None else {})})
    return pd.DataFrame(rows)


def _spectrum(names, n_images=8, dim=24, layer=11, ci=True):
    rows = []
    for c, name in enumerate(names):
        for feature in ("cls", "patch_mean"):
            sv = np.exp(-np.arange(dim) * (0.4 + 0.2 * c))
            sv[n_images - 1:] = 0.0  # n centred features have rank <= n - 1
            for k, v in enumerate(sv):
                rows.append({"metric": "feature_spectrum", "module": "encoder", "layer": layer, "head": np.nan,
                             "n_images": n_images, "feature": feature, "component": k, "value": float(v),
                             "ci_low": 0.8 * v if ci else np.nan, "ci_high": 1.2 * v if ci else np.nan,
                             "checkpoint": name, "mask_ratio": 0.0, "shared_mask": True})
            rows.append({"metric": "effective_rank", "module": "encoder", "layer": layer, "head": np.nan,
                         "n_images": n_images, "feature": feature, "component": np.nan, "value": 4.0 + c,
                         "ci_low": 3.5 + c, "ci_high": 4.5 + c, "checkpoint": name, "mask_ratio": 0.0,
                         "shared_mask": True})
    return pd.DataFrame(rows)


def _eq_tables(ci, n_units=None):
    names = ["mae_pretrain_vit_base.pth", "mae_visualize_vit_base.pth"]
    return pd.concat([_per_layer("decoder_attention_similarity", names, ci, n_units, cls_key=False),
                      _per_layer("decoder_semantic_similarity", names, ci, n_units,
                                 reference="dino_vitbase16_pretrain.pth", ref_features="keys", tau=0.15),
                      _per_head(names, ci=ci, n_units=n_units)], ignore_index=True)


def test_no_interval_is_said_and_no_band_promised(tmp_path, captured):
    # before: the titles of Fig. 2 and Fig. 3 said "bands: 95% CI over images" with NaN intervals, no band drawn
    figmod.make_figures(_eq_tables(ci=False), tmp_path, figures=["fig2", "fig3", "fig5"])
    for fig in captured:
        ax = fig.axes[0]
        said = ax.get_title() + " " + _caption(fig)
        assert "no interval" in said, said
        assert "95% CI" not in said and "band:" not in said and "bands:" not in said, said
        assert _bands(ax) == 0


def test_band_drawn_and_its_units_counted(tmp_path, captured):
    # before: no caption below the axes; the title said "over images" whatever the table's resampling unit
    figmod.make_figures(_eq_tables(ci=True, n_units=12), tmp_path, figures=["fig2", "fig3", "fig5"])
    for fig in captured:
        assert _bands(fig.axes[0]) == 2  # one band per checkpoint
        assert "95% CI over 12 source images (bootstrap)" in _caption(fig), _caption(fig)
        assert "no interval" not in _caption(fig)
    captured.clear()
    figmod.make_figures(_eq_tables(ci=True), tmp_path, figures=["fig2"])  # an older table: no n_units column
    assert "95% CI over 16 images (bootstrap)" in _caption(captured[0])


def test_one_checkpoint_without_interval_is_named(tmp_path, captured):
    # before: no caption; the title promised bands for every line
    table = _per_layer("decoder_attention_similarity", ["with_ci.pth", "without_ci.pth"], cls_key=False)
    table.loc[table["checkpoint"] == "without_ci.pth", ["ci_low", "ci_high"]] = np.nan
    figmod.make_figures(table, tmp_path, figures=["fig2"])
    assert "no interval for without_ci.pth" in _caption(captured[0])
    assert _bands(captured[0].axes[0]) == 1


def test_titles_stay_short_and_warnings_go_below(tmp_path, captured):
    # before: Fig. 3 with a W warning had a 6-line title (probe mask, features, tau, reference, warning, bands)
    names = ["mae_pretrain_vit_base.pth", "mae_visualize_vit_base.pth"]
    table = pd.concat([_eq_tables(ci=True, n_units=12),
                       _spectrum(names)], ignore_index=True)
    table.loc[table["metric"] == "decoder_semantic_similarity", "w_flag"] = "all above 0.95"
    figmod.make_figures(table, tmp_path, figures=["fig2", "fig3", "fig5", "fig6", "figA1", "spectrum"])
    assert len(captured) == 6
    for fig in captured:
        for ax in fig.axes:
            if ax.get_title():
                assert ax.get_title().count("\n") <= 1, ax.get_title()
                assert len(max(ax.get_title().split("\n"), key=len)) <= 70, ax.get_title()
                assert inside(fig, ax.title)
        caption = [t for t in fig.texts if t.get_text()]
        assert caption and all(inside(fig, t) for t in caption)
        top_of_caption = max(t.get_window_extent().y1 for t in caption)
        assert all(ax.xaxis.label.get_window_extent().y0 >= top_of_caption - 1 for ax in fig.axes)  # below
    fig3 = captured[1]
    assert "dino_vitbase16_pretrain.pth" in fig3.axes[0].get_title()  # the reference, named in the title
    assert "WARNING: W all above 0.95" in _caption(fig3)


def test_long_legend_entry_keeps_title_and_labels_on_the_canvas(tmp_path, captured):
    # before: the legend beside the axes pushed the title and x label off the canvas (tight_layout gave up)
    table = _per_head(["mae_vit_base_mask0.75_epoch1600_a_long_training_run_name.pth",
                       "a_checkpoint_with_a_very_long_file_name_copied_from_somewhere_else.pth"], ratios=[0.75, np.nan])
    figmod.make_figures(table, tmp_path, figures=["fig6", "fig5"])
    for fig in captured:
        ax = fig.axes[0]
        for artist in (ax.title, ax.xaxis.label, ax.yaxis.label, ax.get_legend()):
            assert inside(fig, artist), artist
        assert ax.get_window_extent().width > 0.4 * fig.bbox.width  # the axes were not squeezed away
    texts = [t.get_text().replace("\n", "") for t in captured[0].axes[0].get_legend().get_texts()]
    assert any("mask ratio 0.75" in t and "mae_vit_base_mask0.75" in t for t in texts)  # ratio and file named
    assert any("a_checkpoint_with_a_very_long_file_name" in t and "not stored" in t for t in texts)


def test_fig_a1_is_titled_by_its_checkpoints(tmp_path, captured):
    # before: titled "Attention distance of autoencoders AE(k)" for MAE checkpoints, no warning
    figmod.make_figures(_per_head(["mae_pretrain_vit_base.pth", "dino.pth"]), tmp_path, figures=["figA1"])
    (fig,) = captured
    title = fig.axes[0].get_title()
    assert "autoencoders" not in title and "mae_pretrain_vit_base.pth" in title and "dino.pth" in title
    assert "not known to be AE(k)" in _caption(fig)


def test_spectrum_states_layer_cap_and_interval(tmp_path, captured):
    # before: title "Feature spectrum: cls / probe mask 0", no layer, no n-1 statement, no band, no caption
    names = ["mae_pretrain_vit_base.pth", "umae.pth"]
    figmod.make_figures(_spectrum(names), tmp_path, figures=["spectrum"])
    figmod.make_figures(_spectrum(names, ci=False), tmp_path, figures=["spectrum"])
    with_ci, without_ci = captured
    for fig in captured:
        assert len(fig.axes) == 2
        for ax in fig.axes:
            assert "encoder layer 12" in ax.get_title()  # table layer 11, numbered from 1 as the paper does
            line = ax.get_lines()[0]
            assert len(line.get_xdata()) == 7  # n - 1 components drawn of 24
        caption = _caption(fig)
        assert "n = 8 images" in caption and "n-1 = 7 nonzero components" in caption, caption
    assert all(_bands(ax) == 2 for ax in with_ci.axes)
    assert "95% CI" in _caption(with_ci) and "no interval" not in _caption(with_ci)
    assert all(_bands(ax) == 0 for ax in without_ci.axes)
    assert "no interval" in _caption(without_ci)
    legend = " ".join(t.get_text() for t in with_ci.axes[0].get_legend().get_texts())
    assert "eff. rank 4.0 [3.5, 4.5]" in " ".join(legend.split())


def test_saved_png_has_nothing_cut_at_its_edges(tmp_path):
    # before: Fig. 6 with a long legend entry was saved with its title cut at the top and its legend at the right
    from PIL import Image

    table = _per_head(["mae_vit_base_mask0.75_epoch1600_a_long_training_run_name.pth",
                       "a_checkpoint_with_a_very_long_file_name_copied_from_somewhere_else.pth"], ratios=[0.75, np.nan])
    paths = figmod.make_figures(table, tmp_path, figures=["fig6"])
    png = np.asarray(Image.open([p for p in paths if p.suffix == ".png"][0]).convert("L"))
    assert 500 < png.shape[1] < 1000  # single-column width at 200 dpi: the caption adds height, never width
    for edge in (png[:2], png[-2:], png[:, :2], png[:, -2:]):
        assert edge.min() > 200, "something is drawn across the canvas edge"


def test_findings_caption_counts_source_images(tmp_path, captured):
    # before: "95% CI over images" whatever the evidence's resampling unit
    from maeprobe.findings import rules
    from maeprobe.findings.figures import finding_figure
    from maeprobe.findings.runner import Measured

    rows = [{"condition": condition, "mask_ratio": ratio, "seed": seed, "layer": layer, "value": v, "ci_low": v - 1,
             "ci_high": v + 1, "n_images": 40, "n_units": 12}
            for seed in range(3) for layer in range(3)
            for condition, ratio, v in (("trained", 0.3, 23.0), ("trained", 0.9, 29.0), ("init", np.nan, 32.0))]
    evidence = pd.DataFrame(rows)
    finding_figure("mask-ratio-distance", Measured(evidence, rules.mask_ratio_rule(evidence, 32.58),
                                                   {"kind": "distance", "uniform": 32.58}),
                   {"runs": {"mae-mask30": ["x"] * 3}, "scale": "tiny", "data": "photos"}, tmp_path)
    assert "95% CI over 12 source images and 3 seed(s)" in _caption(captured[0])
