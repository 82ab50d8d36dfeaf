"""The findings' figures: each draws the evidence its rule judged, with the controls the rule used (the same
seed's initial weights, the uniform-attention level, the raw-pixel and random-encoder probes), 95% intervals
combined over images and seeds (``rules.combine``), the units, the runs or checkpoints it shows and how many
seeds. Layers are numbered from 1, as in the paper's figures (the tables' ``layer`` column is 0-based)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from ..plots.figures import _style
from . import rules
from .catalogue import FINDINGS


def _combined(table: pd.DataFrame, by: str) -> pd.DataFrame:
    rows = []
    for key, part in table.groupby(by):
        per_seed = part.groupby("seed")[["value", "ci_low", "ci_high"]].mean().reset_index()
        e = rules.combine(per_seed)
        rows.append({by: key, "value": e.value, "ci_low": e.low, "ci_high": e.high})
    return pd.DataFrame(rows).sort_values(by)


def _caption(labels: dict, seeds: int, evidence: pd.DataFrame | None = None) -> str:
    if labels.get("checkpoints"):
        what = "; ".join(labels["checkpoints"].values())
    else:
        runs = labels.get("runs") or {}
        what = "runs " + ", ".join(f"{name} ({len(folders)} seed{'s' if len(folders) != 1 else ''})"
                                   for name, folders in runs.items()) + f", scale {labels.get('scale')}"
    data = f"Labelled set: {labels['evalset']}" if labels.get("evalset") else f"Probe images: {labels.get('data')}"
    units = pd.to_numeric(evidence["n_units"], errors="coerce").dropna() \
        if evidence is not None and "n_units" in evidence else pd.Series(dtype=float)
    over = "images" if units.empty else (f"{int(units.min())} source images" if units.min() == units.max()
                                         else f"{int(units.min())}-{int(units.max())} source images")
    text = f"{what}. {data}. Bands/bars: 95% CI over {over} and {seeds} seed(s)."
    if labels.get("reference"):
        text += f" Reference: {labels['reference']}."
    return text


def _finish(fig, ax, finding_id: str, verdict: rules.Verdict, caption: str, folder: Path, name: str):
    finding = FINDINGS[finding_id]
    ax.set_title(f"{finding_id}: {verdict.verdict}  ({finding.paper})", fontsize=7)
    lines = textwrap.wrap(caption, 110)
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=5.2, va="bottom", ha="left", color="0.25")
    fig.tight_layout(rect=(0, min(0.5, 0.04 + 0.026 * len(lines)), 1, 1))  # the axes end above the caption's lines
    paths = _save_kept(fig, folder, name)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def _save_kept(fig, folder: Path, name: str):
    from ..plots.figures import save_figure

    return save_figure(fig, [folder / f"{name}.png", folder / f"{name}.pdf"], dpi=200)


def _band(ax, x, rows, label, color, style="-", marker="o"):
    ax.plot(x, rows["value"], style, marker=marker, ms=3, lw=1.2, color=color, label=label)
    ax.fill_between(x, rows["ci_low"], rows["ci_high"], color=color, alpha=0.2, lw=0)


def _uniform(ax, level: float) -> None:
    """The uniform-attention level and the band within which a distance has no power (the rules' margin)."""
    margin = rules.DISTANCE_MARGIN * level
    ax.axhspan(level - margin, level + margin, color="0.85", alpha=0.5, lw=0,
               label=f"uniform +- {rules.DISTANCE_MARGIN:.0%}: no power")
    ax.axhline(level, color="0.3", lw=0.8, ls=":", label=f"uniform attention ({level:.1f} px)")


def finding_figure(finding_id: str, measured, labels: dict, folder: Path) -> list[Path]:
    """The figure of one finding (PNG and PDF in ``folder``); [] when there is no evidence."""
    evidence, verdict, spec = measured.evidence, measured.verdict, measured.figure
    if evidence.empty or not spec:
        return []
    plt, sns = _style()
    colors = sns.color_palette("colorblind", 8)
    seeds = max(int(verdict.seeds), 1)
    caption = _caption(labels, seeds, evidence)
    kind = spec["kind"]
    fig, ax = plt.subplots(figsize=(6.4, 3.5))
    if kind == "profile":  # Eq. 7 / Eq. 8 per decoder layer: trained vs initial weights (+ uniform for Eq. 7)
        for condition, label, color, style in (("trained", "trained", colors[0], "-"),
                                               ("init", "same seed, initial weights", colors[7], "--")):
            rows = _combined(evidence[evidence["condition"] == condition], "layer")
            _band(ax, rows["layer"] + 1, rows, label, color, style)
        if spec.get("uniform") is not None:
            ax.axhline(spec["uniform"], color="0.3", lw=0.8, ls=":", label="uniform attention (Eq. 7 = 1)")
        ax.set_xlabel("decoder layer (1 = first)")
        ax.set_ylabel(FINDINGS[finding_id].axis)
        ax.xaxis.get_major_locator().set_params(integer=True)
    elif kind == "distance":  # attention distance per encoder layer for each mask ratio
        trained = evidence[evidence["condition"] == "trained"]
        palette = sns.color_palette("viridis", trained["mask_ratio"].nunique())
        for color, (ratio, part) in zip(palette, trained.groupby("mask_ratio")):
            rows = _combined(part, "layer")
            _band(ax, rows["layer"] + 1, rows, f"mask ratio {ratio:g}", color)
        rows = _combined(evidence[evidence["condition"] == "init"], "layer")
        _band(ax, rows["layer"] + 1, rows, "same seed, initial weights", "0.5", "--", "x")
        _uniform(ax, spec["uniform"])
        ax.set_xlabel("encoder layer (1 = first)")
        ax.set_ylabel("mean attention distance (px)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    elif kind == "ae":  # AE(k): mean over layers vs block size
        trained = evidence[evidence["condition"] == "trained"]
        rows = _combined(trained.groupby(["k", "seed"])[["value", "ci_low", "ci_high"]].mean().reset_index(), "k")
        ax.errorbar(rows["k"], rows["value"], yerr=[rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]],
                    fmt="o-", ms=4, capsize=3, color=colors[0], label="AE(k), trained")
        init = rules.combine(evidence[evidence["condition"] == "init"].groupby("seed")[["value", "ci_low", "ci_high"]]
                             .mean().reset_index())
        ax.axhspan(init.low, init.high, color="0.6", alpha=0.3,
                   label=f"each run's same-seed initial weights ({init.value:.1f} px)")
        _uniform(ax, spec["uniform"])
        ax.set_xticks(rows["k"], [f"AE({int(k)})" for k in rows["k"]])
        ax.set_xlabel("predicted block side k (px)")
        ax.set_ylabel("mean attention distance over layers (px)")
    elif kind == "models":  # Fig. 5: MAE, DINO, DeiT per layer
        names = {"mae": "MAE", "dino": "DINO", "deit": "DeiT", "init": "random initial weights (MAE's architecture)"}
        for color, model in zip((colors[0], colors[1], colors[2], "0.5"), names):
            rows = _combined(evidence[evidence["model"] == model], "layer")
            _band(ax, rows["layer"] + 1, rows, names[model], color, "--" if model == "init" else "-")
        _uniform(ax, spec["uniform"])
        ax.set_xlabel("encoder layer (1 = first)")
        ax.set_ylabel("mean attention distance (px)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    elif kind == "late-layers":  # cl-vs-mim: MAE, DINO, MoCo v3 per layer; the rule reads the shaded late blocks
        from .rules_cl_vs_mim import late_layers

        names = {"mae": "MAE", "dino": "DINO", "mocov3": "MoCo v3",
                 "init": "random initial weights (MAE's architecture)"}
        late = late_layers(evidence["layer"])
        ax.axvspan(late[0] + 0.5, late[-1] + 1.5, color="0.92", lw=0, label="blocks the rule reads (last third)")
        for color, model in zip((colors[0], colors[1], colors[3], "0.5"), names):
            part = evidence[evidence["model"] == model]
            if not part.empty:
                rows = _combined(part, "layer")
                _band(ax, rows["layer"] + 1, rows, names[model], color, "--" if model == "init" else "-")
        if spec.get("uniform") is not None:
            ax.axhline(spec["uniform"], color="0.3", lw=0.8, ls=":", label=spec.get("uniform_label", "uniform"))
        ax.set_xlabel("encoder layer (1 = first)")
        ax.set_ylabel(FINDINGS[finding_id].axis)
        ax.xaxis.get_major_locator().set_params(integer=True)
    elif kind in ("accuracy", "rank"):
        if kind == "accuracy":
            est = rules.accuracy_estimates(evidence)
            ylabel, chance = "linear-probe top-1 (%)", float(evidence["chance"].iloc[0])
        else:
            est = {m: rules.combine(part) for m, part in evidence.groupby("model", sort=False)}
            ylabel, chance = "effective rank of the CLS feature (dimensions)", None
        names = {"pixels": "raw pixels", "random": "random encoder", "init": "init. MAE", "umae": "U-MAE",
                 "mae": "MAE", "transformer": "transformer", "gaussian": "Gaussian", "conv": "conv"}

        def name(m: str) -> str:
            if m.startswith("init:"):  # a run's own same-seed initial weights
                return "init. " + name(m.removeprefix("init:"))
            return names.get(m, f"AE({m[2:]})")

        controls = ("pixels", "random", "init")
        is_control = [m in controls or m.startswith("init:") for m in est]
        order = [m for m, c in zip(est, is_control) if not c] + [m for m, c in zip(est, is_control) if c]
        values = np.array([est[m].value for m in order])
        errors = np.vstack([values - [est[m].low for m in order], [est[m].high for m in order] - values])
        bar_colors = ["0.65" if m in controls or m.startswith("init:") else colors[i % 7] for i, m in enumerate(order)]
        ax.bar(range(len(order)), values, yerr=np.clip(errors, 0, None), color=bar_colors, capsize=3, width=0.6)
        ax.set_xticks(range(len(order)), [name(m) for m in order], fontsize=6, rotation=30 if len(order) > 7 else 0,
                      ha="right" if len(order) > 7 else "center")
        if chance is not None:
            ax.axhline(chance, color="0.3", lw=0.8, ls=":", label=f"chance ({chance:.0f}%)")
        ax.plot([], [], "s", color="0.65", label="controls (grey)")
        ax.set_ylabel(ylabel)
    elif kind == "collapse":
        est = {(s, f): rules.combine(evidence[(evidence["setting"] == s) & (evidence["feature"] == f)])
               for s in "ceg" for f in ("patch", "cls")}
        for j, (feature, color) in enumerate((("patch", colors[0]), ("cls", colors[1]))):
            x = np.arange(3) + (j - 0.5) * 0.35
            values = np.array([est[s, feature].value for s in "ceg"])
            errors = np.vstack([values - [est[s, feature].low for s in "ceg"],
                                [est[s, feature].high for s in "ceg"] - values])
            ax.bar(x, values, yerr=np.clip(errors, 0, None), width=0.35, color=color, capsize=3,
                   label=f"{feature} tokens")
        ax.axhline(1.0, color="0.3", lw=0.8, ls=":", label="initial weights (ratio 1)")
        ax.axhline(rules.COLLAPSE_RATIO_BELOW, color="0.3", lw=0.8, ls="--",
                   label=f"collapsed below {rules.COLLAPSE_RATIO_BELOW}")
        ax.set_xticks(range(3), ["(c) L_cross", "(e) L_MAE + L_cross", "(g) L_cross + L_in"], fontsize=6)
        ax.set_yscale("log")
        ax.set_ylabel("encoder output spread, trained / initial")
    else:
        plt.close(fig)
        return []
    ax.legend(fontsize=5.5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    sns.despine(fig)
    return _finish(fig, ax, finding_id, verdict, caption, folder, finding_id)
