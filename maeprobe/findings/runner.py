"""``maeprobe reproduce``: train what the findings need through the recipe engine, measure, apply each verdict
rule, write ``findings.csv``, ``findings.md`` and the figures.

Finished runs are reused (a run's folder is named by its step count), interrupted ones resume where they
stopped (the engine's exact resume), and a finding whose evidence is stored for the same settings is not
measured again. Under torch.distributed every process trains and measures; rank 0 prints and writes.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..distributed import is_main
from ..errors import MaeprobeError
from ..io import write_text
from . import rules
from .suite import AE_BLOCKS, BASE_RECIPES, FINDINGS, RUNS, SCALES, Scale

COLUMNS = ["finding", "claim", "paper", "measured", "ci_low", "ci_high", "verdict", "scale", "detail", "measure"]
STEPS_PER_EPOCH = 10
BOOTSTRAP = 200


def recipe_dir() -> Path:
    here = Path(__file__).resolve().parents[2] / "recipes"
    return here if here.is_dir() else Path("recipes")


def list_findings() -> pd.DataFrame:
    """The findings with their claims, papers and what is measured."""
    return pd.DataFrame([{"finding": f.id, "claim": f.claim, "paper": f.paper, "measure": f.measure}
                         for f in FINDINGS.values()])


# ----------------------------------------------------------------------------- training
def _run_steps(name: str, scale: Scale, steps: int | None) -> int:
    if steps is not None:
        return int(steps)
    return scale.lcmae_steps if name.startswith("lcmae") else scale.steps


def run_config(name: str, scale: Scale, root: Path, *, data=None, steps: int | None = None,
               device: str | None = None) -> dict:
    """The resolved recipe of one run: a bundled tiny-* recipe with the scale's size and length."""
    from ..train.config import load_recipe

    recipe, overrides = RUNS[name]
    n_steps = _run_steps(name, scale, steps)
    epochs = max(1, math.ceil(n_steps / STEPS_PER_EPOCH))
    extra = [f"model.preset={scale.preset}", f"optim.global_batch={scale.global_batch}",
             f"optim.base_lr={scale.base_lr}", f"data.samples_per_epoch={scale.global_batch * STEPS_PER_EPOCH}",
             f"optim.epochs={epochs}", f"optim.warmup_epochs={max(1, round(0.2 * epochs))}",  # 20%, as Section 5
             # paths and names go in as values, never through YAML (which would cut "o/rep #2" at " #")
             ("run.output_dir", str(root / "runs" / scale.name / f"{name}-s{epochs * STEPS_PER_EPOCH}")),
             "run.checkpoint_every=50", "run.log_every=10", *scale.overrides]
    if name in AE_BLOCKS:
        extra.append(f"model.pred_size={AE_BLOCKS[name] * scale.patch}")
    if data is not None:
        extra.append(("data.path", str(data)))
    if device:
        extra.append(("run.device", str(device)))
    config = load_recipe(recipe_dir() / recipe, [*overrides, *extra])
    config["name"] = name
    return config


def train(name: str, scale: Scale, root: Path, *, data=None, steps=None, device=None, echo=print) -> Path:
    """Train one run (or reuse / resume it). Returns its run folder."""
    from ..train.engine import pretrain_recipe

    config = run_config(name, scale, root, data=data, steps=steps, device=device)
    folder = Path(config["run"]["output_dir"])
    total = config["optim"]["epochs"] * STEPS_PER_EPOCH
    if (folder / "model.safetensors").is_file():
        _check_reusable(folder, config)
        echo(f"{name}: reused ({folder})")
        return folder
    resumed = (folder / "checkpoint-last.pth").is_file()
    tic = time.monotonic()
    pretrain_recipe(config, progress=False)
    echo(f"{name}: {'resumed and ' if resumed else ''}trained {total} steps "
         f"({config['method']}, {config['model']['preset']}) in {time.monotonic() - tic:.0f} s")
    return folder


