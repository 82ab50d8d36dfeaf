"""What every command shares: printing on the main process, the common options and their parsers.

Heavy imports happen inside the functions, so that ``maeprobe --help`` stays fast.
"""
from __future__ import annotations

import sys
from enum import Enum
from typing import Optional

import typer


def _one_line(message) -> str:
    from ..validate import one_line

    return one_line(message)


def _fail(message: str, code: int = 2) -> None:
    """Print ``error: <message>`` as one line (on the main process only under torchrun) and exit."""
    from ..distributed import is_main

    if is_main():
        typer.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


class ResampleBy(str, Enum):
    image = "image"
    folder = "folder"


RESAMPLE_HELP = ("What the 95% intervals resample, the independent unit: image (each file; default) or folder (all "
                 "images of one sub-folder are one unit, e.g. crops or frames of one scene).")


class DType(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


def _echo(message: str = "", *, block: bool = False, **kwargs) -> None:
    """Print on the main process only (under torchrun every process computes, one reports).

    A message is one line: a newline or control character in it (a file name, a key or note from a checkpoint)
    is shown escaped, so that no name can start a line of its own (a forged ``error: ...``). ``block=True`` keeps
    the line breaks of text that a formatter built line by line with its values escaped (pandas' ``to_string``,
    which prints a newline in a value as ``\\n``; the recipe YAML)."""
    from ..distributed import is_main

    if is_main():
        from ..validate import printable

        typer.echo(printable(message) if block else _one_line(message), **kwargs)


def _parse_layers(text: Optional[str], option: str = "--layers") -> Optional[list[int]]:
    if text is None or text.strip().lower() in ("", "all"):
        return None
    from ..errors import MaeprobeError

    layers = []
    for part in text.replace(" ", "").split(","):
        try:
            if ":" in part or ("-" in part[1:]):
                lo, hi = part.split(":") if ":" in part else part.split("-", 1)
                lo, hi = int(lo), int(hi)
                if hi < lo:
                    raise MaeprobeError(f"{option}: the range {part!r} runs backwards; write it low-high, e.g. "
                                        f"{hi}-{lo}")
                if hi - lo > 100_000:
                    raise MaeprobeError(f"{option}: the range {part!r} is longer than any model")
                layers += list(range(lo, hi + 1))
            else:
                layers.append(int(part))
        except ValueError as exc:
            if isinstance(exc, MaeprobeError):
                raise
            raise MaeprobeError(f"{option}: cannot read {_one_line(part)!r}; use e.g. 0,5,11 or 0-3 "
                                "(0-based)") from None
    if not layers:
        raise MaeprobeError(f"{option}: no index given; use e.g. 0,5,11 or 0-3 (0-based)")
    return layers


def _parse_mask_ratios(text: Optional[str]) -> Optional[dict]:
    """'attn-distance=0.75,spectrum=0' -> {'attn-distance': 0.75, 'spectrum': 0.0}."""
    from ..errors import MaeprobeError

    if not text:
        return None
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise MaeprobeError(f"--mask-ratios: expected metric=ratio, got {part!r}")
        key, value = part.split("=", 1)
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise MaeprobeError(f"--mask-ratios: {_one_line(value)!r} is not a number") from None
    return out


NUM_WORKERS = typer.Option(None, "--num-workers", min=0, max=1024,
                           help="Processes decoding image files (default: on CUDA CPU "
                                                         "cores - 1, at most 8; on CPU 0, i.e. in this process).")
CKPT = typer.Argument(..., help="Checkpoint file (.pth/.pt/.bin/.safetensors/.npz), HuggingFace folder, or a "
                                 "model name (hf-hub:org/name, timm/name, an official release file name).")
IMG_SIZE = typer.Option(None, "--img-size", min=1, max=65536,
                        help="Probe the encoder at this input size: the position embedding is resampled as the "
                             "family's own code does (MAE: bicubic without antialias; default: the trained size). An "
                             "MAE decoder keeps its trained grid, so decoder metrics need the checkpoint's own size.")
NUM_HEADS = typer.Option(None, "--num-heads", min=1, max=1024,
                         help="Encoder heads (only for checkpoints of unknown releases).")
DEC_HEADS = typer.Option(None, "--decoder-num-heads", min=1, max=1024,
                         help="Decoder heads (only for unknown decoders).")


BLOCK_QUERIES = typer.Option(None, "--block-queries", min=0, max=1 << 20,
                             help="Attention statistics from q and k in blocks of this many query rows, no N x N "
                                  "map kept (default 64); 0: full N x N maps (the reference path).")


IMAGES = typer.Option(None, "--images", help="Folder of images (recursive). Default: built-in photos.")
OUT_TABLE = typer.Option(None, "--out", help="Write the table: .csv, .json or .parquet.")
SEED = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Mask seed (and bootstrap seed).")
RESAMPLE = typer.Option("image", "--resample-by", help=RESAMPLE_HELP)
BOOTSTRAP = typer.Option(200, "--bootstrap", min=0, max=100_000,
                         help="Bootstrap replicates for ci_low/ci_high (0: off).")
BATCH = typer.Option(16, "--batch-size", min=1, max=1 << 20)
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).")
DTYPE = typer.Option(DType.fp32, "--dtype", help="fp32 or bf16 (autocast).")
DEC_LAYERS = typer.Option(None, "--layers", help="0-based decoder layers, e.g. 0,7 or 0-3 (default all).")


def _check_table_out(out) -> None:
    """Refuse a table path that cannot be written before any model is loaded or image decoded."""
    if out is not None:
        from ..io import check_output_file
        from ..results import output_path

        check_output_file(output_path(out, "--out"), (".csv", ".json", ".parquet"))


NOT_SAVED = "(not saved: add --out FILE.csv|.parquet|.json to keep the table)"


def _write(table, out) -> None:
    """Write the table to ``out``, or say in one line that nothing was saved."""
    if out is not None:
        from ..results import write_table

        _echo(f"wrote {write_table(table, out)}")
    else:
        _echo(NOT_SAVED)

from .errors import _friendly  # noqa: E402, F401  (the commands' decorator, re-exported for them)
