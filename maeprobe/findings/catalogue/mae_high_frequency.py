"""``mae-high-frequency``: MAE's token features carry more high-frequency amplitude than contrastive models'
(Park et al., "What Do Self-Supervised Vision Transformers Learn?", ICLR 2023, Section 3, Fourier analysis of
representations; code naver-ai/cl-vs-mim ``representation_analysis.ipynb``; the definition from Park & Kim, "How Do
Vision Transformers Work?", ICLR 2022).

Evidence, at ``--scale released`` only: per encoder block, the Δ log amplitude at the highest frequency of the
patch-token feature map relative to its DC component (``maeprobe.fourier_spectrum``, its per-layer summary rows) of
the released MAE, DINO and MoCo v3 ViT-B/16 and of random weights of MAE's architecture. The rule
(``rules_cl_vs_mim.high_frequency_rule``, pre-registered) reads the last third of the blocks.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import rules
from ..evidence import _rows, released_conditions
from ..finding import Finding, Measured
from ..rules_cl_vs_mim import high_frequency_rule

UNIT = "Δ log amplitude at the highest frequency, ΔA(MAE) - max(ΔA(DINO), ΔA(MoCo v3)), last third of the blocks"


def on_runs(runs: dict, inputs) -> Measured:
    """Inconclusive: there are no runs of DINO and MoCo v3 to compare with."""
    return Measured(pd.DataFrame(), rules.Verdict(
        np.nan, np.nan, np.nan, rules.INCONCLUSIVE, "measured at --scale released only: it compares the released "
        "MAE with DINO and MoCo v3, whose recipes are not part of the pretraining suite", np.nan, UNIT, 0,
        amended_after_results=False))


def on_released(models: dict, inputs) -> Measured:
    import maeprobe
    from maeprobe.metrics.fourier import SUMMARY

    (_, mae), (_, init) = released_conditions(models)
    rows = []
    for role, model in (("mae", mae), ("dino", models["dino"][0]), ("mocov3", models["mocov3"][0]), ("init", init)):
        table = maeprobe.measure(model, "fourier", inputs.images, **inputs.common)
        rows += _rows(table[table["metric"] == SUMMARY], model=role, seed=0)
    return FINDING.judged(pd.DataFrame(rows))


FINDING = Finding(
    "mae-high-frequency", "MAE's features carry more high-frequency amplitude than contrastive models' (DINO, "
    "MoCo v3)", "cl-vs-mim (Park et al., ICLR 2023), Section 3 (Fourier analysis)", (),
    "Δ log amplitude at the highest frequency relative to DC of each encoder block's patch-token feature map "
    "(unmasked probe) of the released MAE, DINO and MoCo v3 ViT-B/16; headline: MAE minus the higher of DINO and "
    "MoCo v3 over the last third of the blocks",
    rule=high_frequency_rule, on_runs=on_runs, on_released=on_released, figure="late-layers",
    axis="Δ log amplitude, highest freq. vs DC", released_roles=("mae", "dino", "mocov3"))
