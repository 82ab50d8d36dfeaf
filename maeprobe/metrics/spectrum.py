"""Feature-collapse spectrum (U-MAE, "How Mask Matters"): singular values and effective rank of
encoder features over the image set, streaming through the feature covariance.

Features of an encoder layer (block output; default the last block): the CLS token (when the model has
one) and the mean of the patch tokens, on unmasked images by default. The running sums sum x and
sum x x^T give the covariance C exactly; its eigenvalues l_k give the singular values
s_k = sqrt(l_k) of the centred feature matrix divided by sqrt(N - 1). Effective rank (Roy & Vetterli
2007): exp(-sum p_k log p_k) with p_k = s_k / sum s.

Confidence intervals of the effective rank and of every singular value: a delete-a-group jackknife over G
fixed groups of whole independent units (source photos or files, ``metrics.base.unit_groups``; their sums
are kept; memory G x D x D): the statistic without group g, for each non-empty g, gives the standard error
sqrt((G' - 1) / G' * sum_g (r_g - mean r)^2), and the interval is r +- t_{0.975, G'-1} se. A bootstrap that
resamples images (or groups) with replacement repeats images, which lowers the rank of every replicate: on
128 images of width 192 its interval lay entirely below the estimate. The jackknife leaves (G'-1)/G' of the
distinct images in every replicate. N images give at most N - 1 nonzero singular values (the centred
feature matrix has rank <= N - 1), so with few images the spectrum is capped by N, not by the model.

Memory: each layer's block output is pooled inside the forward hook (``consume``), so a batch holds [B, D] per
layer and kind, never every requested layer's [B, tokens, D]; the sums (layers x kinds x (1 + G) x D^2 x 8
bytes, allocated here) are checked against ``MAEPROBE_MAX_METRIC_MEMORY`` before they are allocated.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._lazy import lazy
from ..errors import MaeprobeError
from .base import MIN_UNITS, Reducer, check_bootstrap, unit_groups
from .registry import FigureSpec, MetricSpec, checkpoint_name, images_text, option, register

np = lazy("numpy")
torch = lazy("torch")
_capture = lazy("maeprobe.capture")


def effective_rank(singular_values: np.ndarray) -> float:
    s = np.clip(np.asarray(singular_values, dtype=float), 0, None)
    if s.sum() <= 0:
        return float("nan")
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _singular_values(total: np.ndarray, outer: np.ndarray, n: float) -> np.ndarray:
    mean = total / n
    cov = (outer - n * np.outer(mean, mean)) / max(n - 1, 1)
    eig = np.linalg.eigvalsh((cov + cov.T) / 2)[::-1]
    return np.sqrt(np.clip(eig, 0, None))


class FeatureSpectrum(Reducer):
    """Streaming covariance spectrum of CLS and mean-pooled patch features of encoder layers."""

    metric = "feature_spectrum"
    module = "encoder"

    def __init__(self, model, *, layers=None, bootstrap: int = 0, bootstrap_seed: int = 0, groups: int = 16) -> None:
        super().__init__()
        bootstrap, bootstrap_seed, groups = check_bootstrap(bootstrap, bootstrap_seed, groups)
        depth = len(model.blocks)
        self.layers = _capture.resolve_layers(model, "encoder", layers if layers is not None else [depth - 1])
        self.num_prefix = model.num_prefix_tokens
        self.kinds = (["cls"] if model.config.class_token else []) + ["patch_mean"]
        self.bootstrap, self.bootstrap_seed = bootstrap, bootstrap_seed
        self.groups = groups if bootstrap else 0
        D = model.config.embed_dim
        from ..limits import check

        sums = len(self.layers) * len(self.kinds) * (1 + self.groups) * (D * D + D) * 8
        check("MAEPROBE_MAX_METRIC_MEMORY", sums + self.groups * D * D * 8,  # and one batch's [G, D, D] products
              f"feature spectrum: its sums ({len(self.layers)} layer(s) x {len(self.kinds)} feature(s) x "
              f"{1 + self.groups} x {D}^2 x 8 bytes; fewer --layers{' or --bootstrap 0' if self.groups else ''} "
              "need less)")
        self._pending: dict[int, dict[str, torch.Tensor]] = {}
        self.add_state("count", torch.zeros(()))
        for layer in self.layers:
            for kind in self.kinds:
                self.add_state(f"sum_{layer}_{kind}", torch.zeros(D))
                self.add_state(f"outer_{layer}_{kind}", torch.zeros(D, D))
                if self.groups:
                    self.add_state(f"gsum_{layer}_{kind}", torch.zeros(self.groups, D))
                    self.add_state(f"gouter_{layer}_{kind}", torch.zeros(self.groups, D, D))
        if self.groups:
            self.add_state("gcount", torch.zeros(self.groups))

    def request(self) -> _capture.CaptureRequest:
        return _capture.CaptureRequest.of(features={"encoder": self.layers})

    def consumes(self):
        return {("features", "encoder", layer) for layer in self.layers}

    def _pooled(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, N, D] block output -> {'patch_mean': [B, D], 'cls': [B, D]}, pooled on the model's device."""
        feats = {"patch_mean": tokens[:, self.num_prefix:].float().mean(1)}
        if "cls" in self.kinds:
            feats["cls"] = tokens[:, 0].clone()
        return feats

    def consume(self, kind, module, layer, tensor, cache) -> None:
        self._pending[layer] = self._pooled(tensor)  # the block output itself is not kept

    def update(self, cache: _capture.ActivationCache) -> None:
        onehot = None
        units = self.note_units(cache)
        if self.groups:
            groups = unit_groups(units, self.groups)
            onehot = torch.nn.functional.one_hot(groups, self.groups).double().T  # [G, B]
            self._state["gcount"] += onehot.sum(1)
        pending, self._pending = self._pending, {}
        for layer in self.layers:
            feats = pending.get(layer)
            if feats is None:  # not digested in the hook: the [B, N, D] block output from the cache
                feats = self._pooled(cache.features[("encoder", layer)])
            for kind, x in feats.items():
                x = x.double().cpu()  # [B, D]
                self._state[f"sum_{layer}_{kind}"] += x.sum(0)
                self._state[f"outer_{layer}_{kind}"] += x.T @ x
                if onehot is not None:
                    self._state[f"gsum_{layer}_{kind}"] += onehot @ x
                    self._state[f"gouter_{layer}_{kind}"] += torch.einsum("gb,bi,bj->gij", onehot, x, x)
        self._state["count"] += len(cache.image_indices)

    def _jackknife_interval(self, estimate: np.ndarray, total, outer, n, layer, kind) -> tuple[np.ndarray, np.ndarray]:
        """Delete-a-group jackknife t intervals of [singular values..., effective rank] (non-empty groups only)."""
        from scipy.stats import t as student_t

        gsum = self._state[f"gsum_{layer}_{kind}"].numpy()
        gouter = self._state[f"gouter_{layer}_{kind}"].numpy()
        gcount = self._state["gcount"].numpy()
        reps = []
        for g in range(self.groups):
            if gcount[g] > 0 and n - gcount[g] >= 2:
                sv = _singular_values(total - gsum[g], outer - gouter[g], n - gcount[g])
                reps.append(np.append(sv, effective_rank(sv)))
        if len(reps) < MIN_UNITS:  # too few units (or groups) to leave out: no interval
            return np.full(estimate.shape, np.nan), np.full(estimate.shape, np.nan)
        reps = np.asarray(reps)  # [G', D + 1]
        k = len(reps)
        se = np.sqrt((k - 1) / k * ((reps - reps.mean(0)) ** 2).sum(0))
        half = float(student_t.ppf(0.975, k - 1)) * se
        return estimate - half, estimate + half

    def rows(self) -> list[dict]:
        n = self._state["count"].item()
        if n < 2:
            raise MaeprobeError("feature spectrum needs at least 2 images")
        out = []
        for layer in self.layers:
            for kind in self.kinds:
                total = self._state[f"sum_{layer}_{kind}"].numpy()
                outer = self._state[f"outer_{layer}_{kind}"].numpy()
                sv = _singular_values(total, outer, n)
                estimate = np.append(sv, effective_rank(sv))  # [D + 1]: singular values, then effective rank
                low = high = np.full(estimate.shape, np.nan)
                if self.groups:
                    low, high = self._jackknife_interval(estimate, total, outer, n, layer, kind)
                base = {"module": "encoder", "layer": layer, "head": None, "n_images": int(n), "feature": kind}
                out += [{**base, "metric": "feature_spectrum", "component": k, "value": float(v), "std": np.nan,
                         "ci_low": float(low[k]), "ci_high": float(high[k])} for k, v in enumerate(sv)]
                out.append({**base, "metric": "effective_rank", "component": None, "value": float(estimate[-1]),
                            "std": np.nan, "ci_low": float(low[-1]), "ci_high": float(high[-1])})
        return out


