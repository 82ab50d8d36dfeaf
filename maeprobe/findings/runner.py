"""``maeprobe reproduce``: train what the findings need through the recipe engine, measure, apply each verdict
rule, write ``findings.csv``, ``findings.md`` and the figures.

Finished runs are reused (a run's folder is named by its step count), interrupted ones resume where they
stopped (the engine's exact resume), and a finding whose evidence is stored for the same settings is not
measured again. Under torch.distributed every process trains and measures; rank 0 prints and writes.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..distributed import is_main
from ..errors import MaeprobeError
from ..io import check_outputs, record_outputs, write_text
from . import rules
from .suite import AE_BLOCKS, BASE_RECIPES, FINDINGS, RELEASED, RELEASED_FINDINGS, RUNS, SCALES, Scale

COLUMNS = ["finding", "claim", "paper", "measured", "ci_low", "ci_high", "unit", "control", "control_low",
           "control_high", "verdict", "seeds", "rule_version", "amended_after_results", "scale", "detail", "measure"]
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


def run_config(name: str, scale: Scale, root: Path, *, seed: int = 0, data=None, steps: int | None = None,
               device: str | None = None) -> dict:
    """The resolved recipe of one run: a bundled tiny-* recipe with the scale's size and length, and ``seed``
    (model initialisation, data order, augmentation, masks)."""
    from ..train.config import load_recipe

    recipe, overrides = RUNS[name]
    n_steps = _run_steps(name, scale, steps)
    epochs = max(1, math.ceil(n_steps / STEPS_PER_EPOCH))
    folder = root / "runs" / scale.name / f"{name}-s{epochs * STEPS_PER_EPOCH}-seed{seed}"
    extra = [f"model.preset={scale.preset}", f"optim.global_batch={scale.global_batch}",
             f"optim.base_lr={scale.base_lr}", f"data.samples_per_epoch={scale.global_batch * STEPS_PER_EPOCH}",
             f"optim.epochs={epochs}", f"optim.warmup_epochs={max(1, round(0.2 * epochs))}",  # 20%, as Section 5
             f"run.seed={int(seed)}",
             # paths and names go in as values, never through YAML (which would cut "o/rep #2" at " #")
             ("run.output_dir", str(folder)), "run.checkpoint_every=50", "run.log_every=10", *scale.overrides]
    if name in AE_BLOCKS:
        extra.append(f"model.pred_size={AE_BLOCKS[name] * scale.patch}")
    if data is not None:
        extra.append(("data.path", str(data)))
    if device:
        extra.append(("run.device", str(device)))
    config = load_recipe(recipe_dir() / recipe, [*overrides, *extra])
    config["name"] = name
    return config


def train(name: str, scale: Scale, root: Path, *, seed: int = 0, data=None, steps=None, device=None,
          echo=print) -> Path:
    """Train one run (or reuse / resume it). Returns its run folder."""
    from ..train.engine import pretrain_recipe

    config = run_config(name, scale, root, seed=seed, data=data, steps=steps, device=device)
    folder = Path(config["run"]["output_dir"])
    total = config["optim"]["epochs"] * STEPS_PER_EPOCH
    if (folder / "model.safetensors").is_file():
        _check_reusable(folder, config)
        _check_checkpoint(folder, _flat_config(config), total)
        echo(f"{name} seed {seed}: reused ({folder})")
        return folder
    resumed = (folder / "checkpoint-last.pth").is_file()
    tic = time.monotonic()
    last = pretrain_recipe(config, progress=False)
    if not (folder / "model.safetensors").is_file():  # stopped early (SIGTERM, a time cap): never measure it
        from ..checkpoints import read_pickle

        step = read_pickle(last).get("step", "?") if last.is_file() else 0
        raise MaeprobeError(f"{name} seed {seed}: training stopped at step {step} of {total} ({folder}); run the "
                            "same command again to resume it")
    echo(f"{name} seed {seed}: {'resumed and ' if resumed else ''}trained {total} steps "
         f"({config['method']}, {config['model']['preset']}) in {time.monotonic() - tic:.0f} s")
    return folder


def initial_weights(folder: Path):
    """The same seed's initial weights of a run (the findings' control): its saved recipe (``saved_config``),
    rebuilt exactly as the engine started (``initial_objective``), never trained. Returns the objective
    (``.model``, and ``.projector`` for LC-MAE)."""
    from ..train.config import DEFAULTS, _merge, check_recipe
    from ..train.engine import initial_objective

    config = saved_config(folder)
    try:  # settings added to maeprobe after the run was saved take their defaults, as the engine reads them
        config = check_recipe(_merge(DEFAULTS, config))
    except MaeprobeError as exc:
        raise MaeprobeError(f"{folder / 'config.yaml'}: {exc}; expected the config.yaml its run wrote") from None
    with torch.random.fork_rng(devices=[]):
        objective = initial_objective(config)
    return objective.eval()


def _small_text(path: Path, what: str) -> str:
    """The text of a file of a stored run (``--out`` holds stored results, which are untrusted input): a regular
    file of at most ``MAEPROBE_MAX_METADATA`` bytes (a FIFO would block, a huge file fill memory)."""
    import stat

    from ..limits import check

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise MaeprobeError(f"{path}: not a regular file; expected {what}")
        check("MAEPROBE_MAX_METADATA", info.st_size, f"{path}: {what} of {info.st_size:,} bytes")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise MaeprobeError(f"{path}: not UTF-8 text; expected {what}") from None
    except OSError as exc:
        raise MaeprobeError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); expected {what}") from None


def saved_config(folder: Path) -> dict:
    """A run's saved ``config.yaml``, read as untrusted input: bounded (``_small_text``), plain YAML without
    anchors or aliases (the engine never writes them; aliases would let 1 kB expand into billions of settings
    when flattened), and only recipe keys in recipe sections. One line otherwise."""
    import yaml

    from ..train.config import DEFAULTS, _check

    path = folder / "config.yaml"
    what = "the config.yaml of a maeprobe run"
    text = _small_text(path, what)

    class Plain(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None) is not None:
                raise yaml.YAMLError("YAML anchors and aliases")
            return super().compose_node(parent, index)

    try:
        data = yaml.load(text, Loader=Plain)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        problem = getattr(exc, "problem", None) or (exc.args[0] if exc.args and isinstance(exc.args[0], str) else
                                                    type(exc).__name__)
        raise MaeprobeError(f"{path}: not readable ({str(problem)[:120]}); expected {what}") from None
    if not isinstance(data, dict):
        raise MaeprobeError(f"{path}: holds a YAML {type(data).__name__}; expected {what}")
    try:
        _check(data, DEFAULTS, "")
    except MaeprobeError as exc:
        raise MaeprobeError(f"{path}: {exc}; expected {what}") from None
    return data


def _flat_config(config: dict) -> dict:
    from ..train.engine import _flat

    return _flat(config)


def _check_reusable(folder: Path, config: dict) -> None:
    """A finished run is reused only when its saved config.yaml (``saved_config``) is this run's configuration
    (settings that do not change the result excepted); otherwise one line instead of a verdict on another model."""
    from ..train.engine import _flat, changed_settings, saved_setting

    try:
        saved = _flat(saved_config(folder))
    except MaeprobeError as exc:
        raise MaeprobeError(f"{folder}: a finished run without a readable config.yaml ({exc}); move it away to "
                            "retrain") from None
    now = _flat(config)
    changed = changed_settings(saved, now)
    if changed:
        raise MaeprobeError(f"{folder}: holds a run trained with {changed[0]}={saved_setting(saved, changed[0])!r}, not "
                            f"{now.get(changed[0])!r}; use another --out or move the folder away")


def _check_checkpoint(folder: Path, settings: dict, total: int | None) -> None:
    """The checkpoint a finished run is measured from (``checkpoint-last.pth``) must be the one this run wrote:
    trained with ``settings`` (the run's flat configuration; settings that do not change the result excepted),
    and, when ``total`` is given, to its last step. A checkpoint copied in from another run (another seed, mask
    ratio or method) or left by an earlier, shorter run is one line, never measured as this run."""
    from ..checkpoints import read_pickle
    from ..train.engine import changed_settings, saved_setting

    last = folder / "checkpoint-last.pth"
    where = f"{last}: not the checkpoint of the run in {folder}"
    state = read_pickle(last)
    args = state.get("args") if isinstance(state, dict) else None
    saved = getattr(args, "__dict__", None)
    if not isinstance(saved, dict):
        raise MaeprobeError(f"{where} (no training settings in it); move the folder away to retrain")
    changed = changed_settings(saved, settings)
    if changed:
        key = changed[0]
        raise MaeprobeError(f"{where}: it was trained with {key}={saved_setting(saved, key)!r}, the run with "
                            f"{settings.get(key, '<absent>')!r}; move the folder away to retrain")
    step = state.get("step")
    if total is not None and step != total:
        raise MaeprobeError(f"{where}: it stopped at step {step!r} of {total}; move the folder away to retrain")


def _load(folder: Path):
    from ..checkpoints import load

    return load(folder / "checkpoint-last.pth")


def final_loss_parts(folder: Path) -> dict[str, float]:
    """The loss parts of the last logged step (log.csv ``parts``: ``name=value;...``), read from the file's last
    64 kB only (a log of any length costs the same); {} when there are none."""
    import csv
    import io
    import stat

    path = folder / "log.csv"
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return {}
        with open(path, "rb") as f:
            header = f.readline(65536).decode("utf-8", "replace")
            f.seek(max(0, path.stat().st_size - 65536))
            lines = [line for line in f.read(65536).decode("utf-8", "replace").splitlines() if line.strip()]
        if not lines or lines[-1] == header.strip():
            return {}
        last = next(csv.DictReader(io.StringIO(header + lines[-1] + "\n")))
        return {k: float(v) for k, v in (p.split("=", 1) for p in str(last.get("parts") or "").split(";") if "=" in p)}
    except (OSError, ValueError, StopIteration, csv.Error):
        return {}


# ----------------------------------------------------------------------------- measurements
def _spread(unit_sum: torch.Tensor, count) -> torch.Tensor:
    """1 - |mean unit vector|^2 per position, averaged over positions: unit_sum [..., k, E] -> [...]."""
    return 1 - ((unit_sum / count) ** 2).sum(-1).mean(-1)


@torch.no_grad()
def output_spread(folder: Path, images: torch.Tensor, *, mask_ratio: float = 0.75, seed: int = 0,
                  bootstrap: int = BOOTSTRAP, device: str = "cpu", units=None) -> dict:
    """LC-MAE collapse measure: at each masked position i (one shared seeded mask), the across-image spread
    1 - |mean_n v_hat[n, i]|^2 of the unit-normalised projected outputs v = p(h(x, m)); averaged over i.
    0 when every image gives the same output (collapse to a constant point); about 1 - 1/N for unrelated
    outputs. Interval: Poisson bootstrap over independent units (``units``: the source photo of every image;
    None: each image its own). The same spread of the model's own output h(x, m) (the
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
    units = _units(images, units)
    sums: dict[str, torch.Tensor] = {}
    boot_weight, count = torch.zeros(bootstrap, dtype=torch.float64), 0
    for start in range(0, len(images), 64):
        x = images[start:start + 64].to(device)
        noise = mask_noise(L, seed, batch_size=len(x)).to(device)
        latent, mask, ids_restore = model.forward_encoder(x, mask_ratio, noise)
        h = model.forward_decoder(latent, ids_restore)  # [B, L, p*p*3]
        weights = poisson_weights(units[start:start + len(x)], bootstrap, seed)  # [B, R], one draw per unit
        for name, out in (("v", projector(h)), ("h", h)):
            unit = F.normalize(out[:, mask[0] > 0.5].double(), dim=-1).cpu()  # [B, k, E]
            for key, part in ((name, unit.sum(0)), (f"boot_{name}", torch.einsum("br,bke->rke", weights, unit))):
                sums[key] = part if key not in sums else sums[key] + part
        boot_weight += weights.sum(0)
        count += len(x)
    out = {"n_images": count}
    for name in ("v", "h"):
        replicates = _spread(sums[f"boot_{name}"], boot_weight.clamp_min(1e-12).view(-1, 1, 1)).numpy()
        replicates[(boot_weight <= 0).numpy()] = np.nan  # a replicate that drew no unit is undefined
        low, high = percentile_interval(replicates)
        prefix = "" if name == "v" else "h_"
        out.update({f"{prefix}value": float(_spread(sums[name], count)), f"{prefix}ci_low": float(low),
                    f"{prefix}ci_high": float(high)})
    return out


@torch.no_grad()
def encoder_spread_ratio(trained, init, images: torch.Tensor, *, seed: int = 0, bootstrap: int = BOOTSTRAP,
                         device: str = "cpu", units=None) -> list[dict]:
    """lcmae-collapse, version 2: the across-image spread of the encoder's output on unmasked images,
    1 - |mean_n z_hat[n, i]|^2 at each position i (z_hat = z / |z|), averaged over positions, for the patch
    tokens and for the CLS token, as a ratio trained / ``init`` (the same seed's initial weights). Interval:
    paired Poisson bootstrap over independent units (the same replicate weights for both models; ``units``: the
    source photo of every image, None: each image its own)."""
    from ..metrics.base import percentile_interval, poisson_weights

    models = {"trained": trained.to(device).eval(), "init": init.to(device).eval()}
    units = _units(images, units)
    sums: dict = {}
    boot_weight, count = torch.zeros(bootstrap, dtype=torch.float64), 0
    for start in range(0, len(images), 64):
        x = images[start:start + 64].to(device)
        weights = poisson_weights(units[start:start + len(x)], bootstrap, seed)  # [B, R], one draw per unit
        for condition, model in models.items():
            z = model.forward_encoder(x, 0.0)[0]  # [B, prefix + L, E], after the final norm
            p = model.num_prefix_tokens
            for feature, part in (("patch", z[:, p:]), ("cls", z[:, :1])):
                unit = F.normalize(part.double(), dim=-1).cpu()
                for key, value in (((condition, feature), unit.sum(0)),
                                   ((condition, feature, "boot"), torch.einsum("br,bke->rke", weights, unit))):
                    sums[key] = value if key not in sums else sums[key] + value
        boot_weight += weights.sum(0)
        count += len(x)
    rows = []
    scale = boot_weight.clamp_min(1e-12).view(-1, 1, 1)
    for feature in ("patch", "cls"):
        trained_spread, init_spread = (float(_spread(sums[c, feature], count)) for c in ("trained", "init"))
        replicates = (_spread(sums["trained", feature, "boot"], scale)
                      / _spread(sums["init", feature, "boot"], scale).clamp_min(1e-12)).numpy()
        replicates[(boot_weight <= 0).numpy()] = np.nan  # a replicate that drew no unit is undefined
        low, high = percentile_interval(replicates)
        rows.append({"feature": feature, "value": trained_spread / max(init_spread, 1e-12), "ci_low": float(low),
                     "ci_high": float(high), "trained_spread": trained_spread, "init_spread": init_spread,
                     "n_units": len(set(units.tolist()))})
    return rows


def _fit_probe(f_train: np.ndarray, y_train, f_val: np.ndarray, y_val) -> float:
    """Standardised on the training split (MAE's BatchNorm without affine), multinomial logistic regression
    (L-BFGS, C = 1); top-1 (%) on the validation split."""
    from sklearn.linear_model import LogisticRegression

    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    classifier = LogisticRegression(C=1.0, max_iter=2000)
    classifier.fit((f_train - mean) / std, y_train)
    return float(100 * (classifier.predict((f_val - mean) / std) == y_val).mean())


def _eval_set(evalset, size: int):
    from .toydata import EvalSet

    return evalset if isinstance(evalset, EvalSet) else EvalSet(None, size)


@torch.no_grad()
def linear_probe(model, evalset=None, *, device: str = "cpu") -> dict:
    """Linear probe on the labelled set (default: scikit-learn digits at the model's input size): the frozen
    encoder's CLS feature after the final norm (MAE's linear-probe feature). ``model``: a model or a run
    folder; ``evalset``: an ``EvalSet`` or an input size for the digits. Returns top-1 on the validation
    split, its size and chance."""
    model = _load(model) if isinstance(model, (str, Path)) else model
    model = model.to(device).eval()
    evalset = _eval_set(evalset, evalset if isinstance(evalset, int) else model.config.img_size)

    def features(split):
        return np.concatenate([model.forward_encoder(x.to(device), 0.0)[0][:, 0].double().cpu().numpy()
                               for x in evalset.batches(split)])

    top1 = _fit_probe(features("train"), evalset.labels("train"), features("val"), evalset.labels("val"))
    return {"top1": top1, "n_val": int(len(evalset.labels("val"))), "chance": evalset.chance}


PIXEL_SIDE = 16


def pixel_probe(evalset) -> dict:
    """The raw-pixel baseline of the probe findings: the same linear probe on the normalised pixels,
    average-pooled to 16 x 16 x 3 = 768 values (the width of a ViT-B feature)."""
    def features(split):
        return np.concatenate([F.adaptive_avg_pool2d(x, PIXEL_SIDE).flatten(1).double().numpy()
                               for x in evalset.batches(split)])

    top1 = _fit_probe(features("train"), evalset.labels("train"), features("val"), evalset.labels("val"))
    return {"top1": top1, "n_val": int(len(evalset.labels("val"))), "chance": evalset.chance}


def _mean_over_heads(table: pd.DataFrame) -> pd.DataFrame:
    out = table.groupby("layer")[["value", "ci_low", "ci_high"]].mean().reset_index()
    if "n_units" in table:  # the independent units the intervals rest on (the same for every row)
        out["n_units"] = table["n_units"].iloc[0]
    return out


def random_like(model, seed: int = 0):
    """Randomly initialised weights of a loaded MAE model's architecture (the control of released checkpoints,
    which have no 'initial weights' of their own)."""
    from ..models.mae import MaskedAutoencoderViT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MaskedAutoencoderViT(model.config).eval()


@dataclass
class Measured:
    """What a finding's measurement returns: the evidence (the rule's input), the verdict, what the figure
    draws, and superseded versions of the rule (reported, not judged)."""

    evidence: pd.DataFrame
    verdict: rules.Verdict
    figure: dict = field(default_factory=dict)
    superseded: list = field(default_factory=list)  # [(id, Verdict, measure)]


def _rows(table: pd.DataFrame, keys=("layer",), extra=(), **labels) -> list[dict]:
    return [{**labels, **{k: r[k] for k in keys}, "value": r["value"], "ci_low": r["ci_low"],
             "ci_high": r["ci_high"], **{k: r[k] for k in extra if k in r}} for r in table.to_dict("records")]


def _uniform_of(model) -> float:
    cfg = model.config
    return rules.uniform_attention_distance(cfg.grid_size, cfg.patch_size, model.num_prefix_tokens)


def _by_seed(runs: dict, name: str) -> list[tuple[int, Path]]:
    return list(enumerate(runs[name]))


def _superseded_v2(finding_id: str, old: rules.Verdict) -> tuple[str, rules.Verdict, str]:
    """Version 2's verdict on the same evidence, reported as superseded (``rules_v2.py``, unchanged)."""
    row = replace(old, verdict=rules.SUPERSEDED, detail=(
        f"version 2 (rules_v2.py), superseded by version 3 after the version-2 tiny report had been read; on this "
        f"evidence version 2 gives: {old.verdict}. {old.detail}"))
    return f"{finding_id}-v2", row, FINDINGS[finding_id].measure


def _v2(finding_id: str, evidence: pd.DataFrame, *args) -> list:
    """Version 2's rule of a finding on version 3's evidence (the extra rows and columns of version 3, e.g.
    ``init:<model>`` probes, are ignored by version 2 or mean the same to it)."""
    from . import rules_v2

    rule = {"lcmae-collapse": rules_v2.collapse_rule_v2, "decoder-positional": rules_v2.positional_rule,
            "decoder-semantic": rules_v2.semantic_rule, "mask-ratio-distance": rules_v2.mask_ratio_rule,
            "ae-block-distance": rules_v2.ae_distance_rule, "ae-linear-probe": rules_v2.linear_probe_rule,
            "local-decoders": rules_v2.local_decoders_rule, "umae-rank": rules_v2.umae_rank_rule,
            "mae-local-attention": rules_v2.local_attention_rule}[finding_id]
    if finding_id in ("mask-ratio-distance", "ae-block-distance"):  # v2 read one init per seed
        key = "mask_ratio" if finding_id == "mask-ratio-distance" else "k"
        init = evidence[evidence["condition"] == "init"]
        first = init[init[key] == init[key].min()] if key in init else init
        evidence = pd.concat([evidence[evidence["condition"] == "trained"], first.drop(columns=[key])])
    if finding_id in ("ae-linear-probe", "local-decoders", "umae-rank"):
        evidence = evidence[~evidence["model"].astype(str).str.startswith("init:")]
    verdict = rule(evidence, *args)
    return [_superseded_v2(finding_id, verdict)]


# (encoder content, labelled set) -> probe result: one fit per distinct encoder and set. The set is the EvalSet
# object itself (identity, not its name: a folder whose images changed between two calls is another set), and
# ``reproduce`` empties the cache at its start.
_PROBES: dict = {}


def _state_digest(model, encoder_only: bool = False) -> str:
    """Content hash of a model's parameters and buffers (``encoder_only``: those outside the decoder)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if encoder_only and (name.startswith("decoder") or name == "mask_token"):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cached_probe(folder: Path, condition: str, evalset, device) -> dict:
    model = _load(folder) if condition == "trained" else initial_weights(folder).model
    key = (_state_digest(model, encoder_only=True), evalset)
    if key not in _PROBES:  # an AE(k)'s initial encoder is MAE's at the same seed: probed once
        _PROBES[key] = linear_probe(model, evalset, device=device)
    return _PROBES[key]


def measure(finding_id: str, runs: dict[str, list[Path]], images: torch.Tensor, *, reference=None,
            evalset=None, device: str = "cpu", units=None) -> Measured:
    """Measure one finding on trained runs (``runs[name][seed]``) and each run's own same-seed initial weights;
    apply its rule (version 3) and, on the same evidence, version 2's (reported as superseded).

    ``units``: the independent unit (source photo) of every probe image, which the intervals resample (None:
    each image its own unit)."""
    import maeprobe

    units = _units(images, units)
    common = dict(bootstrap=BOOTSTRAP, device=device, resample_by=units.tolist())
    if finding_id == "lcmae-collapse":
        ratios, v1, notes = [], [], {}
        for setting in "ceg":
            for seed, folder in _by_seed(runs, f"lcmae-{setting}"):
                trained, init = _load(folder), initial_weights(folder).model
                ratios += [{"setting": setting, "seed": seed, **r}
                           for r in encoder_spread_ratio(trained, init, images, device=device, units=units)]
                v1.append({"setting": setting, "seed": seed,
                           **output_spread(folder, images, device=device, units=units)})
                notes.setdefault(setting, []).append(final_loss_parts(folder).get("loss_cross", float("nan")))
        evidence, old = pd.DataFrame(ratios), pd.DataFrame(v1)
        verdict = rules.collapse_rule_v3(evidence)
        beside = "; ".join(
            f"({s}) spread of v {old[old.setting == s]['value'].mean():.3f}, of h {old[old.setting == s]['h_value'].mean():.3f}, "
            f"final L_cross {np.nanmean(notes[s]):.4f}" for s in "ceg")
        verdict = replace(verdict, detail=f"{verdict.detail}. Beside the verdict, not used by it (means over seeds): "
                                          f"{beside}")
        old_verdict = rules.collapse_rule(old)
        superseded = replace(old_verdict, verdict=rules.SUPERSEDED, detail=(
            f"version 1, superseded by version 2 (the measure changed after this result was seen: "
            f"{rules.V1_RESULTS_SEEN}); why: v = p(h(x, m)) can collapse at no cost in setting (e), where only "
            f"L_cross trains the projector, while Table 1 is about the encoder's features. The v1 rule on this "
            f"run gives: {old_verdict.verdict}. {old_verdict.detail}"))
        return Measured(evidence, verdict, {"kind": "collapse"},
                        _v2(finding_id, evidence) +
                        [("lcmae-collapse-v1", superseded, "across-image spread of the projected outputs v at "
                          "masked positions (unitless), settings (c), (e), (g)")])
    if finding_id in ("decoder-positional", "decoder-semantic"):
        if finding_id == "decoder-semantic" and reference is None:
            return Measured(pd.DataFrame(), rules.semantic_rule(None))
        rows = []
        for seed, folder in _by_seed(runs, "mae"):
            for condition, model in (("trained", _load(folder)), ("init", initial_weights(folder).model)):
                if finding_id == "decoder-positional":
                    table = maeprobe.decoder_attention_similarity(model, images, **common)
                else:
                    table = maeprobe.decoder_semantic_similarity(model, reference, images, **common)
                rows += _rows(table, extra=("w_density", "ref_w_density", "n_units"), condition=condition, seed=seed)
        evidence = pd.DataFrame(rows)
        if finding_id == "decoder-positional":
            return Measured(evidence, rules.positional_rule(evidence),
                            {"kind": "profile", "uniform": rules.EQ7_UNIFORM}, _v2(finding_id, evidence))
        evidence["reference"] = _reference_name(reference)
        return Measured(evidence, rules.semantic_rule(evidence), {"kind": "profile"}, _v2(finding_id, evidence))
    if finding_id in ("mask-ratio-distance", "ae-block-distance"):
        rows, uniform = [], None
        for name in FINDINGS[finding_id].runs:
            for seed, folder in _by_seed(runs, name):
                model = _load(folder)
                uniform = _uniform_of(model)
                if finding_id == "mask-ratio-distance":
                    label = {"mask_ratio": 0.75 if name == "mae" else int(name.removeprefix("mae-mask")) / 100}
                else:
                    label = {"k": model.config.pred_size or model.config.patch_size}
                for condition, probed in (("trained", model), ("init", initial_weights(folder).model)):
                    table = maeprobe.attention_distance(probed, images, **common)
                    rows += _rows(_mean_over_heads(table), extra=("n_units",), condition=condition, seed=seed,
                                  **label)
        evidence = pd.DataFrame(rows)
        if finding_id == "mask-ratio-distance":
            return Measured(evidence, rules.mask_ratio_rule(evidence, uniform), {"kind": "distance", "uniform": uniform},
                            _v2(finding_id, evidence, uniform))
        return Measured(evidence, rules.ae_distance_rule(evidence, uniform), {"kind": "ae", "uniform": uniform},
                        _v2(finding_id, evidence, uniform))
    if finding_id in ("ae-linear-probe", "local-decoders"):
        labels = ({name: name for name in FINDINGS[finding_id].runs} if finding_id == "ae-linear-probe" else
                  {"mae": "transformer", "mae-gaussian": "gaussian", "mae-conv": "conv"})
        rows = []
        for name, label in labels.items():
            for seed, folder in _by_seed(runs, name):
                if name in AE_BLOCKS:  # named by the block side in pixels, as AE(k) in the paper
                    label = f"ae{_load(folder).config.pred_size or _load(folder).config.patch_size}"
                rows.append({"model": label, "seed": seed, **_cached_probe(folder, "trained", evalset, device)})
                if name != "mae":  # each run's own initial weights (MAE's are the 'random' rows below)
                    rows.append({"model": f"init:{label}", "seed": seed,
                                 **_cached_probe(folder, "init", evalset, device)})
        for seed, folder in _by_seed(runs, "mae"):
            rows.append({"model": "random", "seed": seed, **_cached_probe(folder, "init", evalset, device)})
        key = ("pixels", evalset)
        _PROBES[key] = _PROBES.get(key) or pixel_probe(evalset)
        rows.append({"model": "pixels", "seed": 0, **_PROBES[key]})
        evidence = pd.DataFrame(rows)
        rule = rules.linear_probe_rule if finding_id == "ae-linear-probe" else rules.local_decoders_rule
        return Measured(evidence, rule(evidence), {"kind": "accuracy"}, _v2(finding_id, evidence))
    if finding_id == "umae-rank":
        rows = []
        for name in ("umae", "mae"):
            for seed, folder in _by_seed(runs, name):
                rows.append({"model": name, "seed": seed, **_cls_rank(_load(folder), images, common)})
                rows.append({"model": "init" if name == "mae" else "init:umae", "seed": seed,
                             **_cls_rank(initial_weights(folder).model, images, common)})
        evidence = pd.DataFrame(rows)
        return Measured(evidence, rules.umae_rank_rule(evidence), {"kind": "rank"}, _v2(finding_id, evidence))
    if finding_id == "mae-local-attention":
        unit = "attention distance (px), D(MAE) - min(D(DINO), D(DeiT))"
        return Measured(pd.DataFrame(), rules.Verdict(
            np.nan, np.nan, np.nan, rules.INCONCLUSIVE, "measured at --scale released only: it compares the released "
            "MAE with DINO and DeiT, whose recipes are not part of the pretraining suite", np.nan, unit, 0))
    raise MaeprobeError(f"unknown finding {finding_id!r}")


def _units(images: torch.Tensor, units) -> torch.Tensor:
    """The probe images' units as integers ([N]; each image its own unit when None)."""
    from ..data import unit_indices

    if units is None:
        return torch.arange(len(images))
    units = unit_indices(list(units.tolist() if isinstance(units, torch.Tensor) else units))
    if len(units) != len(images):
        raise MaeprobeError(f"{len(units)} unit labels for {len(images)} probe images")
    return units


def _cls_rank(model, images, common) -> dict:
    import maeprobe

    table = maeprobe.feature_spectrum(model, images, **common)
    rank = table[(table["metric"] == "effective_rank") & (table["feature"] == "cls")].iloc[0]
    return {"value": rank["value"], "ci_low": rank["ci_low"], "ci_high": rank["ci_high"], "n_units": rank["n_units"]}


def _reference_name(reference) -> str:
    checkpoint = getattr(reference, "checkpoint", None)
    return str(getattr(checkpoint, "name", None) or getattr(checkpoint, "path", None) or "the reference")


def measure_released(finding_id: str, models: dict, images: torch.Tensor, *, reference=None,
                     device: str = "cpu", units=None) -> Measured:
    """A finding on the released checkpoints (``models[role] = (model, label)``), with random initial weights
    of MAE's architecture (seed 0) and uniform attention as the controls; one training run per model, so the
    intervals are over the probe set's independent units (``units``) only, and the rules ask for one seed: the
    claim is about these published models."""
    import maeprobe

    units = _units(images, units)
    common = dict(bootstrap=BOOTSTRAP, device=device, resample_by=units.tolist())
    mae = models["mae"][0]
    init = random_like(mae)
    if finding_id in ("decoder-positional", "decoder-semantic"):
        rows = []
        for condition, model in (("trained", mae), ("init", init)):
            if finding_id == "decoder-positional":
                table = maeprobe.decoder_attention_similarity(model, images, **common)
            else:
                table = maeprobe.decoder_semantic_similarity(model, reference, images, **common)
            rows += _rows(table, extra=("w_density", "ref_w_density", "n_units"), condition=condition, seed=0)
        evidence = pd.DataFrame(rows)
        if finding_id == "decoder-positional":
            return Measured(evidence, rules.positional_rule(evidence, min_seeds=1),
                            {"kind": "profile", "uniform": rules.EQ7_UNIFORM}, _v2(finding_id, evidence))
        evidence["reference"] = _reference_name(reference)
        return Measured(evidence, rules.semantic_rule(evidence, min_seeds=1), {"kind": "profile"},
                        _v2(finding_id, evidence))
    if finding_id == "mae-local-attention":
        rows = []
        for role, model in (("mae", mae), ("dino", models["dino"][0]), ("deit", models["deit"][0]), ("init", init)):
            rows += _rows(_mean_over_heads(maeprobe.attention_distance(model, images, **common)), model=role, seed=0)
        evidence = pd.DataFrame(rows)
        uniform = _uniform_of(mae)
        return Measured(evidence, rules.local_attention_rule(evidence, uniform), {"kind": "models", "uniform": uniform},
                        _v2(finding_id, evidence, uniform))
    raise MaeprobeError(f"{finding_id}: not measured at --scale released (it needs pretraining runs); choose from "
                        f"{', '.join(RELEASED_FINDINGS)}")


# ----------------------------------------------------------------------------- the suite
def _base_folder(root: Path, name: str, seed: int) -> Path:
    return root / "runs" / "base" / f"{BASE_RECIPES[name]}-seed{seed}"


def _base_runs(root: Path, needed: list[str], seeds: int) -> dict[str, list[Path]] | None:
    """The finished base runs (``model.safetensors`` and ``config.yaml`` in every folder), or None."""
    runs = {name: [_base_folder(root, name, seed) for seed in range(seeds)] for name in needed}
    done = all((f / "model.safetensors").is_file() and (f / "config.yaml").is_file()
               for folders in runs.values() for f in folders)
    if not done:
        return None
    for folder in (f for folders in runs.values() for f in folders):  # the checkpoint is the one its run wrote
        _check_checkpoint(folder, _flat_config(saved_config(folder)), None)
    return runs


def _base_commands(ids: list[str], root: Path = Path("outputs/reproduce-base"), seeds: int = 3) -> list[str]:
    """The paper's runs (8 GPUs each, ``seeds`` seeds each: rules version 3 needs 3 for a verdict) and the one
    command that then measures them with their controls (each run's same-seed initial weights, rebuilt from its
    saved config.yaml) and applies the version-3 rules: ``reproduce --scale base`` again, once every run is
    finished."""
    runs = list(dict.fromkeys(r for i in ids for r in FINDINGS[i].runs))
    lines = [f"torchrun --nproc-per-node 8 -m maeprobe recipe run recipes/{BASE_RECIPES[r]}.yaml "
             f"data.path=$IMAGENET run.seed={seed} run.output_dir={_base_folder(root, r, seed)}"
             for seed in range(seeds) for r in runs]
    only = " ".join(f"--finding {i}" for i in ids) if len(ids) < len(FINDINGS) else ""
    lines.append(f"maeprobe reproduce --scale base --out {root} --seeds {seeds} --data $IMAGENET/val "
                 f"--eval-data $LABELLED --ref dino {only}".rstrip()
                 + "  # measures every run and its same-seed initial weights, rules version "
                 f"{rules.RULE_VERSION}")
    return lines


NAME_MAX, PATH_MAX = 255, 4095  # bytes of one path component and of a whole path (Linux's limits)


def check_paths(**paths) -> None:
    """``--out``, ``--data`` and ``--eval-data`` (keyword = option name) as the file system can take them, checked
    before anything runs: every component at most 255 bytes and the whole path at most 4095 (beyond them the
    system refuses with ENAMETOOLONG), an input folder that exists, and no other error from looking them up.
    One line naming the option otherwise."""
    from ..validate import one_line

    for option, path in paths.items():
        if path is None:
            continue
        flag, text = "--" + option.replace("_", "-"), os.fspath(path)
        shown = one_line(text, 160) + ("..." if len(text) > 160 else "")
        raw = os.fsencode(text)
        long = next((part for part in raw.split(b"/") if len(part) > NAME_MAX), None)
        if long is not None:
            raise MaeprobeError(f"{flag} {shown}: a path component of {len(long):,} bytes; the file system allows "
                                f"{NAME_MAX} bytes per name")
        if len(raw) > PATH_MAX:
            raise MaeprobeError(f"{flag} {shown}: a path of {len(raw):,} bytes; the file system allows {PATH_MAX}")
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            if option != "out":
                raise MaeprobeError(f"{flag} {shown}: no such folder; expected a folder of images") from None
        except (OSError, ValueError) as exc:  # ELOOP, EACCES, an embedded NUL byte
            raise MaeprobeError(f"{flag} {shown}: cannot be used ({getattr(exc, 'strerror', None) or exc})") from None


def check_out_tree(root: Path, folders) -> None:
    """The folders ``reproduce`` writes into under ``--out`` (``folders``: relative paths) must stay inside it: a
    stored output folder is untrusted input, and a symbolic link there (``findings -> ~/.ssh``) would send the
    verdicts, tables and figures elsewhere. Links that stay inside are fine; one line otherwise."""
    base = root.resolve()
    for relative in folders:
        path = root / relative
        try:
            inside = not os.path.lexists(path) or path.resolve().is_relative_to(base)
        except (OSError, RuntimeError):  # a link loop
            inside = False
        if not inside:
            raise MaeprobeError(f"{path}: a symbolic link leading outside --out {root}; maeprobe writes only inside "
                                "the output folder (remove the link)")


CHECKED = "checked-images.json"  # runs/CHECKED: the image folders already decoded in full (check_inputs)


def check_inputs(root: Path, data, evalset, size: int, fingerprints: dict, say) -> None:
    """Before any training: decode every image of ``--data`` (what pretraining and the probe set read) and the
    files of ``--eval-data`` that the linear probes use, once, and refuse the first unreadable one with one line
    naming it (``toydata.check_image_files``), so that a corrupt file never stops a run after hours of
    training. A folder already checked, unchanged (the same ``_folder_fingerprint``: every file's path, size and
    modification time) at the same input size, is recorded in ``runs/checked-images.json`` and not decoded
    again."""
    from ..data import find_images
    from .toydata import check_image_files

    record = root / "runs" / CHECKED
    try:
        done = json.loads(_small_text(record, "maeprobe's record of checked image folders")) \
            if record.is_file() else []
    except (MaeprobeError, ValueError, RecursionError):
        done = []
    done = done if isinstance(done, list) else []
    for flag, folder, fingerprint, files in (
            ("--data", data, fingerprints["data"], lambda: find_images(data)),
            ("--eval-data", getattr(evalset, "folder", None), fingerprints["eval_data"], lambda: evalset.files())):
        if folder is None:
            continue
        entry = [flag, str(Path(folder).resolve()), fingerprint, int(size)]
        if entry in done:
            continue
        paths = files()
        say(f"checking {len(paths):,} images of {flag} {folder} (each decoded once, before any training)")
        check_image_files(paths, size, f"{flag} {folder}")
        done = [e for e in done if e != entry][-15:] + [entry]
        if is_main():
            write_text(record, json.dumps(done))


def reproduce(ids=None, *, scale: str = "tiny", out="outputs/reproduce", data=None, eval_data=None, ref=None,
              steps: int | None = None, seeds: int | None = None, probe_images: int | None = None,
              device: str | None = None, echo=print) -> pd.DataFrame:
    """Reproduce the papers' findings; returns the findings table (also written to ``out``).

    Args:
        ids: finding ids (None: all of the scale, in the order of ``list_findings()``).
        scale: ``'tiny'`` (2 CPU cores, built-in photographs), ``'small'`` (one GPU, ``data`` folder),
            ``'released'`` (no training: the public MAE, DINO and DeiT ViT-B/16 checkpoints from the hub
            caches), ``'base'`` (writes the paper's 8-GPU launch commands; nothing is run).
        out: output folder: ``findings.csv``, ``findings.md``, ``figures/``, ``runs/``, ``findings/<id>/``.
        data: image folder for pretraining and probing (default: the built-in photographs).
        eval_data: labelled ImageFolder-style folder for the linear probes (default: scikit-learn digits).
        ref: reference model for ``decoder-semantic`` (checkpoint path, loaded model or ``'dino'``); without
            one that finding is inconclusive (``released``: the released DINO).
        steps: optimiser steps of every run (default: the scale's).
        seeds: independently trained runs per finding (default: the scale's, 3 at tiny and small).
        probe_images: images of the probe set (default: the scale's).
        device: 'cpu', 'cuda', ... (default: CUDA when available).
        echo: where progress lines go (one per run and per finding; only rank 0 prints).
    """
    from ..probe import default_device
    from ..validate import device as validate_device, integer

    if scale not in SCALES:
        raise MaeprobeError(f"unknown scale {scale!r}; choose tiny, small, released or base")
    default_ids = RELEASED_FINDINGS if scale == "released" else tuple(FINDINGS)
    ids = list(default_ids) if not ids else list(dict.fromkeys(ids))
    unknown = [i for i in ids if i not in FINDINGS]
    if unknown:
        raise MaeprobeError(f"unknown finding(s) {', '.join(unknown)}; known: {', '.join(FINDINGS)}")
    if scale == "released" and (other := [i for i in ids if i not in RELEASED_FINDINGS]):
        raise MaeprobeError(f"{other[0]}: not measured at --scale released (it needs pretraining runs); choose from "
                            f"{', '.join(RELEASED_FINDINGS)}")
    spec = SCALES[scale]
    seeds = integer("--seeds", spec.seeds if seeds is None else seeds, 1, 100)
    n_probe = integer("--probe-images", spec.probe_images if probe_images is None else probe_images, 2, 1_000_000)

    def say(line: str) -> None:
        if is_main():
            echo(line)

    check_paths(out=out, data=data, eval_data=eval_data)
    validate_device(device)
    _PROBES.clear()
    root = Path(out)
    needed = list(dict.fromkeys(r for i in ids for r in FINDINGS[i].runs))
    check_out_tree(root, ["runs", f"runs/{scale}", "findings", "figures", *(f"findings/{i}" for i in ids),
                          *(Path(run_config(name, spec, root, seed=seed, data=data, steps=steps)["run"]["output_dir"])
                            .relative_to(root) for name in (needed if spec.preset else ()) for seed in range(seeds))])
    # the report's files are checked with the folders, before any work: a file maeprobe did not write is refused
    check_outputs([root / "findings.csv", root / "findings.md", *([root / "commands.sh"] if scale == "base" else [])])
    device = device or default_device()
    base_runs = None
    if scale == "base":
        needed = list(dict.fromkeys(r for i in ids for r in FINDINGS[i].runs))
        base_runs = _base_runs(root, needed, seeds)
        if base_runs is None:  # not trained yet: the commands that train them and then measure them
            return _write_base(ids, root, say, seeds)
    reference = None
    if ref is not None and "decoder-semantic" in ids:
        from ..api import load_reference

        reference = load_reference(ref)
    settings = {"data": data, "eval-data": eval_data, "ref": ref, "steps": steps, "seeds": seeds,
                "probe-images": probe_images}
    if scale == "released":
        settings.pop("seeds")
        return _reproduce_released(ids, root, data, reference, ref, n_probe, device, say, settings)
    needed = list(dict.fromkeys(r for i in ids for r in FINDINGS[i].runs))
    smoke = " (a pipeline smoke test: models this small and short test the pipeline, not the papers)" \
        if scale == "tiny" else ""
    say(f"reproduce: {len(ids)} finding(s), {len(needed)} run(s) x {seeds} seed(s) at scale {scale}{smoke} -> {root}")
    tic_all = time.monotonic()
    # everything the measurements read is checked before the first training step: the probe set's memory, the
    # image files of --data and --eval-data (fingerprinted now, as training reads them)
    inputs = {"data": _folder_fingerprint(data), "eval_data": _folder_fingerprint(eval_data)}
    evalset, size = None, None
    if needed:
        from ..models.registry import PRESETS
        from .toydata import EvalSet, check_probe_set

        size = (_load(base_runs[needed[0]][0]).config.img_size if base_runs is not None
                else PRESETS[spec.preset]["img_size"])
        cost = check_probe_set(n_probe, size)
        say(f"probe set: {n_probe:,} images at {size} px, {cost / 2**20:,.1f} MiB in memory (one source image "
            "decoded at a time)")
        evalset = EvalSet(eval_data, size) if eval_data is not None else None
        check_inputs(root, data, evalset, size, inputs, say)
    runs: dict[str, list[Path]] = base_runs or {name: [] for name in needed}
    total = len(needed) * seeds
    for seed in range(seeds if base_runs is None else 0):
        for n, name in enumerate(needed, 1):
            count = seed * len(needed) + n
            runs[name].append(train(name, spec, root, seed=seed, data=data, steps=steps, device=device,
                                    echo=lambda line, c=count: say(f"[run {c}/{total}] {line}")))
    images, units = None, None
    results = []
    version = code_version()
    for n, finding_id in enumerate(ids, 1):
        finding = FINDINGS[finding_id]
        # reused only when the inputs' content and the code are the same: checkpoints by size + sha256, folders by
        # every file's path, size and modification time, and the source digest of maeprobe itself
        key = {"scale": scale, "runs": {r: [_run_digest(f) for f in runs[r]] for r in finding.runs},
               "data": [str(data), inputs["data"]], "eval_data": [str(eval_data), inputs["eval_data"]],
               "reference": ([str(ref), _reference_fingerprint(ref)] if finding_id == "decoder-semantic" else None),
               "probe_images": n_probe, "rule_version": rules.RULE_VERSION, "code": version.split(" (git")[0]}
        stored = _stored(root, finding_id, key)
        if stored is not None:
            say(f"[finding {n}/{len(ids)}] {finding_id}: {stored[0]['verdict']} (reused)")
            results += stored
            continue
        if images is None and finding.runs:
            from .toydata import EvalSet, probe_images as make_probe_images, probe_units

            images = make_probe_images(n_probe, size, seed=0, folder=data)
            units = probe_units(n_probe, data)
            evalset = evalset if evalset is not None else EvalSet(eval_data, size)
        tic = time.monotonic()
        measured = measure(finding_id, runs, images, reference=reference, evalset=evalset, device=device,
                           units=units)
        labels = {"runs": {r: [f.name for f in runs[r]] for r in finding.runs}, "scale": scale,
                  "data": str(data or "built-in photographs"),
                  "evalset": evalset.name if finding_id in ("ae-linear-probe", "local-decoders") else None,
                  "reference": _reference_name(reference) if reference is not None else None}
        results += _record(root, finding_id, key, measured, labels, scale)
        say(f"[finding {n}/{len(ids)}] {finding_id}: {measured.verdict.verdict} ({measured.verdict.detail}) "
            f"in {time.monotonic() - tic:.0f} s")
    settings["runtime"] = f"{(time.monotonic() - tic_all) / 60:.1f} min"
    settings["evalset"] = evalset.name if evalset is not None else None
    settings["code"] = version
    settings["units"] = len(set(units)) if units is not None else None
    return _write_report(results, root, scale, say, settings)


def code_version() -> str:
    """The code that measured: maeprobe's version, a digest of its source files (what a stored verdict is keyed
    on) and, when the package sits in a git checkout, the commit (and whether the tree had uncommitted
    changes)."""
    import hashlib
    import subprocess

    from .. import __version__

    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    text = f"maeprobe {__version__}, source sha256:{digest.hexdigest()[:12]}"
    try:
        run = dict(cwd=package, capture_output=True, text=True, timeout=5)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run)
        if commit.returncode == 0 and commit.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--", str(package)], **run).stdout.strip()
            text += f" (git {commit.stdout.strip()}{', uncommitted changes' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        pass
    return text


