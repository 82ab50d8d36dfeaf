"""Command line: thin wrappers around the Python API. Heavy imports happen inside the commands."""
from __future__ import annotations

import functools
import math
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

try:  # newer typer carries its own copy of click: its exceptions are the ones raised
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - typer on the real click
    from click import exceptions as click_errors
from typer.core import TyperGroup


def _one_line(message) -> str:
    from .validate import one_line

    return one_line(message)


def _fail(message: str, code: int = 2) -> None:
    """Print ``error: <message>`` as one line (on the main process only under torchrun) and exit."""
    from .distributed import is_main

    if is_main():
        typer.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


class OneLineErrors(TyperGroup):
    """Command-line mistakes (unknown option, a value of the wrong type or out of range, a missing argument) end
    with one line ``error: ...`` and exit status 2, like every other refusal, instead of click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        except click_errors.NoArgsIsHelpError as exc:  # a bare group prints its help, as before
            typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            code = 2
        except click_errors.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            _fail(exc.format_message() + hint)
        except click_errors.ClickException as exc:
            _fail(exc.format_message())
        except KeyboardInterrupt:  # outside a command (inside, ``_friendly`` says the same)
            typer.echo("interrupted", err=True)
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # plain click help: rich's panels print "<bool>" beside every flag
                  help="Look inside pretrained MAE / ViT checkpoints.")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"maeprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Look inside pretrained MAE / ViT checkpoints."""


class Module(str, Enum):
    encoder = "encoder"
    decoder = "decoder"


def _images_text(table) -> str:
    """'N images' and, when the intervals rest on fewer independent units, how many ('12 images, 4 independent
    units')."""
    n = int(table["n_images"].iloc[0])
    import pandas as pd

    units = table["n_units"].iloc[0] if "n_units" in table else None
    if units is None or pd.isna(units) or int(units) == n:
        return f"{n} images"
    return f"{n} images, {int(units)} independent units"


class ResampleBy(str, Enum):
    image = "image"
    folder = "folder"


RESAMPLE_HELP = ("What the 95% intervals resample, the independent unit: image (each file; default) or folder (all "
                 "images of one sub-folder are one unit, e.g. crops or frames of one scene).")


class Units(str, Enum):
    px = "px"
    patches = "patches"


