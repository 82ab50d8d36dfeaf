"""Attention distance per layer: one dot per head, a line through the per-layer mean (ViT Fig. 7 style)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_attention_distance(frame: pd.DataFrame, out: str | Path, *, module: str = "encoder",
                            label_column: str = "checkpoint", title: str | None = None) -> list[Path]:
    """Plot ``attention_distance`` rows of ``frame`` (one colour per checkpoint). Writes PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = frame[(frame["metric"] == "attention_distance") & (frame["module"] == module)]
    if rows.empty:
        raise ValueError(f"no attention_distance rows for the {module}")
    units = rows["units"].iloc[0] if "units" in rows else "px"
    labels = list(dict.fromkeys(rows[label_column]))
    palette = sns.color_palette("colorblind", len(labels))
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=150)
    for colour, label in zip(palette, labels):
        part = rows[rows[label_column] == label]
        jitter = (part["head"].astype(float) / max(part["head"].max(), 1) - 0.5) * 0.3
        ax.scatter(part["layer"].astype(float) + jitter, part["value"], s=9, color=colour, alpha=0.55, linewidths=0)
        means = part.groupby("layer")["value"].mean()
        ax.plot(means.index.astype(float), means.values, color=colour, lw=1.8, label=label)
    ax.set_xlabel(f"{module} layer")
    ax.set_ylabel(f"mean attention distance ({units})")
    ax.set_title(title or f"Mean attention distance ({module})", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    sns.despine(fig)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths
