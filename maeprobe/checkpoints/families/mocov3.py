"""MoCo v3 (Chen et al., 2021): a plain ViT inside ``base_encoder.`` / ``momentum_encoder.`` prefixes, which
name the family (``originals.strip_prefixes``)."""
from .base import IMAGENET, Family

FAMILY = Family("mocov3", "MoCo v3", *IMAGENET)
