"""Commands that look at one checkpoint or at stored tables: info, render-attn, figures."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..metrics import registry
from .common import CKPT, DEC_HEADS, DEVICE, IMG_SIZE, NUM_HEADS, SEED, _echo, _friendly, _one_line, _parse_layers

app = typer.Typer()


@app.command(short_help="Show a checkpoint's format, architecture, decoder and parameter count.")
@_friendly
def info(ckpt: Path = CKPT, num_heads: Optional[int] = NUM_HEADS, decoder_num_heads: Optional[int] = DEC_HEADS,
         img_size: Optional[int] = IMG_SIZE):
    """Show a checkpoint's format, architecture, decoder and parameter count."""
    from ..api import describe
    from ..checkpoints import load

    model = load(ckpt, num_heads=num_heads, decoder_num_heads=decoder_num_heads, img_size=img_size)
    for key, value in [("file", str(ckpt)), *describe(model)]:
        _echo(f"{key:>14}: {value}")


@app.command("render-attn", short_help="Render one image's attention maps as PNG and PDF.")
@_friendly
def render_attn(
    ckpt: Path = CKPT,
    image: Path = typer.Option(..., "--image", help="Image file."),
    out: Path = typer.Option(Path("attention_render"), "--out", help="Output path without extension (PNG + PDF)."),
    layers: Optional[str] = typer.Option(None, "--layers",
                                         help="0-based layers (decoder default 0,1,2,4,7 = paper's 1,2,3,5,8; "
                                              "encoder default last)."),
    query: Optional[str] = typer.Option(None, "--query", help="Query patch indices, row-major (default: 2 masked "
                                                               "patches near the centre)."),
    encoder: bool = typer.Option(False, "--encoder", help="Encoder CLS attention per head (DINO style)."),
    mask_ratio: float = typer.Option(0.75, "--mask-ratio"), seed: int = SEED,
    device: Optional[str] = DEVICE,
    num_heads: Optional[int] = NUM_HEADS, decoder_num_heads: Optional[int] = DEC_HEADS,
    img_size: Optional[int] = IMG_SIZE,
):
    """Attention maps of one image (paper Fig. 4 / B.1), PNG and PDF."""
    from ..api import render_attention
    from ..io import check_output_file
    from ..results import output_path

    out = output_path(out, "--out", kind="stem")  # '.', '/', a folder, a device: one line, before any work
    for suffix in (".png", ".pdf"):
        check_output_file(out.with_suffix(suffix))

    queries = _parse_layers(query, "--query") if query else None
    paths = render_attention(str(ckpt), image, out, layers=_parse_layers(layers), queries=queries,
                             mask_ratio=mask_ratio, seed=seed, encoder=encoder, device=device, num_heads=num_heads,
                             decoder_num_heads=decoder_num_heads, img_size=img_size)
    _echo("wrote " + ", ".join(str(p) for p in paths))


@app.command("figures", short_help="Redraw the paper's figures from stored result tables.")
@_friendly
def figures_cmd(
    results: list[Path] = typer.Argument(..., help="Result tables (.csv/.json/.parquet) written by maeprobe."),
    out: Path = typer.Option(Path("figures/out"), "--out", help="Output folder."),
    figure: Optional[str] = typer.Option(None, "--figure",
                                         help=f"Comma list of {', '.join(registry.figures())} (default: every "
                                              "figure the tables have data for)."),
    label_by: str = typer.Option("checkpoint", "--label-by", help="Column that names the lines."),
    mix_mask_settings: bool = typer.Option(False, "--mix-mask-settings",
                                           help="Allow rows measured under different probe masks on one plot "
                                                "(each line is then labelled with its mask)."),
):
    """Regenerate the paper's figures from stored result tables only (no model is run)."""

    from ..errors import MaeprobeError
    from ..io import check_output_folder
    from ..plots import make_figures

    check_output_folder(out)
    from ..results import output_path, read_tables

    output_path(out, "--out", kind="folder")
    table = read_tables(results)  # each row's file in results_file: tables of one label stay apart
    if label_by not in table.columns:
        raise MaeprobeError(f"--label-by {_one_line(label_by)!r}: the tables have no such column (they have "
                            f"{', '.join(map(str, table.columns[:12]))}, ...)")
    try:
        paths = make_figures(table, out, figures=figure.split(",") if figure else None, label_by=label_by,
                             mix_mask_settings=mix_mask_settings)
    except (ValueError, KeyError, TypeError) as exc:  # rows that a figure cannot use
        raise MaeprobeError(f"the tables cannot be plotted ({exc})") from None
    if not paths:
        raise MaeprobeError("the tables hold no rows that any figure uses")
    for path in paths:
        _echo(f"wrote {path}")


