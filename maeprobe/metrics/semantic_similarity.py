"""Semantic similarity of each decoder layer to a reference model, LC-MAE Eq. 8 (Fig. 3).

Section 4.1 computes W "following CutLER": the cosine-similarity matrix of a layer's patch features. maeprobe
follows CutLER's MaskCut code (``get_affinity_matrix``; ``--vit-feat k``) by default, with tau 0.15 (CutLER's README
and ``demo.py`` value; ``maskcut.py``'s own ``--tau`` default is 0.2, line 318). CutLER's reference is DINO ViT-B/8;
maeprobe's default, DINO ViT-B/16 (LC-MAE says only "DINO"):

* features: the attention keys of the layer (all heads concatenated), prefix tokens dropped. For the
  reference (DINO) the keys of its last block, on the unmasked image at the probed model's patch grid; for
  decoder layer l the keys of decoder block l, under the shared seeded mask. ``ref_features`` /
  ``decoder_features`` = ``'tokens'`` use the block outputs instead (the decoder's before ``decoder_norm``).
* W = cos-similarity of the L2-normalised features (n x n), binarised as MaskCut does: W > tau -> 1, else
  eps (tau 0.15, eps 1e-5). ``tau=None`` keeps the continuous cosine matrix.

S_l = mean over images of cos(vec W_ref, vec W_l).

Saturation. With a binarised W, a W whose cosines all exceed tau is all ones, and S then measures only the
other side's density (S = sqrt(density) against an all-ones W). Every row therefore reports the density of W
(the fraction of entries above tau; with ``tau=None`` the mean cosine) of the decoder layer (``w_density``) and
of the reference (``ref_w_density``), and ``w_flag`` = 'saturated' (density > 0.95) or 'empty' (< 0.05) for
either. Real DINOv2 keys share a large common component (last-layer cosines all above 0.3 at 224 px), so its W
is all ones at tau 0.15. Two documented ways to make W informative for such references, off by default (the
paper's setting): ``center=True`` subtracts each image's mean feature before the cosines (the common component),
``tau_quantile=q`` takes tau per image as the q-quantile of that image's cosines (density 1 - q on both sides).

Memory bound. W has tokens^2 entries per image, whatever the batch: a decoder of a 64 x 64 patch grid gives
67 MB per image and side. The affinities are therefore made a few images at a time (``AFFINITY_WORK_BYTES``, at
least one image), binarised in place, and compared without temporaries of their size; ``memory_bytes`` bounds
what one step holds (the reference's W, one layer's W, a mask of it, and the quantile's sorted copy) plus the
features that the capture keeps for every requested layer of a batch, and the constructor and ``check_memory``
refuse a run beyond ``MAEPROBE_MAX_METRIC_MEMORY`` before any image (``LimitError``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .._lazy import lazy
from ..errors import MaeprobeError
from .base import ImageMean, units_of
from .registry import FigureSpec, MetricSpec, check_flag, checkpoint_name, option, per_layer, register

pd = lazy("pandas")

torch = lazy("torch")
F = lazy("torch.nn.functional")
_capture = lazy("maeprobe.capture")
_reference = lazy("maeprobe.reference")


SATURATED_ABOVE, EMPTY_BELOW = 0.95, 0.05

# Affinity matrices of the images of one step: as many images as fit in this many bytes (at least one).
AFFINITY_WORK_BYTES = 64 << 20
# Bytes per entry of W held at once in a step: the reference's W and one layer's W (float32), the mask that
# ``density`` counts (bool); with ``tau_quantile``, torch.quantile's sorted copy and its bookkeeping (measured:
# about 8.5 bytes per entry; 12 counted).
AFFINITY_BYTES, QUANTILE_BYTES = 9, 12


def affinity(features: torch.Tensor, tau: float | None = None, eps: float = 1e-5, *, center: bool = False,
             tau_quantile: float | None = None) -> torch.Tensor:
    """Cosine-similarity matrix of token features [B, n, d] -> [B, n, n]; with ``tau`` binarised as CutLER's
    ``get_affinity_matrix`` (W > tau -> 1, otherwise eps). ``center``: subtract each image's mean feature
    first; ``tau_quantile``: tau per image = that quantile of its cosines (replaces ``tau``)."""
    x = features.float()
    if center:
        x = x - x.mean(dim=1, keepdim=True)
    f = F.normalize(x, dim=-1)
    W = f @ f.transpose(1, 2)
    if tau_quantile is not None:
        tau = torch.quantile(W.flatten(1), tau_quantile, dim=1).view(-1, 1, 1)
    if tau is not None:  # in place, no temporary of W's size: 1.0 where W > tau, else 0.0, then 0.0 -> eps
        W.gt_(tau).clamp_(min=float(eps))
    return W


def density(W: torch.Tensor, binarised: bool, eps: float = 1e-5) -> torch.Tensor:
    """Per image: the fraction of W's entries equal to 1 (binarised: entries are 1 or ``eps``, split half-way
    between them, so any ``eps`` < 1 counts right), else the mean of W. [B, n, n] -> [B]."""
    if not binarised:
        return W.mean((1, 2))
    return (W > (1.0 + float(eps)) / 2).sum((1, 2)) / float(W.shape[1] * W.shape[2])


def _cosine(W: torch.Tensor, W_ref: torch.Tensor) -> torch.Tensor:
    """cos(vec W_i, vec W_ref_i) per image ([B, n, n] twice -> [B]) without a product of W's size."""
    a, b = W.flatten(1), W_ref.flatten(1)
    dot = (a.unsqueeze(1) @ b.unsqueeze(2)).flatten()
    norms = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    return dot / norms.clamp_min(1e-8)