def _file_digest(path) -> str | None:
    """size + sha256 of a file (None when it does not exist): a replaced checkpoint changes the key."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.stat().st_size}:{digest.hexdigest()}"


def _walk_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (symbolic links to files included, linked folders not entered), sorted;
    an explicit stack, so that a folder nested thousands of levels deep is listed or refused with one line, never
    a RecursionError."""
    import stat

    files, stack = [], [folder]
    try:
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file() and stat.S_ISREG(entry.stat().st_mode):
                        files.append(Path(entry.path))
    except OSError as exc:
        raise MaeprobeError(f"{folder}: cannot list its files ({exc.strerror or type(exc).__name__}: "
                            f"{str(getattr(exc, 'filename', '') or '')[:120]}); expected a readable folder") from None
    return sorted(files)


def _folder_fingerprint(folder) -> str | None:
    """Every file's relative path, size and modification time under a folder, hashed (image folders can be
    large, so their bytes are not read); a file path gets its content digest. None for None."""
    import hashlib

    if folder is None:
        return None
    folder = Path(folder)
    if folder.is_file():
        return _file_digest(folder)
    if not folder.is_dir():
        return f"missing:{folder}"
    digest = hashlib.sha256()
    for path in _walk_files(folder):
        try:
            stat = path.stat()
        except OSError:  # removed while listed
            continue
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _run_digest(folder: Path) -> list:
    """What a measurement reads of a run folder, by content: the checkpoint it loads (``checkpoint-last.pth``),
    the recipe its control is rebuilt from (``config.yaml``) and the log the collapse note reads."""
    return [str(folder)] + [_file_digest(folder / name) for name in ("checkpoint-last.pth", "config.yaml", "log.csv")]


