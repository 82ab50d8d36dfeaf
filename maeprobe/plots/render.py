"""Attention renders (LC-MAE Fig. 4 / B.1; DINO-style encoder maps). They read an ActivationCache.

Decoder mode: one row per query patch; columns: input image, masked image, then the head-averaged
attention of that query in each chosen decoder layer, upsampled onto the image, the query marked with a
red circle and the CLS key's weight drawn as a block in the top-left corner. Encoder mode: the CLS
query's attention over patches, one column per head, one row per layer (unmasked image).
Layer titles number layers from 1, as the paper does (layer index + 1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def check_panels(rows: int, columns: int) -> None:
    """Refuse, before anything is drawn (``render_attention``: before the model runs), a render of more than
    ``MAEPROBE_MAX_PANELS`` maps: each costs about 80 ms and 4 MB (a 264-map render took 23 s and 1.2 GB), and
    ``--query 0-100000`` or a model of many heads would ask for any number of them."""
    from ..limits import check

    check("MAEPROBE_MAX_PANELS", int(rows) * int(columns),
          f"the render's {int(rows)} rows x {int(columns)} columns of maps")


def _scale_note(ax, vmax: float, uniform: float) -> None:
    """Each map is scaled to its own maximum: print it beside the uniform-attention weight, so that a map that
    is bright everywhere (uniform attention) can be told from a peaked one."""
    ax.text(0.02, 0.02, f"max {vmax:.3f}\nuniform {uniform:.3f}", transform=ax.transAxes, fontsize=3.6,
            color="white", va="bottom", ha="left", bbox=dict(facecolor="black", alpha=0.55, lw=0, pad=0.6))


def _colour_bar(fig, axes, cmap="inferno") -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=cmap), ax=axes, fraction=0.025, pad=0.01)
    bar.set_label("attention weight / the map's max", fontsize=5)
    bar.ax.tick_params(labelsize=4.5)


def _overlay(ax, image, weights, grid, cls_weight=None, vmax=None, query=None, cmap="inferno"):
    from matplotlib.patches import Circle, Rectangle

    size = image.shape[0]
    patch = size / grid
    vmax = vmax or max(float(weights.max()), 1e-12)
    ax.imshow(image)
    ax.imshow(weights.reshape(grid, grid), cmap=cmap, alpha=0.65, vmin=0, vmax=vmax,
              extent=(0, size, size, 0), interpolation="nearest")
    if cls_weight is not None:
        import matplotlib

        colour = matplotlib.colormaps[cmap](min(cls_weight / vmax, 1.0))
        ax.add_patch(Rectangle((0, 0), patch, patch, facecolor=colour, edgecolor="white", lw=0.8))
        ax.text(patch / 2, patch / 2, "CLS", color="white", fontsize=4, ha="center", va="center")
    if query is not None:
        row, col = divmod(int(query), grid)
        ax.add_patch(Circle(((col + 0.5) * patch, (row + 0.5) * patch), patch * 0.45, fill=False,
                            edgecolor="red", lw=1.2))
    ax.set_axis_off()


def render_decoder_attention(image: np.ndarray, cache, *, layers, queries, grid: int, num_prefix: int,
                             out: str | Path, title: str = "") -> list[Path]:
    """Fig. 4 / B.1 layout. ``image``: RGB uint8 [S, S, 3] at the model's input size; ``cache`` holds
    decoder attention of ``layers`` and the batch's mask (one image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_panels(len(queries), 2 + len(layers))
    out = _stem(out)
    mask = cache.mask.mask[0].cpu().numpy().reshape(grid, grid)
    size = image.shape[0]
    up = np.kron(mask, np.ones((size // grid, size // grid)))[..., None]
    masked_image = (image * (1 - up) + 127 * up).astype(np.uint8)
    cols = 2 + len(layers)
    fig, axes = plt.subplots(len(queries), cols, figsize=(1.3 * cols + 0.6, 1.3 * len(queries) + 0.55),
                             squeeze=False)
    for r, query in enumerate(queries):
        axes[r, 0].imshow(image)
        axes[r, 1].imshow(masked_image)
        for ax in axes[r, :2]:
            ax.set_axis_off()
        axes[0, 0].set_title("input", fontsize=6)
        axes[0, 1].set_title("masked", fontsize=6)
        from matplotlib.patches import Circle

        patch = size / grid
        qr, qc = divmod(int(query), grid)
        axes[r, 1].add_patch(Circle(((qc + 0.5) * patch, (qr + 0.5) * patch), patch * 0.45, fill=False,
                                    edgecolor="red", lw=1.2))
        axes[r, 0].text(-0.06, 0.5, f"query patch {int(query)}\n(row {qr + 1}, col {qc + 1})", rotation=90,
                        transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=5)
        for c, layer in enumerate(layers):
            attn = cache.attention[("decoder", layer)][0].float().mean(0)  # [N, N], head average
            row = attn[num_prefix + int(query)].cpu().numpy()  # [N]
            weights, cls_weight = row[num_prefix:], float(row[:num_prefix].sum())
            vmax = max(float(weights.max()), cls_weight)
            _overlay(axes[r, 2 + c], image, weights, grid, cls_weight=cls_weight, vmax=vmax, query=query)
            _scale_note(axes[r, 2 + c], vmax, 1.0 / len(row))
            if r == 0:
                axes[0, 2 + c].set_title(f"decoder layer {layer + 1}", fontsize=6)
    _colour_bar(fig, axes)
    fig.suptitle((f"{title}\n" if title else "") + "decoder attention of the circled masked query (mean over "
                 "heads); layers numbered from 1", fontsize=5.5)
    fig.supxlabel("top-left box: the weight on the CLS token (same colour scale); each map is scaled to its own "
                  "maximum (printed, with the uniform weight)", fontsize=4.5, color="0.3")
    return _save(fig, out, rect=(0.03, 0.03, 0.97, 0.95))


def render_encoder_attention(image: np.ndarray, cache, *, layers, grid: int, out: str | Path,
                             title: str = "") -> list[Path]:
    """DINO-style maps: CLS query attention over patches, rows = layers, columns = heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = cache.attention[("encoder", layers[0])].shape[1]
    check_panels(len(layers), heads + 1)
    out = _stem(out)
    fig, axes = plt.subplots(len(layers), heads + 1, figsize=(1.2 * (heads + 1) + 0.6, 1.2 * len(layers) + 0.5),
                             squeeze=False)
    for r, layer in enumerate(layers):
        attn = cache.attention[("encoder", layer)][0].float()  # [H, N, N]
        axes[r, 0].imshow(image)
        axes[r, 0].set_axis_off()
        if r == 0:
            axes[0, 0].set_title("input", fontsize=6)
        # the layer names the row (left of the photo, as the decoder render's query labels), never the photo
        axes[r, 0].text(-0.06, 0.5, f"encoder layer {layer + 1}", rotation=90, transform=axes[r, 0].transAxes,
                        ha="right", va="center", fontsize=6)
        P = attn.shape[-1] - grid * grid
        for h in range(heads):
            # CLS row (DINO style); a model without prefix tokens (SigLIP): the mean attention each patch receives
            weights = (attn[h, 0, P:] if P else attn[h, :, :].mean(0)).cpu().numpy()
            _overlay(axes[r, 1 + h], image, weights, grid)
            _scale_note(axes[r, 1 + h], float(weights.max()), 1.0 / attn.shape[-1])
            if r == 0:
                axes[0, 1 + h].set_title(f"head {h + 1}", fontsize=6)
    _colour_bar(fig, axes)
    fig.suptitle((f"{title}\n" if title else "") + "encoder attention of the CLS query over the patches; layers "
                 "and heads numbered from 1", fontsize=5.5)
    return _save(fig, out, rect=(0.0, 0.0, 0.97, 0.93))


def _stem(out) -> Path:
    """The output path without extension, checked (``results.output_path``) before anything is drawn."""
    from ..io import check_outputs
    from ..results import output_path

    out = output_path(out, "out", kind="stem")
    # the file the user named (``x.png``) may be a file of theirs, replaced; its companion (``x.pdf``), or both for
    # a name without either extension, only when maeprobe wrote it
    paths = [out.with_suffix(suffix) for suffix in (".png", ".pdf")]
    check_outputs(paths, named=[out])
    return out


def _save(fig, out, rect=(0, 0, 1, 1)) -> list[Path]:
    import matplotlib.pyplot as plt

    from .figures import save_figure

    out = Path(out)
    del rect  # the colour bar's axes do not work with tight_layout: the layout engine places everything
    fig.set_layout_engine("constrained")
    try:
        return save_figure(fig, [out.with_suffix(".png"), out.with_suffix(".pdf")], dpi=220)
    finally:
        plt.close(fig)


def default_queries(mask: torch.Tensor, grid: int, count: int = 2) -> list[int]:
    """The masked patches closest to the image centre."""
    masked = torch.nonzero(mask > 0.5).flatten().tolist() or list(range(grid * grid))
    centre = (grid - 1) / 2
    return sorted(masked, key=lambda q: ((q // grid - centre) ** 2 + (q % grid - centre) ** 2, q))[:count]
