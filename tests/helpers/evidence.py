"""Hand-made evidence tables for the verdict rules (``test_findings_rules.py``: version 2, ``test_findings_v3.py``:
version 3): each builder writes the rows a finding's evidence would hold, with the intervals given, per seed."""
from __future__ import annotations

import numpy as np
import pandas as pd

from maeprobe.findings import rules

SEEDS = (0, 1, 2)


def ratios(c, e, g, cls=None, width=0.05, seeds=SEEDS, jitter=0.01):
    cls = cls or (c, e, g)
    rows = []
    for feature, values in (("patch", (c, e, g)), ("cls", cls)):
        for setting, value in zip("ceg", values):
            for i, seed in enumerate(seeds):
                v = value + jitter * (i - 1)
                rows.append({"setting": setting, "feature": feature, "seed": seed, "value": v,
                             "ci_low": v - width, "ci_high": v + width})
    return pd.DataFrame(rows)


def profile(condition, values, width, seeds=SEEDS, jitter=0.0):
    rows = []
    for i, seed in enumerate(seeds):
        for layer, value in enumerate(values):
            v = value + jitter * (i - 1)
            rows.append({"condition": condition, "seed": seed, "layer": layer, "value": v, "ci_low": v - width,
                         "ci_high": v + width})
    return pd.DataFrame(rows)


FLAT = [0.99] * 8
POSITIONAL = [0.9, 0.85, 0.5, 0.55, 0.5, 0.45, 0.5, 0.4]


UNIFORM = rules.uniform_attention_distance(8, 8)


def distances(shallow, deep, width, init=20.0, seeds=SEEDS):
    rows = []
    for seed in seeds:
        for ratio, s, d in zip((0.3, 0.45, 0.6, 0.75, 0.9), shallow, deep):
            for layer in range(4):
                value = s if layer < 2 else d
                rows.append({"condition": "trained", "mask_ratio": ratio, "seed": seed, "layer": layer,
                             "value": value, "ci_low": value - width, "ci_high": value + width})
        for layer in range(4):
            rows.append({"condition": "init", "mask_ratio": np.nan, "seed": seed, "layer": layer, "value": init,
                         "ci_low": init - width, "ci_high": init + width})
    return pd.DataFrame(rows)


def ae(values, width, init=25.0, seeds=SEEDS):
    rows = []
    for seed in seeds:
        for k, value in zip((8, 24, 40, 56), values):
            rows.append({"condition": "trained", "k": k, "seed": seed, "value": value, "ci_low": value - width,
                         "ci_high": value + width})
        rows.append({"condition": "init", "k": np.nan, "seed": seed, "value": init, "ci_low": init - width,
                     "ci_high": init + width})
    return pd.DataFrame(rows)


def models(mae, dino, deit, init, width=0.5):
    return pd.DataFrame([{"model": m, "seed": 0, "value": v, "ci_low": v - width, "ci_high": v + width}
                         for m, v in (("mae", mae), ("dino", dino), ("deit", deit), ("init", init))])


def accuracies(models, top1, n=400, chance=10.0, seeds=SEEDS):
    return pd.DataFrame([{"model": m, "seed": s, "top1": t, "n_val": n, "chance": chance}
                         for s in seeds for m, t in zip(models, top1)])


AE_MODELS = ["mae", "ae8", "ae24", "ae40", "ae56", "pixels", "random"]


def ranks(umae, mae, init, width=1.0):
    return pd.DataFrame([{"model": m, "seed": s, "value": v, "ci_low": v - width, "ci_high": v + width}
                         for s in SEEDS for m, v in (("umae", umae), ("mae", mae), ("init", init))])
