"""Class 3 of issue 15: an input that cannot be computed correctly is refused, never reported. NaN or infinite
weights, impossible normalisation or head counts in metadata, a mask that leaves nothing visible, a resume under
changed settings and an output path that YAML would cut all end in one line (exit 2) instead of a table."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import QUICK, RECIPES
from helpers import save_tiny_safetensors as _save
from helpers.hostile import assert_clean_exit, assert_refused, changed_outside, run_cases, snapshot


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    ok = _save(inputs / "ok.safetensors")
    weights = {"nan": _save(inputs / "nan.safetensors", pos_embed=(0, math.nan)),
               "inf": _save(inputs / "inf.safetensors", blocks__0__attn__qkv__weight=(3, math.inf)),
               "ninf": _save(inputs / "ninf.safetensors", norm__weight=(0, -math.inf))}
    metas = {
        "std0": {"num_heads": 2, "mean": [0.5] * 3, "std": [0.0, 0.5, 0.5]},
        "stdneg": {"num_heads": 2, "mean": [0.5] * 3, "std": [-0.2, 0.5, 0.5]},
        "meannan": {"num_heads": 2, "mean": [math.nan, 0.5, 0.5], "std": [0.5] * 3},
        "std2": {"num_heads": 2, "mean": [0.5] * 3, "std": [0.5, 0.5]},
        "heads_neg": {"num_heads": -3}, "heads_frac": {"num_heads": 1.5}, "heads_zero": {"num_heads": 0},
        "heads_text": {"num_heads": "2"}, "heads_bool": {"num_heads": True}, "heads_5": {"num_heads": 5},
        "eps_neg": {"num_heads": 2, "norm_eps": -1e-6}, "ratio": {"num_heads": 2, "pretrain_mask_ratio": 5},
        "act": {"num_heads": 2, "act_layer": "relu6"},
    }
    meta_files = {name: _save(inputs / f"{name}.safetensors", meta) for name, meta in metas.items()}
    run_dir = out / "run"
    common = ["recipe", "run", RECIPES / "tiny-mae.yaml", *QUICK, f"run.output_dir={run_dir}"]
    cases = [{"argv": ["info", path]} for path in weights.values()]
    cases += [{"argv": ["info", path]} for path in meta_files.values()]
    cases += [
        {"argv": ["attn-distance", ok, "--num-heads", "0"]},
        {"argv": ["attn-distance", ok, "--mask-ratio", "0.9"]},  # 4 patches: int(4 x 0.1) = 0 visible
        {"argv": ["attn-distance", ok, "--mask-ratio", "nan"]},
        {"argv": ["attn-distance", ok, "--mask-ratio", "-0.1"]},
        {"argv": ["attn-distance", ok, "--mask-ratio", "0.5", "--bootstrap", "0", "--out", out / "half.csv"]},
        {"argv": common},  # trains one epoch
        {"argv": [*common, "run.seed=1"]},
        {"argv": [*common, "model.mask_ratio=0.5"]},
        {"argv": [*common, "optim.base_lr=1e-3"]},
        {"argv": [*common, "run.max_minutes=5"]},  # how a run is run may change: resumes (nothing left to do)
        {"argv": ["recipe", "show", RECIPES / "tiny-mae.yaml", "run.output_dir=o/rep #2", "optim.base_lr=1e-4"]},
    ]
    before = snapshot(root)
    results = run_cases(cases, root, timeout=120)
    config_after_refusals = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else None
    return {"root": root, "results": results, "n_weights": len(weights), "n_meta": len(meta_files),
            "changed": changed_outside(before, snapshot(root), ["out"]), "config": config_after_refusals}


@pytest.mark.slow
def test_nothing_written_outside_the_named_output(attack):
    assert attack["changed"] == [], attack["changed"]


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.slow
def test_non_finite_weights_are_refused(attack, index):
    assert_refused(attack["results"][index], "NaN or infinite", "expected finite weights")


@pytest.mark.parametrize("offset, text", [(0, "'std'"), (1, "'std'"), (2, "'mean'"), (3, "'std'"),
                                          (4, "'num_heads'"), (5, "'num_heads'"), (6, "'num_heads'"),
                                          (7, "'num_heads'"), (8, "'num_heads'"), (9, "not divisible by 5 heads"),
                                          (10, "'norm_eps'"), (11, "'pretrain_mask_ratio'"), (12, "'act_layer'")])
@pytest.mark.slow
def test_metadata_out_of_bounds_is_refused(attack, offset, text):
    assert_refused(attack["results"][attack["n_weights"] + offset], text)


def _after_meta(attack, k):
    return attack["results"][attack["n_weights"] + attack["n_meta"] + k]


@pytest.mark.slow
def test_zero_heads_is_refused(attack):
    assert_refused(_after_meta(attack, 0), "--num-heads")


@pytest.mark.parametrize("k, text", [(1, "leaves no visible patch of 4"), (2, "--mask-ratio"),
                                     (3, "--mask-ratio")])
@pytest.mark.slow
def test_impossible_masks_are_refused(attack, k, text):
    assert_refused(_after_meta(attack, k), text)


@pytest.mark.slow
def test_a_possible_mask_runs(attack):
    assert_clean_exit(_after_meta(attack, 4))


@pytest.mark.slow
def test_resume_refuses_changed_settings_and_keeps_the_run(attack):
    assert_clean_exit(_after_meta(attack, 5), budget_mb=1200)
    for k, key in ((6, "run_seed"), (7, "mask_ratio"), (8, "optim_base_lr")):
        assert_refused(_after_meta(attack, k), "cannot resume", key)
    assert_clean_exit(_after_meta(attack, 9), budget_mb=1200)
    saved = attack["config"]
    assert saved is not None and "seed: 0" in saved and "mask_ratio: 0.75" in saved


@pytest.mark.slow
def test_override_values_are_taken_as_typed(attack):
    """'o/rep #2' is not cut at ' #' (YAML's comment sign); '1e-4' (YAML 1.1 text) is the number 0.0001."""
    result = _after_meta(attack, 10)
    assert_clean_exit(result)
    assert "output_dir: 'o/rep #2'" in result.stdout and "base_lr: 0.0001" in result.stdout


def test_reproduce_paths_are_not_cut(tmp_path):
    from maeprobe.findings.runner import run_config
    from maeprobe.findings.suite import SCALES

    config = run_config("mae", SCALES["tiny"], tmp_path / "rep #2", data=tmp_path / "data #1")
    assert " #2" in config["run"]["output_dir"] and config["data"]["path"].endswith("data #1")


def test_reproduce_does_not_reuse_a_run_of_other_settings(tmp_path):
    import yaml

    from maeprobe import MaeprobeError
    from maeprobe.findings.runner import _check_reusable, run_config
    from maeprobe.findings.suite import SCALES

    config = run_config("mae", SCALES["tiny"], tmp_path)
    folder = Path(config["run"]["output_dir"])
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    _check_reusable(folder, config)  # the same settings: reused
    other = run_config("mae", SCALES["tiny"], tmp_path, steps=8)
    with pytest.raises(MaeprobeError, match="holds a run trained with"):
        _check_reusable(folder, other)
    (folder / "config.yaml").write_text("[broken")
    with pytest.raises(MaeprobeError, match="without a readable config.yaml"):
        _check_reusable(folder, config)


def test_api_refuses_a_mask_without_visible_patches(tmp_path):
    import maeprobe

    model = maeprobe.load(_save(tmp_path / "ok.safetensors"))
    with pytest.raises(maeprobe.MaeprobeError, match="leaves no visible patch"):
        maeprobe.attention_distance(model, torch.zeros(1, 3, 16, 16), mask_ratio=0.8, device="cpu")
