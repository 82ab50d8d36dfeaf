"""The evidence patterns the findings share, written once: across runs (one run folder per seed), trained vs the
same seed's initial weights (the control of every trained finding), the linear probes with their controls, and
the released checkpoints against random initial weights of MAE's architecture."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch

from .measures import BOOTSTRAP, _state_digest, linear_probe, pixel_probe, random_like
from .runs import _load, initial_weights


@dataclass
class Inputs:
    """What every finding measures on: the probe images (``[N, 3, H, W]``), their independent units (the source
    photo of every image, ``[N]`` integers), the Eq. 8 reference, the labelled set and the device."""

    images: torch.Tensor
    units: torch.Tensor
    reference: object = None
    evalset: object = None
    device: str = "cpu"

    @property
    def common(self) -> dict:
        """The options every registered metric is called with: the bootstrap over the probe set's units."""
        return dict(bootstrap=BOOTSTRAP, device=self.device, resample_by=self.units.tolist())


def across_runs(runs: dict, name: str) -> list[tuple[int, Path]]:
    """Across runs: (seed, run folder) of every independently trained run of ``name`` (``runs[name][seed]``)."""
    return list(enumerate(runs[name]))


def trained_and_initial(runs: dict, names) -> Iterator[tuple[str, int, Path, object, object]]:
    """Trained vs the same seed's initial weights: (run name, seed, folder, trained model, initial model) for every
    seed of every run in ``names``; the initial weights are rebuilt from the run's saved recipe
    (``initial_weights``), so they are exactly those its training started from."""
    for name in names:
        for seed, folder in across_runs(runs, name):
            yield name, seed, folder, _load(folder), initial_weights(folder).model


def conditions(runs: dict, names) -> Iterator[tuple[str, int, str, object]]:
    """``trained_and_initial`` one model at a time: (run name, seed, ``'trained'`` or ``'init'``, model)."""
    for name, seed, _, trained, init in trained_and_initial(runs, names):
        yield name, seed, "trained", trained
        yield name, seed, "init", init


def released_conditions(models: dict) -> tuple[tuple[str, object], tuple[str, object]]:
    """The released MAE (``models['mae']``) and its control, random initial weights of its architecture (seed 0):
    a released checkpoint has no initial weights of its own."""
    mae = models["mae"][0]
    return ("trained", mae), ("init", random_like(mae))


def _rows(table: pd.DataFrame, keys=("layer",), extra=(), **labels) -> list[dict]:
    """A metric's table as evidence rows: ``labels`` first, then ``keys``, the value and its interval, ``extra``."""
    return [{**labels, **{k: r[k] for k in keys}, "value": r["value"], "ci_low": r["ci_low"],
             "ci_high": r["ci_high"], **{k: r[k] for k in extra if k in r}} for r in table.to_dict("records")]


# (encoder content, labelled set) -> probe result: one fit per distinct encoder and set. The set is the EvalSet
# object itself (identity, not its name: a folder whose images changed between two calls is another set), and
# ``reproduce`` empties the cache at its start.
_PROBES: dict = {}


def _cached_probe(folder: Path, condition: str, evalset, device) -> dict:
    """The linear probe of a run's trained (``condition='trained'``) or initial encoder, fitted once per content."""
    model = _load(folder) if condition == "trained" else initial_weights(folder).model
    key = (_state_digest(model, encoder_only=True), evalset)
    if key not in _PROBES:  # an AE(k)'s initial encoder is MAE's at the same seed: probed once
        _PROBES[key] = linear_probe(model, evalset, device=device)
    return _PROBES[key]


def probe_rows(runs: dict, labels: dict, inputs: Inputs, block_sides=()) -> list[dict]:
    """Linear probes of every seed of the runs in ``labels`` (run name -> model label), each beside its own
    same-seed initial weights (``init:<label>``; MAE's are the ``random`` rows), and the raw-pixel baseline.
    Runs in ``block_sides`` are labelled ``ae<k>`` by their predicted block side in pixels, as AE(k) in the paper."""
    rows = []
    evalset, device = inputs.evalset, inputs.device
    for name, label in labels.items():
        for seed, folder in across_runs(runs, name):
            if name in block_sides:
                label = f"ae{_load(folder).config.pred_size or _load(folder).config.patch_size}"
            rows.append({"model": label, "seed": seed, **_cached_probe(folder, "trained", evalset, device)})
            if name != "mae":  # each run's own initial weights (MAE's are the 'random' rows below)
                rows.append({"model": f"init:{label}", "seed": seed, **_cached_probe(folder, "init", evalset, device)})
    for seed, folder in across_runs(runs, "mae"):
        rows.append({"model": "random", "seed": seed, **_cached_probe(folder, "init", evalset, device)})
    key = ("pixels", evalset)
    _PROBES[key] = _PROBES.get(key) or pixel_probe(evalset)
    rows.append({"model": "pixels", "seed": 0, **_PROBES[key]})
    return rows
