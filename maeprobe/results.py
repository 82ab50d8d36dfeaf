"""Tidy results: one row per (metric, module, layer, head); CSV / JSON / Parquet by extension."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from .errors import MaeprobeError
from .metrics.base import Reducer

# n_units: the independent units (source photos, files, or the user's groups) that the intervals resample
KEY_COLUMNS = ["metric", "module", "layer", "head", "value", "n_images", "n_units"]
STAT_COLUMNS = ["std", "ci_low", "ci_high"]
FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def to_frame(reducers: Sequence[Reducer], context: dict | None = None) -> pd.DataFrame:
    """Rows of every reducer, with the run's settings (checkpoint, mask, ...) as extra columns."""
    records = []
    for reducer in reducers:
        extra = {**(context or {}), **reducer.settings()}
        units = reducer.n_units
        records += [{**row, "n_units": row.get("n_units", units), **extra} for row in reducer.rows()]
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=KEY_COLUMNS + STAT_COLUMNS)
    frame["layer"] = frame["layer"].astype("Int64")
    frame["head"] = frame["head"].astype("Int64") if "head" in frame else pd.array([pd.NA] * len(frame), "Int64")
    frame["n_images"] = frame["n_images"].astype("int64")
    frame["n_units"] = frame["n_units"].astype("Int64")
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
    from .validate import first_line, printable

    path = Path(path)
    name = printable(path, keep_newlines=False)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None or not path.is_file():  # is_file: never a FIFO or device
        raise MaeprobeError(f"{name}: not a results table (.csv, .json or .parquet)")
    if kind == "parquet":
        _check_parquet(path, name)
    try:
        if kind == "csv":
            frame = pd.read_csv(path)
        elif kind == "json":
            frame = pd.read_json(path, orient="records")
        else:
            frame = pd.read_parquet(path)
    except MemoryError:
        raise MaeprobeError(f"{name}: too large to read") from None
    except Exception as exc:  # pandas / pyarrow parser errors of every kind: the file is not a table
        first = first_line(exc, 160)
        raise MaeprobeError(f"{name}: not a readable {kind} table ({first})") from None
    if not isinstance(frame, pd.DataFrame):
        raise MaeprobeError(f"{name}: not a table of rows; expected a table written by maeprobe")
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise MaeprobeError(f"{name}: not a maeprobe results table (no {', '.join(missing)} column); expected "
                            f"the columns {', '.join(TABLE_COLUMNS)}, ...")
    for col in frame.columns:  # labels end up in figures: a 200 MB string is not a checkpoint name
        if frame[col].dtype == object and frame[col].map(lambda v: isinstance(v, str) and len(v) > 1000).any():
            raise MaeprobeError(f"{name}: column {printable(str(col), keep_newlines=False)[:60]!r} holds text "
                                "longer than 1000 characters; expected a table written by maeprobe")
    try:
        frame["value"] = pd.to_numeric(frame["value"])
        for col in ("layer", "head"):
            if col in frame:
                frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    except (ValueError, TypeError, OverflowError) as exc:
        raise MaeprobeError(f"{name}: a column that must hold numbers does not ({exc})") from None
    return frame


TABLE_COLUMNS = ("metric", "module", "layer", "value")


def _check_parquet(path: Path, name: str) -> None:
    """A Parquet file states its uncompressed size: bound it like a compressed checkpoint (MAEPROBE_MAX_INFLATE)."""
    from .limits import LimitError, limit

    try:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        total = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except Exception as exc:  # not a Parquet file: pandas reports it below
        del exc
        return
    ratio, size = limit("MAEPROBE_MAX_INFLATE"), path.stat().st_size
    if total > ratio * size + (16 << 20):
        raise LimitError(f"{name}: {total:,} bytes of table from a {size:,}-byte file, more than maeprobe's limit of "
                         f"{ratio}x (raise it with the environment variable MAEPROBE_MAX_INFLATE)")


def layer_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (metric, module, layer): mean, min and max over heads (for printing, not stored)."""
    grouped = frame.groupby(["metric", "module", "layer"], sort=True)["value"]
    return grouped.agg(mean="mean", min="min", max="max").reset_index()
