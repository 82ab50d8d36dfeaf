"""Figures. They read result tables only; matplotlib is imported inside the functions."""
from .attention_distance import plot_attention_distance

__all__ = ["plot_attention_distance"]
