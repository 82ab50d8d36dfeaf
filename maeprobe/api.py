"""The notebook-facing API: one function per metric, each returning a tidy DataFrame."""
from __future__ import annotations

import pandas as pd

import os
from pathlib import Path

from .errors import MaeprobeError
from .metrics import (AttentionDistance, AttentionEntropy, DecoderAttentionSimilarity, DecoderSemanticSimilarity,
                      FeatureSpectrum)
from .probe import resolve_model, run_probe
from .results import to_frame

# Bootstrap replicates for ci_low/ci_high by default, as the CLI (0 turns intervals off).
BOOTSTRAP = 200

METRICS = ("attn-distance", "attn-entropy", "decoder-attn-sim", "decoder-semantics", "spectrum")


def run_context(model, *, mask_ratio: float, seed: int, shared_mask: bool, dtype: str | None) -> dict:
    """Settings columns shared by every row of a run. ``checkpoint`` is the label (the file's name; ``run`` makes
    it the shortest path suffix that tells its checkpoints apart), ``checkpoint_path`` the file as loaded, so
    that rows of two files of one name are never taken for one input."""
    info = getattr(model, "checkpoint", None)
    return {"checkpoint": info.name if info else type(model).__name__,
            "checkpoint_path": str(info.path) if info and getattr(info, "path", None) else float("nan"),
            "pretrain_mask_ratio": info.pretrain_mask_ratio if info and info.pretrain_mask_ratio is not None
            else float("nan"),
            "mask_ratio": float(mask_ratio), "seed": int(seed), "shared_mask": bool(shared_mask),
            "img_size": model.config.img_size, "dtype": dtype or "fp32"}


def _is_model(value) -> bool:
    import torch

    return isinstance(value, torch.nn.Module) and hasattr(value, "config") and hasattr(value, "forward_encoder")


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes)


def _model(value, load_kwargs: dict | None = None, what: str = "model"):
    """A loaded model, or a checkpoint path or name loaded with ``load_kwargs``; anything else (a number, None,
    an option ``load`` does not take, or load options for a model already loaded) is a ``MaeprobeError``."""
    from .validate import short

    load_kwargs = load_kwargs or {}
    if _is_path(value):
        import inspect

        from .checkpoints import load

        allowed = set(inspect.signature(load).parameters) - {"path"}
        unknown = sorted(set(load_kwargs) - allowed)
        if unknown:
            raise MaeprobeError(f"{', '.join(unknown)}: not an option of maeprobe.load; expected "
                                f"{', '.join(sorted(allowed))}")
        return load(value, **load_kwargs)
    if not _is_model(value):
        raise MaeprobeError(f"{what}: expected a loaded model (maeprobe.load) or a checkpoint path, got "
                            f"{type(value).__name__} {short(value, 60)}")
    if load_kwargs:
        raise MaeprobeError(f"{', '.join(sorted(load_kwargs))}: load options apply only when {what} is a checkpoint "
                            "path; this one is already loaded")
    return value


def _layers(value, what: str = "layers"):
    """None (all), else a non-empty list of whole numbers (negative ones count from the end)."""
    from .validate import integer, short

    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise MaeprobeError(f"{what}: expected a list of 0-based indices (e.g. [0, 5]) or None, got {short(value, 60)}")
    out = [integer(what, v) for v in value]
    if not out:
        raise MaeprobeError(f"{what}: empty; give at least one index, or None for all")
    return out


def _flag(what: str, value) -> bool:
    """A true/false option: ``True`` or ``False`` (numpy's too), never text such as ``"no"``, which is truthy."""
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        from .validate import short

        raise MaeprobeError(f"{what}: expected True or False, got {short(value, 60)}")
    return bool(value)


def _images(images):
    """What ``images`` may be (a folder, None, a list of PIL images, an ImageDataset, an [N, 3, H, W] tensor), a
    tensor of finite numbers only (NaN pixels would make every metric NaN or an arbitrary number)."""
    import torch

    from .data import ImageDataset
    from .validate import short

    if images is None or _is_path(images) or isinstance(images, ImageDataset):
        return images
    if isinstance(images, torch.Tensor):
        if not torch.is_floating_point(images) or not bool(torch.isfinite(images).all()):
            raise MaeprobeError("images: expected a normalised float tensor of finite numbers (it holds NaN or "
                                "infinite values, or is not floating point)")
        return images
    if isinstance(images, (list, tuple)):
        from PIL import Image

        bad = [img for img in images if not isinstance(img, Image.Image)]
        if bad:
            raise MaeprobeError(f"images: a list must hold PIL images (for files give their folder), got "
                                f"{type(bad[0]).__name__} {short(bad[0], 60)}")
        return images
    raise MaeprobeError(f"images: expected a folder, None (the built-in photos), a list of PIL images or an [N, 3, "
                        f"H, W] tensor, got {type(images).__name__} {short(images, 60)}")


