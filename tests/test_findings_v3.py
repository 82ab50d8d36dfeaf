"""Verdict rules version 3 on hand-made evidence tables: every change from version 2 (issue 26) is shown by a
table on which version 2 (``rules_v2``, kept unchanged) and version 3 disagree, so each test fails on the
version-2 rules; plus the encoder initialisation that makes each run's initial weights a shared control."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
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


def test_version_3_is_current_and_discloses_every_amendment():
    assert rules.RULE_VERSION == 3 and rules_v2.RULE_VERSION == 2 and rules.MIN_SEEDS == 3
    text = " ".join(rules.AMENDMENTS)
    assert "[0, 100]" in text and "v2 -> v3" in text and "v1 -> v2" in text


# --------------------------------------------------------------------------- at least 3 seeds for any verdict
def test_two_seeds_give_no_verdict():
    """Version 2 gave holds from two seeds (only lcmae-collapse asked for 3)."""
    table = pd.concat([profile("trained", POSITIONAL, 0.02, seeds=(0, 1)), profile("init", FLAT, 0.02, seeds=(0, 1))])
    assert rules_v2.positional_rule(table).verdict == "holds"
    verdict = rules.positional_rule(table)
    assert verdict.verdict == "inconclusive" and "at least 3 seeds, has 2" in verdict.detail
    assert "holds" in verdict.detail  # says what the intervals would give
    three = pd.concat([profile("trained", POSITIONAL, 0.02), profile("init", FLAT, 0.02)])
    assert rules.positional_rule(three).verdict == "holds"


def test_released_checkpoints_need_one_run():
    table = pd.concat([profile("trained", POSITIONAL, 0.02, seeds=(0,)), profile("init", FLAT, 0.02, seeds=(0,))])
    verdict = rules.positional_rule(table, min_seeds=1)
    assert verdict.verdict == "holds" and "published models" in verdict.detail


# --------------------------------------------------------------------------- intervals, not point estimates
def test_comes_close_is_judged_on_the_interval():
    """Gaussian 67 vs transformer 70 on 400 images: within 5 points as point estimates (version 2: holds), but the
    interval of the gap reaches beyond 5 points."""
    table = accuracies(["transformer", "gaussian", "conv", "pixels", "random"], [70.0, 67.0, 69.0, 30, 25])
    assert rules_v2.local_decoders_rule(table).verdict == "holds"
    verdict = rules.local_decoders_rule(table)
    assert verdict.verdict == "inconclusive" and verdict.ci_high > rules.CLOSE_WITHIN
    big = accuracies(["transformer", "gaussian", "conv", "pixels", "random"], [70.0, 69.5, 70.0, 30, 25], n=100_000)
    assert rules.local_decoders_rule(big).verdict == "holds"


def test_far_below_is_judged_on_the_interval():
    """An AE at 0.48 x MAE on 100 validation images: at most half as a point estimate (version 2: holds), not by
    its interval."""
    top1 = [60.0, 29.0, 15, 11, 13, 10, 12]
    table = accuracies(AE_MODELS, top1, n=100)
    assert rules_v2.linear_probe_rule(table).verdict == "holds"
    assert rules.linear_probe_rule(table).verdict == "inconclusive"
    assert rules.linear_probe_rule(accuracies(AE_MODELS, [60.0, 12, 15, 11, 13, 10, 12], n=2000)).verdict == "holds"


def test_deeper_growth_is_judged_on_the_interval():
    """Deep layers grow by 4.5 px, shallow ones by 4: more as point estimates (version 2: holds), but the
    interval of the difference includes 0."""
    table = distances([10, 11, 12, 13, 14], [10, 11.1, 12.2, 13.3, 14.5], 0.5)
    assert rules_v2.mask_ratio_rule(table, UNIFORM).verdict == "holds"
    assert rules.mask_ratio_rule(table, UNIFORM).verdict == "inconclusive"
    assert rules.mask_ratio_rule(distances([10, 11, 12, 13, 14], [10, 13, 16, 19, 22], 0.5), UNIFORM).verdict == "holds"


def test_a_larger_ratio_clearly_below_a_smaller_one_blocks_holds():
    dip = distances([10, 12, 11, 13, 14], [10, 17, 14, 19, 22], 0.5)  # 0.6 clearly below 0.45
    assert rules.mask_ratio_rule(dip, UNIFORM).verdict == "inconclusive"


# --------------------------------------------------------------------------- control = the headline quantity
def test_control_is_the_same_quantity_as_the_headline():
    """Version 2 put the initial weights' distance (20 px) beside a difference of distances."""
    table = distances([10, 11, 12, 13, 14], [10, 13, 16, 19, 22], 0.5)
    assert rules_v2.mask_ratio_rule(table, UNIFORM).control == pytest.approx(20.0)
    verdict = rules.mask_ratio_rule(table, UNIFORM)
    assert verdict.control == 0.0  # one initial encoder for every ratio: its difference is 0
    per_run = table.copy()  # each run's own initial weights, labelled with its ratio
    init = per_run[per_run["condition"] == "init"]
    per_run = pd.concat([per_run[per_run["condition"] == "trained"]] +
                        [init.assign(mask_ratio=r, value=init["value"] + 2 * r, ci_low=init["ci_low"] + 2 * r,
                                     ci_high=init["ci_high"] + 2 * r) for r in (0.3, 0.45, 0.6, 0.75, 0.9)])
    assert rules.mask_ratio_rule(per_run, UNIFORM).control == pytest.approx(2 * (0.9 - 0.3))
    assert rules.ae_distance_rule(ae([10, 14, 16, 18], 0.5), UNIFORM).control == 0.0
    assert rules_v2.ae_distance_rule(ae([10, 14, 16, 18], 0.5), UNIFORM).control == pytest.approx(25.0)
    released = rules.local_attention_rule(models(60, 90, 95, 110), 105.0)
    assert released.control == pytest.approx(110 - 90)  # init in MAE's place; version 1: 110
    probe = accuracies(AE_MODELS + ["init:ae8", "init:ae24", "init:ae40", "init:ae56"],
                       [60.0, 12, 15, 11, 13, 30, 25, 25, 25, 25, 25])
    assert rules.linear_probe_rule(probe).control == pytest.approx(1.0)  # best AE init / MAE init
    assert rules_v2.linear_probe_rule(probe).control == pytest.approx(30.0)
    rank = pd.concat([ranks(20.0, 12.0, 5.0),
                      ranks(20.0, 12.0, 5.0).query("model == 'init'").assign(model="init:umae")])
    assert rules.umae_rank_rule(rank).control == 0.0 and rules_v2.umae_rank_rule(rank).control == 5.0


