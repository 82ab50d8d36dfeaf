"""Evaluation recipes on an ImageFolder dataset (``train/``, ``val/``): fine-tuning and linear probing as in
the MAE paper, and a k-NN probe on frozen features. Each reports top-1 on ``val/``.

* fine-tune: global-pool classifier (fc_norm + head) on the pretrained encoder, AdamW with layer-wise lr
  decay (timm ``param_groups_layer_decay``), warmup + cosine, RandAugment / random erasing
  (timm ``create_transform``), mixup / cutmix (timm ``Mixup``) or label smoothing.
* linear probe: frozen encoder, CLS feature, BatchNorm without affine + linear head (MAE's linprobe head),
  LARS as MAE's ``main_linprobe.py`` at its weight decay 0 (``_optimizer``; ``optim.optimizer=sgd``: SGD with
  momentum).
* k-NN: cosine similarity of L2-normalised CLS features, k nearest training images, votes weighted by
  exp(sim / T) (DINO's protocol).

Fine-tuning and linear probing train with pretraining's optimiser step (``loop.optimizer_step``) and its sync
policy: the losses stay on the device until the end of each epoch (the history row and validation).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DistributedSampler

from ..checkpoints import load
from ..data import open_image
from ..errors import MaeprobeError
from ..io import write_text
from ..models import ArchConfig, MaskedAutoencoderViT
from .accel import adamw, autocast, bf16_enabled, make_loader
from .config import batch_plan
from .engine import init_distributed, lr_at
from .loop import NonFiniteWatch, optimizer_step


def _folders(config: dict):
    from torchvision.datasets import ImageFolder

    root = config["data"]["path"]
    if not root or not (Path(root) / "train").is_dir() or not (Path(root) / "val").is_dir():
        raise MaeprobeError(f"data.path={root!r}: evaluation needs an ImageFolder root with train/ and val/")
    return Path(root), ImageFolder


def _transforms(img_size: int, mean, std, strong: bool, optim_cfg: dict):
    """Fine-tuning / linear-probe training transform and the evaluation transform, as MAE's (``util/datasets.py``
    ``build_transform`` at facebookresearch/mae efb2a80):

    * fine-tuning: timm ``create_transform`` with MAE's ``--aa rand-m9-mstd0.5-inc1`` (magnitudes drawn from
      N(9, 0.5), clipped by timm to [0, 10] only), ``--color_jitter None`` (no jitter, whether or not RandAugment
      is on), random erasing ``--reprob 0.25 --remode pixel --recount 1``. At a magnitude of 10 timm's increasing
      posterize keeps 0 bits, which Pillow releases of MAE's time turned into a black image and current Pillow
      refuses (``bits must be between 1 and 8``): the posterize ops here compute the 0-bit result themselves
      (``_posterize``), so every magnitude draw stays what it is in MAE's run.
    * linear probe: RandomResizedCrop (scale 0.08-1, bicubic) + flip. maeprobe's choice: timm's crop (10 tries, then
      a centre crop); MAE's ``main_linprobe.py`` uses its ``util/crop.py`` crop (one draw, sides clipped to the
      image, as BYOL's TF code).
    * evaluation: resize to size / crop_pct, centre crop, crop_pct 224/256 up to 224 px and 1.0 above (MAE's rule).
    """
    from timm.data import create_transform

    train = create_transform(img_size, is_training=True, interpolation="bicubic", mean=mean, std=std,
                             auto_augment=optim_cfg["auto_augment"] if strong else None,
                             re_prob=optim_cfg["reprob"] if strong else 0.0, re_mode="pixel", re_count=1,
                             color_jitter=None, scale=(0.08, 1.0))  # MAE: --color_jitter None, --remode pixel
    _posterize_any_bits(train)
    crop_pct = 224 / 256 if img_size <= 224 else 1.0  # MAE's util/datasets.py build_transform
    val = create_transform(img_size, is_training=False, interpolation="bicubic", mean=mean, std=std,
                           crop_pct=crop_pct)
    return train, val


def _posterize(img, bits_to_keep, **_):
    """Posterize keeping ``bits_to_keep`` (0-8) high bits of each channel: Pillow's ``ImageOps.posterize``, whose
    current releases refuse 0 bits; 0 bits clears every bit (a black image), as Pillow computed it before."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


def _posterize_any_bits(transform) -> None:
    """Give every posterize op of the RandAugment inside ``transform`` (a torchvision Compose) ``_posterize``."""
    from timm.data.auto_augment import RandAugment

    for step in getattr(transform, "transforms", ()):
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize


def _classifier(encoder: MaskedAutoencoderViT, num_classes: int, drop_path: float = 0.0) -> MaskedAutoencoderViT:
    """Global-pool classifier (MAE fine-tuning): encoder weights, fc_norm and a new head."""
    cfg = ArchConfig(**{**encoder.config.to_dict(), "decoder_depth": 0, "decoder_type": "transformer",
                        "num_classes": num_classes, "fc_norm": True, "final_norm": False,
                        "drop_path_rate": drop_path})
    model = MaskedAutoencoderViT(cfg)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith(("decoder", "mask_token", "norm.",
                                                                                  "head", "fc_norm"))}
    model.load_state_dict(state, strict=False)
    nn.init.trunc_normal_(model.head.weight, std=2e-5)
    nn.init.zeros_(model.head.bias)
    model.checkpoint = getattr(encoder, "checkpoint", None)
    return model


