"""Images in: folders read recursively, the built-in sample photographs, and the evaluation transform.

Any mode (grey, RGBA, 16-bit, palette, CMYK) becomes RGB, each by one fixed rule that does not depend on the
image's own range (``to_rgb``): two images one level apart stay at most one grey apart. An image already at the
model's input size is used as is; others are resized on the shorter side (bicubic, antialiased) and
centre-cropped. Pixels are normalised with the checkpoint's mean/std.

File and folder names reach messages only through ``validate.one_line`` (a newline in a name cannot start a
line of its own); an image that cannot be used is skipped with one warning naming it, also when a DataLoader
worker process decoded it (the worker hands the reason to the main process, which warns).
"""
from __future__ import annotations

import importlib.util
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import MaeprobeError
from .limits import LimitError, limit
from .validate import first_line, one_line

# scikit-image / scikit-learn / matplotlib ship these photographs inside their wheels (no download).
BUILTIN_SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                   "immunohistochemistry", "camera")


def to_rgb(img: Image.Image, name: str | None = None) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, each mode by one fixed rule, never by the image's own min / max (which
    gave two 16-bit images one level apart different greys: a 0..255 image was read as 8-bit, a 0..256 one was
    divided by 257):

    * 16-bit integers (``I;16*``, and ``I``, as which Pillow reads 16-bit PNGs and TIFFs): grey = round(v / 257),
      the exact inverse of 8 -> 16 bit expansion (v = 257 g), computed in integers; 32-bit ``I`` values are read
      on the same 0..65535 scale, below 0 as black and above 65535 as white;
    * floats (``F``): intensities in [0, 1] (scikit-image's and TIFF's convention), grey = round(255 x), clipped;
      NaN or infinite pixels are refused (``name`` names the image in that message).
    """
    if img.mode == "RGB":
        return img
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise MaeprobeError(f"{name or 'a floating-point image'}: holds NaN or infinite pixels; expected finite "
                                "values")
        grey = np.floor(np.clip(arr * np.float32(255.0), 0, 255) + np.float32(0.5))
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if img.mode.startswith("I"):  # I, I;16, I;16B, I;16L, I;16N, I;16S: integer levels on a 16-bit scale
        levels = np.clip(np.asarray(img), 0, 65535).astype(np.int32)
        return Image.fromarray(((2 * levels + 257) // 514).astype(np.uint8)).convert("RGB")  # round(v / 257)
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")  # L, LA, RGBA (alpha dropped), CMYK, YCbCr, 1


# Raster formats decoded in-process by Pillow whose header states the image size. Left out: formats that run
# other programs (EPS: Ghostscript), hold other images whose size the header does not state (ICO, ICNS, CUR,
# MPO, DCX, FLI) or are rarely photographs (scientific and game formats), which widen the parser surface.
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM", "TGA", "JPEG2000", "QOI", "SGI", "PCX", "AVIF")


def check_image_size(width: int, height: int, name) -> None:
    """Refuse, before decoding or resizing, an image whose pixel count or aspect ratio exceeds maeprobe's limits
    (``MAEPROBE_MAX_IMAGE_PIXELS``, ``MAEPROBE_MAX_ASPECT``): a 274-byte 1 x 100000 PNG would otherwise become a
    64 x 6,400,000 intermediate image when its shorter side is resized to 64."""
    if width < 1 or height < 1:
        raise MaeprobeError(f"{name}: an image of {width}x{height} pixels; expected a non-empty image")
    pixels, bound = width * height, limit("MAEPROBE_MAX_IMAGE_PIXELS")
    if pixels > bound:
        raise LimitError(f"{name}: {width}x{height} = {pixels:,} pixels exceeds maeprobe's limit of {bound:,} "
                         "(raise it with the environment variable MAEPROBE_MAX_IMAGE_PIXELS)")
    aspect, bound = max(width, height) / min(width, height), limit("MAEPROBE_MAX_ASPECT")
    if aspect > bound:
        raise LimitError(f"{name}: {width}x{height} has an aspect ratio of {aspect:.0f}:1, beyond maeprobe's limit "
                         f"of {bound}:1 (raise it with the environment variable MAEPROBE_MAX_ASPECT)")


def open_image(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Decode an image file fully and return it as RGB; a file that is not a readable image, or one beyond
    the size limits (``check_image_size``, checked from the header before decoding), is a MaeprobeError.

    ``min_side``: the shorter side that the caller will resize to. A JPEG at least twice that size is decoded
    at a reduced scale (Pillow's draft mode: 1/2, 1/4 or 1/8 in the DCT domain, never below ``min_side``),
    which is several times faster than decoding every pixel and resizing them afterwards.
    """
    name = one_line(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise MaeprobeError(f"{name}: not a regular file; expected an image file")
        with warnings.catch_warnings():  # maeprobe's own pixel limit replaces Pillow's decompression-bomb check
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path, formats=FORMATS)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
            with img:
                check_image_size(img.width, img.height, name)
                image = _decode(img, min_side, name)
                check_image_size(image.width, image.height, name)
                return image
    except MaeprobeError:
        raise
    except MemoryError:
        raise MaeprobeError(f"{name}: ran out of memory decoding it") from None
    except Exception as exc:  # noqa: BLE001 - an untrusted file: any decoder's failure is "not readable"
        # (Pillow's usual ones: UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error, ...;
        # its C plugins raise RuntimeError, e.g. an AVIF whose coded picture is damaged)
        raise MaeprobeError(f"{name}: not a readable image ({first_line(exc, 200)})") from None


