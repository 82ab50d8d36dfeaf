"""Singular values of token representations (token level): per image, the spectrum of its patch tokens' covariance,
log-scaled and averaged over images, per encoder layer.

Source. Park et al., "What Do Self-Supervised Vision Transformers Learn?" (ICLR 2023), the singular values of
token-level representations (CL's tokens of one image collapse into few dimensions; MIM's do not). The public
repository naver-ai/cl-vs-mim (commit eafe516) has no code for it: ``representation_analysis.ipynb`` holds only the
Fourier analysis and the t-SNE of tokens. The computation follows the paper's pseudocode as a public
reimplementation quotes it (``get_tknlvl_sings``: per image ``torch.cov(rearrange(z, "n c -> c n"))``, then
``torch.svd``, ``.log()``, and ``reduce(..., "d m c -> d c", "mean")`` over images), which could not be checked
against the paper's own text here: read it as the best available reading, not a verified one.

Definition (``svd_matrix='covariance'``, the default). Per layer and image, the patch tokens Z [N, D] (prefix tokens
dropped) give the covariance over tokens C = (Z - z̄)ᵀ (Z - z̄) / (N - 1) [D, D] (``torch.cov``: centred over
tokens, N - 1). Its singular values are its eigenvalues, λ_i = σ_i(Z - z̄)² / (N - 1), in decreasing order. The
value of component i is the mean over images of ln λ_i (the mean of the logs). C has rank at most N - 1, so only
r = min(N - 1, D) components are reported; the rest are zero (their logarithm is -inf) and the public pseudocode's
plots stop near there too. ``svd_matrix='tokens'`` (an alternative: the literal "singular values of the token
matrix") uses σ_i(Z) of the uncentred [N, D] matrix, r = min(N, D), again as mean ln σ_i over images.

This is not the ``spectrum`` metric (U-MAE): that one is the covariance across images of one pooled feature per
image; this one is the covariance across the tokens of each image, averaged over images. A separate reducer: an
``ImageMean`` of a per-image vector (bootstrap over independent units), where ``spectrum`` keeps D x D sums and a
jackknife.

Streaming. Each layer's block output is reduced inside the forward hook (``consume``: a batch keeps [B, r] per
layer, never [B, tokens, D]). The probe mask must be empty (mask ratio 0), as in the paper: the number of tokens
sets r.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._lazy import lazy
from ..errors import MaeprobeError
from .base import ImageMean, check_bootstrap, units_of
from .registry import MetricSpec, checkpoint_name, images_text, option, register

torch = lazy("torch")
_capture = lazy("maeprobe.capture")

MATRICES = ("covariance", "tokens")


def _svdvals(x: torch.Tensor) -> torch.Tensor:
    """Singular values [B, min(N, D)] of [B, N, D], decreasing; LAPACK takes a tall matrix several times faster than
    a wide one (196 x 768: 8x on CPU), and the transpose has the same singular values."""
    return torch.linalg.svdvals(x if x.shape[-2] >= x.shape[-1] else x.transpose(-2, -1))


def log_singular_values(tokens: torch.Tensor, svd_matrix: str = "covariance") -> torch.Tensor:
    """Per image, the log singular values of its token covariance (or token matrix), in decreasing order.

    Args:
        tokens: patch tokens [B, N, D] of one layer.
        svd_matrix: ``'covariance'`` (ln of the singular values of the [D, D] covariance over tokens, r = min(N - 1,
            D)) or ``'tokens'`` (ln of the singular values of the uncentred [N, D] matrix, r = min(N, D)).

    Returns:
        [B, r] float64 (-inf where a value is exactly zero).
    """
    x = tokens.double()  # [B, N, D]
    B, N, D = x.shape
    if svd_matrix == "covariance":
        if N < 2:
            raise MaeprobeError("token-svd: the covariance over tokens needs at least 2 patch tokens")
        sigma = _svdvals(x - x.mean(1, keepdim=True))  # [B, min(N, D)]
        values = sigma[:, :min(N - 1, D)] ** 2 / (N - 1)  # [B, r] eigenvalues of the covariance
    elif svd_matrix == "tokens":
        values = _svdvals(x)  # [B, min(N, D)]
    else:
        raise MaeprobeError(f"svd_matrix must be 'covariance' or 'tokens', got {svd_matrix!r}")
    return values.log()  # [B, r]


class TokenSingularValues(ImageMean):
    """Streaming mean over images of the log singular values of each image's tokens, per encoder layer."""

    metric = "token_singular_values"
    module = "encoder"

    def __init__(self, model, *, layers=None, svd_matrix: str = "covariance", bootstrap: int = 0,
                 bootstrap_seed: int = 0) -> None:
        if svd_matrix not in MATRICES:
            raise MaeprobeError(f"svd_matrix must be 'covariance' or 'tokens', got {svd_matrix!r}")
        bootstrap, bootstrap_seed = check_bootstrap(bootstrap, bootstrap_seed)
        self.layers = _capture.resolve_layers(model, "encoder", layers)
        self.svd_matrix = svd_matrix
        self.num_prefix = int(model.num_prefix_tokens)
        self.num_patches, self.width = int(model.config.num_patches), int(model.config.embed_dim)
        N, D = self.num_patches, self.width
        if N < 2:
            raise MaeprobeError("token-svd: the model has one patch token; singular values over tokens need two")
        self.rank = min(N - 1, D) if svd_matrix == "covariance" else min(N, D)
        from ..limits import check

        check("MAEPROBE_MAX_METRIC_MEMORY", len(self.layers) * self.rank * (2 + bootstrap) * 8,
              f"token-svd: its sums ({len(self.layers)} layer(s) x {self.rank} components x {2 + bootstrap} x 8 "
              "bytes; fewer layers or bootstrap replicates need less)")
        super().__init__((len(self.layers), self.rank), bootstrap, bootstrap_seed)
        self._pending: dict[int, torch.Tensor] = {}

    def check_memory(self, *, mask_ratio: float = 0.0, batch_size: int = 1) -> None:
        from ..limits import check
        from ..masking import num_kept

        N, D = self.num_patches, self.width
        if num_kept(N, mask_ratio) != N:
            raise MaeprobeError(f"token-svd: mask_ratio {mask_ratio:g} hides patches; the spectrum is of every patch "
                                "token of an image (its size depends on their number): use mask_ratio=0")
        # one layer of one batch at a time: the float64 tokens, centred copy and the SVD's workspace
        check("MAEPROBE_MAX_METRIC_MEMORY", batch_size * N * D * 8 * 4,
              f"token-svd: one layer's token matrices for batches of {batch_size} image(s) ({N} tokens x {D} "
              "channels x 32 bytes; a smaller batch_size needs less)")

    def settings(self) -> dict:
        return {"svd_matrix": self.svd_matrix}

    def request(self) -> _capture.CaptureRequest:
        return _capture.CaptureRequest.of(features={"encoder": self.layers})

    def consumes(self) -> set[tuple[str, str, int]]:
        return {("features", "encoder", layer) for layer in self.layers}

    def _values(self, tokens: torch.Tensor) -> torch.Tensor:
        """Block output [B, P + N, D] -> log singular values [B, r] on the CPU (computed on the tensor's device)."""
        if tokens.shape[1] != self.num_prefix + self.num_patches:
            raise MaeprobeError(f"token-svd: expected {self.num_prefix + self.num_patches} tokens, got "
                                f"{tokens.shape[1]}; it needs every patch (mask_ratio=0)")
        return log_singular_values(tokens[:, self.num_prefix:], self.svd_matrix).cpu()

    def consume(self, kind, module, layer, tensor, cache) -> None:
        self._pending[layer] = self._values(tensor)  # the block output itself is not kept

    def update(self, cache: _capture.ActivationCache) -> None:
        pending, self._pending = self._pending, {}
        values = [pending[layer] if layer in pending else self._values(cache.features[("encoder", layer)])
                  for layer in self.layers]
        stacked = torch.stack(values, dim=1)  # [B, layers, r]
        self.add(stacked, units_of(cache) if cache.image_indices is not None else torch.arange(stacked.shape[0]))

    def rows(self) -> list[dict]:
        s, n = self.summary(), self.count
        return [{"metric": self.metric, "module": "encoder", "layer": layer, "head": None, "component": i,
                 "value": float(s["value"][j, i]), "std": float(s["std"][j, i]), "ci_low": float(s["ci_low"][j, i]),
                 "ci_high": float(s["ci_high"][j, i]), "n_images": n}
                for j, layer in enumerate(self.layers) for i in range(self.rank)]


