"""One command per registered metric (``maeprobe attn-distance``, ...) and ``maeprobe run``, built from the metric
registry (``maeprobe/metrics/registry.py``): each metric option becomes a flag of its command and of ``run``, with
the help text its options dataclass declares. The commands parse, call the API, print its summary."""
from __future__ import annotations

import inspect
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..metrics import registry
from . import common as c
from .common import DType, ResampleBy, _echo, _friendly, _parse_layers, _write

P = inspect.Parameter
REF_NUM_HEADS = typer.Option(None, "--ref-num-heads", min=1, max=1024, help="Reference heads, if unknown.")


def _flag(field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _choices(field) -> type[Enum]:
    """A str Enum of the option's choices (click then lists and checks them)."""
    return Enum(f"{field.name.title().replace('_', '')}Choice", {c: c for c in field.metadata["choices"]}, type=str)


def option_parameters(fields) -> list[inspect.Parameter]:
    """The typer parameters of metric options: ``--flag`` with the declared help, choices, bounds and default."""
    params = []
    for field in fields:
        meta, default = field.metadata, field.default
        if meta.get("parse"):  # typed as text, e.g. --tau none
            annotation, value = str, meta["cli_default"]
        elif meta.get("choices"):
            annotation = _choices(field)
            annotation, value = (Optional[annotation] if default is None else annotation), default
        elif isinstance(default, bool):
            annotation, value = bool, default
        else:
            kind = int if field.type in ("int", int) else float
            annotation, value = (Optional[kind] if default is None else kind), default
        bounds = {k: meta[k] for k, name in (("low", "min"), ("high", "max")) if meta.get(k) is not None}
        info = typer.Option(value, _flag(field), help=meta["help"],
                            **{"min": bounds.get("low"), "max": bounds.get("high")} if bounds else {})
        params.append(P(field.name, P.KEYWORD_ONLY, default=info, annotation=annotation))
    return params


def option_values(spec_fields, values: dict) -> dict:
    """The API's values of options as parsed by click (choices as text, typed text through its parser)."""
    out = {}
    for field in spec_fields:
        value = values[field.name]
        if field.metadata.get("parse"):
            value = field.metadata["parse"](value)
        elif isinstance(value, Enum):
            value = value.value
        out[field.name] = value
    return out


def _settings() -> list[inspect.Parameter]:
    """The probe settings every metric command and ``run`` take (bootstrap, batch, device, model sizes)."""
    return [P(name, P.KEYWORD_ONLY, default=default, annotation=annotation) for name, default, annotation in (
        ("bootstrap", c.BOOTSTRAP, int), ("resample_by", c.RESAMPLE, ResampleBy), ("batch_size", c.BATCH, int),
        ("device", c.DEVICE, Optional[str]), ("dtype", c.DTYPE, DType), ("num_workers", c.NUM_WORKERS, Optional[int]),
        ("num_heads", c.NUM_HEADS, Optional[int]), ("decoder_num_heads", c.DEC_HEADS, Optional[int]),
        ("img_size", c.IMG_SIZE, Optional[int]))]


def _common(spec) -> list[inspect.Parameter]:
    """ckpt, images, out, and the probe settings every metric command takes."""
    params = [P("ckpt", P.POSITIONAL_OR_KEYWORD, default=c.CKPT, annotation=Path)]
    if spec.needs_reference and spec.reference_optional:  # left out: the model is compared with itself
        params.append(P("ref", P.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
            None, "--ref", help="Reference checkpoint, or 'dino' (default: the model itself, in one pass).")))
    elif spec.needs_reference:
        params.append(P("ref", P.KEYWORD_ONLY, annotation=str, default=typer.Option(
            ..., "--ref", help="Reference checkpoint, or 'dino' (local copy; see MAEPROBE_DINO).")))
    params += [P("images", P.KEYWORD_ONLY, default=c.IMAGES, annotation=Optional[Path]),
               P("out", P.KEYWORD_ONLY, default=c.OUT_TABLE, annotation=Optional[Path]),
               P("mask_ratio", P.KEYWORD_ONLY, annotation=float, default=typer.Option(
                   spec.mask_ratio, "--mask-ratio", help="Fraction of patches masked (visible ones keep their "
                                                         "positions)." if spec.per_image_mask else
                   "Shared mask ratio.")),
               P("seed", P.KEYWORD_ONLY, default=c.SEED, annotation=int)]
    if spec.per_image_mask:
        params.append(P("per_image_mask", P.KEYWORD_ONLY, annotation=bool, default=typer.Option(
            False, "--per-image-mask", help="A different seeded mask per image.")))
    params.append(P("layers", P.KEYWORD_ONLY, annotation=Optional[str],
                    default=typer.Option(None, "--layers", help=spec.layers_help)))
    params += option_parameters(spec.fields())
    params += _settings()
    if spec.block_queries:
        params.append(P("block_queries", P.KEYWORD_ONLY, default=c.BLOCK_QUERIES, annotation=Optional[int]))
    if spec.needs_reference:
        params.append(P("ref_num_heads", P.KEYWORD_ONLY, default=REF_NUM_HEADS, annotation=Optional[int]))
    return params


