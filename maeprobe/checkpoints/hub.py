"""Models by name, resolved the way users of timm and transformers expect.

* ``hf-hub:org/name`` (optionally ``@revision``) and ``timm/name``: the HuggingFace hub cache
  (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``). A transformers repository is
  returned as its snapshot folder; a timm repository as its weights file.
* official release file names (``mae_pretrain_vit_base.pth``, ``dino_vitbase16_pretrain.pth``,
  ``dinov2_vits14_pretrain.pth``, ``dinov2_vits14_reg4_pretrain.pth``, ``deit_base_patch16_224-b5f2ef4d.pth``,
  ...): the torch hub cache (``$TORCH_HOME/hub/checkpoints``, else ``~/.cache/torch/hub/checkpoints``), where
  ``torch.hub`` keeps them (DINO's ``hubconf.py`` and DeiT's ``models.py`` download them there).

A name that is not in the cache is downloaded only when offline mode is off (``HF_HUB_OFFLINE``,
``TRANSFORMERS_OFFLINE`` or ``MAEPROBE_OFFLINE`` unset) and the network answers; otherwise one line says
where the file was looked for. Existing paths are never treated as names.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import MaeprobeError
from ..validate import first_line, one_line

_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")

# Official releases outside the HuggingFace hub: file name -> URL (facebookresearch/mae, dino, dinov2 READMEs,
# moco-v3 CONFIG.md;
# facebookresearch/deit README_deit.md and models.py: the file name carries the first 8 hex digits of its SHA-256,
# which torch.hub checks).
_MAE = "https://dl.fbaipublicfiles.com/mae/{kind}/{name}"
_DINO = "https://dl.fbaipublicfiles.com/dino/{stem}/{name}"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/{stem}/{name}"
_DEIT = "https://dl.fbaipublicfiles.com/deit/{name}"
_MOCOV3 = "https://dl.fbaipublicfiles.com/moco-v3/{stem}/{name}"  # facebookresearch/moco-v3 CONFIG.md
_HF = "https://huggingface.co/{repo}"

# timm hub repositories that hold an official release file's weights (converted to timm's names): repository ->
# that release file. Either copy serves.
SAME_WEIGHTS = {
    "timm/deit_base_patch16_224.fb_in1k": "deit_base_patch16_224-b5f2ef4d.pth",
    "timm/deit_small_patch16_224.fb_in1k": "deit_small_patch16_224-cd65a155.pth",
    "timm/deit_tiny_patch16_224.fb_in1k": "deit_tiny_patch16_224-a1311bcf.pth",
    "timm/vit_base_patch16_224.dino": "dino_vitbase16_pretrain.pth",
    "timm/vit_small_patch16_224.dino": "dino_deitsmall16_pretrain.pth",
    "timm/vit_base_patch8_224.dino": "dino_vitbase8_pretrain.pth",
    "timm/vit_small_patch8_224.dino": "dino_deitsmall8_pretrain.pth",
}


def release_url(name: str) -> str | None:
    """Download address of an official MAE / DINO / DINOv2 / DeiT / MoCo v3 release file name, or None."""
    if m := re.fullmatch(r"mae_(pretrain|visualize|finetuned)_vit_(base|large|huge)(?:_full)?\.pth", name):
        return _MAE.format(kind={"pretrain": "pretrain", "visualize": "visualize", "finetuned": "finetune"}[m.group(1)],
                           name=name)
    if m := re.fullmatch(r"(dino_(?:deitsmall|vitbase)(?:8|16))_pretrain\.pth", name):
        return _DINO.format(stem=f"{m.group(1)}_pretrain", name=name)
    if m := re.fullmatch(r"(dinov2_vit[sblg]14)(_reg4)?_pretrain\.pth", name):
        return _DINOV2.format(stem=m.group(1), name=name)
    if re.fullmatch(r"deit_(?:tiny|small|base)(?:_distilled)?_patch16_(?:224|384)-[0-9a-f]{8}\.pth", name):
        return _DEIT.format(name=name)
    if m := re.fullmatch(r"(vit-[sb]-300ep)\.pth\.tar", name):
        return _MOCOV3.format(stem=m.group(1), name=name)
    return None


def equivalents(name: str) -> tuple[str, ...]:
    """``name`` and the other names of the same weights (``SAME_WEIGHTS``, both ways), ``name`` first."""
    others = [f for r, f in SAME_WEIGHTS.items() if r == name] + [r for r, f in SAME_WEIGHTS.items() if f == name]
    return (name, *others)


def placement(name: str) -> str:
    """Where to put the file(s) of ``name`` by hand and where to get them, as one line: a release file name ->
    its path in the torch hub cache and its download URL; a hub repository -> the HuggingFace cache layout."""
    if (url := release_url(name)) is not None:
        return f"{torch_cache() / name} (from {url})"
    repo = name[len("hf-hub:"):] if name.startswith("hf-hub:") else name
    folder = hf_cache() / ("models--" + repo.replace("/", "--"))
    files = "model.safetensors and config.json" if repo.startswith("timm/") else "the repository's files"
    return (f"{repo} as {files} in {folder / 'snapshots' / '<commit>'}/ with the text <commit> in "
            f"{folder / 'refs' / 'main'} (from {_HF.format(repo=repo)}, e.g. huggingface-cli download {repo})")


def hf_cache() -> Path:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return Path(os.environ.get("HF_HUB_CACHE", os.environ.get("HUGGINGFACE_HUB_CACHE", home / "hub")))


def torch_cache() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MAEPROBE_OFFLINE")


def offline_variables() -> list[str]:
    """The environment variables that turn offline mode on here (set to 1, true, yes or on), in a fixed order."""
    return [v for v in OFFLINE_VARIABLES if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]


def offline() -> bool:
    return bool(offline_variables())


def _offline_text() -> str:
    """'offline mode is on (MAEPROBE_OFFLINE is set)', naming the variables that are actually set."""
    names = offline_variables()
    return f"offline mode is on ({' and '.join(names)} {'is' if len(names) == 1 else 'are'} set)"


def is_name(source) -> bool:
    """True for ``hf-hub:``/``timm/`` names and release file names that are not existing paths."""
    if not isinstance(source, (str, os.PathLike)) or _exists(source):
        return False
    text = str(source)
    return text.startswith(("hf-hub:", "timm/")) or release_url(text) is not None


def _exists(source) -> bool:
    """Whether ``source`` names something on disk; a path the system cannot even look up (a component over 255
    bytes, a path over PATH_MAX, a NUL byte) is not an existing path, and the reader names it in one line."""
    try:
        os.stat(source)
    except (OSError, ValueError):
        return False
    return True


def resolve(source):
    """A local path for ``source``: itself when it exists or is not a name, else the cached (or downloaded)
    copy of the named model. Raises MaeprobeError with one line when it cannot be had."""
    if not is_name(source):
        return source
    text = str(source)
    if release_url(text) is not None:
        return _release(text)
    repo = text[len("hf-hub:"):] if text.startswith("hf-hub:") else text
    repo, _, revision = repo.partition("@")
    revision = revision or "main"
    if not _REPO.fullmatch(repo) or ".." in repo:
        raise MaeprobeError(f"{_shown(text)}: {_shown(repo)!r} is not a hub repository id; expected org/name "
                            "(letters, digits, '-', '_', '.')")
    if not _REVISION.fullmatch(revision) or ".." in revision.split("/") or revision.startswith("/"):
        raise MaeprobeError(f"{_shown(text)}: {_shown(revision)!r} is not a revision; expected a branch, tag or "
                            "commit name")
    return _hub_repo(repo, revision)


_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}")
_COMMIT = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,127}")


def _shown(text: str) -> str:
    return one_line(text, 120)


def _snapshot(repo: str, revision: str) -> Path | None:
    folder = hf_cache() / ("models--" + repo.replace("/", "--"))
    ref = folder / "refs" / revision
    commit = revision
    if ref.is_file():
        if ref.stat().st_size > 256:
            raise MaeprobeError(f"{ref}: not a hub cache reference (expected a commit hash)")
        commit = ref.read_text(errors="replace").strip()
        if not _COMMIT.fullmatch(commit):
            raise MaeprobeError(f"{ref}: {_shown(commit)!r} is not a commit hash (a damaged hub cache?)")
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    root = (folder / "snapshots").resolve()
    if not snapshot.resolve().is_relative_to(root):  # never a folder outside the cache
        raise MaeprobeError(f"hf-hub:{repo}@{_shown(revision)}: resolves outside the hub cache ({root})")
    return snapshot


def _from_snapshot(snapshot: Path) -> Path:
    """A transformers folder as a folder; a timm or open_clip repository as its weights file."""
    from .files import read_json

    config = snapshot / "config.json"
    if config.is_file() and "model_type" in read_json(config, "config.json"):
        return snapshot
    for name in _WEIGHTS:
        if (snapshot / name).is_file():
            return snapshot / name
    raise MaeprobeError(f"{snapshot}: a cached hub snapshot without weights ({', '.join(_WEIGHTS)})")


def _hub_repo(repo: str, revision: str) -> Path:
    snapshot = _snapshot(repo, revision)
    if snapshot is None:
        where = hf_cache() / ("models--" + repo.replace("/", "--"))
        if offline():
            raise MaeprobeError(f"hf-hub:{repo}: not in the HuggingFace cache ({where}) and {_offline_text()}; "
                                "download it where the network is reachable or unset "
                                f"{' and '.join(offline_variables())}")
        try:
            from huggingface_hub import snapshot_download

            snapshot = Path(snapshot_download(repo, revision=revision, cache_dir=str(hf_cache()),
                                              allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))
        except Exception as exc:  # network errors, unknown repositories, gated models
            first = first_line(exc, 200)
            raise MaeprobeError(f"hf-hub:{repo}: not in the HuggingFace cache ({where}) and the download "
                                f"failed ({first})") from None
    return _from_snapshot(snapshot)


def _release(name: str) -> Path:
    target = torch_cache() / name
    if target.is_file():
        return target
    if offline():
        raise MaeprobeError(f"{name}: not in the torch hub cache ({target.parent}) and {_offline_text()}; "
                            f"download it where the network is reachable or unset {' and '.join(offline_variables())}")
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(release_url(name), str(target), progress=False)
    except Exception as exc:
        first = first_line(exc, 200)
        raise MaeprobeError(f"{name}: not in the torch hub cache ({target.parent}) and the download from "
                            f"{release_url(name)} failed ({first})") from None
    return target
