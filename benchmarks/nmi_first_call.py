"""Three attention metrics in one pass against a bare forward, on the first call after loading and warm.

``maeprobe.api.run(model, images, metrics=["attn-nmi", "attn-distance", "attn-entropy"])`` (one hooked pass per
batch feeds the three reducers; the default block path, no N x N map) against a bare fused forward of the same
model (``forward_encoder`` under ``inference_mode``, timm's SDPA attention). Each contestant runs in fresh processes:
load the checkpoint, then (a) time the first call (lazy imports, first allocations, the capture's set-up), then
(b) one warm-up call and ``--repeats`` warm calls (median). Memory: extra peak RSS during a call (sampled every
2 ms) minus the RSS just before it (warm: after ``malloc_trim``); on CUDA ``max_memory_allocated`` minus the
memory allocated before. The table reports both ratios (maeprobe / bare) for (a) and (b); targets (issue 29):
<= 1.5x the time and <= 2x the extra peak memory.

    python benchmarks/nmi_first_call.py                          # ViT-S/14 (DINOv2-like) at 518 px, 1,370 tokens
    python benchmarks/nmi_first_call.py --img-size 224 --patch 16  # ViT-S/16 at 224 px: a quick check
    python benchmarks/nmi_first_call.py --width 768 --heads 12 --img-size 512 --patch 16   # ViT-B/16-like
    python benchmarks/nmi_first_call.py --device cuda --images 64 --batch-size 32 --dtype bf16
    python benchmarks/nmi_first_call.py --profile --img-size 224 --patch 16   # where the probe's time goes

The model has random weights (``maeprobe.build_mae``, encoder only; ``--registers`` adds register tokens), saved
as a checkpoint and loaded with ``maeprobe.load`` in each process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from block_queries import PeakRSS, rss_mb  # the same peak-RSS sampler (benchmarks/ is the script's folder)

METRICS = "attn-nmi,attn-distance,attn-entropy"


def save_model(args, folder: Path) -> Path:
    """A random ViT encoder of the requested shape (DINOv2-like: layer scale), saved as a checkpoint."""
    import torch

    import maeprobe

    torch.manual_seed(0)
    model = maeprobe.build_mae(img_size=args.img_size, patch_size=args.patch, embed_dim=args.width, depth=args.depth,
                               num_heads=args.heads, init_values=1e-5, num_reg_tokens=args.registers,
                               pos_embed_learned=True)
    return maeprobe.save_checkpoint(model, folder / "vit.pth")


def child(args) -> None:
    """One contestant in this process: load, the first call, a warm-up, ``--repeats`` warm calls."""
    import ctypes

    import torch

    import maeprobe
    from maeprobe import api
    from maeprobe.metrics import registry

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = maeprobe.load(args.checkpoint, num_heads=args.heads).to(device).eval()
    images = torch.randn(args.images, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(1))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    passes = []
    model.patch_embed.register_forward_pre_hook(lambda *_: passes.append(1))  # forward passes, for the one-pass check

    def bare():
        with torch.inference_mode(), autocast:
            for start in range(0, args.images, args.batch_size):
                model.forward_encoder(images[start:start + args.batch_size].to(device), 0.0)

    def probe():
        table = api.run(model, images, metrics=args.metrics.split(","), batch_size=args.batch_size,
                                 device=args.device, dtype=None if args.dtype == "fp32" else args.dtype,
                                 bootstrap=args.bootstrap)
        assert set(table["metric"]) == {registry.spec(m).column for m in args.metrics.split(",")}

    fn = bare if args.contestant == "bare" else probe

    def timed() -> tuple[float, float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before_gpu = torch.cuda.memory_allocated()
        before = rss_mb()
        with PeakRSS() as peak:
            tic = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - tic
        gpu = (torch.cuda.max_memory_allocated() - before_gpu) / 2**20 if device.type == "cuda" else float("nan")
        return seconds, peak.peak - before, gpu

    first = timed()
    passes_per_call = len(passes)
    fn()  # warm-up
    warm = []
    for _ in range(args.repeats):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory back to the system: the RSS before is what is live
        warm.append(timed())
    print(json.dumps({"contestant": args.contestant, "first": first, "passes": passes_per_call,
                      "warm": [statistics.median(w[i] for w in warm) for i in range(3)]}))


def profile(args) -> None:
    """Where the probe's time goes (CPU, warm, one process): the bare forward, each metric alone and all together
    (median wall and process CPU time of ``--repeats`` calls; each metric reads every layer's attention in its own
    pass over the query blocks), then the operators of one call with all metrics by self CPU time."""
    import torch

    import maeprobe
    from maeprobe import api

    torch.set_num_threads(args.threads)
    model = maeprobe.load(args.checkpoint, num_heads=args.heads).eval()
    images = torch.randn(args.images, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(1))

    def bare():
        with torch.inference_mode():
            for start in range(0, args.images, args.batch_size):
                model.forward_encoder(images[start:start + args.batch_size], 0.0)

    def probe(metrics):
        return lambda: api.run(model, images, metrics=metrics, batch_size=args.batch_size, device="cpu",
                               bootstrap=args.bootstrap)

    metrics = args.metrics.split(",")
    contestants = {"bare forward": bare, **{m: probe([m]) for m in metrics}, "all in one pass": probe(metrics)}
    print("| call | wall s | process CPU s | wall ratio to bare |")
    print("|---|---|---|---|")
    base = None
    for name, fn in contestants.items():
        fn()  # warm-up
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        base = base or wall
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {wall / base:.2f} |")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        contestants["all in one pass"]()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=518)
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--registers", type=int, default=0, help="Register tokens (DINOv2 with registers: 4).")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="Warm calls per process (median).")
    parser.add_argument("--processes", type=int, default=1, help="Fresh processes per contestant.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=200, help="Replicates (the API's default).")
    parser.add_argument("--metrics", default=METRICS, help="Metrics measured in one pass (run --metrics).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--profile", action="store_true", help="Where the time goes instead (CPU, one process).")
    parser.add_argument("--contestant", choices=["bare", "probe"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contestant:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="nmi_bench_") as folder:  # the checkpoint, removed afterwards
        args.checkpoint = str(save_model(args, Path(folder)))
        if args.profile:
            return profile(args)
        results = measure(args)
    report(args, results)


def measure(args) -> dict[str, list[dict]]:
    """Each contestant in ``--processes`` fresh processes (the order alternates): their JSON lines."""
    results = {"bare": [], "probe": []}
    for cycle in range(args.processes):
        for contestant in (["bare", "probe"] if cycle % 2 == 0 else ["probe", "bare"]):
            done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--contestant", contestant,
                                   "--checkpoint", args.checkpoint], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{contestant} failed:\n{done.stderr[-3000:]}")
            results[contestant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def report(args, results: dict[str, list[dict]]) -> None:
    """The set-up line and the markdown table (medians over processes; ratios probe / bare)."""
    import torch

    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"CPU ({os.cpu_count()} cores visible), {args.threads} threads"
    tokens = (args.img_size // args.patch) ** 2 + 1 + args.registers
    print(f"{device} | torch {torch.__version__} | ViT width {args.width}, {args.heads} heads, depth {args.depth}, "
          f"patch {args.patch} at {args.img_size} px ({tokens} tokens), {args.images} images, batch "
          f"{args.batch_size}, {args.dtype} | probe: run --metrics {args.metrics}, bootstrap {args.bootstrap} | "
          f"{args.processes} process(es) per contestant, warm: median of {args.repeats} | forward passes per probe "
          f"call: {results['probe'][0]['passes']} ({-(-args.images // args.batch_size)} batches)")
    print("| call | bare s | probe s | time ratio | bare extra RSS MB | probe extra RSS MB | memory ratio "
          "| bare extra GPU MB | probe extra GPU MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for call in ("first", "warm"):
        b = [statistics.median(r[call][i] for r in results["bare"]) for i in range(3)]
        p = [statistics.median(r[call][i] for r in results["probe"]) for i in range(3)]
        memory = 1 if args.device.startswith("cuda") else 0  # GPU extra on CUDA, RSS otherwise
        ratio = (p[1 + memory] / b[1 + memory]) if b[1 + memory] > 0 else float("nan")
        print(f"| {call} | {b[0]:.2f} | {p[0]:.2f} | **{p[0] / b[0]:.2f}** | {b[1]:.0f} | {p[1]:.0f} | "
              f"**{ratio:.2f}** | {b[2]:.0f} | {p[2]:.0f} |")


if __name__ == "__main__":
    main()
