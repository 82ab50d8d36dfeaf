"""Training: recipe configuration, losses, the pretraining engine and the evaluation recipes."""
from .config import load_recipe
from .pretrain import PretrainConfig, pretrain

__all__ = ["PretrainConfig", "load_recipe", "pretrain"]
