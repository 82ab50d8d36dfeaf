"""Verdict rules: one pure function per finding, from small evidence tables to holds / fails / inconclusive.

Version 3 (this file) was written after the version-2 tiny report (``docs/findings-tiny`` at commit 04215b0)
had been read by a reviewer (issue 26), before any run of version 3. Version 2 is kept unchanged in
``rules_v2.py`` and every report shows its verdicts as superseded; version 1's collapse rule likewise. What
changed, and why (``AMENDMENTS`` lists the same for the report):

* **seeds**: every verdict needs at least ``MIN_SEEDS`` = 3 independently trained seeds (version 2 asked for it
  only in ``lcmae-collapse``); fewer give ``inconclusive`` and say what the verdict would have been. The
  released scale judges the published checkpoints themselves (the objects the paper measured, one training
  run each), so it asks for one (``min_seeds=1``, said in the detail);
* **intervals only**: every holds / fails condition compares intervals (version 2 judged "comes close"
  (``local-decoders``) and "far below" (``ae-linear-probe``) on point estimates, and used Spearman
  correlations and arg-max of point estimates as conditions);
* **controls of the same quantity**: ``control`` is the headline quantity computed on the control (each run's
  own same-seed initial weights: a difference of initial weights for a difference, a ratio for a ratio); in
  version 2 five of nine rows held another quantity (e.g. the initial weights' distance beside a difference of
  distances). The encoder's initial weights no longer depend on the decoder's shape (``models.mae``), so AE(k),
  Gaussian and conv runs start from MAE's initial encoder at the same seed (tested);
* **lcmae-collapse**: (e) and (g) must "not collapse", i.e. keep more than half of their initial spread
  (ratio > 0.5), not rise above it (version 2 asked for > 1, more than the claim);
* **decoder-semantic**: a saturated or empty W (density > 0.95 or < 0.05, of the reference or of any decoder
  layer) makes the finding inconclusive: S then measures a density, not semantics;
* **accuracy bounds** are clipped to [0, 100] (a proportion's bounds). This clip was added to version 2 after
  a smoke run (commit "reproduce: seeds, controls ...") and was disclosed only in a commit message; it is
  disclosed here and in every report.

Version 3 was committed in 1e2933a and amended once in de3491f, after an independent review of the code and
before any version-3 measurement (a tiny run had trained five runs and was stopped before measuring): every
local decoder judged on its own gap interval, the seed gate over every estimate a verdict uses, partial evidence
inconclusive instead of an error, and umae-rank compared with its control. It was amended again after the first
version-3 tiny report had been measured (a hostile-input review found that a NaN control counted as passed):
invalid estimates, intervals, measured controls or non-numeric evidence now give inconclusive; no verdict of that
report changed (its inputs were all finite and every verdict was inconclusive).

Conventions: ``holds`` = the measurement agrees with the claim by the stated margin with separated intervals
and a passed control; ``fails`` = it contradicts the claim with separated intervals and a passed control;
``inconclusive`` = neither. Interval arithmetic for differences and means of bounds is conservative: the
interval of ``a - b`` is ``[lo(a) - hi(b), hi(a) - lo(b)]`` (no credit for correlation), of a mean of
quantities the mean of their bounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

HOLDS, FAILS, INCONCLUSIVE, SUPERSEDED = "holds", "fails", "inconclusive", "superseded"
NO_POWER = "no power at this scale"
RULE_VERSION = 3
# Every version-3 rule was written after the version-2 tiny report had been seen (the reason for version 3).
AMENDED_AFTER_RESULTS = True
MIN_SEEDS = 3  # independently trained runs behind any verdict (the released scale: 1, see the module docstring)
# Every rule change made after results had been seen, in order (printed in every report).
AMENDMENTS = (
    "v1 -> v2 (after the v1 tiny report): controls in every rule, intervals for fails, seeds; lcmae-collapse "
    "measured on the encoder's features instead of the projected outputs.",
    "v2, amended after a smoke run without a new version: accuracy bounds clipped to [0, 100] (commit "
    "'reproduce: seeds, controls ...'; disclosed then only in the commit message).",
    "v2 -> v3 (after the v2 tiny report, issue 26): at least 3 seeds for every verdict; intervals, not point "
    "estimates, in every holds/fails condition; control = the headline quantity on each run's same-seed initial "
    "weights; lcmae-collapse (e), (g) need ratio > 0.5 (not > 1); decoder-semantic inconclusive when W is "
    "saturated or empty.",
    "v3, amended before any v3 measurement (code review): every local decoder judged on its own gap interval; "
    "the 3-seed gate over every estimate a verdict uses; partial evidence inconclusive; umae-rank compared with "
    "its control.",
    "v3, amended after the first v3 tiny report had been measured (hostile-input review): a NaN, infinite or "
    "inverted estimate, interval or measured control, or non-numeric evidence, gives inconclusive (a NaN control "
    "counted as passed); no verdict of that report changes (all inputs finite, all verdicts inconclusive).",
)


@dataclass(frozen=True)
class Verdict:
    measured: float
    ci_low: float
    ci_high: float
    verdict: str
    detail: str
    control: float = float("nan")  # the headline quantity (or the power check's quantity) of the control
    unit: str = ""
    seeds: int = 1
    rule_version: int = RULE_VERSION
    amended_after_results: bool = AMENDED_AFTER_RESULTS
    control_low: float = float("nan")
    control_high: float = float("nan")


# --------------------------------------------------------------------------- helpers
def across_seeds(values, lows, highs, confidence: float = 0.95) -> tuple[float, float, float]:
    """Combine per-seed estimates (each with its interval over images) into one estimate and interval.

    Estimate: the mean over seeds. Half-widths, each side: the quadrature sum of the seed term
    ``t_{S-1} * sd / sqrt(S)`` (training variance; Student's t over S seeds, 0 for one seed) and the mean of the
    per-seed image half-widths (the seeds are probed on the same images, so their image errors are taken as
    fully correlated and are not divided by sqrt(S)).
    """
    values, lows, highs = (np.asarray(a, dtype=float) for a in (values, lows, highs))
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    seed_half = 0.0
    if n > 1:
        seed_half = float(student_t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / np.sqrt(n))
    below, above = float(np.mean(values - lows)), float(np.mean(highs - values))
    return mean, mean - float(np.hypot(seed_half, below)), mean + float(np.hypot(seed_half, above))


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    seeds: int

    def text(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"

    def disjoint(self, other: "Estimate") -> bool:
        return self.low > other.high or self.high < other.low

    def excludes(self, level: float) -> bool:
        return self.low > level or self.high < level


def combine(per_seed: pd.DataFrame, value="value", low="ci_low", high="ci_high") -> Estimate:
    """``across_seeds`` of a table with one row per seed."""
    v, lo, hi = across_seeds(per_seed[value], per_seed[low], per_seed[high])
    return Estimate(v, lo, hi, int(len(per_seed)))


def _seeds(table: pd.DataFrame) -> pd.DataFrame:
    return table if "seed" in table else table.assign(seed=0)


def _n_seeds(table: pd.DataFrame, condition: str = "trained") -> int:
    table = _seeds(table)
    if "condition" in table:
        table = table[table["condition"] == condition]
    return int(table["seed"].nunique())


def _contrast(rows: pd.DataFrame, first: list, second: list, key: str) -> tuple[float, float, float]:
    """mean(first) - mean(second) over the ``key`` values of one seed, with conservative bounds."""
    a, b = rows[rows[key].isin(first)], rows[rows[key].isin(second)]
    return (float(a["value"].mean() - b["value"].mean()), float(a["ci_low"].mean() - b["ci_high"].mean()),
            float(a["ci_high"].mean() - b["ci_low"].mean()))


def _per_seed_contrast(table: pd.DataFrame, first: list, second: list, key: str) -> Estimate:
    parts = [_contrast(rows, first, second, key) for _, rows in _seeds(table).groupby("seed")]
    v, lo, hi = (np.array(p) for p in zip(*parts))
    return Estimate(*across_seeds(v, lo, hi), len(parts))


def _conditions(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trained rows, initial-weights rows) of an evidence table with a ``condition`` column."""
    table = _seeds(table)
    return table[table["condition"] == "trained"], table[table["condition"] == "init"]


def _profile(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per-``key`` estimates combined over seeds: columns key, value, ci_low, ci_high."""
    rows = []
    for k, part in _seeds(table).groupby(key):
        e = combine(part)
        rows.append({key: k, "value": e.value, "ci_low": e.low, "ci_high": e.high})
    return pd.DataFrame(rows).sort_values(key).reset_index(drop=True)


def _mean_over(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Means of value and bounds over the other keys (layers, heads) for each combination of ``by``."""
    return _seeds(table).groupby(by)[["value", "ci_low", "ci_high"]].mean().reset_index()


def _seeds_note(seeds: int) -> str:
    return "" if seeds > 1 else " (one seed: training variance is not in the intervals)"


def uniform_attention_distance(grid_size: int, patch_size: int = 1, num_prefix: int = 1) -> float:
    """Mean attention distance of uniform attention over all tokens on a ``grid_size`` x ``grid_size`` patch
    grid (the level of an untrained ViT): the mean over query patches of the mean distance to every patch,
    times L / (L + num_prefix) because attention on prefix tokens counts as distance 0 (the metric's default).
    Computed by brute force over all patch pairs."""
    g = np.arange(grid_size)
    rows, cols = np.meshgrid(g, g, indexing="ij")
    centres = np.stack([rows.ravel(), cols.ravel()], 1).astype(float)
    d = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1)) * patch_size
    L = len(centres)
    return float(d.mean() * L / (L + num_prefix))


