"""``maeprobe demo``: pretrain a small MAE on the built-in photos, then compare attention distances."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .api import attention_distance
from .checkpoints import load, save_checkpoint
from .models import build_mae
from .results import write_table
from .train import PretrainConfig, pretrain


def run_demo(out_dir: str | Path = "outputs/demo", *, max_minutes: float = 2.5, steps: int = 600,
             seed: int = 0, progress: bool = True, echo=print) -> dict[str, Path]:
    """Pretrain, measure the trained and untrained model, plot. Returns the paths written."""
    from .plots import plot_attention_distance

    out_dir = Path(out_dir)
    config = PretrainConfig(out=str(out_dir / "mae_tiny_trained.pth"), steps=steps, max_minutes=max_minutes,
                            seed=seed, base_lr=1.5e-3, batch_size=32, warmup_steps=30)
    echo(f"[1/3] pretraining {config.preset} on the built-in photographs "
         f"(up to {steps} steps or {max_minutes:g} min, CPU is fine)")
    trained_path = pretrain(config, progress=progress)
    untrained = build_mae(config.preset)
    untrained_path = save_checkpoint(untrained, out_dir / "mae_tiny_untrained.pth")

    echo("[2/3] measuring mean attention distance (encoder, all layers, no mask, 200 bootstrap replicates)")
    tables = []
    for path in (untrained_path, trained_path):
        tables.append(attention_distance(load(path), bootstrap=200, progress=progress))
    table = pd.concat(tables, ignore_index=True)
    csv_path = write_table(table, out_dir / "attention_distance.csv")

    echo("[3/3] plotting")
    plots = plot_attention_distance(table, out_dir / "attention_distance",
                                    title="MAE ViT-Tiny/8: untrained vs pretrained")
    pivot = table.pivot_table(index="layer", columns="checkpoint", values="value", aggfunc="mean", sort=False)
    pivot.columns.name = None
    echo("\nmean attention distance per encoder layer (px, mean over heads):")
    echo(pivot.to_string(float_format="%.2f"))
    return {"trained": trained_path, "untrained": untrained_path, "table": csv_path, "plot": plots[0],
            "plot_pdf": plots[1], "log": Path(config.out).with_suffix(".log.csv")}
