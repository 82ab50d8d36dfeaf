"""Recipe configuration: YAML files with ``base:`` inheritance and ``key.sub=value`` overrides."""
from __future__ import annotations

import copy
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
    "lcmae": {"proj_dim": 1024, "mae": 1.0, "cross": 1.0, "in_view": 1.0},
    "umae": {"weight": 1.0e-4, "tau": 0.1},  # U-MAE pretrain.sh: beta 1e-4, tau 0.1
    "data": {"path": None, "single_image": None, "samples_per_epoch": None, "crop_scale": [0.2, 1.0],
             "num_workers": 8},
    "optim": {"epochs": 100, "batch_size": 64, "accum_iter": 1, "base_lr": 1.5e-4, "weight_decay": 0.05,
              "warmup_epochs": 10, "min_lr": 0.0, "betas": [0.9, 0.95], "layer_decay": 0.75,
              "label_smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.25, "drop_path": 0.1,
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


def launch_command(path: str | Path) -> str:
    """The launch command from a recipe's header comment (first line starting with '# launch:')."""
    for line in Path(path).read_text().splitlines():
        if line.lower().startswith("# launch:"):
            return line.split(":", 1)[1].strip()
    return f"maeprobe recipe run {path}"
