"""DINO (Caron et al., 2021): facebookresearch/dino backbones and training checkpoints (``teacher`` /
``student``, recognised by their container); position embeddings resampled with DINO's 0.1 offset."""
from .base import IMAGENET, Family, Layout

FAMILY = Family("dino", "DINO", *IMAGENET, pos_resample="offset")


def _matches(sd: dict, container: str) -> bool:
    return container.startswith("DINO")


LAYOUT = Layout(FAMILY, _matches)
