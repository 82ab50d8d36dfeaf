"""Probe overhead: hooked attention-distance pass vs a bare forward pass with explicit attention.

Same model, same image batches, one process, runs interleaved (bare, probe, bare, probe, ...) and the
median of each reported; the ratio probe/bare is the number to watch (target <= 1.10). Peak memory is
measured per mode: CUDA max_memory_allocated, or on CPU the peak RSS of a fresh child process that
runs one pass of that mode only.

    python benchmarks/probe_overhead.py                          # CPU: tiny MAE, 64 images
    python benchmarks/probe_overhead.py --preset mae_vit_base_patch16 --images 512 --batch-size 64 --device cuda
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

import maeprobe
from maeprobe.metrics import AttentionDistance
from maeprobe.probe import run_probe


def make(args):
    torch.manual_seed(0)
    model = maeprobe.build_mae(args.preset, decoder_depth=0).eval().to(args.device)
    size = model.config.img_size
    images = torch.randn(args.images, 3, size, size, generator=torch.Generator().manual_seed(0))
    return model, images


def bare_pass(model, images, args):
    for block in model.blocks:
        block.attn.fused_attn = False  # the explicit attention the probe needs, without hooks
    with torch.inference_mode(), torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16,
                                                enabled=args.dtype == "bf16"):
        for start in range(0, len(images), args.batch_size):
            model.forward_encoder(images[start:start + args.batch_size].to(args.device, non_blocking=True), 0.0)
    sync(args)


def probe_pass(model, images, args):
    reducer = AttentionDistance(model)
    run_probe(model, [reducer], images, batch_size=args.batch_size, device=args.device,
              dtype=args.dtype)
    reducer.rows()
    sync(args)


def sync(args):
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mb(args, mode) -> float:
    if args.device.startswith("cuda"):
        model, images = make(args)
        torch.cuda.reset_peak_memory_stats()
        (bare_pass if mode == "bare" else probe_pass)(model, images, args)
        return torch.cuda.max_memory_allocated() / 2**20
    skip = ("child", "repeats", "json", "no_memory")
    cmd = [sys.executable, __file__, "--child", mode] + [f"--{k.replace('_', '-')}={v}" for k, v in
                                                        vars(args).items() if k not in skip]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mae_vit_tiny_patch8_64")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory passes (on CPU two fresh processes; on CUDA one pass each)")
    parser.add_argument("--child", choices=["bare", "probe"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one pass in a fresh process, print peak RSS in MB
        model, images = make(args)
        (bare_pass if args.child == "bare" else probe_pass)(model, images, args)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return

    model, images = make(args)
    bare_pass(model, images, args)  # warm-up both paths
    probe_pass(model, images, args)
    times = {"bare": [], "probe": []}
    for _ in range(args.repeats):
        for mode, fn in (("bare", bare_pass), ("probe", probe_pass)):
            start = time.perf_counter()
            fn(model, images, args)
            times[mode].append(time.perf_counter() - start)
    bare, probe = statistics.median(times["bare"]), statistics.median(times["probe"])
    memory = {mode: float("nan") if args.no_memory else peak_memory_mb(args, mode) for mode in ("bare", "probe")}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    result = {"device": device, "preset": args.preset, "images": args.images, "batch_size": args.batch_size,
              "dtype": args.dtype, "bare_s": round(bare, 4), "probe_s": round(probe, 4),
              "ratio": round(probe / bare, 3), "bare_images_per_s": round(args.images / bare, 1),
              "peak_mem_bare_mb": round(memory["bare"], 1), "peak_mem_probe_mb": round(memory["probe"], 1),
              "torch": torch.__version__}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{device} | {args.preset} | {args.images} images, batch {args.batch_size}, {args.dtype}")
    print(f"  bare forward (explicit attention): {bare:.3f} s  ({args.images / bare:.1f} images/s)")
    print(f"  hooked attention-distance pass:   {probe:.3f} s")
    print(f"  ratio probe / bare: {probe / bare:.3f}  (target <= 1.10)")
    print(f"  peak memory: bare {memory['bare']:.0f} MB, probe {memory['probe']:.0f} MB")


if __name__ == "__main__":
    main()
