"""Atomic file writes: a temporary file in the destination folder, renamed over the final name only once it
is complete, so an interrupted or concurrent run never leaves a half-written file under that name."""
from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import MaeprobeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``
    (``os.replace``), otherwise it is deleted and any previous ``path`` is left as it was.

    The folder is created when missing; a place that cannot be written is a ``MaeprobeError`` naming it.
    """
    path = Path(path)
    check_output_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise MaeprobeError(f"{path}: cannot write there ({exc.strerror or exc})") from None
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give outputs ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _shown(path) -> str:
    from .validate import one_line

    return one_line(path)


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check, before anything is computed, that ``path`` can receive an output file: a new name, or an existing
    regular file (never a folder, device, FIFO or socket: only regular files are replaced), in a folder that is
    a folder; ``suffixes`` restricts the extension. Raises MaeprobeError with one line."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as exc:
        raise MaeprobeError(f"{_shown(path)}: cannot write there ({exc.strerror or exc})") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise MaeprobeError(f"{_shown(path)}: is a folder; expected a file name to write")
    if mode is not None and not stat.S_ISREG(mode):
        raise MaeprobeError(f"{_shown(path)}: exists and is not a regular file (a device, FIFO or socket); "
                            "maeprobe only replaces regular files")
    _check_nearest_folder(path, path.parent)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise MaeprobeError(f"{_shown(path)}: unknown output format {path.suffix or '(none)'!r}; use "
                            f"{', '.join(suffixes)}")
    return path


def check_output_folder(path: str | os.PathLike) -> Path:
    """Check, before anything is computed, that ``path`` is a folder or can become one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MaeprobeError(f"{_shown(path)}: exists and is not a folder; expected an output folder")
    _check_nearest_folder(path, path)
    return path


def _check_nearest_folder(path: Path, start: Path) -> None:
    """The nearest existing folder at or above ``start`` must be a writable folder (the rest is created)."""
    for parent in [start, *start.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise MaeprobeError(f"{_shown(path)}: cannot write there ({_shown(parent)} is not a folder)")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise MaeprobeError(f"{_shown(path)}: cannot write there ({_shown(parent)} is not writable)")
            return


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