@dataclass(frozen=True)
class TokenSingularValuesOptions:
    svd_matrix: str = option("covariance", "covariance: log singular values of each image's token covariance (the "
                             "paper's pseudocode); tokens: of the uncentred token matrix.", choices=MATRICES)


def _report(table) -> list[str]:
    title = (f"{checkpoint_name(table)}: mean log singular value of each image's patch {table['svd_matrix'].iloc[0]}"
             f" per encoder layer, {images_text(table)} (components 0-based, largest first)")
    last = int(table["component"].max())
    picks = sorted({0, 1, last // 2, last} & set(range(last + 1)))
    shown = table[table["component"].isin(picks)].pivot_table(index="layer", columns="component", values="value")
    shown.columns = [f"component {int(c)}" for c in shown.columns]
    return [title, shown.reset_index().to_string(index=False, float_format="%.3f")]


SPEC = register(MetricSpec(
    name="token-svd", function="token_singular_values", column="token_singular_values",
    reducer=TokenSingularValues, options=TokenSingularValuesOptions,
    summary="Singular values of token representations: mean log spectrum of each image's token covariance per layer.",
    doc="""Token-level singular values (Park et al., ICLR 2023): per encoder layer and image, the singular values of
    the covariance over its patch tokens (``svd_matrix='tokens'``: of the token matrix itself), log-scaled and
    averaged over images. One row per (layer, component), components 0-based from the largest; min(N - 1, D) of
    them. Needs mask_ratio 0.""",
    per_image_mask=False, block_queries=False, layers_help="0-based encoder layers (default all).",
    detail_rows=("token_singular_values",), report=_report))
