"""The papers' claims as data: for each finding, the runs it needs, what to measure, and its verdict rule
(``rules.py``). Scales say how big those runs are.

Run names are shared between findings (the 0.75-mask MAE serves five of them), so each run trains once.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    id: str
    claim: str
    paper: str
    runs: tuple[str, ...]
    measure: str  # what is measured, in words (the README and ``--list`` print it)


FINDINGS: dict[str, Finding] = {f.id: f for f in (
    Finding("lcmae-collapse", "L_cross alone collapses to a constant; with L_in or L_MAE it does not",
            "LC-MAE Table 1, Section 3.3", ("lcmae-c", "lcmae-e", "lcmae-g"),
            "across-image spread of the encoder's output (patch tokens and CLS, unmasked images), 1 - mean over "
            "positions of |mean over images of the unit vectors|^2, as a ratio to the same seed's initial weights "
            "(unitless; 1 = unchanged by training), settings (c), (e), (g)"),
    Finding("decoder-positional", "decoder attention similarity (Eq. 7) is highest at decoder layer 1, the first "
            "two layers above the rest", "LC-MAE Fig. 2, Section 4.1", ("mae",),
            "Eq. 7 (cosine similarity of decoder attention maps across images, unitless) per layer of an 8-layer "
            "decoder under one shared 0.75 mask; headline: mean of layers 1-2 minus the mean of the later layers"),
    Finding("decoder-semantic", "semantic similarity to a reference (Eq. 8) rises with decoder depth",
            "LC-MAE Fig. 3, Section 4.1", ("mae",),
            "Eq. 8 (S_sim, unitless, 0-1) per decoder layer against the reference (CutLER convention: keys, "
            "W > 0.15); headline: last layer minus first"),
    Finding("mask-ratio-distance", "attention distance grows with the pretraining mask ratio, more in deeper "
            "layers", "LC-MAE Fig. 6, Section 4.2", ("mae-mask30", "mae-mask45", "mae-mask60", "mae", "mae-mask90"),
            "mean attention distance in pixels per encoder layer (unmasked probe) for mask ratios 0.3 ... 0.9; "
            "headline: the mean over layers at 0.9 minus at 0.3, px"),
    Finding("ae-block-distance", "AE(k) attention distance grows with k; AE(patch size) is the smallest",
            "LC-MAE Fig. A.1, Appendix A", ("ae1", "ae3", "ae5", "ae7"),
            "mean attention distance in pixels (over layers and heads) of AE(k), k = 1, 3, 5, 7 patches "
            "(AE(16/48/80/112) at patch 16); headline: largest k minus AE(patch), px"),
    Finding("ae-linear-probe", "AE linear probing is far below MAE's", "LC-MAE Table 3",
            ("mae", "ae1", "ae3", "ae5", "ae7"),
            "linear-probe top-1 (%) of the frozen CLS feature on the labelled set; headline: best AE / MAE (ratio)"),
    Finding("umae-rank", "the uniformity term reduces dimensional collapse", "U-MAE (How Mask Matters), Section 5",
            ("umae", "mae"), "effective rank (exp of the spectral entropy, in dimensions) of the encoder's CLS "
            "feature; headline: U-MAE minus MAE, dimensions"),
    Finding("local-decoders", "Gaussian weighted-average and conv decoders come close to the transformer decoder",
            "LC-MAE Table 2, Section 4.1", ("mae", "mae-gaussian", "mae-conv"),
            "linear-probe top-1 (%) of the frozen encoder on the labelled set for the three decoders (the paper "
            "fine-tunes on ImageNet: a different protocol); headline: transformer minus the worst local decoder, "
            "percentage points"),
    Finding("mae-local-attention", "MAE's attention distance is significantly smaller than DINO's and DeiT's",
            "LC-MAE Fig. 5, Section 4.1", (),
            "mean attention distance in pixels (over layers and heads, unmasked probe) of the released MAE, DINO "
            "and DeiT ViT-B/16 encoders; headline: MAE minus the smaller of DINO and DeiT, px"),
)}

# Findings that need no pretraining: what ``--scale released`` measures on the public checkpoints.
RELEASED_FINDINGS = ("decoder-positional", "decoder-semantic", "mae-local-attention")

# Runs: (bundled recipe, overrides). Block sizes are given in patches so that one table serves every scale.
RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mae": ("tiny-mae.yaml", ("model.decoder_depth=8",)),
    **{f"mae-mask{r}": ("tiny-mae.yaml", ("model.decoder_depth=8", f"model.mask_ratio=0.{r}")) for r in (30, 45, 60, 90)},
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
    # no training: the publicly released ViT-B/16 checkpoints (MAE with its decoder, DINO, DeiT) at 224 px
    "released": Scale("released", None, 16, 0, 0.0, 0, 0, 1000, seeds=1),
}

# What --scale released loads, in order of preference: (role, label, candidates). A candidate is an official
# release file name (torch hub cache) or a timm hub repository (HuggingFace hub cache).
RELEASED = (
    ("mae", "MAE ViT-B/16 with its 8-layer decoder (facebookresearch/mae, 1600 epochs)",
     ("mae_pretrain_vit_base_full.pth", "mae_visualize_vit_base.pth")),
    ("dino", "DINO ViT-B/16 (facebookresearch/dino)", ("dino_vitbase16_pretrain.pth", "timm/vit_base_patch16_224.dino")),
    ("deit", "DeiT-B/16, supervised (facebookresearch/deit)", ("timm/deit_base_patch16_224.fb_in1k", "deit_base_patch16_224-b5f2ef4d.pth")),
)
