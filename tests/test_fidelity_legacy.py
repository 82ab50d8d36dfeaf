"""Runs saved before ``umae.batch`` existed trained U-MAE's term per accumulation micro-step (what U-MAE's code
does under --accum_iter): an absent ``umae.batch`` is read as 'micro', so such a run is neither resumed nor reused
under the new 'global' default, and is resumed / reused with ``umae.batch=micro``. The old runs here are built by
hand: a new run's saved settings with the key taken out, as maeprobe wrote them before the key existed."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml

import maeprobe
from maeprobe.checkpoints import read_pickle
from maeprobe.train.config import load_recipe
from maeprobe.train.engine import _flat, changed_settings, pretrain_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _old(flat: dict) -> dict:
    """Flat saved settings of a run written before umae.batch existed."""
    return {k: v for k, v in flat.items() if k != "umae_batch"}


def test_absent_umae_batch_of_a_umae_run_means_micro():
    old = _old(_flat(load_recipe(RECIPES / "tiny-umae.yaml")))
    assert "umae_batch" not in old and old["method"] == "umae"
    assert changed_settings(old, _flat(load_recipe(RECIPES / "tiny-umae.yaml"))) == ["umae_batch"]  # default global
    assert changed_settings(old, _flat(load_recipe(RECIPES / "tiny-umae.yaml", ["umae.batch=micro"]))) == []


def test_absent_umae_batch_of_another_method_changes_nothing():
    """umae.batch has no effect outside U-MAE: a saved MAE run stays reusable under the default."""
    old = _old(_flat(load_recipe(RECIPES / "tiny-mae.yaml")))
    assert changed_settings(old, _flat(load_recipe(RECIPES / "tiny-mae.yaml"))) == []


def test_a_umae_run_saved_before_umae_batch_resumes_only_with_micro(tmp_path):
    base = ["optim.epochs=1", "run.checkpoint_every=100", f"run.output_dir={tmp_path / 'run'}"]
    config = load_recipe(RECIPES / "tiny-umae.yaml", base)
    last = pretrain_recipe(config, progress=False, stop_after_steps=1)
    state = read_pickle(last)
    assert state["step"] == 1
    args = vars(state["args"])
    args.pop("umae_batch")
    state["args"] = argparse.Namespace(**args)
    torch.save(state, last)
    saved = yaml.safe_load((last.parent / "config.yaml").read_text())  # a legacy run's config.yaml lacks it too
    del saved["umae"]["batch"]
    (last.parent / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(maeprobe.MaeprobeError, match=r"cannot resume.*umae.batch='micro'.*'global'"):
        pretrain_recipe(config, progress=False)
    resumed = pretrain_recipe(load_recipe(RECIPES / "tiny-umae.yaml", base + ["umae.batch=micro"]), progress=False,
                              stop_after_steps=1)
    assert read_pickle(resumed)["step"] == 2  # continued from step 1


def test_a_finished_umae_run_saved_before_umae_batch_is_reused_only_with_micro(tmp_path):
    from maeprobe.findings.runner import _check_reusable

    config = load_recipe(RECIPES / "tiny-umae.yaml", [f"run.output_dir={tmp_path / 'run'}"])
    folder = Path(config["run"]["output_dir"])
    folder.mkdir(parents=True)
    saved = {**config, "umae": {k: v for k, v in config["umae"].items() if k != "batch"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(maeprobe.MaeprobeError, match="umae_batch"):
        _check_reusable(folder, config)
    _check_reusable(folder, load_recipe(RECIPES / "tiny-umae.yaml",
                                        [f"run.output_dir={tmp_path / 'run'}", "umae.batch=micro"]))