# --------------------------------------------------------------------------- collapse: "does not collapse"
def test_collapse_e_and_g_need_not_rise_above_their_initial_spread():
    """(e) and (g) keep 80% of their initial spread: not collapsed, which is the claim (version 2 asked > 1)."""
    table = ratios(0.1, 0.8, 0.8)
    assert rules_v2.collapse_rule_v2(table).verdict == "inconclusive"
    assert rules.collapse_rule_v3(table).verdict == "holds"
    assert rules.collapse_rule_v3(ratios(0.1, 0.3, 0.8)).verdict == "fails"  # (e) collapses too
    assert rules.collapse_rule_v3(ratios(0.1, 0.8, 0.8, seeds=(0, 1))).verdict == "inconclusive"


# --------------------------------------------------------------------------- Eq. 8: saturated W
def semantic_table(ref_density):
    trained = profile("trained", [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], 0.02)
    init = profile("init", [0.5] * 8, 0.02)
    table = pd.concat([trained, init]).assign(reference="dino", w_density=0.5, ref_w_density=ref_density)
    return table


def test_saturated_reference_makes_the_semantic_finding_inconclusive():
    assert rules_v2.semantic_rule(semantic_table(1.0)).verdict == "holds"
    verdict = rules.semantic_rule(semantic_table(1.0))
    assert verdict.verdict == "inconclusive" and "reference's W is saturated" in verdict.detail
    assert rules.semantic_rule(semantic_table(0.4)).verdict == "holds"
    empty_layer = semantic_table(0.4)
    empty_layer.loc[(empty_layer["condition"] == "trained") & (empty_layer["layer"] == 0), "w_density"] = 0.01
    assert "decoder layer's W is empty" in rules.semantic_rule(empty_layer).detail


