"""``maeprobe demo``: pretrain a small MAE on the built-in photos, measure the trained and the untrained model
(attention distance and entropy, Eq. 7, Eq. 8, the feature spectrum), write the tables, the paper's figures,
attention renders of both models and a summary that says what to look for.

The demo teaches (issue 30). For each metric the printed summary (also written to ``summary.txt``) shows, per layer,
the untrained model (the same seed's initial weights: exactly what training started from) and the trained model
with 95% intervals (bootstrap over the built-in photographs' independent units, the API's ``bootstrap=``), the
metric's uniform-attention or chance level, one sentence on what the comparison shows at this scale (computed from
the intervals) and one on what the paper shows at full scale, citing its section and figure:

* mean attention distance (LC-MAE, arXiv 2310.01994, Section 4.2, Fig. 5 and 6);
* mean attention entropy (in neither paper; uniform attention gives ln N);
* S_attn, Eq. 7 (LC-MAE Section 4.1, Fig. 2), S_sim, Eq. 8 (Section 4.1, Fig. 3);
* effective rank of the encoder's features (U-MAE, "How Mask Matters", NeurIPS 2022: dimensional collapse).

``figures/demo_overview.png`` draws the same comparison in one figure. ``results.csv`` is the table of the first
four metrics exactly as before (``scripts/same_outputs.py`` compares it byte for byte across commits); the attention
entropy rows go to ``results-extra.csv``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .api import load_reference, render_attention, run
from .checkpoints import load, save_checkpoint
from .data import builtin_images
from .errors import MaeprobeError
from .io import check_outputs, record_outputs, write_text
from .metrics.attention_entropy import SPEC as ENTROPY
from .results import write_table
from .train import PretrainConfig, pretrain

BOOTSTRAP = 200  # replicates of every interval of the demo


def run_demo(out_dir: str | Path = "outputs/demo", *, max_minutes: float | None = None, steps: int = 300,
             seed: int = 0, progress: bool = True, echo=print) -> dict[str, Path]:
    """Pretrain a fixed number of steps (deterministic: the same numbers on every run on the same machine),
    measure the trained model and the same seed's initial weights, plot, render both, summarise. ``max_minutes``
    caps the training time; when it cuts training short, the demo says so. Returns the paths written."""
    from .checkpoints import read_pickle
    from .plots import make_figures
    from .train.engine import initial_objective

    out_dir = Path(out_dir)
    check_demo_outputs(out_dir)  # before training: a file in the way that maeprobe did not write is refused
    config = PretrainConfig(out=str(out_dir / "mae_tiny_trained.pth"), steps=steps, max_minutes=max_minutes,
                            seed=seed, base_lr=1.5e-3, batch_size=32, warmup_steps=30)
    echo(f"[1/4] pretraining {config.preset} on the built-in photographs for {steps} steps "
         f"(about 1 minute on 2 idle CPU cores at the default 300"
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
        ref_label, dino = "DINO ViT-B/16 (local copy)", True
    except MaeprobeError:
        reference = load(trained_path)
        ref_label, dino = ("the trained model's own encoder (no local DINO copy; set MAEPROBE_DINO to use DINO)",
                           False)
    echo(f"[2/4] all metrics (attention distance, entropy and spectrum unmasked, decoder metrics under one shared "
         f"0.75 mask); Eq. 8 reference: {ref_label}")
    metrics = ["attn-distance", "decoder-attn-sim", "decoder-semantics", "spectrum"]
    table = run([untrained_path, trained_path], metrics=metrics, reference=reference, seed=seed, bootstrap=BOOTSTRAP,
                per_head=True, progress=progress)
    csv_path = write_table(table, out_dir / "results.csv")
    # attention entropy in a table of its own: results.csv keeps its bytes for the same steps and seed
    extra = run([untrained_path, trained_path], metrics=[ENTROPY.name], seed=seed, bootstrap=BOOTSTRAP,
                progress=progress)
    extra_path = write_table(extra, out_dir / "results-extra.csv")
    record_outputs([csv_path, extra_path])

    echo("[3/4] figures from the stored tables")
    figures = make_figures(table, out_dir / "figures")
    figures += make_figures(extra, out_dir / "figures", figures=["entropy"])
    photos = f"the {int(table['n_images'].iloc[0])} built-in photographs"
    scale = (f"a {config.preset} MAE trained {done} steps on {photos}" if done >= steps else
             f"a {config.preset} MAE trained only {done} of {steps} steps on {photos} (stopped by --max-minutes)")
    models = {"trained": load(trained_path), "untrained": load(untrained_path)}
    comparisons = compare(pd.concat([table, extra], ignore_index=True), dino_reference=dino,
                          num_patches=models["trained"].config.num_patches)
    figures += overview_figure(comparisons, out_dir / "figures" / "demo_overview", scale=scale)

    echo("[4/4] attention renders of both models (the same photograph, mask and queries)")
    name, image = builtin_images()[-1]  # matplotlib's grace_hopper.jpg
    renders = []
    for label, model in models.items():
        renders += render_attention(model, image, out_dir / "renders" / f"decoder_attention_{label}", seed=seed)
        renders += render_attention(model, image, out_dir / "renders" / f"encoder_attention_{label}", encoder=True)

    text = summary_text(comparisons, scale=scale, reference=ref_label)
    summary_path = write_text(out_dir / "summary.txt", text + "\n")
    record_outputs([summary_path])
    echo("")
    echo(text)
    return {"trained": trained_path, "untrained": untrained_path, "table": csv_path, "entropy table": extra_path,
            "summary": summary_path, "figures": out_dir / "figures", "renders": out_dir / "renders",
            "training log": Path(config.out).parent / "log.csv",
            **{p.stem: p for p in figures if p.suffix == ".png"}, **{p.stem: p for p in renders if p.suffix == ".png"}}


DEMO_TABLES = ("results.csv", "results-extra.csv", "summary.txt")
DEMO_FIGURES = ("fig2", "fig3", "fig5", "entropy", "spectrum", "demo_overview")
DEMO_RENDERS = tuple(f"{part}_attention_{model}" for part in ("decoder", "encoder")
                     for model in ("trained", "untrained"))


def demo_outputs(out_dir: str | Path) -> list[Path]:
    """The files the demo writes besides its training run (whose files the run folder's own check guards)."""
    out_dir = Path(out_dir)
    return [*(out_dir / name for name in DEMO_TABLES), out_dir / "mae_tiny_untrained.pth",
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


# ----------------------------------------------------------------------------- what the demo shows, per metric
FULL_SCALE = {  # what the papers show at full scale (ViT-B/16 on ImageNet-1K), with section and figure
    "attention_distance": "LC-MAE Section 4.2, Fig. 5: MAE's attention distance is significantly smaller than "
                          "DINO's and supervised DeiT's (MAE attends locally); Fig. 6: it grows with the "
                          "pretraining mask ratio, most in the deep layers.",
    "attention_entropy": "neither LC-MAE nor U-MAE reports attention entropy; maeprobe adds it as the companion of "
                         "the distance (how spread out a query's attention is, not how far it reaches).",
    "decoder_attention_similarity": "LC-MAE Section 4.1, Fig. 2: S_attn is highest at decoder layer 1 (up to 0.9) "
                                    "and lowest at layer 3; layers 1-2 lie well above the rest (the shallow decoder "
                                    "layers use position, not content).",
    "decoder_semantic_similarity": "LC-MAE Section 4.1, Fig. 3 (reference DINO): S_sim is lower in the shallow and "
                                   "higher in the deep decoder layers (semantics are learned in deep layers).",
    "effective_rank": "U-MAE (How Mask Matters, NeurIPS 2022, abstract): MAE's features suffer dimensional collapse, "
                      "which U-MAE's uniformity loss reduces; a higher effective rank is a less collapsed feature.",
}


@dataclass
class Comparison:
    """One metric of the demo: the untrained and the trained model, per layer (or feature), with intervals.

    Attributes:
        metric: the tables' ``metric`` column.
        title: what is measured, for headers and panel titles.
        unit: ``'px'``, ``'nats'`` or ``''`` (unitless).
        where: the header of the first column (``'encoder layer'``, ``'feature'``).
        level: what the ``level`` column is (``'uniform attention'``, ``'chance'``, ``'upper bound'``).
        rows: one row per (``position``, ``model``) with ``value``, ``ci_low``, ``ci_high``, ``level``, ``label``
            (the checkpoint's name); ``model`` is ``'untrained'`` or ``'trained'``; positions are numbered from 1.
        interval: how the intervals were made.
        digits: decimals shown.
        note: a sentence about this measurement in the demo (e.g. Eq. 8's reference).
        units: what the intervals resample (``'12 independent source photographs'``).
        at_this_scale: filled by ``compare``: the sentence computed from the intervals.
    """

    metric: str
    title: str
    unit: str
    where: str
    level: str
    rows: pd.DataFrame
    interval: str
    digits: int
    note: str = ""
    units: str = ""
    at_this_scale: str = field(default="")

    @property
    def full_scale(self) -> str:
        return FULL_SCALE[self.metric]


def _models(table: pd.DataFrame) -> dict[str, str]:
    """Checkpoint label -> 'untrained' / 'trained': the demo measures the untrained model first."""
    labels = list(dict.fromkeys(table["checkpoint"].astype(str)))
    if len(labels) != 2:
        raise MaeprobeError(f"the demo's summary needs the two checkpoints' rows, got {len(labels)} checkpoint(s)")
    return {labels[0]: "untrained", labels[1]: "trained"}


def _units_text(rows: pd.DataFrame) -> str:
    if "n_units" in rows and rows["n_units"].notna().any():
        return f"{int(rows['n_units'].dropna().iloc[0])} independent source photographs"
    return f"{int(rows['n_images'].iloc[0])} images"


def _per_layer(rows: pd.DataFrame, models: dict[str, str], level) -> pd.DataFrame:
    """Per (checkpoint, layer): the mean over heads of value and interval bounds; ``level`` a column or a number."""
    rows = rows.assign(level=rows[level] if isinstance(level, str) else level)
    means = rows.groupby(["checkpoint", "layer"], sort=False)[["value", "ci_low", "ci_high", "level"]].mean()
    means = means.reset_index()
    return pd.DataFrame({"position": means["layer"].astype(int) + 1, "model": means["checkpoint"].map(models),
                         "label": means["checkpoint"].astype(str), "value": means["value"],
                         "ci_low": means["ci_low"], "ci_high": means["ci_high"], "level": means["level"]})


def chance_similarity(density: float, ref_density: float, num_patches: int | None = None) -> float:
    """Eq. 8's chance level: the expected cos(vec W, vec W_ref) of two unrelated binarised affinity matrices of
    these densities (fractions of entries equal to 1, the diagonal included: a token's cosine with itself is 1).

    Off the diagonal the entries are taken as independent draws, 1 with probability p' = (n^2 p - n) / (n^2 - n)
    (q' likewise): E[W . W_ref] = n + (n^2 - n) p' q', and |W| = n sqrt(p), |W_ref| = n sqrt(q) (eps^2 neglected),
    so the level is (n + (n^2 - n) p' q') / (n^2 sqrt(p q)); without ``num_patches`` (n -> infinity), sqrt(p q).
    Against an all-ones W (p = 1) it is sqrt(q), the saturation case of ``metrics/semantic_similarity.py``. From
    the mean densities over images, so approximate where the densities vary much between images.
    """
    p, q = float(density), float(ref_density)
    if not (math.isfinite(p) and math.isfinite(q)) or p <= 0 or q <= 0:
        return float("nan")
    if num_patches is None:
        return math.sqrt(p * q)
    n = int(num_patches)
    if n < 2:
        return float("nan")
    off_p, off_q = ((n * n * x - n) / (n * n - n) for x in (p, q))  # densities off the diagonal
    return (n + (n * n - n) * max(off_p, 0.0) * max(off_q, 0.0)) / (n * n * math.sqrt(p * q))


def compare(table: pd.DataFrame, *, num_patches: int | None = None, dino_reference: bool = False) -> list[Comparison]:
    """The demo's comparisons from its tables (results.csv and results-extra.csv together), each with its sentence
    at this scale. ``num_patches``: the probed grid's patches (Eq. 8's chance level). Metrics missing from
    ``table`` are left out."""
    models = _models(table)
    out = []
    heads = "per layer the mean over heads of the value and of the heads' interval bounds"
    for metric, title, unit, digits in (("attention_distance", "mean attention distance", "px", 2),
                                        ("attention_entropy", "mean attention entropy", "nats", 3)):
        rows = table[(table["metric"] == metric) & (table["module"] == "encoder") & table["head"].notna()]
        if len(rows):
            out.append(Comparison(metric, f"{title}, encoder", unit, "encoder layer", "uniform attention",
                                  _per_layer(rows, models, "uniform_level"),
                                  f"95% bootstrap CI over {_units_text(rows)}, {heads}", digits))
    rows = table[(table["metric"] == "decoder_attention_similarity") & table["head"].isna()]
    if len(rows):
        out.append(Comparison("decoder_attention_similarity", "S_attn (Eq. 7), decoder", "", "decoder layer",
                              "uniform attention", _per_layer(rows, models, 1.0),
                              f"95% bootstrap CI over {_units_text(rows)} (groups of whole photographs)", 3,
                              "Mask 0.75, one mask shared by all images."))
    rows = table[(table["metric"] == "decoder_semantic_similarity") & table["head"].isna()]
    if len(rows):
        binarised = rows["tau"].notna() if "tau" in rows else pd.Series(True, index=rows.index)
        chance = [chance_similarity(p, q, num_patches) if b else float("nan")
                  for p, q, b in zip(rows["w_density"].astype(float), rows["ref_w_density"].astype(float), binarised)]
        note = "Reference: DINO ViT-B/16." if dino_reference else (
            "Reference: the trained model's own encoder (no local DINO copy), so this is not the paper's quantity; "
            "see the README's DINO section for Eq. 8 as the paper measures it.")
        out.append(Comparison("decoder_semantic_similarity", "S_sim (Eq. 8), decoder", "", "decoder layer",
                              "chance", _per_layer(rows.assign(chance=chance), models, "chance"),
                              f"95% bootstrap CI over {_units_text(rows)}; chance: the expected cosine of unrelated "
                              "binary W of the same densities (chance_similarity)", 3, note))
    rows = table[table["metric"] == "effective_rank"]
    if len(rows):
        spectrum = table[table["metric"] == "feature_spectrum"]
        width = int(spectrum["component"].max()) + 1 if len(spectrum) else 0
        n = int(rows["n_images"].iloc[0])
        bound = min(n - 1, width) if width else n - 1
        kinds = {"cls": "CLS token", "patch_mean": "mean of patch tokens"}
        frame = pd.DataFrame({"position": rows["feature"].map(lambda k: kinds.get(k, str(k))),
                              "model": rows["checkpoint"].map(models), "label": rows["checkpoint"].astype(str),
                              "value": rows["value"], "ci_low": rows["ci_low"], "ci_high": rows["ci_high"],
                              "level": float(bound)})
        layer = int(rows["layer"].iloc[0]) + 1
        out.append(Comparison("effective_rank", f"effective rank, encoder layer {layer} output", "", "feature",
                              "upper bound", frame.reset_index(drop=True),
                              f"95% delete-a-group jackknife CI over {_units_text(rows)}; upper bound min(n - 1, "
                              f"width) = {bound} for n = {n} images (equal singular values)", 2))
    units = _units_text(table)
    for comparison in out:
        comparison.units = units
        comparison.at_this_scale = _sentence(comparison)
    return out


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}" if math.isfinite(value) else "n/a"


def _sentence(c: Comparison) -> str:
    """What the intervals show: where trained and untrained are apart, and how close each is to the level."""
    wide = c.rows.pivot(index="position", columns="model", values=["value", "ci_low", "ci_high", "level"])
    wide = wide.reindex(list(dict.fromkeys(c.rows["position"])))
    things = {"encoder layer": "layers", "decoder layer": "layers", "feature": "features"}[c.where]
    unit = f" {c.unit}" if c.unit else ""
    finite = wide[["ci_low", "ci_high"]].notna().all(axis=1)
    if not finite.any():
        return "No intervals (too few independent images): the comparison cannot be judged here."
    above = wide[finite & (wide[("ci_low", "trained")] > wide[("ci_high", "untrained")])].index.tolist()
    below = wide[finite & (wide[("ci_high", "trained")] < wide[("ci_low", "untrained")])].index.tolist()
    total = len(wide)
    if not above and not below:
        every = "both" if total == 2 else f"all {total}"
        text = (f"the trained model's 95% intervals overlap the untrained model's in {every} {things}: "
                "this measure does not tell them apart at this scale")
    else:
        parts = []
        for where, word in ((below, "below"), (above, "above")):
            if where:
                gaps = (wide.loc[where, ("value", "trained")] - wide.loc[where, ("value", "untrained")]).abs()
                by = _number(gaps.min(), c.digits)
                if len(where) > 1:
                    by += f"-{_number(gaps.max(), c.digits)}"
                count = ("both" if total == 2 else f"all {total}") if len(where) == total else \
                    f"{len(where)} of {total}"
                parts.append(f"{word} the untrained one in {count} {things} ({', '.join(map(str, where))}; by "
                             f"{by}{unit})")
        text = "the trained model lies, with separated 95% intervals, " + " and ".join(parts)
        if len(above) + len(below) < total:
            text += "; the intervals overlap elsewhere"
    if c.level == "uniform attention":
        closeness = []
        for model in ("untrained", "trained"):
            gap = ((wide[("value", model)] - wide[("level", model)]).abs() / wide[("level", model)].abs()).max()
            if math.isfinite(gap):
                closeness.append(f"the {model} model within {gap:.1%}")
        if closeness:
            text += f". Against uniform attention: {' and '.join(closeness)} of it in every {things[:-1]}"
    elif c.level == "chance":
        gaps, largest = [], 0.0
        for model in ("untrained", "trained"):
            gap = wide[("value", model)] - wide[("level", model)]
            if gap.notna().any():
                gaps.append(f"{model} {_signed(gap.min(), c.digits)} to {_signed(gap.max(), c.digits)}")
                largest = max(largest, float(gap.abs().max()))
        if gaps:
            text += f". S_sim minus its chance level: {', '.join(gaps)}"
            if largest < 0.05:
                text += " (near 0: here S_sim reflects how dense W is, not structure shared with the reference)"
    elif c.level == "upper bound":
        text += f". Both stay below the upper bound {wide[('level', 'trained')].iloc[0]:g}"
    return text[0].upper() + text[1:] + "."


SUMMARY_WIDTH = 116  # characters of a summary line (the per-layer tables excepted)


def _wrapped(text: str, indent: str = "  ", rest: str = "    ") -> list[str]:
    import textwrap

    return textwrap.wrap(text, SUMMARY_WIDTH, initial_indent=indent, subsequent_indent=rest,
                         break_on_hyphens=False) or [indent.rstrip()]


def summary_text(comparisons: list[Comparison], *, scale: str, reference: str = "") -> str:
    """The printed summary: per metric a header, the per-layer table with intervals and level, the sentence at this
    scale and the paper's at full scale (lines wrapped at ``SUMMARY_WIDTH``)."""
    lines = ["What to look for"]
    for text in (f"This run: {scale}. The untrained model is the same seed's initial weights (what training started "
                 "from).",
                 "The papers trained ViT-B/16 on ImageNet-1K for 100 epochs (LC-MAE Sections 4 and 5): small or no "
                 "differences are expected here; the intervals say which ones the data support.",
                 "Values: estimate [95% interval]; the level column is what uniform attention, chance or equal "
                 "singular values give.",
                 *([f"Eq. 8 reference: {reference}."] if reference else [])):
        lines += _wrapped(text)
    for c in comparisons:
        unit = f" ({c.unit})" if c.unit else " (unitless)"
        lines += ["", *_wrapped(f"{c.title}{unit}; {c.interval}", "", "  ")]
        if c.note:
            lines += _wrapped(c.note)
        names = {row.model: row.label for row in c.rows.itertuples()}
        header = [c.where, *(f"{model}: {names.get(model, '?')}" for model in ("untrained", "trained")), c.level]
        body = []
        for position, group in c.rows.groupby("position", sort=False):
            by = {row.model: row for row in group.itertuples()}
            cells = [str(position)]
            for model in ("untrained", "trained"):
                row = by.get(model)
                cells.append("n/a" if row is None else
                             f"{_number(row.value, c.digits)} [{_number(row.ci_low, c.digits)}, "
                             f"{_number(row.ci_high, c.digits)}]")
            levels = dict.fromkeys(_number(float(row.level), c.digits) for row in group.itertuples())
            cells.append(" / ".join(levels) if len(levels) > 1 else next(iter(levels)))
            body.append(cells)
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        for cells in [header, *body]:
            lines.append("  " + "   ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip())
        if c.level == "chance" and any(len(set(g["level"].round(c.digits))) > 1
                                       for _, g in c.rows.groupby("position")):
            lines.append("  (chance: untrained / trained; each model's W has its own density)")
        lines += _wrapped(f"At this scale: {c.at_this_scale}")
        lines += _wrapped(f"Full scale: {c.full_scale}")
    return "\n".join(lines)


def overview_figure(comparisons: list[Comparison], out: Path, *, scale: str) -> list[Path]:
    """``demo_overview`` (PNG and PDF): one panel per metric, untrained and trained with their 95% intervals over
    layers (bands; error bars for the effective rank's features), the uniform, chance or upper level dotted and
    labelled with its value, the checkpoints named in the shared legend, the sentences at this scale in the
    caption."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from .plots.figures import save_figure

    colours = {"untrained": "#7f7f7f", "trained": "#0072b2"}  # grey, blue (colour-blind safe)
    names: dict[str, str] = {}
    fig, axes = plt.subplots(2, 3, figsize=(9.0, 5.6))
    flat = list(axes.flat)
    for ax, c in zip(flat, comparisons):
        categorical = c.where == "feature"
        positions = list(dict.fromkeys(c.rows["position"]))
        for offset, model in ((-0.08, "untrained"), (0.08, "trained")):
            part = c.rows[c.rows["model"] == model].set_index("position").reindex(positions)
            if part["label"].notna().any():
                names.setdefault(model, str(part["label"].dropna().iloc[0]))
            x = [i + offset for i in range(len(positions))] if categorical else list(positions)
            low, high = part["ci_low"].astype(float), part["ci_high"].astype(float)
            if categorical:
                err = [(part["value"] - low).clip(lower=0), (high - part["value"]).clip(lower=0)]
                ax.errorbar(x, part["value"], yerr=err, fmt="o", ms=4, capsize=3, color=colours[model])
            else:
                ax.plot(x, part["value"], marker="o", ms=3, lw=1.4, color=colours[model])
                ax.fill_between(x, low, high, color=colours[model], alpha=0.2, lw=0)
            if c.level == "chance":  # each model's own chance level, in its colour
                ax.plot(x, part["level"].astype(float), color=colours[model], lw=0.9, ls=":")
        if c.level != "chance":
            level = float(c.rows["level"].iloc[0])
            ax.axhline(level, color="0.25", lw=0.9, ls=":")
            shown = _number(level, c.digits).rstrip("0").rstrip(".")
            subtitle = f"dotted: {c.level} = {shown}{' ' + c.unit if c.unit else ''}"
        else:
            subtitle = "dotted: each model's chance level"
        if categorical:
            ax.set_xticks(range(len(positions)), positions)
            ax.set_xlim(-0.6, len(positions) - 0.4)
            ax.set_xlabel(c.where, fontsize=7)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel(f"{c.where} (1 = first)", fontsize=7)
        ax.set_ylabel(f"{c.title.split(',')[0]} ({c.unit or 'unitless'})", fontsize=7)
        ax.set_title(f"{c.title}\n{subtitle}", fontsize=7)
        ax.tick_params(labelsize=6.5)
        ax.margins(y=0.12)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    for ax in flat[len(comparisons):]:
        ax.set_axis_off()
    key = flat[-1] if len(comparisons) < len(flat) else None
    if key is not None:  # the free panel: the shared legend (names the checkpoints) and how to read the panels
        handles = [Line2D([], [], color=colours[m], marker="o", ms=3, lw=1.4,
                          label=f"{m}: {names.get(m, '?')}" + ("\n(the same seed's initial weights)"
                                                                if m == "untrained" else ""))
                   for m in ("untrained", "trained")]
        handles += [Patch(color="0.6", alpha=0.35, lw=0, label="95% interval (band, or error bar)"),
                    Line2D([], [], color="0.25", ls=":", label="uniform attention or upper bound (panel title)"),
                    Line2D([], [], color=colours["trained"], ls=":", label="S_sim: chance level of each model's W")]
        key.legend(handles=handles, loc="upper left", fontsize=6, frameon=False, borderaxespad=0)
        units = comparisons[0].units if comparisons else "the images"
        guide = ("Where the two models' intervals overlap, the demo does not tell them apart. Lines: per-layer values "
                 f"(mean over heads where a metric has heads). Intervals: over {units}. Each y axis is zoomed to "
                 "its data (Fig. 5 and the entropy figure start at 0): judge by the intervals, not by the gap between "
                 "lines. The caption says what the intervals show at this scale; summary.txt adds what the papers "
                 "show at full scale.")
        key.text(0.0, 0.5, "\n".join(textwrap.wrap(guide, 52)), va="top", ha="left", fontsize=6,
                 transform=key.transAxes, color="0.2")
    fig.suptitle(f"maeprobe demo: untrained vs trained, {scale}", fontsize=8.5)
    caption = [f"{c.title}: {c.at_this_scale}" for c in comparisons]
    wrapped = [line for text in caption for line in textwrap.wrap(text, 190)]
    extra = (len(wrapped) * 5.5 * 1.3 + 8) / 72
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + extra)
    fig.text(0.01, 4 / 72 / (height + extra), "\n".join(wrapped), fontsize=5.5, va="bottom", ha="left",
             color="0.25", linespacing=1.25)
    fig.tight_layout(rect=(0, extra / (height + extra), 1, 1))
    try:
        return save_figure(fig, [Path(out).with_suffix(".png"), Path(out).with_suffix(".pdf")], dpi=200)
    finally:
        plt.close(fig)