def _decode(img: Image.Image, min_side: int | None, name: str | None = None) -> Image.Image:
    if min_side and img.format == "JPEG" and min(img.size) >= 2 * min_side:
        scale = min_side / min(img.size)
        img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
    img.load()
    return to_rgb(img, name).copy()


def builtin_images() -> list[tuple[str, Image.Image]]:
    """Natural photographs that ship inside installed packages: (name, RGB image)."""
    import skimage.data

    images: list[tuple[str, Image.Image]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in BUILTIN_SKIMAGE:
            try:
                images.append((f"skimage:{name}", to_rgb(Image.fromarray(getattr(skimage.data, name)()))))
            except Exception:  # a future scikit-image may move a photo to its download set
                continue
        try:  # two views of one scene: one independent unit (``BUILTIN_SOURCES``)
            left, right, _ = skimage.data.stereo_motorcycle()
            images += [("skimage:motorcycle_left", Image.fromarray(left)),
                       ("skimage:motorcycle_right", Image.fromarray(right))]
        except Exception:
            pass
    # scikit-learn's two sample photos, read from its package folder (importing sklearn takes seconds)
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images"
        for filename in ("china.jpg", "flower.jpg"):
            if (folder / filename).is_file():
                with Image.open(folder / filename) as img:
                    images.append((f"sklearn:{filename}", to_rgb(img).copy()))
    try:
        from matplotlib.cbook import get_sample_data

        with get_sample_data("grace_hopper.jpg") as f:
            images.append(("matplotlib:grace_hopper.jpg", to_rgb(Image.open(f)).copy()))
    except Exception:
        pass
    if not images:
        raise MaeprobeError("no built-in sample images found (scikit-image, scikit-learn or matplotlib missing); "
                            "pass --images DIR")
    return images


# Built-in photos that are not independent of each other: name -> the unit they share.
BUILTIN_SOURCES = {"skimage:motorcycle_left": "skimage:motorcycle", "skimage:motorcycle_right": "skimage:motorcycle"}


def builtin_source(name: str) -> str:
    """The independent unit of a built-in photo (its own name, but for the stereo pair)."""
    return BUILTIN_SOURCES.get(name, name)


def _image_extensions() -> set[str]:
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and fmt in FORMATS}