def _reference_fingerprint(ref) -> str | None:
    if ref is None:
        return None
    if hasattr(ref, "state_dict"):  # a loaded model: its weights, not its repr
        return f"model:{_state_digest(ref)}"
    if isinstance(ref, (str, Path)) and str(ref).lower() != "dino":
        return _folder_fingerprint(ref)
    if str(ref).lower() == "dino":
        from ..api import dino_candidates

        found = next((p for p in dino_candidates() if p.is_dir() or p.is_file()), None)
        return f"dino:{_folder_fingerprint(found)}" if found is not None else "dino:none"
    return str(ref)


_NUMBERS = ("measured", "ci_low", "ci_high", "control", "control_low", "control_high")
_TEXTS = ("claim", "paper", "unit", "detail", "measure", "scale")


def _valid_row(row, finding_id: str) -> bool:
    """A stored result row as ``_result_row`` writes it: this finding (or its superseded versions), a known
    verdict, numbers where numbers belong, bounded text, figures inside ``figures/``."""
    if not isinstance(row, dict) or row.get("finding") not in (finding_id, f"{finding_id}-v1", f"{finding_id}-v2"):
        return False
    if row.get("verdict") not in (rules.HOLDS, rules.FAILS, rules.INCONCLUSIVE, rules.SUPERSEDED):
        return False
    numbers = [row.get(k) for k in _NUMBERS] + [row.get("seeds"), row.get("rule_version")]
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in numbers):
        return False
    if any(not isinstance(row.get(k), str) or len(row[k]) > 20_000 for k in _TEXTS):
        return False
    figures = row.get("figures", [])
    return isinstance(row.get("amended_after_results"), bool) and isinstance(figures, list) and all(
        isinstance(f, str) and f.startswith("figures/") and ".." not in Path(f).parts and len(f) < 300
        for f in figures)


