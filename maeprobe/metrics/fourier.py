"""Fourier analysis of token features: the relative log amplitude of each layer's patch-token feature map along the
frequency axis, and its value at the highest frequency per layer ("MSAs are low-pass filters").

Sources. Park & Kim, "How Do Vision Transformers Work?" (ICLR 2022), Fig. 2(a) (Δ log amplitude against
frequency) and Fig. 8 (Δ log amplitude of the high-frequency component against depth). Code read:
xxxnell/how-do-vits-work, ``fourier_analysis.ipynb`` at commit 9571ff1, cell "Plot Fourier Transformed Feature
Maps" (notebook file lines 221-315): ``fourier(x)``, ``shift(x)`` and the loop over ``latents``; the CLS token is
dropped a cell before (line 200). Park et al., "What Do Self-Supervised Vision Transformers Learn?" (ICLR 2023),
Fourier analysis of representations (CL low-frequency, MIM high-frequency); code read: naver-ai/cl-vs-mim,
``representation_analysis.ipynb`` at commit eafe516, cell "Fourier Analysis" (lines 490-548):
``get_fourier_latents(latents)`` (the same steps), applied to ``[z[:, 1:, :] for z in zs]`` and plotted as
``fourier_latents[:, -1][::2]`` against depth (the embedding and every block output).

Definition (both notebooks). Per layer, the patch tokens (prefix tokens dropped) in raster order form a feature
map X [B, D, h, w]. Per image and channel c, F_c = fft2(X_c) (unnormalised) and the log amplitude
L_c(u, v) = ln(|F_c(u, v)| + 1e-6). The map is averaged over channels (and, in the notebooks, over the batch): the
mean of the logs. The spectrum is read along the half diagonal from DC, u = v = k for k = 0 .. ceil(h/2) - 1
(``torch.roll`` by h/2 then ``diag()[h/2:]`` selects exactly these), and made relative to DC:

    Δ(k) = mean_c L_c(k, k) - mean_c L_c(0, 0)     (Δ(0) = 0; Δ < 0: less amplitude than DC).

Frequency k is 2πk/h per axis; the ``frequency`` column gives it in units of π (2k/h). The summary of a layer is
Δ at the last k (``fourier_latents[:, -1]``), the "high-frequency" point the figures plot against depth.

Streaming. Δ is linear in the per-image logs, so the notebooks' batch mean of log amplitudes equals the mean over
images of the per-image Δ exactly; this reducer keeps that mean (``ImageMean``) with bootstrap intervals over
independent units. Each layer's block output is reduced inside the forward hook (``consume``): a batch keeps
[B, K] per layer, never [B, tokens, D].

Choices where the sources leave room (the README's fidelity notes):
  * Layers are block outputs (cl-vs-mim's ``[::2]``); the embedding (their depth 0) and how-do-vits-work's
    sub-layer outputs (after the MSA and after the MLP residual, its Fig. 8 x axis) are not captured.
  * The figures label the last point π; for an even grid it is π (1 - 2/h) per axis (0.857π on 14 x 14): the
    notebooks' slice leaves out the Nyquist row. Implemented as the code does; ``frequency`` states the true value.
  * ``channel_average='amplitude'`` (an alternative, not the papers'): the log of the channel-mean amplitude per
    image, ln(mean_c |F_c| + 1e-6), instead of the mean of the logs.
  * Every prefix token is dropped (CLS, registers, distillation token), where the notebooks drop index 0 only.
The probe mask must be empty (mask ratio 0): a masked encoder has no full grid to transform.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._lazy import lazy
from ..errors import MaeprobeError
from .base import ImageMean, check_bootstrap, units_of
from .registry import FigureSpec, MetricSpec, checkpoint_name, images_text, option, register

torch = lazy("torch")
_capture = lazy("maeprobe.capture")

EPS = 1e-6  # added to every amplitude before the logarithm, as ``fourier(x)`` does
BY_FREQUENCY = "feature_fourier_by_frequency"  # the metric column of the per-frequency rows
SUMMARY = "feature_fourier"  # ... and of the per-layer rows (Δ at the highest frequency)


def feature_map(tokens: torch.Tensor, num_prefix: int, grid: int) -> torch.Tensor:
    """Block output [B, P + h*w, D] -> patch-token feature map [B, h, w, D] (prefix tokens dropped, raster order)."""
    B, N, D = tokens.shape
    if N - num_prefix != grid * grid:
        raise MaeprobeError(f"fourier: expected {num_prefix} prefix tokens and a {grid} x {grid} grid of patch tokens "
                            f"({num_prefix + grid * grid} tokens), got {N}; the Fourier analysis needs every patch "
                            "(mask_ratio=0)")
    return tokens[:, num_prefix:].reshape(B, grid, grid, D)  # [B, h, w, D]


def delta_log_amplitude(maps: torch.Tensor, channel_average: str = "log") -> torch.Tensor:
    """Per image, Δ log amplitude along the half diagonal of the 2-D spectrum, relative to DC.

    Args:
        maps: feature maps [B, h, w, D] (h = w).
        channel_average: ``'log'`` (the papers: mean over channels of ln(|F| + 1e-6)) or ``'amplitude'``
            (ln(mean over channels of |F| + 1e-6)).

    Returns:
        [B, K] float64, K = ceil(h / 2): Δ at frequencies (k, k), k = 0 .. K - 1 (column 0 is DC, always 0).
    """
    B, h, w, D = maps.shape
    if h != w:
        raise MaeprobeError(f"fourier: expected a square grid of patch tokens, got {h} x {w}")
    x = maps.double().permute(0, 3, 1, 2)  # [B, D, h, w]
    k = torch.arange(h - h // 2, device=x.device)  # half diagonal from DC: what roll by h/2 then diag()[h/2:] keeps
    amplitude = torch.fft.fft2(x).abs()[:, :, k, k]  # [B, D, K]
    if channel_average == "log":
        curve = (amplitude + EPS).log().mean(1)  # [B, K]
    elif channel_average == "amplitude":
        curve = (amplitude.mean(1) + EPS).log()  # [B, K]
    else:
        raise MaeprobeError(f"channel_average must be 'log' or 'amplitude', got {channel_average!r}")
    return curve - curve[:, :1]  # [B, K]


class FeatureFourier(ImageMean):
    """Streaming mean over images of Δ log amplitude per encoder layer and diagonal frequency."""

    metric = SUMMARY
    module = "encoder"

    def __init__(self, model, *, layers=None, channel_average: str = "log", bootstrap: int = 0,
                 bootstrap_seed: int = 0) -> None:
        if channel_average not in ("log", "amplitude"):
            raise MaeprobeError(f"channel_average must be 'log' or 'amplitude', got {channel_average!r}")
        bootstrap, bootstrap_seed = check_bootstrap(bootstrap, bootstrap_seed)
        self.layers = _capture.resolve_layers(model, "encoder", layers)
        self.channel_average = channel_average
        self.num_prefix = int(model.num_prefix_tokens)
        self.grid, self.width = int(model.config.grid_size), int(model.config.embed_dim)
        if self.grid < 3:
            raise MaeprobeError(f"fourier: the {self.grid} x {self.grid} patch grid has no frequency between DC and "
                                "the Nyquist row, which the analysis leaves out; it needs a grid of at least 3 x 3")
        self.num_frequencies = self.grid - self.grid // 2
        from ..limits import check

        check("MAEPROBE_MAX_METRIC_MEMORY", len(self.layers) * self.num_frequencies * (2 + bootstrap) * 8,
              f"fourier: its sums ({len(self.layers)} layer(s) x {self.num_frequencies} frequencies x "
              f"{2 + bootstrap} x 8 bytes; fewer layers or bootstrap replicates need less)")
        super().__init__((len(self.layers), self.num_frequencies), bootstrap, bootstrap_seed)
        self._pending: dict[int, torch.Tensor] = {}

    def check_memory(self, *, mask_ratio: float = 0.0, batch_size: int = 1) -> None:
        from ..limits import check
        from ..masking import num_kept

        L = self.grid * self.grid
        if num_kept(L, mask_ratio) != L:
            raise MaeprobeError(f"fourier: mask_ratio {mask_ratio:g} hides patches; the Fourier analysis transforms "
                                "the whole patch grid of each image: use mask_ratio=0")
        # one layer of one batch at a time: the float64 map and its complex128 spectrum
        check("MAEPROBE_MAX_METRIC_MEMORY", batch_size * self.width * L * (8 + 16 + 8),
              f"fourier: one layer's spectra for batches of {batch_size} image(s) ({self.width} channels x {L} "
              "patches x 32 bytes; a smaller batch_size needs less)")

    def settings(self) -> dict:
        return {"channel_average": self.channel_average, "grid": self.grid}

    def request(self) -> _capture.CaptureRequest:
        return _capture.CaptureRequest.of(features={"encoder": self.layers})

    def consumes(self) -> set[tuple[str, str, int]]:
        return {("features", "encoder", layer) for layer in self.layers}

    def _curves(self, tokens: torch.Tensor) -> torch.Tensor:
        """Block output [B, N, D] -> Δ log amplitude [B, K] on the CPU (computed on the tensor's device)."""
        return delta_log_amplitude(feature_map(tokens, self.num_prefix, self.grid), self.channel_average).cpu()

    def consume(self, kind, module, layer, tensor, cache) -> None:
        self._pending[layer] = self._curves(tensor)  # the block output itself is not kept

    def update(self, cache: _capture.ActivationCache) -> None:
        pending, self._pending = self._pending, {}
        curves = [pending[layer] if layer in pending else self._curves(cache.features[("encoder", layer)])
                  for layer in self.layers]
        values = torch.stack(curves, dim=1)  # [B, layers, K]
        self.add(values, units_of(cache) if cache.image_indices is not None else torch.arange(values.shape[0]))

    def rows(self) -> list[dict]:
        s, n, K = self.summary(), self.count, self.num_frequencies
        out = []
        for i, layer in enumerate(self.layers):
            for k in range(K):
                row = {"module": "encoder", "layer": layer, "head": None, "value": float(s["value"][i, k]),
                       "std": float(s["std"][i, k]), "ci_low": float(s["ci_low"][i, k]),
                       "ci_high": float(s["ci_high"][i, k]), "n_images": n, "frequency": 2 * k / self.grid,
                       "frequency_index": k}
                out.append({"metric": BY_FREQUENCY, **row})
                if k == K - 1:
                    out.append({"metric": SUMMARY, **row})
        return out


@dataclass(frozen=True)
class FeatureFourierOptions:
    channel_average: str = option("log", "log: mean over channels of the log amplitude (the papers); amplitude: log "
                                  "of the channel-mean amplitude.", choices=("log", "amplitude"))


def _report(table) -> list[str]:
    first = table.iloc[0]
    title = (f"{checkpoint_name(table)}: Δ log amplitude of encoder features at the highest diagonal frequency "
             f"({float(first['frequency']):.3f}π, {int(first['grid'])} x {int(first['grid'])} grid) vs DC, "
             f"{images_text(table)}, channel average {first['channel_average']}")
    shown = table.sort_values("layer")[["layer", "value", "ci_low", "ci_high"]]
    return [title, shown.to_string(index=False, float_format="%.3f")]


SPEC = register(MetricSpec(
    name="fourier", function="fourier_spectrum", column=SUMMARY, reducer=FeatureFourier,
    options=FeatureFourierOptions,
    summary="Fourier analysis of patch-token features: Δ log amplitude (high frequency vs DC) per encoder layer.",
    doc="""Fourier analysis of token features (Park & Kim, ICLR 2022, Fig. 2a and 8; Park et al., ICLR 2023): per
    encoder layer, the 2-D FFT of the patch-token feature map per channel, log amplitude averaged over channels,
    relative to DC along the half diagonal. Rows ``feature_fourier_by_frequency``: one per (layer, frequency; the
    ``frequency`` column in units of pi); rows ``feature_fourier``: the highest frequency per layer. Needs
    mask_ratio 0.""",
    per_image_mask=False, block_queries=False, layers_help="0-based encoder layers (default all).",
    detail_rows=(BY_FREQUENCY,), report=_report,
    figures=(FigureSpec("fourier", "Fourier: Δ log amplitude at the highest frequency vs DC", "layers",
                        ylabel="Δ log amplitude", settings={"channel_average": "log"}, default=True),)))