def _check_reusable(folder: Path, config: dict) -> None:
    """A finished run is reused only when its saved config.yaml is this run's configuration (settings that do
    not change the result excepted); otherwise one line instead of a verdict on another model."""
    import yaml

    from ..errors import MaeprobeError
    from ..train.engine import RESUMABLE_CHANGES, _flat

    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        saved = _flat(saved) if isinstance(saved, dict) else None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        saved = None
    if saved is None:
        raise MaeprobeError(f"{folder}: a finished run without a readable config.yaml; move it away to retrain")
    now = _flat(config)
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if changed:
        raise MaeprobeError(f"{folder}: holds a run trained with {changed[0]}={saved.get(changed[0])!r}, not "
                            f"{now.get(changed[0])!r}; use another --out or move the folder away")


def _load(folder: Path):
    from ..checkpoints import load

    return load(folder / "checkpoint-last.pth")


# ----------------------------------------------------------------------------- measurements
def _spread(unit_sum: torch.Tensor, count) -> torch.Tensor:
    """1 - |mean unit vector|^2 per position, averaged over positions: unit_sum [..., k, E] -> [...]."""
    return 1 - ((unit_sum / count) ** 2).sum(-1).mean(-1)


@torch.no_grad()
def output_spread(folder: Path, images: torch.Tensor, *, mask_ratio: float = 0.75, seed: int = 0,
                  bootstrap: int = BOOTSTRAP, device: str = "cpu") -> dict:
    """LC-MAE collapse measure: at each masked position i (one shared seeded mask), the across-image spread
    1 - |mean_n v_hat[n, i]|^2 of the unit-normalised projected outputs v = p(h(x, m)); averaged over i.
    0 when every image gives the same output (collapse to a constant point); about 1 - 1/N for unrelated
    outputs. Interval: Poisson bootstrap over images. The same spread of the model's own output h(x, m) (the
    pixel prediction, before the projector) is returned as ``h_value`` for the report; the verdict uses v."""
    from ..checkpoints import read_pickle
    from ..masking import mask_noise
    from ..metrics.base import poisson_weights, percentile_interval

    state = read_pickle(folder / "checkpoint-last.pth")
    if "projector" not in state:
        raise MaeprobeError(f"{folder}: no LC-MAE projector in the checkpoint")
    weight = state["projector"]["weight"]
    projector = torch.nn.Linear(weight.shape[1], weight.shape[0])
    projector.load_state_dict(state["projector"])
    model = _load(folder).to(device).eval()
    projector = projector.to(device)
    L = model.config.num_patches
    sums: dict[str, torch.Tensor] = {}
    boot_weight, count = torch.zeros(bootstrap, dtype=torch.float64), 0
    for start in range(0, len(images), 64):
        x = images[start:start + 64].to(device)
        noise = mask_noise(L, seed, batch_size=len(x)).to(device)
        latent, mask, ids_restore = model.forward_encoder(x, mask_ratio, noise)
        h = model.forward_decoder(latent, ids_restore)  # [B, L, p*p*3]
        weights = poisson_weights(torch.arange(start, start + len(x)), bootstrap, seed)  # [B, R]
        for name, out in (("v", projector(h)), ("h", h)):
            unit = F.normalize(out[:, mask[0] > 0.5].double(), dim=-1).cpu()  # [B, k, E]
            for key, part in ((name, unit.sum(0)), (f"boot_{name}", torch.einsum("br,bke->rke", weights, unit))):
                sums[key] = part if key not in sums else sums[key] + part
        boot_weight += weights.sum(0)
        count += len(x)
    out = {"n_images": count}
    for name in ("v", "h"):
        replicates = _spread(sums[f"boot_{name}"], boot_weight.clamp_min(1e-12).view(-1, 1, 1)).numpy()
        low, high = percentile_interval(replicates)
        prefix = "" if name == "v" else "h_"
        out.update({f"{prefix}value": float(_spread(sums[name], count)), f"{prefix}ci_low": float(low),
                    f"{prefix}ci_high": float(high)})
    return out


