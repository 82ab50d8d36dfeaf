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

A line is one input measured once: rows that share a label but come from different files (``checkpoint_path``,
else the checkpoint's name) or different results tables (``results_file``, from ``results.read_tables``) are drawn
as separate lines, their labels completed by the shortest path that tells them apart; rows that would still fall on
one point of one line are refused, as are rows of different units or Eq. 7 / Eq. 8 settings on one axis. Values
that are NaN or infinite are left out and counted in the caption and in a warning. At most
``MAEPROBE_MAX_FIGURE_LINES`` lines per figure, counted before anything is drawn.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import MaeprobeError
from ..metrics import registry  # the figures each metric declares (data only; no torch)

# name -> (metric column, title, y label), from the metrics' declarations (``FigureSpec``)
FIGURES = {name: (metric.column, figure.title, figure.ylabel) for name, (metric, figure) in registry.figures().items()}


def _figure(name: str) -> registry.FigureSpec:
    return registry.figures()[name][1]


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


def _text(rows: pd.DataFrame, column: str) -> pd.Series:
    """``column`` as text ('' where absent or missing)."""
    if column not in rows:
        return pd.Series("", index=rows.index, dtype=object)
    values = rows[column]
    return values.astype(object).where(values.notna(), "").map(str)


def _inputs(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per row, the file it measured (``checkpoint_path``, else the checkpoint's name) and the results table it was
    read from (``results_file``; '' for a frame made in Python)."""
    path = _text(rows, "checkpoint_path")
    return path.where(path != "", _text(rows, "checkpoint")), _text(rows, "results_file")


def _count_lines(rows: pd.DataFrame, name: str) -> None:
    """Refuse, before anything is drawn, a figure of more than MAEPROBE_MAX_FIGURE_LINES lines (one per label and
    input): a legend of thousands of entries is unreadable and each line costs tens of milliseconds."""
    from ..limits import check

    path, source = _inputs(rows)
    lines = len(pd.DataFrame({"l": rows["label"], "p": path, "s": source}).drop_duplicates())
    check("MAEPROBE_MAX_FIGURE_LINES", lines, f"{name}: lines (one per label and input) of the figure")


def _apart(rows: pd.DataFrame) -> pd.Series:
    """``rows["label"]``, where one label covers several inputs (two runs' ``checkpoint-last.pth``), completed by
    the shortest path suffix of each file and, for one file in several tables, of each table (``(from
    a/results.csv)``), so that each input is its own line. Called after ``_count_lines``: at most that many."""
    from ..results import short_names

    labels = rows["label"].astype(str)
    path, source = _inputs(rows)
    keys = pd.DataFrame({"label": labels, "path": path, "source": source})
    shared = keys.drop_duplicates().groupby("label", sort=False).size()
    shared = shared[shared > 1].index
    if len(shared) == 0:
        return labels
    out = labels.copy()
    for label in shared:
        mine = keys["label"] == label
        group = keys[mine].drop_duplicates()
        paths = dict(zip(group["path"].unique(), short_names(list(group["path"].unique()))))
        sources = dict(zip(group["source"].unique(), short_names(list(group["source"].unique()))))
        several_paths = len(paths) > 1
        path_repeats = group.duplicated("path", keep=False)
        names = {}
        for (p, s), repeated in zip(zip(group["path"], group["source"]), path_repeats):
            parts = [paths[p]] if several_paths else []
            if repeated and len(sources) > 1:
                parts.append(f"from {sources[s]}")
            text = " ".join(parts)
            names[(p, s)] = text if several_paths and not repeated and Path(paths[p]).name == label \
                else f"{label} ({text})"
        out[mine] = [names[(p, s)] for p, s in zip(keys.loc[mine, "path"], keys.loc[mine, "source"])]
    return out


def _one_point_each(rows: pd.DataFrame, name: str, keys: list[str]) -> None:
    """Refuse rows that would fall on one point of one line (the same input measured twice, e.g. under two seeds):
    averaging them would merge two measurements without a word."""
    keys = [k for k in keys if k in rows]
    repeated = rows.duplicated(["label", *keys], keep=False)
    if not repeated.any():
        return
    subset = rows[repeated]
    point = subset[["label", *keys]].map(str).agg("\0".join, axis=1)  # missing values compare as text ("nan")
    same = subset[point == point.iloc[0]]
    first = same.iloc[0]
    differ = [str(c) for c in same.columns if c not in ("value", "std", "ci_low", "ci_high", "label", "_mask_suffix")
              and same[c].astype(object).nunique(dropna=False) > 1]
    where = ", ".join(f"{k} {first[k]}" for k in keys if pd.notna(first[k]))
    from ..validate import one_line

    raise MaeprobeError(f"{name}: {one_line(first['label'], 80)!r} has {len(same)} rows for {where} (they differ in "
                        f"{', '.join(differ[:6]) or 'nothing: repeated rows'}); a line is one input measured once: "
                        "plot those tables separately, or tell the rows apart with --label-by COLUMN (label_by=)")


def _finite(rows: pd.DataFrame, name: str) -> tuple[pd.DataFrame, str]:
    """``rows`` without NaN or infinite values, and the caption's note of how many were left out per label (also a
    warning, so that the console says it too)."""
    values = pd.to_numeric(rows["value"], errors="coerce").astype(float)
    bad = ~np.isfinite(values.to_numpy())
    if not bad.any():
        return rows, ""
    counts = rows.loc[bad, "label"].value_counts(sort=False)
    total = int(bad.sum())
    note = (f"left out {total} non-finite value{'s' if total != 1 else ''} (NaN or infinite): "
            + ", ".join(f"{int(n)} of {label}" for label, n in counts.items()))
    warnings.warn(f"{name}: {note}", stacklevel=3)
    return rows[~bad], note


def _lines_of(rows: pd.DataFrame, name: str, label_by: str, keys: list[str], labels=None) -> tuple[pd.DataFrame, str]:
    """Every check of a figure's rows before drawing: labels (``labels`` when given, else ``_labels``), the
    lines limit, inputs kept apart, one row per point, non-finite values left out. Returns rows with a ``label``
    column and the caption's note."""
    rows = rows.copy()
    rows["label"] = _labels(rows, label_by) if labels is None else labels
    _count_lines(rows, name)
    rows["label"] = _apart(rows)
    _one_point_each(rows, name, keys)
    return _finite(rows, name)


def _legend_height(labels, extra: int = 2) -> float:
    """Inches of figure height that the legend beside the axes needs (5.5 pt entries, wrapped labels), at least
    the default 2.8: a figure of many lines grows instead of pushing its legend off the canvas."""
    import textwrap

    lines = sum(max(len(textwrap.wrap(str(label), LEGEND_CHARS)), 1) for label in labels) + extra
    return max(2.8, 0.5 + lines * 5.5 * 1.25 / 72 + (len(labels) + extra) * 2.75 / 72)


def _line_style(index: int) -> str:
    """Solid for the first ten lines (the palette's ten colours), then dashed, dotted, dash-dot: two lines never
    share both colour and style."""
    return ("-", "--", ":", "-.")[(index // 10) % 4]


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
    if "cls_key" in _figure(name).settings and "cls_key" in rows:
        parts.append("A: CLS key included" if rows["cls_key"].fillna(False).astype(bool).any()
                     else "A: patch keys only")
    if "ref_features" in _figure(name).settings:
        first = rows.iloc[0]
        if "ref_features" in rows:
            dec = first["decoder_features"] if "decoder_features" in rows and pd.notna(first.get("decoder_features")) \
                else first["ref_features"]
            parts.append(f"features: ref {first['ref_features']}, decoder {dec}")
        if "tau" in rows:
            parts.append("W continuous" if pd.isna(first["tau"]) else f"W > {float(first['tau']):g}")
    return "; ".join(parts)


def save_figure(fig, paths: list[Path], dpi: int) -> list[Path]:
    """Save ``fig`` to each path (format from the extension), atomically, on the main process only. Each path is
    checked first (``results.output_path``): a folder, an empty name, a device or a name over 255 bytes is one
    ``MaeprobeError``, never a traceback."""
    from ..distributed import is_main
    from ..io import atomic_path, check_output_file, record_outputs
    from ..results import output_path

    paths = [output_path(path, "figure path") for path in paths]
    for path in paths:
        check_output_file(path)
    if is_main():
        for path in paths:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip("."))
        record_outputs(paths)  # a rerun may replace them (io.check_outputs)
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
        any_finite = finite.groupby(labels, sort=False).any()  # one pass, not one scan per label
        missing = [str(lab) for lab, ok in any_finite.items() if not ok]
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
    rows = frame[(frame["metric"] == metric) & frame["head"].isna()]
    if rows.empty:
        return []
    labels = _labels(rows, label_by)
    referenced = "reference" in rows and rows["reference"].notna().any()  # Eq. 8: lines compare with a model
    if referenced and rows["reference"].astype(str).nunique() > 1:
        labels = labels + " [ref " + rows["reference"].astype(str) + "]"  # which reference each line is against
    rows, dropped = _lines_of(rows, name, label_by, ["layer"], labels)
    labels = list(dict.fromkeys(rows["label"]))
    plt, sns = _style()
    fig, ax = plt.subplots(figsize=(4.4, _legend_height(labels)))  # single-column width, legend beside the axes
    groups = dict(tuple(rows.groupby("label", sort=False)))
    for i, (colour, label) in enumerate(zip(sns.color_palette("colorblind", len(labels)), labels)):
        part = groups[label].sort_values("layer")
        x = part["layer"].astype(int).to_numpy() + 1  # the paper numbers layers from 1
        y = part["value"].to_numpy()
        ax.plot(x, y, marker="o", ms=3, lw=1.4, color=colour, ls=_line_style(i), label=_legend_label(label))
        if part["ci_low"].notna().any():
            ax.fill_between(x, part["ci_low"], part["ci_high"], color=colour, alpha=0.2, lw=0)
    if _figure(name).uniform is not None:
        level = _figure(name).uniform
        ax.axhline(level, color="0.3", lw=0.8, ls=":", label=f"uniform attention (= {level:g})")
    column = _figure(name).level_column  # a level the rows carry (e.g. k-NN's chance level): one line per value
    if column and column in rows:
        levels = pd.to_numeric(rows[column], errors="coerce").astype(float).round(6)
        varying = levels.groupby(rows["label"], sort=False).nunique()
        if (varying > 1).any():  # one level per line: so at most as many levels as lines (MAEPROBE_MAX_FIGURE_LINES)
            from ..validate import one_line

            raise MaeprobeError(f"{name}: {one_line(varying.index[varying > 1][0], 80)!r} has "
                                f"{int(varying.max())} different {column} values across its layers; a line is one "
                                f"input measured on one image set, with one {column}")
        for level in sorted(set(levels.dropna())):
            ax.axhline(level, color="0.3", lw=0.8, ls="--", label=f"{column.replace('_', ' ')} (= {level:.3g})")
    modules = list(dict.fromkeys(rows["module"].astype(str)))
    ax.set_xlabel(f"{modules[0] if len(modules) == 1 else 'encoder or decoder'} layer (1 = first; tables count "
                  "from 0)")
    ax.set_ylabel(f"{ylabel} (unitless)")
    parts, subtitle = [_caption(rows, name)], ""
    if referenced:
        references = ", ".join(dict.fromkeys(rows["reference"].astype(str)))
        subtitle = f"reference: {references}"
        parts.append(subtitle)
    parts.append(_interval_text(rows, labels=rows["label"]))
    parts.append(dropped)
    caption = "; ".join(part for part in parts if part)
    if "w_flag" in rows and (rows["w_flag"].fillna("") != "").any():
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
    rows = frame[(frame["metric"] == metric) & (frame["module"] == module)].copy()
    if rows.empty:
        return []
    rows["label"] = _labels(rows, label_by)
    figure = _figure(name)
    quantity = figure.quantity
    units = figure.units or _setting(rows, "units").iloc[0]  # one unit: make_figures checks
    if figure.variant is not None:  # e.g. entropy over all keys or over patch keys only
        column, on, off, all_on = figure.variant
        # a stored table is data: only a true boolean (True, "True", 1) counts, not any non-empty text
        flagged = rows[column].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")) \
            if column in rows else pd.Series(False, index=rows.index)
        if flagged.all():
            quantity += all_on
        elif flagged.any():  # both kinds on one plot: each line says which (their uniform levels differ)
            rows["label"] = rows["label"] + np.where(flagged, on, off)
    rows, dropped = _lines_of(rows, name, label_by, ["layer", "head"], rows["label"])
    labels = list(dict.fromkeys(rows["label"]))
    plt, sns = _style()
    fig, ax = plt.subplots(figsize=(4.4, _legend_height(labels, 4)))  # single-column width, legend beside the axes
    groups = dict(tuple(rows.groupby("label", sort=False)))
    for i, (colour, label) in enumerate(zip(sns.color_palette("colorblind", len(labels)), labels)):
        part = groups[label]
        heads = part["head"].astype(float)
        jitter = (heads / max(heads.max(), 1) - 0.5) * 0.3
        ax.scatter(part["layer"].astype(float) + 1 + jitter, part["value"], s=4, color=colour, alpha=0.35, lw=0)
        # per layer: the mean over heads, its interval the mean of the heads' bounds (conservative)
        means = part.groupby("layer")[["value", "ci_low", "ci_high"]].mean()
        x = means.index.astype(int) + 1
        ax.plot(x, means["value"], color=colour, lw=1.4, ls=_line_style(i), marker="o", ms=2.5,
                label=_legend_label(label))
        if means["ci_low"].notna().any():
            ax.fill_between(x, means["ci_low"], means["ci_high"], color=colour, alpha=0.2, lw=0)
    ax.scatter([], [], s=4, color="0.4", label="dots: single heads")
    if "uniform_level" in rows and rows["uniform_level"].notna().any():
        levels = sorted(set(np.round(rows["uniform_level"].dropna().astype(float), 3)))
        for level in levels:
            ax.axhline(level, color="0.3", lw=0.8, ls=":",
                       label=f"uniform attention ({level:.{1 if units != 'nats' else 2}f} {units})"
                       if level == levels[0] or figure.variant is not None else None)
    ax.set_ylim(bottom=0)  # from 0: differences of a tenth of a pixel (or nat) are not magnified
    ax.set_xlabel(f"{module} layer (1 = first; tables count from 0)")
    ax.set_ylabel(f"{quantity} ({units})")
    interval = _interval_text(rows, labels=rows["label"])
    if not interval.startswith("no interval"):
        interval += ", per layer the mean of the heads' bounds"
    parts = [_caption(rows, name), "line: mean over heads", interval, dropped]
    if figure.note:
        parts.append(figure.note)
    names = ", ".join(labels)
    _title(ax, title, (names if len(names) <= TITLE_CHARS else f"{len(labels)} checkpoints (see legend)")
           if figure.names_in_title else "")
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
    rows = frame[frame["metric"] == "feature_spectrum"]
    if rows.empty:
        return []
    both = frame[frame["metric"].isin(["feature_spectrum", "effective_rank"])]  # labelled together: one mapping
    labels = _labels(both, label_by)
    layers = sorted({int(v) for v in rows["layer"].dropna()}) if "layer" in rows else []
    if len(layers) > 1:  # several layers of one checkpoint: one line each
        labels = labels + both["layer"].map(lambda v: f", layer {int(v) + 1}" if pd.notna(v) else "")
    both = both.assign(feature=both["feature"] if "feature" in both else "features")
    both, dropped = _lines_of(both, name, label_by, ["metric", "feature", "component", "layer"], labels)
    rows, ranks = both[both["metric"] == "feature_spectrum"], both[both["metric"] == "effective_rank"]
    kinds = list(dict.fromkeys(rows["feature"]))
    labels = list(dict.fromkeys(rows["label"]))
    plt, sns = _style()
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.4 * len(kinds), max(2.5, _legend_height(labels, 0) - 0.3)),
                             squeeze=False)
    drawn = []
    parts_of = dict(tuple(rows.groupby(["label", "feature"], sort=False)))
    ranks_of = dict(tuple(ranks.groupby(["label", "feature"], sort=False)))
    for ax, kind in zip(axes[0], kinds):
        for i, (colour, label) in enumerate(zip(sns.color_palette("colorblind", len(labels)), labels)):
            part = parts_of.get((label, kind), rows.iloc[:0]).sort_values("component")
            if part.empty:
                continue
            part = part.iloc[: max(int(part["n_images"].iloc[0]) - 1, 1)]  # rank of n centred features <= n - 1
            values = part["value"].to_numpy(dtype=float)
            if len(values) == 0 or values[0] <= 0:
                continue
            drawn.append(part)
            x = np.arange(1, len(values) + 1)
            rank = ranks_of.get((label, kind), ranks.iloc[:0])
            legend = label
            if len(rank):
                r = rank.iloc[0]
                legend += f" (eff. rank {r['value']:.1f}"
                if pd.notna(r.get("ci_low")) and pd.notna(r.get("ci_high")):
                    legend += f" [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
                legend += ")"
            ax.semilogy(x, np.clip(values / values[0], 1e-8, None), color=colour, lw=1.2, ls=_line_style(i),
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
             "eff. rank (legend): exp of the entropy of the normalised singular values, [95% CI] where stored",
             dropped]
    sns.despine(fig)
    _finish(fig, "; ".join(part for part in parts if part))
    paths = _save(fig, out_dir, name)
    plt.close(fig)
    return paths


MAX_HEATMAP_SIDE = 512  # layers on one axis of a heat map


def _heatmap(frame, metric, title, out_dir, name, label_by):
    """A metric of layer pairs (linear CKA: ``layer`` of the checkpoint against ``ref_layer`` of its reference) as
    heat maps, one panel per (checkpoint, reference) pair: rows the checkpoint's layers, columns the reference's,
    both numbered as the table (0-based), origin at the bottom left (vit_analysis's ``CKA.plot_results``), colour
    scale fixed at 0-1 with the bar "linear CKA". The title names both checkpoints; the intervals stay in the
    table and the caption gives their half-widths."""
    import textwrap

    from ..limits import check

    rows = frame[frame["metric"] == metric]
    if rows.empty or "ref_layer" not in rows:
        return []
    for column in ("layer", "ref_layer"):  # whole layer numbers, as the metric writes them (hand-edited: refused)
        numbers = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if not (np.isfinite(numbers) & (numbers >= 0) & (numbers == np.round(numbers))).all():
            raise MaeprobeError(f"{name}: the {column} column must hold layer numbers 0, 1, ... (a hand-edited "
                                "table?)")
        rows = rows.assign(**{column: numbers.astype(int)})
    side = max(rows["layer"].nunique(), rows["ref_layer"].nunique())
    if side > MAX_HEATMAP_SIDE:  # before any pivot: 25,000 distinct layers asked a 5 GB table
        raise MaeprobeError(f"{name}: {side} distinct layers on one axis; a heat map draws at most "
                            f"{MAX_HEATMAP_SIDE} (the deepest ViTs have 48 blocks: a hand-edited table?)")
    rows["reference"] = _text(rows, "reference")
    rows, dropped = _lines_of(rows, name, label_by, ["layer", "ref_layer", "reference"])
    panels = list(dict.fromkeys(zip(rows["label"], rows["reference"])))
    check("MAEPROBE_MAX_FIGURE_LINES", len(panels), f"{name}: panels (one per checkpoint and reference) of the figure")
    if not panels:
        return []
    plt, sns = _style()
    columns = min(len(panels), 3)
    grid_rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(3.3 * columns, 3.2 * grid_rows), squeeze=False)
    cmap = plt.get_cmap("magma").with_extremes(bad="0.85")  # a pair without a finite value (see the caption)
    groups = dict(tuple(rows.groupby(["label", "reference"], sort=False)))
    for ax, (label, reference) in zip(axes.flat, panels):
        part = groups[(label, reference)]
        table = part.pivot(index="layer", columns="ref_layer", values="value").sort_index().sort_index(axis=1)
        ref_name = f"{label} (itself)" if reference in ("(itself)", "") else reference
        image = ax.imshow(table.to_numpy(dtype=float), origin="lower", cmap=cmap, vmin=0.0, vmax=1.0,
                          aspect="auto", interpolation="nearest")
        for axis, layers in ((ax.xaxis, list(table.columns)), (ax.yaxis, list(table.index))):
            step = max(1, -(-len(layers) // 16))  # at most 16 numbers per axis, each the table's own layer
            axis.set_ticks(range(0, len(layers), step))
            axis.set_ticklabels([str(int(layers[k])) for k in range(0, len(layers), step)], fontsize=5.5)
        if table.size <= 64:  # few cells: the values themselves
            for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5,
                            color="black" if v > 0.6 else "white")
        ax.set_ylabel("\n".join(textwrap.wrap(f"layer of {label} (0-based, as the table)", 40)), fontsize=6)
        ax.set_xlabel("\n".join(textwrap.wrap(f"layer of {ref_name} (0-based, as the table)", 40)), fontsize=6)
        heading = textwrap.wrap(f"{title}: {label} vs {ref_name}", 48)
        ax.set_title("\n".join(heading[:3]) + ("..." if len(heading) > 3 else ""), fontsize=6.5)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label("linear CKA", fontsize=6)
        bar.ax.tick_params(labelsize=5.5)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    first = rows.iloc[0]
    features = {"cls": "CLS token", "mean": "mean of patch tokens", "tokens": "all tokens flattened"}.get(
        str(first.get("features")), str(first.get("features")))
    estimator = "exact (all images)" if str(first.get("estimator")) != "minibatch" else "minibatch unbiased HSIC"
    size = _count(rows, "minibatch_size")
    if str(first.get("estimator")) == "minibatch" and size:
        estimator += f" over batches of {size}"
    parts = [_caption(rows, name), f"features: block outputs, {features}; estimator: {estimator}",
             "rows: the checkpoint's layers, columns: the reference's (0-based, as the table); colours 0-1"]
    interval = _interval_text(rows, "intervals (in the table, not drawn)", "delete-a-group jackknife",
                              labels=rows["label"])
    if not interval.startswith("no interval"):
        half = ((rows["ci_high"] - rows["ci_low"]) / 2).astype(float)
        half = half[np.isfinite(half)]
        interval += f": half-width median {half.median():.3f}, max {half.max():.3f}"
    parts += [interval, dropped]
    _finish(fig, "; ".join(part for part in parts if part))
    paths = _save(fig, out_dir, name)
    plt.close(fig)
    return paths


def _setting(rows: pd.DataFrame, column: str, default=None) -> pd.Series:
    """``column`` as comparable text: numbers as ``%g``, missing values as the default (``decoder_features``: as
    ``ref_features``; ``units``: px), booleans from files (True, 'True', 1) as True/False."""
    if column == "units" and default is None:
        default = "px"
    values = rows[column] if column in rows else pd.Series(np.nan, index=rows.index)
    if column == "decoder_features" and "ref_features" in rows:
        values = values.where(values.notna(), rows["ref_features"])

    def text(value) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return "none" if default is None else text(default)
        if isinstance(value, (bool, np.bool_)):
            return str(bool(value))
        if isinstance(default, bool):  # a flag stored as 1, 1.0 or 'true' is True
            lowered = str(value).strip().lower()
            return {"true": "True", "1": "True", "1.0": "True", "false": "False", "0": "False",
                    "0.0": "False"}.get(lowered, str(value))
        if isinstance(value, (int, float, np.number)):
            return f"{float(value):g}"
        return str(value)

    return values.astype(object).map(text)


def _check_settings(rows: pd.DataFrame, name: str) -> None:
    """Refuse rows measured with different units (px, patches) or Eq. 7 / Eq. 8 settings on one axis: a caption
    states one convention, and lines of different ones are not comparable."""
    from ..validate import one_line

    for column, default in _figure(name).settings.items():
        values = list(dict.fromkeys(_setting(rows, column, default)))
        if len(values) > 1:
            raise MaeprobeError(f"{name}: the rows were measured with different {column} "
                                f"({', '.join(one_line(v, 40) for v in values[:6])}); a figure compares like with "
                                "like: plot those tables separately")


def _table(frame, label_by) -> pd.DataFrame:
    """A copy of ``frame`` that the figures can read, or a ``MaeprobeError`` saying what is missing: the columns
    metric, module, layer and value (numbers); head, ci_low, ci_high and checkpoint are optional."""
    from ..validate import one_line, short

    if not isinstance(frame, pd.DataFrame):
        raise MaeprobeError(f"make_figures: expected a results table (pandas DataFrame), got {type(frame).__name__} "
                            f"{short(frame, 60)}")
    if not isinstance(label_by, str):
        raise MaeprobeError(f"label_by: expected a column name, got {short(label_by, 60)}")
    missing = [c for c in ("metric", "module", "layer", "value") if c not in frame.columns]
    if missing:
        raise MaeprobeError(f"the table has no {', '.join(missing)} column; expected a results table of maeprobe "
                            "(metric, module, layer, head, value, ...)")
    frame = frame.copy()
    for column in ("head", "ci_low", "ci_high"):
        if column not in frame:
            frame[column] = np.nan
    if "checkpoint" not in frame:
        frame["checkpoint"] = "(unnamed)"
    try:
        for column in ("value", "ci_low", "ci_high"):
            frame[column] = pd.to_numeric(frame[column]).astype(float)
        for column in ("layer", "head"):
            frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    except (ValueError, TypeError, OverflowError) as exc:
        raise MaeprobeError(f"the table's value, ci_low, ci_high, layer and head columns must hold numbers "
                            f"({one_line(exc, 120)})") from None
    missing = frame.index[frame["layer"].isna()]
    if len(missing):
        raise MaeprobeError(f"the table has {len(missing)} row(s) without a layer number (first: row {missing[0]}, "
                            f"metric {one_line(frame.loc[missing[0], 'metric'], 40)!r}); every row of a results "
                            "table names its layer")
    return frame


def _rows_of(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    rows = frame[frame["metric"] == FIGURES[name][0]]
    module = _figure(name).module
    return rows if module is None else rows[rows["module"] == module]


def make_figures(frame: pd.DataFrame, out_dir: str | Path, *, figures=None, label_by: str = "checkpoint",
                 mix_mask_settings: bool = False) -> list[Path]:
    """Write every figure whose data is in ``frame`` (or only ``figures``: a list, or one comma-separated string).
    Returns the paths written.

    A figure compares like with like: rows measured under different probe masks (mask ratio, shared or per
    image) are refused on one plot (``MaeprobeError``, a ValueError) unless ``mix_mask_settings``, which labels
    every line with its mask; rows of different units or Eq. 7 / Eq. 8 settings are refused. Each input is its own
    line (see the module's docstring). Each figure's title states the probe mask and, for Eq. 7 / Eq. 8, the
    conventions used.
    """
    from ..io import check_output_folder, check_outputs
    from ..results import output_path
    from ..validate import one_line, short

    out_dir = check_output_folder(output_path(out_dir, "figure folder", kind="folder"))
    frame = _table(frame, label_by)
    if not isinstance(mix_mask_settings, (bool, np.bool_)):
        raise MaeprobeError(f"mix_mask_settings: expected True or False, got {short(mix_mask_settings, 40)}")
    if isinstance(figures, str):
        figures = [f.strip() for f in figures.split(",") if f.strip()]
    if figures is not None and (not hasattr(figures, "__iter__") or isinstance(figures, bytes)):
        raise MaeprobeError(f"figures: expected a list of figure names ({', '.join(FIGURES)}), got "
                            f"{short(figures, 60)}")
    metrics = set(frame["metric"])
    if figures is None:
        figures = [name for name, (metric, figure) in registry.figures().items()
                   if figure.default and metric.column in metrics]
    figures = list(figures)
    # every file of every figure is checked before anything is drawn: a file maeprobe did not write is not replaced
    check_outputs([out_dir / f"{name}{suffix}" for name in figures if isinstance(name, str) and name in FIGURES
                   for suffix in (".png", ".pdf")])
    paths: list[Path] = []
    for name in figures:
        if not isinstance(name, str) or name not in FIGURES:
            raise MaeprobeError(f"unknown figure {one_line(name, 40)!r}; choose from {', '.join(FIGURES)}")
        metric, title, ylabel = FIGURES[name]
        if metric not in metrics:
            raise MaeprobeError(f"{name} needs {metric} rows, which the tables do not have")
        frame_used = frame
        _check_settings(_rows_of(frame, name), name)
        settings = _mask_settings(_rows_of(frame, name))
        if len(settings) > 1:
            if not mix_mask_settings:
                raise MaeprobeError(f"{name}: the rows were measured under different probe masks "
                                 f"({', '.join(settings)}); plot like with like, or allow it with "
                                 f"--mix-mask-settings (mix_mask_settings=True), which labels each line")
            frame_used = frame.copy()
            shared = frame_used["shared_mask"] if "shared_mask" in frame_used else True
            frame_used["_mask_suffix"] = [f" [{_mask_text(r, sh)}]" for r, sh in
                                          zip(frame_used["mask_ratio"], pd.Series(shared, index=frame_used.index))]
        figure = _figure(name)
        if figure.kind == "layers":
            paths += _per_layer_lines(frame_used, metric, title, ylabel, out_dir, name, label_by)
        elif figure.kind == "spectrum":
            paths += _spectrum(frame_used, out_dir, name, label_by)
        elif figure.kind == "heatmap":
            paths += _heatmap(frame_used, metric, title, out_dir, name, label_by)
        else:
            by = figure.label_by if figure.label_by and label_by == "checkpoint" else label_by
            paths += _per_head_layers(frame_used, metric, title, out_dir, name, by, figure.module or "encoder")
    return paths
