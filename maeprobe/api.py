"""The notebook-facing API: one function per metric, each returning a tidy DataFrame."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .errors import MaeprobeError
from .metrics import registry
from .probe import run_probe
from .results import to_frame

# Bootstrap replicates for ci_low/ci_high by default, as the CLI (0 turns intervals off).
BOOTSTRAP = 200

METRICS = tuple(registry.metrics())  # every registered metric (maeprobe/metrics/registry.py)
DEFAULT_MASK_RATIOS = {name: spec.mask_ratio for name, spec in registry.metrics().items()}


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
    return registry.check_flag(what, value)


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
    """tau of Eq. 8: None (continuous affinities) or a finite cosine threshold in [-1, 1]."""
    from .metrics.semantic_similarity import check_tau

    return check_tau("tau", value)


# The probe settings every metric takes (the metric's own options come from its spec), with the API's defaults.
PROBE_DEFAULTS = {"layers": None, "mask_ratio": None, "seed": 0, "shared_mask": True, "bootstrap": BOOTSTRAP,
                  "batch_size": 16, "device": None, "dtype": None, "progress": False, "num_workers": None,
                  "block_queries": None, "resample_by": "image"}

PROBE_HELP = """
        model: a loaded model or a checkpoint path (``load_kwargs`` such as num_heads go to ``maeprobe.load``).
        images: folder, None (built-in photos), list of PIL images, or a normalised tensor [N, 3, H, W].
        layers: 0-based layers (None: the metric's default, see its ``--layers`` help).
        mask_ratio, seed, shared_mask: the seeded probe mask (None: the metric's default ratio); visible tokens
            keep their grid positions; ``shared_mask=False`` (metrics that allow it) draws one mask per image.
        bootstrap: bootstrap replicates for ``ci_low``/``ci_high`` (default 200, as the CLI; 0: none). Replicates
            resample independent units (``resample_by``), never copies of one photo as if independent.
        batch_size, device, dtype, progress: how to run (dtype ``'bf16'`` for autocast).
        num_workers: DataLoader processes decoding a folder of images (None: on CUDA CPU cores - 1, at most 8;
            on CPU 0, i.e. in this process). Results do not depend on it.
        block_queries: compute attention statistics from q and k in blocks of this many query rows, no N x N map
            kept (None: ``probe.DEFAULT_BLOCK_QUERIES``); 0: full [B, H, N, N] maps.
        resample_by: what the intervals resample: ``'image'`` (each image or file; the built-in stereo pair is
            one photo), ``'folder'`` (each image's parent folder is one unit), or one label per image (e.g. the
            photo each crop was cut from). Rows say how many units they rest on (``n_units``)."""


def _options(spec, given: dict) -> tuple[dict, dict]:
    """``given`` split into the metric's options (its defaults filled in, each checked) and the rest (load
    options for ``maeprobe.load``)."""
    fields = {f.name: f for f in spec.fields()}
    options = {name: field.default for name, field in fields.items()}
    rest = {}
    for name, value in given.items():
        if name in fields:
            meta = fields[name].metadata
            if meta.get("choices") and value is not fields[name].default and \
                    (not isinstance(value, str) or value not in meta["choices"]):  # None where None is the default
                from .validate import short  # a declared choice: text among them (an array is not, nor its truth)

                raise MaeprobeError(f"{name}: expected one of {', '.join(meta['choices'])}, got {short(value, 40)}")
            check = meta.get("check")
            options[name] = check(name, value) if check else value
        else:
            rest[name] = value
    return options, rest


def _reducer(spec, model, reference, options: dict, *, layers, bootstrap: int, seed: int):
    """The metric's streaming reducer for ``model`` (and ``reference``)."""
    args = (model, reference) if spec.needs_reference else (model,)
    return spec.reducer(*args, layers=layers, bootstrap=bootstrap, bootstrap_seed=seed, **options)


def _warn(spec, table) -> None:
    """The metric's own warning about its rows (e.g. a saturated W of Eq. 8), for notebooks and the CLI alike."""
    if spec.warn is not None and len(table):
        import warnings

        message = spec.warn(table)
        if message:
            warnings.warn(message, stacklevel=3)


def measure(model, metric: str, images=None, *, reference=None, ref_num_heads: int | None = None, layers=None,
            mask_ratio: float | None = None, seed: int = 0, shared_mask: bool = True, bootstrap: int = BOOTSTRAP,
            batch_size: int = 16, device: str | None = None, dtype: str | None = None, progress: bool = False,
            num_workers: int | None = None, block_queries: int | None = None, resample_by="image",
            **options) -> pd.DataFrame:
    """Any registered metric (``maeprobe.metrics.registry``) of one model, as a tidy table.

    ``metric`` is its name (``maeprobe.api.METRICS``, e.g. ``'attn-distance'``); ``options`` are the metric's own
    options (see its function, e.g. ``help(maeprobe.attention_distance)``), anything else goes to ``maeprobe.load``.
    Metrics that compare with a reference model take ``reference`` (a model, a checkpoint path or ``'dino'``) and
    ``ref_num_heads``.
    Args:""" + PROBE_HELP + """

    Returns:
        DataFrame with one row per (layer, head) (or per the metric's unit): metric, module, layer, head, value,
        n_images, std, ci_low, ci_high, the metric's settings and the run's settings.
    """
    spec = registry.spec(metric)
    layers, images = _layers(layers), _images(images)
    options, load_kwargs = _options(spec, options)
    if spec.per_image_mask:
        shared_mask = _flag("shared_mask", shared_mask)
    elif shared_mask is not True:
        raise MaeprobeError(f"shared_mask: {spec.name} compares images under one shared mask; leave it True")
    if block_queries is not None and not spec.block_queries:
        raise MaeprobeError(f"block_queries: {spec.name} does not read attention maps; leave it None")
    if spec.needs_reference and reference is None and not spec.reference_optional:
        raise MaeprobeError(f"{spec.name} needs a reference model (reference: a checkpoint or 'dino')")
    model = _model(model, load_kwargs)
    reference = load_reference(reference, num_heads=ref_num_heads) \
        if spec.needs_reference and reference is not None else None  # None: an optional reference left out
    reducer = _reducer(spec, model, reference, options, layers=layers, bootstrap=bootstrap, seed=seed)
    table = _probe(model, [reducer], images, mask_ratio=spec.mask_ratio if mask_ratio is None else mask_ratio,
                   seed=seed, shared_mask=shared_mask, batch_size=batch_size, device=device, dtype=dtype,
                   progress=progress, num_workers=num_workers, block_queries=block_queries, resample_by=resample_by)
    _warn(spec, table)
    return table


def _probe(model, reducers, images, *, mask_ratio, seed, shared_mask, batch_size, device, dtype, progress,
           num_workers=None, block_queries=None, resample_by="image"):
    for reducer in reducers:  # a metric that reads more of its images than pixels (k-NN: each file's class folder)
        if hasattr(reducer, "bind_images"):
            reducer.bind_images(images)
    run_probe(model, reducers, images, mask_ratio=mask_ratio, seed=seed, shared_mask=shared_mask,
              batch_size=batch_size, device=device, dtype=dtype, progress=progress, num_workers=num_workers,
              block_queries=block_queries, resample_by=resample_by)
    return to_frame(reducers, run_context(model, mask_ratio=mask_ratio, seed=seed, shared_mask=shared_mask,
                                          dtype=dtype))


def _signature(spec):
    """The named function's signature: model[, reference], images, the probe settings, the metric's options."""
    import inspect

    P = inspect.Parameter
    params = [P("model", P.POSITIONAL_OR_KEYWORD)]
    if spec.needs_reference and not spec.reference_optional:
        params.append(P("reference", P.POSITIONAL_OR_KEYWORD))
    params.append(P("images", P.POSITIONAL_OR_KEYWORD, default=None))
    if spec.reference_optional:  # keyword only: f(model, images) never takes the images for a reference
        params.append(P("reference", P.KEYWORD_ONLY, default=None))
    params.append(P("layers", P.KEYWORD_ONLY, default=None))
    params += [P(f.name, P.KEYWORD_ONLY, default=f.default) for f in spec.fields()]
    for name, default in PROBE_DEFAULTS.items():
        if name == "layers" or (name == "shared_mask" and not spec.per_image_mask) or \
                (name == "block_queries" and not spec.block_queries):
            continue
        params.append(P(name, P.KEYWORD_ONLY, default=spec.mask_ratio if name == "mask_ratio" else default))
    if spec.needs_reference:
        params.append(P("ref_num_heads", P.KEYWORD_ONLY, default=None))
    params.append(P("load_kwargs", P.VAR_KEYWORD))
    return inspect.Signature(params)


def _named(spec):
    """``maeprobe.<function>`` of a registered metric: ``measure(model, spec.name, ...)`` with the metric's options
    as keyword arguments, its signature and docstring built from the spec (so ``help()`` shows them)."""
    signature = _signature(spec)

    def function(*args, **kwargs):
        arguments = dict(signature.bind(*args, **kwargs).arguments)
        load_kwargs = arguments.pop("load_kwargs", {})
        return measure(metric=spec.name, **arguments, **load_kwargs)

    options = "".join(f"\n        {f.name}: {f.metadata['help']} (default {f.default!r})" for f in spec.fields())
    function.__name__ = function.__qualname__ = spec.function
    function.__module__ = __name__
    function.__signature__ = signature
    function.__doc__ = (f"{spec.doc}\n\n    Args:{PROBE_HELP}{options}\n\n    Returns:\n        DataFrame with one "
                        f"row per (layer, head) or per the metric's unit, its settings and the run's settings.\n")
    return function


for _spec in registry.metrics().values():  # attention_distance, attention_entropy, ...: one per registered metric
    globals()[_spec.function] = _named(_spec)
del _spec


def report(table: pd.DataFrame) -> str:
    """The console summary of a table of one or more metrics (what the CLI prints): per checkpoint and metric, a
    header line naming the checkpoint, images and mask, then the values per layer."""
    by_column = {spec.column: spec for spec in registry.metrics().values()}
    lines = []
    for (checkpoint, metric), rows in table.groupby(["checkpoint", "metric"], sort=False):
        spec = by_column.get(metric)
        if spec is not None and spec.report is not None:  # e.g. effective_rank rows come with feature_spectrum
            lines += spec.report(rows if metric != "feature_spectrum" else
                                 table[table["checkpoint"] == checkpoint])
    return "\n".join(lines)


def run_summary(table: pd.DataFrame) -> str:
    """The console summary of a ``run`` table (what ``maeprobe run`` prints): per checkpoint, metric and module the
    per-layer means over heads (the effective rank per feature, never the mean of CLS and patch mean); rows with a
    further axis (frequency, component, reference layer: ``MetricSpec.detail_rows``) are left out of that table, and a
    metric whose every row has one (CKA, token spectra) prints its own summary."""
    specs = registry.metrics().values()
    detail = {column for spec in specs for column in spec.detail_rows}
    shown = table[~table["metric"].isin(detail)]
    per_feature = []
    if "feature" in shown and shown["feature"].notna().any():
        shown, per_feature = shown.assign(feature=shown["feature"].fillna("")), ["feature"]
    lines = []
    if not shown.empty:
        lines.append(shown.groupby(["checkpoint", "metric", "module", *per_feature, "mask_ratio", "layer"],
                                   dropna=False)["value"].mean().unstack("layer").to_string(float_format="%.3f"))
    for spec in specs:
        rows = table[table["metric"] == spec.column]
        if spec.column in spec.detail_rows and not spec.summary_rows and not rows.empty and spec.report:
            lines += ["\n".join(spec.report(part)) for _, part in rows.groupby("checkpoint", sort=False)]
    return "\n".join(lines)


def describe(model) -> list[tuple[str, str]]:
    """What ``maeprobe info`` prints about a loaded model: (what, value) pairs naming its file, family, format,
    encoder and decoder sizes, prefix tokens, head, parameter counts, mean/std and the loader's notes."""
    model = _model(model)
    cfg, info = model.config, model.checkpoint
    encoder_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("decoder", "mask_token")))
    total = sum(p.numel() for p in model.parameters())
    prefix = [name for name, present in (("cls", cfg.class_token), ("dist", cfg.dist_token)) if present]
    prefix += [f"{cfg.num_reg_tokens} registers"] if cfg.num_reg_tokens else []
    lines = [
        ("family", info.family_label),
        ("format", info.format),
        ("encoder", f"ViT width {cfg.embed_dim}, depth {cfg.depth}, {cfg.num_heads} heads, patch {cfg.patch_size}, "
                    f"input {cfg.img_size}px ({cfg.grid_size}x{cfg.grid_size} patches), mlp ratio {cfg.mlp_ratio:g}"),
        ("prefix tokens", ", ".join(prefix) or "none"),
        ("decoder", f"width {cfg.decoder_embed_dim}, depth {cfg.decoder_depth}, {cfg.decoder_num_heads} heads"
         if cfg.decoder_depth else "none (encoder only)"),
        ("head", f"{cfg.num_classes} classes" if cfg.num_classes else "none"),
        ("parameters", f"{total:,} ({encoder_params:,} encoder)"),
        ("mean / std", f"{info.mean} / {info.std}"),
    ]
    return lines + [("note", note) for note in info.notes]


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
                    raise MaeprobeError(f"reference='dino': {one_line(path, 300)} is named like the DINO release but "
                                        f"its contents do not match ({why}); set MAEPROBE_DINO to a genuine copy")
                return model
        raise MaeprobeError("reference='dino': no local copy of DINO or DINOv2 found (maeprobe never downloads it "
                            "for reference='dino'); looked for " + ", ".join(s for s, _ in DINO_REFERENCES) +
                            " in the HuggingFace and torch hub caches; or set MAEPROBE_DINO=/path/to/checkpoint")
    return load(reference, num_heads=num_heads)


