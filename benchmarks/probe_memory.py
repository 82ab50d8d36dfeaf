"""Peak memory of a probe run does not grow with the number of images or of layers kept: every metric is a
streaming reducer. Each configuration runs in a fresh process and reports its peak RSS (and, on CUDA, the peak
allocated GPU memory); the images stream from a folder of JPEGs, so none of them is held.

    python benchmarks/probe_memory.py                  # tiny MAE, 256 and 1024 images, 1 and all encoder layers
    python benchmarks/probe_memory.py --preset mae_vit_base_patch16 --images 2000 --device cuda
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def child(args) -> None:
    import torch

    import maeprobe

    torch.manual_seed(0)
    model = maeprobe.build_mae(args.preset)
    layers = None if args.layers == "all" else [0]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    table = maeprobe.run([model], args.folder, metrics=["attn-distance", "decoder-attn-sim", "spectrum"],
                         layers=layers, decoder_layers=layers, bootstrap=200, batch_size=args.batch_size,
                         device=args.device)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else float("nan")
    print(json.dumps({"images": int(table["n_images"].iloc[0]), "layers": args.layers, "peak_rss_mb": after / 1024,
                      "rss_before_probe_mb": before / 1024, "gpu_peak_mb": gpu}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mae_vit_tiny_patch8_64")
    parser.add_argument("--images", type=int, default=256, help="The small set; the large one is 4x.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", default="all")
    parser.add_argument("--folder", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    sys.path.insert(0, str(Path(__file__).parent))
    from jpeg_folder import write_jpegs

    root = Path(tempfile.mkdtemp())
    results = []
    for count in (args.images, 4 * args.images):
        folder = root / str(count)
        folder.mkdir()
        write_jpegs(folder, count, size=(160, 120))
        for layers in ("first", "all"):
            out = subprocess.run([sys.executable, __file__, "--child", "--preset", args.preset, "--folder", str(folder),
                                  "--batch-size", str(args.batch_size), "--device", args.device,
                                  "--layers", "all" if layers == "all" else "0"],
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]) | {"layers": layers})
    print(f"{args.device} | {args.preset} | attention distance + Eq. 7 + spectrum, bootstrap 200, "
          f"batch {args.batch_size}")
    print(f"{'images':>7} {'layers':>7} {'RSS before probe MB':>20} {'peak RSS MB':>12} {'GPU peak MB':>12}")
    for r in results:
        print(f"{r['images']:>7} {r['layers']:>7} {r['rss_before_probe_mb']:>20.0f} {r['peak_rss_mb']:>12.0f} "
              f"{r['gpu_peak_mb']:>12.0f}")


if __name__ == "__main__":
    main()