class DType(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


def _echo(message: str = "", *, block: bool = False, **kwargs) -> None:
    """Print on the main process only (under torchrun every process computes, one reports).

    A message is one line: a newline or control character in it (a file name, a key or note from a checkpoint)
    is shown escaped, so that no name can start a line of its own (a forged ``error: ...``). ``block=True`` keeps
    the line breaks of text that a formatter built line by line with its values escaped (pandas' ``to_string``,
    which prints a newline in a value as ``\\n``; the recipe YAML)."""
    from .distributed import is_main

    if is_main():
        from .validate import printable

        typer.echo(printable(message) if block else _one_line(message), **kwargs)


def _friendly(fn):
    """Join the process group when launched by torchrun; print user errors (bad file, bad flag, no images)
    as one line and exit 2, no traceback; leave the process group on the way out."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch.distributed as dist

        from .distributed import init_from_env, is_main
        from .errors import MaeprobeError

        def show(message, category, filename, lineno, file=None, line=None):
            if is_main():
                print(f"warning: {_one_line(message)}", file=sys.stderr)

        warnings.showwarning = show
        joined = not (dist.is_available() and dist.is_initialized())
        try:
            init_from_env()
            return fn(*args, **kwargs)
        except MaeprobeError as exc:  # every process hits the same refusal; the main one prints it
            _refuse(exc)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except RecursionError as exc:  # e.g. folders nested 1,000 deep walked by pathlib's recursive glob
            _refuse(f"an input is nested too deeply: {_where(exc)} reached Python's recursion limit; expected files "
                    "and folders nested at most a few hundred levels")
        except (MemoryError, OSError, RuntimeError) as exc:
            message = _environment_error(exc)
            if message is None:  # a bug: its traceback is what a report needs
                raise
            _refuse(message)
        finally:
            if joined and dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()

    return wrapper


def _refuse(message) -> None:
    """``error: <message>`` as one line, printed by the main process, and exit status 2."""
    from .distributed import is_main

    if is_main():
        typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(2) from None


def _shown_path(name) -> str:
    """A path from an OSError as one escaped line, its middle cut when it is very long (a path of 6,000
    characters stays recognisable by its start and its end)."""
    import os

    text = _one_line(os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else name)
    return text if len(text) <= 300 else f"{text[:150]}...{text[-120:]}"


def _frames(exc: BaseException) -> list[str]:
    """``module.function`` of maeprobe's own frames in ``exc``'s traceback, outermost first (the CLI left out)."""
    out, tb = [], exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith("maeprobe.") and module != "maeprobe.cli":
            out.append(f"{module}.{tb.tb_frame.f_code.co_name}")
        tb = tb.tb_next
    return out


def _where(exc: BaseException) -> str:
    frames = _frames(exc)
    return frames[-1] if frames else "maeprobe"


# Where an allocation failed -> the step and the limits (maeprobe/limits.py) that bound its size. A checkpoint
# anywhere in the stack is the reading; otherwise the innermost of maeprobe's modules decides.
_MEMORY_STEPS = (
    ("maeprobe.data", "while decoding images", ("MAEPROBE_MAX_IMAGE_PIXELS",)),
    ("maeprobe.results", "while reading a result table", ("MAEPROBE_MAX_TABLE_BYTES", "MAEPROBE_MAX_TABLE_ROWS")),
    ("maeprobe.plots", "while drawing figures", ("MAEPROBE_MAX_TABLE_BYTES", "MAEPROBE_MAX_TABLE_ROWS")),
    ("maeprobe.train", "while training", ("MAEPROBE_MAX_MODEL_BYTES", "MAEPROBE_MAX_BATCH_BYTES")),
    ("maeprobe.", "while computing the metrics", ("MAEPROBE_MAX_METRIC_MEMORY", "MAEPROBE_MAX_PATCHES",
                                                  "MAEPROBE_MAX_ATTENTION")),
)


def _environment_error(exc: BaseException) -> Optional[str]:
    """The one line for an error of the environment rather than of maeprobe's code: an allocation that failed
    (an address-space or container cap), a path the system refused (too long, no permission, a loop of links),
    a full disk; None for anything else (a bug)."""
    import errno
    import re

    from .errors import out_of_memory

    if out_of_memory(exc):
        frames = _frames(exc)
        if any(f.startswith("maeprobe.checkpoints.") for f in frames):
            step, names = "while reading the checkpoint", ("MAEPROBE_MAX_INFLATE",)
        else:
            innermost = frames[-1] if frames else "maeprobe."
            step, names = next((s, n) for prefix, s, n in _MEMORY_STEPS if innermost.startswith(prefix))
            if innermost.startswith("maeprobe.models") and _where(exc).endswith(("__init__", "build_mae")):
                step, names = "while building the model", ("MAEPROBE_MAX_MODEL_BYTES", "MAEPROBE_MAX_DEPTH")
        want = re.search(r"allocate (\d+) bytes", str(exc)[:2000])
        size = f", {int(want.group(1)):,} bytes at once" if want else ""
        bound = (f"lower {' or '.join(names)} to refuse such inputs before the work starts, "
                 if names else "use a smaller batch, ")
        return (f"ran out of memory {step} (in {_where(exc)}{size}): this process may allocate less than "
                f"maeprobe's limits allow; {bound}or give the process more memory")
    if isinstance(exc, OSError) and exc.filename is not None:
        shown = _shown_path(exc.filename)
        if exc.filename2 is not None:
            shown += f" -> {_shown_path(exc.filename2)}"
        return f"{shown}: cannot use this path ({exc.strerror or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"cannot write ({exc.strerror}) in {_where(exc)}; free some space or write elsewhere"
    return None


def _parse_layers(text: Optional[str], option: str = "--layers") -> Optional[list[int]]:
    if text is None or text.strip().lower() in ("", "all"):
        return None
    from .errors import MaeprobeError

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


def _parse_tau(text: str) -> Optional[float]:
    """'0.15' -> 0.15; 'none' -> None (continuous cosine affinities)."""
    from .errors import MaeprobeError

    if text.strip().lower() in ("none", "off", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise MaeprobeError(f"--tau: expected a number or 'none', got {_one_line(text)!r}") from None
    if not math.isfinite(value):
        raise MaeprobeError(f"--tau: expected a finite number or 'none', got {text!r}")
    return value


def _parse_mask_ratios(text: Optional[str]) -> Optional[dict]:
    """'attn-distance=0.75,spectrum=0' -> {'attn-distance': 0.75, 'spectrum': 0.0}."""
    from .errors import MaeprobeError

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


TAU_HELP = ("Binarise affinities as CutLER's MaskCut: W > tau -> 1, else --eps (default 0.15, CutLER's README and "
            "demo value; maskcut.py's own default is 0.2); "
            "'none' keeps the continuous cosine matrix.")
NUM_WORKERS = typer.Option(None, "--num-workers", min=0, max=1024, help="Processes decoding image files (default: on CUDA CPU "
                                                         "cores - 1, at most 8; on CPU 0, i.e. in this process).")
CKPT = typer.Argument(..., help="Checkpoint file (.pth/.pt/.bin/.safetensors/.npz), HuggingFace folder, or a "
                                 "model name (hf-hub:org/name, timm/name, an official release file name).")
IMG_SIZE = typer.Option(None, "--img-size", min=1, max=65536, help="Probe the encoder at this input size: the position "
                        "embedding is resampled as the family's own code does (MAE: bicubic without antialias; default: "
                        "the trained size). An MAE decoder keeps its trained grid, so decoder metrics need the "
                        "checkpoint's own size.")
NUM_HEADS = typer.Option(None, "--num-heads", min=1, max=1024, help="Encoder heads (only for checkpoints of unknown releases).")
DEC_HEADS = typer.Option(None, "--decoder-num-heads", min=1, max=1024, help="Decoder heads (only for unknown decoders).")


@app.command()
@_friendly
def info(ckpt: Path = CKPT, num_heads: Optional[int] = NUM_HEADS, decoder_num_heads: Optional[int] = DEC_HEADS,
    img_size: Optional[int] = IMG_SIZE):
    """Show a checkpoint's format, architecture, decoder and parameter count."""
    from .checkpoints import load

    model = load(ckpt, num_heads=num_heads, decoder_num_heads=decoder_num_heads, img_size=img_size)
    cfg = model.config
    encoder_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("decoder", "mask_token")))
    total = sum(p.numel() for p in model.parameters())
    prefix = [name for name, present in (("cls", cfg.class_token), ("dist", cfg.dist_token)) if present]
    prefix += [f"{cfg.num_reg_tokens} registers"] if cfg.num_reg_tokens else []
    lines = [
        ("file", str(ckpt)),
        ("family", model.checkpoint.family_label),
        ("format", model.checkpoint.format),
        ("encoder", f"ViT width {cfg.embed_dim}, depth {cfg.depth}, {cfg.num_heads} heads, patch {cfg.patch_size}, "
                    f"input {cfg.img_size}px ({cfg.grid_size}x{cfg.grid_size} patches), mlp ratio {cfg.mlp_ratio:g}"),
        ("prefix tokens", ", ".join(prefix) or "none"),
        ("decoder", f"width {cfg.decoder_embed_dim}, depth {cfg.decoder_depth}, {cfg.decoder_num_heads} heads"
         if cfg.decoder_depth else "none (encoder only)"),
        ("head", f"{cfg.num_classes} classes" if cfg.num_classes else "none"),
        ("parameters", f"{total:,} ({encoder_params:,} encoder)"),
        ("mean / std", f"{model.checkpoint.mean} / {model.checkpoint.std}"),
    ]
    lines += [("note", note) for note in model.checkpoint.notes]
    for key, value in lines:
        _echo(f"{key:>14}: {value}")


