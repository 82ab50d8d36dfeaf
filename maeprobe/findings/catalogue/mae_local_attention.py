"""``mae-local-attention``: MAE's attention distance is significantly smaller than DINO's and DeiT's (LC-MAE
Fig. 5, Section 4.1).

Evidence, at ``--scale released`` only (it compares the released MAE with DINO and DeiT, whose recipes are not
part of the pretraining suite): the mean attention distance per encoder layer (``maeprobe.attention_distance``,
averaged over heads) of the released MAE, DINO and DeiT ViT-B/16 and of random weights of MAE's architecture,
beside the level of uniform attention.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import rules, rules_v2
from ..evidence import _rows, released_conditions
from ..finding import Finding, Measured
from ..measures import _mean_over_heads, _uniform_of

UNIT = "attention distance (px), D(MAE) - min(D(DINO), D(DeiT))"


def on_runs(runs: dict, inputs) -> Measured:
    """Inconclusive: there are no runs of DINO and DeiT to compare with."""
    return Measured(pd.DataFrame(), rules.Verdict(
        np.nan, np.nan, np.nan, rules.INCONCLUSIVE, "measured at --scale released only: it compares the released "
        "MAE with DINO and DeiT, whose recipes are not part of the pretraining suite", np.nan, UNIT, 0))


def on_released(models: dict, inputs) -> Measured:
    import maeprobe

    (_, mae), (_, init) = released_conditions(models)
    rows = []
    for role, model in (("mae", mae), ("dino", models["dino"][0]), ("deit", models["deit"][0]), ("init", init)):
        table = _mean_over_heads(maeprobe.attention_distance(model, inputs.images, **inputs.common))
        rows += _rows(table, model=role, seed=0)
    uniform = _uniform_of(mae)
    return FINDING.judged(pd.DataFrame(rows), uniform, figure={"uniform": uniform})


FINDING = Finding(
    "mae-local-attention", "MAE's attention distance is significantly smaller than DINO's and DeiT's",
    "LC-MAE Fig. 5, Section 4.1", (),
    "mean attention distance in pixels (over layers and heads, unmasked probe) of the released MAE, DINO "
    "and DeiT ViT-B/16 encoders; headline: MAE minus the smaller of DINO and DeiT, px",
    rule=rules.local_attention_rule, rule_v2=rules_v2.local_attention_rule, on_runs=on_runs,
    on_released=on_released, figure="models")
