"""The probe loop: images -> hooked forward pass per batch -> every reducer's update.

One forward pass per batch feeds all metrics (their capture requests are merged). Under
torch.distributed each process takes every world_size-th image and the reducers' sums are
all-reduced at the end, so every process returns the same table.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from .capture import CaptureRequest, StopForward, capture, last_event
from .data import ImageDataset, ImageItem, collate_images, image_items, make_transform, resample_units
from .errors import MaeprobeError
from .masking import MaskInfo, mask_noise
from .metrics.base import Reducer
from .reference import Reference

# Attention statistics are computed from q and k in blocks of this many query rows (no N x N map is kept);
# 0 materialises full [B, H, N, N] maps. Chosen with benchmarks/block_queries.py (README there).
DEFAULT_BLOCK_QUERIES = 64

DTYPES = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model(model, **load_kwargs):
    """A loaded model, or a checkpoint path to load."""
    if isinstance(model, (str, os.PathLike)):
        from .checkpoints import load

        return load(model, **load_kwargs)
    return model


def default_workers(device: str | torch.device = "cpu") -> int:
    """DataLoader workers for decoding image files. On CUDA the main process mostly waits for the GPU: one
    worker per CPU core but one, at most 8. On CPU, torch's threads already use every core for the model, and
    workers would compete with them (on 2 cores one worker made a 64 px probe 40% slower than decoding in the
    main process; ``benchmarks/jpeg_folder.py``): none."""
    if torch.device(device).type == "cuda":
        return max(1, min(8, (os.cpu_count() or 1) - 1))
    return 0


def _batches(model, images, batch_size: int, num_workers: int | None, device="cpu",
             resample_by="image") -> tuple[Iterable, int, torch.Tensor]:
    """Yield (images [B, 3, H, W], global indices [B]) for this process's shard; also returns the shard's size
    and the independent unit of every image ([N], ``data.resample_units``)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    if isinstance(images, torch.Tensor):
        size = getattr(getattr(model, "config", None), "img_size", None)
        channels = getattr(getattr(model, "config", None), "in_chans", 3)
        if images.ndim != 4 or images.shape[1] != channels or (size is not None and tuple(images.shape[2:]) != (
                size, size)):
            raise MaeprobeError(f"an image tensor must be [N, {channels}, {size}, {size}] (normalised, at the model's "
                                f"input size), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise MaeprobeError(f"an image tensor must hold normalised floats, got {images.dtype}")
        units = _units_in_memory(images.shape[0], resample_by)
        indices = torch.arange(images.shape[0])[rank::world]

        def tensor_batches():
            for start in range(0, len(indices), batch_size):
                idx = indices[start:start + batch_size]
                yield images[idx], idx

        return tensor_batches(), len(indices), units
    from .checkpoints import normalization

    mean, std = normalization(model)
    size = model.config.img_size
    if isinstance(images, ImageDataset):
        dataset = images
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        _units_in_memory(len(images), resample_by)  # 'folder' needs files
        items = [ImageItem(f"image{i}", image=img) for i, img in enumerate(images)]
        dataset = ImageDataset(items, make_transform(size, mean, std))
    else:
        dataset = ImageDataset(image_items(images), make_transform(size, mean, std), min_side=size)
    units = resample_units(dataset.items, resample_by)
    from_files = any(item.path is not None for item in dataset.items[:1])
    if num_workers is None:  # decode files in worker processes; images already in memory need none
        num_workers = default_workers(device) if from_files else 0
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    num_workers = min(num_workers, max(1, -(-len(shard) // batch_size))) if num_workers else 0
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_images, pin_memory=torch.device(device).type == "cuda",
                        prefetch_factor=4 if num_workers else None)
    return _usable(loader), len(shard), units


def _usable(loader) -> Iterable:
    """The loader's batches of usable images; one warning (in this process) per image that could not be used,
    each one line naming the file, whichever process decoded it. A worker process that died (a decoder that
    crashed the process) is one MaeprobeError, not DataLoader's traceback."""
    import warnings

    from .validate import first_line

    batches = iter(loader)
    while True:
        try:
            images, indices, skipped = next(batches)
        except StopIteration:
            return
        except RuntimeError as exc:
            text = str(exc)[:300]
            if "DataLoader worker" not in text or not ("killed by signal" in text or "exited unexpectedly" in text):
                raise  # an exception inside a worker is a bug (images that cannot be used are ``SkippedImage``)
            raise MaeprobeError(f"a process decoding the images stopped ({first_line(exc)}); run with "
                                "--num-workers 0 to find the file that stops it") from None
        for message in skipped:
            warnings.warn(f"skipping {message}", stacklevel=2)
        if images is not None:
            yield images, indices


def _units_in_memory(count: int, resample_by) -> torch.Tensor:
    """Units of ``count`` images held in memory (a tensor or PIL images): each its own, or one label each;
    'folder' needs image files."""
    items = [ImageItem(f"image{i}") for i in range(count)]
    units = resample_units(items, resample_by)  # validates the value first
    if isinstance(resample_by, str) and resample_by != "image":
        raise MaeprobeError(f"resample_by={resample_by!r} needs image files; for images in memory give one unit "
                            "label per image")
    return units


def _check_attention_size(model, request) -> None:
    """``limits.check_attention`` for every module whose attention a request reads."""
    from .limits import check_attention

    for module in ("encoder", "decoder"):
        if request.attention.get(module):
            check_attention(model, module)


def run_probe(model, reducers: Sequence[Reducer], images=None, *, mask_ratio: float = 0.0, seed: int = 0,
              shared_mask: bool = True, batch_size: int = 16, device: str | None = None,
              dtype: str | None = None, num_workers: int | None = None, progress: bool = False,
              block_queries: int | None = None, resample_by="image") -> None:
    """Run hooked forward passes over ``images`` and update every reducer.

    Args:
        model: a loaded MaskedAutoencoderViT.
        reducers: metrics to update; their capture requests are merged.
        images: folder path, None (built-in photos), list of PIL images, ImageDataset, or a
            normalised tensor [N, 3, H, W].
        mask_ratio, seed, shared_mask: the seeded mask (see ``maeprobe.masking``).
        batch_size: images per forward pass.
        device: 'cpu', 'cuda', ... (default: CUDA when available).
        dtype: 'fp32' (default) or 'bf16' / 'fp16' autocast.
        num_workers: DataLoader workers decoding image files (None: ``default_workers(device)`` for a folder,
            0 for images already in memory). Batches keep their order, so results do not depend on it.
        progress: show a progress bar (only on runs that last more than two seconds; under
            torch.distributed only on the main process).
        block_queries: attention statistics from q and k in blocks of this many query rows, no N x N map kept
            (None: ``DEFAULT_BLOCK_QUERIES``); 0: full [B, H, N, N] maps (the reference
            path). Results agree to float tolerance.
        resample_by: the independent unit that bootstrap intervals resample (``data.resample_units``):
            ``'image'`` (default; the built-in stereo pair counts as one photo), ``'folder'`` (every image's
            parent folder), or one label per image (e.g. the source photo of each crop).
    """
    from . import validate
    from .metrics.base import Reducer
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise MaeprobeError(f"run_probe: model must be a model from maeprobe.load or build_mae, got "
                            f"{type(model).__name__}")
    if isinstance(reducers, Reducer):
        reducers = [reducers]
    if not isinstance(reducers, (list, tuple)) or not reducers or not all(isinstance(r, Reducer) for r in reducers):
        raise MaeprobeError("run_probe: reducers must be a non-empty list of maeprobe metrics (maeprobe.metrics)")
    device = validate.device(device) or torch.device(default_device())
    validate.integer("--batch-size", batch_size, 1, 1 << 20)
    validate.integer("--num-workers", num_workers, 0, 1024, allow_none=True)
    validate.integer("--seed", seed, 0, 2**63 - 1)
    block_queries = DEFAULT_BLOCK_QUERIES if block_queries is None else block_queries
    validate.integer("--block-queries", block_queries, 0, 1 << 20)
    validate.mask_ratio(mask_ratio, model.config.num_patches, "--mask-ratio")
    if dtype not in DTYPES and dtype is not None:
        raise MaeprobeError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    autocast_dtype = DTYPES.get(dtype) if dtype else None
    request = CaptureRequest()
    for reducer in reducers:
        request = request | reducer.request()
    # A tensor that every reducer needing it can digest inside the hook is never stored (freed at once).
    consumers: dict = {}
    for reducer in reducers:
        for key in reducer.consumes():
            consumers.setdefault(key, []).append(reducer.consume)
    for key in list(consumers):
        kind, module, layer = key
        wanted_by = [r for r in reducers if layer in getattr(r.request(), kind).get(module, ())]
        if any(key not in r.consumes() for r in wanted_by):
            del consumers[key]  # someone reads it from the cache: store it
    _check_attention_size(model, request)
    for reducer in reducers:  # what each metric keeps or builds, from the sizes alone (``limits``)
        reducer.check_memory(mask_ratio=mask_ratio, batch_size=batch_size)
    run_decoder = request.needs("decoder")
    if run_decoder and not getattr(model, "has_decoder", False):
        raise MaeprobeError("this model has no decoder; decoder metrics need a full MAE checkpoint at its own input "
                            "size (no --img-size)")
    model = model.to(device).eval()
    batches, total, units = _batches(model, images, batch_size, num_workers, device, resample_by)
    L = model.config.num_patches
    from .distributed import is_main

    if progress and is_main():
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=-(-total // batch_size), unit="batch", delay=2.0, leave=False,
                       mininterval=0.1 if sys.stderr.isatty() else 10.0)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    references: dict[str, Reference] = {}
    for reducer in reducers:
        ref = getattr(reducer, "reference", None)
        if ref is not None:
            if ref.name in references and references[ref.name] is not ref:
                references[ref.name].request = references[ref.name].request | ref.request
            else:
                references[ref.name] = ref.prepare(model)
            ref.model.to(device).eval()
    # Without a decoder pass, the encoder forward stops after the last tensor any reducer needs (the rest of
    # the last block, later blocks and the final norm are never computed).
    stop_after = None if run_decoder else last_event(request, "encoder")
    with contextlib.ExitStack() as stack, torch.inference_mode(), autocast:
        cache = stack.enter_context(capture(model, request, consumers, stop_after=stop_after,
                                            block_queries=block_queries))
        for name, ref in references.items():
            cache.references[name] = stack.enter_context(capture(ref.model, ref.request))
        for x, indices in batches:
            noise = mask_noise(L, seed, batch_size=x.shape[0], shared=shared_mask, image_indices=indices)
            mask = MaskInfo.from_noise(noise, mask_ratio, shared_mask)
            cache.mask = MaskInfo(mask.ids_keep.to(device), mask.mask.to(device), mask.ids_restore.to(device),
                                  shared_mask)  # known before the forward pass, for in-hook consumers
            cache.image_indices = indices
            cache.unit_indices = units[indices]
            x = x.to(device, non_blocking=True)
            try:
                latent, _, ids_restore = model.forward_encoder(x, mask_ratio, noise.to(device))
            except StopForward:
                pass
            else:
                if run_decoder:
                    model.forward_decoder(latent, ids_restore)
            for ref in references.values():  # the unmasked image at the reference's own size
                ref.model.forward_encoder(ref.adapt(x, model), 0.0)
            for reducer in reducers:
                reducer.update(cache)
            cache.clear()
    for reducer in reducers:
        reducer.all_reduce()