@torch.no_grad()
def linear_probe(folder: Path, size: int, *, device: str = "cpu") -> dict:
    """Linear probe on the labelled toy task (scikit-learn digits): the frozen encoder's CLS feature after the
    final norm (MAE's linear-probe feature), standardised on the training split (MAE's BatchNorm without
    affine), multinomial logistic regression (L-BFGS, C = 1). Returns top-1 on the validation split."""
    from sklearn.linear_model import LogisticRegression

    from .toydata import digits

    x_train, y_train, x_val, y_val = digits(size)
    model = _load(folder).to(device).eval()

    def features(x):
        return torch.cat([model.forward_encoder(x[i:i + 128].to(device), 0.0)[0][:, 0].double().cpu()
                          for i in range(0, len(x), 128)]).numpy()

    f_train, f_val = features(x_train), features(x_val)
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    classifier = LogisticRegression(C=1.0, max_iter=2000)
    classifier.fit((f_train - mean) / std, y_train)
    top1 = float(100 * (classifier.predict((f_val - mean) / std) == y_val).mean())
    return {"top1": top1, "n_val": int(len(y_val)), "chance": 100.0 / len(np.unique(y_train))}


def _mean_over_heads(table: pd.DataFrame) -> pd.DataFrame:
    return table.groupby("layer")[["value", "ci_low", "ci_high"]].mean().reset_index()


def measure(finding_id: str, folders: dict[str, Path], images: torch.Tensor, *, reference=None,
            device: str = "cpu") -> tuple[pd.DataFrame, rules.Verdict, list[pd.DataFrame]]:
    """(evidence table, verdict, metric tables for the figures) of one finding."""
    import maeprobe

    size = images.shape[-1]
    common = dict(bootstrap=BOOTSTRAP, device=device)
    if finding_id == "lcmae-collapse":
        rows = [{"setting": s, **output_spread(folders[f"lcmae-{s}"], images, device=device)} for s in "ceg"]
        evidence = pd.DataFrame(rows)
        verdict = rules.collapse_rule(evidence)
        also = ", ".join(f"({r.setting}) {r.h_value:.3f}" for r in evidence.itertuples())
        verdict = rules.Verdict(verdict.measured, verdict.ci_low, verdict.ci_high, verdict.verdict,
                                f"{verdict.detail}. Not used by the rule: the same spread of the model's output "
                                f"h(x, m) before the projector: {also}")
        return evidence, verdict, []
    if finding_id == "decoder-positional":
        table = maeprobe.decoder_attention_similarity(_load(folders["mae"]), images, **common)
        evidence = table[["layer", "value", "ci_low", "ci_high", "n_images"]].reset_index(drop=True)
        return evidence, rules.positional_rule(evidence), [table]
    if finding_id == "decoder-semantic":
        if reference is None:
            return pd.DataFrame(), rules.semantic_rule(None), []
        table = maeprobe.decoder_semantic_similarity(_load(folders["mae"]), reference, images, **common)
        evidence = table[["layer", "value", "ci_low", "ci_high", "n_images", "reference"]].reset_index(drop=True)
        return evidence, rules.semantic_rule(evidence), [table]
    if finding_id == "mask-ratio-distance":
        tables, parts = [], []
        for name in FINDINGS[finding_id].runs:
            table = maeprobe.attention_distance(_load(folders[name]), images, **common)
            ratio = 0.75 if name == "mae" else int(name.removeprefix("mae-mask")) / 100
            tables.append(table.assign(pretrain_mask_ratio=ratio))
            parts.append(_mean_over_heads(table).assign(mask_ratio=ratio))
        evidence = pd.concat(parts, ignore_index=True)[["mask_ratio", "layer", "value", "ci_low", "ci_high"]]
        return evidence, rules.mask_ratio_rule(evidence), tables
    if finding_id == "ae-block-distance":
        tables, rows = [], []
        for name in FINDINGS[finding_id].runs:
            model = _load(folders[name])
            k = model.config.pred_size or model.config.patch_size
            table = maeprobe.attention_distance(model, images, **common).assign(checkpoint=f"AE({k})")
            tables.append(table)
            rows.append({"k": k, **table[["value", "ci_low", "ci_high"]].mean().to_dict()})
        evidence = pd.DataFrame(rows)
        return evidence, rules.ae_distance_rule(evidence), tables
    if finding_id == "ae-linear-probe":
        evidence = pd.DataFrame([{"model": name, **linear_probe(folders[name], size, device=device)}
                                 for name in FINDINGS[finding_id].runs])
        return evidence, rules.linear_probe_rule(evidence), []
    if finding_id == "local-decoders":
        labels = {"mae": "transformer", "mae-gaussian": "gaussian", "mae-conv": "conv"}
        evidence = pd.DataFrame([{"model": labels[name], **linear_probe(folders[name], size, device=device)}
                                 for name in FINDINGS[finding_id].runs])
        return evidence, rules.local_decoders_rule(evidence), []
    if finding_id == "umae-rank":
        tables, rows = [], []
        for name in ("umae", "mae"):
            table = maeprobe.feature_spectrum(_load(folders[name]), images, **common).assign(
                checkpoint="U-MAE" if name == "umae" else "MAE")
            tables.append(table)
            rank = table[(table["metric"] == "effective_rank") & (table["feature"] == "cls")].iloc[0]
            rows.append({"model": name, "value": rank["value"], "ci_low": rank["ci_low"], "ci_high": rank["ci_high"]})
        evidence = pd.DataFrame(rows)
        return evidence, rules.umae_rank_rule(evidence), tables
    raise MaeprobeError(f"unknown finding {finding_id!r}")


