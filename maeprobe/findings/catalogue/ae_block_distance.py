"""``ae-block-distance``: AE(k) attention distance grows with k; AE(patch size) is the smallest (LC-MAE Fig. A.1,
Appendix A).

Evidence: the mean attention distance per encoder layer (``maeprobe.attention_distance``, averaged over heads) of
each seed's AE(k), k = 1, 3, 5, 7 patches, and of each run's same-seed initial weights, beside the level of
uniform attention.
"""
from __future__ import annotations

import pandas as pd

from .. import rules, rules_v2
from ..evidence import _rows, conditions
from ..finding import Finding, Measured, adapted, one_init_per_seed
from ..measures import _mean_over_heads, _uniform_of


def on_runs(runs: dict, inputs) -> Measured:
    import maeprobe

    rows, uniform = [], None
    for _, seed, condition, model in conditions(runs, FINDING.runs):
        uniform = _uniform_of(model)
        k = model.config.pred_size or model.config.patch_size  # the predicted block side, px
        table = _mean_over_heads(maeprobe.attention_distance(model, inputs.images, **inputs.common))
        rows += _rows(table, extra=("n_units",), condition=condition, seed=seed, k=k)
    return FINDING.judged(pd.DataFrame(rows), uniform, figure={"uniform": uniform})


FINDING = Finding(
    "ae-block-distance", "AE(k) attention distance grows with k; AE(patch size) is the smallest",
    "LC-MAE Fig. A.1, Appendix A", ("ae1", "ae3", "ae5", "ae7"),
    "mean attention distance in pixels (over layers and heads) of AE(k), k = 1, 3, 5, 7 patches "
    "(AE(16/48/80/112) at patch 16); headline: largest k minus AE(patch), px",
    rule=rules.ae_distance_rule, rule_v2=adapted(rules_v2.ae_distance_rule, one_init_per_seed("k")),
    on_runs=on_runs, figure="ae")
