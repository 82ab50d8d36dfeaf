"""Every figure kind, read from the figure objects as a reviewer would: titles inside the canvas, labelled axes
with units, a legend naming each checkpoint, interval bands where the data have intervals, the uniform level
where it applies. Built from hand-made tables (no model runs)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from helpers.figures import inside  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from maeprobe.plots import figures as figmod  # noqa: E402


def _check(fig, *, legend_names=(), bands=True, uniform=None, units=True):
    ax = fig.axes[0]
    assert ax.get_title() and inside(fig, ax.title)
    assert ax.get_xlabel() and ax.get_ylabel()
    if units:
        assert "(" in ax.get_ylabel()  # the unit, or "(unitless)"
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()] if legend else []
    for name in legend_names:
        assert any(name in t for t in texts), (name, texts)
    if bands:
        assert any(isinstance(c, PolyCollection) for c in ax.collections)
    if uniform is not None:
        flat = [line for line in ax.get_lines() if len(set(np.round(line.get_ydata(), 6))) == 1]
        assert any(abs(float(line.get_ydata()[0]) - uniform) < 0.05 for line in flat)
        assert any("uniform" in t for t in texts)


def _per_layer(metric, names, layers, **extra):
    rows = []
    for c, name in enumerate(names):
        for layer in range(layers):
            v = 0.5 + 0.05 * layer + 0.1 * c
            rows.append({"metric": metric, "module": "decoder", "layer": layer, "head": np.nan, "value": v,
                         "ci_low": v - 0.02, "ci_high": v + 0.02, "n_images": 10, "checkpoint": name,
                         "mask_ratio": 0.75, "shared_mask": True, **extra})
    return pd.DataFrame(rows)


def test_fig2_and_fig3(tmp_path, captured):
    table = pd.concat([_per_layer("decoder_attention_similarity", ["trained.pth", "untrained.pth"], 4, cls_key=False),
                       _per_layer("decoder_semantic_similarity", ["trained.pth", "untrained.pth"], 4,
                                  reference="dino_vitbase16_pretrain.pth", ref_features="keys", tau=0.15)])
    figmod.make_figures(table, tmp_path, figures=["fig2", "fig3"])
    fig2, fig3 = captured
    _check(fig2, legend_names=["trained.pth", "untrained.pth"], uniform=1.0)
    _check(fig3, legend_names=["trained.pth", "untrained.pth"])
    assert "dino_vitbase16_pretrain.pth" in fig3.axes[0].get_title()  # Fig. 3 names its reference
    assert "1 = first" in fig2.axes[0].get_xlabel()


def test_attention_distance_figures(tmp_path, captured):
    rows = []
    for c, (name, ratio) in enumerate((("a.pth", 0.75), ("b.pth", np.nan))):
        for layer in range(3):
            for head in range(2):
                v = 20 + 3 * layer + c
                rows.append({"metric": "attention_distance", "module": "encoder", "layer": layer, "head": head,
                             "value": v, "ci_low": v - 1, "ci_high": v + 1, "n_images": 8, "checkpoint": name,
                             "units": "px", "mask_ratio": 0.0, "shared_mask": True, "uniform_level": 32.58,
                             "pretrain_mask_ratio": ratio})
    table = pd.DataFrame(rows)
    figmod.make_figures(table, tmp_path, figures=["fig5", "fig6"])
    fig5, fig6 = captured
    _check(fig5, legend_names=["a.pth", "b.pth", "single heads"], uniform=32.58)
    assert fig5.axes[0].get_ylim()[0] == 0  # from 0: noise is not magnified
    # Fig. 6 labels by the pretraining mask ratio; a checkpoint without one keeps its name (never "unknown")
    _check(fig6, legend_names=["mask ratio 0.75", "b.pth"], uniform=32.58)


def test_entropy_figure(tmp_path, captured):
    rows = []
    for c, name in enumerate(("mae.pth", "dino.pth")):
        for layer in range(3):
            for head in range(2):
                v = 2.0 + 0.3 * layer - 0.2 * c
                rows.append({"metric": "attention_entropy", "module": "encoder", "layer": layer, "head": head,
                             "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n_images": 8, "checkpoint": name,
                             "patch_keys_only": False, "mask_ratio": 0.0, "shared_mask": True,
                             "uniform_level": float(np.log(65))})
    table = pd.DataFrame(rows)
    figmod.make_figures(table, tmp_path)  # chosen by default when the table has entropy rows
    (fig,) = captured
    _check(fig, legend_names=["mae.pth", "dino.pth", "single heads"], uniform=float(np.log(65)))
    assert "nats" in fig.axes[0].get_ylabel() and "entropy" in fig.axes[0].get_ylabel()
    assert any("4.17 nats" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    mixed = table.copy()
    mixed.loc[mixed["checkpoint"] == "dino.pth", ["patch_keys_only", "uniform_level"]] = [True, float(np.log(64))]
    figmod.make_figures(mixed, tmp_path, figures=["entropy"])
    texts = [t.get_text() for t in captured[-1].axes[0].get_legend().get_texts()]
    assert "mae.pth (all keys)" in texts and "dino.pth (patch keys)" in texts
    assert any("4.17 nats" in t for t in texts) and any("4.16 nats" in t for t in texts)  # ln 65 and ln 64
    mixed["patch_keys_only"] = mixed["patch_keys_only"].map({True: "True", False: "no"})  # text from a file
    figmod.make_figures(mixed, tmp_path, figures=["entropy"])
    texts = [t.get_text() for t in captured[-1].axes[0].get_legend().get_texts()]
    assert "mae.pth (all keys)" in texts and "dino.pth (patch keys)" in texts  # "no" is not true


def test_findings_figures_show_their_controls(tmp_path, captured):
    from maeprobe.findings import rules
    from maeprobe.findings.figures import finding_figure
    from maeprobe.findings.runner import Measured

    rows = []
    for seed in range(3):
        for ratio in (0.3, 0.9):
            for layer in range(3):
                rows.append({"condition": "trained", "mask_ratio": ratio, "seed": seed, "layer": layer,
                             "value": 20 + 10 * ratio, "ci_low": 19 + 10 * ratio, "ci_high": 21 + 10 * ratio})
        for layer in range(3):
            rows.append({"condition": "init", "mask_ratio": np.nan, "seed": seed, "layer": layer, "value": 32.0,
                         "ci_low": 31.5, "ci_high": 32.5})
    evidence = pd.DataFrame(rows)
    verdict = rules.mask_ratio_rule(evidence, 32.58)
    labels = {"runs": {"mae-mask30": ["x"] * 3, "mae-mask90": ["y"] * 3}, "scale": "tiny", "data": "photos"}
    finding_figure("mask-ratio-distance", Measured(evidence, verdict, {"kind": "distance", "uniform": 32.58}),
                   labels, tmp_path)
    (fig,) = captured
    _check(fig, legend_names=["mask ratio 0.3", "mask ratio 0.9", "initial weights"], uniform=32.58)
    assert any("mae-mask30" in t.get_text() for t in fig.texts)  # the runs are named in the caption

    accuracy = pd.DataFrame([{"model": m, "seed": s, "top1": t, "n_val": 400, "chance": 10.0}
                             for s in range(3) for m, t in (("transformer", 70), ("gaussian", 68), ("conv", 69),
                                                            ("pixels", 30), ("random", 25))])
    verdict = rules.local_decoders_rule(accuracy)
    finding_figure("local-decoders", Measured(accuracy, verdict, {"kind": "accuracy"}),
                   {"runs": {"mae": ["x"]}, "scale": "tiny", "evalset": "digits"}, tmp_path)
    bars = captured[-1].axes[0]
    names = [t.get_text() for t in bars.get_xticklabels()]
    assert names == ["transformer", "Gaussian", "conv", "raw pixels", "random encoder"]
    assert any("chance" in t.get_text() for t in bars.get_legend().get_texts())
    assert "(%)" in bars.get_ylabel()


def test_renders_have_titles_colour_bar_and_labelled_rows(tmp_path, captured):
    import torch

    from maeprobe.capture import ActivationCache
    from maeprobe.masking import MaskInfo, mask_noise
    from maeprobe.plots.render import render_decoder_attention, render_encoder_attention

    grid, prefix = 4, 1
    N = grid * grid + prefix
    cache = ActivationCache()
    attn = torch.softmax(torch.randn(1, 2, N, N), -1)
    cache.attention[("decoder", 0)] = attn
    cache.attention[("encoder", 0)] = attn
    cache.mask = MaskInfo.from_noise(mask_noise(grid * grid, 0), 0.75, True)
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    render_decoder_attention(image, cache, layers=[0], queries=[5], grid=grid, num_prefix=prefix,
                             out=tmp_path / "dec", title="mae_tiny_trained.pth")
    render_encoder_attention(image, cache, layers=[0], grid=grid, out=tmp_path / "enc", title="mae_tiny_trained.pth")
    for fig in captured:
        assert fig._suptitle is not None and "mae_tiny_trained.pth" in fig._suptitle.get_text()
        assert inside(fig, fig._suptitle)
        assert any("map's max" in ax.get_ylabel() for ax in fig.axes)  # the colour bar and its label
        assert all(inside(fig, ax.title) for ax in fig.axes if ax.get_title())
    decoder, encoder = captured
    assert any("query patch 5" in t.get_text() for ax in decoder.axes for t in ax.texts)
    assert [ax.get_title() for ax in encoder.axes if ax.get_title().startswith("head")] == ["head 1", "head 2"]
