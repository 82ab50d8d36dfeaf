"""maeprobe: look inside pretrained MAE / ViT checkpoints.

Pipeline: load -> capture -> reduce -> report.

>>> import maeprobe
>>> model = maeprobe.load("mae_pretrain_vit_base.pth")
>>> table = maeprobe.attention_distance(model)   # built-in photos, one row per (layer, head)

The names below are imported on first use, so ``import maeprobe`` (and the CLI's ``--help``) stays fast:
torch and timm load only when a function needs them.
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "measure": "api", "report": "api", "run_summary": "api", "describe": "api", "run": "api", "load_reference": "api",
    "render_attention": "api",
    "make_figures": "plots",
    "reproduce": "findings", "list_findings": "findings",
    "ActivationCache": "capture", "AttentionRows": "capture", "CaptureRequest": "capture", "capture": "capture",
    "load": "checkpoints", "read_checkpoint": "checkpoints", "save_checkpoint": "checkpoints",
    "CheckpointError": "errors", "MaeprobeError": "errors",
    "mask_noise": "masking", "random_masking": "masking",
    "ArchConfig": "models", "MaskedAutoencoderViT": "models", "build_mae": "models",
    "run_probe": "probe",
    "read_table": "results", "to_frame": "results", "write_table": "results",
}


def _metric_functions() -> list[str]:
    """The API function of every registered metric (``maeprobe.attention_distance``, ...), read from the registry."""
    from .metrics.registry import metrics

    return [spec.function for spec in metrics().values()]


__all__ = sorted([*_EXPORTS, *_metric_functions()])


def __getattr__(name: str):
    module = _EXPORTS.get(name) or ("api" if name in _metric_functions() else None)
    if module is not None:
        value = getattr(import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'maeprobe' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