def _tau(value):
    """tau of Eq. 8: None (continuous affinities) or a finite cosine threshold in [-1, 1]. NaN would binarise
    every affinity to eps (W > NaN is false) and report S = 1."""
    from .validate import real

    return real("tau", value, -1.0, 1.0, allow_none=True)


def attention_distance(model, images=None, *, layers=None, module: str = "encoder", mask_ratio: float = 0.0,
                       seed: int = 0, shared_mask: bool = True, units: str = "px", renormalize: bool = False,
                       bootstrap: int = BOOTSTRAP, batch_size: int = 16, device: str | None = None,
                       dtype: str | None = None, progress: bool = False, num_workers: int | None = None,
                       block_queries: int | None = None, resample_by="image", **load_kwargs) -> pd.DataFrame:
    """Mean attention distance per (layer, head).

    Args:
        model: a loaded model or a checkpoint path (``load_kwargs`` such as num_heads go to ``load``).
        images: folder, None (built-in photos), list of PIL images, or a normalised tensor [N, 3, H, W].
        layers: 0-based layers (None: all).
        module: ``'encoder'`` or ``'decoder'``.
        mask_ratio, seed, shared_mask: the seeded mask; visible tokens keep their grid positions.
        units: ``'px'`` (default) or ``'patches'``.
        renormalize: divide each query row by its attention mass on patch keys.
        bootstrap: number of bootstrap replicates for ``ci_low``/``ci_high`` (default 200, as the CLI; 0: none).
            Replicates resample independent units (``resample_by``), never copies of one photo as if independent.
        batch_size, device, dtype, progress: how to run (dtype ``'bf16'`` for autocast).
        num_workers: DataLoader processes decoding a folder of images (None: on CUDA CPU cores - 1, at most 8;
            on CPU 0, i.e. in this process). Results do not depend on it.
        block_queries: compute the statistics from q and k in blocks of this many query rows, no N x N map
            kept (None: ``probe.DEFAULT_BLOCK_QUERIES``); 0: full [B, H, N, N] maps.
        resample_by: what the intervals resample: ``'image'`` (each image or file; the built-in stereo pair is
            one photo), ``'folder'`` (each image's parent folder is one unit), or one label per image (e.g. the
            photo each crop was cut from). Rows say how many units they rest on (``n_units``).

    Returns:
        DataFrame with one row per (layer, head): metric, module, layer, head, value, n_images, std,
        ci_low, ci_high and the run's settings.
    """
    layers, images = _layers(layers), _images(images)
    renormalize, shared_mask = _flag("renormalize", renormalize), _flag("shared_mask", shared_mask)
    model = _model(model, load_kwargs)
    reducer = AttentionDistance(model, module=module, layers=layers, units=units, renormalize=renormalize,
                                bootstrap=bootstrap, bootstrap_seed=seed)
    return _probe(model, [reducer], images, mask_ratio=mask_ratio, seed=seed, shared_mask=shared_mask,
                  batch_size=batch_size, device=device, dtype=dtype, progress=progress, num_workers=num_workers,
                  block_queries=block_queries, resample_by=resample_by)


def attention_entropy(model, images=None, *, layers=None, module: str = "encoder", patch_keys_only: bool = False,
                      mask_ratio: float = 0.0, seed: int = 0, shared_mask: bool = True, bootstrap: int = BOOTSTRAP,
                      batch_size: int = 16, device: str | None = None, dtype: str | None = None,
                      progress: bool = False, num_workers: int | None = None, block_queries: int | None = None,
                      resample_by="image", **load_kwargs) -> pd.DataFrame:
    """Mean attention entropy (nats) per (layer, head): each patch query's row entropy -sum_j a_ij ln a_ij,
    averaged over patch queries and images. ``patch_keys_only`` renormalises the rows over patch keys first.
    ``uniform_level`` is ln(number of keys), the value of uniform attention. Other arguments as
    ``attention_distance``."""
    layers, images = _layers(layers), _images(images)
    patch_keys_only, shared_mask = _flag("patch_keys_only", patch_keys_only), _flag("shared_mask", shared_mask)
    model = _model(model, load_kwargs)
    reducer = AttentionEntropy(model, module=module, layers=layers, patch_keys_only=patch_keys_only,
                               bootstrap=bootstrap, bootstrap_seed=seed)
    return _probe(model, [reducer], images, mask_ratio=mask_ratio, seed=seed, shared_mask=shared_mask,
                  batch_size=batch_size, device=device, dtype=dtype, progress=progress, num_workers=num_workers,
                  block_queries=block_queries, resample_by=resample_by)


