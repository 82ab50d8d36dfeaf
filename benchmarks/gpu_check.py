"""Helpers of ``benchmarks/gpu_check.sh`` (no network needed):

    python benchmarks/gpu_check.py env                 # device name and versions, one "key: value" a line
    python benchmarks/gpu_check.py images DIR [N]      # an ImageFolder (DIR/train, DIR/val; 2 classes, N a class)
    python benchmarks/gpu_check.py standins ROOT       # stand-in checkpoints in official formats in hub caches

``standins`` writes random-weight stand-ins for the files ``maeprobe reproduce --scale released`` reads (an MAE file
with its decoder in the torch hub cache ROOT/torch, DINO's and MoCo v3's release files there, DeiT as a timm hub
snapshot in ROOT/hf), at 32 px; with ``TORCH_HOME=ROOT/torch HF_HUB_CACHE=ROOT/hf HF_HUB_OFFLINE=1`` the command
finds them instead of the released models. ``tests/test_findings_released.py`` uses the same function.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def _vit(arch: str, seed: int):
    import timm
    import torch

    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3,
                             num_classes=0)


def place_stand_ins(root, *, deit: bool = True, mocov3: bool = True) -> None:
    """Random-weight stand-ins of the released MAE, DINO, DeiT and MoCo v3 ViT-B/16 files under ``root``/torch
    (torch hub cache) and ``root``/hf (HuggingFace hub cache); ``deit=False`` / ``mocov3=False`` leave that file out
    (a missing file). MoCo v3's comes in main_moco.py's container (``{'state_dict': {'module.base_encoder.*',
    'module.momentum_encoder.*', ...}}``)."""
    import torch
    from safetensors.torch import save_file

    import maeprobe
    from maeprobe.models import build_mae

    root = Path(root)
    checkpoints = root / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(1)  # not the seed of the random-weights control
    mae = build_mae(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, decoder_embed_dim=32,
                    decoder_depth=3, decoder_num_heads=4)
    maeprobe.save_checkpoint(mae, checkpoints / "mae_pretrain_vit_base_full.pth")  # official {'model': ...} format
    torch.save(_vit("vit_base_patch16_224", 2).state_dict(), checkpoints / "dino_vitbase16_pretrain.pth")
    if deit:
        repo = root / "hf" / "models--timm--deit_base_patch16_224.fb_in1k"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0123abcd")
        snapshot = repo / "snapshots" / "0123abcd"
        snapshot.mkdir(parents=True)
        save_file(_vit("deit_base_patch16_224", 3).state_dict(), str(snapshot / "model.safetensors"))
        (snapshot / "config.json").write_text(json.dumps({"architecture": "deit_base_patch16_224",
                                                          "model_args": {"num_heads": 3}}))
    if mocov3:
        encoder = _vit("vit_base_patch16_224", 4).state_dict()
        momentum = _vit("vit_base_patch16_224", 5).state_dict()
        state = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
        state.update({f"module.momentum_encoder.{k}": v for k, v in momentum.items()})
        torch.save({"epoch": 300, "arch": "vit_base", "state_dict": state}, checkpoints / "vit-b-300ep.pth.tar")


def make_images(folder, per_class: int = 16, size: int = 72) -> None:
    """DIR/train/<class>/*.png and DIR/val/<class>/*.png: two colour classes of ``size`` x ``size`` noisy images
    (``per_class`` in train, half as many in val). The tests' image folders come from here too."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(per_class // 2, 1))):
        for name, colour in (("red", (210, 50, 40)), ("blue", (40, 60, 210))):
            target = Path(folder) / split / name
            target.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(target / f"{i}.png")


def _nccl_version() -> str:
    import torch

    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return "not available"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def environment() -> dict:
    from importlib.metadata import version

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "timm": version("timm"),
            "cpu": platform.processor() or platform.machine(), "cpu_cores": str(len(os.sched_getaffinity(0)))}
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names = sorted({torch.cuda.get_device_name(i) for i in range(count)})
        info.update(device=f"{', '.join(names)} ({count} GPU{'s' if count > 1 else ''})", gpus=str(count),
                    cuda=str(torch.version.cuda), cudnn=str(torch.backends.cudnn.version()),
                    nccl=_nccl_version(),
                    bf16_supported=str(torch.cuda.is_bf16_supported()))
        try:
            query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            smi = subprocess.run(query, capture_output=True, text=True, timeout=30)
            if smi.returncode == 0:
                info["nvidia_smi"] = "; ".join(line.strip() for line in smi.stdout.splitlines() if line.strip())
        except (OSError, subprocess.TimeoutExpired):
            info["nvidia_smi"] = "not available"
    else:
        info.update(device=f"CPU ({info['cpu']}, {info['cpu_cores']} cores)", gpus="0", cuda="n/a", cudnn="n/a",
                    nccl="n/a", bf16_supported="CPU autocast", nvidia_smi="n/a")
    return info


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command == "env":
        for key, value in environment().items():
            print(f"{key}: {value}")
    elif command in ("images", "standins") and len(args) in ((1, 2) if command == "images" else (1,)):
        problem = _occupied(Path(args[0]))
        if problem is None and len(args) == 2 and not (args[1].isdigit() and 1 <= int(args[1]) <= 100_000):
            problem = f"{args[1]!r} is not a number of images per class in [1, 100000]"
        if problem is not None:
            print(f"error: {command} {args[0]!r}: {problem}", file=sys.stderr)
            return 2
        if command == "images":
            make_images(args[0], int(args[1]) if len(args) == 2 else 16)
        else:
            place_stand_ins(args[0])
    else:
        print(f"error: unknown command {' '.join(argv)!r}; see --help", file=sys.stderr)
        return 2
    return 0


def _occupied(folder: Path) -> str | None:
    """Why ``folder`` cannot receive generated files (they would replace files of the same names that this
    script did not write), or None for a new or empty folder."""
    try:
        if not folder.exists() and not folder.is_symlink():
            return None
        if not folder.is_dir():
            return "exists and is not a folder; name a new or empty folder"
        if any(folder.iterdir()):
            return "a folder that already holds files; name a new or empty folder"
    except OSError as exc:
        return f"cannot use it ({exc.strerror or exc})"
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
