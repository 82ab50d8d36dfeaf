"""Figures and renders. They read result tables or activation caches; matplotlib is imported lazily."""
from .figures import FIGURES, make_figures
from .render import default_queries, render_decoder_attention, render_encoder_attention

__all__ = ["FIGURES", "default_queries", "make_figures", "render_decoder_attention",
           "render_encoder_attention"]