BLOCK_QUERIES = typer.Option(None, "--block-queries", min=0, max=1 << 20,
                             help="Attention statistics from q and k in blocks of this many query rows, no N x N "
                                  "map kept (default 64); 0: full N x N maps (the reference path).")


@app.command("attn-distance")
@_friendly
def attn_distance(
    ckpt: Path = CKPT,
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images (recursive). Default: built-in photos."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the table: .csv, .json or .parquet."),
    mask_ratio: float = typer.Option(0.0, "--mask-ratio", help="Fraction of patches masked (visible ones keep their positions)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Mask seed (and bootstrap seed)."),
    per_image_mask: bool = typer.Option(False, "--per-image-mask", help="A different seeded mask per image."),
    layers: Optional[str] = typer.Option(None, "--layers", help="0-based layers, e.g. 0,5,11 or 0-3 (default all)."),
    module: Module = typer.Option(Module.encoder, "--module", help="encoder or decoder."),
    units: Units = typer.Option(Units.px, "--units", help="px or patches."),
    renormalize: bool = typer.Option(False, "--renormalize", help="Renormalise rows over patch keys."),
    bootstrap: int = typer.Option(200, "--bootstrap", min=0, max=100_000,
                                  help="Bootstrap replicates for ci_low/ci_high (0: off)."),
    resample_by: ResampleBy = typer.Option("image", "--resample-by", help=RESAMPLE_HELP),
    batch_size: int = typer.Option(16, "--batch-size", min=1, max=1 << 20),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    dtype: DType = typer.Option(DType.fp32, "--dtype", help="fp32 or bf16 (autocast)."),
    num_workers: Optional[int] = NUM_WORKERS,
    num_heads: Optional[int] = NUM_HEADS,
    decoder_num_heads: Optional[int] = DEC_HEADS,
    img_size: Optional[int] = IMG_SIZE,
    block_queries: Optional[int] = BLOCK_QUERIES,
):
    """Mean attention distance per layer and head (ViT authors' convention), in pixels by default."""
    _check_table_out(out)
    from .api import attention_distance
    from .checkpoints import load
    from .results import layer_summary, write_table

    model = load(ckpt, num_heads=num_heads, decoder_num_heads=decoder_num_heads, img_size=img_size)
    table = attention_distance(model, images, layers=_parse_layers(layers), module=module.value,
                               mask_ratio=mask_ratio, seed=seed, shared_mask=not per_image_mask, units=units.value,
                               renormalize=renormalize, bootstrap=bootstrap, resample_by=resample_by.value, batch_size=batch_size, device=device,
                               dtype=dtype.value, progress=True, num_workers=num_workers,
                               block_queries=block_queries)
    summary = layer_summary(table)
    if bootstrap:
        ci = table.groupby("layer")[["ci_low", "ci_high"]].mean().reset_index()
        summary = summary.merge(ci, on="layer")
    _echo(f"{model.checkpoint.name}: mean attention distance ({units.value}) of the {module.value}, "
               f"{_images_text(table)}, mask ratio {mask_ratio:g}")
    _echo(summary.drop(columns=["metric", "module"]).rename(
        columns={"mean": "mean(heads)", "min": "min head", "max": "max head",
                 "ci_low": "mean ci_low", "ci_high": "mean ci_high"}).to_string(index=False, float_format="%.2f"),
          block=True)
    if out is not None:
        _echo(f"wrote {write_table(table, out)}")


