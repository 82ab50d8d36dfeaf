"""The paper's figures, regenerated from stored result tables only (never running a model).

* ``fig2`` LC-MAE Fig. 2: decoder attention similarity S_attn (Eq. 7) per decoder layer.
* ``fig3`` LC-MAE Fig. 3: decoder semantic similarity S_sim (Eq. 8) per decoder layer.
* ``fig5`` / ``fig6`` / ``figA1``: mean attention distance per encoder layer for several checkpoints (Fig. 5:
  MAE vs DINO vs DeiT; Fig. 6: pretraining mask ratios; Fig. A.1: autoencoders of different prediction
  sizes; a table does not record what a checkpoint predicts, so Fig. A.1 is titled by its checkpoints and its
  caption says they are not known to be AE(k)). Same plot, different checkpoint sets and labels.
* ``spectrum``: normalised singular values of encoder features (U-MAE), effective rank in the legend.
* ``entropy``: mean attention entropy per encoder layer (nats; not a figure of the paper), drawn like ``fig5``
  with the uniform-attention level ln N.

Bands are the ``ci_low``/``ci_high`` intervals stored in the tables; the caption below the axes says over how many
independent units (``n_units``: source images, else ``n_images``) or "no interval" where the table has none.
Titles stay one or two short lines; conventions and warnings go in that caption.
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
    "figA1": ("attention_distance", "Attention distance per layer (Fig. A.1 layout)", None),
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
        # the checkpoint named too: two checkpoints of one ratio stay two lines, and a reader knows which file
        labels = pd.Series([f"mask ratio {v:g}: {c}" if pd.notna(v) else f"{c} (pretraining mask ratio not stored)"
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
    return save_figure(fig, [out_dir / f"{name}.png", out_dir / f"{name}.pdf"], dpi=200)


TITLE_CHARS = 60  # a title line; titles stay at most two lines (warnings and conventions go in the caption)
CAPTION_FONT = 5.5  # points
CAPTION_CHARS_PER_INCH = 23  # conservative for DejaVu Sans at CAPTION_FONT: the caption stays inside the canvas
LEGEND_CHARS = 30  # a legend line: a long checkpoint name wraps instead of squeezing the axes off the canvas


def _title(ax, title: str, subtitle: str = "") -> None:
    """One or two short lines: the figure's name and, when it fits, what it compares against (a reference)."""
    second = subtitle if subtitle and len(subtitle) <= TITLE_CHARS else ""
    ax.set_title(f"{title}\n{second}" if second else title, fontsize=6.5)


def _legend_label(label: str) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(label), LEGEND_CHARS)) or str(label)


def _count(rows: pd.DataFrame, column: str) -> str | None:
    """The number in ``column`` as text ("12", or "8-12" when the rows differ); None when absent."""
    if column not in rows:
        return None
    values = pd.to_numeric(rows[column], errors="coerce")
    values = values[np.isfinite(values.astype(float)) & (values >= 1) & (values == np.floor(values))]
    if values.empty:  # absent, or nothing a count can be (inf, negative, fractional): not stated
        return None
    low, high = int(values.min()), int(values.max())
    return f"{low}" if low == high else f"{low}-{high}"


def _interval_text(rows: pd.DataFrame, what: str = "bands", method: str | None = "bootstrap",
                   labels: pd.Series | None = None) -> str:
    """What the drawn intervals are, or "no interval" where the table has none (NaN ``ci_low``/``ci_high``).

    The count is the number of independent units the interval resamples: ``n_units`` (source photos or files)
    when the table has it, else ``n_images`` (tables written before units were recorded resampled images)."""
    if "ci_low" in rows and "ci_high" in rows:
        low, high = (pd.to_numeric(rows[c], errors="coerce").astype(float) for c in ("ci_low", "ci_high"))
        finite = pd.Series(np.isfinite(low) & np.isfinite(high) & (low <= high), index=rows.index)
    else:
        finite = pd.Series(False, index=rows.index)
    if not finite.any():
        return "no interval (the table has no ci_low/ci_high: intervals were not computed)"
    n_units, n_images = _count(rows[finite], "n_units"), _count(rows[finite], "n_images")
    over = (f" over {n_units} source images" if n_units else f" over {n_images} images" if n_images else "")
    text = f"{what}: 95% CI{over}" + (f" ({method})" if method else "")
    if not finite.all() and labels is not None:
        missing = [str(lab) for lab in dict.fromkeys(labels[~finite]) if not finite[labels == lab].any()]
        if missing:
            text += f"; no interval for {', '.join(missing)}"
    return text


