"""``maeprobe demo``: pretrain a small MAE on the built-in photos, run every metric on the trained and the
untrained model, write the table, the paper's figures and attention renders."""
from __future__ import annotations

from pathlib import Path

from .api import load_reference, render_attention, run
from .checkpoints import load, save_checkpoint
from .data import builtin_images
from .errors import MaeprobeError
from .io import check_outputs, record_outputs
from .results import write_table
from .train import PretrainConfig, pretrain


def run_demo(out_dir: str | Path = "outputs/demo", *, max_minutes: float | None = None, steps: int = 300,
             seed: int = 0, progress: bool = True, echo=print) -> dict[str, Path]:
    """Pretrain a fixed number of steps (deterministic: the same numbers on every run on the same machine),
    measure the trained model and the same seed's initial weights, plot, render. ``max_minutes`` caps the
    training time; when it cuts training short, the demo says so. Returns the paths written."""
    from .checkpoints import read_pickle
    from .plots import make_figures
    from .train.engine import initial_objective

    out_dir = Path(out_dir)
    check_demo_outputs(out_dir)  # before training: a file in the way that maeprobe did not write is refused
    config = PretrainConfig(out=str(out_dir / "mae_tiny_trained.pth"), steps=steps, max_minutes=max_minutes,
                            seed=seed, base_lr=1.5e-3, batch_size=32, warmup_steps=30)
    echo(f"[1/4] pretraining {config.preset} on the built-in photographs for {steps} steps "
         f"(about 2 minutes on 2 idle CPU cores at the default 300"
         + (f"; capped at {max_minutes:g} min" if max_minutes is not None else "") + ")")
    trained_path = pretrain(config, progress=progress)
    done = int(read_pickle(trained_path).get("step", 0))
    final = _final_loss(trained_path.parent / "log.csv")
    if done < steps:
        echo(f"      STOPPED EARLY by --max-minutes {max_minutes:g} at step {done} of {steps} "
             f"(final loss {final:.4f}); "
             "the trained model may not differ from the untrained one yet")
    else:
        echo(f"      trained {done} steps, final loss {final:.4f}")
    # the untrained model is the same seed's initial weights: exactly what training started from
    untrained_path = save_checkpoint(initial_objective(config.recipe()).model, out_dir / "mae_tiny_untrained.pth")
    record_outputs([untrained_path])

    try:
        reference = load_reference("dino")
        ref_label = "DINO ViT-B/16 (local copy)"
    except MaeprobeError:
        reference = load(trained_path)
        ref_label = "the trained model's own encoder (no local DINO copy; set MAEPROBE_DINO to use DINO)"
    echo(f"[2/4] all metrics (attention distance and spectrum unmasked, decoder metrics under one shared 0.75 "
         f"mask); Eq. 8 reference: {ref_label}")
    metrics = ["attn-distance", "decoder-attn-sim", "decoder-semantics", "spectrum"]
    table = run([untrained_path, trained_path], metrics=metrics, reference=reference, seed=seed, bootstrap=200,
                per_head=True, progress=progress)
    csv_path = write_table(table, out_dir / "results.csv")
    record_outputs([csv_path])

    echo("[3/4] figures from the stored table")
    figures = make_figures(table, out_dir / "figures")

    echo("[4/4] attention renders")
    name, image = builtin_images()[-1]  # matplotlib's grace_hopper.jpg
    renders = render_attention(load(trained_path), image, out_dir / "renders" / "decoder_attention", seed=seed)
    renders += render_attention(load(trained_path), image, out_dir / "renders" / "encoder_attention", encoder=True)

    for metric, label in (("attention_distance", "mean attention distance (px, mean over heads), encoder"),
                          ("decoder_attention_similarity", "S_attn (Eq. 7), decoder"),
                          ("decoder_semantic_similarity", "S_sim (Eq. 8), decoder")):
        rows = table[(table["metric"] == metric) & (table["head"].isna() if metric != "attention_distance" else True)]
        pivot = rows.pivot_table(index="layer", columns="checkpoint", values="value", aggfunc="mean", sort=False)
        pivot.columns.name = None
        echo(f"\n{label}:")
        echo(pivot.to_string(float_format="%.3f"))
    ranks = table[table["metric"] == "effective_rank"]
    echo("\neffective rank of last-layer features:")
    echo(ranks.pivot_table(index="feature", columns="checkpoint", values="value", sort=False).to_string(
        float_format="%.2f"))
    return {"trained": trained_path, "untrained": untrained_path, "table": csv_path,
            "figures": out_dir / "figures", "renders": out_dir / "renders",
            "training log": Path(config.out).parent / "log.csv",
            **{p.stem: p for p in figures if p.suffix == ".png"}, **{p.stem: p for p in renders if p.suffix == ".png"}}


DEMO_FIGURES = ("fig2", "fig3", "fig5", "entropy", "spectrum")
DEMO_RENDERS = ("decoder_attention", "encoder_attention")


def demo_outputs(out_dir: str | Path) -> list[Path]:
    """The files the demo writes besides its training run (whose files the run folder's own check guards)."""
    out_dir = Path(out_dir)
    return [out_dir / "results.csv", out_dir / "mae_tiny_untrained.pth",
            *(out_dir / "figures" / f"{name}{suffix}" for name in DEMO_FIGURES for suffix in (".png", ".pdf")),
            *(out_dir / "renders" / f"{name}{suffix}" for name in DEMO_RENDERS for suffix in (".png", ".pdf"))]


def check_demo_outputs(out_dir: str | Path) -> list[Path]:
    """Check every output name of the demo at once, before training: a file that maeprobe did not write there (or a
    symbolic link) is refused with one line (``io.check_outputs``); the demo's own files from an earlier run are
    replaced."""
    return check_outputs(demo_outputs(out_dir))


def _final_loss(log: Path) -> float:
    import csv

    try:
        with open(log, newline="") as f:
            rows = list(csv.DictReader(f))
        return float(rows[-1]["loss"])
    except (OSError, ValueError, KeyError, IndexError):
        return float("nan")
