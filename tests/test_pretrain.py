"""The minimal pretraining loop writes an official training checkpoint that maeprobe loads."""
import argparse

import pandas as pd
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
