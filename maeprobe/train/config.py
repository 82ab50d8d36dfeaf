"""Recipe configuration: YAML files with ``base:`` inheritance and ``key.sub=value`` overrides."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import MaeprobeError

DEFAULTS: dict = {
    "name": "run",
    "task": "pretrain",  # pretrain | finetune | linprobe | knn
    "method": "mae",  # mae | lcmae | ae | umae   (pretraining)
    "model": {"preset": "mae_vit_base_patch16", "decoder_depth": None, "decoder_embed_dim": None,
              "decoder_num_heads": None, "decoder_type": "transformer", "pred_size": None,
              "norm_pix_loss": False, "mask_ratio": 0.75},
    # LC-MAE (Section 3.3): loss weights of L_MAE, L_cross (Eq. 5), L_in (Eq. 6); projector output 1024-d
    # (Section 5). projector_input: 'pred' = v = p(h(x, m)) on the Eq. 1 output (the paper), 'features' =
    # the normalised decoder features before decoder_pred. in_view_target: 'target' = the reconstruction
    # target of L_MAE (normalised patches under norm_pix_loss), 'pixels' = the input patches.
    # reduction: 'mean' (over the positions / pairs of the batch, as MAE's own loss) or 'sum' (Eq. 5/6 as
    # written: per-image sums, averaged over images).
    "lcmae": {"proj_dim": 1024, "mae": 1.0, "cross": 1.0, "in_view": 1.0, "projector_input": "pred",
              "in_view_target": "target", "reduction": "mean"},
    # U-MAE: weight x uniformity loss (tau) of the CLS feature over the gathered batch. gather: 'exact' (the
    # full-batch gradient, independent of the number of processes) or 'reference' (zhangq327/U-MAE's
    # GatherLayer: each process keeps only its own slice of the gradient, i.e. 1/W of the full-batch one).
    "umae": {"weight": 1.25e-5, "tau": 0.1, "gather": "exact"},
    "data": {"path": None, "single_image": None, "samples_per_epoch": None, "crop_scale": [0.2, 1.0],
             "num_workers": 8},
    # global_batch: images per optimiser step over all processes (the papers' "batch size");
    # per-process batch and gradient accumulation follow from the number of processes (``batch_plan``);
    # batch_per_process caps what one process holds at once (more accumulation instead).
    # lr = base_lr x global_batch / 256 (MAE's rule, LC-MAE Section 5).
    "optim": {"optimizer": "adamw", "epochs": 100, "global_batch": 1024, "batch_per_process": None,
              "base_lr": 1.5e-4, "weight_decay": 0.05, "warmup_epochs": 20, "min_lr": 0.0, "betas": [0.9, 0.95],
              "layer_decay": 0.75, "label_smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.25,
              "drop_path": 0.1,
              # MAE's RandAugment, magnitude capped at 9: at 10 timm's increasing posterize asks Pillow for
              # 0 bits, which current Pillow rejects (a rare, random crash)
              "auto_augment": "rand-m9-mstd0.5-inc1-mmax9"},
    "eval": {"checkpoint": None, "knn_k": 20, "knn_temperature": 0.07},
    "run": {"output_dir": "runs/{name}", "seed": 0, "checkpoint_every": 1000, "log_every": 20, "bf16": True,
            "compile": False, "device": None, "resume": True, "max_minutes": None,
            "checkpoint_name": "checkpoint-last.pth"},
}


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise MaeprobeError(f"{path}: circular 'base:'")
    if not path.is_file():
        raise MaeprobeError(f"{path}: no such recipe")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MaeprobeError(f"{path}: invalid YAML ({exc})") from None
    if "base" in data:
        base = _read((path.parent / data.pop("base")).resolve(), seen + (path,))
        data = _merge(base, data)
    return data


def parse_override(text: str) -> tuple[list[str], object]:
    """``optim.epochs=3`` -> (['optim', 'epochs'], 3); values are parsed as YAML scalars."""
    if "=" not in text:
        raise MaeprobeError(f"override {text!r}: expected key=value, e.g. optim.epochs=3")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """DEFAULTS <- base recipes <- recipe <- overrides. Unknown keys are an error."""
    config = _merge(DEFAULTS, _read(Path(path).resolve()))
    for text in overrides:
        keys, value = parse_override(text)
        node = config
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise MaeprobeError(f"override {text!r}: unknown section {key!r}")
            node = node[key]
        if keys[-1] not in node:
            raise MaeprobeError(f"override {text!r}: unknown key {'.'.join(keys)!r}")
        node[keys[-1]] = value
    _check(config, DEFAULTS, "")
    config["run"]["output_dir"] = str(config["run"]["output_dir"]).format(name=config["name"])
    return config


def _check(config: dict, reference: dict, prefix: str) -> None:
    for key, value in config.items():
        if key in ("base",):
            continue
        if key not in reference:
            raise MaeprobeError(f"unknown recipe key {prefix}{key!r}")
        if isinstance(reference[key], dict) and isinstance(value, dict):
            _check(value, reference[key], f"{prefix}{key}.")


@dataclass(frozen=True)
class BatchPlan:
    """How a recipe's global batch is split: ``world`` processes x ``accum`` micro-steps x ``micro`` images."""

    global_batch: int
    world: int
    per_process: int
    accum: int
    micro: int
    lr: float | None = None

    def describe(self) -> str:
        text = (f"global batch {self.global_batch} = {self.world} process(es) x {self.accum} accumulation "
                f"step(s) x {self.micro} images")
        return text + (f"; lr {self.lr:.4g}" if self.lr is not None else "")


