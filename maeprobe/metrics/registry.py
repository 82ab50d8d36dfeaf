"""One declaration per metric: each metric file ends with ``register(MetricSpec(...))``.

The spec says everything the rest of maeprobe needs to offer the metric, so that nothing else names it: the
command name (also the ``run --metrics`` key), the table's ``metric`` column, the reducer, an options dataclass
whose fields carry their help text and command-line flag, the default probe mask, whether it needs a decoder or a
reference model, the console summary and the figures drawn from its rows. ``maeprobe.api`` builds one function
per metric and ``run`` from it, ``maeprobe.cli`` one command per metric and ``run``'s flags, and
``maeprobe.plots.figures`` its figures (timm's ``@register_model`` idea: the declaration sits beside the code).

Adding a metric is one file in ``maeprobe/metrics/`` (a reducer, its options, ``register(...)``) plus its test
file and a README row: ``discover()`` imports every module of this package.

Declarations load without torch (metric files import it lazily), so the CLI reads them in a tenth of a second.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import MaeprobeError


def option(default: Any, help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
           low: float | None = None, high: float | None = None, cli_default: str | None = None,
           parse: Callable[[str], Any] | None = None, check: Callable[[str, Any], Any] | None = None):
    """A field of a metric's options dataclass.

    Args:
        default: the API's default.
        help: one sentence for ``--help`` and the API's docstring.
        flag: the command-line flag (default ``--`` + the name with dashes).
        choices: allowed text values (the CLI offers exactly these).
        low, high: bounds the CLI enforces for numbers.
        cli_default, parse: for options typed as text on the command line (``--tau none``): the flag's default text
            and the function turning it into the API's value.
        check: ``check(name, value) -> value`` run by the API before any model is loaded (one-line errors).
    """
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "low": low,
                                            "high": high, "cli_default": cli_default, "parse": parse,
                                            "check": check})


@dataclass(frozen=True)
class FigureSpec:
    """A figure drawn from one metric's rows (``maeprobe figures``; ``plots.figures`` draws it by ``kind``).

    Attributes:
        name: the figure's name (``--figure NAME``, the file stem).
        title: its title.
        kind: ``'layers'`` (one line per checkpoint over layers), ``'heads'`` (heads as dots, their mean per layer),
            ``'spectrum'`` or ``'heatmap'`` (one panel per (checkpoint, reference) pair: ``layer`` rows against
            ``ref_layer`` columns, e.g. CKA).
        ylabel: the y axis label (``'heads'``: built from ``quantity`` and the units).
        quantity, units: ``'heads'`` figures: what is plotted and in which units (None: the rows' ``units`` column).
        module: only rows of this module (None: all).
        settings: columns whose values must agree on one axis, with the value that a table lacking the column
            implies (rows of different units or conventions are refused).
        default: drawn when no figure is named.
        uniform: ``'layers'`` figures: the y value of uniform attention, drawn as a dotted line (None: none).
        level_column: ``'layers'`` figures: a column of the rows whose values are drawn as dashed lines, one per
            distinct value, labelled with the column's name (e.g. k-NN's ``chance_level``; None: none).
        variant: ``'heads'`` figures: (flag column, label of rows where it is true, where false, text added to the
            quantity when every row has it): lines of both kinds on one plot say which they are.
        label_by: the column that names the lines when the user keeps the default (``checkpoint``).
        note: a sentence added to the caption.
        names_in_title: the checkpoints' names form the subtitle.
    """

    name: str
    title: str
    kind: str
    ylabel: str | None = None
    quantity: str | None = None
    units: str | None = None
    module: str | None = None
    settings: dict = field(default_factory=dict)
    default: bool = False
    uniform: float | None = None
    level_column: str | None = None
    variant: tuple[str, str, str, str] | None = None
    label_by: str | None = None
    note: str = ""
    names_in_title: bool = False


@dataclass(frozen=True)
class MetricSpec:
    """Everything maeprobe needs to offer a metric.

    Attributes:
        name: command name and ``run --metrics`` key (e.g. ``'attn-distance'``).
        function: the API function's name (``maeprobe.attention_distance``).
        column: the value of the tables' ``metric`` column.
        reducer: the streaming reducer class; built as ``reducer(model, [reference,] layers=..., bootstrap=...,
            bootstrap_seed=..., **options)``.
        options: the options dataclass (fields made with ``option``); its field names are the reducer's keywords.
        summary: one line for ``--help`` and the README.
        doc: the API function's docstring (what is measured, with the paper's section or equation).
        mask_ratio: default probe mask ratio (``run`` keeps it per metric).
        per_image_mask: whether a different mask per image is allowed (the decoder metrics compare images under
            one shared mask).
        needs_decoder: the metric reads the decoder (``run`` refuses encoder-only checkpoints at once).
        needs_reference: the metric compares with a reference model (``--ref``).
        reference_optional: with ``needs_reference``, the reference may be left out (``reference=None``, no
            ``--ref``): the reducer then gets ``None`` and compares the model with itself (e.g. CKA, A = B).
        block_queries: the metric reads attention in query blocks (``--block-queries`` applies).
        layers_help: the ``--layers`` help of its command.
        report: ``report(table) -> list[str]``: the console summary (a header line, a table), also for notebooks
            (``maeprobe.api.report``).
        warn: ``warn(table) -> str | None``: a warning the API raises after measuring (``warnings.warn``).
        figures: the figures drawn from its rows.
        detail_rows: values of the table's ``metric`` column whose rows carry a further axis (frequency, component,
            reference layer): ``run``'s per-layer summary leaves them out (a mean over that axis means nothing) and,
            when they are all a metric has (its column among them, no ``summary_rows``), prints the metric's own
            ``report`` for them.
        summary_rows: values of the ``metric`` column, other than ``column``, of its per-layer rows (the spectrum's
            ``effective_rank``), which ``run``'s summary shows.
    """

    name: str
    function: str
    column: str
    reducer: Callable
    options: type
    summary: str
    doc: str
    mask_ratio: float = 0.0
    per_image_mask: bool = True
    needs_decoder: bool = False
    needs_reference: bool = False
    reference_optional: bool = False
    block_queries: bool = True
    layers_help: str = "0-based layers, e.g. 0,5,11 or 0-3 (default all)."
    report: Callable | None = None
    warn: Callable | None = None
    figures: tuple[FigureSpec, ...] = ()
    detail_rows: tuple[str, ...] = ()
    summary_rows: tuple[str, ...] = ()

    def fields(self) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(self.options)

    def module_of(self, options: dict) -> str:
        """The part of the model the metric reads with these options (``'encoder'`` or ``'decoder'``)."""
        return "decoder" if self.needs_decoder else str(options.get("module", "encoder"))


_METRICS: dict[str, MetricSpec] = {}


def register(spec: MetricSpec) -> MetricSpec:
    """Add a metric (its name, API function and column unique); returns the spec."""
    for other in _METRICS.values():
        if other.name != spec.name and (other.function == spec.function or other.column == spec.column):
            raise MaeprobeError(f"metric {spec.name}: its function or column is {other.name}'s")
    _METRICS[spec.name] = spec
    return spec


def discover() -> dict[str, MetricSpec]:
    """Every registered metric, by name, in the order of their files: importing each module of
    ``maeprobe.metrics`` registers the metrics it declares."""
    package = importlib.import_module("maeprobe.metrics")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_") and info.name not in ("base", "registry"):
            importlib.import_module(f"maeprobe.metrics.{info.name}")
    return dict(_METRICS)


_DISCOVERED: list[bool] = []


def metrics() -> dict[str, MetricSpec]:
    """The registered metrics by name (``discover`` runs once)."""
    if not _DISCOVERED:
        discover()
        _DISCOVERED.append(True)
    return dict(_METRICS)


def spec(name) -> MetricSpec:
    """The metric called ``name``, or one line naming the metrics there are."""
    from ..validate import short

    known = metrics()
    if not isinstance(name, str) or name not in known:
        raise MaeprobeError(f"unknown metric {short(name, 60)}; choose from {', '.join(known)}")
    return known[name]


def figures() -> dict[str, tuple[MetricSpec, FigureSpec]]:
    """Every figure of every metric by name."""
    return {figure.name: (metric, figure) for metric in metrics().values() for figure in metric.figures}


def check_flag(name: str, value) -> bool:
    """A true/false option: ``True`` or ``False`` (numpy's too), never text such as ``"no"``, which is truthy."""
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    if not (isinstance(value, bool) or numpy_bool):
        from ..validate import short

        raise MaeprobeError(f"{name}: expected True or False, got {short(value, 60)}")
    return bool(value)


# ----------------------------------------------------------------------------- console summaries shared by metrics
def images_text(table) -> str:
    """'N images' and, when the intervals rest on fewer independent units, how many ('12 images, 4 independent
    units')."""
    pd = importlib.import_module("pandas")
    n = int(table["n_images"].iloc[0])
    units = table["n_units"].iloc[0] if "n_units" in table else None
    if units is None or pd.isna(units) or int(units) == n:
        return f"{n} images"
    return f"{n} images, {int(units)} independent units"


def checkpoint_name(table) -> str:
    """The checkpoint of a one-checkpoint table, as one escaped line."""
    from ..validate import one_line

    return one_line(table["checkpoint"].iloc[0], 300)


def per_layer(table, title: str) -> list[str]:
    """``title`` and the per-layer means of value and interval (rows without a head, else every row)."""
    rows = table[table["head"].isna()] if table["head"].isna().any() else table
    summary = rows.groupby("layer")[["value", "ci_low", "ci_high"]].mean().reset_index()
    return [title, summary.to_string(index=False, float_format="%.4f")]


def heads_by_layer(table, title: str, digits: int, with_interval: bool) -> list[str]:
    """``title`` and, per layer, the mean, min and max over heads (and the mean interval bounds)."""
    from ..results import layer_summary

    summary = layer_summary(table)
    if with_interval and table["ci_low"].notna().any():
        ci = table.groupby("layer")[["ci_low", "ci_high"]].mean().reset_index()
        summary = summary.merge(ci, on="layer")
    shown = summary.drop(columns=["metric", "module"]).rename(
        columns={"mean": "mean(heads)", "min": "min head", "max": "max head", "ci_low": "mean ci_low",
                 "ci_high": "mean ci_high"})
    return [title, shown.to_string(index=False, float_format=f"%.{digits}f")]
