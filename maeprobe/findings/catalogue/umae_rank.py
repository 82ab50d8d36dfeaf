"""``umae-rank``: the uniformity term reduces dimensional collapse (U-MAE, How Mask Matters, Section 5).

Evidence: the effective rank of the encoder's CLS feature (``maeprobe.feature_spectrum``) of each seed's U-MAE
and MAE, each beside its own same-seed initial weights (MAE's are the ``init`` rows).
"""
from __future__ import annotations

import pandas as pd

from .. import rules, rules_v2
from ..evidence import conditions
from ..finding import Finding, Measured, adapted, without_run_inits
from ..measures import _cls_rank


def _label(name: str, condition: str) -> str:
    """The evidence's model label: the run, or its initial weights (``init`` for MAE's, ``init:<run>`` else)."""
    if condition == "trained":
        return name
    return "init" if name == "mae" else f"init:{name}"


def on_runs(runs: dict, inputs) -> Measured:
    rows = [{"model": _label(name, condition), "seed": seed, **_cls_rank(model, inputs.images, inputs.common)}
            for name, seed, condition, model in conditions(runs, FINDING.runs)]
    return FINDING.judged(pd.DataFrame(rows))


FINDING = Finding(
    "umae-rank", "the uniformity term reduces dimensional collapse", "U-MAE (How Mask Matters), Section 5",
    ("umae", "mae"), "effective rank (exp of the spectral entropy, in dimensions) of the encoder's CLS "
    "feature; headline: U-MAE minus MAE, dimensions",
    rule=rules.umae_rank_rule, rule_v2=adapted(rules_v2.umae_rank_rule, without_run_inits), on_runs=on_runs,
    figure="rank")
