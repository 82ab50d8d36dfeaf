"""The runs the findings train (each a bundled tiny-* recipe with overrides, and the paper's recipe behind it),
the scales that say how big those runs are, and the released checkpoints ``--scale released`` loads. The
findings themselves are declared in ``catalogue/``.

Run names are shared between findings (the 0.75-mask MAE serves five of them), so each run trains once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Runs: (bundled recipe, overrides). Block sizes are given in patches so that one table serves every scale.
RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mae": ("tiny-mae.yaml", ("model.decoder_depth=8",)),
    **{f"mae-mask{r}": ("tiny-mae.yaml", ("model.decoder_depth=8", f"model.mask_ratio=0.{r}"))
       for r in (30, 45, 60, 90)},
    **{f"ae{k}": ("tiny-ae24.yaml", ("model.decoder_depth=8",)) for k in (1, 3, 5, 7)},  # + pred_size = k x patch
    # U-MAE at the paper's effective strength (recipes/umae_vit_b16.yaml: 1e-4 / 8 processes = 1.25e-5 with an
    # exact gather), not tiny-umae.yaml's 0.01 (800x, chosen there to show an effect in a minute)
    "umae": ("tiny-umae.yaml", ("model.decoder_depth=8", "umae.weight=1.25e-5", "umae.gather=exact")),
    "mae-gaussian": ("tiny-mae-gaussian.yaml", ()),
    "mae-conv": ("tiny-mae-conv.yaml", ()),
    **{f"lcmae-{s}": ("tiny-lcmae-a.yaml", (f"lcmae.mae={w[0]}", f"lcmae.cross={w[1]}", f"lcmae.in_view={w[2]}"))
       for s, w in {"c": (0, 1, 0), "e": (1, 1, 0), "g": (0, 1, 1)}.items()},
}

AE_BLOCKS = {"ae1": 1, "ae3": 3, "ae5": 5, "ae7": 7}  # predicted block side, in patches

# The paper's recipe behind each run (what ``--scale base`` prints).
BASE_RECIPES = {
    "mae": "mae_vit_b16_dec8", **{f"mae-mask{r}": f"mae_vit_b16_mask{r}" for r in (30, 45, 60, 90)},
    "ae1": "ae16", "ae3": "ae48", "ae5": "ae80", "ae7": "ae112", "umae": "umae_vit_b16",
    "mae-gaussian": "mae_vit_b16_decoder_gaussian", "mae-conv": "mae_vit_b16_decoder_conv",
    "lcmae-c": "lcmae_c", "lcmae-e": "lcmae_e", "lcmae-g": "lcmae_g",
}


@dataclass(frozen=True)
class Scale:
    """How big the runs of a scale are. ``steps``: optimiser steps per run (LC-MAE runs use ``lcmae_steps``)."""

    name: str
    preset: str | None
    patch: int
    global_batch: int
    base_lr: float
    steps: int
    lcmae_steps: int
    probe_images: int
    overrides: tuple[str, ...] = field(default_factory=tuple)
    seeds: int = 3  # independently trained runs per finding (default of --seeds)


SCALES = {
    # 2 CPU cores, built-in photographs: 64 px, patch 8, width 192 (the tiny-* recipes)
    "tiny": Scale("tiny", "mae_vit_tiny_patch8_64", 8, 32, 1.5e-3, 240, 160, 128),
    # one GPU: ViT-S/8 at 96 px on an image folder (--data), bf16. Estimated (never measured: no GPU has run it),
    # 2-4 hours for its 45 runs (15 x 3 seeds): about 10 GFLOP per training image (encoder on 25% of 144 tokens,
    # 8-block decoder on all), 2000 x 256 images per run, i.e. ~230 PFLOP in all (about 1 h at an effective
    # 60 TFLOP/s), and ~23 million decoded and augmented images (about 2.7 h at 2,400 images/s from 8 loader
    # workers), so data loading likely bounds it. benchmarks/gpu_check.sh measures steps/s on a lent GPU.
    "small": Scale("small", "mae_vit_small_patch8_96", 8, 256, 1.5e-4, 2000, 1500, 1024,
                   ("data.num_workers=8",)),
    # the paper: ViT-B/16 ImageNet recipes on 8 GPUs (printed, not run)
    "base": Scale("base", None, 16, 1024, 1.5e-4, 0, 0, 50000),
    # no training: the publicly released ViT-B/16 checkpoints (MAE with its decoder, DINO, DeiT, MoCo v3) at 224 px
    "released": Scale("released", None, 16, 0, 0.0, 0, 0, 1000, seeds=1),
}

# What --scale released loads, in order of preference: (role, label, candidates). A candidate is an official
# release file name (torch hub cache) or a timm hub repository (HuggingFace hub cache).
RELEASED = (
    ("mae", "MAE ViT-B/16 with its 8-layer decoder (facebookresearch/mae, 1600 epochs)",
     ("mae_pretrain_vit_base_full.pth", "mae_visualize_vit_base.pth")),
    ("dino", "DINO ViT-B/16 (facebookresearch/dino)",
     ("dino_vitbase16_pretrain.pth", "timm/vit_base_patch16_224.dino")),
    ("deit", "DeiT-B/16, supervised (facebookresearch/deit)",
     ("timm/deit_base_patch16_224.fb_in1k", "deit_base_patch16_224-b5f2ef4d.pth")),
    # facebookresearch/moco-v3 CONFIG.md, "ViT-Base, 300-epoch pre-training": main_moco.py's checkpoint
    # {'epoch', 'arch', 'state_dict': {'module.base_encoder.*', 'module.momentum_encoder.*', 'module.predictor.*'},
    # 'optimizer'}; maeprobe keeps the base encoder (checkpoints/originals.py)
    ("mocov3", "MoCo v3 ViT-B/16 (facebookresearch/moco-v3, 300 epochs)", ("vit-b-300ep.pth.tar",)),
)
ROLES = tuple(role for role, _, _ in RELEASED)
