"""Recipe runner: one loop for MAE, decoder variants, LC-MAE, AE(k), U-MAE and single-image pretraining,
in one process or under ``torchrun`` (DistributedDataParallel, torch.distributed).

Determinism and exact resume: every random choice is a function of (seed, epoch, image index) or
(seed, step, rank): the data order of an epoch, each sample's augmentation, each step's masks. A
checkpoint stores the model, optimiser, scaler, step and the position in the epoch, so ``resume``
continues exactly where the run stopped. Checkpoints are written atomically (temporary file, rename)
every ``run.checkpoint_every`` optimiser steps, at the end, and when SIGTERM arrives; after that checkpoint the
signal still takes effect (``pretrain_recipe``): the previous handler gets it again (by default the process ends, as
a preempted job must), and a caller that lives on gets ``TrainingInterrupted``.

Untrusted recipes: sizes a recipe states are bounded before anything is built (``check_sizes``: model bytes,
samples per epoch, the micro-batch, DataLoader workers; ``maeprobe.limits``), an epoch must hold one optimiser step,
and a run folder belongs to one run at a time (``runfolder``).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset, Sampler

from ..checkpoints import read_pickle, save_checkpoint
from ..data import ImageItem, image_items, open_image, to_rgb
from ..errors import MaeprobeError
from ..io import write_text
from ..models import IMAGENET_MEAN, IMAGENET_STD, build_mae
from ..validate import first_line
from .accel import adamw, autocast, bf16_enabled, make_loader
from .config import batch_plan, check_recipe
from .loop import NonFiniteWatch, optimizer_step
from .losses import cross_view_loss, gather_rows, in_view_loss, uniformity, uniformity_loss

if TYPE_CHECKING:
    from ..models.mae import ArchConfig

METHODS = ("mae", "lcmae", "ae", "umae")


# ----------------------------------------------------------------------------- distributed
def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group under torchrun."""
    from ..distributed import init_from_env

    return init_from_env()


def dist_world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def dist_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _sample_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


