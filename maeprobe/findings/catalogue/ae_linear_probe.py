"""``ae-linear-probe``: AE linear probing is far below MAE's (LC-MAE Table 3).

Evidence: the linear-probe top-1 (``measures.linear_probe``: the frozen CLS feature on the labelled set) of each
seed's MAE and AE(k), each beside its own same-seed initial weights, with the random-encoder and raw-pixel
probes as controls (``evidence.probe_rows``).
"""
from __future__ import annotations

import pandas as pd

from .. import rules, rules_v2
from ..evidence import probe_rows
from ..finding import Finding, Measured, adapted, without_run_inits
from ..suite import AE_BLOCKS


def on_runs(runs: dict, inputs) -> Measured:
    labels = {name: name for name in FINDING.runs}  # AE runs are relabelled ae<k> by their block side in px
    return FINDING.judged(pd.DataFrame(probe_rows(runs, labels, inputs, block_sides=AE_BLOCKS)))


FINDING = Finding(
    "ae-linear-probe", "AE linear probing is far below MAE's", "LC-MAE Table 3", ("mae", "ae1", "ae3", "ae5", "ae7"),
    "linear-probe top-1 (%) of the frozen CLS feature on the labelled set; headline: best AE / MAE (ratio)",
    rule=rules.linear_probe_rule, rule_v2=adapted(rules_v2.linear_probe_rule, without_run_inits), on_runs=on_runs,
    figure="accuracy", needs_labels=True)
