"""iBOT (Zhou et al., 2022): DINO's layout plus a ``masked_embed`` token, which names the family
(``originals.strip_prefixes``); position embeddings resampled with DINO's 0.1 offset."""
from .base import IMAGENET, Family

FAMILY = Family("ibot", "iBOT", *IMAGENET, pos_resample="offset")