EQ7_UNIFORM = 1.0  # Eq. 7 of uniform attention: every image has the same map
CONTRAST_MARGIN = 0.05  # minimum effect of the Eq. 7 / Eq. 8 contrasts beyond the initial weights' (cosine units)


def _away(c: Estimate, control: Estimate) -> bool:
    return c.low > control.high + CONTRAST_MARGIN or c.high < control.low - CONTRAST_MARGIN


def _judge_contrast(c: Estimate, control: Estimate) -> tuple[bool, bool]:
    """(agrees, contradicts): the contrast lies above max(0, control) or below min(0, control) by the margin."""
    return (c.low > max(0.0, control.high) + CONTRAST_MARGIN, c.high < min(0.0, control.low) - CONTRAST_MARGIN)


def _result(headline: Estimate, verdict: str, detail: str, *, control=float("nan"), unit: str,
            version: int = RULE_VERSION, amended: bool = AMENDED_AFTER_RESULTS,
            min_seeds: int = MIN_SEEDS, used: tuple = ()) -> Verdict:
    """The verdict record. ``control``: the headline quantity on the control (an ``Estimate`` or a number).
    Fewer than ``min_seeds`` seeds in the headline or in any other estimate the verdict ``used`` turn holds /
    fails into inconclusive (the detail says what the intervals would give)."""
    seeds = min([headline.seeds] + [e.seeds for e in used])
    bounds = [headline, *used] + ([control] if isinstance(control, Estimate) else [])
    if verdict in (HOLDS, FAILS) and not all(np.isfinite([e.value, e.low, e.high]).all() and e.low <= e.high
                                             for e in bounds):
        detail = (f"an estimate, interval or control is missing or invalid (NaN, infinite or inverted; the "
                  f"intervals alone would say: {verdict}); {detail}")
        verdict = INCONCLUSIVE
    if verdict in (HOLDS, FAILS) and seeds < min_seeds:
        detail = (f"version {version} needs at least {min_seeds} seeds, has {seeds} (with enough seeds "
                  f"these intervals would say: {verdict}); {detail}")
        verdict = INCONCLUSIVE
    if min_seeds == 1 and version >= 3:
        detail += " (released checkpoints: the claim is about these published models, one training run each)"
    if isinstance(control, Estimate):
        c, c_low, c_high = control.value, control.low, control.high
    else:
        c, c_low, c_high = float(control), float("nan"), float("nan")
    return Verdict(headline.value, headline.low, headline.high, verdict, detail + _seeds_note(headline.seeds),
                   float(c), unit, headline.seeds, version, amended, float(c_low), float(c_high))


