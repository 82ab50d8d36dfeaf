"""Data for the findings that ship inside installed packages (no download is possible on every machine).

* Probe set: ``probe_images``, fixed random crops of the built-in photographs (scikit-image, scikit-learn,
  matplotlib) or of the images of ``--data``, so that the metrics see more than the 13 photos themselves.
* Labelled toy task: scikit-learn's handwritten digits (1797 8 x 8 images, 10 classes), upsampled to the
  model's input size, split 60/40 per class. Linear probes (Table 2 / Table 3 findings) are trained on it.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..data import builtin_images, find_images, open_image
from ..models import IMAGENET_MEAN, IMAGENET_STD


def _normalise(images: list[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images])  # [N, H, W, 3]
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def probe_images(count: int, size: int, seed: int = 0, folder=None) -> torch.Tensor:
    """``count`` crops (area 30-100%, aspect 3/4-4/3, seeded) of the built-in photos or of ``folder``'s
    images, resized to ``size`` (bicubic) and normalised with ImageNet's mean/std: [count, 3, size, size]."""
    sources = [open_image(p) for p in find_images(folder)[:1000]] if folder else [img for _, img in builtin_images()]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        img = sources[i % len(sources)]
        w, h = img.size
        for _ in range(20):
            area = rng.uniform(0.3, 1.0) * w * h
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw = ch = min(w, h)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crops.append(img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BICUBIC))
    return _normalise(crops)


def digits(size: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    """scikit-learn's digits as RGB images of ``size`` px, normalised: (x_train, y_train, x_val, y_val).
    Split: within each class, every image whose index in the class is 0, 1 mod 5 goes to val (40%)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = [Image.fromarray((img * (255.0 / 16.0)).astype(np.uint8)).resize((size, size), Image.BICUBIC)
              .convert("RGB") for img in data.images]
    labels = data.target
    order_in_class = np.zeros(len(labels), dtype=int)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        order_in_class[idx] = np.arange(len(idx))
    val = order_in_class % 5 < 2
    x = _normalise(images)
    return x[~val], labels[~val], x[val], labels[val]