def _probe(model, reducers, images, *, mask_ratio, seed, shared_mask, batch_size, device, dtype, progress,
           num_workers=None, block_queries=None, resample_by="image"):
    run_probe(model, reducers, images, mask_ratio=mask_ratio, seed=seed, shared_mask=shared_mask,
              batch_size=batch_size, device=device, dtype=dtype, progress=progress, num_workers=num_workers,
              block_queries=block_queries, resample_by=resample_by)
    return to_frame(reducers, run_context(model, mask_ratio=mask_ratio, seed=seed, shared_mask=shared_mask,
                                          dtype=dtype))


def decoder_attention_similarity(model, images=None, *, layers=None, per_head: bool = False,
                                 include_cls_key: bool = False, mask_ratio: float = 0.75, seed: int = 0,
                                 bootstrap: int = BOOTSTRAP, groups: int = 16, batch_size: int = 16,
                                 device: str | None = None, dtype: str | None = None, progress: bool = False,
                                 num_workers: int | None = None, block_queries: int | None = None,
                                 resample_by="image", **load_kwargs) -> pd.DataFrame:
    """LC-MAE Eq. 7: mean pairwise cosine of the masked queries' decoder attention across images.

    All images share one seeded mask. A_{l,i} holds the masked queries' attention over the n patch keys
    (Eq. 7: k x h x n); ``include_cls_key=True`` adds the CLS key column. ``per_head`` adds one row per head.
    ``bootstrap`` replicates resample ``groups`` fixed image groups for ``ci_low``/``ci_high``. Other
    arguments as ``attention_distance``.
    """
    layers, images = _layers(layers), _images(images)
    per_head, include_cls_key = _flag("per_head", per_head), _flag("include_cls_key", include_cls_key)
    model = _model(model, load_kwargs)
    reducer = DecoderAttentionSimilarity(model, layers=layers, per_head=per_head, include_cls_key=include_cls_key,
                                         bootstrap=bootstrap,
                                         bootstrap_seed=seed, groups=groups)
    return _probe(model, [reducer], images, mask_ratio=mask_ratio, seed=seed, shared_mask=True,
                  batch_size=batch_size, device=device, dtype=dtype, progress=progress,
                  num_workers=num_workers, block_queries=block_queries, resample_by=resample_by)


def decoder_semantic_similarity(model, reference, images=None, *, layers=None, ref_features: str = "keys",
                                decoder_features: str | None = None, tau: float | None = 0.15, eps: float = 1e-5,
                                mask_ratio: float = 0.75, seed: int = 0, bootstrap: int = BOOTSTRAP, batch_size: int = 16, device: str | None = None,
                                dtype: str | None = None, progress: bool = False, num_workers: int | None = None,
                                ref_num_heads: int | None = None, center: bool = False,
                                tau_quantile: float | None = None, resample_by="image", **load_kwargs) -> pd.DataFrame:
    """LC-MAE Eq. 8: similarity of each decoder layer's patch affinities to a reference model's.

    Args:
        model: MAE with a decoder (model or checkpoint path).
        reference: a loaded model, a checkpoint path, or ``'dino'`` (timm's vit_base_patch16_224.dino from
            the local cache or ``$MAEPROBE_DINO``).
        ref_features: ``'keys'`` (last block's attention keys, CutLER's MaskCut) or ``'tokens'`` (last block
            output) of the reference.
        decoder_features: the same choice for each decoder layer (None: as ``ref_features``).
        tau, eps: binarise affinities as CutLER's MaskCut does (W > tau -> 1, else eps; default 0.15, CutLER's
            README/demo value (``maskcut.py``'s own default is 0.2), and 1e-5; eps in [0, 1)).
            None: the continuous cosine matrix.
        center: subtract each image's mean feature before the cosines (for references whose keys share a
            large common component, e.g. DINOv2; off = the paper's setting).
        tau_quantile: tau per image as this quantile of its cosines (replaces ``tau``; off = the paper's).
        Rows also carry ``w_density`` / ``ref_w_density`` (fraction of W above tau) and ``w_flag``
        ('saturated' above 0.95, 'empty' below 0.05): a saturated W makes S measure only a density.
        Other arguments as ``attention_distance``.
    """
    layers, images, tau, center = _layers(layers), _images(images), _tau(tau), _flag("center", center)
    model = _model(model, load_kwargs)
    reference = load_reference(reference, num_heads=ref_num_heads)
    reducer = DecoderSemanticSimilarity(model, reference, layers=layers, ref_features=ref_features,
                                        decoder_features=decoder_features, tau=tau, center=center,
                                        tau_quantile=tau_quantile, eps=eps, bootstrap=bootstrap, bootstrap_seed=seed)
    return _probe(model, [reducer], images, mask_ratio=mask_ratio, seed=seed, shared_mask=True,
                  batch_size=batch_size, device=device, dtype=dtype, progress=progress,
                  num_workers=num_workers, resample_by=resample_by)