def _mask_ratios(metrics, mask_ratio, mask_ratios) -> dict[str, float]:
    """Each metric's probe mask ratio: its default, or ``mask_ratio`` for all, then ``mask_ratios`` per metric."""
    from collections.abc import Mapping

    from .validate import mask_ratio as checked
    from .validate import short

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


def _run_options(metrics: list[str], options, flat: dict) -> dict[str, dict]:
    """Each metric's options for ``run``: ``flat`` options apply to every metric that has an option of that name,
    ``options`` (``{"attn-distance": {"units": "patches"}}``) to one metric; a name that no metric has is
    refused."""
    from collections.abc import Mapping

    from .validate import short

    specs = registry.metrics()
    known = {f.name for spec in specs.values() for f in spec.fields()}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise MaeprobeError(f"{', '.join(unknown)}: not an option of run or of any metric; metric options are "
                            f"{', '.join(sorted(known))}")
    if options is not None and not isinstance(options, Mapping):
        raise MaeprobeError(f"options: expected a dict such as {{'attn-distance': {{'units': 'patches'}}}}, got "
                            f"{short(options, 60)}")
    out = {}
    for name in metrics:
        spec = specs[name]
        mine = {f.name for f in spec.fields()}
        given = {k: v for k, v in flat.items() if k in mine}
        own = (options or {}).get(name, {})
        if not isinstance(own, Mapping) or set(own) - mine:
            raise MaeprobeError(f"options of {name}: expected a dict of {', '.join(sorted(mine)) or 'nothing'}, got "
                                f"{short(own, 60)}")
        checked, _ = _options(spec, {**given, **own})
        out[name] = checked
    for name in set(options or {}) - set(metrics):
        raise MaeprobeError(f"options given for {short(name, 60)}, which is not among the metrics "
                            f"({', '.join(metrics)})")
    taken = {f.name for name in metrics for f in specs[name].fields()}
    for option, value in flat.items():  # set to other than its default for none of the chosen metrics: a slip
        defaults = [f.default for spec in specs.values() for f in spec.fields() if f.name == option]
        if option not in taken and not any(type(value) is type(d) and value == d for d in defaults):
            takers = [n for n, spec in specs.items() if option in {f.name for f in spec.fields()}]
            raise MaeprobeError(f"{option}: an option of {', '.join(takers)}, none of the metrics chosen "
                                f"({', '.join(metrics)})")
    return out