def metric_command(spec):
    """The command of one registered metric: load, measure (``maeprobe.api.measure``), print its summary, write."""
    signature = inspect.Signature(_common(spec))

    def command(**values):
        c._check_table_out(values["out"])
        from ..api import measure, report
        from ..checkpoints import load

        model = load(values["ckpt"], num_heads=values["num_heads"], decoder_num_heads=values["decoder_num_heads"],
                     img_size=values["img_size"])
        extra = {"reference": values["ref"], "ref_num_heads": values["ref_num_heads"]} if spec.needs_reference else {}
        if spec.per_image_mask:
            extra["shared_mask"] = not values["per_image_mask"]
        if spec.block_queries:
            extra["block_queries"] = values["block_queries"]
        table = measure(model, spec.name, values["images"], layers=_parse_layers(values["layers"]),
                        mask_ratio=values["mask_ratio"], seed=values["seed"], bootstrap=values["bootstrap"],
                        resample_by=values["resample_by"].value, batch_size=values["batch_size"],
                        device=values["device"], dtype=values["dtype"].value, progress=True,
                        num_workers=values["num_workers"], **extra, **option_values(spec.fields(), values))
        _echo(report(table), block=True)  # its names escaped by the metric's summary
        _write(table, values["out"])

    command.__name__ = spec.function
    command.__doc__ = spec.summary
    command.__signature__ = signature
    command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return _friendly(command)


def _run_fields() -> list:
    """Every metric option once (options of one name are one flag that reaches every metric that has it)."""
    fields = {}
    for spec in registry.metrics().values():
        for field in spec.fields():
            fields.setdefault(field.name, field)
    return list(fields.values())


def run_command():
    """``maeprobe run``: several metrics for several checkpoints, every metric option as a flag."""
    names = ", ".join(registry.metrics())
    params = [
        P("ckpts", P.POSITIONAL_OR_KEYWORD, annotation=list[Path],
          default=typer.Argument(..., help="One or more checkpoints.")),
        P("metrics", P.KEYWORD_ONLY, annotation=str,
          default=typer.Option("attn-distance", "--metrics", help=f"Comma list of {names}.")),
        P("ref", P.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
            None, "--ref", help="Reference for the metrics that compare with one (checkpoint or 'dino').")),
        P("images", P.KEYWORD_ONLY, default=c.IMAGES, annotation=Optional[Path]),
        P("out", P.KEYWORD_ONLY, default=c.OUT_TABLE, annotation=Optional[Path]),
        P("mask_ratio", P.KEYWORD_ONLY, annotation=Optional[float], default=typer.Option(
            None, "--mask-ratio", help="One shared mask ratio for every metric (default: each metric's own: " +
            ", ".join(f"{s.mask_ratio:g} for {n}" for n, s in registry.metrics().items()) + ").")),
        P("mask_ratios", P.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
            None, "--mask-ratios", help="Per-metric ratios, e.g. attn-distance=0.75,spectrum=0.")),
        P("seed", P.KEYWORD_ONLY, default=c.SEED, annotation=int),
        P("layers", P.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
            None, "--layers", help="0-based encoder layers of the encoder metrics (default: each metric's).")),
        P("decoder_layers", P.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
            None, "--decoder-layers", help="0-based decoder layers of the decoder metrics (default all).")),
        *option_parameters(_run_fields()),
        *_settings(),
        P("ref_num_heads", P.KEYWORD_ONLY, default=REF_NUM_HEADS, annotation=Optional[int]),
        P("block_queries", P.KEYWORD_ONLY, default=c.BLOCK_QUERIES, annotation=Optional[int]),
    ]
    signature = inspect.Signature(params)

    def run_cmd(**values):
        """Several metrics for every checkpoint, one table; metrics under the same mask share one hooked pass."""
        c._check_table_out(values["out"])
        from ..api import run, run_summary
        from ..errors import MaeprobeError

        names = [m.strip() for m in values["metrics"].split(",") if m.strip()]
        if not names:
            raise MaeprobeError(f"--metrics: no metric named; choose from {', '.join(registry.metrics())}")
        table = run([str(c) for c in values["ckpts"]], values["images"], metrics=names, reference=values["ref"],
                    mask_ratio=values["mask_ratio"], mask_ratios=c._parse_mask_ratios(values["mask_ratios"]),
                    seed=values["seed"], bootstrap=values["bootstrap"], resample_by=values["resample_by"].value,
                    layers=_parse_layers(values["layers"]),
                    decoder_layers=_parse_layers(values["decoder_layers"], "--decoder-layers"),
                    batch_size=values["batch_size"], device=values["device"], dtype=values["dtype"].value,
                    progress=True, num_workers=values["num_workers"], num_heads=values["num_heads"],
                    decoder_num_heads=values["decoder_num_heads"], ref_num_heads=values["ref_num_heads"],
                    img_size=values["img_size"], block_queries=values["block_queries"],
                    **option_values(_run_fields(), values))
        _echo(run_summary(table), block=True)
        _write(table, values["out"])

    run_cmd.__signature__ = signature
    run_cmd.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return _friendly(run_cmd)


def register_commands(app: typer.Typer) -> None:
    for spec in registry.metrics().values():
        app.command(spec.name, help=spec.summary, short_help=spec.summary)(metric_command(spec))
    app.command("run", short_help="Several metrics for several checkpoints in one table.")(run_command())
