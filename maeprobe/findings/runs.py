"""The runs the findings train: each run's resolved recipe (``run_config``), training it or reusing / resuming
it (``train``), and reading back what a run folder holds, as untrusted input: its saved recipe
(``saved_config``), its same-seed initial weights (``initial_weights``, the findings' control), its checkpoint
(``_check_checkpoint``) and its last logged loss parts."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..errors import MaeprobeError
from .suite import AE_BLOCKS, RUNS, Scale

STEPS_PER_EPOCH = 10


def recipe_dir() -> Path:
    """The bundled recipes (package data, wherever maeprobe is installed)."""
    from ..train.config import recipe_dir as bundled

    return bundled()


def _run_steps(name: str, scale: Scale, steps: int | None) -> int:
    if steps is not None:
        return int(steps)
    return scale.lcmae_steps if name.startswith("lcmae") else scale.steps


def run_config(name: str, scale: Scale, root: Path, *, seed: int = 0, data=None, steps: int | None = None,
               device: str | None = None) -> dict:
    """The resolved recipe of one run: a bundled tiny-* recipe with the scale's size and length, and ``seed``
    (model initialisation, data order, augmentation, masks)."""
    from ..train.config import load_recipe

    recipe, overrides = RUNS[name]
    n_steps = _run_steps(name, scale, steps)
    epochs = max(1, math.ceil(n_steps / STEPS_PER_EPOCH))
    folder = root / "runs" / scale.name / f"{name}-s{epochs * STEPS_PER_EPOCH}-seed{seed}"
    extra = [f"model.preset={scale.preset}", f"optim.global_batch={scale.global_batch}",
             f"optim.base_lr={scale.base_lr}", f"data.samples_per_epoch={scale.global_batch * STEPS_PER_EPOCH}",
             f"optim.epochs={epochs}", f"optim.warmup_epochs={max(1, round(0.2 * epochs))}",  # 20%, as Section 5
             f"run.seed={int(seed)}",
             # paths and names go in as values, never through YAML (which would cut "o/rep #2" at " #")
             ("run.output_dir", str(folder)), "run.checkpoint_every=50", "run.log_every=10", *scale.overrides]
    if name in AE_BLOCKS:
        extra.append(f"model.pred_size={AE_BLOCKS[name] * scale.patch}")
    if data is not None:
        extra.append(("data.path", str(data)))
    if device:
        extra.append(("run.device", str(device)))
    config = load_recipe(recipe_dir() / recipe, [*overrides, *extra])
    config["name"] = name
    return config


def train(name: str, scale: Scale, root: Path, *, seed: int = 0, data=None, steps=None, device=None,
          echo=print) -> Path:
    """Train one run (or reuse / resume it). Returns its run folder."""
    from ..train.engine import pretrain_recipe

    config = run_config(name, scale, root, seed=seed, data=data, steps=steps, device=device)
    folder = Path(config["run"]["output_dir"])
    total = config["optim"]["epochs"] * STEPS_PER_EPOCH
    if (folder / "model.safetensors").is_file():
        _check_reusable(folder, config)
        _check_checkpoint(folder, _flat_config(config), total)
        echo(f"{name} seed {seed}: reused ({folder})")
        return folder
    resumed = (folder / "checkpoint-last.pth").is_file()
    tic = time.monotonic()
    last = pretrain_recipe(config, progress=False)
    if not (folder / "model.safetensors").is_file():  # stopped early (SIGTERM, a time cap): never measure it
        from ..checkpoints import read_pickle

        step = read_pickle(last).get("step", "?") if last.is_file() else 0
        raise MaeprobeError(f"{name} seed {seed}: training stopped at step {step} of {total} ({folder}); run the "
                            "same command again to resume it")
    echo(f"{name} seed {seed}: {'resumed and ' if resumed else ''}trained {total} steps "
         f"({config['method']}, {config['model']['preset']}) in {time.monotonic() - tic:.0f} s")
    return folder


def initial_weights(folder: Path):
    """The same seed's initial weights of a run (the findings' control): its saved recipe (``saved_config``),
    rebuilt exactly as the engine started (``initial_objective``), never trained. Returns the objective
    (``.model``, and ``.projector`` for LC-MAE)."""
    from ..train.config import DEFAULTS, _merge, check_recipe
    from ..train.engine import initial_objective

    config = saved_config(folder)
    try:  # settings added to maeprobe after the run was saved take their defaults, as the engine reads them
        config = check_recipe(_merge(DEFAULTS, config))
    except MaeprobeError as exc:
        raise MaeprobeError(f"{folder / 'config.yaml'}: {exc}; expected the config.yaml its run wrote") from None
    with torch.random.fork_rng(devices=[]):
        objective = initial_objective(config)
    return objective.eval()


def _small_text(path: Path, what: str) -> str:
    """The text of a file of a stored run (``--out`` holds stored results, which are untrusted input): a regular
    file of at most ``MAEPROBE_MAX_METADATA`` bytes (a FIFO would block, a huge file fill memory)."""
    import stat

    from ..limits import check

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise MaeprobeError(f"{path}: not a regular file; expected {what}")
        check("MAEPROBE_MAX_METADATA", info.st_size, f"{path}: {what} of {info.st_size:,} bytes")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise MaeprobeError(f"{path}: not UTF-8 text; expected {what}") from None
    except OSError as exc:
        raise MaeprobeError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); expected {what}") from None


def saved_config(folder: Path) -> dict:
    """A run's saved ``config.yaml``, read as untrusted input: bounded (``_small_text``), plain YAML without
    anchors or aliases (the engine never writes them; aliases would let 1 kB expand into billions of settings
    when flattened), and only recipe keys in recipe sections. One line otherwise."""
    import yaml

    from ..train.config import DEFAULTS, _check, load_saved_yaml

    path = folder / "config.yaml"
    what = "the config.yaml of a maeprobe run"
    text = _small_text(path, what)
    try:
        data = load_saved_yaml(text)  # the engine's own reader: no anchors, aliases or keys given twice
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        problem = getattr(exc, "problem", None) or (exc.args[0] if exc.args and isinstance(exc.args[0], str) else
                                                    type(exc).__name__)
        raise MaeprobeError(f"{path}: not readable ({str(problem)[:120]}); expected {what}") from None
    if not isinstance(data, dict):
        raise MaeprobeError(f"{path}: holds a YAML {type(data).__name__}; expected {what}")
    try:
        _check(data, DEFAULTS, "")
    except MaeprobeError as exc:
        raise MaeprobeError(f"{path}: {exc}; expected {what}") from None
    return data


def _flat_config(config: dict) -> dict:
    from ..train.engine import _flat

    return _flat(config)


def _check_reusable(folder: Path, config: dict) -> None:
    """A finished run is reused only when its saved config.yaml (``saved_config``) is this run's configuration
    (settings that do not change the result excepted); otherwise one line instead of a verdict on another model."""
    from ..train.engine import _flat, changed_settings, saved_setting

    try:
        saved = _flat(saved_config(folder))
    except MaeprobeError as exc:
        raise MaeprobeError(f"{folder}: a finished run without a readable config.yaml ({exc}); move it away to "
                            "retrain") from None
    now = _flat(config)
    changed = changed_settings(saved, now)
    if changed:
        raise MaeprobeError(f"{folder}: holds a run trained with "
                            f"{changed[0]}={saved_setting(saved, changed[0])!r}, not "
                            f"{now.get(changed[0])!r}; use another --out or move the folder away")


def _check_checkpoint(folder: Path, settings: dict, total: int | None) -> None:
    """The checkpoint a finished run is measured from (``checkpoint-last.pth``) must be the one this run wrote:
    trained with ``settings`` (the run's flat configuration; settings that do not change the result excepted),
    and, when ``total`` is given, to its last step. A checkpoint copied in from another run (another seed, mask
    ratio or method) or left by an earlier, shorter run is one line, never measured as this run."""
    from ..checkpoints import read_pickle
    from ..train.engine import changed_settings, saved_setting

    last = folder / "checkpoint-last.pth"
    where = f"{last}: not the checkpoint of the run in {folder}"
    state = read_pickle(last)
    args = state.get("args") if isinstance(state, dict) else None
    saved = getattr(args, "__dict__", None)
    if not isinstance(saved, dict):
        raise MaeprobeError(f"{where} (no training settings in it); move the folder away to retrain")
    changed = changed_settings(saved, settings)
    if changed:
        key = changed[0]
        raise MaeprobeError(f"{where}: it was trained with {key}={saved_setting(saved, key)!r}, the run with "
                            f"{settings.get(key, '<absent>')!r}; move the folder away to retrain")
    step = state.get("step")
    if total is not None and step != total:
        raise MaeprobeError(f"{where}: it stopped at step {step!r} of {total}; move the folder away to retrain")


def _load(folder: Path):
    from ..checkpoints import load

    return load(folder / "checkpoint-last.pth")


def final_loss_parts(folder: Path) -> dict[str, float]:
    """The loss parts of the last logged step (log.csv ``parts``: ``name=value;...``), read from the file's last
    64 kB only (a log of any length costs the same); {} when there are none."""
    import csv
    import io
    import stat

    path = folder / "log.csv"
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return {}
        with open(path, "rb") as f:
            header = f.readline(65536).decode("utf-8", "replace")
            f.seek(max(0, path.stat().st_size - 65536))
            lines = [line for line in f.read(65536).decode("utf-8", "replace").splitlines() if line.strip()]
        if not lines or lines[-1] == header.strip():
            return {}
        last = next(csv.DictReader(io.StringIO(header + lines[-1] + "\n")))
        return {k: float(v) for k, v in (p.split("=", 1) for p in str(last.get("parts") or "").split(";") if "=" in p)}
    except (OSError, ValueError, StopIteration, csv.Error):
        return {}
