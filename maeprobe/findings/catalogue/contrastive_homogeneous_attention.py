"""``contrastive-homogeneous-attention``: contrastive ViTs attend more homogeneously than MAE in their later layers
(Park et al., "What Do Self-Supervised Vision Transformers Learn?", ICLR 2023, Section 2, Fig. 3; code
naver-ai/cl-vs-mim ``self_attention_analysis.ipynb``).

Evidence, at ``--scale released`` only (it compares published checkpoints): the attention NMI per encoder layer
(``maeprobe.attention_nmi``, the mutual information of query and key positions normalised to [0, 1], averaged over
heads) of the released MAE, DINO and MoCo v3 ViT-B/16 and of random weights of MAE's architecture; uniform attention
gives 0. The rule (``rules_cl_vs_mim.homogeneous_attention_rule``, pre-registered) reads the last third of the blocks.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import rules
from ..evidence import _rows, released_conditions
from ..finding import Finding, Measured
from ..measures import _mean_over_heads
from ..rules_cl_vs_mim import homogeneous_attention_rule

UNIT = "attention NMI, NMI(MAE) - max(NMI(DINO), NMI(MoCo v3)), last third of the blocks"


def on_runs(runs: dict, inputs) -> Measured:
    """Inconclusive: there are no runs of DINO and MoCo v3 to compare with."""
    return Measured(pd.DataFrame(), rules.Verdict(
        np.nan, np.nan, np.nan, rules.INCONCLUSIVE, "measured at --scale released only: it compares the released "
        "MAE with DINO and MoCo v3, whose recipes are not part of the pretraining suite", np.nan, UNIT, 0,
        amended_after_results=False))


def on_released(models: dict, inputs) -> Measured:
    import maeprobe

    (_, mae), (_, init) = released_conditions(models)
    rows = []
    for role, model in (("mae", mae), ("dino", models["dino"][0]), ("mocov3", models["mocov3"][0]), ("init", init)):
        table = _mean_over_heads(maeprobe.measure(model, "attn-nmi", inputs.images, **inputs.common))
        rows += _rows(table, model=role, seed=0)
    return FINDING.judged(pd.DataFrame(rows), figure={"uniform": 0.0, "uniform_label": "uniform attention (NMI 0)"})


FINDING = Finding(
    "contrastive-homogeneous-attention", "contrastive models (DINO, MoCo v3) attend more homogeneously than MAE in "
    "later layers", "cl-vs-mim (Park et al., ICLR 2023), Section 2, Fig. 3", (),
    "attention NMI (query vs key position, patch tokens, unmasked probe, mean over heads) per encoder layer of the "
    "released MAE, DINO and MoCo v3 ViT-B/16; headline: MAE minus the higher of DINO and MoCo v3 over the last third "
    "of the blocks",
    rule=homogeneous_attention_rule, on_runs=on_runs, on_released=on_released, figure="late-layers",
    axis="attention NMI (0 = uniform)", released_roles=("mae", "dino", "mocov3"))