def feature_spectrum(model, images=None, *, layers=None, mask_ratio: float = 0.0, seed: int = 0, bootstrap: int = BOOTSTRAP,
                     groups: int = 16, batch_size: int = 16, device: str | None = None, dtype: str | None = None,
                     progress: bool = False, num_workers: int | None = None, resample_by="image", **load_kwargs) -> pd.DataFrame:
    """U-MAE feature-collapse spectrum: singular values (``feature_spectrum`` rows, one per component) and
    effective rank (``effective_rank`` rows) of CLS and mean-pooled patch features of encoder layers
    (default: the last block)."""
    layers, images = _layers(layers), _images(images)
    model = _model(model, load_kwargs)
    reducer = FeatureSpectrum(model, layers=layers, bootstrap=bootstrap, bootstrap_seed=seed, groups=groups)
    return _probe(model, [reducer], images, mask_ratio=mask_ratio, seed=seed, shared_mask=True,
                  batch_size=batch_size, device=device, dtype=dtype, progress=progress,
                  num_workers=num_workers, resample_by=resample_by)


DINO_REFERENCES = (  # what --ref dino looks for, in order: (hub repository or release file, label)
    ("timm/vit_base_patch16_224.dino", "DINO ViT-B/16 (timm)"),
    ("dino_vitbase16_pretrain.pth", "DINO ViT-B/16 (official)"),
    ("facebook/dinov2-base", "DINOv2 ViT-B/14 (HuggingFace)"),
    ("timm/vit_base_patch14_dinov2.lvd142m", "DINOv2 ViT-B/14 (timm)"),
    ("dinov2_vitb14_pretrain.pth", "DINOv2 ViT-B/14 (official)"),
    ("dinov2_vitb14_reg4_pretrain.pth", "DINOv2 ViT-B/14 with registers (official)"),
)


def dino_candidates() -> list[Path]:
    """Local copies that ``--ref dino`` accepts, in order: $MAEPROBE_DINO, then DINO ViT-B/16 and DINOv2 ViT-B/14
    in the HuggingFace hub cache (timm's and transformers' repositories) and the torch hub cache (official
    release files). Paper §4.1 uses DINO; DINOv2 is the common modern reference."""
    from .checkpoints.hub import hf_cache, torch_cache

    paths = []
    if os.environ.get("MAEPROBE_DINO"):
        paths.append(Path(os.environ["MAEPROBE_DINO"]).expanduser())
    for source, _ in DINO_REFERENCES:
        if source.endswith(".pth"):
            paths.append(torch_cache() / source)
            continue
        for snapshot in sorted((hf_cache() / ("models--" + source.replace("/", "--")) / "snapshots").glob("*")):
            if source.startswith("timm/"):  # timm repositories: the weights file
                paths += [snapshot / "model.safetensors", snapshot / "pytorch_model.bin"]
            elif (snapshot / "config.json").is_file():  # transformers repositories: the folder
                paths.append(snapshot)
    return paths


