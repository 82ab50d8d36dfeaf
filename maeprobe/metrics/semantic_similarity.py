"""Semantic similarity of each decoder layer to a reference model, LC-MAE Eq. 8 (Fig. 3).

Section 4.1 computes W "following CutLER": the cosine-similarity matrix of a layer's patch features. maeprobe
follows CutLER's MaskCut code (``get_affinity_matrix``; ``--vit-feat k``, ``--tau 0.15``) by default:

* features: the attention keys of the layer (all heads concatenated), prefix tokens dropped. For the
  reference (DINO) the keys of its last block, on the unmasked image at the probed model's patch grid; for
  decoder layer l the keys of decoder block l, under the shared seeded mask. ``ref_features`` /
  ``decoder_features`` = ``'tokens'`` use the block outputs instead (the decoder's before ``decoder_norm``).
* W = cos-similarity of the L2-normalised features (n x n), binarised as MaskCut does: W > tau -> 1, else
  eps (tau 0.15, eps 1e-5). ``tau=None`` keeps the continuous cosine matrix.

S_l = mean over images of cos(vec W_ref, vec W_l).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..capture import ActivationCache, CaptureRequest, resolve_layers
from ..errors import MaeprobeError
from ..reference import Reference
from .base import ImageMean


def affinity(features: torch.Tensor, tau: float | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Cosine-similarity matrix of token features [B, n, d] -> [B, n, n]; with ``tau`` binarised as CutLER's
    ``get_affinity_matrix`` (W > tau -> 1, otherwise eps)."""
    f = F.normalize(features.float(), dim=-1)
    W = f @ f.transpose(1, 2)
    if tau is not None:
        W = torch.where(W > tau, torch.ones_like(W), torch.full_like(W, eps))
    return W


class DecoderSemanticSimilarity(ImageMean):
    """Streaming Eq. 8: per decoder layer, mean over images of cos(vec W_ref, vec W_l)."""

    metric = "decoder_semantic_similarity"
    module = "decoder"

    def __init__(self, model, reference_model, *, layers=None, ref_features: str = "keys",
                 decoder_features: str | None = None, tau: float | None = 0.15, eps: float = 1e-5,
                 bootstrap: int = 0, bootstrap_seed: int = 0, reference_name: str = "ref") -> None:
        decoder_features = ref_features if decoder_features is None else decoder_features
        for name, value in (("ref_features", ref_features), ("decoder_features", decoder_features)):
            if value not in ("keys", "tokens"):
                raise MaeprobeError(f"{name} must be 'keys' or 'tokens', got {value!r}")
        self.layers = resolve_layers(model, "decoder", layers)
        self.num_prefix = model.num_prefix_tokens
        self.ref_features, self.decoder_features, self.tau, self.eps = ref_features, decoder_features, tau, eps
        self.ref_layer = len(reference_model.blocks) - 1
        self._ref_kind = "keys" if ref_features == "keys" else "features"
        self._dec_kind = "keys" if decoder_features == "keys" else "features"
        self.reference = Reference(reference_name, reference_model,
                                   CaptureRequest.of(**{self._ref_kind: {"encoder": [self.ref_layer]}}))
        self.ref_prefix = reference_model.num_prefix_tokens
        info = getattr(reference_model, "checkpoint", None)
        self.reference_label = info.name if info else reference_name
        super().__init__((len(self.layers),), bootstrap, bootstrap_seed)

    def request(self) -> CaptureRequest:
        return CaptureRequest.of(**{self._dec_kind: {"decoder": self.layers}})

    def settings(self) -> dict:
        return {"reference": self.reference_label, "ref_features": self.ref_features,
                "decoder_features": self.decoder_features,
                "tau": self.tau if self.tau is not None else float("nan"), "eps": self.eps}

    def update(self, cache: ActivationCache) -> None:
        ref_cache = cache.references[self.reference.name]
        ref = getattr(ref_cache, self._ref_kind)[("encoder", self.ref_layer)][:, self.ref_prefix:]  # [B, n, D]
        W_ref = affinity(ref, self.tau, self.eps).flatten(1)  # [B, n*n]
        values = []
        for layer in self.layers:
            tokens = getattr(cache, self._dec_kind)[("decoder", layer)][:, self.num_prefix:]  # [B, n, Dd]
            if tokens.shape[1] != ref.shape[1]:
                raise MaeprobeError(f"reference has {ref.shape[1]} patches, decoder {tokens.shape[1]}")
            W = affinity(tokens, self.tau, self.eps).flatten(1)
            values.append(F.cosine_similarity(W, W_ref, dim=1))  # [B]
        self.add(torch.stack(values, dim=1), cache.image_indices)

    def rows(self) -> list[dict]:
        s = self.summary()
        return [{"metric": self.metric, "module": "decoder", "layer": layer, "head": None,
                 "value": float(s["value"][i]), "std": float(s["std"][i]), "ci_low": float(s["ci_low"][i]),
                 "ci_high": float(s["ci_high"][i]), "n_images": self.count} for i, layer in enumerate(self.layers)]