IMAGES = typer.Option(None, "--images", help="Folder of images (recursive). Default: built-in photos.")
OUT_TABLE = typer.Option(None, "--out", help="Write the table: .csv, .json or .parquet.")
SEED = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Mask seed (and bootstrap seed).")
RESAMPLE = typer.Option("image", "--resample-by", help=RESAMPLE_HELP)
BOOTSTRAP = typer.Option(200, "--bootstrap", min=0, max=100_000, help="Bootstrap replicates for ci_low/ci_high (0: off).")
BATCH = typer.Option(16, "--batch-size", min=1, max=1 << 20)
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).")
DTYPE = typer.Option(DType.fp32, "--dtype", help="fp32 or bf16 (autocast).")
DEC_LAYERS = typer.Option(None, "--layers", help="0-based decoder layers, e.g. 0,7 or 0-3 (default all).")


def _check_table_out(out) -> None:
    """Refuse a table path that cannot be written before any model is loaded or image decoded."""
    if out is not None:
        from .io import check_output_file
        from .results import output_path

        check_output_file(output_path(out, "--out"), (".csv", ".json", ".parquet"))


def _print_per_layer(table, title: str) -> None:
    rows = table[table["head"].isna()] if table["head"].isna().any() else table
    summary = rows.groupby("layer")[["value", "ci_low", "ci_high"]].mean().reset_index()
    _echo(title)
    _echo(summary.to_string(index=False, float_format="%.4f"), block=True)


def _write(table, out) -> None:
    if out is not None:
        from .results import write_table

        _echo(f"wrote {write_table(table, out)}")


@app.command("attn-entropy")
@_friendly
def attn_entropy(
    ckpt: Path = CKPT, images: Optional[Path] = IMAGES, out: Optional[Path] = OUT_TABLE,
    mask_ratio: float = typer.Option(0.0, "--mask-ratio", help="Fraction of patches masked."), seed: int = SEED,
    layers: Optional[str] = typer.Option(None, "--layers", help="0-based layers, e.g. 0,5,11 or 0-3 (default all)."),
    module: Module = typer.Option(Module.encoder, "--module", help="encoder or decoder."),
    patch_keys_only: bool = typer.Option(False, "--patch-keys-only",
                                         help="Renormalise each row over patch keys (drop CLS/registers) first."),
    bootstrap: int = BOOTSTRAP, resample_by: ResampleBy = RESAMPLE, batch_size: int = BATCH, device: Optional[str] = DEVICE, dtype: DType = DTYPE,
    num_workers: Optional[int] = NUM_WORKERS, num_heads: Optional[int] = NUM_HEADS,
    decoder_num_heads: Optional[int] = DEC_HEADS, img_size: Optional[int] = IMG_SIZE,
    block_queries: Optional[int] = BLOCK_QUERIES,
):
    """Mean attention entropy per layer and head, in nats: each patch query's row entropy, averaged over
    queries and images; uniform attention gives ln(number of keys), printed beside it."""
    _check_table_out(out)
    from .api import attention_entropy
    from .checkpoints import load
    from .results import layer_summary

    model = load(ckpt, num_heads=num_heads, decoder_num_heads=decoder_num_heads, img_size=img_size)
    table = attention_entropy(model, images, layers=_parse_layers(layers), module=module.value,
                              patch_keys_only=patch_keys_only, mask_ratio=mask_ratio, seed=seed, bootstrap=bootstrap, resample_by=resample_by.value,
                              batch_size=batch_size, device=device, dtype=dtype.value, progress=True,
                              num_workers=num_workers, block_queries=block_queries)
    _echo(f"{model.checkpoint.name}: mean attention entropy (nats) of the {module.value}, "
          f"{_images_text(table)}, mask ratio {mask_ratio:g}; uniform attention: "
          f"{table['uniform_level'].iloc[0]:.3f}")
    _echo(layer_summary(table).drop(columns=["metric", "module"]).rename(
        columns={"mean": "mean(heads)", "min": "min head", "max": "max head"}).to_string(index=False,
                                                                                        float_format="%.3f"),
          block=True)
    _write(table, out)