def load_reference(reference, *, num_heads: int | None = None):
    """A reference model: a loaded model, a checkpoint path or model name, or 'dino' (DINO or DINOv2 from the
    local caches, never downloaded)."""
    from .checkpoints import load

    if not _is_path(reference):
        return _model(reference, what="reference")
    if str(reference).lower() == "dino":
        from .checkpoints.originals import release_mismatch
        from .validate import one_line

        given = os.environ.get("MAEPROBE_DINO")
        if given and not (Path(given).expanduser().is_file() or Path(given).expanduser().is_dir()):
            raise MaeprobeError(f"MAEPROBE_DINO={one_line(given, 300)}: not a checkpoint file or folder")
        for path in dino_candidates():
            if path.is_dir() or path.is_file():
                model = load(path, num_heads=num_heads)
                why = release_mismatch(path.name, model) if path.is_file() else None
                if why is not None and not why.startswith("maeprobe knows no contents"):
                    raise MaeprobeError(f"--ref dino: {one_line(path, 300)} is named like the DINO release but its "
                                        f"contents do not match ({why}); set MAEPROBE_DINO to a genuine copy")
                return model
        raise MaeprobeError("--ref dino: no local copy of DINO or DINOv2 found (maeprobe never downloads it for "
                            "--ref dino); looked for " + ", ".join(s for s, _ in DINO_REFERENCES) +
                            " in the HuggingFace and torch hub caches; or set MAEPROBE_DINO=/path/to/checkpoint")
    return load(reference, num_heads=num_heads)


DEFAULT_MASK_RATIOS = {"attn-distance": 0.0, "attn-entropy": 0.0, "spectrum": 0.0, "decoder-attn-sim": 0.75, "decoder-semantics": 0.75}


def _mask_ratios(metrics, mask_ratio, mask_ratios) -> dict[str, float]:
    """Each metric's probe mask ratio: its default, or ``mask_ratio`` for all, then ``mask_ratios`` per metric."""
    from collections.abc import Mapping

    from .validate import mask_ratio as checked, short

    ratios = {m: (DEFAULT_MASK_RATIOS[m] if mask_ratio is None else checked(mask_ratio, None, "mask_ratio"))
              for m in metrics}
    if mask_ratios is not None and not isinstance(mask_ratios, Mapping):
        raise MaeprobeError(f"mask_ratios: expected a dict such as {{'attn-distance': 0.75}}, got "
                            f"{short(mask_ratios, 60)}")
    for metric, ratio in (mask_ratios or {}).items():
        if metric not in ratios:
            raise MaeprobeError(f"mask ratio given for {short(metric, 60)}, which is not among the metrics "
                                f"({', '.join(metrics)})")
        ratios[metric] = checked(ratio, None, f"mask ratio of {metric}")
    return ratios


