"""Semantic similarity of each decoder layer to a reference model, LC-MAE Eq. 8 (Fig. 3).

Decoder features of layer l: the output of decoder block l (before ``decoder_norm``) for all patch tokens
(CLS dropped), under the shared seeded mask. Reference features: the keys of the reference's last
attention block, all heads concatenated, prefix tokens dropped, on the unmasked image at the probed
model's patch grid (CutLER / MaskCut); or its last block's output tokens (``ref_features='tokens'``).

W = cosine-similarity matrix of the L2-normalised patch features (n x n); with ``tau`` it is binarised as
in CutLER (W > tau, zeros replaced by ``eps``). S_l = mean over images of cos(vec W_ref, vec W_l).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..capture import ActivationCache, CaptureRequest, resolve_layers
from ..errors import MaeprobeError
from ..reference import Reference
from .base import ImageMean


def affinity(features: torch.Tensor, tau: float | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Cosine-similarity matrix of token features [B, n, d] -> [B, n, n] (binarised when tau is set)."""
    f = F.normalize(features.float(), dim=-1)
    W = f @ f.transpose(1, 2)
    if tau is not None:
        W = torch.where(W > tau, torch.ones_like(W), torch.full_like(W, eps))
    return W


class DecoderSemanticSimilarity(ImageMean):
    """Streaming Eq. 8: per decoder layer, mean over images of cos(vec W_ref, vec W_l)."""

    metric = "decoder_semantic_similarity"
    module = "decoder"

    def __init__(self, model, reference_model, *, layers=None, ref_features: str = "keys", tau: float | None = None,
                 eps: float = 1e-5, bootstrap: int = 0, bootstrap_seed: int = 0, reference_name: str = "ref") -> None:
        if ref_features not in ("keys", "tokens"):
            raise MaeprobeError(f"ref_features must be 'keys' or 'tokens', got {ref_features!r}")
        self.layers = resolve_layers(model, "decoder", layers)
        self.num_prefix = model.num_prefix_tokens
        self.ref_features, self.tau, self.eps = ref_features, tau, eps
        self.ref_layer = len(reference_model.blocks) - 1
        kind = "keys" if ref_features == "keys" else "features"
        self._ref_kind = kind
        self.reference = Reference(reference_name, reference_model,
                                   CaptureRequest.of(**{kind: {"encoder": [self.ref_layer]}}))
        self.ref_prefix = reference_model.num_prefix_tokens
        info = getattr(reference_model, "checkpoint", None)
        self.reference_label = info.name if info else reference_name
        super().__init__((len(self.layers),), bootstrap, bootstrap_seed)

    def request(self) -> CaptureRequest:
        return CaptureRequest.of(features={"decoder": self.layers})

    def settings(self) -> dict:
        return {"reference": self.reference_label, "ref_features": self.ref_features,
                "tau": self.tau if self.tau is not None else float("nan")}

    def update(self, cache: ActivationCache) -> None:
        ref_cache = cache.references[self.reference.name]
        ref = getattr(ref_cache, self._ref_kind)[("encoder", self.ref_layer)][:, self.ref_prefix:]  # [B, n, D]
        W_ref = affinity(ref, self.tau, self.eps).flatten(1)  # [B, n*n]
        values = []
        for layer in self.layers:
            tokens = cache.features[("decoder", layer)][:, self.num_prefix:]  # [B, n, Dd]
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