def batch_plan(config: dict, world: int) -> BatchPlan:
    """Split ``optim.global_batch`` over ``world`` processes, respecting ``optim.batch_per_process``.

    Each process takes global_batch / world images per optimiser step (an error when that is not a whole
    number); with a cap, the smallest number of accumulation steps whose micro-batch divides the
    per-process batch and fits under the cap. The lr is base_lr x global_batch / 256 in every case.
    """
    optim = config["optim"]
    global_batch = int(optim["global_batch"])
    if global_batch < 1 or world < 1:
        raise MaeprobeError(f"optim.global_batch must be >= 1, got {global_batch}")
    if global_batch % world:
        raise MaeprobeError(f"optim.global_batch={global_batch} cannot be split over {world} processes; "
                            f"use a multiple of {world}")
    per_process = global_batch // world
    cap = optim.get("batch_per_process")
    accum = 1
    if cap is not None:
        if int(cap) < 1:
            raise MaeprobeError(f"optim.batch_per_process must be >= 1, got {cap}")
        accum = -(-per_process // int(cap))
        while per_process % accum:
            accum += 1
    lr = optim["base_lr"] * global_batch / 256 if optim.get("base_lr") is not None else None
    return BatchPlan(global_batch, world, per_process, accum, per_process // accum, lr)


def show_recipe(config: dict, world: int = 1) -> str:
    """The resolved configuration as YAML, followed by the derived batch split and lr (as YAML comments)."""
    text = yaml.safe_dump(config, sort_keys=False)
    plan = batch_plan(config, world)
    text += f"# derived for {world} process(es): {plan.describe()}\n"
    if config["task"] == "pretrain":
        text += f"# method {config['method']}, mask ratio {config['model']['mask_ratio']}, " \
                f"{config['optim']['epochs']} epochs, {config['optim']['warmup_epochs']} warmup epochs\n"
    return text


def launch_command(path: str | Path) -> str:
    """The launch command from a recipe's header comment (first line starting with '# launch:')."""
    for line in Path(path).read_text().splitlines():
        if line.lower().startswith("# launch:"):
            return line.split(":", 1)[1].strip()
    return f"maeprobe recipe run {path}"
