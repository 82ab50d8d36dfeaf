"""Independent reference computations: HuggingFace ViTMAE's own outputs and attentions, read from transformers'
modules (never from maeprobe), for the tests that compare maeprobe against them."""
from __future__ import annotations

import torch


def hf_forward(model, x, noise):
    """HF outputs plus decoder attentions read from hooks on its decoder layers."""
    decoder = {}
    hooks = [layer.attention.register_forward_hook(lambda m, i, o, k=k: decoder.__setitem__(k, o[1]))
             for k, layer in enumerate(model.decoder.decoder_layers)]
    try:
        with torch.no_grad():
            out = model(pixel_values=x, noise=noise, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    return out, list(out.attentions), [decoder[k] for k in sorted(decoder)]


def _key_projection(layer):
    """HF's key projection of a decoder layer (transformers 5.x ``k_proj``, 4.x ``attention.key``)."""
    attention = layer.attention
    return getattr(attention, "k_proj", None) or attention.attention.key


def hf_decoder_outputs(hf, x, noise, keys: bool = False):
    """HF attentions plus the output of every HF decoder layer (before decoder_norm); with ``keys`` the output
    of every decoder layer's key projection instead (all heads concatenated)."""
    outputs = {}
    targets = [_key_projection(layer) if keys else layer for layer in hf.decoder.decoder_layers]
    hooks = [module.register_forward_hook(
                 lambda m, i, o, k=k: outputs.__setitem__(k, o[0] if isinstance(o, tuple) else o))
             for k, module in enumerate(targets)]
    try:
        out, enc, dec = hf_forward(hf, x, noise)
    finally:
        for h in hooks:
            h.remove()
    return out, enc, dec, [outputs[k] for k in sorted(outputs)]
