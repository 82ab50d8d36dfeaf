"""``local-decoders``: Gaussian weighted-average and conv decoders come close to the transformer decoder (LC-MAE
Table 2, Section 4.1).

Evidence: the linear-probe top-1 (``measures.linear_probe``: the frozen CLS feature on the labelled set) of each
seed's MAE with the transformer, Gaussian and conv decoders, each beside its own same-seed initial weights, with
the random-encoder and raw-pixel probes as controls (``evidence.probe_rows``). The paper fine-tunes on ImageNet:
a different protocol.
"""
from __future__ import annotations

import pandas as pd

from .. import rules, rules_v2
from ..evidence import probe_rows
from ..finding import Finding, Measured, adapted, without_run_inits

DECODERS = {"mae": "transformer", "mae-gaussian": "gaussian", "mae-conv": "conv"}  # run -> the decoder it tests


def on_runs(runs: dict, inputs) -> Measured:
    return FINDING.judged(pd.DataFrame(probe_rows(runs, DECODERS, inputs)))


FINDING = Finding(
    "local-decoders", "Gaussian weighted-average and conv decoders come close to the transformer decoder",
    "LC-MAE Table 2, Section 4.1", tuple(DECODERS),
    "linear-probe top-1 (%) of the frozen encoder on the labelled set for the three decoders (the paper "
    "fine-tunes on ImageNet: a different protocol); headline: transformer minus the worst local decoder, "
    "percentage points",
    rule=rules.local_decoders_rule, rule_v2=adapted(rules_v2.local_decoders_rule, without_run_inits),
    on_runs=on_runs, figure="accuracy", needs_labels=True)
