"""Reading checkpoint files safely: what the bytes are, and tensors out of them without running code.

* PyTorch pickles (``torch.save`` zip or legacy) load with ``torch.load(weights_only=True)`` and an
  allow-list holding only ``argparse.Namespace`` and numpy scalar types (found in real training checkpoints).
* ``.safetensors`` files and Google's JAX ``.npz`` archives (``numpy.load(allow_pickle=False)``) hold only
  arrays by construction.
* TorchScript archives and any other format that executes code on load are refused with one line.
* The format is what the bytes are (``sniff``), never the file's name: ``torch.load`` is handed an open file, as
  torch 2.14+ passes any path ending in ``.safetensors`` to safetensors itself.
* A refused pickle is named by the callable it asks for (``module.qualname``), read from its opcodes without
  running them (``requested_globals``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import pickletools
import re
import stat
import warnings
import zipfile
from collections import deque
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..limits import LimitError, limit
from ..validate import first_line, one_line

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
    """``torch.load(weights_only=True)`` with the allow-list; CheckpointError on anything else.

    The bytes decide: a file that is not a PyTorch pickle (safetensors, ``.npz``, TorchScript) is refused with one
    line saying what it is, and ``torch.load`` gets an open file rather than the name (torch 2.14+ hands a path
    ending in ``.safetensors`` to safetensors whatever it holds)."""
    require_regular(path)
    kind = sniff(path)
    refuse_code(path, kind)
    if kind in ("safetensors", "npz"):
        suffix = ".safetensors" if kind == "safetensors" else ".npz"
        raise CheckpointError(path, f"not a PyTorch pickle (its bytes are a {suffix} file); rename it to "
                                    f"{suffix}" + (" (model.safetensors in a HuggingFace folder)"
                                                   if kind == "safetensors" else ""))
    check_zip(path)
    try:
        with open(path, "rb") as handle, torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            # torch's note on protocol 4+ pickles: what it cannot read is refused with its own line below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refuse_pickle(path, exc)
    except RecursionError:
        raise CheckpointError(path, "the pickle is nested too deeply; expected a state dict") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, IndexError, KeyError, TypeError,
            AttributeError, OverflowError, MemoryError) as exc:
        if out_of_memory(exc):
            raise memory_error(path, exc) from None
        first = first_line(exc, 200)
        raise CheckpointError(path, f"truncated or corrupt PyTorch file ({first}); expected {EXPECTED}") from None


def refuse_pickle(path: Path, exc: pickle.UnpicklingError | None = None) -> None:
    """Raise the one line for a pickle that ``torch.load(weights_only=True)`` refused (``exc``), or that is no
    PyTorch file but asks for a callable (``exc`` None): the callable it asks for (``module.qualname``, from its
    opcodes, never run), else the instruction the safe loader does not read."""
    allowed = _allowed_names()
    torch_listed = "torch.Tensor" in allowed  # else every torch.* name counts as torch's own
    found = next((name for name in requested_globals(path)
                  if name not in allowed and (torch_listed or not name.startswith("torch."))), None)
    if found is not None:
        raise CheckpointError(path, f"refused to load: the pickle asks for `{one_line(found, 200)}`, which is not "
                                    "on maeprobe's allow-list; checkpoints must hold only tensors and plain "
                                    "containers (untrusted pickles never run code here)") from None
    if exc is None:
        return
    text = str(exc)
    operand = re.search(r"Unsupported operand (\d+)", text)
    if operand is not None:
        op = pickletools.code2op.get(chr(int(operand.group(1)) % 256))
        opname = op.name if op is not None else f"opcode {operand.group(1)}"
        raise CheckpointError(path, f"refused to load: the pickle uses the instruction {opname}, which maeprobe's "
                                    "safe loader does not read; save the weights with torch.save(state_dict, "
                                    "path)") from None
    if "weights_only" in text or "Weights only" in text:
        detail = next((line.strip() for line in text.splitlines()
                       if line.strip() and "Weights only load failed" not in line and "weights_only" not in line
                       and not line.strip().startswith(("(1)", "(2)", "Check the documentation"))), "")
        raise CheckpointError(path, "refused to load: the pickle holds objects other than tensors and plain "
                                    f"containers ({one_line(detail, 160) or 'refused by the safe loader'}); "
                                    "untrusted pickles never run code here") from None
    raise CheckpointError(path, f"corrupt pickle ({first_line(exc, 200)}); expected {EXPECTED}") from None


_SCAN_BYTES = 16 << 20  # the pickle of a state dict is a few MB at most; the tensors' bytes lie elsewhere
_PUSH_STRING = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
                "STRING"}
_NO_PUSH = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "STOP", "MARK", "POP", "POP_MARK",
            "SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS", "BUILD"}


def _allowed_names() -> set[str]:
    """``module.qualname`` of every global ``torch.load(weights_only=True)`` builds here: torch's own allow-list
    and maeprobe's ``SAFE_GLOBALS`` (a torch without its private list: ``collections.OrderedDict``, and the caller
    counts every ``torch.*`` name as torch's own)."""
    names = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS} | {"collections.OrderedDict"}
    try:
        from torch import _weights_only_unpickler

        names |= set(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - the private list moved
        pass
    return names


def requested_globals(path: Path) -> list[str]:
    """The callables and classes (``module.qualname``) that the pickle(s) of ``path`` ask for, in order, read from
    the opcodes by ``pickletools`` (nothing is imported or run): the ``data.pkl`` of a ``torch.save`` zip, else the
    successive pickles at the start of the file (legacy ``torch.save``, plain pickles). Reads at most 16 MB; a
    stream that stops making sense ends the list."""
    try:
        with zipfile.ZipFile(path) as archive:
            entry = next((i for i in archive.infolist() if i.filename.endswith("data.pkl")), None)
            if entry is None:
                return []
            with archive.open(entry) as f:
                data = f.read(_SCAN_BYTES)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError):
        try:
            with open(path, "rb") as f:
                data = f.read(_SCAN_BYTES)
        except OSError:
            return []
    names: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(8):  # legacy torch.save: magic number, protocol, system info, the object, storage keys
        start = stream.tell()
        names += _globals_of_one_pickle(stream)
        if stream.tell() in (start, len(data)):
            break
    return names