@dataclass(frozen=True)
class FeatureSpectrumOptions:
    groups: int = option(16, "Fixed image groups that the interval of the spectrum resamples.", low=1, high=4096)


def _report(table) -> list[str]:
    ranks = table[table["metric"] == "effective_rank"]
    return [f"{checkpoint_name(table)}: effective rank of encoder features ({images_text(ranks)})",
            ranks[["layer", "feature", "value", "ci_low", "ci_high"]].to_string(index=False, float_format="%.2f")]


SPEC = register(MetricSpec(
    name="spectrum", function="feature_spectrum", column="feature_spectrum", reducer=FeatureSpectrum,
    options=FeatureSpectrumOptions,
    summary="U-MAE feature-collapse spectrum: singular values and effective rank of encoder features.",
    doc="""U-MAE feature-collapse spectrum: singular values (``feature_spectrum`` rows, one per component) and
    effective rank (``effective_rank`` rows) of CLS and mean-pooled patch features of encoder layers (default:
    the last block).""",
    per_image_mask=False, block_queries=False, layers_help="0-based encoder layers (default: the last).",
    detail_rows=("feature_spectrum",), summary_rows=("effective_rank",),
    report=_report,
    figures=(FigureSpec("spectrum", "Feature spectrum (U-MAE)", "spectrum", default=True),)))