def w_flag(decoder_density: float, ref_density: float) -> str:
    """Which side's W carries no structure, named: e.g. 'reference saturated', 'decoder empty',
    'reference saturated; decoder empty'; '' when both densities lie in [0.05, 0.95]."""
    flags = []
    for side, d in (("reference", ref_density), ("decoder", decoder_density)):
        if d > SATURATED_ABOVE:
            flags.append(f"{side} saturated")
        elif d < EMPTY_BELOW:
            flags.append(f"{side} empty")
    return "; ".join(flags)


class DecoderSemanticSimilarity(ImageMean):
    """Streaming Eq. 8: per decoder layer, mean over images of cos(vec W_ref, vec W_l)."""

    metric = "decoder_semantic_similarity"
    module = "decoder"

    def __init__(self, model, reference_model, *, layers=None, ref_features: str = "keys",
                 decoder_features: str | None = None, tau: float | None = 0.15, eps: float = 1e-5,
                 center: bool = False, tau_quantile: float | None = None,
                 bootstrap: int = 0, bootstrap_seed: int = 0, reference_name: str = "ref") -> None:
        if tau_quantile is not None and not 0.0 < float(tau_quantile) < 1.0:
            raise MaeprobeError(f"tau_quantile must lie in (0, 1), got {tau_quantile!r}")
        if not 0.0 <= float(eps) < 1.0:
            raise MaeprobeError(f"eps must lie in [0, 1) (the value below tau; 1 would make W all ones), got {eps!r}")
        self.center, self.tau_quantile = bool(center), tau_quantile
        decoder_features = ref_features if decoder_features is None else decoder_features
        for name, value in (("ref_features", ref_features), ("decoder_features", decoder_features)):
            if value not in ("keys", "tokens"):
                raise MaeprobeError(f"{name} must be 'keys' or 'tokens', got {value!r}")
        self.layers = _capture.resolve_layers(model, "decoder", layers)
        self.num_prefix = model.num_prefix_tokens
        self.ref_features, self.decoder_features, self.tau, self.eps = ref_features, decoder_features, tau, eps
        self.ref_layer = len(reference_model.blocks) - 1
        self._ref_kind = "keys" if ref_features == "keys" else "features"
        self._dec_kind = "keys" if decoder_features == "keys" else "features"
        self.reference = _reference.Reference(reference_name, reference_model,
                                   _capture.CaptureRequest.of(**{self._ref_kind: {"encoder": [self.ref_layer]}}))
        self.ref_prefix = reference_model.num_prefix_tokens
        info = getattr(reference_model, "checkpoint", None)
        self.reference_label = info.name if info else reference_name
        self.num_patches = model.config.num_patches
        # the captured features per image: the decoder's (a key is a view of its block's qkv output, 3 x the
        # width) and the reference's, at the probed grid
        dec_width = model.config.decoder_embed_dim * (3 if self._dec_kind == "keys" else 1)
        ref_width = reference_model.config.embed_dim * (3 if self._ref_kind == "keys" else 1)
        self._feature_bytes = 4 * (len(self.layers) * (self.num_patches + self.num_prefix) * dec_width
                                   + (self.num_patches + self.ref_prefix) * ref_width)
        # per layer: S, the density of the layer's W, the density of the reference's W
        super().__init__((len(self.layers), 3), bootstrap, bootstrap_seed)
        self._check(1)

    def _affinity_bytes(self) -> int:
        """Bytes per image of the affinities held at once (``AFFINITY_BYTES`` / ``QUANTILE_BYTES`` per entry)."""
        per_entry = AFFINITY_BYTES + (QUANTILE_BYTES if self.tau_quantile is not None else 0)
        return self.num_patches ** 2 * per_entry

    def _images_per_step(self, batch_size: int) -> int:
        return max(1, min(batch_size, AFFINITY_WORK_BYTES // self._affinity_bytes()))

    def memory_bytes(self, batch_size: int = 1) -> int:
        """Peak bytes for batches of ``batch_size`` images: the features captured for every requested layer
        and the affinity matrices of one step (``_images_per_step``)."""
        return batch_size * self._feature_bytes + self._images_per_step(batch_size) * self._affinity_bytes()

    def check_memory(self, *, mask_ratio: float = 0.0, batch_size: int = 1) -> None:
        self._check(batch_size)

    def _check(self, batch_size: int) -> None:
        from ..limits import check

        n = self.num_patches
        check("MAEPROBE_MAX_METRIC_MEMORY", self.memory_bytes(batch_size),
              f"decoder semantic similarity (Eq. 8): its affinity matrices ({n}^2 entries per image, the "
              f"reference's and a layer's) and the features of {len(self.layers)} decoder layer(s) for batches of "
              f"{batch_size} image(s), in bytes")

    def request(self) -> _capture.CaptureRequest:
        return _capture.CaptureRequest.of(**{self._dec_kind: {"decoder": self.layers}})

    def settings(self) -> dict:
        return {"reference": self.reference_label, "ref_features": self.ref_features,
                "decoder_features": self.decoder_features,
                "tau": self.tau if self.tau is not None else float("nan"), "eps": self.eps,
                "center_keys": self.center,
                "tau_quantile": self.tau_quantile if self.tau_quantile is not None else float("nan")}

    def update(self, cache: _capture.ActivationCache) -> None:
        ref_cache = cache.references[self.reference.name]
        ref = getattr(ref_cache, self._ref_kind)[("encoder", self.ref_layer)][:, self.ref_prefix:]  # [B, n, D]
        options = dict(center=self.center, tau_quantile=self.tau_quantile)
        binarised = self.tau is not None or self.tau_quantile is not None
        decoder = []
        for layer in self.layers:
            tokens = getattr(cache, self._dec_kind)[("decoder", layer)][:, self.num_prefix:]  # [B, n, Dd]
            if tokens.shape[1] != ref.shape[1]:
                raise MaeprobeError(f"reference has {ref.shape[1]} patches, decoder {tokens.shape[1]}")
            decoder.append(tokens)
        steps = []
        step = self._images_per_step(ref.shape[0])
        for lo in range(0, ref.shape[0], step):  # a few images at a time: W has n^2 entries per image
            W_ref = affinity(ref[lo:lo + step], self.tau, self.eps, **options)
            ref_density = density(W_ref, binarised, self.eps)
            values = []
            for tokens in decoder:
                W = affinity(tokens[lo:lo + step], self.tau, self.eps, **options)
                values.append(torch.stack([_cosine(W, W_ref), density(W, binarised, self.eps), ref_density],
                                          dim=1))  # [b, 3]
                del W  # before the next layer's W is made
            del W_ref
            steps.append(torch.stack(values, dim=1))  # [b, layers, 3]
        self.add(torch.cat(steps), units_of(cache))

    def rows(self) -> list[dict]:
        s = self.summary()
        return [{"metric": self.metric, "module": "decoder", "layer": layer, "head": None,
                 "value": float(s["value"][i, 0]), "std": float(s["std"][i, 0]), "ci_low": float(s["ci_low"][i, 0]),
                 "ci_high": float(s["ci_high"][i, 0]), "n_images": self.count,
                 "w_density": float(s["value"][i, 1]), "ref_w_density": float(s["value"][i, 2]),
                 "w_flag": w_flag(float(s["value"][i, 1]), float(s["value"][i, 2]))}
                for i, layer in enumerate(self.layers)]


def parse_tau(text: str):
    """``--tau`` as typed: '0.15' -> 0.15; 'none' (or 'off', '') -> None, the continuous cosine matrix."""
    import math

    from ..validate import one_line

    if text.strip().lower() in ("none", "off", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise MaeprobeError(f"--tau: expected a number or 'none', got {one_line(text)!r}") from None
    if not math.isfinite(value):
        raise MaeprobeError(f"--tau: expected a finite number or 'none', got {text!r}")
    return value


def check_tau(name: str, value):
    """tau of Eq. 8: None (continuous affinities) or a finite cosine threshold in [-1, 1]. NaN would binarise
    every affinity to eps (W > NaN is false) and report S = 1."""
    from ..validate import real

    return real(name, value, -1.0, 1.0, allow_none=True)


@dataclass(frozen=True)
class DecoderSemanticSimilarityOptions:
    ref_features: str = option("keys", "Reference features: keys of the last block (CutLER) or tokens (its "
                                       "output).", choices=("keys", "tokens"))
    decoder_features: str | None = option(None, "Decoder features: keys or tokens (default: as --ref-features).",
                                          choices=("keys", "tokens"))
    tau: float | None = option(0.15, "Binarise affinities as CutLER's MaskCut: W > tau -> 1, else --eps (default "
                                     "0.15, CutLER's README and demo value; maskcut.py's own default is 0.2); 'none' "
                                     "keeps the continuous cosine matrix.", cli_default="0.15", parse=parse_tau,
                               check=check_tau)
    eps: float = option(1e-5, "Value replacing zeros after --tau.", low=0.0, high=1.0)
    center: bool = option(False, "Subtract each image's mean feature before the cosines (for references whose keys "
                                 "share a common component, e.g. DINOv2; off = the paper's setting).",
                          flag="--center-keys", check=check_flag)
    tau_quantile: float | None = option(None, "tau per image = this quantile of its cosines (replaces --tau; off = "
                                              "the paper's setting).", low=0.0, high=1.0)


def _report(table) -> list[str]:
    first = table.iloc[0]
    tau = "none" if pd.isna(first["tau"]) else f"{first['tau']:g}"
    tau = tau if pd.isna(first["tau_quantile"]) else f"quantile {first['tau_quantile']:g}"
    lines = per_layer(table, f"{checkpoint_name(table)}: S_sim per decoder layer vs {first['reference']} (features: "
                             f"reference {first['ref_features']}, decoder {first['decoder_features']}; tau {tau}"
                             f"{', keys centred' if bool(first['center_keys']) else ''})")
    lines.append("density of W: reference {:.3f}; decoder layers {}".format(
        float(first["ref_w_density"]), ", ".join(f"{d:.3f}" for d in table["w_density"])))
    return lines


def saturation_warning(table) -> str | None:
    """The warning for a saturated or empty W (density outside [0.05, 0.95]): S then measures only a density."""
    flagged = table[table["w_flag"] != ""]
    if not len(flagged):
        return None
    sides = [f"the reference's W is {flagged['w_flag'].iloc[0].split(';')[0].split()[1]}"] \
        if "reference" in flagged["w_flag"].iloc[0] else []
    decoder = flagged[flagged["w_flag"].str.contains("decoder")]
    for state in ("saturated", "empty"):
        layers = [str(int(layer)) for layer, f in zip(decoder["layer"], decoder["w_flag"]) if f"decoder {state}" in f]
        if layers:
            sides.append(f"W is {state} in decoder layer(s) {', '.join(layers)}")
    return (f"{'; '.join(sides)} (density outside [{EMPTY_BELOW:g}, {SATURATED_ABOVE:g}]): S then measures only a "
            "density; try center_keys=True or tau_quantile (--center-keys, --tau-quantile; README, Eq. 8)")


SPEC = register(MetricSpec(
    name="decoder-semantics", function="decoder_semantic_similarity", column="decoder_semantic_similarity",
    reducer=DecoderSemanticSimilarity, options=DecoderSemanticSimilarityOptions,
    summary="LC-MAE Eq. 8: semantic similarity of each decoder layer to a reference model (e.g. DINO).",
    doc="""LC-MAE Eq. 8: similarity of each decoder layer's patch affinities to a reference model's.

    ``reference``: a loaded model, a checkpoint path, or ``'dino'`` (DINO ViT-B/16, LC-MAE says only "DINO";
    CutLER's own reference is DINO ViT-B/8; else DINOv2, from the local caches or ``$MAEPROBE_DINO``, never
    downloaded). ``tau``/``eps`` binarise affinities as CutLER's MaskCut does (W > tau -> 1, else eps). Rows also
    carry ``w_density`` / ``ref_w_density`` (fraction of W above tau) and ``w_flag`` ('saturated' above 0.95,
    'empty' below 0.05): a saturated W makes S measure only a density, and a warning says so.""",
    mask_ratio=0.75, per_image_mask=False, needs_decoder=True, needs_reference=True, block_queries=False,
    layers_help="0-based decoder layers, e.g. 0,7 or 0-3 (default all).", report=_report, warn=saturation_warning,
    figures=(FigureSpec("fig3", "Decoder semantic similarity (Eq. 8)", "layers", ylabel="$S_{sim}$",
                        settings={"ref_features": "keys", "decoder_features": None, "tau": None, "eps": None,
                                  "center_keys": False, "tau_quantile": None}, default=True),)))
