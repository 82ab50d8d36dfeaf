"""The minimal pretraining loop writes an official training checkpoint that maeprobe loads."""
import argparse
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import maeprobe
from maeprobe.models.registry import PRESETS
from maeprobe.train import PretrainConfig, pretrain


def test_pretrain_saves_an_official_training_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "test_tiny", dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                                   decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2))
    config = PretrainConfig(preset="test_tiny", out=str(tmp_path / "ckpt.pth"), steps=12, batch_size=8,
                            base_lr=1e-2, warmup_steps=3, norm_pix_loss=True, log_every=1)
    path = pretrain(config, progress=False)
    with torch.serialization.safe_globals([argparse.Namespace]):  # only the Namespace needs allowing
        saved = torch.load(path, weights_only=True, map_location="cpu")
    assert isinstance(saved["args"], argparse.Namespace) and saved["args"].norm_pix_loss is True
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= set(saved)
    assert saved["step"] == 12 and set(saved["model"]) == set(maeprobe.build_mae("test_tiny").state_dict())
    model = maeprobe.load(path)
    assert model.config.norm_pix_loss and model.config.num_heads == 3
    assert path == tmp_path / "ckpt.pth" and (tmp_path / "config.yaml").is_file()
    assert maeprobe.load(tmp_path / "ckpt.safetensors").config == model.config
    log = pd.read_csv(tmp_path / "log.csv")
    assert len(log) == 12 and log["loss"].notna().all()
    assert log["lr"].iloc[2] > log["lr"].iloc[0]  # warmup
    assert log["lr"].iloc[-1] < log["lr"].iloc[3]  # cosine decay


def _tiny_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "test_tiny", dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                                   decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2))


def _host_reads(monkeypatch) -> list:
    """Record every ``Tensor.item`` call made by maeprobe's own code from now on (each a host sync on a GPU; the
    CPU-side augmentation of torchvision's transforms reads its random draws too, on the host, and is not counted)."""
    calls, item, package = [], torch.Tensor.item, str(Path(maeprobe.__file__).parent)

    def counted(self):
        caller = sys._getframe(1).f_code.co_filename
        if caller.startswith(package):
            calls.append(f"{caller}:{sys._getframe(1).f_lineno}")
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    return calls


def test_the_loss_is_read_only_at_the_logging_interval(tmp_path, monkeypatch):
    """Sync policy (``PretrainRecipe``): training steps leave the loss on the device; the host reads it at the
    logging interval only, so 6 steps logged twice read as often as 2 steps logged twice."""
    _tiny_preset(monkeypatch)
    reads = {}
    for steps in (2, 6):
        calls = _host_reads(monkeypatch)
        pretrain(PretrainConfig(preset="test_tiny", out=str(tmp_path / f"s{steps}" / "c.pth"), steps=steps,
                                batch_size=4, warmup_steps=1, log_every=steps // 2), progress=False)
        monkeypatch.undo()
        _tiny_preset(monkeypatch)
        reads[steps] = len(calls)
        assert len(pd.read_csv(tmp_path / f"s{steps}" / "log.csv")) == 2
    assert reads[2] == reads[6]


def test_a_non_finite_loss_is_reported_at_the_next_logging_step(tmp_path, monkeypatch):
    """A NaN loss is caught without a per-step sync: at the next sync point, naming the step it appeared at, and
    before its weights reach a log row or a checkpoint (``checkpoint_every`` is 2 here: the step-2 checkpoint is
    the last one written)."""
    from maeprobe.train import engine

    _tiny_preset(monkeypatch)
    forward, calls = engine.Objective.forward, []

    def nan_at_step_2(self, *args, **kwargs):
        calls.append(None)
        loss, parts = forward(self, *args, **kwargs)
        return (loss * float("nan"), parts) if len(calls) == 3 else (loss, parts)

    monkeypatch.setattr(engine.Objective, "forward", nan_at_step_2)
    config = PretrainConfig(preset="test_tiny", out=str(tmp_path / "c.pth"), steps=8, batch_size=4,
                            warmup_steps=1, log_every=4)
    with pytest.raises(FloatingPointError, match=r"^loss is nan at step 2$"):
        pretrain(config, progress=False)
    assert len(calls) == 4  # steps 0-3 ran; the check at the step-4 log row raised
    assert pd.read_csv(tmp_path / "log.csv").empty  # no row of the NaN weights
    with torch.serialization.safe_globals([argparse.Namespace]):  # the step-2 checkpoint, saved before the NaN
        saved = torch.load(tmp_path / "c.pth", weights_only=True, map_location="cpu")
    assert saved["step"] == 2 and all(t.isfinite().all() for t in saved["model"].values())


def test_non_finite_watch_keeps_the_first_bad_loss_on_the_device():
    from maeprobe.train.loop import NonFiniteWatch

    watch = NonFiniteWatch()
    for step, value in enumerate([1.0, float("inf"), float("nan"), 2.0]):
        watch.watch(torch.tensor(value), step)
    assert watch.step.device == watch.value.device == torch.device("cpu")
    with pytest.raises(FloatingPointError, match=r"^loss is inf at step 1$"):
        watch.check()
    NonFiniteWatch().check()  # nothing watched: nothing to report
