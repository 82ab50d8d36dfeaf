"""Data for the findings that ship inside installed packages (no download is possible on every machine).

* Probe set: ``probe_images``, fixed random crops of the built-in photographs (scikit-image, scikit-learn,
  matplotlib) or of the images of ``--data``, so that the metrics see more than the 13 photos themselves.
  The crops of one photo are not independent: ``probe_units`` names each crop's source photo, and every
  interval resamples those (``metrics.base``).
* Labelled toy task: scikit-learn's handwritten digits (1797 8 x 8 images, 10 classes), upsampled to the
  model's input size, split 60/40 per class. Linear probes (Table 2 / Table 3 findings) are trained on it.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..data import builtin_images, builtin_source, find_images, open_image
from ..errors import MaeprobeError
from ..models import IMAGENET_MEAN, IMAGENET_STD
from ..validate import one_line


def _normalise(images: list[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images])  # [N, H, W, 3]
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


MAX_SOURCES = 1000  # files of --data the probe crops come from (the first, by sorted path)


def probe_set_bytes(count: int, size: int) -> int:
    """Bytes of the probe set held in memory: ``count`` float32 images of 3 x ``size`` x ``size``."""
    return int(count) * 3 * int(size) * int(size) * 4


def check_probe_set(count: int, size: int) -> int:
    """Refuse, before any image is decoded, a probe set larger than ``MAEPROBE_MAX_PROBE_BYTES``; returns its
    size in bytes (the probe set is the only image memory ``reproduce`` holds for the whole run)."""
    from ..limits import check

    cost = probe_set_bytes(count, size)
    check("MAEPROBE_MAX_PROBE_BYTES", cost, f"--probe-images {count} at {size} px: the probe set of {count:,} images "
                                            f"x 3 x {size}^2 x 4 bytes")
    return cost


def _crop_box(rng, w: int, h: int) -> tuple[int, int, int, int]:
    """One crop (area 30-100%, aspect 3/4-4/3) of a w x h image: (left, top, right, bottom)."""
    for _ in range(20):
        area = rng.uniform(0.3, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw = ch = min(w, h)
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return left, top, left + cw, top + ch


def probe_images(count: int, size: int, seed: int = 0, folder=None) -> torch.Tensor:
    """``count`` crops (area 30-100%, aspect 3/4-4/3, seeded) of the built-in photos or of ``folder``'s
    images (its first ``MAX_SOURCES`` files by sorted path; crop i comes from source i mod the number of
    sources), resized to ``size`` (bicubic) and normalised with ImageNet's mean/std: [count, 3, size, size].

    Memory is bounded before anything is decoded (``check_probe_set``): the result tensor plus one decoded
    source image at a time. Sources are decoded in order, each cropped and dropped; only the sources that some
    crop uses are read. When there are fewer sources than crops, the sources are decoded a second time for the
    later crops (their boxes need the sizes of all sources first, as the seeded draws run in crop order)."""
    check_probe_set(count, size)
    out = torch.empty(count, 3, size, size)
    if folder:
        paths = find_images(folder)[:MAX_SOURCES]
        used = min(count, len(paths))

        def source(j):
            return open_image(paths[j])
    else:
        photos = [img for _, img in builtin_images()]
        used = min(count, len(photos))

        def source(j):
            return photos[j]
    n = len(paths) if folder else len(photos)
    rng = np.random.default_rng(seed)
    sizes = []
    for j in range(used):  # the first crop of every used source, in crop order
        img = source(j)
        sizes.append(img.size)
        out[j] = _normalise([img.crop(_crop_box(rng, *img.size)).resize((size, size), Image.BICUBIC)])[0]
        del img
    boxes = {i: _crop_box(rng, *sizes[i % n]) for i in range(used, count)}  # the rest, in crop order
    for j in range(used if count > n else 0):
        img = source(j)
        if img.size != sizes[j]:
            raise MaeprobeError(f"{one_line(paths[j]) if folder else j}: changed while it was read "
                                f"(was {sizes[j]}, now "
                                f"{img.size}); expected image files that stay the same")
        for i in range(j + n, count, n):
            out[i] = _normalise([img.crop(boxes[i]).resize((size, size), Image.BICUBIC)])[0]
        del img
    return out


class _Decodes(torch.utils.data.Dataset):
    """Decodes file i and returns '' or the one-line reason it cannot be used (``check_image_files``)."""

    def __init__(self, paths: list, size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        try:
            open_image(self.paths[i], self.size)
        except MaeprobeError as exc:
            return str(exc)
        return ""


def check_image_files(paths: list, size: int, flag: str) -> None:
    """Decode every file of ``paths`` once, in order, before any training, and refuse the first that is not a
    readable image within maeprobe's limits with one line naming it and ``flag`` (a corrupt file would
    otherwise stop the run after hours of training, or be silently left out of one split). JPEGs are decoded at
    a reduced scale no smaller than ``size`` (``open_image``'s draft mode): the check needs the decoder to run
    to the end, not full-size pixels. Large folders are decoded by worker processes (one image each at a time)."""
    if not paths:
        return
    workers = 0 if len(paths) < 512 else max(1, min(8, (os.cpu_count() or 1)))
    loader = torch.utils.data.DataLoader(_Decodes(list(paths), size), batch_size=64, num_workers=workers,
                                         collate_fn=list)
    for batch in loader:
        problem = next((reason for reason in batch if reason), None)
        if problem:
            raise MaeprobeError(f"{flag}: {problem} (every image is checked before training; remove or replace "
                                "the file)")


def probe_units(count: int, folder=None) -> list[str]:
    """The source photo of each of ``probe_images``' crops (crop i comes from source i mod the number of
    sources): its file for ``folder``, else the built-in photo's name (the stereo pair counts as one photo)."""
    if folder:
        names = [str(p) for p in find_images(folder)[:MAX_SOURCES]]
    else:
        names = [builtin_source(name) for name, _ in builtin_images()]
    return [names[i % len(names)] for i in range(count)]


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