def shown_path(path) -> str:
    """A path as one escaped line for a message (``validate.one_line``), its middle cut when it is very long (a
    folder nested 2,000 levels deep stays recognisable by its start and its end)."""
    text = one_line(path)
    return text if len(text) <= 300 else f"{text[:150]}...{text[-120:]}"


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by path. Raises if there are none.

    The walk keeps its own list of folders to visit instead of recursing (a tree nested thousands of levels
    deep is walked like a flat one; pathlib's recursive glob overflowed Python's stack at ~1,000 levels), does
    not follow links to folders (a link to the folder itself or to a parent would never end; links to files are
    followed, as before), visits every folder once (by device and inode: a bind mount of a parent cannot loop
    either) and skips, with one warning, a folder below ``folder`` that the system refuses to list (no
    permission, a path beyond PATH_MAX). A ``folder`` that cannot be read at all is a MaeprobeError naming it.
    """
    folder = Path(folder)
    shown = shown_path(folder)
    try:
        info = os.stat(folder)  # a link named on the command line is followed
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or first_line(exc, 120)
        raise MaeprobeError(f"{shown}: not a folder of images ({reason})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise MaeprobeError(f"{shown}: not a folder of images")
    extensions = _image_extensions()
    paths: list[Path] = []
    pending, seen = [folder], {(info.st_dev, info.st_ino)}
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                listed = list(entries)
        except OSError as exc:
            if current == folder:
                raise MaeprobeError(f"{shown}: cannot list the folder ({exc.strerror or type(exc).__name__})") \
                    from None
            warnings.warn(f"skipping the folder {shown_path(current)}: cannot list it "
                          f"({exc.strerror or type(exc).__name__})", stacklevel=2)
            continue
        for entry in listed:
            is_folder = False
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
                if not is_folder:
                    if os.path.splitext(entry.name)[1].lower() in extensions and entry.is_file():
                        paths.append(Path(entry.path))
                    continue
                below = entry.stat(follow_symlinks=False)
            except OSError as exc:
                if is_folder:  # e.g. its path is longer than PATH_MAX
                    warnings.warn(f"skipping the folder {shown_path(entry.path)}: cannot list it "
                                  f"({exc.strerror or type(exc).__name__})", stacklevel=2)
                continue  # else a link that loops or leads nowhere: not an image file
            if (below.st_dev, below.st_ino) not in seen:
                seen.add((below.st_dev, below.st_ino))
                pending.append(Path(entry.path))
    if not paths:
        raise MaeprobeError(f"{shown}: no image files found in it or its nested folders (looked for "
                            f"{', '.join(sorted(extensions)[:8])}, ...)")
    return sorted(paths)


def fit_to_size(img: Image.Image, img_size: int) -> Image.Image:
    """RGB image at the model's input size: as is when it already is, else shorter side resized
    (bicubic, antialiased) and centre-cropped. The arithmetic of torchvision's ``Resize(img_size)`` +
    ``CenterCrop(img_size)`` on PIL images, done with Pillow directly (no transform objects per image)."""
    img = to_rgb(img)
    if img.size == (img_size, img_size):
        return img
    w, h = img.size
    check_image_size(w, h, "an image")
    if w <= h:
        new_w, new_h = img_size, int(img_size * h / w)
    else:
        new_w, new_h = int(img_size * w / h), img_size
    img = img.resize((new_w, new_h), Image.BICUBIC)  # Pillow antialiases when it shrinks
    left, top = int(round((new_w - img_size) / 2.0)), int(round((new_h - img_size) / 2.0))
    return img.crop((left, top, left + img_size, top + img_size))


def make_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """PIL image -> normalised tensor [3, img_size, img_size] (resize shorter side + centre crop, then
    (x / 255 - mean) / std, as torchvision's ToDtype(scale=True) + Normalize)."""
    mean_a, std_a = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)

    def transform(img: Image.Image) -> torch.Tensor:
        x = np.asarray(fit_to_size(img, img_size), dtype=np.float32)  # [H, W, 3], a new array
        x /= np.float32(255.0)
        x -= mean_a
        x /= std_a
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # [3, H, W]

    return transform


@dataclass
class ImageItem:
    """One image: a file (``path``) or a decoded image. ``source`` names its independent unit when several
    items come from one photograph (e.g. the two views of scikit-image's stereo motorcycle); None: the item
    is its own unit."""

    name: str
    path: Path | None = None
    image: Image.Image | None = None
    source: str | None = None


# What a bootstrap interval resamples (``resample_units``): each image, or each image's parent folder.
RESAMPLE_BY = ("image", "folder")