# ----------------------------------------------------------------------------- data
class PretrainImages(Dataset):
    """MAE augmentation (RandomResizedCrop scale 0.2-1, flip) over an ImageFolder tree, the built-in
    photos, or crops of a single image; sample i of epoch e is a pure function of (seed, e, i)."""

    def __init__(self, items: list[ImageItem], img_size: int, crop_scale, length: int | None, seed: int,
                 in_memory: bool):
        from torchvision.transforms import v2

        self.items, self.seed, self.epoch = items, seed, 0
        self.length = length or len(items)
        self.cache = {}
        if in_memory:  # small sets (built-in photos, single image): decode once, shrink to 2x the crop
            for i, item in enumerate(items):
                img = to_rgb(item.image) if item.image is not None else open_image(item.path)
                scale = 2 * img_size / min(img.size)
                if scale < 1:
                    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), 3)
                self.cache[i] = img
        self.transform = v2.Compose([
            v2.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=v2.InterpolationMode.BICUBIC,
                                 antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index) -> tuple[torch.Tensor, int]:
        """``index``: an image index (of ``self.epoch``), or an (epoch, index) pair from ``EpochSampler``."""
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        source = index % len(self.items)
        img = self.cache.get(source)
        if img is None:
            img = open_image(self.items[source].path)
        with torch.random.fork_rng(devices=[]):  # per-sample augmentation RNG: (seed, epoch, index)
            torch.manual_seed(_sample_seed(self.seed, epoch, index))
            return self.transform(img), index


class EpochSampler(Sampler):
    """(epoch, image index) pairs of this process's order for ``epoch`` (``epoch_order``, the first ``usable``),
    from position ``start`` on. The DataLoader is built once and keeps its worker processes across epochs
    (persistent workers hold their own copy of the dataset, so an epoch set on the main process's copy would not
    reach them: each sample carries its epoch instead). ``set`` before each pass over the loader."""

    def __init__(self, n: int, seed: int, rank: int, world: int, usable: int):
        self.n, self.seed, self.rank, self.world, self.usable = n, seed, rank, world, usable
        self.epoch, self.start = 0, 0

    def set(self, epoch: int, start: int) -> "EpochSampler":
        self.epoch, self.start = epoch, start
        return self

    def __iter__(self):
        epoch = self.epoch
        order = _epoch_order(self.n, self.seed, epoch, self.rank, self.world)[self.start:self.usable]
        for chunk in order.split(1 << 16):  # 8 bytes per sample at any time, not a Python list of the epoch
            for i in chunk.tolist():
                yield epoch, i

    def __len__(self) -> int:
        return max(min(self.usable, epoch_length(self.n, self.rank, self.world)) - self.start, 0)


def mask_noises(num_patches: int, seed: int, epoch: int, sample_ids: torch.Tensor, view: int) -> torch.Tensor:
    """Per-image mask noise [B, L] from (seed, epoch, image index, view): independent of batching and of
    the number of processes."""
    return torch.cat([torch.rand(1, num_patches, generator=torch.Generator().manual_seed(
        _sample_seed(seed, epoch, int(i), view, 11))) for i in sample_ids])


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This process's sample order for an epoch: a seeded permutation, padded to a multiple of world
    size and strided by rank (DistributedSampler's split, reproducible from (seed, epoch))."""
    return _epoch_order(n, seed, epoch, rank, world).tolist()


def _epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """``epoch_order`` as an int64 tensor (the sampler reads it in chunks)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_sample_seed(seed, epoch, 7)))
    order = torch.cat([order, order[: (-n) % world]])
    return order[rank::world]


def epoch_length(n: int, rank: int, world: int) -> int:
    """``len(epoch_order(n, ..., rank, world))`` without drawing the permutation."""
    padded = n + min((-n) % world, n)
    return len(range(rank, padded, world))


def build_pretrain_data(config: dict, img_size: int) -> PretrainImages:
    data = config["data"]
    seed = config["run"]["seed"]
    if data["single_image"]:
        items = [ImageItem(str(data["single_image"]), path=Path(data["single_image"]))]
        length = data["samples_per_epoch"] or 1281
        return PretrainImages(items, img_size, data["crop_scale"], length, seed, in_memory=True)
    if data["path"]:
        root = Path(data["path"])
        root = root / "train" if (root / "train").is_dir() else root
        items = image_items(root)
        return PretrainImages(items, img_size, data["crop_scale"], data["samples_per_epoch"], seed, in_memory=False)
    items = image_items(None)  # built-in photos
    return PretrainImages(items, img_size, data["crop_scale"], data["samples_per_epoch"] or 256, seed, in_memory=True)


# ----------------------------------------------------------------------------- model + objective
def build_pretrain_model(config: dict):
    """The recipe's MAE (``model.*``), after ``check_model_settings``."""
    m = config["model"]
    kwargs = _model_kwargs(config)
    check_model_settings(config)
    return build_mae(m["preset"], decoder_type=m["decoder_type"], norm_pix_loss=bool(m["norm_pix_loss"]), **kwargs)


def _model_kwargs(config: dict) -> dict:
    m = config["model"]
    return {k: m[k] for k in ("decoder_depth", "decoder_embed_dim", "decoder_num_heads", "pred_size")
            if m.get(k) is not None}


def check_model_settings(config: dict) -> None:
    """Model settings that each pass the schema but do not make a model together are one line naming the setting:
    a decoder head count that does not divide the decoder width (timm's attention asserts it), an AE(k) block
    side missing or not differing from the patch size by an even number (the block is centred on the patch)."""
    from ..models.mae import ArchConfig
    from ..models.registry import PRESETS

    m = config["model"]
    if config["method"] == "ae" and not m.get("pred_size"):
        raise MaeprobeError("method 'ae' needs model.pred_size (the block side k)")
    arch = ArchConfig(**{**PRESETS[m["preset"]], **_model_kwargs(config)})
    if m["decoder_type"] == "transformer" and arch.decoder_embed_dim % arch.decoder_num_heads:
        raise MaeprobeError(f"model.decoder_num_heads={arch.decoder_num_heads} does not divide "
                            f"model.decoder_embed_dim={arch.decoder_embed_dim} (each head takes an equal share of the "
                            "decoder's width); choose a divisor")
    if arch.pred_size is not None and (arch.pred_size - arch.patch_size) % 2:
        raise MaeprobeError(f"model.pred_size={arch.pred_size} and the patch size {arch.patch_size} of "
                            f"{m['preset']} must differ by an even number (the predicted block is centred on its "
                            "patch)")


def check_sizes(config: dict, plan) -> ArchConfig:
    """Bound, before anything is built, what a pretraining recipe's stated sizes cost (``maeprobe.limits``; a
    refusal names the limit's variable): the parameters of the model and the method's extra parts, built on
    PyTorch's meta device (shapes only, no memory) x 4 bytes (``MAEPROBE_MAX_MODEL_BYTES``; training holds about
    four times that: weights, gradients, two AdamW moments), one micro-batch's pixels and one layer's attention maps
    (``MAEPROBE_MAX_BATCH_BYTES``), the samples of one epoch, whose order is drawn as one permutation of 8-byte
    indices (``MAEPROBE_MAX_EPOCH_SAMPLES``), and DataLoader worker processes (``MAEPROBE_MAX_WORKERS``).
    Returns the model's ArchConfig."""
    from ..limits import check

    with torch.device("meta"):
        meta = Objective(build_pretrain_model(config), config)
    size = sum(t.numel() * 4 for t in list(meta.parameters()) + list(meta.buffers()))
    check("MAEPROBE_MAX_MODEL_BYTES", size, f"the recipe's model ({config['model']['preset']} with its model.* and "
          f"{config['method']} settings: {size // 4:,} parameters x 4 bytes)")
    cfg = meta.model.config
    check_batch(cfg, plan.micro, f"one micro-batch ({plan.describe()}; optim.batch_per_process caps it)")
    data = config["data"]
    if data["samples_per_epoch"] is not None:
        check("MAEPROBE_MAX_EPOCH_SAMPLES", data["samples_per_epoch"], "data.samples_per_epoch")
    if data["path"]:  # the loader's workers (decoded photos and single images are in memory)
        check("MAEPROBE_MAX_WORKERS", data["num_workers"], "data.num_workers (DataLoader worker processes)")
    return cfg


def check_batch(cfg, images: int, what: str) -> None:
    """``images`` images of a model of ArchConfig ``cfg`` held at once: their float32 pixels and one layer's
    attention maps (heads x tokens^2 x 4 bytes each, the widest of encoder and decoder) within
    ``MAEPROBE_MAX_BATCH_BYTES``."""
    from ..limits import check

    tokens = cfg.num_patches + cfg.num_prefix_tokens
    heads = max(cfg.num_heads, cfg.decoder_num_heads if cfg.decoder_depth and cfg.decoder_type == "transformer" else 0)
    per_image = 4 * (cfg.in_chans * cfg.img_size ** 2 + heads * tokens ** 2)
    check("MAEPROBE_MAX_BATCH_BYTES", images * per_image, f"{what}: {images:,} images x {per_image:,} bytes of "
          "pixels and attention maps")


def initial_objective(config: dict) -> "Objective":
    """The model (and LC-MAE projector) a run starts from: built after seeding with ``run.seed``, so that the
    findings' control "the same seed's initial weights" is exactly what training started from. The global RNG
    is left as seeded, as training expects."""
    torch.manual_seed(config["run"]["seed"])
    return Objective(build_pretrain_model(config), config)


class Objective(nn.Module):
    """The model plus the method's extra trainable parts (LC-MAE projector); ``forward`` returns the
    total loss and its parts. One module so that DDP sees every parameter."""

    def __init__(self, model, config: dict):
        super().__init__()
        self.model, self.method, self.config = model, config["method"], config
        if self.method not in METHODS:
            raise MaeprobeError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.method == "lcmae":
            lc = config["lcmae"]
            if lc["projector_input"] == "pred":  # v = p(h(x, m)), h the Eq. 1 output (pixel predictions)
                width = (model.config.pred_size or model.config.patch_size) ** 2 * model.config.in_chans
            elif lc["projector_input"] == "features":
                width = model.config.decoder_embed_dim
            else:
                raise MaeprobeError("lcmae.projector_input must be 'pred' or 'features', "
                                    f"got {lc['projector_input']!r}")
            if lc["in_view_target"] not in ("target", "pixels"):
                raise MaeprobeError(f"lcmae.in_view_target must be 'target' or 'pixels', got {lc['in_view_target']!r}")
            self.projector = nn.Linear(width, lc["proj_dim"])

    def forward(self, imgs: torch.Tensor, noises: list[torch.Tensor], uni_grad: torch.Tensor | None = None,
                uni_value: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """``uni_grad``/``uni_value`` (U-MAE under gradient accumulation, from ``uniformity_targets``): this
        micro-batch's rows of the full-batch term's gradient (already scaled) and the term's value."""
        model, ratio = self.model, float(self.config["model"]["mask_ratio"])
        if self.method == "ae":
            loss, _, _ = model(imgs, 0.0, noises[0])
            return loss, {"loss_ae": loss.detach()}
        if self.method == "mae":
            loss, _, _ = model(imgs, ratio, noises[0])
            return loss, {"loss_mae": loss.detach()}
        if self.method == "umae":
            umae = self.config["umae"]
            latent, mask, ids_restore = model.forward_encoder(imgs, ratio, noises[0])
            loss_mae = model.forward_loss(imgs, model.forward_decoder(latent, ids_restore), mask)
            cls = self.umae_feature(latent)
            if uni_grad is None:
                loss_uni = uniformity_loss(cls, tau=umae["tau"], gather=umae["gather"])
            else:  # value: the full-batch term; gradient: <this micro-batch's features, their cached gradient>
                surrogate = (cls * uni_grad).sum()
                loss_uni = surrogate - surrogate.detach() + uni_value
            loss = loss_mae + umae["weight"] * loss_uni
            return loss, {"loss_mae": loss_mae.detach(), "loss_uniformity": loss_uni.detach()}
        return self._lcmae(imgs, noises)

    def umae_feature(self, latent: torch.Tensor) -> torch.Tensor:
        """U-MAE's feature of the encoder output: the CLS token (float32)."""
        if self.config["umae"]["feature"] == "double_norm":  # U-MAE's models_mae.py: self.norm(latent)[:, 0]
            return self.model.norm(latent)[:, 0].float()  # on an already normed latent
        return latent[:, 0].float()

    def needs_full_batch(self, accum: int) -> bool:
        return self.method == "umae" and self.config["umae"]["batch"] == "global" and accum > 1

    @torch.no_grad()
    def _features(self, imgs: torch.Tensor, noises: list[torch.Tensor]) -> torch.Tensor:
        latent, _, _ = self.model.forward_encoder(imgs, float(self.config["model"]["mask_ratio"]), noises[0])
        return self.umae_feature(latent)

    def uniformity_targets(self, micro_batches, accum: int) -> list[dict]:
        """U-MAE's uniformity term over the whole global batch under gradient accumulation (gradient cache):
        the features of every micro-step of every process first (no graph kept), the term and its gradient
        with respect to those features, then for each micro-step its rows of that gradient, scaled so that
        the engine's (loss / accum) and DDP's average over W processes add up to the gradient of one process
        holding the whole batch ('exact') or 1/W of it ('reference', U-MAE's GatherLayer).
        ``micro_batches``: callables giving (imgs, noises) on the device, in micro-step order."""
        world = dist_world()
        rank = dist_rank()
        feats = [gather_rows(self._features(*get())) for get in micro_batches]  # each [W * b, D], rank order
        rows = feats[0].shape[0] // world
        full = torch.cat(feats).detach().requires_grad_(True)
        with torch.enable_grad():
            value = uniformity(full, self.config["umae"]["tau"])
            grad, = torch.autograd.grad(value, full)
        scale = accum * (world if self.config["umae"]["gather"] == "exact" else 1)
        return [{"uni_grad": scale * grad[m * world * rows + rank * rows:m * world * rows + (rank + 1) * rows],
                 "uni_value": value.detach()} for m in range(len(feats))]

    def _lcmae(self, imgs: torch.Tensor, noises: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """LC-MAE (Section 3.3, Fig. 1): two views with independent masks; L_MAE is MAE's loss averaged over
        the views, L_cross (Eq. 5) pairs the views, L_in (Eq. 6) is averaged over the views."""
        model, lc = self.model, self.config["lcmae"]
        ratio = float(self.config["model"]["mask_ratio"])
        views = []
        for noise in noises[:2]:
            latent, mask, ids_restore = model.forward_encoder(imgs, ratio, noise)
            pred, feats = model.forward_decoder(latent, ids_restore, return_features=True)  # [B, L, k*k*C], [B, L, Dd]
            v = self.projector(pred if lc["projector_input"] == "pred" else feats)  # [B, L, proj_dim]
            views.append((pred, v, mask))
        x = model.loss_targets(imgs) if lc["in_view_target"] == "target" else model.targets(imgs)  # [B, L, k*k*C]
        loss_mae = sum(model.forward_loss(imgs, pred, mask) for pred, _, mask in views) / 2
        loss_cross = cross_view_loss(views[0][1], views[1][1], views[0][2], views[1][2], lc["reduction"])
        loss_in = sum(in_view_loss(v, x, mask, lc["reduction"]) for _, v, mask in views) / 2
        loss = lc["mae"] * loss_mae + lc["cross"] * loss_cross + lc["in_view"] * loss_in
        return loss, {"loss_mae": loss_mae.detach(), "loss_cross": loss_cross.detach(), "loss_in": loss_in.detach()}


def _grouped(loader, accum: int):
    """Lists of ``accum`` consecutive micro-batches (the loader drops incomplete batches and the epoch holds
    whole optimiser steps, so every group is complete)."""
    group = []
    for item in loader:
        group.append(item)
        if len(group) == accum:
            yield group
            group = []


def lr_at(step: float, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warmup then half-cycle cosine (MAE's lr_sched), per optimiser step."""
    if step < warmup:
        return peak * step / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# ----------------------------------------------------------------------------- the loop
class TrainingInterrupted(MaeprobeError):
    """SIGTERM stopped a run after it saved its checkpoint (``pretrain_recipe``). Raised once the signal went back
    to the handler the caller had (which, by default, ends the process), so that a caller that lives on (the
    Python API, a test runner) never takes the stopped run for a finished one. Starting the same run again resumes."""


def pretrain_recipe(config: dict, *, progress: bool = True, stop_after_steps: int | None = None) -> Path:
    """Run a pretraining recipe. Returns the final checkpoint path (``checkpoint-last.pth``).

    Before anything is built or written: the recipe's sizes are bounded (``check_sizes``), an epoch must hold one
    optimiser step (``steps_per_epoch``), and the run folder is taken for this run (``runfolder.claimed``: files of
    the user's or of another run are never replaced; one run writes a folder at a time).

    ``stop_after_steps`` stops (and checkpoints) after that many optimiser steps of this call, as an
    interruption would; used by the resume test. SIGTERM checkpoints and stops too, then restores the previous
    SIGTERM handler and sends the signal again (by default the process ends with it, as a preempted job must); if
    the process lives on, ``TrainingInterrupted`` is raised.
    """
    from .. import validate
    from ..io import check_output_file, check_output_folder
    from .runfolder import claimed

    check_recipe(config)  # also for dicts built in Python: types and ranges before anything runs
    rank, world, local_rank = init_distributed()
    run = config["run"]
    if run["device"]:
        device = validate.device(run["device"])
    else:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out_dir = Path(run["output_dir"])
    check_output_folder(out_dir)
    outputs = [run["checkpoint_name"], "config.yaml", "log.csv", f"{_final_stem(run)}.safetensors"]
    for name in outputs:  # outputs are checked before computing
        check_output_file(out_dir / name)
    plan = batch_plan(config, world)
    arch = check_sizes(config, plan)
    data = build_pretrain_data(config, arch.img_size)
    per_epoch = steps_per_epoch(config, len(data), rank, world, plan)
    resume = out_dir / run["checkpoint_name"] if run["resume"] else None
    with claimed(out_dir, config, outputs, rank=rank, resume=resume):
        last, stopped_by = _pretrain(config, data, plan, per_epoch, device, rank, world, progress, stop_after_steps)
    if stopped_by is not None:  # after the lock is released: the signal may end the process
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGTERM)
        raise TrainingInterrupted(stopped_by)
    return last


def _final_stem(run: dict) -> str:
    return Path(run["checkpoint_name"]).stem.replace("checkpoint-last", "model")


def steps_per_epoch(config: dict, samples: int, rank: int, world: int, plan) -> int:
    """Optimiser steps per epoch: whole global batches of this process's share of the epoch's ``samples``. An
    epoch that cannot fill one step is refused (it would train nothing, epoch after epoch, for ever); so is an
    epoch of more than ``MAEPROBE_MAX_EPOCH_SAMPLES`` samples (its order is one permutation held at once)."""
    from ..limits import check

    check("MAEPROBE_MAX_EPOCH_SAMPLES", samples, "the samples of one epoch (data.samples_per_epoch, else the images "
          "found)")
    share = epoch_length(samples, rank, world)
    step = plan.micro * plan.accum
    if share < step:
        raise MaeprobeError(f"an epoch of {samples} samples gives each of {world} process(es) {share}, fewer than one "
                            f"optimiser step takes ({plan.describe()}); lower optim.global_batch or raise "
                            "data.samples_per_epoch")
    return share // step


class PretrainRecipe:
    """A pretraining run in its claimed run folder, as torchtune's recipes: ``setup()`` builds what the run needs
    (``_setup_*``, in the order that keeps the RNG draws of a run fixed), ``train()`` is the loop, read top to bottom,
    ``save_checkpoint()`` writes the resumable training checkpoint, ``cleanup()`` releases what setup took (log files,
    the loader's workers, the SIGTERM handler). The optimiser step is ``loop.optimizer_step``, shared with the
    evaluation recipes.

    GPU sync policy (``loop``): a step never waits for the device. The named sync points are the logging interval
    (``run.log_every``: the loss and its parts are read, the progress bar updated, a non-finite loss since the last
    check reported), each checkpoint (weights copied to the host; a non-finite loss is reported first, so a
    checkpoint never holds its weights) and the end of the run. The mask noise and the images reach the device
    asynchronously."""

    def __init__(self, config: dict, data, plan, steps_per_epoch: int, device, rank: int, world: int,
                 progress: bool, stop_after_steps: int | None):
        self.config, self.data, self.plan, self.steps_per_epoch = config, data, plan, steps_per_epoch
        self.device, self.rank, self.world = device, rank, world
        self.progress, self.stop_after_steps = progress, stop_after_steps
        self.run, self.optim_cfg = config["run"], config["optim"]
        self.out_dir = Path(self.run["output_dir"])
        self.last = self.out_dir / self.run["checkpoint_name"]
        self.total_steps = steps_per_epoch * self.optim_cfg["epochs"]
        self.step, self.epoch, self.position, self.steps_this_call = 0, 0, 0, 0
        self.stop = {"flag": False, "signal": False}
        self.watch = NonFiniteWatch()
        self.previous_handler = self.log_file = self.log = self.board = self.bar = self.loader = None

    # ------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build the run: model, optimiser, resumed state and saved settings, wrappers, signal handler, logs, loader."""
        self._setup_model()
        self._setup_optimizer()
        self._setup_state()
        self._setup_parallel()
        self._setup_signals()
        self._setup_logging()
        self._setup_loader()

    def _setup_model(self) -> None:
        """The run's initial weights (seeded with ``run.seed``: ``initial_objective``) on the device."""
        self.objective = initial_objective(self.config).to(self.device)
        self.model = self.objective.model

    def _setup_optimizer(self) -> None:
        """AdamW (LC-MAE Section 5) without weight decay on norms and biases; fused on CUDA (``accel``)."""
        optim_cfg = self.optim_cfg
        if optim_cfg["optimizer"] != "adamw":
            raise MaeprobeError("pretraining uses AdamW (LC-MAE Section 5); "
                                f"optim.optimizer={optim_cfg['optimizer']!r}")
        from timm.optim import param_groups_weight_decay

        self.warmup_steps = int(round(optim_cfg["warmup_epochs"] * self.steps_per_epoch))
        self.optimizer = adamw(param_groups_weight_decay(self.objective, optim_cfg["weight_decay"]), lr=self.plan.lr,
                               betas=optim_cfg["betas"], device=self.device)
        self.use_bf16 = bf16_enabled(self.run["bf16"], self.device)

    def _setup_state(self) -> None:
        """Resume from the run folder's checkpoint when there is one, then write ``config.yaml`` (after the resume
        check: a refused resume leaves the earlier run's files as they were)."""
        self.resumed = bool(self.run["resume"] and self.last.is_file())
        if self.resumed:
            self.step, self.epoch, self.position = _resume(self.last, self.config, self.model, self.objective,
                                                           self.optimizer, self.steps_per_epoch)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.out_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))

    def _setup_parallel(self) -> None:
        """``base``: the uncompiled, unwrapped module (U-MAE's full-batch pass calls it directly); ``ddp``: what the
        step calls (compiled under ``run.compile``, wrapped in DDP over several processes)."""
        self.base = objective = self.objective
        if self.run["compile"]:
            objective = torch.compile(objective)
        self.ddp = objective
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(objective, device_ids=[self.device.index]
                                                           if self.device.type == "cuda" else None)

    def _setup_signals(self) -> None:
        """SIGTERM asks the loop to checkpoint and stop (an ignored SIGTERM stays so)."""
        def on_sigterm(*_):
            self.stop.update(flag=True, signal=True)

        if threading_main() and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
            previous = signal.signal(signal.SIGTERM, on_sigterm)
            self.previous_handler = signal.SIG_DFL if previous is None else previous  # None: set outside Python

    def _setup_logging(self) -> None:
        """Rank 0: ``log.csv`` (appended to on resume), TensorBoard when installed, the progress bar."""
        if self.rank != 0:
            return
        log_path = self.out_dir / "log.csv"
        self.log_file = open(log_path, "a" if self.resumed else "w", newline="")
        self.log = csv.writer(self.log_file)
        if log_path.stat().st_size == 0:
            self.log.writerow(["step", "epoch", "lr", "loss", "parts", "images_per_s"])
        try:  # TensorBoard when installed (the CSV log is always written)
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(self.out_dir / "tensorboard"))
        except ImportError:
            self.board = None
        if self.progress:
            from tqdm.auto import tqdm

            name = self.config["name"]
            self.bar = tqdm(total=self.total_steps, initial=self.step, unit="step", desc=name,
                            mininterval=0.1 if sys.stderr.isatty() else 10.0)  # a short log when not a terminal
            self.bar.write(f"[{name}] {self.plan.describe()}; "
                           f"{run_description(self.device, self.use_bf16, self.run['compile'])}")

    def _setup_loader(self) -> None:
        """One loader for the whole run: workers (image folders only; decoded photos are in memory) persist across
        epochs, batches are pinned on CUDA (``accel.loader_options``)."""
        plan, config = self.plan, self.config
        self.sampler = EpochSampler(len(self.data), self.run["seed"], self.rank, self.world,
                                    self.steps_per_epoch * plan.micro * plan.accum)
        self.loader = make_loader(self.data, device=self.device, num_workers=config["data"]["num_workers"]
                                  if config["data"]["path"] else 0, batch_size=plan.micro, sampler=self.sampler,
                                  drop_last=True)

    # ------------------------------------------------------------------------- the loop
    def train(self) -> None:
        """Train until ``optim.epochs`` are done, the time budget is spent, SIGTERM arrives or ``stop_after_steps``
        steps of this call ran; then save. Sync points: the logging interval, checkpoints, the end."""
        run, accum = self.run, self.plan.accum
        self.tic = time.monotonic()
        self.model.train()
        while self.step < self.total_steps and not self.stop["flag"]:
            # epoch: this process's order of the epoch, from the run's position in it
            self.data.epoch = self.epoch
            self.sampler.set(self.epoch, self.position * self.plan.micro * accum)
            start_step, start_position = self.step, self.position
            for group in _grouped(self.loader, accum):  # the micro-batches of one optimiser step
                # step: forward, backward and update, the loss left on the device (no sync)
                lr = lr_at(self.step, self.total_steps, self.warmup_steps, self.plan.lr, self.optim_cfg["min_lr"])
                loss, parts = self._train_step(group, lr)
                self.step, self.position, self.steps_this_call = self.step + 1, self.position + 1, \
                    self.steps_this_call + 1
                # log: SYNC POINT, every run.log_every steps and at the last
                if self.step % run["log_every"] == 0 or self.step == self.total_steps:
                    self._log_step(lr, loss, parts)
                if self.bar:
                    self.bar.update(1)  # host-side only; drawn at most every mininterval seconds
                # checkpoint: SYNC POINT
                if self.step % run["checkpoint_every"] == 0:
                    self.save_checkpoint(self.last)
                # stop: time budget (checkpoint and stop; resume continues), SIGTERM, stop_after_steps
                if run["max_minutes"] is not None and time.monotonic() - self.tic > 60 * run["max_minutes"]:
                    self.stop["flag"] = True
                stop_after = bool(self.stop_after_steps and self.steps_this_call >= self.stop_after_steps)
                if self.stop["flag"] or self.step >= self.total_steps or stop_after:
                    self.stop["flag"] = self.stop["flag"] or stop_after
                    break
            else:
                if self.step == start_step and start_position == 0:  # a whole epoch without a step: never loop on
                    raise MaeprobeError(f"epoch {self.epoch} gave no optimiser step ({self.plan.describe()}, "
                                        f"{len(self.data)} samples per epoch); lower optim.global_batch")
                self.epoch, self.position = self.epoch + 1, 0
                continue
            if self.position >= self.steps_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
        # end: SYNC POINT; a finished run started again writes nothing
        if self.steps_this_call or not self.resumed:
            self.save_checkpoint(self.last)
        if self.rank == 0 and self.step >= self.total_steps and (self.steps_this_call or not self.resumed):
            save_checkpoint(self.model, self.out_dir / f"{_final_stem(run)}.safetensors")

    def _train_step(self, group: list, lr: float) -> tuple[torch.Tensor, dict]:
        """One optimiser step over ``group`` (``loop.optimizer_step``); U-MAE's full-batch term first when it
        accumulates. Returns the last micro-batch's loss and parts, on the device."""
        base, device, accum, seed = self.base, self.device, self.plan.accum, self.run["seed"]
        views = range(2 if self.config["method"] == "lcmae" else 1)

        def on_device(imgs, sample_ids):
            imgs = imgs.to(device, non_blocking=True)  # [B, C, H, W]
            noises = [mask_noises(self.model.config.num_patches, seed, self.epoch, sample_ids, v)
                      .to(device, non_blocking=True) for v in views]  # each [B, L]
            return imgs, noises

        extras = [{} for _ in group]
        if base.needs_full_batch(accum):
            with autocast(device, self.use_bf16):
                extras = base.uniformity_targets([lambda b=b: on_device(*b) for b in group], accum)

        def forward(micro, item):
            batch_cpu, extra = item
            imgs, noises = on_device(*batch_cpu)
            with autocast(device, self.use_bf16):
                return self.ddp(imgs, noises, **extra)

        out = optimizer_step(zip(group, extras), forward, optimizer=self.optimizer, ddp=self.ddp, world=self.world,
                             accum=accum, lr=lr, step=self.step, watch=self.watch)
        return out[-1]

    def _log_step(self, lr: float, loss: torch.Tensor, parts: dict) -> None:
        """SYNC POINT: report a non-finite loss since the last check, then (rank 0) the log row, TensorBoard and the
        progress bar."""
        self.watch.check()
        if self.rank != 0:
            return
        value, part_values = loss.item(), {k: v.item() for k, v in parts.items()}
        if self.log:
            speed = self.steps_this_call * self.plan.global_batch / max(time.monotonic() - self.tic, 1e-9)
            self.log.writerow([self.step, self.epoch, f"{lr:.4e}", f"{value:.5f}",
                               ";".join(f"{k}={v:.5f}" for k, v in part_values.items()), f"{speed:.1f}"])
            self.log_file.flush()
        if self.board is not None:
            self.board.add_scalar("train/loss", value, self.step)
            self.board.add_scalar("train/lr", lr, self.step)
            for k, v in part_values.items():
                self.board.add_scalar(f"train/{k}", v, self.step)
        if self.bar:
            self.bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", refresh=False)  # shown at the next refresh

    def save_checkpoint(self, path: Path) -> None:
        """SYNC POINT: report a non-finite loss first, then (rank 0) write the resumable training checkpoint at
        ``path`` (facebookresearch/mae's layout plus the step, the position in the epoch and the settings)."""
        self.watch.check()
        if self.rank != 0:
            return
        extra = {"optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "scaler": {}, "step": self.step,
                 "position": self.position, "args": argparse.Namespace(**_flat(self.config))}
        if hasattr(self.base, "projector"):
            extra["projector"] = self.base.projector.state_dict()
        save_checkpoint(self.model, path, **extra)

    def cleanup(self) -> None:
        """End the loader's workers, close the logs and give SIGTERM back to the handler the caller had."""
        self.loader = None  # ends its worker processes
        if self.bar:
            self.bar.close()
        if self.log_file:
            self.log_file.close()
        if self.board is not None:
            self.board.close()
        if self.previous_handler is not None:
            signal.signal(signal.SIGTERM, self.previous_handler)

    def stopped_by(self) -> str | None:
        """When SIGTERM stopped the run, what to tell the caller (else None)."""
        if not self.stop["signal"]:
            return None
        return (f"{self.config['name']}: SIGTERM stopped training at step {self.step} of {self.total_steps}; "
                f"{self.last} holds it (start the same run again to resume)")


def _pretrain(config: dict, data, plan, steps_per_epoch: int, device, rank: int, world: int, progress: bool,
              stop_after_steps: int | None) -> tuple[Path, str | None]:
    """``PretrainRecipe`` set up, trained and cleaned up in ``pretrain_recipe``'s claimed run folder. Returns the
    checkpoint path and, when SIGTERM stopped the run, what to tell the caller (else None)."""
    recipe = PretrainRecipe(config, data, plan, steps_per_epoch, device, rank, world, progress, stop_after_steps)
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.cleanup()
    return recipe.last, recipe.stopped_by()


def run_description(device: torch.device, bf16: bool, compiled: bool) -> str:
    """How a run runs, for its first log line: device, precision, compilation, process group backend."""
    import torch.distributed as dist

    parts = [str(device), "bf16 autocast" if bf16 else "float32"] + (["compiled"] if compiled else [])
    if dist.is_available() and dist.is_initialized():
        parts.append(f"{dist.get_backend()} x {dist.get_world_size()}")
    return ", ".join(parts)


# Settings a resumed run may change: how it runs, not what it computes.
RESUMABLE_CHANGES = ("run_resume", "run_max_minutes", "run_device", "run_log_every", "run_checkpoint_every",
                     "run_compile", "data_num_workers", "run_output_dir", "optim_batch_per_process", "name")


# Settings added after runs were saved whose default is NOT the earlier behaviour: flat key -> (the value that
# reproduces what a run saved without the key did, the methods it applies to). umae.batch: before it existed
# U-MAE's term was one per accumulation micro-step ('micro'); new runs default to the global-batch term.
EARLIER_BEHAVIOUR = {"umae_batch": ("micro", ("umae",))}


def saved_setting(saved: dict, key: str):
    """The value of flat setting ``key`` that a saved run trained with: the saved value; for a setting added
    after the run was saved, the value that reproduces its behaviour then (``EARLIER_BEHAVIOUR``, else today's
    default, which by convention reproduces it); '<absent>' for a key maeprobe does not know."""
    from .config import DEFAULTS

    if key in saved:
        return saved[key]
    earlier = EARLIER_BEHAVIOUR.get(key)
    if earlier is not None and saved.get("method") in earlier[1]:
        return earlier[0]
    return _flat(DEFAULTS).get(key, "<absent>")


def changed_settings(saved: dict, now: dict) -> list[str]:
    """Flat settings that differ between a saved run and this one, ``RESUMABLE_CHANGES`` excepted. A setting
    added to maeprobe after the run was saved (absent there) is read as the behaviour the run had then
    (``saved_setting``): today's default unless ``EARLIER_BEHAVIOUR`` says otherwise (an absent ``umae_batch``
    of a U-MAE run is 'micro')."""
    return sorted(k for k in set(saved) | set(now)
                  if k not in RESUMABLE_CHANGES and saved_setting(saved, k) != now.get(k, "<absent>"))


# Settings maeprobe added after the first runs it can still resume were saved (the git history of ``DEFAULTS``: runs
# saved before optim.global_batch existed store optim_batch_size and are never resumed): a checkpoint's ``args``
# may lack them, and ``saved_setting`` reads the earlier behaviour. Any other setting missing from them means the
# settings were cut: a resume cannot tell whether it matches.
ADDED_AFTER_SAVES = ("umae_feature", "umae_batch", "reading")


def stored_settings(args) -> dict | None:
    """A checkpoint's ``args`` (an ``argparse.Namespace`` as maeprobe and MAE write it, or a dict) as flat settings
    of plain values (numpy scalars become Python numbers); None when they are anything else: a resume cannot compare
    what it cannot read (a tensor compares elementwise, a key that is not a name does not sort)."""
    import numpy as np

    values = vars(args) if isinstance(args, argparse.Namespace) else args
    if not isinstance(values, dict):
        return None
    out = {}
    for key, value in values.items():
        if isinstance(value, np.generic) and value.ndim == 0:
            value = value.item()
        if not isinstance(key, str) or not (value is None or isinstance(value, (bool, int, float, str))):
            return None
        out[key] = value
    return out


def _resume(last: Path, config: dict, model, objective, optimizer, steps_per_epoch: int) -> tuple[int, int, int]:
    """Restore (step, epoch, position) from ``last``, refusing with one line a checkpoint of another model,
    a damaged training state, or one written under different settings (``RESUMABLE_CHANGES`` excepted): a
    resume after changing the seed or the mask ratio would silently mix two configurations. Settings that cannot
    be compared (``args`` missing, not a Namespace or dict of plain values, or lacking a setting other than
    ``ADDED_AFTER_SAVES``) are refused too: the resume cannot tell that they match."""
    state = read_pickle(last)
    where = f"{last}: cannot resume from it"
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "optimizer" not in state:
        raise MaeprobeError(f"{where} (not a maeprobe training checkpoint); move it away or set run.resume=false")
    counters = {k: state.get(k) for k in ("step", "epoch", "position")}
    bad = next((k for k, v in counters.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0), None)
    if bad is not None or counters["position"] > steps_per_epoch:
        raise MaeprobeError(f"{where}: its {bad or 'position'} is {counters[bad or 'position']!r}; expected a "
                            "whole number >= 0 within an epoch")
    try:
        model.load_state_dict(state["model"])
        if "projector" in state:
            objective.projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        first = first_line(exc, 160)
        raise MaeprobeError(f"{where}: it does not fit this recipe's model ({first})") from None
    saved, now = stored_settings(state.get("args")), _flat(config)
    if saved is None:
        found = "no training settings ('args')" if state.get("args") is None else \
            f"training settings ('args') maeprobe cannot compare (a {type(state.get('args')).__name__})"
        raise MaeprobeError(f"{where}: it holds {found}, so whether it was trained with this recipe's settings cannot "
                            "be told; use another run.output_dir or set run.resume=false")
    missing = sorted(k for k in now if k not in saved and k not in RESUMABLE_CHANGES and k not in ADDED_AFTER_SAVES)
    if missing:
        raise MaeprobeError(f"{where}: its training settings ('args') lack {missing[0]} ({len(missing)} "
                            "setting(s) missing), so whether it was trained with this recipe's settings cannot be "
                            "told; use another run.output_dir or set run.resume=false")
    changed = changed_settings(saved, now)
    if changed:
        key = changed[0]
        raise MaeprobeError(f"{where}: it was trained with {key}={saved_setting(saved, key)!r}, this run has "
                            f"{now.get(key, '<absent>')!r} ({len(changed)} setting(s) differ); use another "
                            "run.output_dir or the original settings")
    return counters["step"], counters["epoch"], counters["position"]


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested config -> flat dict of plain values (for the official ``args`` Namespace)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}_"))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    out.setdefault("mask_ratio", config.get("model", {}).get("mask_ratio") if not prefix else None)
    if "model_mask_ratio" in out:
        out["mask_ratio"] = 0.0 if config.get("method") == "ae" else out["model_mask_ratio"]
        out["norm_pix_loss"] = out.get("model_norm_pix_loss", False)
    return out