class _Logits(nn.Module):
    """forward = classification logits (what DDP calls)."""

    def __init__(self, model: MaskedAutoencoderViT):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features_logits(x)


def _loaders(dataset_train, dataset_val, batch_size, workers, world, rank, seed, device):
    """Training and validation loaders (pinned memory on CUDA, workers kept across epochs: accel.loader_options);
    the samplers live in the main process, so their per-epoch order reaches persistent workers."""
    if world > 1:
        train_sampler = DistributedSampler(dataset_train, world, rank, shuffle=True, seed=seed)
        val_sampler = DistributedSampler(dataset_val, world, rank, shuffle=False)
    else:
        train_sampler = torch.utils.data.RandomSampler(dataset_train, generator=torch.Generator().manual_seed(seed))
        val_sampler = None
    train = make_loader(dataset_train, device=device, num_workers=workers, batch_size=batch_size,
                        sampler=train_sampler, drop_last=len(dataset_train) >= batch_size * world)
    val = make_loader(dataset_val, device=device, num_workers=workers, batch_size=batch_size, sampler=val_sampler,
                      shuffle=False)
    return train, val, train_sampler


@torch.no_grad()
def _top1(predict, loader, device, bf16: bool = False) -> float:
    correct = torch.zeros(2, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, bf16):
            logits = predict(x)
        correct += torch.stack([(logits.argmax(1) == y).sum().float(), torch.tensor(float(len(y)), device=device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(correct)
    return float(100 * correct[0] / correct[1].clamp_min(1))


def evaluate_recipe(config: dict, *, progress: bool = True) -> dict:
    """Run a finetune / linprobe / knn recipe; writes ``results.json`` and returns it. Worker processes and the
    batch are bounded (``MAEPROBE_MAX_WORKERS``, ``MAEPROBE_MAX_BATCH_BYTES``) and the run folder is taken for this
    run (``runfolder.claimed``) before anything is written."""
    from .. import validate
    from ..io import check_output_file, check_output_folder
    from ..limits import check
    from .config import check_recipe
    from .engine import check_batch
    from .runfolder import claimed

    check_recipe(config)
    run, optim_cfg, task = config["run"], config["optim"], config["task"]
    if run["compile"]:
        raise MaeprobeError(f"run.compile=true: torch.compile applies to pretraining; task {task!r} runs eager "
                            "(set run.compile=false)")
    rank, world, local_rank = init_distributed()
    device = validate.device(run["device"]) or torch.device(f"cuda:{local_rank}" if torch.cuda.is_available()
                                                             else "cpu")
    bf16 = bf16_enabled(run["bf16"], device)  # bf16 autocast of forward passes; losses in float32
    check_output_folder(run["output_dir"])
    outputs = ["config.yaml", "results.json", "checkpoint-finetuned.pth"]
    for name in outputs:
        check_output_file(Path(run["output_dir"]) / name)
    checkpoint = config["eval"]["checkpoint"]
    if not checkpoint:
        raise MaeprobeError(f"task {task!r} needs eval.checkpoint (a pretrained checkpoint)")
    torch.manual_seed(run["seed"])
    encoder = load(checkpoint)
    root, ImageFolder = _folders(config)
    size, mean, std = encoder.config.img_size, encoder.checkpoint.mean, encoder.checkpoint.std
    train_tf, val_tf = _transforms(size, mean, std, strong=task == "finetune", optim_cfg=optim_cfg)
    if task == "knn":
        train_tf = val_tf
    dataset_train = ImageFolder(root / "train", train_tf, loader=open_image)  # maeprobe's bounded decoder
    dataset_val = ImageFolder(root / "val", val_tf, loader=open_image)
    num_classes = len(dataset_train.classes)
    workers = config["data"]["num_workers"]
    check("MAEPROBE_MAX_WORKERS", workers, "data.num_workers (DataLoader worker processes)")
    plan = batch_plan(config, world)
    batch, accum = (plan.micro, plan.accum) if task != "knn" else (plan.per_process, 1)
    check_batch(encoder.config, batch, f"one batch of {task} ({plan.describe()})")
    train_loader, val_loader, sampler = _loaders(dataset_train, dataset_val, batch, workers, world, rank, run["seed"],
                                                 device)
    out_dir = Path(run["output_dir"])
    with claimed(out_dir, config, outputs, rank=rank):  # the folder's files are this evaluation's; one writer
        out_dir.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            write_text(out_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))

        if task == "knn":
            result = {"task": task, "top1": _knn(encoder.to(device).eval(), train_loader, val_loader, device,
                                                 config["eval"]["knn_k"], config["eval"]["knn_temperature"], bf16)}
        else:
            if task == "finetune":
                model = _classifier(encoder, num_classes, optim_cfg["drop_path"]).to(device)
                from timm.optim import param_groups_layer_decay

                groups = param_groups_layer_decay(model, optim_cfg["weight_decay"], no_weight_decay_list=(
                    "pos_embed", "cls_token", "dist_token", "reg_token"), layer_decay=optim_cfg["layer_decay"])
                trainable = _Logits(model)
            elif task == "linprobe":
                encoder = encoder.to(device).eval().requires_grad_(False)
                head = nn.Sequential(nn.BatchNorm1d(encoder.config.embed_dim, affine=False, eps=1e-6),
                                     nn.Linear(encoder.config.embed_dim, num_classes)).to(device)
                nn.init.trunc_normal_(head[1].weight, std=0.01)
                nn.init.zeros_(head[1].bias)
                trainable, groups = head, [{"params": list(head.parameters()),
                                            "weight_decay": optim_cfg["weight_decay"]}]

                def predict(x):
                    with torch.no_grad():
                        feats = encoder.forward_encoder(x, 0.0)[0][:, 0].float()  # CLS after the final norm
                    return ddp_model(feats)  # DDP-wrapped head: gradients are averaged across processes
            else:
                raise MaeprobeError(f"unknown task {task!r}; choose pretrain, finetune, linprobe or knn")
            ddp_model = nn.parallel.DistributedDataParallel(
                trainable, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else trainable
            if task == "finetune":
                predict = ddp_model
            if len(train_loader) < accum:
                raise MaeprobeError(f"{len(dataset_train)} training images cannot fill one optimiser step of "
                                    f"{plan.describe()}; lower optim.global_batch")
            steps_per_epoch = len(train_loader) // accum
            total = steps_per_epoch * optim_cfg["epochs"]
            warmup = int(optim_cfg["warmup_epochs"] * steps_per_epoch)
            peak = plan.lr
            optimizer = _optimizer(optim_cfg, groups, peak, task, device)
            if progress and rank == 0:
                from .engine import run_description

                print(f"[{config['name']}] {plan.describe()}, {type(optimizer).__name__}; "
                      f"{run_description(device, bf16, False)}")
            mixup = None
            if task == "finetune" and (optim_cfg["mixup"] > 0 or optim_cfg["cutmix"] > 0):
                from timm.data import Mixup
                from timm.loss import SoftTargetCrossEntropy

                mixup = Mixup(mixup_alpha=optim_cfg["mixup"], cutmix_alpha=optim_cfg["cutmix"],
                              label_smoothing=optim_cfg["label_smoothing"], num_classes=num_classes)
                criterion = SoftTargetCrossEntropy()
            else:
                criterion = nn.CrossEntropyLoss(
                    label_smoothing=optim_cfg["label_smoothing"] if task == "finetune" else 0.0)
            step, history, watch = 0, [], NonFiniteWatch()

            def forward(micro, batch):  # one micro-batch's classification loss, float32 under bf16 autocast
                x, y = batch
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # [B, C, H, W], [B]
                if mixup is not None and len(x) % 2 == 0:
                    x, y_soft = mixup(x, y)
                else:
                    y_soft = y if mixup is None else nn.functional.one_hot(y, num_classes).float()
                with autocast(device, bf16):
                    logits = predict(x)  # [B, classes]
                return criterion(logits.float(), y_soft), {}

            for epoch in range(optim_cfg["epochs"]):
                # epoch: the sampler's order, the frozen encoder kept in eval mode under a linear probe
                if isinstance(sampler, DistributedSampler):
                    sampler.set_epoch(epoch)
                trainable.train()
                if task == "linprobe":
                    encoder.eval()
                batches, losses = itertools.islice(train_loader, steps_per_epoch * accum), []
                for _ in range(steps_per_epoch):
                    # step: the shared optimiser step (loop.optimizer_step), the losses left on the device
                    lr = lr_at(step, total, warmup, peak, optim_cfg["min_lr"])
                    out = optimizer_step(itertools.islice(batches, accum), forward, optimizer=optimizer,
                                         ddp=ddp_model, world=world, accum=accum, lr=lr, step=step, watch=watch)
                    losses.extend(loss for loss, _ in out)
                    step += 1
                # end of epoch: SYNC POINT (non-finite losses reported, the epoch's losses read, validation)
                watch.check()
                running = 0.0
                for value in torch.stack(losses).tolist():
                    running += value / accum
                trainable.eval()
                top1 = _top1(predict, val_loader, device, bf16)
                history.append({"epoch": epoch, "loss": running / steps_per_epoch, "top1": top1})
                if progress and rank == 0:
                    print(f"[{config['name']}] epoch {epoch}: loss {running / steps_per_epoch:.4f}, "
                          f"val top-1 {top1:.2f}%")
            result = {"task": task, "top1": history[-1]["top1"], "history": history}
            if rank == 0 and task == "finetune":
                from ..checkpoints import save_checkpoint

                save_checkpoint(model, out_dir / "checkpoint-finetuned.pth")
        result.update(checkpoint=str(checkpoint), num_classes=num_classes, train_images=len(dataset_train),
                      val_images=len(dataset_val))
        if rank == 0:
            write_text(out_dir / "results.json", json.dumps(result, indent=1))
    return result


def _optimizer(optim_cfg: dict, groups: list[dict], lr: float, task: str,
               device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    """AdamW (fine-tuning, LC-MAE Section 5 / MAE; fused on CUDA: ``accel.adamw``), LARS (MAE's linear probe:
    timm's ``Lars`` with the trust ratio on weight matrices only) or SGD with momentum.

    LARS equals MAE's ``util/lars.py`` only at weight decay 0 (the linear-probe recipe's value and
    ``main_linprobe.py``'s default): with a weight decay wd > 0, timm's ``Lars`` also decays (and trust-scales)
    biases and other vectors, which MAE's leaves alone, and its trust ratio is ||w|| / (||g|| + wd ||w||) where
    MAE's is ||w|| / ||g + wd w||."""
    name = optim_cfg["optimizer"]
    if name == "adamw":
        return adamw(groups, lr=lr, betas=(0.9, 0.999), device=device)  # MAE fine-tuning: torch's default betas
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name == "lars":
        from timm.optim import Lars

        split = []
        for group in groups:
            for matrix in (True, False):
                params = [p for p in group["params"] if (p.ndim > 1) == matrix]
                if params:
                    split.append({**group, "params": params, "always_adapt": matrix})
        return Lars(split, lr=lr, momentum=0.9, weight_decay=optim_cfg["weight_decay"])
    raise MaeprobeError(f"optim.optimizer must be adamw, sgd or lars for task {task!r}, got {name!r}")


@torch.no_grad()
def _features(encoder, loader, device, bf16: bool = False):
    feats, labels = [], []
    for x, y in loader:
        with autocast(device, bf16):
            cls = encoder.forward_encoder(x.to(device, non_blocking=True), 0.0)[0][:, 0]
        feats.append(nn.functional.normalize(cls.float(), dim=1))
        labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def _knn(encoder, train_loader, val_loader, device, k: int, temperature: float, bf16: bool = False) -> float:
    train_x, train_y = _features(encoder, train_loader, device, bf16)
    val_x, val_y = _features(encoder, val_loader, device, bf16)
    num_classes = int(train_y.max()) + 1
    k = min(k, len(train_x))
    sims, idx = (val_x @ train_x.T).topk(k, dim=1)  # [V, k]
    votes = torch.zeros(len(val_x), num_classes, device=device)
    votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
    return float(100 * (votes.argmax(1) == val_y).float().mean())