def _lacks(table: pd.DataFrame | None, columns=(), column: str | None = None, values=()) -> str:
    """What an evidence table lacks for a rule ('' when nothing): required columns, or rows whose ``column``
    holds each of ``values``."""
    if table is None or table.empty:
        return "no evidence"
    missing = [c for c in columns if c not in table]
    if missing:
        return f"the evidence has no {', '.join(missing)} column"
    numeric = [c for c in columns if c in ("value", "ci_low", "ci_high", "top1", "n_val")]
    text = [c for c in numeric if not pd.api.types.is_numeric_dtype(table[c])]
    if text:
        return f"the evidence's {', '.join(text)} column holds non-numbers"
    absent = [v for v in values if column not in table or not (table[column] == v).any()]
    return f"no evidence for {', '.join(map(str, absent))}" if absent else ""


def _missing(what: str, unit: str, seeds: int = 0, version: int = RULE_VERSION) -> Verdict:
    return Verdict(np.nan, np.nan, np.nan, INCONCLUSIVE, what, np.nan, unit, seeds, version,
                   AMENDED_AFTER_RESULTS if version == RULE_VERSION else False)


# --------------------------------------------------------------------------- lcmae-collapse (Table 1)
COLLAPSED_BELOW = 0.05  # v1: spread < 0.05: the outputs of different images agree to cos > 0.95 on average
SPREAD_ABOVE = 0.20     # v1: spread > 0.20: clearly not a constant point


def collapse_rule(spread: pd.DataFrame) -> Verdict:
    """Version 1, superseded by ``collapse_rule_v2`` (kept so that the report shows it and its result).

    LC-MAE Table 1 / Section 3.3: L_cross alone (c) collapses to a constant point; with L_MAE (e) or L_in
    (g) it does not. Evidence: one row per ``setting`` in {c, e, g} with the across-image spread of the
    projected outputs v (``value``, ``ci_low``, ``ci_high``).

    holds: ci_high(c) < 0.05 and ci_low(e) > 0.20 and ci_low(g) > 0.20.
    fails: ci_low(c) > 0.20 or ci_high(e) < 0.05 or ci_high(g) < 0.05. Headline: the spread of (c).
    """
    c, e, g = (combine(_seeds(spread)[spread["setting"] == s]) for s in "ceg")
    detail = (f"spread of v: (c) {c.text()}, (e) {e.text()}, (g) {g.text()}; collapsed < {COLLAPSED_BELOW}, "
              f"spread > {SPREAD_ABOVE}")
    if c.high < COLLAPSED_BELOW and e.low > SPREAD_ABOVE and g.low > SPREAD_ABOVE:
        verdict = HOLDS
    elif c.low > SPREAD_ABOVE or e.high < COLLAPSED_BELOW or g.high < COLLAPSED_BELOW:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return _result(c, verdict, detail, unit="spread of v (1 - |mean unit vector|^2)", version=1, amended=False,
                   min_seeds=1)


COLLAPSE_RATIO_BELOW = 0.5   # training shrank the across-image spread to less than half of the initial one
SPREAD_RATIO_ABOVE = 1.0     # v3 fails (c): training did not shrink the spread of (c) at all
COLLAPSE_MIN_SEEDS = MIN_SEEDS
V1_RESULTS_SEEN = ("spread of v at step 160, seed 0: (c) 0.000, (e) 0.019, (g) 0.212 (v1 verdict: fails); the "
                   "same of h: (c) 0.000, (e) 0.761, (g) 0.193; at initial weights: v 0.011, h 0.017")


def collapse_rule_v3(ratios: pd.DataFrame, min_seeds: int = MIN_SEEDS) -> Verdict:
    """LC-MAE Table 1 / Section 3.3: L_cross alone (c) collapses; with L_MAE (e) or L_in (g) it does not.

    Measure (as version 2): the across-image spread of the encoder's output on unmasked images,
    1 - |mean_n z_hat[n, i]|^2 at each position i, averaged over positions, separately for the patch tokens and
    the CLS token, as a ratio to the same seed's initial weights (paired bootstrap over independent units).
    Evidence: rows (``setting`` in {c, e, g}, ``feature`` in {patch, cls}, ``seed``, ``value``, ``ci_low``,
    ``ci_high``). Control: the initial weights' ratio, 1.

    For each feature:
    holds: ci_high(c) < 0.5 (collapsed to less than half the initial spread) and ci_low(e) > 0.5 and
    ci_low(g) > 0.5 (not collapsed; version 2 asked for > 1, more than the claim);
    fails: ci_low(c) > 1 (no shrinkage at all), or ci_high(e) < 0.5, or ci_high(g) < 0.5.
    The finding holds when both features hold, fails when either fails, else inconclusive.
    Headline: the patch-token ratio of (c).
    """
    unit = "ratio of the encoder's across-image spread, trained / same-seed initial weights"
    lacking = _lacks(ratios, ("setting", "feature", "value", "ci_low", "ci_high")) or \
        _lacks(ratios, column="setting", values="ceg") or _lacks(ratios, column="feature", values=("patch", "cls"))
    if lacking:
        return _missing(lacking, unit)
    est = {(s, f): combine(_seeds(ratios)[(ratios["setting"] == s) & (ratios["feature"] == f)])
           for s in "ceg" for f in ("patch", "cls")}
    verdicts = {}
    for f in ("patch", "cls"):
        c, e, g = (est[s, f] for s in "ceg")
        if c.high < COLLAPSE_RATIO_BELOW and e.low > COLLAPSE_RATIO_BELOW and g.low > COLLAPSE_RATIO_BELOW:
            verdicts[f] = HOLDS
        elif c.low > SPREAD_RATIO_ABOVE or e.high < COLLAPSE_RATIO_BELOW or g.high < COLLAPSE_RATIO_BELOW:
            verdicts[f] = FAILS
        else:
            verdicts[f] = INCONCLUSIVE
    detail = "; ".join(f"{f} tokens: (c) {est['c', f].text()}, (e) {est['e', f].text()}, (g) {est['g', f].text()} "
                       f"-> {verdicts[f]}" for f in ("patch", "cls"))
    detail = (f"spread ratio to initial weights, {detail}; collapsed < {COLLAPSE_RATIO_BELOW} (c), not collapsed > "
              f"{COLLAPSE_RATIO_BELOW} (e, g)")
    if all(v == HOLDS for v in verdicts.values()):
        verdict = HOLDS
    elif any(v == FAILS for v in verdicts.values()):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    one = Estimate(1.0, 1.0, 1.0, est["c", "patch"].seeds)
    return _result(est["c", "patch"], verdict, detail, control=one, unit=unit, min_seeds=min_seeds,
                   used=tuple(est.values()))


