"""The notebook-facing API: one function per metric, each returning a tidy DataFrame."""
from __future__ import annotations

import pandas as pd

from .metrics.attention_distance import AttentionDistance
from .probe import resolve_model, run_probe
from .results import to_frame


def run_context(model, *, mask_ratio: float, seed: int, shared_mask: bool, dtype: str | None) -> dict:
    """Settings columns shared by every row of a run."""
    info = getattr(model, "checkpoint", None)
    return {"checkpoint": info.name if info else type(model).__name__,
            "mask_ratio": float(mask_ratio), "seed": int(seed), "shared_mask": bool(shared_mask),
            "img_size": model.config.img_size, "dtype": dtype or "fp32"}


def attention_distance(model, images=None, *, layers=None, module: str = "encoder", mask_ratio: float = 0.0,
                       seed: int = 0, shared_mask: bool = True, units: str = "px", renormalize: bool = False,
                       bootstrap: int = 0, batch_size: int = 16, device: str | None = None,
                       dtype: str | None = None, progress: bool = False, **load_kwargs) -> pd.DataFrame:
    """Mean attention distance per (layer, head).

    Args:
        model: a loaded model or a checkpoint path (``load_kwargs`` such as num_heads go to ``load``).
        images: folder, None (built-in photos), list of PIL images, or a normalised tensor [N, 3, H, W].
        layers: 0-based layers (None: all).
        module: ``'encoder'`` or ``'decoder'``.
        mask_ratio, seed, shared_mask: the seeded mask; visible tokens keep their grid positions.
        units: ``'px'`` (default) or ``'patches'``.
        renormalize: divide each query row by its attention mass on patch keys.
        bootstrap: number of Poisson-bootstrap replicates for ``ci_low``/``ci_high`` (0: none).
        batch_size, device, dtype, progress: how to run (dtype ``'bf16'`` for autocast).

    Returns:
        DataFrame with one row per (layer, head): metric, module, layer, head, value, n_images, std,
        ci_low, ci_high and the run's settings.
    """
    model = resolve_model(model, **load_kwargs)
    reducer = AttentionDistance(model, module=module, layers=layers, units=units, renormalize=renormalize,
                                bootstrap=bootstrap, bootstrap_seed=seed)
    run_probe(model, [reducer], images, mask_ratio=mask_ratio, seed=seed, shared_mask=shared_mask,
              batch_size=batch_size, device=device, dtype=dtype, progress=progress)
    return to_frame([reducer], run_context(model, mask_ratio=mask_ratio, seed=seed, shared_mask=shared_mask,
                                           dtype=dtype))