# ----------------------------------------------------------------------------- figures
def _figures(finding_id: str, evidence: pd.DataFrame, tables: list[pd.DataFrame], folder: Path) -> list[Path]:
    from ..plots import make_figures
    from ..plots.figures import bar_figure

    if evidence.empty:
        return []
    title = f"{finding_id}: {FINDINGS[finding_id].paper}"
    if finding_id == "lcmae-collapse":
        return bar_figure([f"({s})" for s in evidence["setting"]], evidence, title, "across-image spread of v",
                          folder, finding_id, lines=(rules.COLLAPSED_BELOW, rules.SPREAD_ABOVE))
    if finding_id in ("ae-linear-probe", "local-decoders"):
        return bar_figure(list(evidence["model"]), rules.accuracy_intervals(evidence).rename(columns={"top1": "value"}),
                          title, "linear-probe top-1 (%)", folder, finding_id,
                          lines=(float(evidence["chance"].iloc[0]),))
    table = pd.concat(tables, ignore_index=True)
    names = {"decoder-positional": ["fig2"], "decoder-semantic": ["fig3"], "mask-ratio-distance": ["fig6"],
             "ae-block-distance": ["figA1"], "umae-rank": ["spectrum"]}[finding_id]
    return make_figures(table, folder, figures=names)


# ----------------------------------------------------------------------------- the suite
def _base_commands(ids: list[str]) -> list[str]:
    """The paper's runs (8 GPUs each) and the maeprobe commands that measure them, for ``--scale base``."""
    runs = list(dict.fromkeys(r for i in ids for r in FINDINGS[i].runs))
    ckpt = {r: f"runs/{BASE_RECIPES[r]}/checkpoint-last.pth" for r in runs}
    lines = [f"torchrun --nproc-per-node 8 -m maeprobe recipe run recipes/{BASE_RECIPES[r]}.yaml "
             f"data.path=$IMAGENET run.output_dir=runs/{BASE_RECIPES[r]}" for r in runs]
    probed = list(dict.fromkeys(r for i in ids if i in ("ae-linear-probe", "local-decoders") for r in FINDINGS[i].runs))
    lines += [f"torchrun --nproc-per-node 8 -m maeprobe recipe run recipes/linprobe_vit_b16.yaml data.path=$IMAGENET "
              f"eval.checkpoint={ckpt[r]} run.output_dir=runs/linprobe-{BASE_RECIPES[r]}" for r in probed]
    val = "--images $IMAGENET/val"
    measures = {
        "lcmae-collapse": "# lcmae-collapse, in Python: maeprobe.findings.runner.output_spread(Path('runs/lcmae_c'), "
                          "images) and the same for lcmae_e, lcmae_g; then maeprobe.findings.rules.collapse_rule",
        "decoder-positional": f"maeprobe decoder-attn-sim {ckpt.get('mae')} {val} --out findings/eq7.parquet",
        "decoder-semantic": f"maeprobe decoder-semantics {ckpt.get('mae')} --ref dino {val} --out findings/eq8.parquet",
        "mask-ratio-distance": "maeprobe run " + " ".join(ckpt[r] for r in FINDINGS["mask-ratio-distance"].runs
                                                          if r in ckpt)
                               + f" --metrics attn-distance {val} --out findings/mask_ratio.parquet",
        "ae-block-distance": "maeprobe run " + " ".join(ckpt[r] for r in FINDINGS["ae-block-distance"].runs
                                                        if r in ckpt)
                             + f" --metrics attn-distance {val} --out findings/ae.parquet",
        "umae-rank": f"maeprobe spectrum {ckpt.get('umae')} {val} --out findings/umae.parquet && maeprobe spectrum "
                     f"{ckpt.get('mae')} {val} --out findings/mae.parquet",
    }
    return lines + [measures[i] for i in ids if i in measures]


