"""Pretraining throughput (images/s) and peak memory: the recipe's training step against a plain fp32 eager
loop of the same model, random images, one process, measured in one run.

Recipe step: ``Objective`` of the chosen method (MAE by default) with the engine's switches (bf16 autocast on GPU,
fused AdamW on GPU: ``maeprobe.train.accel``), timm's fused attention (SDPA) and optionally ``torch.compile``.
Baseline: ``loss = model(imgs, 0.75)[0]`` in fp32, eager, explicit (non-fused) attention, AdamW. Ratio = recipe
images/s / baseline images/s. ``--dtype bf16`` autocasts the recipe step on any device (CPU autocast included).

    python benchmarks/pretrain_throughput.py                                   # CPU: tiny MAE
    python benchmarks/pretrain_throughput.py --preset mae_vit_base_patch16 --batch-size 128 --device cuda [--compile]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from maeprobe.train.accel import adamw, autocast, bf16_enabled
from maeprobe.train.config import load_recipe
from maeprobe.train.engine import Objective, build_pretrain_model


def make(args, recipe: bool):
    config = load_recipe(args.recipe, [f"model.preset={args.preset}", f"method={args.method}"])
    torch.manual_seed(0)
    model = build_pretrain_model(config)
    if not recipe:
        for block in list(model.blocks) + list(getattr(model, "decoder_blocks", [])):
            block.attn.fused_attn = False
    module = Objective(model, config).to(args.device) if recipe else model.to(args.device)
    if recipe and args.compile:
        module = torch.compile(module, backend=args.compile_backend)
    if recipe:  # the engine's optimiser: fused on CUDA
        optimizer = adamw(module.parameters(), lr=1e-4, betas=(0.9, 0.95), device=torch.device(args.device))
    else:
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, betas=(0.9, 0.95))
    return module, optimizer, model.config


def recipe_bf16(args) -> bool:
    return bf16_enabled({"auto": True, "bf16": "always", "fp32": False}[args.dtype], torch.device(args.device))


def step(module, optimizer, imgs, noises, recipe: bool, args):
    with autocast(torch.device(args.device), recipe and recipe_bf16(args)):
        loss = module(imgs, noises)[0] if recipe else module(imgs, 0.75, noises[0])[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(args, recipe: bool) -> tuple[float, float]:
    module, optimizer, cfg = make(args, recipe)
    imgs = torch.randn(args.batch_size, 3, cfg.img_size, cfg.img_size, device=args.device)
    views = 2 if args.method == "lcmae" else 1  # as the engine passes them
    noises = [torch.rand(args.batch_size, cfg.num_patches, device=args.device) for _ in range(views)]
    for _ in range(args.warmup):
        step(module, optimizer, imgs, noises, recipe, args)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(module, optimizer, imgs, noises, recipe, args)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    memory = (torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda")
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return args.batch_size / statistics.median(times), memory


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/tiny-mae.yaml")
    parser.add_argument("--preset", default="mae_vit_tiny_patch8_64")
    parser.add_argument("--method", default="mae")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (inductor; aot_eager traces without generating kernels)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                        help="recipe step precision: auto = the engine's default (bf16 on CUDA, fp32 elsewhere), "
                             "bf16 = autocast on any device")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--no-baseline", action="store_true",
                        help="measure the recipe step only (e.g. a compiled run after an eager one)")
    args = parser.parse_args()
    base_speed, base_mem = (float("nan"), float("nan")) if args.no_baseline else measure(args, recipe=False)
    speed, mem = measure(args, recipe=True)
    device = (torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"CPU, {torch.get_num_threads()} threads")
    how = f"{'bf16' if recipe_bf16(args) else 'fp32'} + SDPA"
    how += f" + compile ({args.compile_backend})" if args.compile else ""
    if args.json:
        print(json.dumps({"device": device, "preset": args.preset, "method": args.method,
                          "batch_size": args.batch_size, "recipe_step": how,
                          "baseline_images_per_s": round(base_speed, 1), "recipe_images_per_s": round(speed, 1),
                          "ratio": round(speed / base_speed, 3), "peak_mem_baseline_mb": round(base_mem, 1),
                          "peak_mem_recipe_mb": round(mem, 1), "torch": torch.__version__}))
        return
    print(f"{device} | {args.preset} | {args.method} | batch {args.batch_size}")
    print(f"  baseline fp32 eager loop: {base_speed:8.1f} images/s, peak {base_mem:.0f} MB")
    print(f"  recipe step:              {speed:8.1f} images/s, peak {mem:.0f} MB ({how})")
    print(f"  ratio recipe / baseline: {speed / base_speed:.2f}x")


if __name__ == "__main__":
    main()