# --------------------------------------------------------------------------- one initial encoder per seed
def test_every_suite_run_starts_from_maes_initial_encoder(tmp_path):
    """AE(k), Gaussian, conv, U-MAE and other mask ratios build MAE's encoder at the same seed, so each run's own
    initial weights and MAE's are one control. Before, a wider decoder_pred drew more numbers at construction:
    AE(24) and AE(56) started from different encoders."""
    from maeprobe.findings.runner import run_config
    from maeprobe.findings.suite import SCALES
    from maeprobe.train.engine import initial_objective

    def encoder(name, seed=0):
        with torch.random.fork_rng(devices=[]):
            model = initial_objective(run_config(name, SCALES["tiny"], tmp_path, seed=seed)).model
        return {k: v for k, v in model.state_dict().items() if not (k.startswith("decoder") or k == "mask_token")}

    reference = encoder("mae")
    for name in ("ae1", "ae7", "mae-gaussian", "mae-conv", "umae", "mae-mask30"):
        other = encoder(name)
        assert reference.keys() == other.keys()
        assert all(torch.equal(reference[k], other[k]) for k in reference), name
    assert not torch.equal(encoder("mae", seed=1)["blocks.0.attn.qkv.weight"], reference["blocks.0.attn.qkv.weight"])


def test_initialisation_never_replays_the_global_random_stream(monkeypatch):
    """The encoder's independence from the decoder must not come from rewinding the global generator (which
    made the conv decoder's kernel a rescaled copy of decoder_pred's draws and replayed the initial weights'
    numbers as the next data-order and mask draws): after building, the global stream is where construction alone
    leaves it, and calling initialize_weights again changes neither the weights nor the stream."""
    import maeprobe
    from maeprobe.models.mae import MaskedAutoencoderViT

    torch.manual_seed(0)
    model = maeprobe.build_mae("mae_vit_tiny_patch8_64", decoder_type="conv")
    after = torch.rand(1000)
    with monkeypatch.context() as patch:
        patch.setattr(MaskedAutoencoderViT, "initialize_weights", lambda self: None)
        torch.manual_seed(0)
        maeprobe.build_mae("mae_vit_tiny_patch8_64", decoder_type="conv")
        untouched = torch.rand(1000)
    assert torch.equal(after, untouched)
    conv, pred = model.decoder_conv.weight.detach().flatten(), model.decoder_pred.weight.detach().flatten()
    assert np.ptp((conv[:100] / pred[:100]).numpy()) > 1e-3  # not one tensor rescaled into the other
    state = torch.random.get_rng_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.initialize_weights()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- review findings (independent review)
def test_every_local_decoder_is_judged_on_its_interval():
    """The Gaussian decoder's seeds disagree (70, 89, 79.5): its gap to the transformer may reach 26 points,
    although the worst decoder by point estimate (conv) is within 5."""
    rows = [{"model": m, "seed": s, "top1": t, "n_val": 2000, "chance": 10.0}
            for s, g in enumerate((70.0, 89.0, 79.5))
            for m, t in (("transformer", 80.0), ("gaussian", g), ("conv", 79.0), ("pixels", 30.0), ("random", 25.0))]
    verdict = rules.local_decoders_rule(pd.DataFrame(rows))
    assert verdict.verdict == "inconclusive"


