"""Tidy results: one row per (metric, module, layer, head); CSV / JSON / Parquet by extension."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from .errors import MaeprobeError
from .metrics.base import Reducer

KEY_COLUMNS = ["metric", "module", "layer", "head", "value", "n_images"]
STAT_COLUMNS = ["std", "ci_low", "ci_high"]
FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def to_frame(reducers: Sequence[Reducer], context: dict | None = None) -> pd.DataFrame:
    """Rows of every reducer, with the run's settings (checkpoint, mask, ...) as extra columns."""
    records = []
    for reducer in reducers:
        extra = {**(context or {}), **reducer.settings()}
        records += [{**row, **extra} for row in reducer.rows()]
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=KEY_COLUMNS + STAT_COLUMNS)
    frame["layer"] = frame["layer"].astype("Int64")
    frame["head"] = frame["head"].astype("Int64") if "head" in frame else pd.array([pd.NA] * len(frame), "Int64")
    frame["n_images"] = frame["n_images"].astype("int64")
    ordered = KEY_COLUMNS + [c for c in STAT_COLUMNS if c in frame] + \
        [c for c in frame.columns if c not in KEY_COLUMNS + STAT_COLUMNS]
    return frame[ordered]


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write by extension: .csv, .json (records) or .parquet, atomically (temporary file, then rename).

    Under torch.distributed only the main process writes (every process gets the path back), so one table
    has one writer. A missing folder is created; a place that cannot be written is a ``MaeprobeError``.
    """
    from .distributed import is_main
    from .io import atomic_path

    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise MaeprobeError(f"{path}: unknown table format; use .csv, .json or .parquet")
    if not is_main():
        return path
    with atomic_path(path) as tmp:
        if kind == "csv":
            frame.to_csv(tmp, index=False)
        elif kind == "json":
            frame.to_json(tmp, orient="records", indent=1)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by ``write_table``."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None or not path.is_file():
        raise MaeprobeError(f"{path}: not a results table (.csv, .json or .parquet)")
    if kind == "csv":
        frame = pd.read_csv(path)
    elif kind == "json":
        frame = pd.read_json(path, orient="records")
    else:
        frame = pd.read_parquet(path)
    for col in ("layer", "head"):
        if col in frame:
            frame[col] = frame[col].astype("Int64")
    return frame


def layer_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (metric, module, layer): mean, min and max over heads (for printing, not stored)."""
    grouped = frame.groupby(["metric", "module", "layer"], sort=True)["value"]
    return grouped.agg(mean="mean", min="min", max="max").reset_index()
