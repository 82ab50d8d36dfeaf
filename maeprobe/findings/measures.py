"""The findings' own measurements, beside the registered metrics of ``maeprobe.api``: the LC-MAE collapse
spreads (``output_spread``, ``encoder_spread_ratio``), the linear probes of frozen encoders and of raw pixels,
the CLS effective rank, and the controls that are not a run's own initial weights (``random_like``, the
uniform-attention level)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import MaeprobeError
from . import rules
from .runs import _load

BOOTSTRAP = 200


def _spread(unit_sum: torch.Tensor, count) -> torch.Tensor:
    """1 - |mean unit vector|^2 per position, averaged over positions: unit_sum [..., k, E] -> [...]."""
    return 1 - ((unit_sum / count) ** 2).sum(-1).mean(-1)


@torch.no_grad()
def output_spread(folder: Path, images: torch.Tensor, *, mask_ratio: float = 0.75, seed: int = 0,
                  bootstrap: int = BOOTSTRAP, device: str = "cpu", units=None) -> dict:
    """LC-MAE collapse measure: at each masked position i (one shared seeded mask), the across-image spread
    1 - |mean_n v_hat[n, i]|^2 of the unit-normalised projected outputs v = p(h(x, m)); averaged over i.
    0 when every image gives the same output (collapse to a constant point); about 1 - 1/N for unrelated
    outputs. Interval: Poisson bootstrap over independent units (``units``: the source photo of every image;
    None: each image its own). The same spread of the model's own output h(x, m) (the
    pixel prediction, before the projector) is returned as ``h_value`` for the report; the verdict uses v."""
    from ..checkpoints import read_pickle
    from ..masking import mask_noise
    from ..metrics.base import percentile_interval, poisson_weights

    state = read_pickle(folder / "checkpoint-last.pth")
    if "projector" not in state:
        raise MaeprobeError(f"{folder}: no LC-MAE projector in the checkpoint")
    weight = state["projector"]["weight"]
    projector = torch.nn.Linear(weight.shape[1], weight.shape[0])
    projector.load_state_dict(state["projector"])
    model = _load(folder).to(device).eval()
    projector = projector.to(device)
    L = model.config.num_patches
    units = _units(images, units)
    sums: dict[str, torch.Tensor] = {}
    boot_weight, count = torch.zeros(bootstrap, dtype=torch.float64), 0
    for start in range(0, len(images), 64):
        x = images[start:start + 64].to(device)
        noise = mask_noise(L, seed, batch_size=len(x)).to(device)
        latent, mask, ids_restore = model.forward_encoder(x, mask_ratio, noise)
        h = model.forward_decoder(latent, ids_restore)  # [B, L, p*p*3]
        weights = poisson_weights(units[start:start + len(x)], bootstrap, seed)  # [B, R], one draw per unit
        for name, out in (("v", projector(h)), ("h", h)):
            unit = F.normalize(out[:, mask[0] > 0.5].double(), dim=-1).cpu()  # [B, k, E]
            for key, part in ((name, unit.sum(0)), (f"boot_{name}", torch.einsum("br,bke->rke", weights, unit))):
                sums[key] = part if key not in sums else sums[key] + part
        boot_weight += weights.sum(0)
        count += len(x)
    out = {"n_images": count}
    for name in ("v", "h"):
        replicates = _spread(sums[f"boot_{name}"], boot_weight.clamp_min(1e-12).view(-1, 1, 1)).numpy()
        replicates[(boot_weight <= 0).numpy()] = np.nan  # a replicate that drew no unit is undefined
        low, high = percentile_interval(replicates)
        prefix = "" if name == "v" else "h_"
        out.update({f"{prefix}value": float(_spread(sums[name], count)), f"{prefix}ci_low": float(low),
                    f"{prefix}ci_high": float(high)})
    return out


@torch.no_grad()
def encoder_spread_ratio(trained, init, images: torch.Tensor, *, seed: int = 0, bootstrap: int = BOOTSTRAP,
                         device: str = "cpu", units=None) -> list[dict]:
    """lcmae-collapse, version 2: the across-image spread of the encoder's output on unmasked images,
    1 - |mean_n z_hat[n, i]|^2 at each position i (z_hat = z / |z|), averaged over positions, for the patch
    tokens and for the CLS token, as a ratio trained / ``init`` (the same seed's initial weights). Interval:
    paired Poisson bootstrap over independent units (the same replicate weights for both models; ``units``: the
    source photo of every image, None: each image its own)."""
    from ..metrics.base import percentile_interval, poisson_weights

    models = {"trained": trained.to(device).eval(), "init": init.to(device).eval()}
    units = _units(images, units)
    sums: dict = {}
    boot_weight, count = torch.zeros(bootstrap, dtype=torch.float64), 0
    for start in range(0, len(images), 64):
        x = images[start:start + 64].to(device)
        weights = poisson_weights(units[start:start + len(x)], bootstrap, seed)  # [B, R], one draw per unit
        for condition, model in models.items():
            z = model.forward_encoder(x, 0.0)[0]  # [B, prefix + L, E], after the final norm
            p = model.num_prefix_tokens
            for feature, part in (("patch", z[:, p:]), ("cls", z[:, :1])):
                unit = F.normalize(part.double(), dim=-1).cpu()
                for key, value in (((condition, feature), unit.sum(0)),
                                   ((condition, feature, "boot"), torch.einsum("br,bke->rke", weights, unit))):
                    sums[key] = value if key not in sums else sums[key] + value
        boot_weight += weights.sum(0)
        count += len(x)
    rows = []
    scale = boot_weight.clamp_min(1e-12).view(-1, 1, 1)
    for feature in ("patch", "cls"):
        trained_spread, init_spread = (float(_spread(sums[c, feature], count)) for c in ("trained", "init"))
        replicates = (_spread(sums["trained", feature, "boot"], scale)
                      / _spread(sums["init", feature, "boot"], scale).clamp_min(1e-12)).numpy()
        replicates[(boot_weight <= 0).numpy()] = np.nan  # a replicate that drew no unit is undefined
        low, high = percentile_interval(replicates)
        rows.append({"feature": feature, "value": trained_spread / max(init_spread, 1e-12), "ci_low": float(low),
                     "ci_high": float(high), "trained_spread": trained_spread, "init_spread": init_spread,
                     "n_units": len(set(units.tolist()))})
    return rows


def _fit_probe(f_train: np.ndarray, y_train, f_val: np.ndarray, y_val) -> float:
    """Standardised on the training split (MAE's BatchNorm without affine), multinomial logistic regression
    (L-BFGS, C = 1); top-1 (%) on the validation split."""
    from sklearn.linear_model import LogisticRegression

    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    classifier = LogisticRegression(C=1.0, max_iter=2000)
    classifier.fit((f_train - mean) / std, y_train)
    return float(100 * (classifier.predict((f_val - mean) / std) == y_val).mean())


def _eval_set(evalset, size: int):
    from .toydata import EvalSet

    return evalset if isinstance(evalset, EvalSet) else EvalSet(None, size)


@torch.no_grad()
def linear_probe(model, evalset=None, *, device: str = "cpu") -> dict:
    """Linear probe on the labelled set (default: scikit-learn digits at the model's input size): the frozen
    encoder's CLS feature after the final norm (MAE's linear-probe feature). ``model``: a model or a run
    folder; ``evalset``: an ``EvalSet`` or an input size for the digits. Returns top-1 on the validation
    split, its size and chance."""
    model = _load(model) if isinstance(model, (str, Path)) else model
    model = model.to(device).eval()
    evalset = _eval_set(evalset, evalset if isinstance(evalset, int) else model.config.img_size)

    def features(split):
        return np.concatenate([model.forward_encoder(x.to(device), 0.0)[0][:, 0].double().cpu().numpy()
                               for x in evalset.batches(split)])

    top1 = _fit_probe(features("train"), evalset.labels("train"), features("val"), evalset.labels("val"))
    return {"top1": top1, "n_val": int(len(evalset.labels("val"))), "chance": evalset.chance}


PIXEL_SIDE = 16


def pixel_probe(evalset) -> dict:
    """The raw-pixel baseline of the probe findings: the same linear probe on the normalised pixels,
    average-pooled to 16 x 16 x 3 = 768 values (the width of a ViT-B feature)."""
    def features(split):
        return np.concatenate([F.adaptive_avg_pool2d(x, PIXEL_SIDE).flatten(1).double().numpy()
                               for x in evalset.batches(split)])

    top1 = _fit_probe(features("train"), evalset.labels("train"), features("val"), evalset.labels("val"))
    return {"top1": top1, "n_val": int(len(evalset.labels("val"))), "chance": evalset.chance}


def _mean_over_heads(table: pd.DataFrame) -> pd.DataFrame:
    """A per-head attention-distance table as one row per layer (the findings compare layers, not heads)."""
    out = table.groupby("layer")[["value", "ci_low", "ci_high"]].mean().reset_index()
    if "n_units" in table:  # the independent units the intervals rest on (the same for every row)
        out["n_units"] = table["n_units"].iloc[0]
    return out


def random_like(model, seed: int = 0):
    """Randomly initialised weights of a loaded MAE model's architecture (the control of released checkpoints,
    which have no 'initial weights' of their own)."""
    from ..models.mae import MaskedAutoencoderViT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MaskedAutoencoderViT(model.config).eval()


def _units(images: torch.Tensor, units) -> torch.Tensor:
    """The probe images' units as integers ([N]; each image its own unit when None)."""
    from ..data import unit_indices

    if units is None:
        return torch.arange(len(images))
    units = unit_indices(list(units.tolist() if isinstance(units, torch.Tensor) else units))
    if len(units) != len(images):
        raise MaeprobeError(f"{len(units)} unit labels for {len(images)} probe images")
    return units


def _cls_rank(model, images, common) -> dict:
    """The effective rank of the CLS feature (``feature_spectrum``) with its interval, as one evidence row."""
    import maeprobe

    table = maeprobe.feature_spectrum(model, images, **common)
    rank = table[(table["metric"] == "effective_rank") & (table["feature"] == "cls")].iloc[0]
    return {"value": rank["value"], "ci_low": rank["ci_low"], "ci_high": rank["ci_high"], "n_units": rank["n_units"]}


def _reference_name(reference) -> str:
    """How the Eq. 8 reference is named in the evidence and the figures: its checkpoint's name or path."""
    checkpoint = getattr(reference, "checkpoint", None)
    return str(getattr(checkpoint, "name", None) or getattr(checkpoint, "path", None) or "the reference")


def _uniform_of(model) -> float:
    """The mean attention distance of uniform attention on this model's grid (px): the distances' floor of power."""
    cfg = model.config
    return rules.uniform_attention_distance(cfg.grid_size, cfg.patch_size, model.num_prefix_tokens)


def _state_digest(model, encoder_only: bool = False) -> str:
    """Content hash of a model's parameters and buffers (``encoder_only``: those outside the decoder)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if encoder_only and (name.startswith("decoder") or name == "mask_token"):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