def _finish(fig, caption: str) -> None:
    """Lay out ``fig`` with ``caption`` (conventions, intervals, warnings) in small type below the axes: the
    figure grows by the caption's height, so the axes keep their size."""
    import textwrap

    width, height = fig.get_size_inches()
    lines = textwrap.wrap(caption, max(int(width * CAPTION_CHARS_PER_INCH), 40), break_on_hyphens=False) \
        if caption else []
    extra = (len(lines) * CAPTION_FONT * 1.35 + 6) / 72 if lines else 0.0  # inches
    fig.set_size_inches(width, height + extra)
    if lines:
        fig.text(0.01, 3 / 72 / (height + extra), "\n".join(lines), fontsize=CAPTION_FONT, va="bottom",
                 ha="left", color="0.25", linespacing=1.2)
    fig.tight_layout(rect=(0, extra / (height + extra), 1, 1))


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
        ax.plot(x, y, marker="o", ms=3, lw=1.4, color=colour, label=_legend_label(label))
        if part["ci_low"].notna().any():
            ax.fill_between(x, part["ci_low"], part["ci_high"], color=colour, alpha=0.2, lw=0)
    if name == "fig2":
        ax.axhline(1.0, color="0.3", lw=0.8, ls=":", label="uniform attention (= 1)")
    ax.set_xlabel("decoder layer (1 = first; tables count from 0)")
    ax.set_ylabel(f"{ylabel} (unitless)")
    parts, subtitle = [_caption(rows, name)], ""
    if name == "fig3" and "reference" in rows:
        references = ", ".join(dict.fromkeys(rows["reference"].astype(str)))
        subtitle = f"reference: {references}"
        parts.append(subtitle)
    parts.append(_interval_text(rows, labels=rows["label"]))
    caption = "; ".join(part for part in parts if part)
    if name == "fig3" and "w_flag" in rows and (rows["w_flag"].fillna("") != "").any():
        flagged = rows[rows["w_flag"].fillna("") != ""]
        caption += (f". WARNING: W {flagged['w_flag'].iloc[0]} for {', '.join(dict.fromkeys(flagged['label']))} "
                    "(density outside 0.05-0.95): S measures only a density there")
    _title(ax, title, subtitle)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=5.5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    sns.despine(fig)
    _finish(fig, caption)
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
        ax.plot(x, means["value"], color=colour, lw=1.4, marker="o", ms=2.5, label=_legend_label(label))
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
    interval = _interval_text(rows, labels=rows["label"])
    if not interval.startswith("no interval"):
        interval += ", per layer the mean of the heads' bounds"
    parts = [_caption(rows, name), "line: mean over heads", interval]
    if name == "figA1":
        parts.append("Fig. A.1 compares autoencoders AE(k) that predict a k x k pixel block per patch; the table "
                     "does not record what a checkpoint predicts, so these lines are not known to be AE(k) models")
    names = ", ".join(labels)
    _title(ax, title, (names if len(names) <= TITLE_CHARS else f"{len(labels)} checkpoints (see legend)")
           if name == "figA1" else "")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=5.5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    sns.despine(fig)
    _finish(fig, "; ".join(part for part in parts if part))
    paths = _save(fig, out_dir, name)
    plt.close(fig)
    return paths


def _layer_text(layers: list[int]) -> str:
    """Encoder layers as the paper numbers them (from 1), with the table's 0-based index."""
    if len(layers) == 1:
        return f"encoder layer {layers[0] + 1} (1 = first; table layer {layers[0]})"
    return f"encoder layers {', '.join(str(layer + 1) for layer in layers)} (1 = first; see legend)"


