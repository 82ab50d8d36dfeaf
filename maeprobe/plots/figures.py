"""The paper's figures, regenerated from stored result tables only (never running a model).

* ``fig2`` LC-MAE Fig. 2: decoder attention similarity S_attn (Eq. 7) per decoder layer.
* ``fig3`` LC-MAE Fig. 3: decoder semantic similarity S_sim (Eq. 8) per decoder layer.
* ``fig5`` / ``fig6`` / ``figA1``: mean attention distance per encoder layer for several checkpoints (Fig. 5:
  MAE vs DINO vs DeiT; Fig. 6: pretraining mask ratios; Fig. A.1: autoencoders of different prediction
  sizes). Same plot, different checkpoint sets and labels.
* ``spectrum``: normalised singular values of encoder features (U-MAE), effective rank in the legend.
* ``entropy``: mean attention entropy per encoder layer (nats; not a figure of the paper), drawn like ``fig5``
  with the uniform-attention level ln N.

Error bars are the ``ci_low``/``ci_high`` bootstrap intervals stored in the tables.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

FIGURES = {
    "fig2": ("decoder_attention_similarity", "Decoder attention similarity (Eq. 7)", "$S_{attn}$"),
    "fig3": ("decoder_semantic_similarity", "Decoder semantic similarity (Eq. 8)", "$S_{sim}$"),
    "fig5": ("attention_distance", "Mean attention distance per layer", None),
    "fig6": ("attention_distance", "Attention distance vs pretraining mask ratio", None),
    "figA1": ("attention_distance", "Attention distance of autoencoders AE(k)", None),
    "spectrum": ("feature_spectrum", "Feature spectrum (U-MAE)", None),
    "entropy": ("attention_entropy", "Mean attention entropy per layer", None),
}


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="paper", style="ticks", font_scale=0.9)
    return plt, sns


def _labels(frame: pd.DataFrame, label_by: str) -> pd.Series:
    if label_by not in frame or frame[label_by].isna().all():
        labels = frame["checkpoint"].astype(str)
    elif label_by == "pretrain_mask_ratio":
        labels = pd.Series([f"mask ratio {v:g}" if pd.notna(v) else f"{c} (pretraining mask ratio not stored)"
                            for v, c in zip(frame[label_by], frame["checkpoint"].astype(str))], index=frame.index)
    else:
        labels = frame[label_by].astype(str)
    if "_mask_suffix" in frame:  # rows of several probe masks on one plot (asked for): say which is which
        labels = labels + frame["_mask_suffix"]
    return labels


def _mask_text(ratio, shared) -> str:
    text = f"probe mask {float(ratio):g}"
    if float(ratio) > 0 and pd.notna(shared):
        text += " shared" if bool(shared) else " per image"
    return text


def _mask_settings(rows: pd.DataFrame) -> list[str]:
    """The distinct probe-mask settings (ratio, shared) of ``rows``, as text."""
    if "mask_ratio" not in rows:
        return []
    shared = rows["shared_mask"] if "shared_mask" in rows else pd.Series(True, index=rows.index)
    pairs = pd.DataFrame({"r": rows["mask_ratio"].astype(float), "s": shared}).drop_duplicates()
    return [_mask_text(r, s) for r, s in zip(pairs["r"], pairs["s"])]


def _caption(rows: pd.DataFrame, name: str) -> str:
    """What convention the plotted numbers used: probe mask, and for Eq. 7 / Eq. 8 their options."""
    settings = _mask_settings(rows)
    parts = [settings[0] if len(settings) == 1 else "probe masks differ (see legend)"] if settings else []
    if name == "fig2" and "cls_key" in rows:
        parts.append("A: CLS key included" if rows["cls_key"].fillna(False).astype(bool).any()
                     else "A: patch keys only")
    if name == "fig3":
        first = rows.iloc[0]
        if "ref_features" in rows:
            dec = first["decoder_features"] if "decoder_features" in rows and pd.notna(first.get("decoder_features")) \
                else first["ref_features"]
            parts.append(f"features: ref {first['ref_features']}, decoder {dec}")
        if "tau" in rows:
            parts.append("W continuous" if pd.isna(first["tau"]) else f"W > {float(first['tau']):g}")
    return "; ".join(parts)


def save_figure(fig, paths: list[Path], dpi: int) -> list[Path]:
    """Save ``fig`` to each path (format from the extension), atomically, on the main process only."""
    from ..distributed import is_main
    from ..io import atomic_path

    if is_main():
        for path in paths:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip("."))
    return paths


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    fig.tight_layout()
    return save_figure(fig, [out_dir / f"{name}.png", out_dir / f"{name}.pdf"], dpi=200)


def _title(ax, title: str, caption: str) -> None:
    import textwrap

    ax.set_title(f"{title}\n" + "\n".join(textwrap.wrap(caption, 52)) if caption else title, fontsize=6.5)


def _per_layer_lines(frame, metric, title, ylabel, out_dir, name, label_by):
    plt, sns = _style()
    rows = frame[(frame["metric"] == metric) & frame["head"].isna()].copy()
    if rows.empty:
        return []
    rows["label"] = _labels(rows, label_by)
    labels = list(dict.fromkeys(rows["label"]))
    fig, ax = plt.subplots(figsize=(4.4, 2.8))  # single-column width with the legend beside the axes
    for colour, label in zip(sns.color_palette("colorblind", len(labels)), labels):
        part = rows[rows["label"] == label].sort_values("layer")
        x = part["layer"].astype(int).to_numpy() + 1  # the paper numbers layers from 1
        y = part["value"].to_numpy()
        ax.plot(x, y, marker="o", ms=3, lw=1.4, color=colour, label=label)
        if part["ci_low"].notna().any():
            ax.fill_between(x, part["ci_low"], part["ci_high"], color=colour, alpha=0.2, lw=0)
    if name == "fig2":
        ax.axhline(1.0, color="0.3", lw=0.8, ls=":", label="uniform attention (= 1)")
    ax.set_xlabel("decoder layer (1 = first; tables count from 0)")
    ax.set_ylabel(f"{ylabel} (unitless)")
    caption = _caption(rows, name)
    if name == "fig3" and "reference" in rows:
        caption += f"; reference: {', '.join(dict.fromkeys(rows['reference'].astype(str)))}"
    if name == "fig3" and "w_flag" in rows and (rows["w_flag"].fillna("") != "").any():
        flagged = rows[rows["w_flag"].fillna("") != ""]
        caption += (f"; WARNING: W {flagged['w_flag'].iloc[0]} for {', '.join(dict.fromkeys(flagged['label']))} "
                    "(density outside 0.05-0.95): S measures only a density there")
    caption += "; bands: 95% CI over images"
    _title(ax, title, caption)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=5.5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    sns.despine(fig)
    paths = _save(fig, out_dir, name)
    plt.close(fig)
    return paths


def _per_head_layers(frame, metric, title, out_dir, name, label_by, module="encoder"):
    """Attention distance (fig5/fig6/figA1) or entropy: heads as dots, their mean per layer as a line with its
    band, and the uniform-attention level."""
    plt, sns = _style()
    rows = frame[(frame["metric"] == metric) & (frame["module"] == module)].copy()
    if rows.empty:
        return []
    rows["label"] = _labels(rows, label_by)
    if metric == "attention_entropy":
        units, quantity = "nats", "mean attention entropy"
        # a stored table is data: only a true boolean (True, "True", 1) counts, not any non-empty text
        patch_only = rows["patch_keys_only"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")) \
            if "patch_keys_only" in rows else pd.Series(False, index=rows.index)
        if patch_only.all():
            quantity += " over patch keys"
        elif patch_only.any():  # both kinds on one plot: each line says which (their uniform levels differ)
            rows["label"] = rows["label"] + np.where(patch_only, " (patch keys)", " (all keys)")
    else:
        units, quantity = (rows["units"].iloc[0] if "units" in rows else "px"), "mean attention distance"
    labels = list(dict.fromkeys(rows["label"]))
    fig, ax = plt.subplots(figsize=(4.4, 2.8))  # single-column width with the legend beside the axes
    for colour, label in zip(sns.color_palette("colorblind", len(labels)), labels):
        part = rows[rows["label"] == label]
        heads = part["head"].astype(float)
        jitter = (heads / max(heads.max(), 1) - 0.5) * 0.3
        ax.scatter(part["layer"].astype(float) + 1 + jitter, part["value"], s=4, color=colour, alpha=0.35, lw=0)
        # per layer: the mean over heads, its interval the mean of the heads' bounds (conservative)
        means = part.groupby("layer")[["value", "ci_low", "ci_high"]].mean()
        x = means.index.astype(int) + 1
        ax.plot(x, means["value"], color=colour, lw=1.4, marker="o", ms=2.5, label=label)
        if means["ci_low"].notna().any():
            ax.fill_between(x, means["ci_low"], means["ci_high"], color=colour, alpha=0.2, lw=0)
    ax.scatter([], [], s=4, color="0.4", label="dots: single heads")
    if "uniform_level" in rows and rows["uniform_level"].notna().any():
        levels = sorted(set(np.round(rows["uniform_level"].dropna().astype(float), 3)))
        for level in levels:
            ax.axhline(level, color="0.3", lw=0.8, ls=":",
                       label=f"uniform attention ({level:.{1 if units != 'nats' else 2}f} {units})"
                       if level == levels[0] or metric == "attention_entropy" else None)
    ax.set_ylim(bottom=0)  # from 0: differences of a tenth of a pixel (or nat) are not magnified
    ax.set_xlabel(f"{module} layer (1 = first; tables count from 0)")
    ax.set_ylabel(f"{quantity} ({units})")
    _title(ax, title, _caption(rows, name) + "; line: mean over heads, band: 95% CI over images")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=5.5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    sns.despine(fig)
    paths = _save(fig, out_dir, name)
    plt.close(fig)
    return paths


def _spectrum(frame, out_dir, name, label_by):
    plt, sns = _style()
    rows = frame[frame["metric"] == "feature_spectrum"].copy()
    if rows.empty:
        return []
    rows["label"] = _labels(rows, label_by)
    ranks = frame[frame["metric"] == "effective_rank"].copy()
    ranks["label"] = _labels(ranks, label_by)
    kinds = list(dict.fromkeys(rows["feature"]))
    labels = list(dict.fromkeys(rows["label"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.4 * len(kinds), 2.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for colour, label in zip(sns.color_palette("colorblind", len(labels)), labels):
            part = rows[(rows["label"] == label) & (rows["feature"] == kind)].sort_values("component")
            values = part["value"].to_numpy()[: max(int(part["n_images"].iloc[0]) - 1, 1)]  # rank <= N - 1
            if len(values) == 0 or values[0] <= 0:
                continue
            rank = ranks[(ranks["label"] == label) & (ranks["feature"] == kind)]["value"]
            legend = f"{label} (eff. rank {rank.iloc[0]:.1f})" if len(rank) else label
            ax.semilogy(np.arange(1, len(values) + 1), np.clip(values / values[0], 1e-8, None), color=colour,
                        lw=1.2, label=legend)
        ax.set_xlabel("component")
        ax.set_ylabel("singular value / largest")
        _title(ax, f"Feature spectrum: {kind.replace('_', ' ')}", _caption(rows, name))
        ax.legend(fontsize=6, frameon=False)
    sns.despine(fig)
    paths = _save(fig, out_dir, name)
    plt.close(fig)
    return paths


def _rows_of(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    metric = FIGURES[name][0]
    rows = frame[frame["metric"] == metric]
    if metric in ("attention_distance", "attention_entropy"):
        rows = rows[rows["module"] == "encoder"]
    return rows


def bar_figure(labels: list[str], rows: pd.DataFrame, title: str, ylabel: str, out_dir: Path, name: str,
               lines: tuple[float, ...] = ()) -> list[Path]:
    """One bar per label with its ``ci_low``/``ci_high`` interval as error bar; dashed reference ``lines``."""
    plt, sns = _style()
    values = rows["value"].to_numpy(dtype=float)
    errors = np.vstack([values - rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float) - values])
    fig, ax = plt.subplots(figsize=(3.4, 2.5))
    ax.bar(labels, values, yerr=np.clip(errors, 0, None), color=sns.color_palette("colorblind", len(labels)),
           capsize=3, width=0.6)
    for y in lines:
        ax.axhline(y, color="0.4", lw=0.8, ls="--")
    ax.set_ylabel(ylabel)
    _title(ax, title, "")
    sns.despine(fig)
    paths = _save(fig, Path(out_dir), name)
    plt.close(fig)
    return paths


def make_figures(frame: pd.DataFrame, out_dir: str | Path, *, figures=None, label_by: str = "checkpoint",
                 mix_mask_settings: bool = False) -> list[Path]:
    """Write every figure whose data is in ``frame`` (or only ``figures``). Returns the paths written.

    A figure compares like with like: rows measured under different probe masks (mask ratio, shared or per
    image) are refused on one plot (ValueError) unless ``mix_mask_settings``, which labels every line with its
    mask. Each figure's title states the probe mask and, for Eq. 7 / Eq. 8, the conventions used.
    """
    out_dir = Path(out_dir)
    metrics = set(frame["metric"])
    if figures is None:
        figures = [f for f in ("fig2", "fig3", "fig5", "entropy", "spectrum") if FIGURES[f][0] in metrics]
    paths: list[Path] = []
    for name in figures:
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; choose from {', '.join(FIGURES)}")
        metric, title, ylabel = FIGURES[name]
        if metric not in metrics:
            raise ValueError(f"{name} needs {metric} rows, which the tables do not have")
        frame_used = frame
        settings = _mask_settings(_rows_of(frame, name))
        if len(settings) > 1:
            if not mix_mask_settings:
                raise ValueError(f"{name}: the rows were measured under different probe masks "
                                 f"({', '.join(settings)}); plot like with like, or allow it with "
                                 f"--mix-mask-settings (mix_mask_settings=True), which labels each line")
            frame_used = frame.copy()
            shared = frame_used["shared_mask"] if "shared_mask" in frame_used else True
            frame_used["_mask_suffix"] = [f" [{_mask_text(r, sh)}]" for r, sh in
                                          zip(frame_used["mask_ratio"], pd.Series(shared, index=frame_used.index))]
        if name in ("fig2", "fig3"):
            paths += _per_layer_lines(frame_used, metric, title, ylabel, out_dir, name, label_by)
        elif name == "spectrum":
            paths += _spectrum(frame_used, out_dir, name, label_by)
        else:
            by = "pretrain_mask_ratio" if name == "fig6" and label_by == "checkpoint" else label_by
            paths += _per_head_layers(frame_used, metric, title, out_dir, name, by)
    return paths