def reproduce(ids=None, *, scale: str = "tiny", out="outputs/reproduce", data=None, ref=None,
              steps: int | None = None, device: str | None = None, echo=print) -> pd.DataFrame:
    """Reproduce the papers' findings; returns the findings table (also written to ``out``).

    Args:
        ids: finding ids (None: all, in the order of ``list_findings()``).
        scale: ``'tiny'`` (2 CPU cores, built-in photographs), ``'small'`` (one GPU, ``data`` folder),
            ``'base'`` (writes the paper's 8-GPU launch commands; nothing is run).
        out: output folder: ``findings.csv``, ``findings.md``, ``figures/``, ``runs/``, ``findings/<id>/``.
        data: image folder for pretraining and probing (default: the built-in photographs).
        ref: reference model for ``decoder-semantic`` (checkpoint path, loaded model or ``'dino'``); without
            one that finding is inconclusive.
        steps: optimiser steps of every run (default: the scale's).
        device: 'cpu', 'cuda', ... (default: CUDA when available).
        echo: where progress lines go (one per run and per finding; only rank 0 prints).
    """
    from ..probe import default_device

    ids = list(FINDINGS) if not ids else list(dict.fromkeys(ids))
    unknown = [i for i in ids if i not in FINDINGS]
    if unknown:
        raise MaeprobeError(f"unknown finding(s) {', '.join(unknown)}; known: {', '.join(FINDINGS)}")
    if scale not in SCALES:
        raise MaeprobeError(f"unknown scale {scale!r}; choose tiny, small or base")

    def say(line: str) -> None:
        if is_main():
            echo(line)

    root, spec = Path(out), SCALES[scale]
    device = device or default_device()
    if scale == "base":
        return _write_base(ids, root, say)
    reference = None
    if ref is not None and "decoder-semantic" in ids:
        from ..api import load_reference

        reference = load_reference(ref)
    needed = list(dict.fromkeys(r for i in ids for r in FINDINGS[i].runs))
    say(f"reproduce: {len(ids)} finding(s), {len(needed)} run(s) at scale {scale} -> {root}")
    folders = {}
    for n, name in enumerate(needed, 1):
        folders[name] = train(name, spec, root, data=data, steps=steps, device=device,
                              echo=lambda line, n=n: say(f"[run {n}/{len(needed)}] {line}"))
    images = None
    results = []
    for n, finding_id in enumerate(ids, 1):
        finding = FINDINGS[finding_id]
        folder = root / "findings" / finding_id
        key = {"scale": scale, "runs": {r: str(folders[r]) for r in finding.runs}, "data": str(data),
               "reference": str(ref) if finding_id == "decoder-semantic" else None,
               "probe_images": spec.probe_images}
        stored = folder / "verdict.json"
        if stored.is_file() and json.loads(stored.read_text()).get("key") == key:
            result = json.loads(stored.read_text())["result"]
            say(f"[finding {n}/{len(ids)}] {finding_id}: {result['verdict']} (reused)")
            results.append(result)
            continue
        if images is None:
            from .toydata import probe_images

            size = _load(folders[needed[0]]).config.img_size
            images = probe_images(spec.probe_images, size, seed=0, folder=data)
        tic = time.monotonic()
        evidence, verdict, tables = measure(finding_id, folders, images, reference=reference, device=device)
        figures = _figures(finding_id, evidence, tables, root / "figures")
        result = {"finding": finding_id, "claim": finding.claim, "paper": finding.paper,
                  "measured": verdict.measured, "ci_low": verdict.ci_low, "ci_high": verdict.ci_high,
                  "verdict": verdict.verdict, "scale": scale, "detail": verdict.detail, "measure": finding.measure,
                  "figures": [str(p.relative_to(root)) for p in figures if p.suffix == ".png"]}
        if is_main():
            folder.mkdir(parents=True, exist_ok=True)
            if not evidence.empty:
                from ..results import write_table

                write_table(evidence, folder / "evidence.csv")
            write_text(stored, json.dumps({"key": key, "result": result}, indent=1, default=float))
        say(f"[finding {n}/{len(ids)}] {finding_id}: {verdict.verdict} ({verdict.detail}) "
            f"in {time.monotonic() - tic:.0f} s")
        results.append(result)
    return _write_report(results, root, scale, say, data=data, ref=ref, steps=steps)


