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
    regular file (never a symbolic link, folder, device, FIFO or socket: only regular files are replaced), in a
    folder that is a folder; ``suffixes`` restricts the extension. Raises MaeprobeError with one line."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as exc:
        raise MaeprobeError(f"{_shown(path)}: cannot write there ({exc.strerror or exc})") from None
    if mode is not None and stat.S_ISLNK(mode):
        raise MaeprobeError(f"{_shown(path)}: is a symbolic link; maeprobe does not replace links, use another "
                            "--out or move it away")
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


# ----------------------------------------------------------------------------- what maeprobe wrote
MANIFEST = ".maeprobe-outputs.json"  # in an output folder: the files maeprobe wrote there, name -> size, mtime, sha256
_HASHED = 1 << 20  # files up to this size are recorded with their sha256 too


def _stamp(path: Path) -> dict | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if st.st_size <= _HASHED:
        import hashlib

        try:
            with open(path, "rb") as f:
                stamp["sha256"] = hashlib.sha256(f.read(_HASHED + 1)).hexdigest()
        except OSError:
            return None
    return stamp


def _manifest(folder: Path) -> dict:
    import json

    path = folder / MANIFEST
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) or os.lstat(path).st_size > 16 << 20:
            return {}
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def written_by_maeprobe(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file that the manifest of its folder records, with its size, mtime and (for
    small files) sha256 unchanged since maeprobe wrote it."""
    path = Path(path)
    entry = _manifest(path.parent).get(path.name)
    stamp = _stamp(path)
    if not isinstance(entry, dict) or stamp is None:
        return False
    return all(entry.get(key) == value for key, value in stamp.items()) and (
        "sha256" in stamp or "sha256" not in entry)


def check_outputs(paths, named=()) -> list[Path]:
    """Check ALL the output names of one command before any work. Each must be a new name or a regular file that
    maeprobe wrote (recorded by ``record_outputs`` in the folder's ``.maeprobe-outputs.json`` and unchanged since);
    a file the user named (``named``) may also be a regular file of the user's, which is replaced. A symbolic link,
    a folder, a device, or a file maeprobe did not write is refused with one line (``MaeprobeError``)."""
    named = {os.path.abspath(p) for p in named}
    checked = []
    for path in paths:
        path = check_output_file(path)
        if (os.path.lexists(path) and os.path.abspath(path) not in named and path.name != MANIFEST
                and not written_by_maeprobe(path)):
            raise MaeprobeError(f"{_shown(path)}: exists and was not written by maeprobe; it is not replaced, use "
                                "another --out or move it away")
        if path.name == MANIFEST:
            raise MaeprobeError(f"{_shown(path)}: a name maeprobe keeps for its own records; use another --out")
        checked.append(path)
    return checked


def record_outputs(paths) -> None:
    """Record ``paths`` (files just written) in their folders' manifests, atomically, under a lock on the folder
    (concurrent writers in one folder do not lose each other's entries). Only the main process writes."""
    import fcntl
    import json

    from .distributed import is_main

    if not is_main():
        return
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        path = Path(path)
        by_folder.setdefault(path.parent, []).append(path)
    for folder, files in by_folder.items():
        manifest = folder / MANIFEST
        if os.path.lexists(manifest) and not stat.S_ISREG(os.lstat(manifest).st_mode):
            raise MaeprobeError(f"{_shown(manifest)}: is not a regular file; maeprobe cannot record its outputs")
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = _manifest(folder)
            for path in files:
                stamp = _stamp(path)
                if stamp is None:
                    data.pop(path.name, None)
                else:
                    data[path.name] = stamp
            with atomic_path(manifest) as tmp:
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        finally:
            os.close(fd)  # also releases the lock
