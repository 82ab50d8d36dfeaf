"""A run folder holds one run, written by one process at a time.

* **Ownership.** A run's files (``config.yaml``, ``log.csv``, its checkpoint, ``model.safetensors``; an evaluation's
  ``results.json``) are replaced or appended to only when they are this run's: the folder's ``config.yaml`` (which
  every run writes before anything else) must hold this run's settings (``engine.changed_settings``: only how a run
  runs may differ), and ``log.csv`` must be a maeprobe log. A file of the user's or of another run (another seed,
  another checkpoint name, ``pretrain --out DIR/b.pth`` beside ``DIR/a.pth``) is refused with one line, before
  anything is built or written, instead of being overwritten. The same run started again may resume, or start
  over with ``run.resume=false``.
* **One writer.** While a run writes its folder it holds an exclusive ``flock`` on ``.maeprobe-run.lock`` there
  (created by maeprobe, removed when the run ends); a second run into the same folder is refused with one line
  naming it. A run that died without cleaning up (SIGKILL, power loss) leaves the file but not the lock: the kernel
  releases ``flock`` locks with the process, so the next run takes it over.
* Under torchrun only rank 0 takes the lock and checks the files; every process then meets the same refusal.
"""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ..errors import MaeprobeError

LOCK_NAME = ".maeprobe-run.lock"
LOCK_TEXT = b"maeprobe run lock"
LOG_HEADER = "step,epoch,lr,loss,parts,images_per_s"


def _shown(value) -> str:
    from ..validate import one_line

    return one_line(value, 300)


def saved_settings(path: Path) -> dict:
    """The flat settings of the ``config.yaml`` at ``path``, read as untrusted input: a regular UTF-8 file of at most
    ``MAX_RECIPE_BYTES``, YAML as the run wrote it without anchors or aliases (``config.load_saved_yaml``), holding a
    mapping. One line otherwise."""
    import yaml

    from .config import MAX_RECIPE_BYTES, load_saved_yaml
    from .engine import _flat

    what = "expected the config.yaml of a maeprobe run; maeprobe does not replace a file it did not write"
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECIPE_BYTES:
            raise MaeprobeError(f"{_shown(path)}: not a regular file of at most {MAX_RECIPE_BYTES:,} bytes; {what}")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise MaeprobeError(f"{_shown(path)}: not UTF-8 text; {what}") from None
    except OSError as exc:
        raise MaeprobeError(f"{_shown(path)}: cannot be read ({exc.strerror or type(exc).__name__}); {what}") from None

    try:
        data = load_saved_yaml(text)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise MaeprobeError(f"{_shown(path)}: not a maeprobe run's settings; {what}")
    return _flat(data)


def check_owner(folder: Path, config: dict, outputs: list[str], resume: Path | None = None) -> None:
    """Refuse (one line) to run into ``folder`` when one of ``outputs`` (file names the run writes there) exists and
    is not this run's (see the module's notes). ``resume``: the checkpoint the run would resume from, when it
    exists (a refusal then says that it cannot resume from it). Nothing is written."""
    from .engine import _flat, changed_settings, saved_setting

    existing = [name for name in outputs if os.path.lexists(folder / name)]
    if not existing:
        return
    advice = "use another run.output_dir (or --out) or move it away"
    for name in existing:
        if (folder / name).is_symlink():
            raise MaeprobeError(f"{_shown(folder / name)}: is a symbolic link; maeprobe replaces only the files of its "
                                f"own run: {advice}")
    config_path = folder / "config.yaml"
    if not os.path.lexists(config_path):
        raise MaeprobeError(f"{_shown(folder / existing[0])}: exists without the config.yaml a maeprobe run writes "
                            f"first; maeprobe does not replace a file it did not write: {advice}")
    saved, now = saved_settings(config_path), _flat(config)
    changed = changed_settings(saved, now)
    if changed:
        key = changed[0]
        before, here = _shown(repr(saved_setting(saved, key))), _shown(repr(now.get(key, "<absent>")))
        if resume is not None and resume.is_file():
            raise MaeprobeError(f"{_shown(resume)}: cannot resume from it: its run was trained with {key}={before} "
                                f"(its config.yaml), this run has {here} ({len(changed)} setting(s) differ); use "
                                "another run.output_dir or the original settings")
        raise MaeprobeError(f"{_shown(folder)}: holds another run ({key}={before} there, {here} here; {len(changed)} "
                            "setting(s) differ); maeprobe does not replace another run's config.yaml and log.csv: use "
                            "another run.output_dir (or --out) or move that run away")
    log = folder / "log.csv"
    if "log.csv" in existing:
        try:
            with open(log, "rb") as f:
                first = f.readline(len(LOG_HEADER) + 2).decode("utf-8", "replace").strip()
        except OSError as exc:
            raise MaeprobeError(f"{_shown(log)}: cannot be read ({exc.strerror or exc})") from None
        if first not in ("", LOG_HEADER):
            raise MaeprobeError(f"{_shown(log)}: not the log of a maeprobe run (its first line is not "
                                f"{LOG_HEADER!r}); maeprobe does not append to a file it did not write: {advice}")


