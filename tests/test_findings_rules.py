"""Every verdict rule on hand-made evidence tables: one that holds, one that fails, one that is inconclusive."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maeprobe.findings import rules


def spread(c, e, g, width=0.01):
    return pd.DataFrame({"setting": list("ceg"), "value": [c, e, g], "ci_low": [c - width, e - width, g - width],
                         "ci_high": [c + width, e + width, g + width]})


@pytest.mark.parametrize("table, expected", [
    (spread(0.01, 0.6, 0.5), "holds"),
    (spread(0.5, 0.6, 0.5), "fails"),          # (c) did not collapse
    (spread(0.01, 0.02, 0.5), "fails"),        # (e) collapsed
    (spread(0.10, 0.6, 0.5), "inconclusive"),  # (c) neither collapsed nor spread
    (spread(0.01, 0.15, 0.5), "inconclusive"),
])
def test_collapse_rule(table, expected):
    verdict = rules.collapse_rule(table)
    assert verdict.verdict == expected
    assert verdict.measured == table["value"].iloc[0]


def layers(values, width):
    values = np.asarray(values, dtype=float)
    return pd.DataFrame({"layer": range(len(values)), "value": values, "ci_low": values - width,
                         "ci_high": values + width})


@pytest.mark.parametrize("values, width, expected", [
    ([0.9, 0.8, 0.5, 0.55, 0.5, 0.45, 0.5, 0.4], 0.02, "holds"),
    ([0.9, 0.8, 0.5, 0.55, 0.5, 0.45, 0.5, 0.4], 0.2, "inconclusive"),  # intervals overlap
    ([0.5, 0.5, 0.7, 0.7, 0.6, 0.6, 0.6, 0.6], 0.02, "fails"),         # later layers higher
    ([0.8, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], 0.02, "fails"),         # layer 2 above layer 1
])
def test_positional_rule(values, width, expected):
    assert rules.positional_rule(layers(values, width)).verdict == expected


@pytest.mark.parametrize("values, width, expected", [
    ([0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.65], 0.02, "holds"),
    ([0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.65], 0.3, "inconclusive"),  # last interval not above the first
    ([0.6, 0.5, 0.4, 0.4, 0.3, 0.3, 0.2, 0.2], 0.02, "fails"),
])
def test_semantic_rule(values, width, expected):
    assert rules.semantic_rule(layers(values, width)).verdict == expected


def test_semantic_rule_without_reference_is_inconclusive():
    verdict = rules.semantic_rule(None)
    assert verdict.verdict == "inconclusive" and "reference" in verdict.detail


def distances(per_ratio_shallow, per_ratio_deep, width):
    rows = []
    for ratio, shallow, deep in zip((0.3, 0.45, 0.6, 0.75, 0.9), per_ratio_shallow, per_ratio_deep):
        for layer in range(4):
            value = shallow if layer < 2 else deep
            rows.append({"mask_ratio": ratio, "layer": layer, "value": value, "ci_low": value - width,
                         "ci_high": value + width})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("shallow, deep, width, expected", [
    ([10, 11, 12, 13, 14], [10, 13, 16, 19, 22], 0.5, "holds"),
    ([10, 11, 12, 13, 14], [10, 13, 16, 19, 22], 6.0, "inconclusive"),  # intervals overlap
    ([14, 13, 12, 11, 10], [22, 19, 16, 13, 10], 0.5, "fails"),          # decreases
    ([10, 13, 16, 19, 22], [10, 11, 12, 13, 14], 0.5, "fails"),          # grows more in shallow layers
])
def test_mask_ratio_rule(shallow, deep, width, expected):
    assert rules.mask_ratio_rule(distances(shallow, deep, width)).verdict == expected


def ae(values, width):
    values = np.asarray(values, dtype=float)
    return pd.DataFrame({"k": [8, 24, 40, 56], "value": values, "ci_low": values - width, "ci_high": values + width})


@pytest.mark.parametrize("values, width, expected", [
    ([10, 14, 16, 18], 0.5, "holds"),
    ([10, 10.5, 11, 11.5], 1.0, "inconclusive"),  # AE(patch) smallest, intervals overlap
    ([15, 10, 16, 18], 0.5, "fails"),              # AE(patch) not the smallest
])
def test_ae_distance_rule(values, width, expected):
    assert rules.ae_distance_rule(ae(values, width)).verdict == expected


def accuracies(models, top1, n=400, chance=10.0):
    return pd.DataFrame({"model": models, "top1": top1, "n_val": n, "chance": chance})


@pytest.mark.parametrize("top1, n, expected", [
    ([60.0, 12, 15, 11, 13], 400, "holds"),
    ([60.0, 61, 15, 11, 13], 400, "fails"),     # AE(24) as good as MAE
    ([60.0, 35, 15, 11, 13], 400, "inconclusive"),  # below MAE but not at most half
    ([14.0, 5, 6, 5, 6], 400, "inconclusive"),      # MAE near chance: nothing learned
])
def test_linear_probe_rule(top1, n, expected):
    table = accuracies(["mae", "ae8", "ae24", "ae40", "ae56"], top1, n)
    assert rules.linear_probe_rule(table).verdict == expected


@pytest.mark.parametrize("top1, n, expected", [
    ([70.0, 67.0, 69.0], 400, "holds"),
    ([70.0, 40.0, 69.0], 400, "fails"),
    ([70.0, 60.0, 69.0], 400, "inconclusive"),
])
def test_local_decoders_rule(top1, n, expected):
    table = accuracies(["transformer", "gaussian", "conv"], top1, n)
    assert rules.local_decoders_rule(table).verdict == expected


@pytest.mark.parametrize("umae, mae, width, expected", [
    (20.0, 12.0, 1.0, "holds"),
    (10.0, 12.0, 1.0, "fails"),
    (13.0, 12.0, 1.0, "inconclusive"),
])
def test_umae_rank_rule(umae, mae, width, expected):
    table = pd.DataFrame({"model": ["umae", "mae"], "value": [umae, mae], "ci_low": [umae - width, mae - width],
                          "ci_high": [umae + width, mae + width]})
    assert rules.umae_rank_rule(table).verdict == expected


def test_wilson_interval_by_hand():
    low, high = rules.wilson_interval(50, 100)  # p = 0.5, n = 100: 0.5 -+ 0.0962 / 1.0384
    assert low == pytest.approx(40.38, abs=0.01) and high == pytest.approx(59.62, abs=0.01)
