"""Loading checkpoints: one adapter per family behind one entry point, ``load()``.

* ``files``: safe reading of the bytes (pickles with ``weights_only=True``, safetensors, JAX ``.npz``; TorchScript
  refused).
* ``hf``: HuggingFace folders of ViTMAE, ViT, DeiT, DINOv2 (+ registers), BEiT, data2vec-vision, CLIP, SigLIP.
* ``originals``: original release files (MAE, timm, DeiT, DINO, iBOT, DINOv2, MoCo v3, BEiT/BEiT v2, EVA, OpenAI
  CLIP / open_clip visual weights, JAX ViT ``.npz``), through timm's own converters where timm has one.
* ``families``: one module per family: what the weights cannot say (normalisation, resampling rule, builder), how
  its release files are recognised and mapped (``LAYOUTS``, iterated in order) and its HuggingFace model types.
* ``resample``: probing at another input size (``img_size=`` / ``--img-size``); the rules live in
  ``maeprobe.models.pos_embed`` and building in ``maeprobe.models.factory``, below this package.
* ``hub``: model names (``hf-hub:org/name``, ``timm/name``, official release names) from the local caches.
* ``core``: ``read_checkpoint``, ``infer_config``, ``load``, ``save_checkpoint``.
"""
from .core import (
                   CheckpointInfo,
                   RawCheckpoint,
                   checkpoint_metadata,
                   infer_config,
                   load,
                   normalization,
                   read_checkpoint,
                   resize,
                   save_checkpoint,
)
from .families import FAMILIES
from .files import SAFE_GLOBALS, read_pickle

__all__ = ["CheckpointInfo", "RawCheckpoint", "FAMILIES", "SAFE_GLOBALS", "checkpoint_metadata", "infer_config",
           "load", "normalization", "read_checkpoint", "read_pickle", "resize", "save_checkpoint"]
