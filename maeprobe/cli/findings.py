"""Commands that reproduce the papers' findings and run the demo: reproduce, demo."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

from .common import DEVICE, _echo, _friendly

app = typer.Typer()


@app.command("reproduce", short_help="Reproduce the papers' findings and judge each claim.")
@_friendly(flags=False)  # messages name recipe keys, not probe flags
def reproduce_cmd(
    ids: Optional[list[str]] = typer.Argument(None, help="Finding ids (default: all of the scale; --list shows them)."),
    scale: str = typer.Option("tiny", "--scale", help="tiny (2 CPU cores, built-in photos), small (one GPU, "
                                                      "--data folder), released (no training: the public MAE, DINO "
                                                      "and DeiT ViT-B/16 checkpoints from the hub caches) or base "
                                                      "(prints the paper's 8-GPU commands)."),
    out: Path = typer.Option(Path("outputs/reproduce"), "--out", help="Output folder (runs, figures, findings.csv, "
                                                                      "findings.md); reused and resumed."),
    data: Optional[Path] = typer.Option(None, "--data", help="Image folder for pretraining and probing "
                                                             "(default: the built-in photographs)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Labelled ImageFolder-style folder for the "
                                             "linear probes (DIR/<class>/*.jpg, or DIR/train and DIR/val; e.g. "
                                             "CIFAR-10 or Imagenette exported to folders). Default: scikit-learn "
                                             "digits."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Reference for decoder-semantic (checkpoint or 'dino'); "
                                                         "without one that finding is inconclusive (released: DINO)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, max=100, help="Independently trained runs per "
                                        "finding; intervals cover them (default: 3 at tiny and small)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, max=10_000_000,
                                        help="Optimiser steps per run (default: the scale's)."),
    probe_images: Optional[int] = typer.Option(None, "--probe-images", min=2, max=1_000_000,
                                               help="Images of the probe set (default: 128 tiny, 1024 small, "
                                                    "1000 released)."),
    device: Optional[str] = DEVICE,
    list_only: bool = typer.Option(False, "--list", help="List the finding ids with their claims and exit."),
):
    """Reproduce the papers' findings: train what they need (recipe engine) over several seeds, measure them and
    their controls, judge each claim by its written rule (holds / fails / inconclusive), write findings.csv,
    findings.md and figures."""
    from ..findings import list_findings, reproduce
    from ..io import check_output_folder

    if list_only:
        for row in list_findings().itertuples():
            _echo(f"{row.finding:<20} {row.claim} ({row.paper})")
        return
    from ..findings.runner import check_paths
    from ..results import output_path

    output_path(out, "--out", kind="folder")  # /dev, /proc, /sys refused before anything is read or trained
    check_paths(out=out, data=data, eval_data=eval_data)  # names the file system can take, before anything runs
    check_output_folder(out)
    table = reproduce(ids or None, scale=scale, out=out, data=data, eval_data=eval_data, ref=ref, steps=steps,
                      seeds=seeds, probe_images=probe_images, device=device, echo=_echo)
    _echo(table[["finding", "verdict", "measured", "ci_low", "ci_high", "unit"]].to_string(
        index=False, float_format="%.3g", max_colwidth=48), block=True)


@app.command(short_help="Pretrain a small MAE and run every metric on it.")
@_friendly(flags=False)  # messages name recipe keys, not probe flags
def demo(
    out: Path = typer.Option(Path("outputs/demo"), "--out", help="Output folder."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0.0, max=1e7,
                                                help="Cap on the pretraining time (default: none; the demo says "
                                                     "when the cap cut training short)."),
    steps: int = typer.Option(300, "--steps", min=1, max=10_000_000,
                              help="Pretraining steps (fixed, so that every run gives the same numbers)."),
):
    """Pretrain a small MAE on the built-in photos, run every metric on it and on the untrained model, write
    the table, the paper's figures and attention renders."""
    from ..demo import run_demo
    from ..io import check_output_folder
    from ..results import output_path

    check_output_folder(output_path(out, "--out", kind="folder"))  # before the pretraining starts
    paths = run_demo(out, max_minutes=max_minutes, steps=steps,
                     echo=functools.partial(_echo, block=True))  # its tables; its own lines name no user input
    _echo()
    _echo("results:")
    for key, path in paths.items():
        _echo(f"  {key:>24}: {path}")
