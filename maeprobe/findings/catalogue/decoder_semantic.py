"""``decoder-semantic``: semantic similarity to a reference (Eq. 8) rises with decoder depth (LC-MAE Fig. 3,
Section 4.1).

Evidence: Eq. 8 per decoder layer (``maeprobe.decoder_semantic_similarity``) against the reference (``--ref``;
at ``--scale released`` the released DINO) of each seed's MAE and of its same seed's initial weights; on the
released MAE, against random weights of its architecture. Without a reference it is inconclusive.
"""
from __future__ import annotations

import pandas as pd

from .. import rules, rules_v2
from ..evidence import _rows, conditions, released_conditions
from ..finding import Finding, Measured
from ..measures import _reference_name
from .decoder_positional import EXTRA


def _eq8(models, inputs) -> pd.DataFrame:
    """Eq. 8 per layer of every (seed, condition, model), with the reference's name."""
    import maeprobe

    rows = []
    for seed, condition, model in models:
        table = maeprobe.decoder_semantic_similarity(model, inputs.reference, inputs.images, **inputs.common)
        rows += _rows(table, extra=EXTRA, condition=condition, seed=seed)
    evidence = pd.DataFrame(rows)
    evidence["reference"] = _reference_name(inputs.reference)
    return evidence


def on_runs(runs: dict, inputs) -> Measured:
    if inputs.reference is None:
        return Measured(pd.DataFrame(), rules.semantic_rule(None))
    return FINDING.judged(_eq8(((seed, c, model) for _, seed, c, model in conditions(runs, FINDING.runs)), inputs))


def on_released(models: dict, inputs) -> Measured:
    return FINDING.judged(_eq8(((0, c, model) for c, model in released_conditions(models)), inputs), min_seeds=1)


FINDING = Finding(
    "decoder-semantic", "semantic similarity to a reference (Eq. 8) rises with decoder depth",
    "LC-MAE Fig. 3, Section 4.1", ("mae",),
    "Eq. 8 (S_sim, unitless, 0-1) per decoder layer against the reference (CutLER convention: keys, "
    "W > 0.15); headline: last layer minus first",
    rule=rules.semantic_rule, rule_v2=rules_v2.semantic_rule, on_runs=on_runs, on_released=on_released,
    figure="profile", axis="S_sim, Eq. 8 (unitless)", needs_reference=True, needs_decoder=True)
