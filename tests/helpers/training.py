"""The session's one tiny training (the ``trained_checkpoint`` fixture of conftest.py), through the public API."""
from __future__ import annotations

from pathlib import Path

# Two optimiser steps (no warmup: both move the weights) of the smallest bundled preset on four of the built-in
# photographs: a trained model in a few seconds, for the tests that need one and not a particular training.
TRAINED = dict(preset="mae_vit_tiny_patch8_64", steps=2, batch_size=4, base_lr=1.5e-3, warmup_steps=0, seed=0,
               norm_pix_loss=True, log_every=1, device="cpu")


def train_tiny(folder: Path) -> Path:
    """Pretrain ``TRAINED`` into ``folder`` (checkpoint.pth, log.csv, config.yaml); returns the checkpoint's path."""
    from maeprobe.train import PretrainConfig, pretrain

    return pretrain(PretrainConfig(out=str(Path(folder) / "checkpoint.pth"), **TRAINED), progress=False)
