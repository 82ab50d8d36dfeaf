"""``maeprobe pretrain``: MAE pretraining from command-line options, a front-end to the recipe engine.

Official loss (optionally norm-pix), AdamW (betas 0.9/0.95), lr = base_lr * batch / 256, warmup then cosine,
MAE augmentation; writes a facebookresearch/mae training checkpoint at ``out`` with ``log.csv`` and the
resolved ``config.yaml`` beside it. A folder holding the files of another run (another ``--out`` name or other
settings) or of the user is refused instead of overwritten (``runfolder``); the same command again starts its own
run over. Recipes (``maeprobe recipe run``) expose every other setting.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULTS, _merge
from .engine import pretrain_recipe


@dataclass
class PretrainConfig:
    """Settings of ``maeprobe pretrain`` (toy-scale defaults that run on a laptop CPU)."""

    preset: str = "mae_vit_tiny_patch8_64"
    images: str | None = None  # folder; None: the built-in photographs
    out: str = "outputs/pretrain/checkpoint.pth"
    steps: int = 300
    batch_size: int = 32
    base_lr: float = 1.5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 20
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    max_minutes: float | None = None  # stop early (and save) after this wall time
    seed: int = 0
    device: str | None = None
    num_workers: int = 0
    log_every: int = 10

    def recipe(self) -> dict:
        """The equivalent recipe: one epoch of ``steps`` batches."""
        out = Path(self.out)
        return _merge(DEFAULTS, {
            "name": re.sub(r"[^A-Za-z0-9_.-]", "_", out.stem).lstrip(".") or "pretrain", "task": "pretrain",
            "method": "mae",
            "model": {"preset": self.preset, "mask_ratio": self.mask_ratio, "norm_pix_loss": self.norm_pix_loss},
            "data": {"path": self.images, "samples_per_epoch": self.steps * self.batch_size,
                     "num_workers": self.num_workers},
            "optim": {"epochs": 1, "global_batch": self.batch_size, "base_lr": self.base_lr,
                      "weight_decay": self.weight_decay, "warmup_epochs": self.warmup_steps / max(self.steps, 1)},
            "run": {"output_dir": str(out.parent), "checkpoint_name": out.name, "seed": self.seed,
                    "checkpoint_every": max(self.steps // 4, 1), "log_every": self.log_every,
                    "device": self.device, "resume": False, "max_minutes": self.max_minutes},
        })


def pretrain(config: PretrainConfig, *, progress: bool = True) -> Path:
    """Train an MAE and save an official-format checkpoint at ``config.out``. Returns its path."""
    return pretrain_recipe(config.recipe(), progress=progress)