def _globals_of_one_pickle(stream: io.BytesIO) -> list[str]:
    """Globals of the pickle at ``stream``'s position (``GLOBAL``/``INST`` name them; ``STACK_GLOBAL`` takes the two
    strings pushed before it, which may come from the memo). Stops at ``STOP`` or at the first byte that is no
    opcode."""
    names: list[str] = []
    recent: deque = deque(maxlen=2)  # the values on top of the stack, as far as strings are concerned
    memo: dict = {}  # memo index -> string (other memoized values are not kept)
    memoized = protocol = 0
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name in _PUSH_STRING:
                recent.append(arg if isinstance(arg, str) else None)
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                recent.append(memo.get(arg))
            elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                index = memoized if name == "MEMOIZE" else arg
                memoized += name == "MEMOIZE"
                if recent and isinstance(recent[-1], str):
                    memo[index] = recent[-1]
                else:
                    memo.pop(index, None)
            elif name == "PROTO":
                protocol = arg
            elif name in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                names.append(_python3_name(module, qualname, protocol))
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) == 2 and all(isinstance(v, str) for v in recent):
                    names.append(_python3_name(recent[0], recent[1], protocol))
                recent.append(None)
            elif name not in _NO_PUSH:
                recent.append(None)
    except Exception:  # noqa: BLE001 - hostile bytes: whatever pickletools cannot parse ends the scan
        pass
    return names


def _python3_name(module: str, qualname: str, protocol: int) -> str:
    """``module.qualname`` as Python 3 resolves it: pickles of protocol < 3 may use Python 2's names
    (``__builtin__.eval`` is ``builtins.eval``), which the unpicklers map, as ``pickle`` and torch do."""
    if protocol < 3:
        import _compat_pickle

        if (module, qualname) in _compat_pickle.NAME_MAPPING:
            module, qualname = _compat_pickle.NAME_MAPPING[(module, qualname)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{qualname}"


from ..errors import out_of_memory  # noqa: E402  (re-exported: the checkpoint readers use it)


def memory_error(path, exc: BaseException) -> CheckpointError:
    """The one line for a checkpoint whose reading ran out of memory (an address-space or container cap)."""
    want = re.search(r"allocate (\d+) bytes", str(exc)[:2000])
    sizes = []
    try:
        if os.path.isfile(path):
            sizes.append(f"{os.stat(path).st_size:,} bytes on disk")
    except (OSError, ValueError):
        pass
    if want:
        sizes.append(f"{int(want.group(1)):,} bytes asked at once")
    sizes_text = f" ({'; '.join(sizes)})" if sizes else ""
    return CheckpointError(path, f"ran out of memory while reading the checkpoint{sizes_text}: this process may "
                                 "allocate less than it needs; a checkpoint may claim up to MAEPROBE_MAX_INFLATE "
                                 "times its stored bytes (lower that variable to refuse such files before they are "
                                 "read), or give the process more memory")


def read_pickle(path: str | os.PathLike):
    """``torch.load(weights_only=True)`` with maeprobe's allow-list; CheckpointError on anything else."""
    return torch_load(Path(path))


def read_safetensors(path: Path) -> tuple[dict, dict]:
    """(tensors, maeprobe metadata) of a ``.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    require_regular(path)
    kind = sniff(path)
    refuse_code(path, kind)
    if kind in ("zip", "pickle", "npz"):  # the name says safetensors, the bytes say otherwise
        what = {"zip": "a PyTorch zip checkpoint", "pickle": "a PyTorch pickle checkpoint", "npz": "a JAX .npz"}[kind]
        raise CheckpointError(path, f"not a safetensors file (it is {what}); rename it to "
                                    + (".npz" if kind == "npz" else ".pth (pytorch_model.bin in a HuggingFace folder)"))
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
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError, MemoryError) as exc:
        if out_of_memory(exc):
            raise memory_error(path, exc) from None
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
    except MemoryError as exc:  # numpy's _ArrayMemoryError too
        raise memory_error(path, exc) from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, TypeError, NotImplementedError) as exc:
        if out_of_memory(exc):
            raise memory_error(path, exc) from None
        raise CheckpointError(path, f"truncated or corrupt .npz file ({first_line(exc, 200)}); expected "
                                    f"{EXPECTED}") from None


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
