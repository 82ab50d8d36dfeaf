"""Training commands: pretrain, and the recipe group (ls, show, run)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import _echo, _friendly, _one_line

app = typer.Typer()


@app.command("pretrain", short_help="Pretrain a small MAE in one process.")
@_friendly(flags=False)  # messages name recipe keys, not probe flags
def pretrain_cmd(
    out: Path = typer.Option(Path("outputs/pretrain/checkpoint.pth"), "--out", help="Checkpoint path (.pth)."),
    preset: str = typer.Option("mae_vit_tiny_patch8_64", "--preset", help="Architecture preset."),
    images: Optional[Path] = typer.Option(None, "--images",
                                          help="Folder of training images (default: built-in photos)."),
    steps: int = typer.Option(300, "--steps", min=1, max=10_000_000),
    batch_size: int = typer.Option(32, "--batch-size", min=1, max=1 << 20),
    base_lr: float = typer.Option(1.5e-4, "--base-lr", min=0.0, max=10.0, help="lr = base_lr * batch_size / 256."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", min=0.0, max=10.0),
    warmup_steps: int = typer.Option(20, "--warmup-steps", min=0, max=10_000_000),
    mask_ratio: float = typer.Option(0.75, "--mask-ratio"),
    norm_pix_loss: bool = typer.Option(False, "--norm-pix-loss", help="Per-patch normalised pixel targets."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0.0, max=1e7,
                                                help="Stop (and save) after this long."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1),
    device: Optional[str] = typer.Option(None, "--device"),
):
    """Minimal single-process MAE pretraining; saves an official-format checkpoint."""
    from .. import validate
    from ..io import check_output_file
    from ..results import output_path
    from ..train import PretrainConfig, pretrain

    check_output_file(output_path(out, "--out"), (".pth",))  # /dev, /proc, /sys refused before anything runs
    validate.mask_ratio(mask_ratio, None, "--mask-ratio")
    validate.device(device)

    config = PretrainConfig(preset=preset, images=str(images) if images else None, out=str(out), steps=steps,
                            batch_size=batch_size, base_lr=base_lr, weight_decay=weight_decay,
                            warmup_steps=warmup_steps, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
                            max_minutes=max_minutes, seed=seed, device=device)
    path = pretrain(config)
    _echo(f"wrote {path} (log.csv and config.yaml beside it)")


recipe_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="Bundled pretraining and evaluation recipes (recipes/*.yaml).")


def _recipe_dir() -> Path:
    from ..train.config import recipe_dir  # package data: found wherever maeprobe is installed

    return recipe_dir()


def _recipe_path(recipe: Path) -> Path:
    """A recipe file, or a bundled recipe by the name ``recipe ls`` prints (``lcmae_c`` or ``lcmae_c.yaml``)."""
    if recipe.exists() or len(recipe.parts) != 1:
        return recipe
    bundled = _recipe_dir() / (recipe.name if recipe.suffix in (".yaml", ".yml") else f"{recipe.name}.yaml")
    return bundled if bundled.is_file() and not bundled.name.startswith("_") else recipe


@recipe_app.command("ls", short_help="List the recipes with their task, method and launch command.")
@_friendly(flags=False)  # messages name recipe keys, not probe flags
def recipe_ls(folder: Optional[Path] = typer.Argument(None, help="Recipe folder (default: the bundled recipes/).")):
    """List recipes with their task, method and launch command."""
    from ..errors import MaeprobeError
    from ..train.config import launch_command, load_recipe

    folder = folder or _recipe_dir()
    for path in sorted(folder.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        try:
            config = load_recipe(path)
        except MaeprobeError as exc:  # one bad file does not hide the others
            _echo(f"{path.stem:<28} (not listed: {_one_line(exc)})")
            continue
        what = config["task"] if config["task"] != "pretrain" else f"pretrain/{config['method']}"
        _echo(f"{path.stem:<28} {what:<16} {launch_command(path)}")


@recipe_app.command("show", short_help="Print a resolved recipe as YAML without running it.")
@_friendly(flags=False)  # messages name recipe keys, not probe flags
def recipe_show(
    recipe: Path = typer.Argument(..., help="Recipe YAML, or a bundled recipe's name as `recipe ls` prints it."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. optim.epochs=3"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, max=1 << 16,
                                        help="Processes to derive the batch split for "
                                                              "(default: $WORLD_SIZE, else 1)."),
):
    """Print the fully resolved recipe as YAML (what `recipe run` would run; nothing is started), with the
    derived per-process batch, gradient accumulation and lr as comments."""
    import os

    from ..errors import MaeprobeError
    from ..train.config import load_recipe, show_recipe

    path = _recipe_path(recipe)
    config = load_recipe(path, overrides or [])
    world = os.environ.get("WORLD_SIZE", "1")
    if nproc is None and (not world.strip().isdigit() or int(world) < 1):
        raise MaeprobeError(f"environment variable WORLD_SIZE={_one_line(world)[:40]!r}: expected a whole number "
                            ">= 1 (or pass --nproc N)")
    shown = show_recipe(config, nproc or int(world))  # a batch that cannot be split is refused before any output
    header = _header(path)  # the launch command and the paper reference the file starts with
    if header:
        _echo(header, block=True)
    _echo(shown, nl=False, block=True)


def _header(path: Path) -> str:
    """The comment lines at the top of a recipe file, as they are written (read within the recipe size limit)."""
    from ..train.config import MAX_RECIPE_BYTES

    with open(path, encoding="utf-8", errors="replace") as file:
        text = file.read(MAX_RECIPE_BYTES)
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


@recipe_app.command("run", short_help="Run a recipe, alone or under torchrun with DDP.")
@_friendly(flags=False)  # messages name recipe keys, not probe flags
def recipe_run(
    recipe: Path = typer.Argument(..., help="Recipe YAML, or a bundled recipe's name as `recipe ls` prints it."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. optim.epochs=3"),
):
    """Run a recipe in this process, or under `torchrun --nproc-per-node N` with DDP."""
    from ..train.config import load_recipe

    config = load_recipe(_recipe_path(recipe), overrides or [])
    if config["task"] == "pretrain":
        from ..train.engine import pretrain_recipe

        last = Path(config["run"]["output_dir"]) / config["run"]["checkpoint_name"]
        before = last.stat().st_mtime_ns if last.is_file() else None
        path = pretrain_recipe(config)
        if before is not None and path.is_file() and path.stat().st_mtime_ns == before:
            _echo(f"{path}: this run had already finished; nothing was trained or written")
        else:
            _echo(f"wrote {path} (config, log.csv beside it)")
    else:
        from ..train.evaluate import evaluate_recipe

        result = evaluate_recipe(config)
        _echo(f"{config['name']}: {result['task']} top-1 {result['top1']:.2f}% "
                   f"({config['run']['output_dir']}/results.json)")