def _stored(root: Path, finding_id: str, key: dict) -> list[dict] | None:
    """The stored results of a finding measured on the same inputs (``key``), or None. ``verdict.json`` is read
    as untrusted input: bounded (``MAEPROBE_MAX_METADATA``), nesting of any depth, and rows that are not what
    this code writes, mean "not stored" (the finding is measured again and the file replaced)."""
    stored = root / "findings" / finding_id / "verdict.json"
    try:
        saved = json.loads(_small_text(stored, "a stored verdict")) if stored.is_file() else None
    except (MaeprobeError, OSError, ValueError, RecursionError):
        saved = None
    if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("results"), list) \
            or not saved["results"] or not all(_valid_row(r, finding_id) for r in saved["results"]):
        return None
    return saved["results"]


def _result_row(finding_id: str, verdict: rules.Verdict, scale: str, measure_text: str, figures=()) -> dict:
    finding = FINDINGS.get(finding_id.removesuffix("-v1").removesuffix("-v2"))
    return {"finding": finding_id, "claim": finding.claim, "paper": finding.paper, "measured": verdict.measured,
            "ci_low": verdict.ci_low, "ci_high": verdict.ci_high, "unit": verdict.unit, "control": verdict.control,
            "control_low": getattr(verdict, "control_low", np.nan),  # versions 1 and 2 kept no control interval
            "control_high": getattr(verdict, "control_high", np.nan),
            "verdict": verdict.verdict, "seeds": verdict.seeds, "rule_version": verdict.rule_version,
            "amended_after_results": bool(verdict.amended_after_results), "scale": scale, "detail": verdict.detail,
            "measure": measure_text, "figures": list(figures)}


