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
    "attention_distance": "api", "attention_entropy": "api", "decoder_attention_similarity": "api", "decoder_semantic_similarity": "api",
    "feature_spectrum": "api", "run": "api", "load_reference": "api", "render_attention": "api",
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
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'maeprobe' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
