"""Verdict rules of the two findings taken from Park et al., "What Do Self-Supervised Vision Transformers Learn?"
(ICLR 2023; code naver-ai/cl-vs-mim), measured on the released checkpoints (``--scale released``).

Pre-registered: these rules were written and committed before any run of either finding (on stand-ins or on
released weights); ``amended_after_results`` is False for them. They follow the conventions of ``rules.py``
(version 3): holds / fails need separated intervals and passed power; interval arithmetic is conservative (the
interval of ``a - b`` is ``[lo(a) - hi(b), hi(a) - lo(b)]``, of a mean of quantities the mean of their bounds);
the released scale judges the published checkpoints themselves, one training run each (``min_seeds`` 1).

Evidence rows: ``model`` in {mae, dino, mocov3, init} (``init``: random weights of MAE's architecture, seed 0),
``seed``, ``layer`` (0-based encoder block), ``value``, ``ci_low``, ``ci_high`` (per layer; for attention NMI the
mean over heads). Both claims are about the later layers: the papers' figures show the contrastive and MIM curves
apart in the second half of the network and close together in the first blocks, which all models share as
patch-embedding-like stages. Pre-registered choice: the **last third of the blocks** (``late_layers``: the last
``max(1, depth // 3)`` blocks; blocks 8-11 of ViT-B/16), each model's estimate the mean over those blocks.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .rules import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NO_POWER,
    Estimate,
    Verdict,
    _lacks,
    _mean_over,
    _missing,
    _result,
    _seeds,
    combine,
)

CONTRASTIVE = ("dino", "mocov3")
NMI_MARGIN = 0.02       # power: MAE's late-layer NMI lies this far above the random weights' (uniform attention: 0)
FOURIER_MARGIN = 0.10   # power: MAE's late-layer high-frequency Δ log amplitude lies this far from random weights'


def late_layers(layers) -> list[int]:
    """The last third of the blocks (at least one): ``sorted(layers)[-max(1, n // 3):]``."""
    layers = sorted({int(v) for v in layers})
    return layers[-max(1, len(layers) // 3):]


def _late_estimates(evidence: pd.DataFrame, models: tuple[str, ...]) -> dict[str, Estimate] | str:
    """Each model's estimate over the late blocks (mean of value and bounds over those blocks), or what lacks."""
    lacking = _lacks(evidence, ("model", "layer", "value", "ci_low", "ci_high"), "model", models)
    if lacking:
        return lacking
    late = late_layers(evidence.loc[evidence["model"] == "mae", "layer"])
    rows = evidence[evidence["layer"].isin(late)]
    values = rows[["value", "ci_low", "ci_high"]].to_numpy(dtype=float)
    if not np.isfinite(values).all():  # a mean over blocks would silently skip a NaN block
        return f"non-finite evidence in blocks {late}"
    out = {}
    for model in models:
        part = _mean_over(_seeds(rows[rows["model"] == model]), ["seed"])
        if part.empty:
            return f"no evidence for {model} in blocks {late}"
        out[model] = combine(part)
    return out


def _minus(a: Estimate, b: Estimate) -> Estimate:
    return Estimate(a.value - b.value, a.low - b.high, a.high - b.low, min(a.seeds, b.seeds))


def _mae_above_contrastive(evidence: pd.DataFrame, unit: str, what: str, powered, no_power: str, levels: str,
                           min_seeds: int) -> Verdict:
    """The shared rule: headline MAE - max(DINO, MoCo v3) over the late blocks, control the same with the random
    weights in MAE's place; holds when MAE's interval lies above both contrastive models', fails when below either's,
    both only with power (``powered(mae, init)``)."""
    est = _late_estimates(evidence, ("mae", *CONTRASTIVE, "init"))
    if isinstance(est, str):
        return _missing(est, unit)
    mae, dino, moco, init = (est[m] for m in ("mae", *CONTRASTIVE, "init"))
    highest = max(dino, moco, key=lambda e: e.value)
    power = powered(mae, init)
    detail = (f"{what}: MAE {mae.text(3)}, DINO {dino.text(3)}, MoCo v3 {moco.text(3)}; random weights "
              f"{init.text(3)}{levels}")
    if power and mae.low > dino.high and mae.low > moco.high:
        verdict = HOLDS
    elif power and (mae.high < dino.low or mae.high < moco.low):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
        if not power:
            detail = f"{NO_POWER}: {no_power}; {detail}"
    return _result(_minus(mae, highest), verdict, detail, control=_minus(init, highest), unit=unit,
                   amended=False, min_seeds=min_seeds, used=(dino, moco, init))


def homogeneous_attention_rule(nmi: pd.DataFrame, min_seeds: int = 1) -> Verdict:
    """cl-vs-mim Section 2 (Fig. 3, NMI): contrastive models attend more homogeneously than MAE in later layers,
    i.e. the attention NMI of MoCo v3 and DINO ViT-B/16 lies below MAE ViT-B/16's in the last third of the blocks.

    Headline: NMI(MAE) - max(NMI(DINO), NMI(MoCo v3)), late blocks. Control: the same difference with the random
    weights in MAE's place. Uniform attention has NMI 0.

    power: MAE's late-block NMI interval lies ``NMI_MARGIN`` above the random weights' interval (MAE's attention is
    not the near-uniform attention of random weights).
    holds: power and ci_low(MAE) > ci_high(DINO) and ci_low(MAE) > ci_high(MoCo v3).
    fails: power and (ci_high(MAE) < ci_low(DINO) or ci_high(MAE) < ci_low(MoCo v3)).
    inconclusive: otherwise.
    """
    unit = "attention NMI, NMI(MAE) - max(NMI(DINO), NMI(MoCo v3)), last third of the blocks"
    return _mae_above_contrastive(
        nmi, unit, "late-block NMI", lambda mae, init: mae.low > init.high + NMI_MARGIN,
        f"MAE's NMI is not {NMI_MARGIN} above the random weights' (the attention of random weights is near uniform, "
        "NMI near 0)", ", uniform attention 0", min_seeds)


def high_frequency_rule(fourier: pd.DataFrame, min_seeds: int = 1) -> Verdict:
    """cl-vs-mim Section 3 (Fourier analysis of the token features): MAE's features carry more high-frequency
    amplitude than the contrastive models', i.e. the Δ log amplitude at the highest frequency (relative to the DC
    component; closer to 0 = more high frequency) of MAE ViT-B/16 lies above DINO's and MoCo v3's in the last
    third of the blocks.

    Headline: ΔA(MAE) - max(ΔA(DINO), ΔA(MoCo v3)), late blocks. Control: the same difference with the random
    weights in MAE's place.

    power: MAE's late-block interval lies ``FOURIER_MARGIN`` away from the random weights' interval.
    holds: power and ci_low(MAE) > ci_high(DINO) and ci_low(MAE) > ci_high(MoCo v3).
    fails: power and (ci_high(MAE) < ci_low(DINO) or ci_high(MAE) < ci_low(MoCo v3)).
    inconclusive: otherwise.
    """
    unit = "Δ log amplitude at the highest frequency, ΔA(MAE) - max(ΔA(DINO), ΔA(MoCo v3)), last third of the blocks"
    return _mae_above_contrastive(
        fourier, unit, "late-block high-frequency Δ log amplitude",
        lambda mae, init: mae.low > init.high + FOURIER_MARGIN or mae.high < init.low - FOURIER_MARGIN,
        f"MAE is not {FOURIER_MARGIN} away from the random weights", "", min_seeds)
