"""Training: the MAE pretraining loop (grown into full recipes later)."""
from .pretrain import PretrainConfig, pretrain

__all__ = ["PretrainConfig", "pretrain"]
from .config import load_recipe  # noqa: E402
