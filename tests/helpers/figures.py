"""Reading saved figures as a reviewer would (the ``captured`` fixture in conftest.py keeps the figure objects)."""
from __future__ import annotations


def inside(fig, artist) -> bool:
    """Whether ``artist`` lies within the canvas of ``fig`` (1 px of slack), drawn on a fresh Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # closing the figure detached its canvas
    canvas.draw()
    box = artist.get_window_extent(canvas.get_renderer())
    W, H = fig.bbox.width, fig.bbox.height
    return box.x0 >= -1 and box.y0 >= -1 and box.x1 <= W + 1 and box.y1 <= H + 1
