"""Checks made before ``reproduce`` runs anything: the paths as the file system can take them, the folders it writes
into staying inside ``--out``, and every input image decoded once (so that no corrupt file stops a run after
hours of training)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..distributed import is_main
from ..errors import MaeprobeError
from ..io import write_text
from .runs import _small_text

NAME_MAX, PATH_MAX = 255, 4095  # bytes of one path component and of a whole path (Linux's limits)


def check_paths(**paths) -> None:
    """``--out``, ``--data`` and ``--eval-data`` (keyword = option name) as the file system can take them, checked
    before anything runs: every component at most 255 bytes and the whole path at most 4095 (beyond them the
    system refuses with ENAMETOOLONG), an input folder that exists, and no other error from looking them up.
    One line naming the option otherwise."""
    from ..validate import one_line

    for option, path in paths.items():
        if path is None:
            continue
        flag, text = "--" + option.replace("_", "-"), os.fspath(path)
        shown = one_line(text, 160) + ("..." if len(text) > 160 else "")
        raw = os.fsencode(text)
        long = next((part for part in raw.split(b"/") if len(part) > NAME_MAX), None)
        if long is not None:
            raise MaeprobeError(f"{flag} {shown}: a path component of {len(long):,} bytes; the file system allows "
                                f"{NAME_MAX} bytes per name")
        if len(raw) > PATH_MAX:
            raise MaeprobeError(f"{flag} {shown}: a path of {len(raw):,} bytes; the file system allows {PATH_MAX}")
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            if option != "out":
                raise MaeprobeError(f"{flag} {shown}: no such folder; expected a folder of images") from None
        except (OSError, ValueError) as exc:  # ELOOP, EACCES, an embedded NUL byte
            raise MaeprobeError(f"{flag} {shown}: cannot be used ({getattr(exc, 'strerror', None) or exc})") from None


def check_out_tree(root: Path, folders) -> None:
    """The folders ``reproduce`` writes into under ``--out`` (``folders``: relative paths) must stay inside it: a
    stored output folder is untrusted input, and a symbolic link there (``findings -> ~/.ssh``) would send the
    verdicts, tables and figures elsewhere. Links that stay inside are fine; one line otherwise."""
    base = root.resolve()
    for relative in folders:
        path = root / relative
        try:
            inside = not os.path.lexists(path) or path.resolve().is_relative_to(base)
        except (OSError, RuntimeError):  # a link loop
            inside = False
        if not inside:
            raise MaeprobeError(f"{path}: a symbolic link leading outside --out {root}; maeprobe writes only inside "
                                "the output folder (remove the link)")


CHECKED = "checked-images.json"  # runs/CHECKED: the image folders already decoded in full (check_inputs)


def check_inputs(root: Path, data, evalset, size: int, fingerprints: dict, say) -> None:
    """Before any training: decode every image of ``--data`` (what pretraining and the probe set read) and the
    files of ``--eval-data`` that the linear probes use, once, and refuse the first unreadable one with one line
    naming it (``toydata.check_image_files``), so that a corrupt file never stops a run after hours of
    training. A folder already checked, unchanged (the same ``_folder_fingerprint``: every file's path, size and
    modification time) at the same input size, is recorded in ``runs/checked-images.json`` and not decoded
    again."""
    from ..data import find_images
    from .toydata import check_image_files

    record = root / "runs" / CHECKED
    try:
        done = json.loads(_small_text(record, "maeprobe's record of checked image folders")) \
            if record.is_file() else []
    except (MaeprobeError, ValueError, RecursionError):
        done = []
    done = done if isinstance(done, list) else []
    for flag, folder, fingerprint, files in (
            ("--data", data, fingerprints["data"], lambda: find_images(data)),
            ("--eval-data", getattr(evalset, "folder", None), fingerprints["eval_data"], lambda: evalset.files())):
        if folder is None:
            continue
        entry = [flag, str(Path(folder).resolve()), fingerprint, int(size)]
        if entry in done:
            continue
        paths = files()
        say(f"checking {len(paths):,} images of {flag} {folder} (each decoded once, before any training)")
        check_image_files(paths, size, f"{flag} {folder}")
        done = [e for e in done if e != entry][-15:] + [entry]
        if is_main():
            write_text(record, json.dumps(done))
