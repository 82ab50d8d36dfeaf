"""``decoder-positional``: decoder attention similarity (Eq. 7) is highest at decoder layer 1, the first two layers
above the rest (LC-MAE Fig. 2, Section 4.1).

Evidence: Eq. 7 per decoder layer (``maeprobe.decoder_attention_similarity``) of each seed's MAE and of its same
seed's initial weights; on the released MAE, against random weights of its architecture.
"""
from __future__ import annotations

import pandas as pd

from .. import rules, rules_v2
from ..evidence import _rows, conditions, released_conditions
from ..finding import Finding, Measured

EXTRA = ("w_density", "ref_w_density", "n_units")  # the evidence's columns beside the value and its interval


def _eq7(models, inputs) -> pd.DataFrame:
    """Eq. 7 per layer of every (seed, condition, model)."""
    import maeprobe

    rows = []
    for seed, condition, model in models:
        table = maeprobe.decoder_attention_similarity(model, inputs.images, **inputs.common)
        rows += _rows(table, extra=EXTRA, condition=condition, seed=seed)
    return pd.DataFrame(rows)


def on_runs(runs: dict, inputs) -> Measured:
    evidence = _eq7(((seed, c, model) for _, seed, c, model in conditions(runs, FINDING.runs)), inputs)
    return FINDING.judged(evidence, figure={"uniform": rules.EQ7_UNIFORM})


def on_released(models: dict, inputs) -> Measured:
    evidence = _eq7(((0, c, model) for c, model in released_conditions(models)), inputs)
    return FINDING.judged(evidence, min_seeds=1, figure={"uniform": rules.EQ7_UNIFORM})


FINDING = Finding(
    "decoder-positional", "decoder attention similarity (Eq. 7) is highest at decoder layer 1, the first "
    "two layers above the rest", "LC-MAE Fig. 2, Section 4.1", ("mae",),
    "Eq. 7 (cosine similarity of decoder attention maps across images, unitless) per layer of an 8-layer "
    "decoder under one shared 0.75 mask; headline: mean of layers 1-2 minus the mean of the later layers",
    rule=rules.positional_rule, rule_v2=rules_v2.positional_rule, on_runs=on_runs, on_released=on_released,
    figure="profile", axis="S_attn, Eq. 7 (cosine, unitless)", needs_decoder=True)