def test_the_seed_gate_reads_every_estimate_a_verdict_uses():
    """(c) has 3 seeds, (e) and (g) one each: not enough for a verdict."""
    table = ratios(0.1, 0.8, 0.8)
    table = table[(table["setting"] == "c") | (table["seed"] == 0)]
    verdict = rules.collapse_rule_v3(table)
    assert verdict.verdict == "inconclusive" and "has 1" in verdict.detail


@pytest.mark.parametrize("rule, args", [
    (rules.collapse_rule_v3, ()), (rules.positional_rule, ()), (rules.semantic_rule, ()),
    (rules.mask_ratio_rule, (32.6,)), (rules.ae_distance_rule, (32.6,)), (rules.local_attention_rule, (32.6,)),
    (rules.linear_probe_rule, ()), (rules.local_decoders_rule, ()), (rules.umae_rank_rule, ()),
])
def test_partial_or_empty_evidence_is_inconclusive_not_a_crash(rule, args):
    for table in (pd.DataFrame(), pd.DataFrame({"model": ["mae"], "seed": [0], "value": [1.0]}),
                  pd.DataFrame({"condition": ["trained"], "value": [1.0]})):
        verdict = rule(table, *args)
        assert verdict.verdict == "inconclusive" and verdict.detail


def test_few_units_give_no_interval_and_an_empty_replicate_is_not_zero():
    """A Poisson replicate that drew no unit counted as 0 and pulled ci_low below every value; with two units a
    pairwise replicate is the estimate or undefined (a zero-width band)."""
    from maeprobe.metrics.base import MIN_UNITS, ImageMean

    assert MIN_UNITS == 3
    reducer = ImageMean((1,), bootstrap=400, bootstrap_seed=1)
    reducer.add(torch.tensor([[10.0], [11.0], [12.0]]), torch.tensor([0, 1, 2]))
    s = reducer.summary()
    assert 10.0 <= s["ci_low"][0] <= s["ci_high"][0] <= 12.0
    two = ImageMean((1,), bootstrap=400)
    two.add(torch.tensor([[10.0], [11.0]]), torch.tensor([0, 1]))
    assert np.isnan(two.summary()["ci_low"]).all()


def test_reuse_keys_follow_content_not_paths(tmp_path):
    """A stored verdict's key: a changed --data folder (a file added, replaced with new bytes or touched) or a
    replaced checkpoint under the same path gives another key; the same content gives the same key."""
    import os

    from maeprobe.findings.runner import _file_digest, _folder_fingerprint, code_version

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"one")
    first = _folder_fingerprint(folder)
    assert _folder_fingerprint(folder) == first
    (folder / "b.png").write_bytes(b"two")
    second = _folder_fingerprint(folder)
    assert second != first
    os.utime(folder / "b.png", ns=(1, 1))
    assert _folder_fingerprint(folder) != second
    ckpt = tmp_path / "checkpoint-last.pth"
    ckpt.write_bytes(b"weights")
    digest = _file_digest(ckpt)
    ckpt.write_bytes(b"weightz")  # same size, other bytes
    assert _file_digest(ckpt) != digest and _file_digest(tmp_path / "absent") is None
    assert "source sha256:" in code_version()


def test_a_missing_control_or_non_numbers_give_no_verdict():
    """A NaN control interval made max(0, NaN) = 0 count as a passed control (holds); a string in a numeric
    column raised a TypeError."""
    table = pd.concat([profile("trained", POSITIONAL, 0.02), profile("init", FLAT, 0.02)])
    assert rules.positional_rule(table).verdict == "holds"
    nan_control = table.copy()
    nan_control.loc[nan_control["condition"] == "init", "ci_low"] = np.nan
    verdict = rules.positional_rule(nan_control)
    assert verdict.verdict == "inconclusive" and "missing or invalid" in verdict.detail
    text = table.astype({"value": object})
    text.loc[text.index[0], "value"] = "abc"
    assert "non-numbers" in rules.positional_rule(text).detail