def _not_below_earlier(profile: pd.DataFrame) -> bool:
    """No point of a profile (sorted by its key) has its interval entirely below an earlier point's interval."""
    lows, highs = profile["ci_low"].to_numpy(dtype=float), profile["ci_high"].to_numpy(dtype=float)
    return all(highs[j] >= lows[i] for i in range(len(lows)) for j in range(i + 1, len(lows)))


# --------------------------------------------------------------------------- decoder-positional (Fig. 2)
def positional_rule(eq7: pd.DataFrame, min_seeds: int = MIN_SEEDS) -> Verdict:
    """LC-MAE Fig. 2: S_attn (Eq. 7) is highest at decoder layer 1 and the first two layers lie above the rest.

    Evidence: rows (``condition`` in {trained, init}, ``seed``, ``layer`` 0-based, ``value``, ``ci_low``,
    ``ci_high``), at least 3 layers. Headline: the contrast C = mean(S_1, S_2) - mean(S_3 ...), per seed, then
    across seeds. Controls: the same seed's initial weights (C_init, the control column) and uniform attention
    (S = 1 at every layer, so C = 0).

    holds: ci_low(C) > max(0, ci_high(C_init)) + 0.05, no later layer's interval lies above layer 1's, and the
    intervals of layers 1 and 2 lie above every later layer's.
    fails: ci_high(C) < min(0, ci_low(C_init)) - 0.05.
    inconclusive: otherwise; "no power" when C is not 0.05 away from C_init's interval.
    """
    unit = "Eq. 7 contrast, mean(layers 1-2) - mean(later layers) (cosine similarity)"
    lacking = _lacks(eq7, ("layer", "value", "ci_low", "ci_high"))
    if lacking:
        return _missing(lacking, unit)
    trained, init = (_seeds(eq7)[eq7["condition"] == c] if "condition" in eq7 else None for c in ("trained", "init"))
    layers = sorted(trained["layer"].unique()) if trained is not None else []
    if len(layers) < 3:
        return _missing("needs a decoder of at least 3 layers", unit)
    if init is None or init.empty:
        return _missing("no control: the initial weights were not measured", unit, _n_seeds(eq7))
    c_tr = _per_seed_contrast(trained, layers[:2], layers[2:], "layer")
    c_init = _per_seed_contrast(init, layers[:2], layers[2:], "layer")
    profile = _profile(trained, "layer")
    values, lows, highs = (profile[k].to_numpy(dtype=float) for k in ("value", "ci_low", "ci_high"))
    detail = (f"S_attn by layer (trained): {', '.join(f'{v:.3f}' for v in values)}; contrast C {c_tr.text()}, "
              f"initial weights {c_init.text()}, uniform attention 0")
    agrees, contradicts = _judge_contrast(c_tr, c_init)
    first_on_top = not (lows[1:] > highs[0]).any()
    if agrees and first_on_top and min(lows[0], lows[1]) > highs[2:].max():
        verdict = HOLDS
    elif contradicts:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
        if not _away(c_tr, c_init):
            detail = (f"{NO_POWER}: the trained decoder's contrast is not {CONTRAST_MARGIN} away from its initial "
                      f"weights'; {detail}")
    return _result(c_tr, verdict, detail, control=c_init, unit=unit, min_seeds=min_seeds, used=(c_init,))


# --------------------------------------------------------------------------- decoder-semantic (Fig. 3)
W_SATURATED_ABOVE, W_EMPTY_BELOW = 0.95, 0.05  # as metrics.semantic_similarity's w_flag


def _w_problem(eq8: pd.DataFrame) -> str:
    """Why W carries no semantics ('' when it does): the reference's or a decoder layer's W saturated or empty."""
    problems = []
    for column, side in (("ref_w_density", "the reference's"), ("w_density", "a decoder layer's")):
        if column not in eq8:
            continue
        density = pd.to_numeric(eq8[column], errors="coerce")
        if (density > W_SATURATED_ABOVE).any():
            problems.append(f"{side} W is saturated (density up to {density.max():.2f} > {W_SATURATED_ABOVE}: S "
                            "then measures only the other side's density)")
        if (density < W_EMPTY_BELOW).any():
            problems.append(f"{side} W is empty (density down to {density.min():.2f} < {W_EMPTY_BELOW})")
    return "; ".join(problems)


def semantic_rule(eq8: pd.DataFrame | None, min_seeds: int = MIN_SEEDS) -> Verdict:
    """LC-MAE Fig. 3: S_sim (Eq. 8, similarity to DINO) is low in shallow decoder layers and rises with depth.

    Evidence: rows (``condition`` in {trained, init}, ``seed``, ``layer``, ``value``, ``ci_low``, ``ci_high``,
    ``reference``, ``w_density``, ``ref_w_density``); None without a reference model (inconclusive). Headline:
    D = S_sim(last) - S_sim(first), per seed, then across seeds. Control: the same seed's initial weights
    (D_init).

    inconclusive first when W is saturated or empty on either side (density > 0.95 or < 0.05): S then measures
    a density, not semantic agreement.
    holds: ci_low(D) > max(0, ci_high(D_init)) + 0.05 and no layer's interval lies entirely below an earlier
    layer's (the rise has no significant dip).
    fails: ci_high(D) < min(0, ci_low(D_init)) - 0.05.
    inconclusive: otherwise; "no power" when D is not 0.05 away from D_init's interval.
    """
    unit = "Eq. 8 difference, last decoder layer - first (S_sim)"
    if eq8 is None or eq8.empty:
        return _missing("no reference model given (--ref DINO checkpoint): Eq. 8 needs one", unit)
    lacking = _lacks(eq8, ("condition", "layer", "value", "ci_low", "ci_high"))
    if lacking:
        return _missing(lacking, unit)
    trained, init = _conditions(eq8)
    layers = sorted(trained["layer"].unique())
    if len(layers) < 2:
        return _missing("needs a decoder of at least 2 layers", unit)
    if init.empty:
        return _missing("no control: the initial weights were not measured", unit, _n_seeds(eq8))
    d_tr = _per_seed_contrast(trained, [layers[-1]], [layers[0]], "layer")
    d_init = _per_seed_contrast(init, [layers[-1]], [layers[0]], "layer")
    profile = _profile(trained, "layer")
    reference = eq8["reference"].iloc[0] if "reference" in eq8 else "the reference"
    detail = (f"S_sim by layer vs {reference} (trained): {', '.join(f'{v:.3f}' for v in profile['value'])}; "
              f"last - first {d_tr.text()}, initial weights {d_init.text()}")
    agrees, contradicts = _judge_contrast(d_tr, d_init)
    problem = _w_problem(trained)
    if problem:
        verdict, detail = INCONCLUSIVE, f"W carries no semantics: {problem}; {detail}"
    elif agrees and _not_below_earlier(profile):
        verdict = HOLDS
    elif contradicts:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
        if not _away(d_tr, d_init):
            detail = (f"{NO_POWER}: the trained decoder's difference is not {CONTRAST_MARGIN} away from its initial "
                      f"weights'; {detail}")
    return _result(d_tr, verdict, detail, control=d_init, unit=unit, min_seeds=min_seeds, used=(d_init,))