@app.command("decoder-attn-sim")
@_friendly
def decoder_attn_sim(
    ckpt: Path = CKPT, images: Optional[Path] = IMAGES, out: Optional[Path] = OUT_TABLE,
    mask_ratio: float = typer.Option(0.75, "--mask-ratio", help="Shared mask ratio."), seed: int = SEED,
    layers: Optional[str] = DEC_LAYERS,
    per_head: bool = typer.Option(False, "--per-head", help="Also one row per head."),
    cls_key: bool = typer.Option(False, "--cls-key", help="Keep the CLS key column in A_{l,i} (Eq. 7 as written "
                                                          "has the n patch keys only)."),
    bootstrap: int = BOOTSTRAP, resample_by: ResampleBy = RESAMPLE, batch_size: int = BATCH, device: Optional[str] = DEVICE, dtype: DType = DTYPE,
    num_workers: Optional[int] = NUM_WORKERS,
    num_heads: Optional[int] = NUM_HEADS, decoder_num_heads: Optional[int] = DEC_HEADS,
    img_size: Optional[int] = IMG_SIZE, block_queries: Optional[int] = BLOCK_QUERIES,
):
    """LC-MAE Eq. 7: similarity of the masked queries' decoder attention (k x heads x n patch keys) across
    images, all images under one shared seeded mask."""
    _check_table_out(out)
    from .api import decoder_attention_similarity
    from .checkpoints import load

    model = load(ckpt, num_heads=num_heads, decoder_num_heads=decoder_num_heads, img_size=img_size)
    table = decoder_attention_similarity(model, images, layers=_parse_layers(layers), per_head=per_head,
                                         include_cls_key=cls_key, mask_ratio=mask_ratio, seed=seed, bootstrap=bootstrap, resample_by=resample_by.value,
                                         batch_size=batch_size, device=device, dtype=dtype.value, progress=True,
                                         num_workers=num_workers, block_queries=block_queries)
    _print_per_layer(table, f"{model.checkpoint.name}: S_attn per decoder layer ({_images_text(table)}, "
                            f"mask ratio {mask_ratio:g}, seed {seed}, "
                            f"{'CLS key included' if cls_key else 'patch keys only'})")
    if per_head:
        heads = table[table["head"].notna()][["layer", "head", "value", "ci_low", "ci_high"]]
        _echo("per head (layer and head 0-based, as in the table):")
        _echo(heads.to_string(index=False, float_format="%.4f"), block=True)
    _write(table, out)


@app.command("decoder-semantics")
@_friendly
def decoder_semantics(
    ckpt: Path = CKPT,
    ref: str = typer.Option(..., "--ref", help="Reference checkpoint, or 'dino' (local copy; see MAEPROBE_DINO)."),
    images: Optional[Path] = IMAGES, out: Optional[Path] = OUT_TABLE,
    ref_features: str = typer.Option("keys", "--ref-features", help="Reference features: keys of the last block "
                                                                     "(CutLER) or tokens (its output)."),
    decoder_features: Optional[str] = typer.Option(None, "--decoder-features",
                                                   help="Decoder features: keys or tokens (default: as --ref-features)."),
    tau: str = typer.Option("0.15", "--tau", help=TAU_HELP),
    eps: float = typer.Option(1e-5, "--eps", min=0.0, max=1.0, help="Value replacing zeros after --tau."),
    mask_ratio: float = typer.Option(0.75, "--mask-ratio", help="Shared mask ratio."), seed: int = SEED,
    layers: Optional[str] = DEC_LAYERS, bootstrap: int = BOOTSTRAP, resample_by: ResampleBy = RESAMPLE, batch_size: int = BATCH,
    device: Optional[str] = DEVICE, dtype: DType = DTYPE, num_workers: Optional[int] = NUM_WORKERS,
    num_heads: Optional[int] = NUM_HEADS, decoder_num_heads: Optional[int] = DEC_HEADS,
    img_size: Optional[int] = IMG_SIZE,
    ref_num_heads: Optional[int] = typer.Option(None, "--ref-num-heads", min=1, max=1024,
                                                help="Reference heads, if unknown."),
    center_keys: bool = typer.Option(False, "--center-keys", help="Subtract each image's mean feature before the "
                                     "cosines (for references whose keys share a common component, e.g. DINOv2; "
                                     "off = the paper's setting)."),
    tau_quantile: Optional[float] = typer.Option(None, "--tau-quantile", min=0.0, max=1.0,
                                                 help="tau per image = this quantile of its cosines (replaces "
                                                      "--tau; off = the paper's setting)."),
):
    """LC-MAE Eq. 8: semantic similarity of each decoder layer to a reference model (e.g. DINO). --ref dino uses
    DINO ViT-B/16 (LC-MAE says only "DINO"; CutLER's own reference is DINO ViT-B/8) when a local copy exists, else DINOv2, and names it. The
    density of W is reported: above 0.95 (saturated) S measures only a density, and a warning says so."""
    _check_table_out(out)
    from .api import decoder_semantic_similarity
    from .checkpoints import load

    model = load(ckpt, num_heads=num_heads, decoder_num_heads=decoder_num_heads, img_size=img_size)
    table = decoder_semantic_similarity(model, ref, images, layers=_parse_layers(layers), ref_features=ref_features,
                                        decoder_features=decoder_features, tau=_parse_tau(tau), eps=eps,
                                        mask_ratio=mask_ratio, seed=seed, bootstrap=bootstrap, resample_by=resample_by.value, batch_size=batch_size, device=device, dtype=dtype.value, progress=True,
                                        ref_num_heads=ref_num_heads, num_workers=num_workers,
                                        center=center_keys, tau_quantile=tau_quantile)
    first = table.iloc[0]
    _print_per_layer(table, f"{model.checkpoint.name}: S_sim per decoder layer vs {first['reference']} "
                            f"(features: reference {first['ref_features']}, decoder {first['decoder_features']}; "
                            f"tau {tau if tau_quantile is None else f'quantile {tau_quantile:g}'}"
                            f"{', keys centred' if center_keys else ''})")
    _echo("density of W: reference {:.3f}; decoder layers {}".format(
        float(first["ref_w_density"]), ", ".join(f"{d:.3f}" for d in table["w_density"])))
    flagged = table[table["w_flag"] != ""]
    if len(flagged):
        sides = [f"the reference's W is {flagged['w_flag'].iloc[0].split(';')[0].split()[1]}"] \
            if "reference" in flagged["w_flag"].iloc[0] else []
        decoder = flagged[flagged["w_flag"].str.contains("decoder")]
        for state in ("saturated", "empty"):
            layers = [str(int(l)) for l, f in zip(decoder["layer"], decoder["w_flag"]) if f"decoder {state}" in f]
            if layers:
                sides.append(f"W is {state} in decoder layer(s) {', '.join(layers)}")
        _echo(f"warning: {'; '.join(sides)} (density outside [0.05, 0.95]): S then measures only a density; try "
              "--center-keys or --tau-quantile (README, Eq. 8)")
    _write(table, out)