def _write_report(results: list[dict], root: Path, scale: str, say, **settings) -> pd.DataFrame:
    from ..results import write_table

    table = pd.DataFrame(results)
    for column in COLUMNS:
        if column not in table:
            table[column] = np.nan
    frame = table[COLUMNS]
    write_table(frame, root / "findings.csv")
    if is_main():
        write_text(root / "findings.md", report_markdown(table, scale, settings))
    counts = frame["verdict"].value_counts().to_dict()
    say(f"findings: {', '.join(f'{v} {k}' for k, v in counts.items())}; wrote {root / 'findings.csv'}, "
        f"{root / 'findings.md'}")
    return frame


def report_markdown(table: pd.DataFrame, scale: str, settings: dict) -> str:
    """The findings report: the table, each finding's evidence sentence and its figures."""
    spec = SCALES[scale]
    lines = [f"# Findings of the LC-MAE and U-MAE papers, scale `{scale}`", "",
             f"Generated by `maeprobe reproduce --scale {scale}`"
             + "".join(f" --{k} {v}" for k, v in settings.items() if v is not None) + ". "
             + (f"Runs: {spec.preset}, global batch {spec.global_batch}, {settings.get('steps') or spec.steps} "
                f"steps per run ({settings.get('steps') or spec.lcmae_steps} for LC-MAE); probe set "
                f"{spec.probe_images} images. " if spec.preset else
                "The paper's ViT-B/16 ImageNet recipes on 8 GPUs: not run here, see `commands.sh`. ")
             + "Verdict rules: README, *Reproducing the findings*.", "",
             "| finding | claim | paper | measured [95% CI] | verdict |", "|---|---|---|---|---|"]
    for row in table.itertuples():
        measured = "-" if pd.isna(row.measured) else f"{row.measured:.3g} [{row.ci_low:.3g}, {row.ci_high:.3g}]"
        lines.append(f"| `{row.finding}` | {row.claim} | {row.paper} | {measured} | **{row.verdict}** |")
    lines.append("")
    for row in table.itertuples():
        lines += [f"## `{row.finding}`: {row.verdict}", "", f"*{row.claim}* ({row.paper}). Measured: {row.measure}.",
                  "", f"{row.detail}", ""]
        figures = getattr(row, "figures", None)
        for figure in figures if isinstance(figures, list) else []:
            lines += [f"![{row.finding}]({figure})", ""]
    return "\n".join(lines) + "\n"


def _write_base(ids: list[str], root: Path, say) -> pd.DataFrame:
    commands = _base_commands(ids)
    if is_main():
        write_text(root / "commands.sh", "#!/usr/bin/env bash\n# maeprobe reproduce --scale base: the paper's runs "
                   "(ViT-B/16, ImageNet-1K, 8 GPUs). Set IMAGENET first.\nset -euo pipefail\n"
                   + "\n".join(commands) + "\n")
    say("scale base: the paper's ViT-B/16 ImageNet runs on 8 GPUs are not run here; launch them with:")
    for line in commands:
        say(f"  {line}")
    results = [{"finding": i, "claim": FINDINGS[i].claim, "paper": FINDINGS[i].paper, "measured": np.nan,
                "ci_low": np.nan, "ci_high": np.nan, "verdict": rules.INCONCLUSIVE, "scale": "base",
                "detail": f"not run: train with {root / 'commands.sh'}, then measure the checkpoints",
                "measure": FINDINGS[i].measure} for i in ids]
    return _write_report(results, root, "base", say)
