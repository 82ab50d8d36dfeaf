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
import stat
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..limits import LimitError, limit
from ..validate import first_line

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


def require_regular(path: Path, what: str = "file") -> None:
    """Refuse anything but a regular file (or a link to one) before opening it: a FIFO would block forever,
    a device node could be endless."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CheckpointError(path, f"cannot read it ({exc.strerror or exc}); expected {EXPECTED}") from None
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a folder" if stat.S_ISDIR(mode) else "special")
        raise CheckpointError(path, f"is {kind}, not a regular {what}; expected {EXPECTED}")


def check_zip(path: Path) -> None:
    """Bound what a zip-based checkpoint (``torch.save``, ``.npz``) inflates to, from its directory, before any
    entry is read: ``torch.save`` stores entries uncompressed, and weights barely compress, so an entry that
    inflates more than ``MAEPROBE_MAX_INFLATE`` times its stored size is refused."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # the reader reports the corruption
    ratio = limit("MAEPROBE_MAX_INFLATE")
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > ratio * info.compress_size + (1 << 20):
            raise LimitError(f"{path}: the archive entry {info.filename!r} inflates from {info.compress_size:,} to "
                             f"{info.file_size:,} bytes, more than maeprobe's limit of {ratio}x (a zip bomb?); "
                             "raise it with the environment variable MAEPROBE_MAX_INFLATE")
    total, size = sum(i.file_size for i in infos), path.stat().st_size
    if total > ratio * size + (1 << 20):
        raise LimitError(f"{path}: the archive's entries add up to {total:,} bytes from a {size:,}-byte file, more "
                         f"than maeprobe's limit of {ratio}x; raise it with the environment variable "
                         "MAEPROBE_MAX_INFLATE")


def check_storage(tensors: dict, path) -> None:
    """Tensors may share or broadcast storage (``expand`` gives zero strides): a 75 KB file can then claim
    billions of elements, which become real memory as soon as they are copied. The elements claimed must be
    within ``MAEPROBE_MAX_INFLATE`` times the bytes actually stored."""
    storages, claimed = {}, 0
    for value in tensors.values():
        if value.is_sparse or value.device.type == "meta":
            raise CheckpointError(path, "holds sparse or meta tensors; expected dense weights")
        storage = value.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        claimed += value.numel() * value.element_size()
    stored = sum(storages.values())
    ratio = limit("MAEPROBE_MAX_INFLATE")
    if claimed > ratio * stored + (64 << 20):
        raise LimitError(f"{path}: its tensors claim {claimed:,} bytes from {stored:,} stored (broadcast or "
                         f"shared storage), more than maeprobe's limit of {ratio}x; raise it with the environment "
                         "variable MAEPROBE_MAX_INFLATE")


def read_json(path: Path, what: str = "configuration") -> dict:
    """A JSON object from a file that came with a checkpoint: size-bounded, UTF-8, nested reasonably;
    anything else is a CheckpointError naming the file."""
    require_regular(path, what)
    bound = limit("MAEPROBE_MAX_METADATA")
    if path.stat().st_size > bound:
        raise LimitError(f"{path}: a {path.stat().st_size:,}-byte {what} file exceeds maeprobe's limit of "
                         f"{bound:,} bytes (raise it with the environment variable MAEPROBE_MAX_METADATA)")
    return parse_json(path.read_bytes(), path, what)


def parse_json(data: bytes | str, path, what: str = "metadata") -> dict:
    """Parse a JSON object (bytes must be UTF-8); CheckpointError on bad encoding, syntax, depth or type."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text)
    except UnicodeDecodeError:
        raise CheckpointError(path, f"the {what} is not UTF-8 text; expected a JSON object") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"the {what} is not valid JSON ({exc}); expected a JSON object") from None
    except RecursionError:
        raise CheckpointError(path, f"the {what} is nested too deeply; expected a flat JSON object") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise CheckpointError(path, f"the {what} holds a value JSON cannot read ({str(exc)[:100]})") from None
    if not isinstance(value, dict):
        raise CheckpointError(path, f"the {what} is a JSON {type(value).__name__}; expected a JSON object")
    return value


def torch_load(path: Path):
    """``torch.load(weights_only=True)`` with the allow-list; CheckpointError on anything else."""
    require_regular(path)
    check_zip(path)
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
    except RecursionError:
        raise CheckpointError(path, "the pickle is nested too deeply; expected a state dict") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, IndexError, KeyError, TypeError,
            AttributeError, OverflowError, MemoryError) as exc:
        first = first_line(exc, 200)
        raise CheckpointError(path, f"truncated or corrupt PyTorch file ({first}); expected {EXPECTED}") from None


def read_pickle(path: str | os.PathLike):
    """``torch.load(weights_only=True)`` with maeprobe's allow-list; CheckpointError on anything else."""
    return torch_load(Path(path))


def read_safetensors(path: Path) -> tuple[dict, dict]:
    """(tensors, maeprobe metadata) of a ``.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    require_regular(path)
    with open(path, "rb") as f:  # the header's length comes first; bound it before the library parses it
        head = f.read(8)
    header = int.from_bytes(head, "little") if len(head) == 8 else 0
    bound = limit("MAEPROBE_MAX_METADATA") + 64 * 1024 * 1024  # tensor entries plus metadata
    if header > bound:
        raise LimitError(f"{path}: a {header:,}-byte safetensors header exceeds maeprobe's limit of {bound:,} bytes "
                         "(raise it with the environment variable MAEPROBE_MAX_METADATA)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as exc:
        first = first_line(exc, 200)
        raise CheckpointError(path, f"truncated or corrupt safetensors file ({first}); expected {EXPECTED}") from None
    meta = {}
    if "maeprobe" in metadata:
        text = metadata["maeprobe"]
        if len(text) > limit("MAEPROBE_MAX_METADATA"):
            raise LimitError(f"{path}: {len(text):,} bytes of maeprobe metadata exceed maeprobe's limit of "
                             f"{limit('MAEPROBE_MAX_METADATA'):,} (raise it with MAEPROBE_MAX_METADATA)")
        meta = parse_json(text, path, "maeprobe metadata")
    return tensors, meta


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of a JAX/Flax ``.npz`` checkpoint (never unpickles object arrays)."""
    require_regular(path)
    check_zip(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except ValueError as exc:
        raise CheckpointError(path, f"refused to load: the .npz holds Python objects ({exc}); "
                                    "only numeric arrays are read") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, TypeError, NotImplementedError) as exc:
        raise CheckpointError(path, f"truncated or corrupt .npz file ({exc}); expected {EXPECTED}") from None


def sniff(path: Path) -> str:
    """What the bytes are: 'zip' (torch.save), 'pickle' (legacy torch.save), 'safetensors', 'npz',
    'torchscript' or 'unknown'. Never trusts the file name."""
    require_regular(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
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