@app.command("spectrum")
@_friendly
def spectrum(
    ckpt: Path = CKPT, images: Optional[Path] = IMAGES, out: Optional[Path] = OUT_TABLE,
    layers: Optional[str] = typer.Option(None, "--layers", help="0-based encoder layers (default: the last)."),
    mask_ratio: float = typer.Option(0.0, "--mask-ratio"), seed: int = SEED, bootstrap: int = BOOTSTRAP, resample_by: ResampleBy = RESAMPLE,
    batch_size: int = BATCH, device: Optional[str] = DEVICE, dtype: DType = DTYPE,
    num_workers: Optional[int] = NUM_WORKERS,
    num_heads: Optional[int] = NUM_HEADS, decoder_num_heads: Optional[int] = DEC_HEADS,
    img_size: Optional[int] = IMG_SIZE,
):
    """U-MAE feature-collapse spectrum: singular values and effective rank of encoder features."""
    _check_table_out(out)
    from .api import feature_spectrum
    from .checkpoints import load

    model = load(ckpt, num_heads=num_heads, decoder_num_heads=decoder_num_heads, img_size=img_size)
    table = feature_spectrum(model, images, layers=_parse_layers(layers), mask_ratio=mask_ratio, seed=seed,
                             bootstrap=bootstrap, resample_by=resample_by.value, batch_size=batch_size, device=device, dtype=dtype.value,
                             progress=True, num_workers=num_workers)
    ranks = table[table["metric"] == "effective_rank"]
    _echo(f"{model.checkpoint.name}: effective rank of encoder features ({_images_text(ranks)})")
    _echo(ranks[["layer", "feature", "value", "ci_low", "ci_high"]].to_string(index=False, float_format="%.2f"),
          block=True)
    _write(table, out)


