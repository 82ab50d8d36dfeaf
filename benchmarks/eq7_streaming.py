"""Eq. 7 (decoder attention similarity): streaming form vs the pairwise form, for N = 250, 1000, 4000.

Streaming: maeprobe's DecoderAttentionSimilarity reducer, fed batch by batch; it keeps one running sum of
unit vectors, S = (|sum a_i|^2 - N) / (N (N - 1)). Pairwise: all N unit vectors kept, the N x N Gram
matrix formed, the off-diagonal mean taken. Both see the same synthetic decoder attention (softmax rows,
seeded per batch). Times cover the reduction only (attention generation excluded); peak memory is the
peak RSS of a fresh process that runs one mode for one N. Default sizes are those of the
mae_vit_tiny_patch8_64 decoder (64 patches, 4 heads, mask ratio 0.75); --tokens 197 --heads 16 gives
ViT-B/16's decoder.

    python benchmarks/eq7_streaming.py
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import maeprobe
from maeprobe.capture import ActivationCache
from maeprobe.masking import MaskInfo, mask_noise
from maeprobe.metrics import DecoderAttentionSimilarity


def batches(args, n):
    L = args.tokens - 1
    noise = mask_noise(L, seed=0)
    for start in range(0, n, args.batch_size):
        b = min(args.batch_size, n - start)
        g = torch.Generator().manual_seed(start)
        attn = torch.randn(b, args.heads, args.tokens, args.tokens, generator=g).softmax(-1)
        cache = ActivationCache()
        cache.attention[("decoder", 0)] = attn
        cache.mask = MaskInfo.from_noise(noise.expand(b, L), 0.75, True)
        cache.image_indices = torch.arange(start, start + b)
        yield cache


def streaming(args, n, model) -> tuple[float, float]:
    reducer = DecoderAttentionSimilarity(model, layers=[0])
    spent = 0.0
    for cache in batches(args, n):
        t = time.perf_counter()
        reducer.update(cache)
        spent += time.perf_counter() - t
    t = time.perf_counter()
    value = reducer.rows()[0]["value"]
    return value, spent + time.perf_counter() - t


def pairwise(args, n, model) -> tuple[float, float]:
    vectors, spent = [], 0.0
    for cache in batches(args, n):
        t = time.perf_counter()
        rows = 1 + torch.nonzero(cache.mask.mask[0]).flatten()
        a = cache.attention[("decoder", 0)][:, :, rows, :].flatten(1).double()
        vectors.append(a / a.norm(dim=1, keepdim=True))
        spent += time.perf_counter() - t
    t = time.perf_counter()
    V = torch.cat(vectors)  # [N, k*h*n]
    gram = V @ V.T  # [N, N]
    value = ((gram.sum() - gram.diagonal().sum()) / (n * (n - 1))).item()
    return value, spent + time.perf_counter() - t


def make_model(args):
    grid = int((args.tokens - 1) ** 0.5)
    return maeprobe.build_mae(img_size=grid, patch_size=1, embed_dim=8, depth=1, num_heads=1,
                              decoder_embed_dim=4 * args.heads, decoder_depth=1, decoder_num_heads=args.heads)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250,1000,4000")
    parser.add_argument("--tokens", type=int, default=65, help="decoder sequence length (1 + patches)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = make_model(args)
    if args.child:
        mode, n = args.child[0], int(args.child[1])
        value, seconds = (streaming if mode == "streaming" else pairwise)(args, n, model)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"value": value, "seconds": seconds, "peak_mb": peak}))
        return
    k = int(0.75 * (args.tokens - 1) + 0.999)  # masked queries (upper bound for printing)
    print(f"Eq. 7 on synthetic decoder attention: {args.heads} heads, {args.tokens} tokens, "
          f"~{k} masked queries -> vectors of {args.heads * k * args.tokens:,} values; "
          f"{torch.get_num_threads()} threads")
    print(f"{'N':>6} | {'streaming s':>11} {'MB':>7} | {'pairwise s':>10} {'MB':>7} | {'time ratio':>10} "
          f"{'mem ratio':>9} | {'|diff|':>8}")
    for n in [int(s) for s in args.sizes.split(",")]:
        out = {}
        for mode in ("streaming", "pairwise"):
            cmd = [sys.executable, __file__, "--child", mode, str(n), f"--tokens={args.tokens}",
                   f"--heads={args.heads}", f"--batch-size={args.batch_size}"]
            out[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        s, p = out["streaming"], out["pairwise"]
        print(f"{n:>6} | {s['seconds']:>11.3f} {s['peak_mb']:>7.0f} | {p['seconds']:>10.3f} {p['peak_mb']:>7.0f} | "
              f"{p['seconds'] / s['seconds']:>10.2f} {p['peak_mb'] / s['peak_mb']:>9.2f} | "
              f"{abs(s['value'] - p['value']):>8.1e}")


if __name__ == "__main__":
    main()
