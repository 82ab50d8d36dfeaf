"""Tiny inputs the tests build themselves: state dicts, checkpoint files, the bundled recipes' folder, the
benchmark scripts' builders. No downloads, no training (``helpers.training`` trains)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository
RECIPES = ROOT / "recipes"  # the bundled recipes, as the README's commands name them

# One epoch of one optimiser step of 8 built-in photos, no warm-up, a checkpoint every step: the shortest
# ``recipe run`` of a tiny recipe.
QUICK = ["optim.epochs=1", "data.samples_per_epoch=8", "optim.global_batch=8", "optim.warmup_epochs=0",
         "run.checkpoint_every=1"]


def load_benchmark(name: str):
    """A module of benchmarks/ (the GPU check's stand-in builders are shared with the tests)."""
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_state(depth: int = 1, grid: int = 2, width: int = 16) -> dict:
    """A timm-style ViT encoder state dict (patch 8, ``grid`` x ``grid`` patches, ``width`` wide, MLP ratio 4)
    with fixed random weights."""
    g = torch.Generator().manual_seed(0)
    sd = {"patch_embed.proj.weight": torch.randn(width, 3, 8, 8, generator=g) * 0.02,
          "patch_embed.proj.bias": torch.zeros(width), "cls_token": torch.zeros(1, 1, width),
          "pos_embed": torch.randn(1, 1 + grid * grid, width, generator=g) * 0.02,
          "norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": torch.ones(width), p + "norm1.bias": torch.zeros(width),
                   p + "attn.qkv.weight": torch.randn(3 * width, width, generator=g) * 0.05,
                   p + "attn.qkv.bias": torch.zeros(3 * width),
                   p + "attn.proj.weight": torch.randn(width, width, generator=g) * 0.05,
                   p + "attn.proj.bias": torch.zeros(width),
                   p + "norm2.weight": torch.ones(width), p + "norm2.bias": torch.zeros(width),
                   p + "mlp.fc1.weight": torch.randn(4 * width, width, generator=g) * 0.05,
                   p + "mlp.fc1.bias": torch.zeros(4 * width),
                   p + "mlp.fc2.weight": torch.randn(width, 4 * width, generator=g) * 0.05,
                   p + "mlp.fc2.bias": torch.zeros(width)})
    return sd


def save_tiny_safetensors(path, meta=None, **changes):
    """``tiny_state()`` saved as safetensors with maeprobe metadata (``{"num_heads": 2}`` unless ``meta``);
    ``changes`` set single entries: ``blocks__0__attn__qkv__weight=(3, math.inf)`` writes inf at flat index 3."""
    from safetensors.torch import save_file

    state = tiny_state()
    for key, (index, value) in changes.items():
        state[key.replace("__", ".")].view(-1)[index] = value
    save_file(state, str(path), metadata={"maeprobe": json.dumps({"num_heads": 2} if meta is None else meta)})
    return path


def tiny_mae(depth: int = 2, decoder_depth: int = 2, *, seed: int | None = 0, **overrides):
    """The tests' tiny MAE: 32 px, patch 8 (a 4 x 4 grid), width 48 with 3 heads, a transformer decoder 32 wide with
    2 heads; random weights drawn after ``torch.manual_seed(seed)`` (``seed=None``: from the current RNG state).
    ``overrides`` go to ``maeprobe.build_mae``."""
    import maeprobe

    if seed is not None:
        torch.manual_seed(seed)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=48, depth=depth, num_heads=3, decoder_embed_dim=32,
                  decoder_depth=decoder_depth, decoder_num_heads=2)
    return maeprobe.build_mae(**{**kwargs, **overrides})
