"""maeprobe's attention distance against the peers a researcher would otherwise use, on the same weights and
images, in one process: timm's ``AttentionExtract`` + the distance, transformers' ``output_attentions`` (eager)
+ the distance, and a bare timm forward with fused attention (no maps at all). Alternating rounds, median
time per contestant, ratios to the bare forward.

    python benchmarks/peers.py                      # ViT-S/16 at 224 px, random weights, 32 images, batch 16, 2 threads
    python benchmarks/peers.py --device cuda --images 512 --batch-size 64 --dtype bf16
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def distance_matrix(grid: int, patch: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], 1).float() * patch
    return torch.cdist(centres, centres)  # [L, L] pixels


class DistanceSum:
    """The peers' reduction: mean attention distance per (layer, head), patch queries and keys, summed over
    images (the same arithmetic maeprobe does)."""

    def __init__(self, distances: torch.Tensor, prefix: int = 1):
        self.flat, self.prefix, self.total, self.count = None, prefix, 0, 0
        L = distances.shape[0]
        full = torch.zeros(L + prefix, L + prefix)
        full[prefix:, prefix:] = distances
        self.full = full.flatten() / L

    def add(self, maps) -> None:
        per_layer = torch.stack([m.float().flatten(2) @ self.full.to(m.device) for m in maps], 1)  # [B, layers, H]
        self.total = self.total + per_layer.sum(0).cpu()
        self.count += per_layer.shape[0]

    def value(self) -> torch.Tensor:
        return self.total / self.count


def build(depth: int, width: int, heads: int, device):
    """The same random ViT-S/16 as timm, HuggingFace and maeprobe models."""
    import timm
    import transformers

    import maeprobe

    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                    intermediate_size=4 * width, image_size=224, patch_size=16, layer_norm_eps=1e-6,
                                    qkv_bias=True)
    hf = transformers.ViTModel(config, add_pooling_layer=False)
    folder = Path(tempfile.mkdtemp()) / "vit"
    hf.save_pretrained(folder)
    hf = transformers.ViTModel.from_pretrained(folder, add_pooling_layer=False, attn_implementation="eager")
    probe = maeprobe.load(folder)  # maeprobe reads the HF folder itself
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=depth, embed_dim=width,
                            num_heads=heads)
    state = {k: v for k, v in probe.state_dict().items()}
    vit.load_state_dict(state, strict=True)  # maeprobe's names are timm's
    return [m.to(device).eval() for m in (vit, hf, probe)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="Timed runs per process (median).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--processes", type=int, default=3, help="Fresh processes per contestant.")
    parser.add_argument("--only", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from timm.utils import AttentionExtract

    import maeprobe

    vit, hf, probe = build(args.depth, 384, 6, device)
    images = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    distances = distance_matrix(14, 16)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    import copy

    explicit = copy.deepcopy(vit)  # AttentionExtract needs the explicit softmax path (the bare one stays fused)
    for block in explicit.blocks:
        block.attn.fused_attn = False
    extractor = AttentionExtract(explicit, method="fx")

    def batches():
        for start in range(0, args.images, args.batch_size):
            yield images[start:start + args.batch_size].to(device, non_blocking=True)

    @torch.inference_mode()
    def bare():
        with autocast:
            for x in batches():
                vit.forward_features(x)

    @torch.inference_mode()
    def timm_extract():
        acc = DistanceSum(distances)
        with autocast:
            for x in batches():
                acc.add(list(extractor(x).values()))
        return acc.value()

    @torch.inference_mode()
    def transformers_eager():
        acc = DistanceSum(distances)
        with autocast:
            for x in batches():
                acc.add(hf(pixel_values=x, output_attentions=True).attentions)
        return acc.value()

    def maeprobe_distance():
        table = maeprobe.attention_distance(probe, images, batch_size=args.batch_size, device=args.device,
                                            dtype=args.dtype)
        return torch.tensor(table["value"].to_numpy()).view(args.depth, 6)

    contestants = {"bare timm forward (fused attention)": bare, "timm AttentionExtract + distance": timm_extract,
                   "transformers output_attentions + distance": transformers_eager,
                   "maeprobe attention_distance": maeprobe_distance}
    if args.only is None:  # same numbers first: the three distance computations agree
        values = {name: fn() for name, fn in contestants.items() if name != "bare timm forward (fused attention)"}
        reference = values["maeprobe attention_distance"].double()
        for name, value in values.items():
            diff = (value.double() - reference).abs().max().item()
            assert diff < (1e-3 if args.dtype == "fp32" else 0.5), f"{name} disagrees with maeprobe by {diff}"
    if args.only is not None:  # child: time one contestant, print its median
        name = list(contestants)[args.only]
        fn = contestants[name]
        fn()  # warm-up: first-call costs (allocator, lazy imports) are not what is compared
        times = []
        for _ in range(args.rounds):
            if device.type == "cuda":
                torch.cuda.synchronize()
            tic = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tic)
        print(json.dumps({"name": name, "median": statistics.median(times)}))
        return
    # parent: every contestant in fresh processes, alternating, so that no allocator or cache state left by
    # one contestant favours or slows the next (on a shared 2-core machine that state moved single-process
    # ratios by +-40%); the median over processes is reported
    medians = {name: [] for name in contestants}
    for cycle in range(args.processes):
        order = list(range(len(contestants)))
        order = order[cycle % len(order):] + order[:cycle % len(order)]
        for index in order:
            out = subprocess.run([sys.executable, __file__, "--only", str(index), *sys.argv[1:]], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result = json.loads(out)
            medians[result["name"]].append(result["median"])
    base = statistics.median(medians["bare timm forward (fused attention)"])
    name_dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"{name_dev} | ViT-S/16 (depth {args.depth}) at 224 px, {args.images} images, batch {args.batch_size}, "
          f"{args.dtype} | {args.processes} processes per contestant x median of {args.rounds} runs")
    print(f"{'contestant':<46} {'median s':>9} {'images/s':>9} {'ratio':>6}  per process")
    for name, ts in medians.items():
        median = statistics.median(ts)
        print(f"{name:<46} {median:9.3f} {args.images / median:9.1f} {median / base:6.2f}  "
              + " ".join(f"{t:.2f}" for t in ts))


if __name__ == "__main__":
    main()
