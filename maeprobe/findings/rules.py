"""Verdict rules: one pure function per finding, from a small evidence table to holds / fails / inconclusive.

Every rule and threshold here was written from the paper's claim before any run, and is documented in the
README ("Reproducing the findings"); none is tuned to make a finding pass. Conventions:

* ``holds``: the measurement agrees with the claim with the stated margin, judged on 95% bootstrap (or Wilson)
  intervals where the rule says so;
* ``fails``: the measurement contradicts the claim (the point estimates go the other way, or the clear
  failure condition of the rule is met);
* ``inconclusive``: neither (too noisy, too little training, or a needed input is missing).

Each rule returns a ``Verdict``: the headline number (``measured`` with its interval), the verdict and one
sentence saying why.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"


@dataclass(frozen=True)
class Verdict:
    measured: float
    ci_low: float
    ci_high: float
    verdict: str
    detail: str


def _row(table: pd.DataFrame, column: str, key) -> pd.Series:
    rows = table[table[column] == key]
    if len(rows) != 1:
        raise ValueError(f"evidence needs exactly one row with {column} == {key!r}, found {len(rows)}")
    return rows.iloc[0]


def _spearman(x, y) -> float:
    rho = spearmanr(np.asarray(x, dtype=float), np.asarray(y, dtype=float)).statistic
    return float(rho) if np.isfinite(rho) else 0.0


# --------------------------------------------------------------------------- lcmae-collapse (Table 1)
COLLAPSED_BELOW = 0.05  # spread < 0.05: the outputs of different images agree to cos > 0.95 on average
SPREAD_ABOVE = 0.20     # spread > 0.20: clearly not a constant point


def collapse_rule(spread: pd.DataFrame) -> Verdict:
    """LC-MAE Table 1 / Section 3.3: L_cross alone (c) collapses to a constant point; with L_MAE (e) or L_in
    (g) it does not.

    Evidence: one row per ``setting`` in {c, e, g} with the across-image spread of the projected outputs v
    (``value``, ``ci_low``, ``ci_high``): at each masked position, 1 - |mean over images of v/|v||^2, averaged
    over positions (0 = every image gives the same output; about 1 - 1/N for unrelated outputs).

    holds: ci_high(c) < 0.05 and ci_low(e) > 0.20 and ci_low(g) > 0.20.
    fails: (c) clearly did not collapse (ci_low(c) > 0.20) or (e) or (g) clearly did (ci_high < 0.05).
    inconclusive: otherwise. Headline: the spread of (c).
    """
    c, e, g = (_row(spread, "setting", s) for s in "ceg")
    detail = (f"spread (c) {c.value:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}], (e) {e.value:.3f} "
              f"[{e.ci_low:.3f}, {e.ci_high:.3f}], (g) {g.value:.3f} [{g.ci_low:.3f}, {g.ci_high:.3f}]; "
              f"collapsed < {COLLAPSED_BELOW}, spread > {SPREAD_ABOVE}")
    if c.ci_high < COLLAPSED_BELOW and e.ci_low > SPREAD_ABOVE and g.ci_low > SPREAD_ABOVE:
        verdict = HOLDS
    elif c.ci_low > SPREAD_ABOVE or e.ci_high < COLLAPSED_BELOW or g.ci_high < COLLAPSED_BELOW:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Verdict(float(c.value), float(c.ci_low), float(c.ci_high), verdict, detail)


# --------------------------------------------------------------------------- decoder-positional (Fig. 2)
def positional_rule(eq7: pd.DataFrame) -> Verdict:
    """LC-MAE Fig. 2: S_attn (Eq. 7) is highest at decoder layer 1 and the first two layers lie above the rest.

    Evidence: one row per decoder ``layer`` (0-based) with ``value``, ``ci_low``, ``ci_high``; at least 3 layers.

    holds: layer 1 has the largest value, and the intervals of layers 1 and 2 both lie above every later
    layer's interval (ci_low of each > the largest ci_high of layers 3...).
    fails: the mean of layers 1-2 is not above the mean of the later layers, or layer 1 is not the largest
    value of the first two.
    inconclusive: otherwise. Headline: S_attn of layer 1.
    """
    eq7 = eq7.sort_values("layer")
    values, lows, highs = (eq7[c].to_numpy(dtype=float) for c in ("value", "ci_low", "ci_high"))
    if len(values) < 3:
        return Verdict(float(values[0]) if len(values) else np.nan, np.nan, np.nan, INCONCLUSIVE,
                       "needs a decoder of at least 3 layers")
    first_two, rest = values[:2].mean(), values[2:].mean()
    detail = (f"S_attn by layer: {', '.join(f'{v:.3f}' for v in values)}; layers 1-2 mean {first_two:.3f}, "
              f"later layers mean {rest:.3f}")
    if values.argmax() == 0 and min(lows[0], lows[1]) > highs[2:].max():
        verdict = HOLDS
    elif first_two <= rest or values[1] > values[0]:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Verdict(float(values[0]), float(lows[0]), float(highs[0]), verdict, detail)


# --------------------------------------------------------------------------- decoder-semantic (Fig. 3)
def semantic_rule(eq8: pd.DataFrame | None) -> Verdict:
    """LC-MAE Fig. 3: S_sim (Eq. 8, similarity to DINO) is low in shallow decoder layers and rises with depth.

    Evidence: one row per decoder ``layer`` with ``value``, ``ci_low``, ``ci_high``; None when no reference
    model was given (inconclusive: the finding needs one).

    holds: Spearman correlation of S_sim with depth >= 0.7 and the last layer's interval lies above the
    first layer's (ci_low(last) > ci_high(first)).
    fails: the last layer's value is not above the first's, or the correlation is <= 0.
    inconclusive: otherwise. Headline: S_sim(last) - S_sim(first).
    """
    if eq8 is None or eq8.empty:
        return Verdict(np.nan, np.nan, np.nan, INCONCLUSIVE,
                       "no reference model given (--ref DINO checkpoint): Eq. 8 needs one")
    eq8 = eq8.sort_values("layer")
    values = eq8["value"].to_numpy(dtype=float)
    first, last = eq8.iloc[0], eq8.iloc[-1]
    rho = _spearman(eq8["layer"], values)
    reference = eq8["reference"].iloc[0] if "reference" in eq8 else "the reference"
    detail = (f"S_sim by layer vs {reference}: {', '.join(f'{v:.3f}' for v in values)}; Spearman with depth "
              f"{rho:.2f}")
    if rho >= 0.7 and last.ci_low > first.ci_high:
        verdict = HOLDS
    elif last.value <= first.value or rho <= 0:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Verdict(float(last.value - first.value), float(last.ci_low - first.ci_high),
                   float(last.ci_high - first.ci_low), verdict, detail)


# --------------------------------------------------------------------------- mask-ratio-distance (Fig. 6)
def mask_ratio_rule(distance: pd.DataFrame) -> Verdict:
    """LC-MAE Fig. 6: attention distance grows with the pretraining mask ratio, more in deeper layers.

    Evidence: one row per (``mask_ratio``, ``layer``) with the mean over heads ``value`` and its ``ci_low``,
    ``ci_high`` (means of the heads' bounds); at least 3 ratios and 2 layers.

    Let D(r) be the mean over layers, lo/hi its bounds; shallow / deep = the first / second half of layers.
    holds: Spearman(r, D(r)) >= 0.9, lo(max r) > hi(min r), and the increase from the smallest to the largest
    ratio is larger in the deep half than in the shallow half.
    fails: Spearman(r, D(r)) <= 0, or D(max r) < D(min r), or the monotone trend holds but the deep half
    increases less than the shallow half.
    inconclusive: otherwise. Headline: D(max r) - D(min r), in the table's units.
    """
    by_ratio = distance.groupby("mask_ratio")[["value", "ci_low", "ci_high"]].mean().sort_index()
    ratios = by_ratio.index.to_numpy(dtype=float)
    rho = _spearman(ratios, by_ratio["value"])
    lo_r, hi_r = by_ratio.iloc[0], by_ratio.iloc[-1]
    layers = sorted(distance["layer"].unique())
    shallow, deep = layers[: len(layers) // 2], layers[len(layers) // 2:]

    def increase(part):
        rows = distance[distance["layer"].isin(part)].groupby("mask_ratio")["value"].mean().sort_index()
        return float(rows.iloc[-1] - rows.iloc[0])

    inc_shallow, inc_deep = increase(shallow), increase(deep)
    detail = (f"mean distance by mask ratio: {', '.join(f'{r:g}: {v:.2f}' for r, v in by_ratio['value'].items())}; "
              f"Spearman {rho:.2f}; increase {ratios[0]:g}->{ratios[-1]:g}: shallow layers {inc_shallow:+.2f}, "
              f"deep layers {inc_deep:+.2f}")
    trend = rho >= 0.9 and hi_r.ci_low > lo_r.ci_high
    if trend and inc_deep > inc_shallow:
        verdict = HOLDS
    elif rho <= 0 or hi_r.value < lo_r.value or (trend and inc_deep <= inc_shallow):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Verdict(float(hi_r.value - lo_r.value), float(hi_r.ci_low - lo_r.ci_high),
                   float(hi_r.ci_high - lo_r.ci_low), verdict, detail)


# --------------------------------------------------------------------------- ae-block-distance (Fig. A.1)
def ae_distance_rule(distance: pd.DataFrame) -> Verdict:
    """LC-MAE Fig. A.1: the attention distance of AE(k) grows with the block size k; AE(patch size) is the
    smallest.

    Evidence: one row per block size ``k`` (the smallest = the patch size) with the mean distance over
    layers and heads (``value``, ``ci_low``, ``ci_high``); at least 3 sizes.

    holds: AE(patch) has the smallest value with ci_high below every other size's ci_low, and
    Spearman(k, distance) >= 0.8.
    fails: AE(patch) is not the smallest value, or Spearman <= 0.
    inconclusive: otherwise. Headline: D(largest k) - D(patch).
    """
    distance = distance.sort_values("k")
    values = distance["value"].to_numpy(dtype=float)
    rho = _spearman(distance["k"], values)
    patch, largest = distance.iloc[0], distance.iloc[-1]
    detail = (f"mean distance by k: {', '.join(f'AE({int(k)}): {v:.2f}' for k, v in zip(distance['k'], values))}; "
              f"Spearman {rho:.2f}")
    if values.argmin() == 0 and patch.ci_high < distance["ci_low"].iloc[1:].min() and rho >= 0.8:
        verdict = HOLDS
    elif values.argmin() != 0 or rho <= 0:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Verdict(float(largest.value - patch.value), float(largest.ci_low - patch.ci_high),
                   float(largest.ci_high - patch.ci_low), verdict, detail)


# --------------------------------------------------------------------------- accuracies
def wilson_interval(correct: float, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, in percent."""
    if total <= 0:
        return float("nan"), float("nan")
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return 100 * (centre - half), 100 * (centre + half)


def accuracy_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (top1 in percent, n_val) with Wilson ``ci_low`` / ``ci_high`` columns added."""
    table = table.copy()
    bounds = [wilson_interval(t / 100 * n, int(n)) for t, n in zip(table["top1"], table["n_val"])]
    table["ci_low"], table["ci_high"] = zip(*bounds) if bounds else ([], [])
    return table


LEARNED_MARGIN = 10.0  # percentage points above chance before an accuracy counts as "learned something"


def linear_probe_rule(accuracy: pd.DataFrame) -> Verdict:
    """LC-MAE Table 3: the linear-probe accuracy of every AE(k) is far below MAE's (5.6% vs 55.4%: a tenth).

    Evidence: rows with ``model`` ('mae' or 'ae<k>'), ``top1`` (percent), ``n_val`` and ``chance`` (percent).
    "Far below" is taken as at most half of MAE's accuracy.

    holds: MAE's Wilson interval lies at least 10 points above chance, every AE's top-1 <= 0.5 x MAE's, and
    the best AE's interval lies below MAE's (ci_high(AE) < ci_low(MAE)).
    fails: some AE reaches MAE's accuracy (top-1 >= MAE's).
    inconclusive: otherwise (among others: MAE learned nothing usable on the task). Headline: best AE
    top-1 / MAE top-1.
    """
    table = accuracy_intervals(accuracy)
    mae = _row(table, "model", "mae")
    aes = table[table["model"] != "mae"]
    best = aes.loc[aes["top1"].idxmax()]
    ratio = float(best.top1 / mae.top1) if mae.top1 > 0 else float("nan")
    detail = (f"top-1: MAE {mae.top1:.1f}% [{mae.ci_low:.1f}, {mae.ci_high:.1f}], "
              + ", ".join(f"{r.model} {r.top1:.1f}%" for r in aes.itertuples())
              + f"; chance {mae.chance:.1f}%")
    learned = mae.ci_low > mae.chance + LEARNED_MARGIN
    if learned and best.top1 <= 0.5 * mae.top1 and best.ci_high < mae.ci_low:
        verdict = HOLDS
    elif best.top1 >= mae.top1:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Verdict(ratio, float(best.ci_low / mae.ci_high) if mae.ci_high else np.nan,
                   float(best.ci_high / mae.ci_low) if mae.ci_low > 0 else np.nan, verdict, detail)


CLOSE_WITHIN = 5.0   # percentage points: "comes close"
FAR_BEYOND = 15.0    # percentage points below the transformer, with separated intervals: clearly not close


def local_decoders_rule(accuracy: pd.DataFrame) -> Verdict:
    """LC-MAE Table 2: a Gaussian weighted-average decoder and a single conv decoder come close to the
    transformer decoder (82.5% and 82.9% vs 82.9% fine-tuning).

    Evidence: rows with ``model`` in {'transformer', 'gaussian', 'conv'}, ``top1`` (percent), ``n_val``,
    ``chance``.

    holds: the transformer's interval lies 10 points above chance and both local decoders are within 5
    points of the transformer (top-1 >= transformer - 5).
    fails: a local decoder is more than 15 points below the transformer with separated intervals.
    inconclusive: otherwise. Headline: the larger shortfall (transformer - worst local decoder), points.
    """
    table = accuracy_intervals(accuracy)
    ref = _row(table, "model", "transformer")
    local = [_row(table, "model", m) for m in ("gaussian", "conv")]
    worst = min(local, key=lambda r: r.top1)
    gap = float(ref.top1 - worst.top1)
    detail = (f"top-1: transformer {ref.top1:.1f}% [{ref.ci_low:.1f}, {ref.ci_high:.1f}], gaussian "
              f"{local[0].top1:.1f}%, conv {local[1].top1:.1f}%; chance {ref.chance:.1f}%")
    if ref.ci_low > ref.chance + LEARNED_MARGIN and all(r.top1 >= ref.top1 - CLOSE_WITHIN for r in local):
        verdict = HOLDS
    elif any(ref.top1 - r.top1 > FAR_BEYOND and r.ci_high < ref.ci_low for r in local):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Verdict(gap, float(ref.ci_low - worst.ci_high), float(ref.ci_high - worst.ci_low), verdict, detail)


# --------------------------------------------------------------------------- umae-rank (U-MAE)
def umae_rank_rule(ranks: pd.DataFrame) -> Verdict:
    """U-MAE: the uniformity term reduces dimensional collapse, i.e. U-MAE's features have a higher effective
    rank than MAE's.

    Evidence: rows with ``model`` in {'umae', 'mae'} and the effective rank of the encoder's CLS feature
    (``value``, ``ci_low``, ``ci_high``).

    holds: ci_low(U-MAE) > ci_high(MAE).
    fails: U-MAE's effective rank is not above MAE's (value <=).
    inconclusive: otherwise. Headline: effective rank U-MAE - MAE.
    """
    umae, mae = _row(ranks, "model", "umae"), _row(ranks, "model", "mae")
    detail = (f"effective rank of the CLS feature: U-MAE {umae.value:.2f} [{umae.ci_low:.2f}, {umae.ci_high:.2f}], "
              f"MAE {mae.value:.2f} [{mae.ci_low:.2f}, {mae.ci_high:.2f}]")
    if umae.ci_low > mae.ci_high:
        verdict = HOLDS
    elif umae.value <= mae.value:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Verdict(float(umae.value - mae.value), float(umae.ci_low - mae.ci_high),
                   float(umae.ci_high - mae.ci_low), verdict, detail)
