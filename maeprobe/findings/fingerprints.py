"""What a stored verdict is keyed on, by content: the code that measured (``code_version``), checkpoints by size
and sha256, image folders by every file's path, size and modification time, and the Eq. 8 reference."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import MaeprobeError
from .measures import _state_digest


def code_version() -> str:
    """The code that measured: maeprobe's version, a digest of its source files (what a stored verdict is keyed
    on) and, when the package sits in a git checkout, the commit (and whether the tree had uncommitted
    changes)."""
    import hashlib
    import subprocess

    from .. import __version__

    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    text = f"maeprobe {__version__}, source sha256:{digest.hexdigest()[:12]}"
    try:
        run = dict(cwd=package, capture_output=True, text=True, timeout=5)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run)
        if commit.returncode == 0 and commit.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--", str(package)], **run).stdout.strip()
            text += f" (git {commit.stdout.strip()}{', uncommitted changes' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        pass
    return text


def _file_digest(path) -> str | None:
    """size + sha256 of a file (None when it does not exist): a replaced checkpoint changes the key."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.stat().st_size}:{digest.hexdigest()}"


def _walk_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (symbolic links to files included, linked folders not entered), sorted;
    an explicit stack, so that a folder nested thousands of levels deep is listed or refused with one line, never
    a RecursionError."""
    import stat

    files, stack = [], [folder]
    try:
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file() and stat.S_ISREG(entry.stat().st_mode):
                        files.append(Path(entry.path))
    except OSError as exc:
        raise MaeprobeError(f"{folder}: cannot list its files ({exc.strerror or type(exc).__name__}: "
                            f"{str(getattr(exc, 'filename', '') or '')[:120]}); expected a readable folder") from None
    return sorted(files)


def _folder_fingerprint(folder) -> str | None:
    """Every file's relative path, size and modification time under a folder, hashed (image folders can be
    large, so their bytes are not read); a file path gets its content digest. None for None."""
    import hashlib

    if folder is None:
        return None
    folder = Path(folder)
    if folder.is_file():
        return _file_digest(folder)
    if not folder.is_dir():
        return f"missing:{folder}"
    digest = hashlib.sha256()
    for path in _walk_files(folder):
        try:
            stat = path.stat()
        except OSError:  # removed while listed
            continue
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _run_digest(folder: Path) -> list:
    """What a measurement reads of a run folder, by content: the checkpoint it loads (``checkpoint-last.pth``),
    the recipe its control is rebuilt from (``config.yaml``) and the log the collapse note reads."""
    return [str(folder)] + [_file_digest(folder / name) for name in ("checkpoint-last.pth", "config.yaml", "log.csv")]


def _reference_fingerprint(ref) -> str | None:
    """The Eq. 8 reference by content: a loaded model's weights, a checkpoint's files, the DINO the hub serves."""
    if ref is None:
        return None
    if hasattr(ref, "state_dict"):  # a loaded model: its weights, not its repr
        return f"model:{_state_digest(ref)}"
    if isinstance(ref, (str, Path)) and str(ref).lower() != "dino":
        return _folder_fingerprint(ref)
    if str(ref).lower() == "dino":
        from ..api import dino_candidates

        found = next((p for p in dino_candidates() if p.is_dir() or p.is_file()), None)
        return f"dino:{_folder_fingerprint(found)}" if found is not None else "dino:none"
    return str(ref)