# --------------------------------------------------------------------------- attention-distance power check
DISTANCE_MARGIN = 0.10  # minimum effect: 10% of the uniform-attention level (3.3 px on the tiny 8 x 8 grid)


def _distance_power(trained: list[Estimate], init: Estimate, uniform: float) -> bool:
    """Positive control of the distance findings: some trained model's distance interval lies at least
    ``DISTANCE_MARGIN`` x uniform away from the uniform-attention level and from the initial weights' interval
    (statistical separation alone would let a 0.01 px difference count)."""
    margin = DISTANCE_MARGIN * uniform
    return any((e.low > uniform + margin or e.high < uniform - margin)
               and (e.low > init.high + margin or e.high < init.low - margin) for e in trained)


def _no_power_distance(init: Estimate, uniform: float, unit: str) -> str:
    return (f"{NO_POWER}: no trained encoder's attention distance lies {DISTANCE_MARGIN:.0%} of the uniform level "
            f"away from its initial weights' ({init.text(4)} {unit}) and from uniform attention ({uniform:.4g} {unit})")


def _init_contrast(init: pd.DataFrame, key: str, first, last, seeds: int) -> Estimate:
    """The headline difference on the initial weights: each run's own init rows carry ``key``; evidence
    written with one init per seed (no ``key``) gives 0 (one model on both sides)."""
    if key in init and init[key].notna().any():
        per_seed = _mean_over(init, [key, "seed"])
        return _per_seed_contrast(per_seed, [last], [first], key)
    return Estimate(0.0, 0.0, 0.0, seeds)


# --------------------------------------------------------------------------- mask-ratio-distance (Fig. 6)
def _half_increase(trained: pd.DataFrame, part: list, first, last) -> pd.DataFrame:
    """Per seed: the increase of the mean distance over ``part``'s layers from ratio ``first`` to ``last``, with
    conservative bounds (columns seed, value, ci_low, ci_high)."""
    rows = []
    for seed, t in _seeds(trained).groupby("seed"):
        t = t[t["layer"].isin(part)]
        a, b = (t[t["mask_ratio"] == r][["value", "ci_low", "ci_high"]].mean() for r in (last, first))
        rows.append({"seed": seed, "value": a["value"] - b["value"], "ci_low": a["ci_low"] - b["ci_high"],
                     "ci_high": a["ci_high"] - b["ci_low"]})
    return pd.DataFrame(rows)