def run(checkpoints, images=None, *, metrics=("attn-distance",), reference=None, layers=None,
        decoder_layers=None, mask_ratio: float | None = None, mask_ratios: dict | None = None, seed: int = 0,
        bootstrap: int = BOOTSTRAP, batch_size: int = 16, device: str | None = None, dtype: str | None = None,
        progress: bool = False, num_workers: int | None = None, num_heads=None, decoder_num_heads=None,
        ref_num_heads=None, img_size: int | None = None, block_queries: int | None = None, resample_by="image",
        options: dict | None = None, **metric_options) -> pd.DataFrame:
    """Several metrics for each checkpoint, one table for all; metrics with the same mask share one hooked pass.

    Each metric keeps its own probe mask (one seeded mask shared by all images): by default attention
    distance and the spectrum see the unmasked image (as Fig. 5/6 compare MAE with DINO and DeiT) and the
    decoder metrics a 0.75 mask (Section 4.1). ``mask_ratio`` sets one ratio for every metric; ``mask_ratios``
    (e.g. ``{"attn-distance": 0.75}``) sets single metrics. Metrics whose ratios agree run in one pass per
    batch; the ``mask_ratio`` column of every row says which mask it was measured under. Metrics: every
    registered one (``maeprobe.api.METRICS``); ``decoder-semantics`` needs ``reference``.

    Every option of every metric reaches it: given by name (``units="patches"``, ``patch_keys_only=True``,
    ``tau=0.2``) it applies to each selected metric that has an option of that name (``module`` to attention
    distance and entropy alike); ``options={"attn-distance": {"module": "decoder"}}`` sets one metric's.
    ``layers`` are the encoder layers, ``decoder_layers`` the decoder's (a metric reading the decoder takes
    ``decoder_layers``).
    Each checkpoint keeps its own rows: ``checkpoint`` is the shortest path suffix that tells the checkpoints
    apart (``a/checkpoint-last.pth`` and ``b/checkpoint-last.pth``), ``checkpoint_path`` the file; the same
    checkpoint given twice is refused.
    Other arguments as ``measure``.
    """
    metrics = _metric_names(metrics)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise MaeprobeError(f"unknown metrics {', '.join(sorted(unknown))}; choose from {', '.join(METRICS)}")
    specs = registry.metrics()
    chosen = [specs[name] for name in METRICS if name in metrics]  # the registry's order: one row order
    needs_reference = [spec.name for spec in chosen if spec.needs_reference and not spec.reference_optional]
    if needs_reference and reference is None:
        raise MaeprobeError(f"{', '.join(needs_reference)} needs a reference model (reference: a checkpoint or "
                            "'dino')")
    from .checkpoints import load

    ratios = _mask_ratios(metrics, mask_ratio, mask_ratios)
    checkpoints = _checkpoint_list(checkpoints)
    layers, decoder_layers = _layers(layers), _layers(decoder_layers, "decoder_layers")
    per_metric = _run_options(metrics, options, metric_options)
    images = _images(images)
    ref_model = load_reference(reference, num_heads=ref_num_heads) \
        if reference is not None and any(spec.needs_reference for spec in chosen) else None
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
        needs_decoder = [spec.name for spec in chosen if spec.module_of(per_metric[spec.name]) == "decoder"]
        if needs_decoder and not model.has_decoder:
            from .models.factory import decoder_left_out

            why = decoder_left_out(model) or "need a checkpoint with a decoder"
            raise MaeprobeError(f"{getattr(model, 'checkpoint', None) and model.checkpoint.path}: "
                                f"{', '.join(sorted(needs_decoder))}: {why}")
        for ratio in dict.fromkeys(ratios[m] for m in metrics):  # one pass per distinct mask, in metric order
            group = [spec for spec in chosen if ratios[spec.name] == ratio]
            reducers = [_reducer(spec, model, ref_model, per_metric[spec.name], bootstrap=bootstrap, seed=seed,
                                 layers=decoder_layers if spec.module_of(per_metric[spec.name]) == "decoder"
                                 else layers)
                        for spec in group]
            tables.append(_probe(model, reducers, images, mask_ratio=ratio, seed=seed, shared_mask=True,
                                 batch_size=batch_size, device=device, dtype=dtype, progress=progress,
                                 num_workers=num_workers, block_queries=block_queries, resample_by=resample_by))
            for spec in group:
                _warn(spec, tables[-1][tables[-1]["metric"] == spec.column])
        for table in tables[first:]:
            table["_model_index"] = index
    table = pd.concat(tables, ignore_index=True)
    labels = _labels(models)  # every checkpoint its own label: two files of one name never become one row
    table["checkpoint"] = [labels[i] for i in table.pop("_model_index")]
    return table


def _no_decoder(model) -> str:
    """Why ``render_attention`` cannot draw decoder maps of ``model``, and what draws encoder maps instead."""
    from .models.factory import decoder_left_out

    why = decoder_left_out(model) or "this checkpoint has no decoder"
    return f"{why}; or use encoder=True for encoder attention maps"


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
    from PIL import Image

    from . import validate
    from .capture import CaptureRequest, capture, resolve_layers
    from .data import fit_to_size, make_transform, open_image
    from .io import check_output_file
    from .masking import MaskInfo, mask_noise
    from .plots import default_queries, render_decoder_attention, render_encoder_attention
    from .plots.render import check_panels
    from .probe import default_device
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
            raise MaeprobeError(_no_decoder(model))
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
        raise MaeprobeError(_no_decoder(model))
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
