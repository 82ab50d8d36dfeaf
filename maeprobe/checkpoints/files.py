"""Reading checkpoint files safely: what the bytes are, and tensors out of them without running code.

* PyTorch pickles (``torch.save`` zip or legacy) load with ``torch.load(weights_only=True)`` and an
  allow-list holding only ``argparse.Namespace`` and numpy scalar types (found in real training checkpoints).
* ``.safetensors`` files and Google's JAX ``.npz`` archives (``numpy.load(allow_pickle=False)``) hold only
  arrays by construction.
* TorchScript archives and any other format that executes code on load are refused with one line.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError

EXPECTED = ("a ViT/MAE checkpoint: a PyTorch .pth/.pt/.bin file, a .safetensors file, a JAX .npz file, "
            "or a HuggingFace folder with config.json")


def _safe_globals() -> list:
    allowed: list = [argparse.Namespace, np.dtype]
    try:  # numpy scalars are pickled through this reconstructor
        allowed.append(np._core.multiarray.scalar)  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        allowed.append(np.core.multiarray.scalar)
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


SAFE_GLOBALS = _safe_globals()


def torch_load(path: Path):
    """``torch.load(weights_only=True)`` with the allow-list; CheckpointError on anything else."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global|GLOBAL|global)[:\s]+([\w.]+(?:\.[\w]+)*)", str(exc))
        what = found.group(1) if found else "a Python object"
        if "weights_only" in str(exc) or found:
            raise CheckpointError(path, f"refused to load: the pickle asks for `{what}`, which is not on "
                                        "maeprobe's allow-list; checkpoints must hold only tensors and plain "
                                        "containers (untrusted pickles never run code here)") from None
        raise CheckpointError(path, f"corrupt pickle ({exc}); expected {EXPECTED}") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, IndexError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"truncated or corrupt PyTorch file ({first}); expected {EXPECTED}") from None


def read_pickle(path: str | os.PathLike):
    """``torch.load(weights_only=True)`` with maeprobe's allow-list; CheckpointError on anything else."""
    return torch_load(Path(path))


def read_safetensors(path: Path) -> tuple[dict, dict]:
    """(tensors, maeprobe metadata) of a ``.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"truncated or corrupt safetensors file ({exc}); expected {EXPECTED}") from None
    meta = {}
    if "maeprobe" in metadata:
        try:
            meta = json.loads(metadata["maeprobe"])
        except json.JSONDecodeError:
            pass
    return tensors, meta


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of a JAX/Flax ``.npz`` checkpoint (never unpickles object arrays)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except ValueError as exc:
        raise CheckpointError(path, f"refused to load: the .npz holds Python objects ({exc}); "
                                    "only numeric arrays are read") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(path, f"truncated or corrupt .npz file ({exc}); expected {EXPECTED}") from None


def sniff(path: Path) -> str:
    """What the bytes are: 'zip' (torch.save), 'pickle' (legacy torch.save), 'safetensors', 'npz',
    'torchscript' or 'unknown'. Never trusts the file name."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "zip"  # torch.load reports the corruption
        if any(n.endswith(".npy") for n in names) and not any(n.endswith("data.pkl") for n in names):
            return "npz"
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def refuse_code(path: Path, kind: str) -> None:
    """One line for formats that run code when loaded."""
    if kind == "torchscript":
        raise CheckpointError(path, "refused to load: a TorchScript archive runs its own code when loaded "
                                    "(e.g. OpenAI's original CLIP .pt files); save the state dict instead "
                                    "(torch.save(model.state_dict(), 'weights.pth')) or use the safetensors "
                                    "or HuggingFace release")
