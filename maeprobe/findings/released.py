"""The released checkpoints of ``--scale released``: finding them in the hub caches (``released_checkpoints``),
loading them under labels that say whether their contents match the release, bringing DINO and DeiT to MAE's
input size, and the Fig. 4-style renders of the released MAE."""
from __future__ import annotations

from pathlib import Path

from ..errors import MaeprobeError
from .fingerprints import _file_digest, _folder_fingerprint
from .suite import RELEASED


def released_checkpoints(roles=None) -> tuple[dict[str, tuple[Path, str]], list[str]]:
    """The released checkpoints found locally (or downloaded when online): role -> (path, label), and one
    text per missing role naming, for each file that serves, where to place it by hand and its download URL.
    ``roles``: only these roles (default: every role of ``suite.RELEASED``).

    A role's candidates (``suite.RELEASED``) are widened with the other names of the same weights
    (``hub.SAME_WEIGHTS``): DeiT's own ``deit_base_patch16_224-b5f2ef4d.pth`` in the torch hub cache serves as
    well as timm's ``timm/deit_base_patch16_224.fb_in1k`` snapshot."""
    from ..checkpoints.hub import equivalents, offline, placement, resolve

    found, missing = {}, []
    for role, label, listed in RELEASED:
        if roles is not None and role not in roles:
            continue
        candidates = tuple(dict.fromkeys(name for c in listed for name in equivalents(c)))
        name, path = next(((c, p) for c in candidates if (p := _cached(c)) is not None), (None, None))
        if path is None and not offline():
            try:
                name, path = candidates[0], Path(resolve(candidates[0]))
            except MaeprobeError:
                name, path = None, None
        if path is not None:
            found[role] = (path, f"{label}: {name}")
            continue
        missing.append(f"{label}: {' or '.join(placement(c) for c in candidates)}")
    return found, missing


def _cached(name: str) -> Path | None:
    from ..checkpoints.hub import _from_snapshot, _snapshot, torch_cache

    if name.endswith((".pth", ".pth.tar")):  # a release file in the torch hub cache (MoCo v3's: .pth.tar)
        path = torch_cache() / name
        return path if path.is_file() else None
    snapshot = _snapshot(name, "main")
    return _from_snapshot(snapshot) if snapshot is not None else None


def load_released(found: dict) -> tuple[dict, dict]:
    """The found checkpoints loaded: role -> (model, label), and role -> [path, content digest] (the stored
    verdicts' key)."""
    from ..checkpoints import load

    checkpoints = {r: [str(p), _file_digest(p) if Path(p).is_file() else _folder_fingerprint(p)]
                   for r, (p, _) in found.items()}
    models = {}
    for role, (path, label) in found.items():
        model = load(path)
        models[role] = (model, _release_label(label, model, checkpoints[role][1]))
    return models, checkpoints


def check_distinct(found: dict, checkpoints: dict) -> None:
    """Refuse two roles of one content (``checkpoints[role] = [path, digest]``): a model compared with itself, e.g.
    DINO's file linked under MoCo v3's name."""
    seen = {}
    for role, (_, label) in found.items():
        digest = checkpoints[role][1]
        if digest in seen:
            raise MaeprobeError(f"{label} has the same contents as {seen[digest]}; each released checkpoint must be "
                                "its own file (a copy or a link?)")
        seen[digest] = label


def resize_to_mae(models: dict, size: int) -> None:
    """The other released models (DINO, DeiT, MoCo v3) at MAE's input size ``size`` (in place), resampled by the
    family's own rule."""
    for role in [r for r in models if r != "mae"]:  # compared with MAE at MAE's input size
        model, label = models[role]
        if model.config.img_size != size:
            from ..models import resize_input

            try:
                resized = resize_input(model, size)
            except MaeprobeError as exc:
                raise MaeprobeError(f"{label}: cannot be compared with the MAE at its {size} px ({exc})") from None
            rule = getattr(getattr(model, "checkpoint", None), "pos_resample", "timm")
            models[role] = (resized, f"{label}; resampled from {model.config.img_size} px to MAE's {size} px "
                                     f"(position embedding: {rule})")


def _release_label(label: str, model, digest: str | None) -> str:
    """``label`` ('<role>: <file or hub name>') when the file's contents match that release
    (``originals.release_mismatch``: architecture, parameter count and, where the name carries it, the SHA-256
    prefix), else '<role>: file named like <name> but its contents do not match (why)': a random or other model
    stored under a release's name is never described as the release."""
    from ..checkpoints.originals import release_mismatch

    role, _, name = label.rpartition(": ")
    sha256 = digest.split(":", 1)[1] if isinstance(digest, str) and ":" in digest else None
    why = release_mismatch(name, model, sha256)
    return label if why is None else f"{role}: file named like {name} but its contents do not match ({why})"


def _released_renders(model, data, folder: Path, say) -> None:
    """Fig. 4-style decoder attention renders of the released MAE on the first two probe photographs."""
    from ..api import render_attention
    from ..data import builtin_images, find_images, open_image

    sources = [open_image(p) for p in find_images(data)[:2]] if data else [img for _, img in builtin_images()[:2]]
    for i, image in enumerate(sources):
        render_attention(model, image, folder / f"fig4-render-{i}", device="cpu")
    say(f"renders: {folder}/fig4-render-*.png")