class RunLock:
    """The exclusive lock of a run folder (``flock`` on ``LOCK_NAME``; see the module's notes). ``acquire`` creates
    the folder when missing (``release(remove_new_folders=True)`` removes what it created, when still empty)."""

    def __init__(self, folder: Path):
        self.folder, self.path, self.fd, self.created = Path(folder), Path(folder) / LOCK_NAME, None, []

    def acquire(self) -> "RunLock":
        import fcntl

        self.created = [p for p in [self.folder, *self.folder.parents] if not os.path.lexists(p)][::-1]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MaeprobeError(f"{_shown(self.folder)}: cannot write there ({exc.strerror or exc})") from None
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):  # retried only when another run removed or replaced the file in between
            made = True
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                made = False
                try:
                    fd = os.open(self.path, flags)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise MaeprobeError(f"{_shown(self.path)}: cannot open maeprobe's lock file there "
                                        f"({exc.strerror or exc}); move it away") from None
            except OSError as exc:
                raise MaeprobeError(f"{_shown(self.folder)}: cannot write there ({exc.strerror or exc})") from None
            try:
                info = os.fstat(fd)
                text = os.pread(fd, 256, 0)
                if not stat.S_ISREG(info.st_mode) or not made and text and not text.startswith(LOCK_TEXT):
                    raise MaeprobeError(f"{_shown(self.path)}: exists and is not maeprobe's lock file; move it away")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pid = text[len(LOCK_TEXT):].decode("ascii", "replace").strip(" ,\n")
                    who = f" ({pid})" if pid[:8] == "process " and pid[8:].isdigit() else ""
                    raise MaeprobeError(f"{_shown(self.folder)}: another maeprobe run{who} is writing this run folder; "
                                        "wait for it to end or use another run.output_dir") from None
                try:
                    same = os.stat(self.path, follow_symlinks=False)
                except FileNotFoundError:
                    same = None
                if same is None or (same.st_dev, same.st_ino) != (info.st_dev, info.st_ino):
                    os.close(fd)  # the file was removed or replaced between open and flock: take the new one
                    continue
                os.ftruncate(fd, 0)
                os.pwrite(fd, LOCK_TEXT + f", process {os.getpid()}\n".encode(), 0)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                if made:
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
                self._remove_new_folders()
                raise
            self.fd = fd
            return self
        self._remove_new_folders()
        raise MaeprobeError(f"{_shown(self.folder)}: its run lock kept changing while maeprobe tried to take it; "
                            "try again")

    def release(self, *, remove_new_folders: bool = False) -> None:
        """Remove the lock file and let go of the lock (in that order: a run waiting for the file then finds it gone
        and makes a new one); ``remove_new_folders``: also the folders ``acquire`` created, when they are empty (a
        refused run leaves nothing behind)."""
        if self.fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        finally:
            os.close(self.fd)
            self.fd = None
        if remove_new_folders:
            self._remove_new_folders()

    def _remove_new_folders(self) -> None:
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                break


def agree(error: str | None) -> None:
    """Under torchrun, rank 0's verdict for every process (only rank 0 checks the folder); raised when there is
    one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise MaeprobeError(error)


@contextlib.contextmanager
def claimed(folder: Path, config: dict, outputs: list[str], *, rank: int, resume: Path | None = None):
    """Hold ``folder`` for this run while the block runs: lock it and check its files (``RunLock``, ``check_owner``)
    on rank 0, refuse on every process if rank 0 could not. A refusal raised inside the block (before the run wrote
    anything) removes the folders the lock created."""
    lock, error = RunLock(folder), None
    if rank == 0:
        try:
            lock.acquire()
            try:
                check_owner(folder, config, outputs, resume)
            except MaeprobeError:
                lock.release(remove_new_folders=True)
                raise
        except MaeprobeError as exc:
            error = str(exc)
    agree(error)
    try:
        yield lock
    except MaeprobeError:
        lock.release(remove_new_folders=True)
        raise
    finally:
        lock.release()
