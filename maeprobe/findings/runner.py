"""``maeprobe reproduce``: train what the findings need through the recipe engine, measure, apply each verdict
rule, write ``findings.csv``, ``findings.md`` and the figures.

Finished runs are reused (a run's folder is named by its step count), interrupted ones resume where they
stopped (the engine's exact resume), and a finding whose evidence is stored for the same settings is not
measured again. Under torch.distributed every process trains and measures; rank 0 prints and writes.

The loop only iterates the catalogue (``catalogue/``, one module per finding); the parts live beside it: the runs
(``runs``), the findings' own measurements (``measures``), the shared evidence patterns (``evidence``), the
checks made before anything runs (``checks``), the stored results and their keys (``store``, ``fingerprints``),
the released checkpoints (``released``), ``--scale base`` (``base``) and the report (``reporting``).
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from ..distributed import is_main
from ..errors import MaeprobeError
from ..io import check_outputs
from . import rules
from .base import _base_commands, _base_folder, _base_runs, _write_base  # noqa: F401  (re-exported)
from .catalogue import FINDINGS, RELEASED_FINDINGS
from .checks import CHECKED, NAME_MAX, PATH_MAX, check_inputs, check_out_tree, check_paths  # noqa: F401
from .evidence import _PROBES, Inputs, _cached_probe, _rows  # noqa: F401
from .finding import Measured
from .fingerprints import (  # noqa: F401
    _file_digest,
    _folder_fingerprint,
    _reference_fingerprint,
    _run_digest,
    _walk_files,
    code_version,
)
from .measures import (  # noqa: F401
    BOOTSTRAP,
    PIXEL_SIDE,
    _cls_rank,
    _mean_over_heads,
    _reference_name,
    _state_digest,
    _uniform_of,
    _units,
    encoder_spread_ratio,
    linear_probe,
    output_spread,
    pixel_probe,
    random_like,
)
from .released import (  # noqa: F401
    _cached,
    _release_label,
    _released_renders,
    check_distinct,
    load_released,
    released_checkpoints,
    resize_to_mae,
)
from .reporting import COLUMNS, STRENGTHS, _table_line, _write_report, deviations, report_markdown  # noqa: F401
from .runs import (  # noqa: F401
    STEPS_PER_EPOCH,
    _check_checkpoint,
    _check_reusable,
    _flat_config,
    _load,
    _run_steps,
    _small_text,
    final_loss_parts,
    initial_weights,
    recipe_dir,
    run_config,
    saved_config,
    train,
)
from .store import _record, _result_row, _stored, _valid_row  # noqa: F401
from .suite import ROLES, SCALES


def list_findings() -> pd.DataFrame:
    """The findings with their claims, papers and what is measured."""
    return pd.DataFrame([{"finding": f.id, "claim": f.claim, "paper": f.paper, "measure": f.measure}
                         for f in FINDINGS.values()])


def measure(finding_id: str, runs: dict[str, list[Path]], images: torch.Tensor, *, reference=None,
            evalset=None, device: str = "cpu", units=None) -> Measured:
    """Measure one finding on trained runs (``runs[name][seed]``) and each run's own same-seed initial weights;
    apply its rule (version 3) and, on the same evidence, version 2's (reported as superseded).

    ``units``: the independent unit (source photo) of every probe image, which the intervals resample (None:
    each image its own unit)."""
    units = _units(images, units)
    if finding_id not in FINDINGS:
        raise MaeprobeError(f"unknown finding {finding_id!r}")
    return FINDINGS[finding_id].on_runs(runs, Inputs(images, units, reference, evalset, device))


def measure_released(finding_id: str, models: dict, images: torch.Tensor, *, reference=None,
                     device: str = "cpu", units=None) -> Measured:
    """A finding on the released checkpoints (``models[role] = (model, label)``), with random initial weights
    of MAE's architecture (seed 0) and uniform attention as the controls; one training run per model, so the
    intervals are over the probe set's independent units (``units``) only, and the rules ask for one seed: the
    claim is about these published models."""
    units = _units(images, units)
    finding = FINDINGS.get(finding_id)
    if finding is None or finding.on_released is None:
        raise MaeprobeError(f"{finding_id}: not measured at --scale released (it needs pretraining runs); choose "
                            f"from {', '.join(RELEASED_FINDINGS)}")
    return finding.on_released(models, Inputs(images, units, reference, None, device))


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
    from ..validate import device as validate_device
    from ..validate import integer

    if scale not in SCALES:
        raise MaeprobeError(f"unknown scale {scale!r}; choose tiny, small, released or base")
    default_ids = [i for i, finding in FINDINGS.items() if scale in finding.scales]
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
    if ref is not None and any(FINDINGS[i].needs_reference for i in ids):
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
               "reference": ([str(ref), _reference_fingerprint(ref)] if finding.needs_reference else None),
               "probe_images": n_probe, "rule_version": rules.RULE_VERSION, "code": version.split(" (git")[0]}
        stored = _stored(root, finding_id, key)
        if stored is not None:
            say(f"[finding {n}/{len(ids)}] {finding_id}: {stored[0]['verdict']} (reused)")
            results += stored
            continue
        if images is None and finding.runs:
            from .toydata import EvalSet, probe_units
            from .toydata import probe_images as make_probe_images

            images = make_probe_images(n_probe, size, seed=0, folder=data)
            units = probe_units(n_probe, data)
            evalset = evalset if evalset is not None else EvalSet(eval_data, size)
        tic = time.monotonic()
        measured = measure(finding_id, runs, images, reference=reference, evalset=evalset, device=device,
                           units=units)
        labels = {"runs": {r: [f.name for f in runs[r]] for r in finding.runs}, "scale": scale,
                  "data": str(data or "built-in photographs"),
                  "evalset": evalset.name if finding.needs_labels else None,
                  "reference": _reference_name(reference) if reference is not None else None}
        results += _record(root, finding_id, key, measured, labels, scale)
        say(f"[finding {n}/{len(ids)}] {finding_id}: {measured.verdict.verdict} ({measured.verdict.detail}) "
            f"in {time.monotonic() - tic:.0f} s")
    settings["runtime"] = f"{(time.monotonic() - tic_all) / 60:.1f} min"
    settings["evalset"] = evalset.name if evalset is not None else None
    settings["code"] = version
    settings["units"] = len(set(units)) if units is not None else None
    return _write_report(results, root, scale, say, settings)


def _reproduce_released(ids, root: Path, data, reference, ref, n_probe: int, device, say, settings) -> pd.DataFrame:
    """``reproduce --scale released``: the findings with evidence there (``Finding.on_released``), measured on the
    public checkpoints against random initial weights of MAE's architecture."""
    from .toydata import probe_images as make_probe_images
    from .toydata import probe_units

    roles = [role for role in ROLES if any(role in FINDINGS[i].released_roles for i in ids)]
    found, missing = released_checkpoints(roles)
    if missing:
        raise MaeprobeError("--scale released needs the public checkpoints; missing: " + "; ".join(missing)
                            + " (fetch them where the network is reachable, e.g. run once online, or place the files "
                            "there)")
    tic_all = time.monotonic()
    models, checkpoints = load_released(found)
    size = models["mae"][0].config.img_size
    if any(FINDINGS[i].needs_decoder for i in ids) and not models["mae"][0].config.decoder_depth:
        raise MaeprobeError(f"{models['mae'][1]}: {found['mae'][0]} holds no transformer decoder; the decoder findings "
                            "need MAE with its decoder (mae_pretrain_vit_base_full.pth or mae_visualize_vit_base.pth)")
    check_distinct(found, checkpoints)  # after the decoder check: an encoder-only MAE file is named as such first
    resize_to_mae(models, size)
    semantic = any(FINDINGS[i].needs_reference for i in ids)
    if semantic and reference is None:
        reference = models["dino"][0]
    if semantic and reference is not None and size % reference.config.patch_size == 0 and \
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
        used = FINDINGS[finding_id].released_roles  # a finding's stored result is keyed on the checkpoints it reads
        key = {"scale": "released", "checkpoints": {r: checkpoints[r] for r in roles if r in used}, "data": data_key,
               "reference": [str(ref), _reference_fingerprint(ref)], "probe_images": n_probe,
               "rule_version": rules.RULE_VERSION, "code": version.split(" (git")[0]}
        stored = _stored(root, finding_id, key)
        if stored is not None:
            say(f"[finding {n}/{len(ids)}] {finding_id}: {stored[0]['verdict']} (reused)")
            results += stored
            continue
        tic = time.monotonic()
        measured = measure_released(finding_id, models, images, reference=reference, device=device, units=units)
        labels = {"checkpoints": {r: label for r, (_, label) in models.items() if r in used}, "scale": "released",
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