@app.command("run")
@_friendly
def run_cmd(
    ckpts: list[Path] = typer.Argument(..., help="One or more checkpoints."),
    metrics: str = typer.Option("attn-distance", "--metrics",
                                help="Comma list of attn-distance, attn-entropy, decoder-attn-sim, decoder-semantics, "
                                     "spectrum."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Reference for decoder-semantics (checkpoint or 'dino')."),
    images: Optional[Path] = IMAGES, out: Optional[Path] = OUT_TABLE,
    mask_ratio: Optional[float] = typer.Option(None, "--mask-ratio",
                                               help="One shared mask ratio for every metric (default: each metric's "
                                                    "own: 0 for attn-distance and spectrum, 0.75 for decoder metrics)."),
    mask_ratios: Optional[str] = typer.Option(None, "--mask-ratios",
                                              help="Per-metric ratios, e.g. attn-distance=0.75,spectrum=0."),
    seed: int = SEED, bootstrap: int = BOOTSTRAP, resample_by: ResampleBy = RESAMPLE,
    per_head: bool = typer.Option(False, "--per-head", help="Per-head rows for decoder-attn-sim."),
    cls_key: bool = typer.Option(False, "--cls-key", help="decoder-attn-sim: keep the CLS key column."),
    tau: str = typer.Option("0.15", "--tau", help=TAU_HELP),
    ref_features: str = typer.Option("keys", "--ref-features", help="decoder-semantics: keys or tokens."),
    decoder_features: Optional[str] = typer.Option(None, "--decoder-features",
                                                   help="decoder-semantics: keys or tokens (default: as --ref-features)."),
    batch_size: int = BATCH, device: Optional[str] = DEVICE, dtype: DType = DTYPE,
    num_workers: Optional[int] = NUM_WORKERS,
    num_heads: Optional[int] = NUM_HEADS, decoder_num_heads: Optional[int] = DEC_HEADS,
    img_size: Optional[int] = IMG_SIZE,
    ref_num_heads: Optional[int] = typer.Option(None, "--ref-num-heads", min=1, max=1024),
    block_queries: Optional[int] = BLOCK_QUERIES,
):
    """Several metrics for every checkpoint, one table; metrics under the same mask share one hooked pass."""
    _check_table_out(out)
    from .api import run

    from .errors import MaeprobeError

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if not names:
        raise MaeprobeError("--metrics: no metric named; choose from attn-distance, attn-entropy, decoder-attn-sim, "
                            "decoder-semantics, spectrum")
    table = run([str(c) for c in ckpts], images, metrics=names, reference=ref, mask_ratio=mask_ratio,
                mask_ratios=_parse_mask_ratios(mask_ratios), seed=seed, bootstrap=bootstrap, resample_by=resample_by.value, per_head=per_head,
                include_cls_key=cls_key, tau=_parse_tau(tau), ref_features=ref_features,
                decoder_features=decoder_features, batch_size=batch_size,
                device=device, dtype=dtype.value, progress=True, num_workers=num_workers, num_heads=num_heads,
                decoder_num_heads=decoder_num_heads, ref_num_heads=ref_num_heads, img_size=img_size,
                block_queries=block_queries)
    shown = table[table["metric"] != "feature_spectrum"]
    summary = shown.groupby(["checkpoint", "metric", "module", "mask_ratio", "layer"],
                            dropna=False)["value"].mean().unstack("layer")
    _echo(summary.to_string(float_format="%.3f"), block=True)
    _write(table, out)


@app.command("render-attn")
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
    from .api import render_attention
    from .io import check_output_file
    from .results import output_path

    out = output_path(out, "--out", kind="stem")  # '.', '/', a folder, a device: one line, before any work
    for suffix in (".png", ".pdf"):
        check_output_file(out.with_suffix(suffix))

    queries = _parse_layers(query, "--query") if query else None
    paths = render_attention(str(ckpt), image, out, layers=_parse_layers(layers), queries=queries,
                             mask_ratio=mask_ratio, seed=seed, encoder=encoder, device=device, num_heads=num_heads,
                             decoder_num_heads=decoder_num_heads, img_size=img_size)
    _echo("wrote " + ", ".join(str(p) for p in paths))


@app.command("figures")
@_friendly
def figures_cmd(
    results: list[Path] = typer.Argument(..., help="Result tables (.csv/.json/.parquet) written by maeprobe."),
    out: Path = typer.Option(Path("figures/out"), "--out", help="Output folder."),
    figure: Optional[str] = typer.Option(None, "--figure",
                                         help="Comma list of fig2, fig3, fig5, fig6, figA1, spectrum, entropy "
                                              "(default: every figure the tables have data for)."),
    label_by: str = typer.Option("checkpoint", "--label-by", help="Column that names the lines."),
    mix_mask_settings: bool = typer.Option(False, "--mix-mask-settings",
                                           help="Allow rows measured under different probe masks on one plot "
                                                "(each line is then labelled with its mask)."),
):
    """Regenerate the paper's figures from stored result tables only (no model is run)."""
    import pandas as pd

    from .errors import MaeprobeError
    from .io import check_output_folder
    from .plots import make_figures

    check_output_folder(out)
    from .results import output_path, read_tables

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


@app.command("reproduce")
@_friendly
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
                                             "CIFAR-10 or Imagenette exported to folders). Default: scikit-learn digits."),
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
    from .findings import list_findings, reproduce
    from .io import check_output_folder

    if list_only:
        for row in list_findings().itertuples():
            _echo(f"{row.finding:<20} {row.claim} ({row.paper})")
        return
    from .findings.runner import check_paths

    check_paths(out=out, data=data, eval_data=eval_data)  # names the file system can take, before anything runs
    check_output_folder(out)
    table = reproduce(ids or None, scale=scale, out=out, data=data, eval_data=eval_data, ref=ref, steps=steps,
                      seeds=seeds, probe_images=probe_images, device=device, echo=_echo)
    _echo(table[["finding", "verdict", "measured", "ci_low", "ci_high", "unit"]].to_string(
        index=False, float_format="%.3g", max_colwidth=48), block=True)


