"""Version 2 of every verdict rule (kept unchanged in ``rules_v2.py``, reported as superseded) and the helpers
that version 3 shares, on hand-made evidence tables (version 3: ``test_findings_v3.py``). Every verdict rule on
hand-made evidence tables: holds, fails (only with separated intervals), inconclusive,
and the controls: a trained model equal to its initial weights, uniform attention and baselines that the
model does not beat all give inconclusive."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from helpers.evidence import (
    AE_MODELS,
    FLAT,
    POSITIONAL,
    UNIFORM,
    accuracies,
    ae,
    distances,
    models,
    profile,
    ranks,
    ratios,
)

from maeprobe.findings import rules, rules_v2


# --------------------------------------------------------------------------- helpers checked by hand
def test_across_seeds_by_hand():
    # values 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.3027; seed half-width 4.3027 / sqrt(3) = 2.4842;
    # image half-widths 0.5 below and 1.0 above on every seed -> sqrt(2.4842^2 + 0.5^2), sqrt(2.4842^2 + 1)
    mean, low, high = rules.across_seeds([1, 2, 3], [0.5, 1.5, 2.5], [2, 3, 4])
    assert mean == 2
    assert low == pytest.approx(2 - math.hypot(2.48414, 0.5), abs=1e-4)
    assert high == pytest.approx(2 + math.hypot(2.48414, 1.0), abs=1e-4)


def test_across_seeds_with_one_seed_keeps_the_image_interval():
    assert rules.across_seeds([5.0], [4.0], [7.0]) == (5.0, 4.0, 7.0)


def test_uniform_attention_distance_by_hand():
    # 2 x 2 grid: every query sees distances 0, 1, 1, sqrt(2): mean (2 + sqrt 2) / 4; one CLS key at distance 0
    assert rules.uniform_attention_distance(2, 1, num_prefix=0) == pytest.approx((2 + math.sqrt(2)) / 4)
    assert rules.uniform_attention_distance(2, 8, num_prefix=1) == pytest.approx(8 * (2 + math.sqrt(2)) / 4 * 4 / 5)


def test_uniform_attention_distance_equals_the_metric_on_uniform_maps():
    """The metric (the code the findings use) on attention maps that are uniform over all tokens."""
    import torch

    from maeprobe.metrics.attention_distance import patch_distances

    L = 64
    attn = torch.full((L + 1, L + 1), 1.0 / (L + 1))  # rows over CLS + 64 patches
    d = patch_distances(8, 8)
    per_query = (attn[1:, 1:] * d).sum(-1)  # prefix key counts as distance 0
    assert rules.uniform_attention_distance(8, 8, 1) == pytest.approx(float(per_query.mean()), rel=1e-6)


# --------------------------------------------------------------------------- lcmae-collapse
def spread(c, e, g, width=0.01):
    return pd.DataFrame({"setting": list("ceg"), "value": [c, e, g], "ci_low": [c - width, e - width, g - width],
                         "ci_high": [c + width, e + width, g + width]})


@pytest.mark.parametrize("table, expected", [
    (spread(0.01, 0.6, 0.5), "holds"),
    (spread(0.5, 0.6, 0.5), "fails"),
    (spread(0.01, 0.02, 0.5), "fails"),
    (spread(0.10, 0.6, 0.5), "inconclusive"),
])
def test_collapse_rule_version_1_is_kept(table, expected):
    verdict = rules.collapse_rule(table)
    assert verdict.verdict == expected and verdict.rule_version == 1


@pytest.mark.parametrize("table, expected", [
    (ratios(0.1, 3.0, 2.0), "holds"),
    (ratios(1.0, 1.0, 1.0), "inconclusive"),            # trained = initial weights in every setting
    (ratios(2.0, 3.0, 2.0), "fails"),                   # (c) spreads more than at initialisation
    (ratios(0.1, 0.2, 2.0), "fails"),                   # (e) collapses too
    (ratios(0.1, 3.0, 2.0, cls=(0.1, 1.0, 2.0)), "inconclusive"),  # CLS of (e) like its initial weights
    (ratios(0.1, 3.0, 2.0, seeds=(0, 1)), "inconclusive"),  # version 2 needs 3 seeds
])
def test_collapse_rule_version_2(table, expected):
    verdict = rules_v2.collapse_rule_v2(table)
    assert verdict.verdict == expected
    assert verdict.rule_version == 2 and verdict.amended_after_results and verdict.control == 1.0


# --------------------------------------------------------------------------- decoder-positional


@pytest.mark.parametrize("trained, init, width, expected", [
    (POSITIONAL, FLAT, 0.02, "holds"),
    (POSITIONAL, FLAT, 0.3, "inconclusive"),                       # intervals overlap
    ([0.5, 0.5, 0.7, 0.7, 0.6, 0.6, 0.6, 0.6], FLAT, 0.02, "fails"),  # later layers clearly higher
    ([0.8, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], FLAT, 0.02, "inconclusive"),  # layer 2 above layer 1: not a fail
    (POSITIONAL, POSITIONAL, 0.02, "inconclusive"),                # trained = initial weights
    ([1.0] * 8, [1.0] * 8, 0.0, "inconclusive"),                   # uniform attention everywhere
])
def test_positional_rule(trained, init, width, expected):
    table = pd.concat([profile("trained", trained, width), profile("init", init, width)])
    verdict = rules_v2.positional_rule(table)
    assert verdict.verdict == expected
    if trained == init:
        assert verdict.detail.startswith(rules.NO_POWER)


def test_positional_rule_needs_its_control():
    assert rules_v2.positional_rule(profile("trained", POSITIONAL, 0.02)).verdict == "inconclusive"


def test_seed_variance_widens_the_interval():
    """The same means, but seeds that disagree: the interval across seeds no longer separates the layers."""
    table = pd.concat([profile("trained", POSITIONAL, 0.02, jitter=0.25), profile("init", FLAT, 0.02)])
    assert rules_v2.positional_rule(table).verdict == "inconclusive"


# --------------------------------------------------------------------------- decoder-semantic
RISING = [0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.65]


@pytest.mark.parametrize("trained, init, width, expected", [
    (RISING, [0.3] * 8, 0.02, "holds"),
    (RISING, [0.3] * 8, 0.3, "inconclusive"),
    (RISING[::-1], [0.3] * 8, 0.02, "fails"),
    (RISING, RISING, 0.02, "inconclusive"),  # trained = initial weights
])
def test_semantic_rule(trained, init, width, expected):
    table = pd.concat([profile("trained", trained, width), profile("init", init, width)])
    assert rules_v2.semantic_rule(table).verdict == expected


def test_semantic_rule_without_reference_is_inconclusive():
    verdict = rules_v2.semantic_rule(None)
    assert verdict.verdict == "inconclusive" and "reference" in verdict.detail


# --------------------------------------------------------------------------- mask-ratio-distance


@pytest.mark.parametrize("shallow, deep, width, expected", [
    ([10, 11, 12, 13, 14], [10, 13, 16, 19, 22], 0.5, "holds"),
    ([10, 11, 12, 13, 14], [10, 13, 16, 19, 22], 6.0, "inconclusive"),
    ([14, 13, 12, 11, 10], [22, 19, 16, 13, 10], 0.5, "fails"),
    ([10, 13, 16, 19, 22], [10, 11, 12, 13, 14], 0.5, "inconclusive"),  # grows more in shallow layers: no fail
])
def test_mask_ratio_rule(shallow, deep, width, expected):
    assert rules_v2.mask_ratio_rule(distances(shallow, deep, width), UNIFORM).verdict == expected


def test_mask_ratio_rule_on_uniform_attention_is_inconclusive():
    """Every model, trained or not, attends uniformly: a trend of a few hundredths of a pixel proves nothing."""
    u = UNIFORM
    table = distances([u - 0.02, u - 0.01, u, u + 0.01, u + 0.02], [u - 0.02, u - 0.01, u, u + 0.01, u + 0.02],
                      0.005, init=u)
    verdict = rules_v2.mask_ratio_rule(table, u)
    assert verdict.verdict == "inconclusive" and verdict.detail.startswith(rules.NO_POWER)


def test_mask_ratio_rule_trained_equal_to_init_is_inconclusive():
    table = distances([14, 13, 12, 11, 10], [22, 19, 16, 13, 10], 0.5)
    table.loc[table["condition"] == "trained", ["value", "ci_low", "ci_high"]] = [20.0, 19.5, 20.5]
    assert rules_v2.mask_ratio_rule(table, UNIFORM).verdict == "inconclusive"


# --------------------------------------------------------------------------- ae-block-distance


@pytest.mark.parametrize("values, width, expected", [
    ([10, 14, 16, 18], 0.5, "holds"),
    ([10, 10.5, 11, 11.5], 1.0, "inconclusive"),
    ([15, 10, 16, 18], 0.5, "fails"),           # AE(24) clearly below AE(8)
    ([15, 14.8, 16, 18], 0.5, "inconclusive"),  # AE(patch) not the smallest, but not separated: no fail
])
def test_ae_distance_rule(values, width, expected):
    assert rules_v2.ae_distance_rule(ae(values, width), UNIFORM).verdict == expected


def test_ae_distance_rule_on_uniform_attention_is_inconclusive():
    u = UNIFORM
    verdict = rules_v2.ae_distance_rule(ae([u + 0.3, u - 0.3, u, u], 0.5, init=u), u)
    assert verdict.verdict == "inconclusive" and verdict.detail.startswith(rules.NO_POWER)


# --------------------------------------------------------------------------- mae-local-attention


@pytest.mark.parametrize("table, expected", [
    (models(60, 90, 95, 110), "holds"),
    (models(90, 60, 80, 110), "fails"),             # MAE clearly above DINO
    (models(60, 60.2, 80, 110), "inconclusive"),
    (models(109.9, 90, 95, 110), "inconclusive"),   # MAE like random weights: no power
])
def test_local_attention_rule(table, expected):
    verdict = rules_v2.local_attention_rule(table, 105.0)
    assert verdict.verdict == expected and verdict.rule_version == 1 and not verdict.amended_after_results


def test_local_attention_rule_on_uniform_attention_is_inconclusive():
    verdict = rules_v2.local_attention_rule(models(105, 105, 105, 105, width=0.1), 105.0)
    assert verdict.verdict == "inconclusive" and verdict.detail.startswith(rules.NO_POWER)


# --------------------------------------------------------------------------- probes


@pytest.mark.parametrize("top1, expected", [
    ([60.0, 12, 15, 11, 13, 30, 25], "holds"),
    ([60.0, 61, 15, 11, 13, 30, 25], "fails"),
    ([60.0, 35, 15, 11, 13, 30, 25], "inconclusive"),   # below MAE but not at most half
    ([60.0, 12, 15, 11, 13, 96, 25], "inconclusive"),   # raw pixels beat MAE: no power
    ([60.0, 61, 15, 11, 13, 30, 60], "inconclusive"),   # the random encoder is as good as MAE: no power
])
def test_linear_probe_rule(top1, expected):
    verdict = rules_v2.linear_probe_rule(accuracies(AE_MODELS, top1))
    assert verdict.verdict == expected
    if expected == "inconclusive" and max(top1[5:]) >= top1[0]:
        assert verdict.detail.startswith(rules.NO_POWER)


@pytest.mark.parametrize("top1, expected", [
    ([70.0, 67.0, 69.0, 30, 25], "holds"),
    ([70.0, 40.0, 69.0, 30, 25], "fails"),
    ([70.0, 60.0, 69.0, 30, 25], "inconclusive"),
    ([70.0, 40.0, 69.0, 96, 25], "inconclusive"),  # raw pixels beat the transformer: no power
])
def test_local_decoders_rule(top1, expected):
    table = accuracies(["transformer", "gaussian", "conv", "pixels", "random"], top1)
    assert rules_v2.local_decoders_rule(table).verdict == expected


def test_probe_rules_without_baselines_are_inconclusive():
    assert rules_v2.local_decoders_rule(accuracies(["transformer", "gaussian", "conv"], [70, 67, 69])).verdict \
        == "inconclusive"


# --------------------------------------------------------------------------- umae-rank


@pytest.mark.parametrize("table, expected", [
    (ranks(20.0, 12.0, 5.0), "holds"),
    (ranks(10.0, 14.0, 5.0), "fails"),
    (ranks(13.0, 12.0, 5.0), "inconclusive"),
    (ranks(20.0, 12.0, 16.0, width=5.0), "inconclusive"),  # neither separated from initial weights
])
def test_umae_rank_rule(table, expected):
    assert rules_v2.umae_rank_rule(table).verdict == expected


def test_wilson_interval_by_hand():
    low, high = rules.wilson_interval(50, 100)  # p = 0.5, n = 100: 0.5 -+ 0.0962 / 1.0384
    assert low == pytest.approx(40.38, abs=0.01) and high == pytest.approx(59.62, abs=0.01)