def _record(root: Path, finding_id: str, key: dict, measured: Measured, labels: dict, scale: str) -> list[dict]:
    from .figures import finding_figure

    figures = finding_figure(finding_id, measured, labels, root / "figures")
    rows = [_result_row(finding_id, measured.verdict, scale, FINDINGS[finding_id].measure,
                        [str(p.relative_to(root)) for p in figures if p.suffix == ".png"])]
    rows += [_result_row(i, v, scale, text) for i, v, text in measured.superseded]
    if is_main():
        folder = root / "findings" / finding_id
        folder.mkdir(parents=True, exist_ok=True)
        if not measured.evidence.empty:
            from ..results import write_table

            write_table(measured.evidence, folder / "evidence.csv")
        write_text(folder / "verdict.json", json.dumps({"key": key, "results": rows}, indent=1, default=float))
    return rows


# ----------------------------------------------------------------------------- released checkpoints
def released_checkpoints() -> tuple[dict[str, tuple[Path, str]], list[str]]:
    """The released checkpoints found locally (or downloaded when online): role -> (path, label), and one
    text per missing role naming, for each file that serves, where to place it by hand and its download URL.

    A role's candidates (``suite.RELEASED``) are widened with the other names of the same weights
    (``hub.SAME_WEIGHTS``): DeiT's own ``deit_base_patch16_224-b5f2ef4d.pth`` in the torch hub cache serves as
    well as timm's ``timm/deit_base_patch16_224.fb_in1k`` snapshot."""
    from ..checkpoints.hub import equivalents, offline, placement, resolve

    found, missing = {}, []
    for role, label, listed in RELEASED:
        candidates = tuple(dict.fromkeys(name for c in listed for name in equivalents(c)))
        name, path = next(((c, p) for c in candidates if (p := _cached(c)) is not None), (None, None))
        if path is None and not offline():
            try:
                name, path = candidates[0], Path(resolve(candidates[0]))
            except MaeprobeError:
                name, path = None, None
        if path is not None:
            found[role] = (path, f"{label}: {name}")
            continue
        missing.append(f"{label}: {' or '.join(placement(c) for c in candidates)}")
    return found, missing


