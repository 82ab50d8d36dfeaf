"""Metrics: streaming reducers over an ActivationCache, one file per metric."""
from .attention_distance import AttentionDistance, patch_distances
from .attention_entropy import AttentionEntropy
from .base import ImageMean, Reducer, poisson_weights

__all__ = ["AttentionDistance", "AttentionEntropy", "ImageMean", "Reducer", "patch_distances", "poisson_weights"]
from .decoder_attention_similarity import DecoderAttentionSimilarity, pairwise_cosine_mean  # noqa: E402
from .semantic_similarity import DecoderSemanticSimilarity, affinity  # noqa: E402
from .spectrum import FeatureSpectrum, effective_rank  # noqa: E402

__all__ += ["DecoderAttentionSimilarity", "DecoderSemanticSimilarity", "FeatureSpectrum", "affinity",
            "effective_rank", "pairwise_cosine_mean"]
