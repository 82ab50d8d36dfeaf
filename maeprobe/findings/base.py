"""``--scale base``: the paper's ViT-B/16 ImageNet runs on 8 GPUs are not run here; ``reproduce`` writes their
launch commands (``commands.sh``), and measures the runs once every one of them has finished."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..distributed import is_main
from ..io import record_outputs, write_text
from . import rules
from .catalogue import FINDINGS
from .reporting import _write_report
from .runs import _check_checkpoint, _flat_config, saved_config
from .store import _result_row
from .suite import BASE_RECIPES


def _base_folder(root: Path, name: str, seed: int) -> Path:
    """Where the base run ``name`` of ``seed`` writes (``run.output_dir`` of its command)."""
    return root / "runs" / "base" / f"{BASE_RECIPES[name]}-seed{seed}"


def _base_runs(root: Path, needed: list[str], seeds: int) -> dict[str, list[Path]] | None:
    """The finished base runs (``model.safetensors`` and ``config.yaml`` in every folder), or None."""
    runs = {name: [_base_folder(root, name, seed) for seed in range(seeds)] for name in needed}
    done = all((f / "model.safetensors").is_file() and (f / "config.yaml").is_file()
               for folders in runs.values() for f in folders)
    if not done:
        return None
    for folder in (f for folders in runs.values() for f in folders):  # the checkpoint is the one its run wrote
        _check_checkpoint(folder, _flat_config(saved_config(folder)), None)
    return runs


def _base_commands(ids: list[str], root: Path = Path("outputs/reproduce-base"), seeds: int = 3) -> list[str]:
    """The paper's runs (8 GPUs each, ``seeds`` seeds each: rules version 3 needs 3 for a verdict) and the one
    command that then measures them with their controls (each run's same-seed initial weights, rebuilt from its
    saved config.yaml) and applies the version-3 rules: ``reproduce --scale base`` again, once every run is
    finished."""
    runs = list(dict.fromkeys(r for i in ids for r in FINDINGS[i].runs))
    lines = [f"torchrun --nproc-per-node 8 -m maeprobe recipe run recipes/{BASE_RECIPES[r]}.yaml "
             f"data.path=$IMAGENET run.seed={seed} run.output_dir={_base_folder(root, r, seed)}"
             for seed in range(seeds) for r in runs]
    only = " ".join(f"--finding {i}" for i in ids) if len(ids) < len(FINDINGS) else ""
    lines.append(f"maeprobe reproduce --scale base --out {root} --seeds {seeds} --data $IMAGENET/val "
                 f"--eval-data $LABELLED --ref dino {only}".rstrip()
                 + "  # measures every run and its same-seed initial weights, rules version "
                 f"{rules.RULE_VERSION}")
    return lines


def _write_base(ids: list[str], root: Path, say, seeds: int = 3) -> pd.DataFrame:
    """Write and print the commands; the report says every finding is not run yet (inconclusive)."""
    commands = _base_commands(ids, root, seeds)
    if is_main():
        write_text(root / "commands.sh", "#!/usr/bin/env bash\n# maeprobe reproduce --scale base: the paper's runs "
                   "(ViT-B/16, ImageNet-1K, 8 GPUs). Set IMAGENET first.\nset -euo pipefail\n"
                   + "\n".join(commands) + "\n")
        record_outputs([root / "commands.sh"])
    say("scale base: the paper's ViT-B/16 ImageNet runs on 8 GPUs are not run here; launch them with:")
    for line in commands:
        say(f"  {line}")
    results = [_result_row(i, rules.Verdict(np.nan, np.nan, np.nan, rules.INCONCLUSIVE,
                                            f"not run: train with {root / 'commands.sh'}, then measure the checkpoints",
                                            unit="", seeds=0), "base", FINDINGS[i].measure) for i in ids]
    return _write_report(results, root, "base", say, {})