def _cached(name: str) -> Path | None:
    from ..checkpoints.hub import _from_snapshot, _snapshot, torch_cache

    if name.endswith(".pth"):
        path = torch_cache() / name
        return path if path.is_file() else None
    snapshot = _snapshot(name, "main")
    return _from_snapshot(snapshot) if snapshot is not None else None


def _reproduce_released(ids, root: Path, data, reference, ref, n_probe: int, device, say, settings) -> pd.DataFrame:
    from ..checkpoints import load
    from .toydata import probe_images as make_probe_images, probe_units

    found, missing = released_checkpoints()
    if missing:
        raise MaeprobeError("--scale released needs the public checkpoints; missing: " + "; ".join(missing)
                            + " (fetch them where the network is reachable, e.g. run once online, or place the files "
                            "there)")
    tic_all = time.monotonic()
    checkpoints = {r: [str(p), _file_digest(p) if Path(p).is_file() else _folder_fingerprint(p)]
                   for r, (p, _) in found.items()}
    models = {}
    for role, (path, label) in found.items():
        model = load(path)
        models[role] = (model, _release_label(label, model, checkpoints[role][1]))
    size = models["mae"][0].config.img_size
    if {"decoder-positional", "decoder-semantic"} & set(ids) and not models["mae"][0].config.decoder_depth:
        raise MaeprobeError(f"{models['mae'][1]}: {found['mae'][0]} holds no transformer decoder; the decoder findings "
                            "need MAE with its decoder (mae_pretrain_vit_base_full.pth or mae_visualize_vit_base.pth)")
    for role in ("dino", "deit"):  # compared with MAE at MAE's input size, resampled by the family's own rule
        model, label = models[role]
        if model.config.img_size != size:
            from ..models import resize_input

            try:
                resized = resize_input(model, size)
            except MaeprobeError as exc:
                raise MaeprobeError(f"{label}: cannot be compared with the MAE at its {size} px ({exc})") from None
            rule = getattr(getattr(model, "checkpoint", None), "pos_resample", "timm")
            models[role] = (resized, f"{label}; resampled from {model.config.img_size} px to MAE's {size} px "
                                     f"(position embedding: {rule})")
    if "decoder-semantic" in ids and reference is None:
        reference = models["dino"][0]
    if "decoder-semantic" in ids and reference is not None and size % reference.config.patch_size == 0 and \
            size // reference.config.patch_size != models["mae"][0].config.grid_size:
        raise MaeprobeError(f"the Eq. 8 reference ({_reference_name(reference)}) has patch "
                            f"{reference.config.patch_size}, the MAE patch {models['mae'][0].config.patch_size}: "
                            "Eq. 8 compares their patch grids position by position; use a reference of the same patch "
                            "size (--ref)")
    say(f"reproduce: {len(ids)} finding(s) on the released checkpoints -> {root}; "
        + "; ".join(label for _, label in models.values()))
    images = make_probe_images(n_probe, size, seed=0, folder=data)
    units = probe_units(n_probe, data)
    results = []
    version = code_version()
    data_key = [str(data), _folder_fingerprint(data)]
    for n, finding_id in enumerate(ids, 1):
        key = {"scale": "released", "checkpoints": checkpoints, "data": data_key,
               "reference": [str(ref), _reference_fingerprint(ref)], "probe_images": n_probe,
               "rule_version": rules.RULE_VERSION, "code": version.split(" (git")[0]}
        stored = _stored(root, finding_id, key)
        if stored is not None:
            say(f"[finding {n}/{len(ids)}] {finding_id}: {stored[0]['verdict']} (reused)")
            results += stored
            continue
        tic = time.monotonic()
        measured = measure_released(finding_id, models, images, reference=reference, device=device, units=units)
        labels = {"checkpoints": {r: label for r, (_, label) in models.items()}, "scale": "released",
                  "data": str(data or "built-in photographs"),
                  "reference": _reference_name(reference) if reference is not None else None}
        results += _record(root, finding_id, key, measured, labels, "released")
        say(f"[finding {n}/{len(ids)}] {finding_id}: {measured.verdict.verdict} ({measured.verdict.detail}) "
            f"in {time.monotonic() - tic:.0f} s")
    if is_main():
        _released_renders(models["mae"][0], data, root / "figures", say)
    settings["runtime"] = f"{(time.monotonic() - tic_all) / 60:.1f} min"
    settings["checkpoints"] = "; ".join(label for _, label in models.values())
    settings["code"] = version
    settings["units"] = len(set(units))
    return _write_report(results, root, "released", say, settings)