def _metric_names(metrics) -> list[str]:
    """Metric names: a list, or one comma-separated string; each known, at least one."""
    from .validate import short

    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if metrics is None or isinstance(metrics, bytes) or not hasattr(metrics, "__iter__"):
        raise MaeprobeError(f"metrics: expected a list of metric names ({', '.join(METRICS)}), got "
                            f"{short(metrics, 60)}")
    metrics = list(metrics)
    bad = [m for m in metrics if not isinstance(m, str)]
    if bad:
        raise MaeprobeError(f"metrics: {short(bad[0], 40)} is not a metric name; choose from {', '.join(METRICS)}")
    if not metrics:
        raise MaeprobeError(f"metrics: none given; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(metrics))


def _checkpoint_list(checkpoints) -> list:
    """``run``'s checkpoints: one path, name or model, or a non-empty list of them, none given twice (the same
    object, or the same file under two names: its rows would repeat under two labels)."""
    from .validate import short

    if _is_path(checkpoints) or _is_model(checkpoints):
        checkpoints = [checkpoints]
    if checkpoints is None or isinstance(checkpoints, bytes) or not hasattr(checkpoints, "__iter__"):
        raise MaeprobeError(f"checkpoints: expected a checkpoint path or model, or a list of them, got "
                            f"{short(checkpoints, 60)}")
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise MaeprobeError("checkpoints: none given; expected at least one checkpoint path or model")
    seen: dict = {}
    for i, checkpoint in enumerate(checkpoints):
        if not (_is_path(checkpoint) or _is_model(checkpoint)):
            raise MaeprobeError(f"checkpoint {i + 1}: expected a checkpoint path or a loaded model, got "
                                f"{type(checkpoint).__name__} {short(checkpoint, 60)}")
        if _is_path(checkpoint):
            try:
                st = os.stat(checkpoint)
                key = ("file", st.st_dev, st.st_ino)
            except OSError:  # a model name, or missing (load says so)
                key = ("name", os.fspath(checkpoint))
        else:
            key = ("object", id(checkpoint))
        if key in seen:
            raise MaeprobeError(f"checkpoint {_shown(checkpoint)} is given twice (as checkpoints {seen[key] + 1} and "
                                f"{i + 1}); name each checkpoint once")
        seen[key] = i
    return checkpoints


def _weights_digest(model) -> tuple:
    """Content hash of a model's parameters and buffers (names, dtypes, shapes, bytes): equal for a byte copy of a
    checkpoint and for the same weights saved in another format."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return ("weights", digest.hexdigest())


def _shown(checkpoint) -> str:
    from .validate import one_line

    info = getattr(checkpoint, "checkpoint", None)
    return one_line(checkpoint if _is_path(checkpoint) else (info.path if info else type(checkpoint).__name__), 120)


def _labels(models: list) -> list[str]:
    """One label per checkpoint of ``run``: the shortest suffix of its path that no other checkpoint's path ends
    with (``a/checkpoint-last.pth``, ``b/checkpoint-last.pth``; a lone checkpoint keeps its file name); models
    without a file are named by their class (numbered when several)."""
    from .results import short_names

    paths = []
    for model in models:
        info = getattr(model, "checkpoint", None)
        paths.append(os.path.abspath(info.path) if info and getattr(info, "path", None) else type(model).__name__)
    return short_names(paths)


def run(checkpoints, images=None, *, metrics=("attn-distance",), reference=None, layers=None,
        decoder_layers=None, mask_ratio: float | None = None, mask_ratios: dict | None = None, seed: int = 0,
        bootstrap: int = BOOTSTRAP, per_head: bool = False, include_cls_key: bool = False, ref_features: str = "keys",
        decoder_features: str | None = None, tau: float | None = 0.15, units: str = "px", batch_size: int = 16,
        device: str | None = None, dtype: str | None = None, progress: bool = False,
        num_workers: int | None = None, num_heads=None,
        decoder_num_heads=None, ref_num_heads=None, img_size: int | None = None,
        block_queries: int | None = None, resample_by="image") -> pd.DataFrame:
    """Several metrics for each checkpoint, one table for all; metrics with the same mask share one hooked pass.

    Each metric keeps its own probe mask (one seeded mask shared by all images): by default attention
    distance and the spectrum see the unmasked image (as Fig. 5/6 compare MAE with DINO and DeiT) and the
    decoder metrics a 0.75 mask (Section 4.1). ``mask_ratio`` sets one ratio for every metric; ``mask_ratios``
    (e.g. ``{"attn-distance": 0.75}``) sets single metrics. Metrics whose ratios agree run in one pass per
    batch; the ``mask_ratio`` column of every row says which mask it was measured under. Metrics:
    ``attn-distance``, ``attn-entropy``, ``decoder-attn-sim``, ``decoder-semantics`` (needs ``reference``),
    ``spectrum``.
    Each checkpoint keeps its own rows: ``checkpoint`` is the shortest path suffix that tells the checkpoints
    apart (``a/checkpoint-last.pth`` and ``b/checkpoint-last.pth``), ``checkpoint_path`` the file; the same
    checkpoint given twice is refused.
    Other arguments as the single-metric functions.
    """
    metrics = _metric_names(metrics)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise MaeprobeError(f"unknown metrics {', '.join(sorted(unknown))}; choose from {', '.join(METRICS)}")
    if "decoder-semantics" in metrics and reference is None:
        raise MaeprobeError("decoder-semantics needs a reference model (--ref CKPT or --ref dino)")
    from .checkpoints import load

    ratios = _mask_ratios(metrics, mask_ratio, mask_ratios)
    checkpoints = _checkpoint_list(checkpoints)
    tau, layers, decoder_layers = _tau(tau), _layers(layers), _layers(decoder_layers, "decoder_layers")
    per_head, include_cls_key, images = _flag("per_head", per_head), _flag("include_cls_key", include_cls_key), \
        _images(images)
    ref_model = load_reference(reference, num_heads=ref_num_heads) if "decoder-semantics" in metrics else None
    tables, models, loaded = [], [], {}
    for index, checkpoint in enumerate(checkpoints):
        model = load(checkpoint, num_heads=num_heads, decoder_num_heads=decoder_num_heads, img_size=img_size) \
            if _is_path(checkpoint) else checkpoint
        if _is_path(checkpoint):  # a name and the file it resolves to are one checkpoint
            real = os.path.realpath(model.checkpoint.path)
            if real in loaded:
                raise MaeprobeError(f"checkpoint {_shown(checkpoint)} is given twice (as checkpoints "
                                    f"{loaded[real] + 1} and {index + 1}); name each checkpoint once")
            loaded[real] = index
        if len(checkpoints) > 1:  # a byte copy, or the same weights in another format, is the same checkpoint
            digest = _weights_digest(model)
            if digest in loaded:
                raise MaeprobeError(f"checkpoint {_shown(checkpoint)} holds the same weights as checkpoint "
                                    f"{loaded[digest] + 1} (a copy?); its rows would repeat under two labels: name "
                                    "each checkpoint once")
            loaded[digest] = index
        models.append(model)
        first = len(tables)
        needs_decoder = {"decoder-attn-sim", "decoder-semantics"} & set(metrics)
        if needs_decoder and not model.has_decoder:
            raise MaeprobeError(f"{getattr(model, 'checkpoint', None) and model.checkpoint.path}: "
                                f"{', '.join(sorted(needs_decoder))} need a checkpoint with a decoder")
        for ratio in dict.fromkeys(ratios[m] for m in metrics):  # one pass per distinct mask, in metric order
            group = [m for m in metrics if ratios[m] == ratio]
            reducers = []
            if "attn-distance" in group:
                reducers.append(AttentionDistance(model, layers=layers, units=units, bootstrap=bootstrap,
                                                  bootstrap_seed=seed))
            if "attn-entropy" in group:
                reducers.append(AttentionEntropy(model, layers=layers, bootstrap=bootstrap, bootstrap_seed=seed))
            if "decoder-attn-sim" in group:
                reducers.append(DecoderAttentionSimilarity(model, layers=decoder_layers, per_head=per_head,
                                                           include_cls_key=include_cls_key, bootstrap=bootstrap,
                                                           bootstrap_seed=seed))
            if "decoder-semantics" in group:
                reducers.append(DecoderSemanticSimilarity(model, ref_model, layers=decoder_layers,
                                                          ref_features=ref_features, decoder_features=decoder_features,
                                                          tau=tau, bootstrap=bootstrap, bootstrap_seed=seed))
            if "spectrum" in group:
                reducers.append(FeatureSpectrum(model, bootstrap=bootstrap, bootstrap_seed=seed))
            tables.append(_probe(model, reducers, images, mask_ratio=ratio, seed=seed, shared_mask=True,
                                 batch_size=batch_size, device=device, dtype=dtype, progress=progress,
                                 num_workers=num_workers, block_queries=block_queries, resample_by=resample_by))
        for table in tables[first:]:
            table["_model_index"] = index
    table = pd.concat(tables, ignore_index=True)
    labels = _labels(models)  # every checkpoint its own label: two files of one name never become one row
    table["checkpoint"] = [labels[i] for i in table.pop("_model_index")]
    return table


def render_attention(model, image, out, *, layers=None, queries=None, mask_ratio: float = 0.75, seed: int = 0,
                     encoder: bool = False, device: str | None = None, **load_kwargs) -> list[Path]:
    """Render attention maps of one image (PNG and PDF); returns the paths.

    Decoder (default; LC-MAE Fig. 4 / B.1): ``layers`` 0-based (default 0, 1, 2, 4, 7 when present, the
    paper's layers 1, 2, 3, 5, 8), ``queries`` patch indices (row-major; default the two masked patches
    nearest the centre), under the shared seeded mask. ``encoder=True``: DINO-style per-head CLS maps of
    ``layers`` (default the last), unmasked.
    """
    import numpy as np
    import torch

    from .capture import CaptureRequest, capture, resolve_layers
    from .data import fit_to_size, make_transform, open_image
    from .masking import MaskInfo, mask_noise
    from .plots import default_queries, render_decoder_attention, render_encoder_attention
    from .probe import default_device

    from . import validate

    from PIL import Image

    from .io import check_output_file
    from .plots.render import check_panels
    from .results import output_path

    out = output_path(out, "out", kind="stem")  # before anything is loaded or computed
    for suffix in (".png", ".pdf"):
        check_output_file(out.with_suffix(suffix))
    device = validate.device(device) or torch.device(default_device())
    validate.integer("--seed", seed, 0, 2**63 - 1)
    validate.mask_ratio(mask_ratio, None, "--mask-ratio")  # before anything is loaded; the grid is checked below
    encoder = _flag("encoder", encoder)
    layers = _layers(layers)
    if queries is not None:
        if isinstance(queries, (str, bytes)) or not hasattr(queries, "__iter__"):
            raise MaeprobeError(f"queries: expected a list of patch indices (e.g. [60, 75]) or None, got "
                                f"{validate.short(queries, 60)}")
        queries = [validate.integer("queries", q, 0) for q in queries]
        if not queries:
            raise MaeprobeError("queries: empty; give at least one patch index, or None for the default two")
    if _is_path(image):
        image = open_image(image)
    elif not isinstance(image, Image.Image):
        raise MaeprobeError(f"image: expected an image file or a PIL image, got {type(image).__name__} "
                            f"{validate.short(image, 60)}")
    model = _model(model, load_kwargs)
    from .limits import check_attention

    check_attention(model, "encoder" if encoder else "decoder")
    cfg = model.config
    validate.mask_ratio(mask_ratio, cfg.num_patches, "--mask-ratio")
    if queries is not None:
        bad = [q for q in queries if not 0 <= int(q) < cfg.num_patches]
        if bad:
            raise MaeprobeError(f"--query {bad[0]}: expected patch indices 0 ... {cfg.num_patches - 1} "
                                f"({cfg.grid_size}x{cfg.grid_size} grid, row-major)")
    if encoder:  # maps: layers x (image + one per head), counted before the model runs
        shown = resolve_layers(model, "encoder", layers if layers is not None else [-1])
        check_panels(len(shown), cfg.num_heads + 1)
    else:
        if not model.has_decoder:
            raise MaeprobeError("this checkpoint has no decoder; use --encoder for encoder attention maps")
        shown = resolve_layers(model, "decoder", layers if layers is not None else
                               [layer for layer in (0, 1, 2, 4, 7) if layer < cfg.decoder_depth])
        check_panels(len(queries) if queries is not None else 2, 2 + len(shown))
    model = model.to(device).eval()
    info = getattr(model, "checkpoint", None)
    name = Path(info.path).name if info is not None and getattr(info, "path", None) else type(model).__name__
    display = fit_to_size(image, cfg.img_size)
    from .checkpoints import normalization

    mean, std = normalization(model)
    x = make_transform(cfg.img_size, mean, std)(display).unsqueeze(0).to(device)
    pixels = np.asarray(display)
    if encoder:
        layers = resolve_layers(model, "encoder", layers if layers is not None else [-1])
        with capture(model, CaptureRequest.of(attention={"encoder": layers})) as cache, torch.inference_mode():
            model.forward_encoder(x, 0.0)
            return render_encoder_attention(pixels, cache, layers=layers, grid=cfg.grid_size, out=out, title=name)
    if not model.has_decoder:
        raise MaeprobeError("this checkpoint has no decoder; use --encoder for encoder attention maps")
    if layers is None:
        layers = [layer for layer in (0, 1, 2, 4, 7) if layer < cfg.decoder_depth]
    layers = resolve_layers(model, "decoder", layers)
    noise = mask_noise(cfg.num_patches, seed)
    with capture(model, CaptureRequest.of(attention={"decoder": layers})) as cache, torch.inference_mode():
        latent, mask, ids_restore = model.forward_encoder(x, mask_ratio, noise.to(device))
        model.forward_decoder(latent, ids_restore)
        cache.mask = MaskInfo.from_noise(noise, mask_ratio, True)
        queries = list(queries) if queries else default_queries(cache.mask.mask[0], cfg.grid_size)
        bad = [q for q in queries if not 0 <= int(q) < cfg.num_patches]
        if bad:
            raise MaeprobeError(f"query patches {bad} do not exist (0-{cfg.num_patches - 1}, row-major)")
        return render_decoder_attention(pixels, cache, layers=layers, queries=queries, grid=cfg.grid_size,
                                        num_prefix=model.num_prefix_tokens, out=out,
                                        title=f"{name}, mask ratio {mask_ratio:g} (seed {seed})")
