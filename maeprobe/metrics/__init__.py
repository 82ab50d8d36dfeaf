"""Metrics: streaming reducers over an ActivationCache, one file per metric."""
from .attention_distance import AttentionDistance, patch_distances
from .base import ImageMean, Reducer, poisson_weights

__all__ = ["AttentionDistance", "ImageMean", "Reducer", "patch_distances", "poisson_weights"]