def _release_label(label: str, model, digest: str | None) -> str:
    """``label`` ('<role>: <file or hub name>') when the file's contents match that release
    (``originals.release_mismatch``: architecture, parameter count and, where the name carries it, the SHA-256
    prefix), else '<role>: file named like <name> but its contents do not match (why)': a random or other model
    stored under a release's name is never described as the release."""
    from ..checkpoints.originals import release_mismatch

    role, _, name = label.rpartition(": ")
    sha256 = digest.split(":", 1)[1] if isinstance(digest, str) and ":" in digest else None
    why = release_mismatch(name, model, sha256)
    return label if why is None else f"{role}: file named like {name} but its contents do not match ({why})"


def _released_renders(model, data, folder: Path, say) -> None:
    """Fig. 4-style decoder attention renders of the released MAE on the first two probe photographs."""
    from ..api import render_attention
    from ..data import builtin_images, find_images, open_image

    sources = [open_image(p) for p in find_images(data)[:2]] if data else [img for _, img in builtin_images()[:2]]
    for i, image in enumerate(sources):
        render_attention(model, image, folder / f"fig4-render-{i}", device="cpu")
    say(f"renders: {folder}/fig4-render-*.png")


# ----------------------------------------------------------------------------- the report
def _write_report(results: list[dict], root: Path, scale: str, say, settings: dict) -> pd.DataFrame:
    from ..results import write_table

    table = pd.DataFrame(results)
    for column in COLUMNS:
        if column not in table:
            table[column] = np.nan
    frame = table[COLUMNS]
    write_table(frame, root / "findings.csv")
    if is_main():
        write_text(root / "findings.md", report_markdown(table, scale, settings))
    record_outputs([root / "findings.csv", root / "findings.md"])
    counts = frame["verdict"].value_counts().to_dict()
    say(f"findings: {', '.join(f'{v} {k}' for k, v in counts.items())}; wrote {root / 'findings.csv'}, "
        f"{root / 'findings.md'}")
    return frame


