"""``lcmae-collapse``: L_cross alone collapses the encoder to a constant; with L_in or L_MAE it does not (LC-MAE
Table 1, Section 3.3).

Evidence: the across-image spread of the encoder's output (``measures.encoder_spread_ratio``) of each seed's
LC-MAE run in settings (c), (e) and (g), as a ratio to the same seed's initial weights. Beside it, not judged:
version 1's spread of the projected outputs v (``measures.output_spread``), reported as superseded, and the
final L_cross of each setting.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from .. import rules, rules_v2
from ..evidence import trained_and_initial
from ..finding import Finding, Measured
from ..measures import encoder_spread_ratio, output_spread
from ..runs import final_loss_parts

SETTINGS = "ceg"


def on_runs(runs: dict, inputs) -> Measured:
    """Version 3 on the encoder's spread ratios; version 2 on the same ratios and version 1 on v's spread, both
    superseded."""
    images, units, device = inputs.images, inputs.units, inputs.device
    ratios, v1, notes = [], [], {}
    for setting in SETTINGS:
        for _, seed, folder, trained, init in trained_and_initial(runs, [f"lcmae-{setting}"]):
            ratios += [{"setting": setting, "seed": seed, **r}
                       for r in encoder_spread_ratio(trained, init, images, device=device, units=units)]
            v1.append({"setting": setting, "seed": seed, **output_spread(folder, images, device=device, units=units)})
            notes.setdefault(setting, []).append(final_loss_parts(folder).get("loss_cross", float("nan")))
    evidence, old = pd.DataFrame(ratios), pd.DataFrame(v1)
    measured = FINDING.judged(evidence)
    beside = "; ".join(
        f"({s}) spread of v {old[old.setting == s]['value'].mean():.3f}, "
        f"of h {old[old.setting == s]['h_value'].mean():.3f}, "
        f"final L_cross {np.nanmean(notes[s]):.4f}" for s in SETTINGS)
    measured.verdict = replace(measured.verdict, detail=f"{measured.verdict.detail}. Beside the verdict, not used by "
                                                        f"it (means over seeds): {beside}")
    measured.superseded.append(_version_1(old))
    return measured


def _version_1(spread: pd.DataFrame) -> tuple:
    """Version 1's rule (``rules.collapse_rule``) on the spread of v, reported as superseded, with why."""
    old_verdict = rules.collapse_rule(spread)
    superseded = replace(old_verdict, verdict=rules.SUPERSEDED, detail=(
        f"version 1, superseded by version 2 (the measure changed after this result was seen: "
        f"{rules.V1_RESULTS_SEEN}); why: v = p(h(x, m)) can collapse at no cost in setting (e), where only "
        f"L_cross trains the projector, while Table 1 is about the encoder's features. The v1 rule on this "
        f"run gives: {old_verdict.verdict}. {old_verdict.detail}"))
    return ("lcmae-collapse-v1", superseded, "across-image spread of the projected outputs v at masked positions "
            "(unitless), settings (c), (e), (g)")


FINDING = Finding(
    "lcmae-collapse", "L_cross alone collapses to a constant; with L_in or L_MAE it does not",
    "LC-MAE Table 1, Section 3.3", ("lcmae-c", "lcmae-e", "lcmae-g"),
    "across-image spread of the encoder's output (patch tokens and CLS, unmasked images), 1 - mean over "
    "positions of |mean over images of the unit vectors|^2, as a ratio to the same seed's initial weights "
    "(unitless; 1 = unchanged by training), settings (c), (e), (g)",
    rule=rules.collapse_rule_v3, rule_v2=rules_v2.collapse_rule_v2, on_runs=on_runs, figure="collapse")