# ----------------------------------------------------------------------------- labelled evaluation sets
MAX_TRAIN, MAX_VAL = 10_000, 5_000  # images per split of an --eval-data folder (taken evenly across classes)
MAX_CLASSES = 1000


class EvalSet:
    """A labelled set for the linear probes: the built-in digits or an ``--eval-data`` folder.

    ``--eval-data DIR`` is ImageFolder-style: one sub-folder per class (``DIR/<class>/*.jpg``), or ``DIR/train``
    and ``DIR/val`` each with class sub-folders (e.g. CIFAR-10, STL-10 or Imagenette exported to folders).
    Without ``train``/``val``, each class is split 60/40 (sorted file names; indices 0, 1 mod 5 go to val), as
    the digits. At most 10,000 training and 5,000 validation images are used, evenly across classes (sorted
    file names). Images are decoded batch by batch (resize of the shorter side + centre crop), so memory stays
    bounded.
    """

    def __init__(self, folder=None, size: int = 64) -> None:
        self.size, self.folder = size, folder
        if folder is None:
            x_train, self.y_train, x_val, self.y_val = digits(size)
            self._tensors = {"train": x_train, "val": x_val}
            self.name = "scikit-learn digits (1797 8 x 8 images, 10 classes, 60/40 split within each class)"
            return
        self._tensors = None
        self._paths, labels = _image_folder_split(folder)
        self.y_train, self.y_val = labels["train"], labels["val"]
        self.name = (f"{folder} ({len(np.unique(self.y_train))} classes, {len(self.y_train)} training / "
                     f"{len(self.y_val)} validation images)")

    def files(self) -> list:
        """The image files the probes read (training split, then validation split); none for the digits."""
        return [] if self._tensors is not None else [*self._paths["train"], *self._paths["val"]]

    @property
    def chance(self) -> float:
        return 100.0 / len(np.unique(self.y_train))

    def labels(self, split: str) -> np.ndarray:
        return self.y_train if split == "train" else self.y_val

    def batches(self, split: str, batch: int = 128):
        """Normalised image tensors [B, 3, size, size] of a split, in order."""
        if self._tensors is not None:
            x = self._tensors[split]
            for i in range(0, len(x), batch):
                yield x[i:i + batch]
            return
        from ..data import fit_to_size

        paths = self._paths[split]
        for i in range(0, len(paths), batch):
            yield _normalise([fit_to_size(open_image(p), self.size) for p in paths[i:i + batch]])


def _class_folders(root) -> list:
    from pathlib import Path

    folders = sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    return folders


def _image_folder_split(folder):
    from pathlib import Path

    from ..errors import MaeprobeError

    root = Path(folder)
    if not root.is_dir():
        raise MaeprobeError(f"--eval-data {folder}: not a folder")
    splits = {s: root / s for s in ("train", "val")}
    explicit = all(p.is_dir() for p in splits.values())
    classes = sorted({p.name for p in _class_folders(splits["train"] if explicit else root)})
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise MaeprobeError(f"--eval-data {folder}: expected 2 ... {MAX_CLASSES} class folders "
                            f"({'train/ and val/ with ' if explicit else ''}one sub-folder per class), "
                            f"found {len(classes)}")
    per_class = {"train": MAX_TRAIN // len(classes), "val": MAX_VAL // len(classes)}
    paths: dict[str, list] = {"train": [], "val": []}
    labels: dict[str, list] = {"train": [], "val": []}
    for label, name in enumerate(classes):
        if explicit:
            files = {s: _images_in(splits[s] / name, folder) for s in ("train", "val")}
        else:
            found = _images_in(root / name, folder)
            files = {"val": [p for i, p in enumerate(found) if i % 5 < 2],
                     "train": [p for i, p in enumerate(found) if i % 5 >= 2]}
        for split in ("train", "val"):
            chosen = files[split][:per_class[split]]
            paths[split] += chosen
            labels[split] += [label] * len(chosen)
    for split in ("train", "val"):
        if len(set(labels[split])) < 2:
            raise MaeprobeError(f"--eval-data {folder}: the {split} split has images of fewer than 2 classes")
    return paths, {s: np.asarray(v) for s, v in labels.items()}


def _images_in(folder, root) -> list:
    if not folder.is_dir():
        return []
    from ..data import _image_extensions

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _image_extensions() and p.is_file())
