"""A minimal single-process MAE pretraining loop.

Official loss (MSE on masked patches, optional norm-pix targets), AdamW (betas 0.9/0.95, no weight
decay on biases and norms), effective lr = base_lr * batch / 256 with linear warmup then cosine (timm's
scheduler), MAE's augmentation (RandomResizedCrop scale 0.2-1, horizontal flip). Saves a
facebookresearch/mae training checkpoint ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..checkpoints import save_checkpoint
from ..data import image_items, to_rgb
from ..models import IMAGENET_MEAN, IMAGENET_STD, build_mae


@dataclass
class PretrainConfig:
    """Settings of ``maeprobe pretrain`` (all have toy-scale defaults that run on a laptop CPU)."""

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

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256


class _AugmentedImages(Dataset):
    """``length`` random crops drawn from a small image set (images kept in memory, pre-shrunk)."""

    def __init__(self, images, img_size: int, length: int):
        from torchvision.transforms import v2

        self.images = []
        for img in images:
            img = to_rgb(img)
            scale = 2 * img_size / min(img.size)  # crops of >= 20% area still have >= img_size/2 pixels
            if scale < 1:
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 resample=3)  # bicubic
            self.images.append(img)
        self.length = length
        self.transform = v2.Compose([
            v2.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC,
                                 antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.images[index % len(self.images)])


def _load_images(folder: str | None) -> list:
    from PIL import Image

    images = []
    for item in image_items(folder):
        if item.image is not None:
            images.append(item.image)
        else:
            with Image.open(item.path) as img:
                images.append(to_rgb(img).copy())
    return images


def pretrain(config: PretrainConfig, *, progress: bool = True, model=None) -> Path:
    """Train an MAE and save an official-format checkpoint. Returns the checkpoint path."""
    from timm.optim import param_groups_weight_decay
    from timm.scheduler import CosineLRScheduler
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model is None:
        model = build_mae(config.preset, norm_pix_loss=config.norm_pix_loss)
    model = model.to(device).train()
    dataset = _AugmentedImages(_load_images(config.images), model.config.img_size, config.steps * config.batch_size)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, config.weight_decay), lr=config.lr,
                                  betas=(0.9, 0.95))
    scheduler = CosineLRScheduler(optimizer, t_initial=config.steps, lr_min=0.0, warmup_t=config.warmup_steps,
                                  warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log.csv")
    start, step, loss_value = time.monotonic(), 0, math.nan
    bar = tqdm(total=config.steps, disable=not progress, unit="step", desc="pretrain",
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    with open(log_path, "w", newline="") as log_file:
        log = csv.writer(log_file)
        log.writerow(["step", "loss", "lr", "seconds"])
        for imgs in loader:
            scheduler.step_update(step)
            imgs = imgs.to(device, non_blocking=True)
            loss, _, _ = model(imgs, mask_ratio=config.mask_ratio)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            lr = optimizer.param_groups[0]["lr"]
            if step % config.log_every == 0 or step == config.steps:
                log.writerow([step, f"{loss_value:.5f}", f"{lr:.3e}", f"{time.monotonic() - start:.1f}"])
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if config.max_minutes is not None and time.monotonic() - start > 60 * config.max_minutes:
                break
    bar.close()
    args = argparse.Namespace(**asdict(config), model=config.preset, steps_done=step)
    save_checkpoint(model.eval(), out, optimizer=optimizer.state_dict(), epoch=step, scaler={}, args=args)
    return out
