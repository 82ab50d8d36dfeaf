"""The pre-registered rules of the two cl-vs-mim findings (``findings/rules_cl_vs_mim.py``) on hand-made evidence:
per-layer values of MAE, DINO, MoCo v3 and random weights; only the last third of the blocks counts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maeprobe.findings import rules
from maeprobe.findings.rules_cl_vs_mim import high_frequency_rule, homogeneous_attention_rule, late_layers

DEPTH = 12


def _evidence(early: dict, late: dict, width: float = 0.01) -> pd.DataFrame:
    """Per model: the value of blocks 0-7 (``early``) and of blocks 8-11 (``late``), each +- ``width``."""
    rows = []
    for model in ("mae", "dino", "mocov3", "init"):
        for layer in range(DEPTH):
            v = late[model] if layer >= 8 else early[model]
            rows.append({"model": model, "seed": 0, "layer": layer, "value": v, "ci_low": v - width,
                         "ci_high": v + width})
    return pd.DataFrame(rows)


SAME_EARLY = {"mae": 0.3, "dino": 0.3, "mocov3": 0.3, "init": 0.01}


def test_late_layers_are_the_last_third():
    assert late_layers(range(12)) == [8, 9, 10, 11]
    assert late_layers(range(2)) == [1]
    assert late_layers([3, 1, 2, 0, 5, 4]) == [4, 5]


def test_nmi_holds_when_mae_is_above_both_contrastive_models_late():
    v = homogeneous_attention_rule(_evidence(SAME_EARLY, {"mae": 0.40, "dino": 0.10, "mocov3": 0.15, "init": 0.01}))
    assert v.verdict == rules.HOLDS
    assert v.measured == pytest.approx(0.40 - 0.15)          # MAE minus the higher contrastive model
    assert (v.ci_low, v.ci_high) == pytest.approx((0.39 - 0.16, 0.41 - 0.14))
    assert v.control == pytest.approx(0.01 - 0.15)
    assert not v.amended_after_results and "released checkpoints" in v.detail


def test_nmi_early_blocks_do_not_count():
    """The same late values with the early blocks reversed give the same verdict and headline."""
    late = {"mae": 0.40, "dino": 0.10, "mocov3": 0.15, "init": 0.01}
    a = homogeneous_attention_rule(_evidence(SAME_EARLY, late))
    b = homogeneous_attention_rule(_evidence({"mae": 0.05, "dino": 0.6, "mocov3": 0.7, "init": 0.0}, late))
    assert (a.verdict, a.measured) == (b.verdict, pytest.approx(b.measured))


def test_nmi_fails_when_one_contrastive_model_is_above_mae():
    v = homogeneous_attention_rule(_evidence(SAME_EARLY, {"mae": 0.20, "dino": 0.10, "mocov3": 0.30, "init": 0.01}))
    assert v.verdict == rules.FAILS


def test_nmi_overlapping_intervals_are_inconclusive():
    v = homogeneous_attention_rule(_evidence(SAME_EARLY, {"mae": 0.20, "dino": 0.10, "mocov3": 0.195, "init": 0.01}))
    assert v.verdict == rules.INCONCLUSIVE and rules.NO_POWER not in v.detail


def test_nmi_without_power_is_inconclusive():
    """MAE at the random weights' level (as random stand-ins are): no power, whatever the contrastive models give."""
    v = homogeneous_attention_rule(_evidence(SAME_EARLY, {"mae": 0.02, "dino": -0.5, "mocov3": -0.5, "init": 0.01}))
    assert v.verdict == rules.INCONCLUSIVE and rules.NO_POWER in v.detail


def test_nmi_missing_model_or_nan_is_inconclusive():
    evidence = _evidence(SAME_EARLY, {"mae": 0.40, "dino": 0.10, "mocov3": 0.15, "init": 0.01})
    v = homogeneous_attention_rule(evidence[evidence["model"] != "mocov3"])
    assert v.verdict == rules.INCONCLUSIVE and "mocov3" in v.detail
    broken = evidence.copy()
    broken.loc[(broken["model"] == "dino") & (broken["layer"] == 9), "ci_high"] = np.nan
    assert homogeneous_attention_rule(broken).verdict == rules.INCONCLUSIVE


def test_fourier_holds_when_mae_keeps_more_high_frequency():
    """Δ log amplitudes are negative; MAE's closer to 0 = more high-frequency amplitude."""
    v = high_frequency_rule(_evidence({m: -1.0 for m in SAME_EARLY},
                                      {"mae": -0.5, "dino": -1.5, "mocov3": -1.2, "init": -2.0}, width=0.05))
    assert v.verdict == rules.HOLDS
    assert v.measured == pytest.approx(-0.5 - -1.2)
    assert v.control == pytest.approx(-2.0 - -1.2)


def test_fourier_fails_and_no_power():
    fails = high_frequency_rule(_evidence({m: -1.0 for m in SAME_EARLY},
                                          {"mae": -1.5, "dino": -0.5, "mocov3": -1.6, "init": -3.0}, width=0.05))
    assert fails.verdict == rules.FAILS
    no_power = high_frequency_rule(_evidence({m: -1.0 for m in SAME_EARLY},
                                             {"mae": -2.0, "dino": -3.0, "mocov3": -3.0, "init": -2.05}, width=0.05))
    assert no_power.verdict == rules.INCONCLUSIVE and rules.NO_POWER in no_power.detail
