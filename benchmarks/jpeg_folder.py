"""Probing from a folder of JPEGs against probing the same images already decoded, in one process.

A folder of ImageNet-sized JPEGs (500 x 375) is probed with maeprobe's defaults (DataLoader workers from the CPU
count, Pillow draft mode), with 0 workers, and as before this benchmark existed (0 workers, full decode then
resize); the reference is the same images decoded and transformed beforehand (a tensor). Alternating rounds,
median time, images/s and the ratio to the pre-decoded run (goal: >= 0.85 at default settings).

    python benchmarks/jpeg_folder.py                                  # tiny MAE (64 px), 400 JPEGs, all cores
    python benchmarks/jpeg_folder.py --preset mae_vit_base_patch16 --images 2000 --device cuda --batch-size 128
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_jpegs(folder: Path, count: int, size=(500, 375)) -> None:
    """``count`` JPEGs (quality 90) cut from the built-in photographs, resized to ``size``."""
    from maeprobe.data import builtin_images

    photos = [img for _, img in builtin_images()]
    rng = np.random.default_rng(0)
    for i in range(count):
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img.crop((left, top, left + cw, top + ch)).resize(size, Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mae_vit_tiny_patch8_64")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--folder", default=None, help="Existing JPEG folder (default: a temporary one).")
    args = parser.parse_args()
    import maeprobe
    from maeprobe.checkpoints import normalization
    from maeprobe.data import ImageDataset, image_items, make_transform
    from maeprobe.probe import default_workers

    folder = Path(args.folder or tempfile.mkdtemp())
    if args.folder is None:
        write_jpegs(folder, args.images)
    torch.manual_seed(0)
    model = maeprobe.build_mae(args.preset, decoder_depth=0).eval()
    size = model.config.img_size
    mean, std = normalization(model)
    transform = make_transform(size, mean, std)
    full_decode = ImageDataset(image_items(folder), transform)  # no draft mode: as before
    decoded = torch.stack([full_decode[i][0] for i in range(len(full_decode))])

    def run(images, workers):
        return lambda: maeprobe.attention_distance(model, images, batch_size=args.batch_size, device=args.device,
                                                   dtype=args.dtype, num_workers=workers)

    contestants = {"pre-decoded tensor": run(decoded, 0),
                   f"folder, defaults ({default_workers(args.device)} workers, draft)": run(folder, None),
                   "folder, 1 worker, draft": run(folder, 1),
                   "folder, 0 workers, full decode (before)": run(full_decode, 0)}
    times = {name: [] for name in contestants}
    for name, fn in contestants.items():  # warm-up (worker start-up is part of every timed run below)
        fn()
    names = list(contestants)
    for round_ in range(args.rounds):  # alternating rounds, each starting one contestant later
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            fn = contestants[name]
            tic = time.perf_counter()
            fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - tic)
    base = statistics.median(times["pre-decoded tensor"])
    n = len(decoded)
    print(f"{args.device} ({os.cpu_count()} CPU cores) | {args.preset} at {size} px | {n} JPEGs of 500 x 375 | "
          f"batch {args.batch_size} | median of {args.rounds} alternating rounds")
    print(f"{'input':<44} {'median s':>9} {'images/s':>9} {'speed vs pre-decoded':>21}")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:<44} {median:9.3f} {n / median:9.1f} {base / median:21.2f}")


if __name__ == "__main__":
    main()
