"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class MaeprobeError(ValueError):
    """A problem with the inputs (file, flags, images) rather than a bug. A ValueError, so callers may
    catch either."""


class CheckpointError(MaeprobeError):
    """A checkpoint that cannot be used: the message names the file and what was expected."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"{path}: {message}")


def out_of_memory(exc: BaseException) -> bool:
    """True for a failed allocation, whichever layer reports it: ``MemoryError`` (numpy's ``_ArrayMemoryError`` is
    one), torch's allocators (``DefaultCPUAllocator: can't allocate memory``, ``torch.OutOfMemoryError``), an
    ``OSError`` ENOMEM (``mmap``), or a library that wraps the system's message (safetensors, pyarrow). Imports
    nothing: the CLI asks it after an allocation failed, when importing torch could fail too."""
    import errno
    import sys

    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc)[:2000]
    return isinstance(exc, Exception) and any(s in text for s in (
        "can't allocate memory", "Cannot allocate memory", "out of memory", "memory allocation failed",
        "malloc of size"))
