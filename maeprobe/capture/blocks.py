"""The transformer blocks of a model's encoder or decoder, and checks of the layer indices asked of them."""
from __future__ import annotations

from typing import Iterable

from torch import nn

from ..errors import MaeprobeError
from .request import CaptureRequest


def blocks_of(model: nn.Module, module: str) -> nn.ModuleList:
    """The transformer blocks of ``'encoder'`` or ``'decoder'``."""
    if module == "encoder":
        return model.blocks
    if module == "decoder":
        if not getattr(model, "has_decoder", False):
            from ..models.factory import decoder_left_out

            raise MaeprobeError(f"this model has no decoder: {decoder_left_out(model)}" if decoder_left_out(model)
                                else "this model has no decoder; decoder analyses need a full MAE checkpoint")
        if not hasattr(model, "decoder_blocks"):
            raise MaeprobeError(f"this checkpoint's decoder ({model.config.decoder_type}) has no attention blocks; "
                                "decoder analyses need a transformer decoder")
        return model.decoder_blocks
    raise MaeprobeError(f"module must be 'encoder' or 'decoder', got {module!r}")


def resolve_layers(model: nn.Module, module: str, layers: Iterable[int] | None) -> list[int]:
    """Validate 0-based layer indices (negative ones count from the end); None means all layers."""
    depth = len(blocks_of(model, module))
    if layers is None:
        return list(range(depth))
    out = []
    for layer in layers:
        index = layer + depth if layer < 0 else layer
        if not 0 <= index < depth:
            raise MaeprobeError(f"layers: {module} layer {layer} does not exist; the {module} has {depth} layers, "
                                f"valid 0 to {depth - 1} (or -{depth} to -1 from the end)")
        out.append(index)
    return sorted(set(out))


def check_layers(model: nn.Module, request: CaptureRequest) -> None:
    """Every requested layer exists: a negative index would silently wrap to a layer from the end."""
    for kind, module, layers in request.items():
        try:
            depth = len(blocks_of(model, module)) if layers else 0
        except (AttributeError, TypeError):
            depth = 0
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise MaeprobeError(f"request: {kind} of {module} layer {bad[0]} asked, but the {module} has {depth} "
                                f"layers" + (f", valid 0 to {depth - 1}" if depth else ""))