def _spectrum(frame, out_dir, name, label_by):
    """Normalised singular values per component, one panel per feature kind (CLS, patch mean), with the
    per-component interval where the table has one; the encoder layer in the title; the n - 1 cap stated."""
    plt, sns = _style()
    rows = frame[frame["metric"] == "feature_spectrum"].copy()
    if rows.empty:
        return []
    rows["label"] = _labels(rows, label_by)
    ranks = frame[frame["metric"] == "effective_rank"].copy()
    ranks["label"] = _labels(ranks, label_by)
    layers = sorted({int(v) for v in rows["layer"].dropna()}) if "layer" in rows else []
    if len(layers) > 1:  # several layers of one checkpoint: one line each
        for table in (rows, ranks):
            table["label"] = table["label"] + table["layer"].map(
                lambda v: f", layer {int(v) + 1}" if pd.notna(v) else "")
    kinds = list(dict.fromkeys(rows["feature"]))
    labels = list(dict.fromkeys(rows["label"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.4 * len(kinds), 2.5), squeeze=False)
    drawn = []
    for ax, kind in zip(axes[0], kinds):
        for colour, label in zip(sns.color_palette("colorblind", len(labels)), labels):
            part = rows[(rows["label"] == label) & (rows["feature"] == kind)].sort_values("component")
            if part.empty:
                continue
            part = part.iloc[: max(int(part["n_images"].iloc[0]) - 1, 1)]  # rank of n centred features <= n - 1
            values = part["value"].to_numpy(dtype=float)
            if len(values) == 0 or values[0] <= 0:
                continue
            drawn.append(part)
            x = np.arange(1, len(values) + 1)
            rank = ranks[(ranks["label"] == label) & (ranks["feature"] == kind)]
            legend = label
            if len(rank):
                r = rank.iloc[0]
                legend += f" (eff. rank {r['value']:.1f}"
                if pd.notna(r.get("ci_low")) and pd.notna(r.get("ci_high")):
                    legend += f" [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
                legend += ")"
            ax.semilogy(x, np.clip(values / values[0], 1e-8, None), color=colour, lw=1.2,
                        label=_legend_label(legend))
            low, high = part["ci_low"].to_numpy(dtype=float), part["ci_high"].to_numpy(dtype=float)
            finite = np.isfinite(low) & np.isfinite(high)
            if finite.any():
                ax.fill_between(x, np.clip(low / values[0], 1e-8, None), np.clip(high / values[0], 1e-8, None),
                                where=finite, color=colour, alpha=0.2, lw=0)
        ax.set_xlabel("component (1 = largest)")
        ax.set_ylabel("singular value / largest (unitless)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        feature = {"cls": "CLS token", "patch_mean": "mean of patch tokens"}.get(kind, str(kind).replace("_", " "))
        _title(ax, f"Feature spectrum: {feature}", _layer_text(layers) if layers else "")
        ax.legend(fontsize=5.5, frameon=True, framealpha=0.85, edgecolor="none")  # readable over the bands
    shown = pd.concat(drawn) if drawn else rows
    n = _count(shown, "n_images")
    cap = (f"n = {n} images: n centred features have rank at most n-1, so at most n-1 = "
           f"{_count(shown.assign(n_images=shown['n_images'] - 1), 'n_images')} nonzero components; "
           "components beyond n-1 are not drawn") if n else ""
    interval = _interval_text(shown, "band", method=None, labels=shown["label"])
    if not interval.startswith("no interval"):
        interval += " per component, divided by the largest singular value"
    parts = [_caption(rows, name), _layer_text(layers) if layers else "", cap, interval,
             "eff. rank (legend): exp of the entropy of the normalised singular values, [95% CI] where stored"]
    sns.despine(fig)
    _finish(fig, "; ".join(part for part in parts if part))
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
    _title(ax, title)
    sns.despine(fig)
    _finish(fig, _interval_text(rows, "bars", labels=pd.Series(labels, index=rows.index)))
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