def mask_ratio_rule(distance: pd.DataFrame, uniform: float, units: str = "px", min_seeds: int = MIN_SEEDS) -> Verdict:
    """LC-MAE Fig. 6: attention distance grows with the pretraining mask ratio, more in deeper layers.

    Evidence: rows (``condition`` in {trained, init}, ``mask_ratio`` (each run's own initial weights carry their
    run's ratio), ``seed``, ``layer``, ``value``, ``ci_low``, ``ci_high``: the mean over heads). D(r) = the mean
    over layers; shallow / deep = the first / second half of the layers. Headline: D(max r) - D(min r), per
    seed, then across seeds. Controls: the same difference on the runs' same-seed initial weights (the control
    column; 0 when the encoders' initialisation does not depend on the ratio) and ``uniform``.

    power: some ratio's D interval lies 10% of ``uniform`` (``DISTANCE_MARGIN``) away from the
    initial weights' interval and from ``uniform``.
    holds: power, ci_low(headline) > max(0, ci_high(control)), the deep half's increase exceeds the shallow
    half's with separated intervals (ci_low of deep - shallow > 0), and no larger ratio's D interval lies
    entirely below a smaller ratio's.
    fails: power and ci_high(headline) < min(0, ci_low(control)).
    inconclusive: otherwise.
    """
    unit = f"attention distance ({units}), D(largest mask ratio) - D(smallest)"
    lacking = _lacks(distance, ("condition", "mask_ratio", "layer", "value", "ci_low", "ci_high"))
    if lacking:
        return _missing(lacking, unit)
    trained, init = _conditions(distance)
    if trained.empty or init.empty:
        return _missing("no control: the initial weights were not measured", unit)
    ratios = sorted(trained["mask_ratio"].unique())
    per_seed = _mean_over(trained, ["mask_ratio", "seed"])
    by_ratio = {r: combine(per_seed[per_seed["mask_ratio"] == r]) for r in ratios}
    d_init = combine(_mean_over(init, ["seed"]))
    headline = _per_seed_contrast(per_seed, [ratios[-1]], [ratios[0]], "mask_ratio")
    control = _init_contrast(init, "mask_ratio", ratios[0], ratios[-1], headline.seeds)
    layers = sorted(trained["layer"].unique())
    shallow, deep = layers[: len(layers) // 2], layers[len(layers) // 2:]
    inc_shallow = combine(_half_increase(trained, shallow, ratios[0], ratios[-1]))
    inc_deep = combine(_half_increase(trained, deep, ratios[0], ratios[-1]))
    deeper = Estimate(inc_deep.value - inc_shallow.value, inc_deep.low - inc_shallow.high,
                      inc_deep.high - inc_shallow.low, inc_deep.seeds)
    profile = pd.DataFrame([{"mask_ratio": r, "value": e.value, "ci_low": e.low, "ci_high": e.high}
                            for r, e in by_ratio.items()])
    power = _distance_power(list(by_ratio.values()), d_init, uniform)
    detail = (f"mean distance by mask ratio ({units}): {', '.join(f'{r:g}: {by_ratio[r].text(4)}' for r in ratios)}; "
              f"initial weights {d_init.text(4)} (difference {control.text()}), uniform attention {uniform:.4g}; "
              f"increase {ratios[0]:g}->{ratios[-1]:g}: shallow layers {inc_shallow.text()}, deep layers "
              f"{inc_deep.text()}, deep - shallow {deeper.text()}")
    if power and headline.low > max(0.0, control.high) and deeper.low > 0 and _not_below_earlier(profile):
        verdict = HOLDS
    elif power and headline.high < min(0.0, control.low):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
        if not power:
            detail = f"{_no_power_distance(d_init, uniform, units)}; {detail}"
    return _result(headline, verdict, detail, control=control, unit=unit, min_seeds=min_seeds,
                   used=(*by_ratio.values(), inc_shallow, inc_deep))


# --------------------------------------------------------------------------- ae-block-distance (Fig. A.1)
def ae_distance_rule(distance: pd.DataFrame, uniform: float, units: str = "px", min_seeds: int = MIN_SEEDS) -> Verdict:
    """LC-MAE Fig. A.1: the attention distance of AE(k) grows with the block size k; AE(patch size) is the
    smallest.

    Evidence: rows (``condition`` in {trained, init}, ``k`` (the smallest = the patch size; each AE run's own
    initial weights carry their run's k), ``seed``, ``value``, ``ci_low``, ``ci_high``: the mean distance over
    layers and heads), at least 3 sizes. Headline: D(largest k) - D(patch), per seed, then across seeds.
    Controls: the same difference on the runs' same-seed initial weights (the control column; 0 when the
    encoder's initialisation does not depend on the decoder's shape, as in maeprobe) and ``uniform``.

    power: some AE's interval lies 10% of ``uniform`` (``DISTANCE_MARGIN``) away from the
    initial weights' interval and from ``uniform``.
    holds: power, AE(patch)'s ci_high below every other size's ci_low, ci_low(headline) > max(0,
    ci_high(control)), and no larger k's interval lies entirely below a smaller k's.
    fails: power and some larger k has ci_high below AE(patch)'s ci_low.
    inconclusive: otherwise.
    """
    unit = f"attention distance ({units}), D(AE largest k) - D(AE(patch))"
    lacking = _lacks(distance, ("condition", "k", "value", "ci_low", "ci_high"))
    if lacking:
        return _missing(lacking, unit)
    trained, init = _conditions(distance)
    if trained.empty or init.empty:
        return _missing("no control: the initial weights were not measured", unit)
    ks = sorted(trained["k"].unique())
    if len(ks) < 3:
        return _missing("needs at least 3 block sizes", unit)
    per_seed = _mean_over(trained, ["k", "seed"])
    by_k = {k: combine(per_seed[per_seed["k"] == k]) for k in ks}
    d_init = combine(_mean_over(init, ["seed"]))
    headline = _per_seed_contrast(per_seed, [ks[-1]], [ks[0]], "k")
    control = _init_contrast(init, "k", ks[0], ks[-1], headline.seeds)
    patch, others = by_k[ks[0]], [by_k[k] for k in ks[1:]]
    profile = pd.DataFrame([{"k": k, "value": e.value, "ci_low": e.low, "ci_high": e.high} for k, e in by_k.items()])
    power = _distance_power(list(by_k.values()), d_init, uniform)
    detail = (f"mean distance by k ({units}): {', '.join(f'AE({int(k)}): {by_k[k].text(4)}' for k in ks)}; initial "
              f"weights {d_init.text(4)} (difference {control.text()}), uniform attention {uniform:.4g}")
    if power and patch.high < min(e.low for e in others) and headline.low > max(0.0, control.high) \
            and _not_below_earlier(profile):
        verdict = HOLDS
    elif power and any(e.high < patch.low for e in others):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
        if not power:
            detail = f"{_no_power_distance(d_init, uniform, units)}; {detail}"
    return _result(headline, verdict, detail, control=control, unit=unit, min_seeds=min_seeds,
                   used=tuple(by_k.values()))


# --------------------------------------------------------------------------- mae-local-attention (Fig. 5)
def local_attention_rule(distance: pd.DataFrame, uniform: float, units: str = "px", min_seeds: int = 1) -> Verdict:
    """LC-MAE Fig. 5 / Section 4.1: MAE's attention distance is significantly smaller than DINO's and DeiT's.
    Measured on the released checkpoints (``min_seeds`` 1: the claim is about those published models).

    Evidence: rows (``model`` in {mae, dino, deit, init}, ``seed``, ``value``, ``ci_low``, ``ci_high``: the
    mean distance over layers and heads; ``init`` = randomly initialised weights of MAE's architecture).
    Headline: D(MAE) - min(D(DINO), D(DeiT)). Controls: the same difference with ``init`` in MAE's place (the
    control column; version 1 gave the initial weights' distance there) and ``uniform``.

    power: MAE's interval lies 10% of ``uniform`` away from the initial weights' and from ``uniform``.
    holds: power and ci_high(MAE) < ci_low(DINO) and ci_high(MAE) < ci_low(DeiT).
    fails: power and ci_low(MAE) > ci_high(DINO) or ci_low(MAE) > ci_high(DeiT).
    inconclusive: otherwise.
    """
    unit = f"attention distance ({units}), D(MAE) - min(D(DINO), D(DeiT))"
    lacking = _lacks(distance, ("model", "value", "ci_low", "ci_high"))
    if lacking:
        return _missing(lacking, unit)
    est = {}
    for model in ("mae", "dino", "deit", "init"):
        part = _mean_over(_seeds(distance)[distance["model"] == model], ["seed"])
        if part.empty:
            return _missing(f"no evidence for {model}", unit)
        est[model] = combine(part)
    mae, dino, deit, init = (est[m] for m in ("mae", "dino", "deit", "init"))
    nearest = min(dino, deit, key=lambda e: e.value)
    headline = Estimate(mae.value - nearest.value, mae.low - nearest.high, mae.high - nearest.low, mae.seeds)
    control = Estimate(init.value - nearest.value, init.low - nearest.high, init.high - nearest.low, init.seeds)
    power = _distance_power([mae], init, uniform)
    detail = (f"mean distance ({units}): MAE {mae.text(4)}, DINO {dino.text(4)}, DeiT {deit.text(4)}; random "
              f"initial weights {init.text(4)}, uniform attention {uniform:.4g}")
    if power and mae.high < dino.low and mae.high < deit.low:
        verdict = HOLDS
    elif power and (mae.low > dino.high or mae.low > deit.high):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
        if not power:
            detail = (f"{NO_POWER}: MAE's attention distance is not {DISTANCE_MARGIN:.0%} of the uniform level away "
                      f"from random initial weights' and from uniform attention; {detail}")
    return _result(headline, verdict, detail, control=control, unit=unit, min_seeds=min_seeds,
                   used=(dino, deit, init))


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


def accuracy_estimates(accuracy: pd.DataFrame) -> dict[str, Estimate]:
    """Per model: top-1 (percent) combined over seeds from per-seed Wilson intervals."""
    table = _seeds(accuracy_intervals(accuracy)).rename(columns={"top1": "value"})
    out = {}
    for m, part in table.groupby("model", sort=False):
        e = combine(part)
        out[m] = Estimate(e.value, max(e.low, 0.0), min(e.high, 100.0), e.seeds)  # a proportion's bounds
    return out


LEARNED_MARGIN = 10.0  # v1 only: percentage points above chance


def _probe_power(model: Estimate, est: dict[str, Estimate], name: str) -> tuple[bool, str]:
    """Positive control of the probe findings: the model's probe accuracy lies above the raw-pixel and the
    random-encoder baselines with separated intervals."""
    controls = {k: est[k] for k in ("pixels", "random") if k in est}
    if len(controls) < 2:
        return False, f"{NO_POWER}: the raw-pixel and random-encoder baselines were not measured"
    beaten = all(model.low > c.high for c in controls.values())
    text = (f"{NO_POWER}: {name}'s probe accuracy {model.text()} is not above both raw pixels "
            f"{controls['pixels'].text()} and a random encoder {controls['random'].text()}")
    return beaten, "" if beaten else text


def _ratio(a: Estimate, b: Estimate) -> Estimate:
    """a / b with conservative bounds (positive quantities)."""
    return Estimate(a.value / b.value if b.value > 0 else np.nan, a.low / b.high if b.high > 0 else np.nan,
                    a.high / b.low if b.low > 0 else np.nan, min(a.seeds, b.seeds))


def _gap(a: Estimate, b: Estimate) -> Estimate:
    """a - b with conservative bounds."""
    return Estimate(a.value - b.value, a.low - b.high, a.high - b.low, min(a.seeds, b.seeds))


def _init_estimates(est: dict[str, Estimate]) -> dict[str, Estimate]:
    """The initial-weights rows of an accuracy table (``init:<model>``; MAE's own is ``random``)."""
    out = {m.removeprefix("init:"): e for m, e in est.items() if m.startswith("init:")}
    if "random" in est:
        out.setdefault("mae", est["random"])
        out.setdefault("transformer", est["random"])
    return out


def linear_probe_rule(accuracy: pd.DataFrame, min_seeds: int = MIN_SEEDS) -> Verdict:
    """LC-MAE Table 3: the linear-probe accuracy of every AE(k) is far below MAE's (5.6% vs 55.4%: a tenth).
    "Far below" is taken as at most half of MAE's accuracy.

    Evidence: rows (``model`` in {mae, ae<k>, pixels, random, init:ae<k>}, ``seed``, ``top1`` (percent),
    ``n_val``, ``chance``); ``pixels``: a probe on the raw pixels; ``random``: the same seed's initial weights of
    MAE; ``init:ae<k>``: of AE(k). Per-seed Wilson intervals, combined across seeds (bounds clipped to
    [0, 100]). Headline: best AE top-1 / MAE top-1 (conservative interval: ci_low(AE) / ci_high(MAE) ...).
    Control: the same ratio on the initial weights (best AE init / MAE init).

    power: MAE's interval lies above the raw-pixel and the random-encoder intervals.
    holds: power and, for every AE, ci_high(AE / MAE) <= 0.5 (at most half of MAE, interval-wise).
    fails: power and, for some AE, ci_low(AE / MAE) > 0.5 (clearly not far below MAE).
    inconclusive: otherwise.
    """
    unit = "ratio of linear-probe top-1, best AE / MAE"
    lacking = _lacks(accuracy, ("model", "top1", "n_val")) or _lacks(accuracy, column="model", values=("mae",))
    if not lacking and not accuracy["model"].astype(str).str.startswith("ae").any():
        lacking = "no evidence for an AE(k)"
    if lacking:
        return _missing(lacking, unit)
    est = accuracy_estimates(accuracy)
    mae = est["mae"]
    aes = {m: e for m, e in est.items() if m.startswith("ae")}
    best_name = max(aes, key=lambda m: aes[m].value)
    ratio = _ratio(aes[best_name], mae)
    inits = _init_estimates(est)
    init_aes = [inits[m] for m in aes if m in inits]
    control = _ratio(max(init_aes, key=lambda e: e.value), inits["mae"]) if init_aes and "mae" in inits \
        else float("nan")  # not measured (the power check still compares with the random encoder)
    power, why = _probe_power(mae, est, "MAE")
    chance = float(accuracy["chance"].iloc[0]) if "chance" in accuracy else float("nan")
    detail = (f"top-1 (%): MAE {mae.text()}, " + ", ".join(f"{m} {e.text()}" for m, e in aes.items())
              + f"; best AE / MAE {ratio.text()}, the same ratio at initial weights "
              f"{control.text() if isinstance(control, Estimate) else 'not measured'}; raw pixels "
              f"{est['pixels'].text() if 'pixels' in est else '-'}, random encoder "
              f"{est['random'].text() if 'random' in est else '-'}; chance {chance:.1f}")
    if power and all(_ratio(e, mae).high <= 0.5 for e in aes.values()):
        verdict = HOLDS
    elif power and any(_ratio(e, mae).low > 0.5 for e in aes.values()):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
        if not power:
            detail = f"{why}; {detail}"
    return _result(ratio, verdict, detail, control=control, unit=unit, min_seeds=min_seeds,
                   used=(mae, *aes.values()))


CLOSE_WITHIN = 5.0   # percentage points: "comes close"
FAR_BEYOND = 15.0    # percentage points below the transformer, beyond the intervals: clearly not close


def local_decoders_rule(accuracy: pd.DataFrame, min_seeds: int = MIN_SEEDS) -> Verdict:
    """LC-MAE Table 2: a Gaussian weighted-average decoder and a single conv decoder come close to the
    transformer decoder (82.5% and 82.9% vs 82.9% fine-tuning). maeprobe judges it with a linear probe of the
    frozen encoder (the paper fine-tunes; see the README's fidelity notes): a stricter test of the features.

    Evidence: rows (``model`` in {transformer, gaussian, conv, pixels, random, init:gaussian, init:conv},
    ``seed``, ``top1``, ``n_val``, ``chance``). Per-seed Wilson intervals, combined across seeds (bounds clipped
    to [0, 100]). Headline: transformer - worst local decoder (percentage points, conservative interval).
    Control: the same gap on the initial weights.

    power: the transformer's interval lies above the raw-pixel and the random-encoder intervals.
    holds: power and ci_high(transformer - d) <= 5 for both local decoders d (within 5 points, interval-wise).
    fails: power and ci_low(transformer - d) > 15 for a local decoder d (clearly more than 15 points below).
    inconclusive: otherwise.
    """
    unit = "linear-probe top-1 gap, transformer - worst local decoder (percentage points)"
    lacking = _lacks(accuracy, ("model", "top1", "n_val")) or \
        _lacks(accuracy, column="model", values=("transformer", "gaussian", "conv"))
    if lacking:
        return _missing(lacking, unit)
    est = accuracy_estimates(accuracy)
    ref = est["transformer"]
    local = {m: est[m] for m in ("gaussian", "conv")}
    worst = min(local.values(), key=lambda e: e.value)
    gap = _gap(ref, worst)  # the headline: the worst decoder by its estimate; the verdict reads both gaps
    gaps = [_gap(ref, e) for e in local.values()]
    inits = _init_estimates(est)
    control = (_gap(inits["transformer"], min((inits[m] for m in local), key=lambda e: e.value))
               if "transformer" in inits and all(m in inits for m in local) else float("nan"))  # not measured
    power, why = _probe_power(ref, est, "the transformer decoder's MAE")
    detail = (f"top-1 (%): transformer {ref.text()}, gaussian {local['gaussian'].text()}, conv {local['conv'].text()}; "
              f"gap {gap.text()}, the same gap at initial weights "
              f"{control.text() if isinstance(control, Estimate) else 'not measured'}; raw pixels "
              f"{est['pixels'].text() if 'pixels' in est else '-'}, random encoder "
              f"{est['random'].text() if 'random' in est else '-'}")
    if power and all(g.high <= CLOSE_WITHIN for g in gaps):
        verdict = HOLDS
    elif power and any(g.low > FAR_BEYOND for g in gaps):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
        if not power:
            detail = f"{why}; {detail}"
    return _result(gap, verdict, detail, control=control, unit=unit, min_seeds=min_seeds, used=(ref, *local.values()))


# --------------------------------------------------------------------------- umae-rank (U-MAE)
def umae_rank_rule(ranks: pd.DataFrame, min_seeds: int = MIN_SEEDS) -> Verdict:
    """U-MAE (How Mask Matters, Section 5): the uniformity term reduces dimensional collapse, i.e. U-MAE's
    features have a higher effective rank than MAE's.

    Evidence: rows (``model`` in {umae, mae, init, init:umae}, ``seed``, ``value``, ``ci_low``, ``ci_high``: the
    effective rank of the encoder's CLS feature; ``init`` / ``init:umae`` = the same seed's initial weights of
    the MAE / U-MAE run). Headline: effective rank U-MAE - MAE, per seed, then across seeds. Control: the same
    difference on the initial weights (0 when both recipes start from one encoder).

    power: U-MAE's or MAE's interval is separated from the initial weights'.
    holds: power, ci_low(U-MAE) > ci_high(MAE) and ci_low(headline) > ci_high(control).
    fails: power, ci_high(U-MAE) < ci_low(MAE) and ci_high(headline) < ci_low(control).
    inconclusive: otherwise.
    """
    unit = "effective rank of the CLS feature, U-MAE - MAE"
    lacking = _lacks(ranks, ("model", "value", "ci_low", "ci_high"))
    if lacking:
        return _missing(lacking, unit)
    table = _seeds(ranks)
    est = {m: combine(table[table["model"] == m]) for m in ("umae", "mae", "init", "init:umae")
           if (table["model"] == m).any()}
    if not {"umae", "mae"} <= set(est):
        return _missing("needs U-MAE and MAE", unit)
    if "init" not in est:
        return _missing("no control: the initial weights were not measured", unit)
    umae, mae, init = est["umae"], est["mae"], est["init"]

    def paired(a: str, b: str) -> Estimate:
        rows = table[table["model"].isin([a, b])].assign(side=lambda t: np.where(t["model"] == a, "a", "b"))
        return _per_seed_contrast(rows, ["a"], ["b"], "side")

    headline = paired("umae", "mae")
    control = paired("init:umae", "init") if "init:umae" in est else Estimate(0.0, 0.0, 0.0, init.seeds)
    power = umae.disjoint(init) or mae.disjoint(init)
    detail = (f"effective rank of the CLS feature: U-MAE {umae.text()}, MAE {mae.text()}, initial weights "
              f"{init.text()} (U-MAE - MAE at initial weights {control.text()})")
    if power and umae.low > mae.high and headline.low > control.high:
        verdict = HOLDS
    elif power and umae.high < mae.low and headline.high < control.low:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
        if not power:
            detail = f"{NO_POWER}: neither U-MAE's nor MAE's rank is separated from the initial weights'; {detail}"
    return _result(headline, verdict, detail, control=control, unit=unit, min_seeds=min_seeds, used=(umae, mae))