@app.command("pretrain")
@_friendly
def pretrain_cmd(
    out: Path = typer.Option(Path("outputs/pretrain/checkpoint.pth"), "--out", help="Checkpoint path (.pth)."),
    preset: str = typer.Option("mae_vit_tiny_patch8_64", "--preset", help="Architecture preset."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of training images (default: built-in photos)."),
    steps: int = typer.Option(300, "--steps", min=1, max=10_000_000),
    batch_size: int = typer.Option(32, "--batch-size", min=1, max=1 << 20),
    base_lr: float = typer.Option(1.5e-4, "--base-lr", min=0.0, max=10.0, help="lr = base_lr * batch_size / 256."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", min=0.0, max=10.0),
    warmup_steps: int = typer.Option(20, "--warmup-steps", min=0, max=10_000_000),
    mask_ratio: float = typer.Option(0.75, "--mask-ratio"),
    norm_pix_loss: bool = typer.Option(False, "--norm-pix-loss", help="Per-patch normalised pixel targets."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0.0, max=1e7,
                                                help="Stop (and save) after this long."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1),
    device: Optional[str] = typer.Option(None, "--device"),
):
    """Minimal single-process MAE pretraining; saves an official-format checkpoint."""
    from . import validate
    from .io import check_output_file
    from .train import PretrainConfig, pretrain

    check_output_file(out, (".pth",))
    validate.mask_ratio(mask_ratio, None, "--mask-ratio")
    validate.device(device)

    config = PretrainConfig(preset=preset, images=str(images) if images else None, out=str(out), steps=steps,
                            batch_size=batch_size, base_lr=base_lr, weight_decay=weight_decay,
                            warmup_steps=warmup_steps, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
                            max_minutes=max_minutes, seed=seed, device=device)
    path = pretrain(config)
    _echo(f"wrote {path} (log.csv and config.yaml beside it)")


@app.command()
@_friendly
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
    from .demo import run_demo
    from .io import check_output_folder

    check_output_folder(out)
    paths = run_demo(out, max_minutes=max_minutes, steps=steps,
                     echo=functools.partial(_echo, block=True))  # its tables; its own lines name no user input
    _echo()
    _echo("results:")
    for key, path in paths.items():
        _echo(f"  {key:>24}: {path}")


recipe_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Bundled pretraining and evaluation recipes (recipes/*.yaml).")
app.add_typer(recipe_app, name="recipe")


def _recipe_dir() -> Path:
    here = Path(__file__).resolve().parent.parent / "recipes"
    return here if here.is_dir() else Path("recipes")


def _recipe_path(recipe: Path) -> Path:
    """A recipe file, or a bundled recipe by the name ``recipe ls`` prints (``lcmae_c`` or ``lcmae_c.yaml``)."""
    if recipe.exists() or len(recipe.parts) != 1:
        return recipe
    bundled = _recipe_dir() / (recipe.name if recipe.suffix in (".yaml", ".yml") else f"{recipe.name}.yaml")
    return bundled if bundled.is_file() and not bundled.name.startswith("_") else recipe


@recipe_app.command("ls")
@_friendly
def recipe_ls(folder: Optional[Path] = typer.Argument(None, help="Recipe folder (default: the bundled recipes/).")):
    """List recipes with their task, method and launch command."""
    from .train.config import launch_command, load_recipe

    from .errors import MaeprobeError

    folder = folder or _recipe_dir()
    for path in sorted(folder.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        try:
            config = load_recipe(path)
        except MaeprobeError as exc:  # one bad file does not hide the others
            _echo(f"{path.stem:<28} (not listed: {_one_line(exc)})")
            continue
        what = config["task"] if config["task"] != "pretrain" else f"pretrain/{config['method']}"
        _echo(f"{path.stem:<28} {what:<16} {launch_command(path)}")


@recipe_app.command("show")
@_friendly
def recipe_show(
    recipe: Path = typer.Argument(..., help="Recipe YAML, or a bundled recipe's name as `recipe ls` prints it."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. optim.epochs=3"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, max=1 << 16, help="Processes to derive the batch split for "
                                                              "(default: $WORLD_SIZE, else 1)."),
):
    """Print the fully resolved recipe as YAML (what `recipe run` would run; nothing is started), with the
    derived per-process batch, gradient accumulation and lr as comments."""
    import os

    from .train.config import load_recipe, show_recipe

    from .errors import MaeprobeError

    config = load_recipe(_recipe_path(recipe), overrides or [])
    world = os.environ.get("WORLD_SIZE", "1")
    if nproc is None and (not world.strip().isdigit() or int(world) < 1):
        raise MaeprobeError(f"environment variable WORLD_SIZE={_one_line(world)[:40]!r}: expected a whole number "
                            ">= 1 (or pass --nproc N)")
    _echo(show_recipe(config, nproc or int(world)), nl=False, block=True)


@recipe_app.command("run")
@_friendly
def recipe_run(
    recipe: Path = typer.Argument(..., help="Recipe YAML, or a bundled recipe's name as `recipe ls` prints it."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. optim.epochs=3"),
):
    """Run a recipe in this process, or under `torchrun --nproc-per-node N` with DDP."""
    from .train.config import load_recipe

    config = load_recipe(_recipe_path(recipe), overrides or [])
    if config["task"] == "pretrain":
        from .train.engine import pretrain_recipe

        last = Path(config["run"]["output_dir"]) / config["run"]["checkpoint_name"]
        before = last.stat().st_mtime_ns if last.is_file() else None
        path = pretrain_recipe(config)
        if before is not None and path.is_file() and path.stat().st_mtime_ns == before:
            _echo(f"{path}: this run had already finished; nothing was trained or written")
        else:
            _echo(f"wrote {path} (config, log.csv beside it)")
    else:
        from .train.evaluate import evaluate_recipe

        result = evaluate_recipe(config)
        _echo(f"{config['name']}: {result['task']} top-1 {result['top1']:.2f}% "
                   f"({config['run']['output_dir']}/results.json)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