STRENGTHS = (
    "Loss weights at this scale: MAE, AE(k), Gaussian and conv decoders as the paper (L_MAE alone); LC-MAE (c), (e), "
    "(g) with the paper's Table 1 weights (1 or 0 per loss); U-MAE with the paper-equivalent uniformity weight "
    "1.25e-5 (U-MAE's 1e-4 on 8 processes, recipes/umae_vit_b16.yaml; the tiny-umae recipe's own 0.01 is 800x "
    "stronger and is not used here).")


def deviations(scale: str, settings: dict) -> str:
    """The deviations from the paper's ViT-B/16 ImageNet recipes, read from what this scale and these settings
    actually train (the recipes resolved as ``train`` resolves them), not from fixed text."""
    from ..models.registry import PRESETS

    spec = SCALES[scale]
    mae = run_config("mae", spec, Path("."), steps=settings.get("steps"))
    lcmae = run_config("lcmae-c", spec, Path("."), steps=settings.get("steps"))
    arch = PRESETS[mae["model"]["preset"]]
    steps = [c["optim"]["epochs"] * STEPS_PER_EPOCH for c in (mae, lcmae)]
    data = settings.get("data") or "the built-in photographs"
    evalset = settings.get("evalset") or "the labelled set"
    return (f"Deviations from the paper's recipes, all of scale: {arch['img_size']} px inputs, patch "
            f"{arch['patch_size']}, width {arch['embed_dim']}, {arch['depth']} encoder blocks, global batch "
            f"{mae['optim']['global_batch']}, base lr {mae['optim']['base_lr']:g}, {steps[0]} steps per run "
            f"({steps[1]} for LC-MAE), LC-MAE projector {lcmae['lcmae']['proj_dim']} wide (the paper's 1024), {data} "
            f"instead of ImageNet, linear probes on {evalset} instead of ImageNet fine-tuning (Table 2: the paper "
            f"fine-tunes, a linear probe is a different, stricter protocol) or ImageNet linear probing (Table 3).")


def report_markdown(table: pd.DataFrame, scale: str, settings: dict) -> str:
    """The findings report: the table, each finding's measured quantity, controls, evidence and figures."""
    spec = SCALES[scale]
    shown = {k: v for k, v in settings.items()
             if v is not None and k not in ("runtime", "evalset", "checkpoints", "code", "units")}
    command = f"maeprobe reproduce --scale {scale}" + "".join(f" --{k} {v}" for k, v in shown.items())
    smoke = scale == "tiny"
    title = f"# Findings of the LC-MAE and U-MAE papers, scale `{scale}`" + (": a pipeline smoke test" if smoke else "")
    lines = [title, "", f"Generated by `{command}`" + (f" in {settings['runtime']}" if settings.get("runtime") else "")
             + "." + (f" Code: {settings['code']}." if settings.get("code") else "")]
    if smoke:
        lines += ["", "**A pipeline smoke test, not a test of the papers.** Models this small, trained this briefly on "
                  "a few photographs, check that every step runs and that the verdicts are honest about their power; "
                  "they cannot confirm or refute claims about ViT-B/16 on ImageNet. Use `--scale small` on a GPU or "
                  "`--scale released` for evidence."]
    units = settings.get("units")
    over = f"over the probe set's {units} independent source photos" if units else "over independent units"
    if scale == "released":
        unlike = (" Files named like a release whose contents do not match it are not that release: what is said "
                  "here of the released models does not apply to them." if "do not match" in str(settings.get(
                      "checkpoints")) else "")
        lines += ["", f"Checkpoints: {settings.get('checkpoints')}.{unlike} Probe set: {settings.get('probe-images') or spec.probe_images} "
                  f"images ({settings.get('data') or 'crops of the built-in photographs'}). The released models were "
                  "trained far longer than the paper's 100-epoch runs (MAE 1600 epochs, DINO 400, DeiT 300): judge the "
                  "shape of the curves, not their levels. Controls: random initial weights of MAE's architecture "
                  "(seed 0) and uniform attention; one training run per model, so the intervals are over the probe "
                  "set only, and the rules ask for one seed (the claims are about these published models)."]
    elif spec.preset:
        steps = [max(1, math.ceil(_run_steps(n, spec, settings.get("steps")) / STEPS_PER_EPOCH)) * STEPS_PER_EPOCH
                 for n in ("mae", "lcmae-c")]  # whole epochs of 10 steps, as trained
        lines += ["", f"Runs: {spec.preset}, global batch {spec.global_batch}, {steps[0]} "
                  f"steps per run ({steps[1]} for LC-MAE), "
                  f"{settings.get('seeds')} seed(s) per run; probe set {settings.get('probe-images') or spec.probe_images} "
                  f"images ({settings.get('data') or 'crops of the built-in photographs'}); labelled set for the probes: "
                  f"{settings.get('evalset') or '-'}.", "", STRENGTHS + " " + deviations(scale, settings)]
    lines += ["", f"Verdict rules: version {rules.RULE_VERSION}, `maeprobe/findings/rules.py` and the README, *Reproducing "
              f"the findings*. Intervals: 95%, {over} (bootstrap of whole photos, never of their crops as if "
              "independent; Wilson for accuracies) and across seeds (Student t), combined. A verdict needs "
              + ("one training run per model (the claims concern these published checkpoints; rules v3 ask our own "
                 f"runs for {rules.MIN_SEEDS} seeds)" if scale == "released" else f"at least {rules.MIN_SEEDS} seeds")
              + " and the trained model to differ from its controls (each run's same-seed "
              "initial weights, uniform attention, raw-pixel and random-encoder probes); otherwise it is "
              "*inconclusive*. The control column holds the headline quantity measured on the control.",
              "", "Rule changes made after results had been seen (all disclosed):", ""]
    lines += [f"- {text}" for text in rules.AMENDMENTS]
    current = table[table["verdict"] != rules.SUPERSEDED]
    superseded = table[table["verdict"] == rules.SUPERSEDED]
    lines += ["", "| finding | claim | measured [95% CI] | unit | control [95% CI] | seeds | rule | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for row in current.itertuples():
        lines.append(_table_line(row))
    if not superseded.empty:
        lines += ["", "Superseded rules, applied to the same evidence (reported, not judged):", "",
                  "| finding | claim | measured [95% CI] | unit | control [95% CI] | seeds | rule | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [_table_line(row) for row in superseded.itertuples()]
    lines.append("")
    for row in table.itertuples():
        lines += [f"## `{row.finding}`: {row.verdict}", "", f"*{row.claim}* ({row.paper}).", "",
                  f"Measured: {row.measure}. Headline: {row.unit}.", "", f"{row.detail}", ""]
        figures = getattr(row, "figures", None)
        for figure in figures if isinstance(figures, list) else []:
            lines += [f"![{row.finding}]({figure})", ""]
    return "\n".join(lines) + "\n"


def _table_line(row) -> str:
    def interval(value, low, high) -> str:
        if pd.isna(value):
            return "-"
        return f"{value:.3g}" + ("" if pd.isna(low) else f" [{low:.3g}, {high:.3g}]")

    rule = f"v{row.rule_version}" + (" (amended after results)" if row.amended_after_results else "")
    control = interval(row.control, getattr(row, "control_low", np.nan), getattr(row, "control_high", np.nan))
    return (f"| `{row.finding}` | {row.claim} ({row.paper}) | {interval(row.measured, row.ci_low, row.ci_high)} | "
            f"{row.unit} | {control} | {row.seeds} | {rule} | **{row.verdict}** |")


def _write_base(ids: list[str], root: Path, say, seeds: int = 3) -> pd.DataFrame:
    commands = _base_commands(ids, root, seeds)
    if is_main():
        write_text(root / "commands.sh", "#!/usr/bin/env bash\n# maeprobe reproduce --scale base: the paper's runs "
                   "(ViT-B/16, ImageNet-1K, 8 GPUs). Set IMAGENET first.\nset -euo pipefail\n"
                   + "\n".join(commands) + "\n")
        record_outputs([root / "commands.sh"])
    say("scale base: the paper's ViT-B/16 ImageNet runs on 8 GPUs are not run here; launch them with:")
    for line in commands:
        say(f"  {line}")
    results = [_result_row(i, rules.Verdict(np.nan, np.nan, np.nan, rules.INCONCLUSIVE,
                                            f"not run: train with {root / 'commands.sh'}, then measure the checkpoints",
                                            unit="", seeds=0), "base", FINDINGS[i].measure) for i in ids]
    return _write_report(results, root, "base", say, {})