def resample_units(items: Sequence[ImageItem], resample_by="image") -> torch.Tensor:
    """The independent unit of every item as integers 0, 1, ... in order of first appearance ([N] long).

    Args:
        items: the images.
        resample_by: ``'image'`` (default): each image is a unit, except items that name a shared ``source``
            (the built-in stereo pair); ``'folder'``: all images of one folder form a unit (e.g. one folder
            per scene, patient or video); or a sequence of one label per image naming the grouping.
    """
    if resample_by is None:
        resample_by = "image"
    if isinstance(resample_by, torch.Tensor):
        resample_by = resample_by.tolist()
    if isinstance(resample_by, np.ndarray):
        resample_by = resample_by.tolist() if resample_by.ndim == 1 else resample_by
    if isinstance(resample_by, (bytes, bytearray)) or not isinstance(resample_by, (str, Sequence)):
        raise MaeprobeError(f"resample_by must be one of {', '.join(RESAMPLE_BY)} or one label per image, got "
                            f"{type(resample_by).__name__}")
    if isinstance(resample_by, str):
        if resample_by not in RESAMPLE_BY:
            raise MaeprobeError(f"--resample-by must be one of {', '.join(RESAMPLE_BY)} (or, in Python, one "
                                f"label per image), got {resample_by!r}")
        if resample_by == "folder":
            labels = [str(item.path.parent) if item.path is not None else (item.source or item.name)
                      for item in items]
        else:
            labels = [item.source or item.name for item in items]
    else:
        labels = list(resample_by)
        if len(labels) != len(items):
            raise MaeprobeError(f"resample_by gives {len(labels)} labels for {len(items)} images; "
                                "expected one label per image")
    return unit_indices(labels)


def unit_indices(labels: Sequence) -> torch.Tensor:
    """Labels -> integers 0, 1, ... in order of first appearance ([N] long)."""
    numbers: dict = {}
    out = []
    for label in labels:
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (str, int, np.integer)):
            raise MaeprobeError(f"a unit label must be a string or an integer, got {type(label).__name__}")
        key = label.item() if isinstance(label, np.integer) else label
        out.append(numbers.setdefault(key, len(numbers)))
    return torch.as_tensor(out, dtype=torch.long)


class SkippedImage(NamedTuple):
    """An image that ``ImageDataset`` could not use: its index and the reason, one line that names it. The main
    process warns (``collate_images``): a warning raised inside a DataLoader worker would bypass the caller's
    warning handling (and, with the spawn start method, print Python's two-line format)."""

    index: int
    message: str


class ImageDataset(Dataset):
    """Images by index; ``__getitem__`` returns (tensor, index), or a ``SkippedImage`` for an image that cannot be
    used (an unreadable file, a decoder failure of any kind, an image beyond the limits)."""

    def __init__(self, items: list[ImageItem], transform: Callable, min_side: int | None = None):
        self.items, self.transform, self.min_side = items, transform, min_side
        for name in ("MAEPROBE_MAX_IMAGE_PIXELS", "MAEPROBE_MAX_ASPECT"):
            limit(name)  # a bad value is one refusal here, not a reason to skip every image in the workers

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Image.Image | None:
        """The image of ``index``, or None (with a warning naming it) when it cannot be read."""
        item = self.items[index]
        if item.image is not None:
            return item.image
        try:
            return open_image(item.path, self.min_side)
        except MaeprobeError as exc:
            warnings.warn(f"skipping {one_line(exc)}", stacklevel=2)
            return None

    def __getitem__(self, index: int):
        item = self.items[index]
        try:
            img = item.image if item.image is not None else open_image(item.path, self.min_side)
        except MaeprobeError as exc:  # open_image names the file
            return SkippedImage(index, one_line(exc))
        try:
            return self.transform(img), index
        except (MaeprobeError, MemoryError) as exc:  # e.g. an in-memory image beyond the limits
            return SkippedImage(index, f"{one_line(item.name)}: {first_line(exc)}")


def collate_images(batch) -> tuple[torch.Tensor | None, torch.Tensor, list[str]]:
    """(images [B, 3, H, W] or None when none was usable, their indices [B], the one-line reasons of the skipped
    ones): runs in the DataLoader's worker, the reasons are warned about by the main process."""
    usable = [b for b in batch if b is not None and not isinstance(b, SkippedImage)]
    skipped = [b.message for b in batch if isinstance(b, SkippedImage)]
    if not usable:
        return None, torch.zeros(0, dtype=torch.long), skipped
    return torch.stack([b[0] for b in usable]), torch.tensor([b[1] for b in usable]), skipped


def collate_skip_none(batch):
    """Stack (tensor, index) pairs, dropping images that could not be used (None or ``SkippedImage``)."""
    images, indices, _ = collate_images(batch)
    return None if images is None else (images, indices)


def image_items(images: str | os.PathLike | None) -> list[ImageItem]:
    """A folder (recursive, sorted) or, with None, the built-in photographs."""
    if images is None:
        return [ImageItem(name, image=img, source=builtin_source(name)) for name, img in builtin_images()]
    return [ImageItem(str(p), path=p) for p in find_images(images)]
