"""Attention statistics without N x N maps: maeprobe's attention distance (all layers) computed from q and k in
query blocks (no N x N map; on CPU the layer output is p @ v of the same blocks) and from full maps
(``--block-queries 0``), against a bare
forward of the same model with fused attention (no statistics at all). Each contestant runs in fresh processes;
each reports its median time and its extra peak memory (peak RSS during the timed runs, sampled every 2 ms, minus
the RSS before them after a warm-up run and ``malloc_trim``; on CUDA ``max_memory_allocated`` minus the memory
before).

    python benchmarks/block_queries.py                         # DINOv2-style ViT-S/14 at 518 px (1,370 tokens), batch 8
    python benchmarks/block_queries.py --img-size 224 --patch 16   # ViT-S/16 at 224 px (197 tokens)
    python benchmarks/block_queries.py --device cuda --images 64 --batch-size 32 --dtype bf16
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Peak resident memory while the block runs (a sampling thread)."""

    def __enter__(self):
        self.peak, self.running = rss_mb(), True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def build(args):
    import torch
    import transformers

    import maeprobe

    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=args.depth, num_attention_heads=6,
                                       intermediate_size=1536, image_size=args.img_size, patch_size=args.patch)
    folder = Path(tempfile.mkdtemp()) / "vit"
    transformers.Dinov2Model(config).save_pretrained(folder)
    return maeprobe.load(folder)


def child(args) -> None:
    import torch

    import maeprobe

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build(args).to(device).eval()
    images = torch.randn(args.images, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(1))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def bare():
        with torch.inference_mode(), autocast:
            for start in range(0, args.images, args.batch_size):
                model.forward_encoder(images[start:start + args.batch_size].to(device), 0.0)

    def probe():
        maeprobe.attention_distance(model, images, batch_size=args.batch_size, device=args.device,
                                    dtype=args.dtype, block_queries=args.block)

    fn = bare if args.block < 0 else probe
    fn()  # warm-up (lazy imports, first-call allocations)
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory back to the system: the RSS below is what is live
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before_gpu = torch.cuda.memory_allocated()
    times = []
    before = rss_mb()
    with PeakRSS() as peak:
        for _ in range(args.rounds):
            tic = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tic)
    extra_gpu = (torch.cuda.max_memory_allocated() - before_gpu) / 2**20 if device.type == "cuda" else float("nan")
    print(json.dumps({"block": args.block, "median": statistics.median(times), "extra_rss_mb": peak.peak - before,
                      "extra_gpu_mb": extra_gpu}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=518)
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1, help="Fresh processes per contestant.")
    parser.add_argument("--blocks", default="0,64,128,256", help="block_queries values to measure (0: full maps)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--block", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.block is not None:
        return child(args)
    contestants = [-1] + [int(b) for b in args.blocks.split(",")]
    results = {c: [] for c in contestants}
    for cycle in range(args.processes):
        order = contestants[cycle % len(contestants):] + contestants[:cycle % len(contestants)]
        for block in order:
            out = subprocess.run([sys.executable, __file__, "--block", str(block), *sys.argv[1:]], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[block].append(json.loads(out))
    import torch

    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    tokens = (args.img_size // args.patch) ** 2 + 1
    print(f"{device} | torch {torch.__version__} | ViT-S/{args.patch} (depth {args.depth}) at {args.img_size} px "
          f"({tokens} tokens), {args.images} images, batch {args.batch_size}, {args.dtype} | attention distance over "
          f"all layers | {args.processes} process(es) per contestant x median of {args.rounds} runs")
    base = {k: statistics.median(r[k] for r in results[-1]) for k in ("median", "extra_rss_mb", "extra_gpu_mb")}
    print("| contestant | median s | time ratio | extra peak RSS MB | memory ratio | extra GPU MB |")
    print("|---|---|---|---|---|---|")
    for block, runs in results.items():
        name = "bare forward (fused attention)" if block < 0 else \
            ("maeprobe, full maps (--block-queries 0)" if block == 0 else f"maeprobe, --block-queries {block}")
        t = statistics.median(r["median"] for r in runs)
        m = statistics.median(r["extra_rss_mb"] for r in runs)
        g = statistics.median(r["extra_gpu_mb"] for r in runs)
        print(f"| {name} | {t:.2f} | {t / base['median']:.2f} | {m:.0f} | {m / max(base['extra_rss_mb'], 1e-9):.2f} "
              f"| {g:.0f} |")


if __name__ == "__main__":
    main()
