"""``mask-ratio-distance``: attention distance grows with the pretraining mask ratio, more in deeper layers
(LC-MAE Fig. 6, Section 4.2).

Evidence: the mean attention distance per encoder layer (``maeprobe.attention_distance``, averaged over heads) of
each seed's MAE at mask ratios 0.3 ... 0.9 and of each run's same-seed initial weights, beside the level of
uniform attention.
"""
from __future__ import annotations

import pandas as pd

from .. import rules, rules_v2
from ..evidence import _rows, conditions
from ..finding import Finding, Measured, adapted, one_init_per_seed
from ..measures import _mean_over_heads, _uniform_of


def _mask_ratio(name: str) -> float:
    """The mask ratio a run was pretrained with: ``mae`` at 0.75, ``mae-mask<percent>`` at its own."""
    return 0.75 if name == "mae" else int(name.removeprefix("mae-mask")) / 100


def on_runs(runs: dict, inputs) -> Measured:
    import maeprobe

    rows, uniform = [], None
    for name, seed, condition, model in conditions(runs, FINDING.runs):
        uniform = _uniform_of(model)
        table = _mean_over_heads(maeprobe.attention_distance(model, inputs.images, **inputs.common))
        rows += _rows(table, extra=("n_units",), condition=condition, seed=seed, mask_ratio=_mask_ratio(name))
    return FINDING.judged(pd.DataFrame(rows), uniform, figure={"uniform": uniform})


FINDING = Finding(
    "mask-ratio-distance", "attention distance grows with the pretraining mask ratio, more in deeper "
    "layers", "LC-MAE Fig. 6, Section 4.2", ("mae-mask30", "mae-mask45", "mae-mask60", "mae", "mae-mask90"),
    "mean attention distance in pixels per encoder layer (unmasked probe) for mask ratios 0.3 ... 0.9; "
    "headline: the mean over layers at 0.9 minus at 0.3, px",
    rule=rules.mask_ratio_rule, rule_v2=adapted(rules_v2.mask_ratio_rule, one_init_per_seed("mask_ratio")),
    on_runs=on_runs, figure="distance")
