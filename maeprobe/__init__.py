"""maeprobe: look inside pretrained MAE / ViT checkpoints.

Pipeline: load -> capture -> reduce -> report.

>>> import maeprobe
>>> model = maeprobe.load("mae_pretrain_vit_base.pth")
>>> table = maeprobe.attention_distance(model)   # built-in photos, one row per (layer, head)
"""
from .api import attention_distance
from .capture import ActivationCache, CaptureRequest, capture
from .checkpoints import load, read_checkpoint, save_checkpoint
from .errors import CheckpointError, MaeprobeError
from .masking import mask_noise, random_masking
from .models import ArchConfig, MaskedAutoencoderViT, build_mae
from .probe import run_probe
from .results import read_table, to_frame, write_table

__version__ = "0.1.0"
__all__ = [
    "ActivationCache", "ArchConfig", "CaptureRequest", "CheckpointError", "MaeprobeError",
    "MaskedAutoencoderViT", "attention_distance", "build_mae", "capture", "load", "mask_noise",
    "random_masking", "read_checkpoint", "read_table", "run_probe", "save_checkpoint", "to_frame",
    "write_table",
]
