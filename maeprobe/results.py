"""Tidy results: one row per (metric, module, layer, head); CSV / JSON / Parquet by extension."""
from __future__ import annotations

import os
import stat
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
    if isinstance(reducers, (str, bytes)) or not hasattr(reducers, "__iter__"):
        raise MaeprobeError(f"to_frame: expected a list of metrics (Reducer objects), got {_shown(reducers)}")
    reducers = list(reducers)
    if not all(isinstance(r, Reducer) for r in reducers):
        raise MaeprobeError(f"to_frame: expected a list of metrics (Reducer objects), got {_shown(reducers)}")
    if context is not None and not isinstance(context, dict):
        raise MaeprobeError(f"to_frame: context must be a dict of settings columns, got {_shown(context)}")
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


def _shown(value, limit: int = 80) -> str:
    from .validate import one_line

    return one_line(value, limit) if isinstance(value, (str, os.PathLike)) else \
        f"{type(value).__name__} {one_line(value, limit)}"


NAME_MAX, PATH_MAX = 255, 4096  # bytes of one path component and of a whole path (Linux)
SYSTEM_FOLDERS = ("/dev", "/proc", "/sys")  # device and kernel folders: never a place for output files
FILE_FOLDERS = ("/dev/shm",)  # ... except the shared-memory file system, a folder of ordinary files


def output_path(value, what: str = "output", *, kind: str = "file") -> Path:
    """Check an output path before anything is computed; each problem is one ``MaeprobeError`` naming ``what``.

    Every writer of tables, figures and renders calls it. ``value`` must be a str or path (not a number or
    None), not empty, without NUL, with no component longer than 255 bytes (the file system's NAME_MAX: the
    write would fail only after the work) and at most 4096 bytes in all; nothing is written under /dev, /proc or
    /sys (as root, ``--out /dev/stdout`` would create ``/dev/stdout.png``; ``/dev/shm`` is a folder of files).
    ``kind``: ``'file'`` (a file name), ``'stem'`` (a file name that gets .png / .pdf: it must not end in a folder,
    e.g. ``.``, ``/``, ``x/..``, nor be an existing folder, device, FIFO or socket) or ``'folder'`` (not an
    existing non-folder).
    """
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise MaeprobeError(f"{what}: expected a path (text), got {_shown(value)}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise MaeprobeError(f"{what}: expected a path (text), got {_shown(value)}")
    shown = _shown(text)
    if not text.strip():
        raise MaeprobeError(f"{what} {text!r}: empty; expected a {'folder' if kind == 'folder' else 'file'} name")
    if "\0" in text:
        raise MaeprobeError(f"{what} {shown!r}: contains a NUL character; expected a path")
    try:
        encoded = [os.fsencode(part) for part in Path(text).parts]
    except UnicodeError:
        raise MaeprobeError(f"{what} {shown!r}: not encodable as a file name here") from None
    if any(len(part) > NAME_MAX for part in encoded):
        raise MaeprobeError(f"{what} {shown!r}: a name in it is longer than {NAME_MAX} bytes, the most a file "
                            "system allows; expected a shorter name")
    if len(os.fsencode(text)) > PATH_MAX:
        raise MaeprobeError(f"{what} {shown!r}: longer than {PATH_MAX} bytes; expected a shorter path")
    path = Path(text)
    real = os.path.realpath(text if kind == "folder" else path.parent)

    def inside(tops) -> bool:
        return any(real == top or real.startswith(top + "/") for top in tops)

    if inside(SYSTEM_FOLDERS) and not inside(FILE_FOLDERS):
        raise MaeprobeError(f"{what} {shown!r}: inside {_shown(real)}, a folder of devices or of the kernel; "
                            "expected a place for ordinary files")
    if kind != "folder":
        if text.rstrip().endswith(("/", "/.")) or path.name in ("", ".", ".."):
            raise MaeprobeError(f"{what} {shown!r}: names a folder; expected a file name"
                                + (" without extension (PNG and PDF are written beside it)" if kind == "stem" else ""))
        try:
            mode = os.stat(path).st_mode
        except OSError:  # nothing there (or not reachable): the writer creates it or says why it cannot
            mode = None
        if mode is not None and stat.S_ISDIR(mode):
            raise MaeprobeError(f"{what} {shown!r}: is a folder; expected a file name"
                                + (" without extension (PNG and PDF are written beside it)" if kind == "stem" else ""))
        if mode is not None and not stat.S_ISREG(mode):
            raise MaeprobeError(f"{what} {shown!r}: exists and is not a regular file (a device, FIFO or socket); "
                                "maeprobe writes only beside or over regular files")
    return path


# A CSV cell that starts with one of these is a formula to a spreadsheet (OWASP, "CSV injection"); a leading quote
# makes it text. Cells that already start with a quote get one more, so that reading strips exactly one.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text_columns(frame: pd.DataFrame) -> list:
    """Columns that may hold text: object, pandas string (``str``, ``string``) and pyarrow string dtypes."""
    return [col for col in frame.columns
            if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype)]


def _quote_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell and column name that a spreadsheet would run as a formula prefixed by ``'``."""
    def quote(value):
        return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START + ("'",)) else value

    out = frame.copy()
    for col in _text_columns(out):
        out[col] = out[col].map(quote, na_action="ignore")
    out.columns = [quote(col) for col in out.columns]
    return out


def _unquote_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Undo ``_quote_formulas`` on a CSV read back: one leading ``'`` is removed from text cells and names."""
    def unquote(value):
        return value[1:] if isinstance(value, str) and value.startswith("'") else value

    for col in _text_columns(frame):
        frame[col] = frame[col].map(unquote, na_action="ignore")
    frame.columns = [unquote(col) for col in frame.columns]
    return frame


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write by extension: .csv, .json (records) or .parquet, atomically (temporary file, then rename).

    Under torch.distributed only the main process writes (every process gets the path back), so one table
    has one writer. A missing folder is created; a place that cannot be written is a ``MaeprobeError``.
    In CSV, a text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return (a spreadsheet formula,
    e.g. from a checkpoint named ``=HYPERLINK(...)``) or with ``'`` is written with one more leading ``'``
    (OWASP's rule); ``read_table`` removes it again. A table with a carriage return in a cell gets CRLF line ends
    so that the cell is quoted.
    """
    from .distributed import is_main
    from .io import atomic_path

    if not isinstance(frame, pd.DataFrame):
        raise MaeprobeError(f"write_table: expected a pandas DataFrame, got {_shown(frame)}")
    path = output_path(path, "table path")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise MaeprobeError(f"{_shown(path)}: unknown table format; use .csv, .json or .parquet")
    if not is_main():
        return path
    with atomic_path(path) as tmp:
        if kind == "csv":
            quoted = _quote_formulas(frame)
            # Python's csv writer quotes a cell holding a line end only if it is in the line terminator: a lone
            # carriage return in a name would split the row on reading. Such a table gets CRLF ends (RFC 4180).
            crlf = any(isinstance(c, str) and "\r" in c for c in quoted.columns) or any(
                quoted[col].map(lambda v: isinstance(v, str) and "\r" in v, na_action="ignore").any()
                for col in _text_columns(quoted))
            quoted.to_csv(tmp, index=False, lineterminator="\r\n" if crlf else "\n")
        elif kind == "json":
            frame.to_json(tmp, orient="records", indent=1)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by ``write_table``: a Parquet file is bounded by its metadata first
    (``MAEPROBE_MAX_INFLATE``, ``MAEPROBE_MAX_TABLE_ROWS``, ``MAEPROBE_MAX_TABLE_BYTES``); every text column
    (object, pandas or pyarrow strings) is checked for labels longer than ``MAX_TEXT`` characters and nested
    values; a CSV's formula quotes are removed."""
    from .validate import first_line, printable

    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise MaeprobeError(f"read_table: expected the path of a results table, got {_shown(path)}")
    path = Path(path)
    name = printable(path, keep_newlines=False)
    kind = FORMATS.get(path.suffix.lower())
    if kind is not None and not path.exists():
        raise MaeprobeError(f"{name}: no such file")
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
    _check_text(frame, name)
    if kind == "csv":
        frame = _unquote_formulas(frame)
    try:
        frame["value"] = pd.to_numeric(frame["value"])
        for col in ("layer", "head"):
            if col in frame:
                frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    except (ValueError, TypeError, OverflowError) as exc:
        raise MaeprobeError(f"{name}: a column that must hold numbers does not ({exc})") from None
    return frame


TABLE_COLUMNS = ("metric", "module", "layer", "value")
MAX_TEXT = 1000  # characters of one text cell: labels end up in figures, and no checkpoint name is longer


def _check_text(frame: pd.DataFrame, name: str) -> None:
    """Refuse text longer than ``MAX_TEXT`` characters in any string-like column (object, pandas ``str`` /
    ``string``, pyarrow strings, categories of text) or column name, and nested values (lists, dicts) that
    a table of scalars never holds. Under pandas 3 text read from CSV or Parquet has the ``str`` dtype, not
    ``object``: every one of these dtypes is looked at."""
    from .validate import printable

    for col in frame.columns:
        shown = printable(str(col), keep_newlines=False)[:60]
        if isinstance(col, str) and len(col) > MAX_TEXT:
            raise MaeprobeError(f"{name}: a column name is longer than {MAX_TEXT} characters; expected a table "
                                "written by maeprobe")
        series = frame[col]
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = pd.Series(series.dtype.categories)
        if series.dtype == object:
            if series.map(lambda v: isinstance(v, (list, tuple, dict, set, bytes, bytearray))).any():
                raise MaeprobeError(f"{name}: column {shown!r} holds nested values (lists or records); expected a "
                                    "table of numbers and text written by maeprobe")
            long = series.map(lambda v: isinstance(v, str) and len(v) > MAX_TEXT).any()
        elif pd.api.types.is_string_dtype(series.dtype):
            long = bool((series.str.len() > MAX_TEXT).any())
        else:
            continue
        if long:
            raise MaeprobeError(f"{name}: column {shown!r} holds text longer than {MAX_TEXT} characters; expected a "
                                "table written by maeprobe")


_WIDTHS = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def _check_parquet(path: Path, name: str) -> None:
    """Bound a Parquet file by what it says about itself, before pandas decodes it.

    * its stated uncompressed size, like a compressed checkpoint (``MAEPROBE_MAX_INFLATE``);
    * its rows (``MAEPROBE_MAX_TABLE_ROWS``) and flat columns only (a results table has no nested ones);
    * its decoded size (``MAEPROBE_MAX_TABLE_BYTES``): fixed-width cells are rows x width from the metadata;
      text cells may be dictionary and run-length encoded (one 999-character value repeated two million times
      is a few kilobytes of pages and 2 GB decoded), so their lengths are summed from the dictionary and the
      indices, read without expanding them.
    """
    from .limits import LimitError, check, limit

    try:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        meta, schema = parquet.metadata, parquet.schema_arrow
        total = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except Exception as exc:  # not a Parquet file: pandas reports it below
        del exc
        return
    ratio, size = limit("MAEPROBE_MAX_INFLATE"), path.stat().st_size
    if total > ratio * size + (16 << 20):
        raise LimitError(f"{name}: {total:,} bytes of table from a {size:,}-byte file, more than maeprobe's limit of "
                         f"{ratio}x (raise it with the environment variable MAEPROBE_MAX_INFLATE)")
    check("MAEPROBE_MAX_TABLE_ROWS", meta.num_rows, f"{name}: rows of the Parquet table")
    import pyarrow as pa

    nested = [field.name for field in schema if pa.types.is_nested(field.type)]
    if nested or meta.num_columns != len(schema):
        raise MaeprobeError(f"{name}: column {_shown(nested[0] if nested else '?', 60)!r} holds nested values; "
                            "expected a flat table written by maeprobe")
    text, fixed = [], 0
    for i in range(meta.num_columns):
        column = meta.schema.column(i)
        if column.physical_type in ("BYTE_ARRAY",):
            text.append(column.path)
        else:
            fixed += _WIDTHS.get(column.physical_type, max(int(column.length or 0), 1))
    what = f"{name}: bytes of the Parquet table once decoded"
    decoded = meta.num_rows * (fixed + 8 * len(text))  # numbers, and the offsets / indices of text cells
    check("MAEPROBE_MAX_TABLE_BYTES", decoded, what)
    for column in text:  # read as dictionary indices: the cells' lengths are known before any is expanded
        try:
            chunks = pq.ParquetFile(path, read_dictionary=[column]).read(columns=[column]).column(0).chunks
        except Exception as exc:  # a damaged column: pandas reports it below
            del exc
            return
        for chunk in chunks:
            decoded += _text_bytes(chunk)
            check("MAEPROBE_MAX_TABLE_BYTES", decoded, what)


def _text_bytes(chunk) -> int:
    """Bytes of a text column chunk once every cell is expanded (a dictionary array: summed over its indices)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(chunk.type):
        return int(chunk.nbytes)
    lengths = pc.binary_length(chunk.dictionary).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    indices = chunk.indices.fill_null(0).to_numpy(zero_copy_only=False)
    return int(lengths[indices].sum()) if len(lengths) else 0


def _frame_digest(frame: pd.DataFrame) -> tuple:
    """Content hash of a table's columns and cells, whatever file format it was read from."""
    import hashlib

    digest = hashlib.sha256("|".join(map(str, frame.columns)).encode())
    for column in frame.columns:
        digest.update(pd.util.hash_pandas_object(frame[column].astype(str), index=False).to_numpy().tobytes())
    return ("rows", digest.hexdigest())


def read_tables(paths) -> pd.DataFrame:
    """Several tables (``read_table`` each) as one, each row's file in a ``results_file`` column, so that rows of
    different files never merge (``make_figures`` keeps them apart). The same file given twice (under any name)
    is refused."""
    if isinstance(paths, (str, bytes, os.PathLike)) or not hasattr(paths, "__iter__"):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise MaeprobeError("no results table given; expected one or more .csv, .json or .parquet files")
    frames, seen = [], {}
    for path in paths:
        frame = read_table(path)
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise MaeprobeError(f"{_shown(path)}: given twice (also as {_shown(seen[key])}); name each results table "
                                "once")
        seen[key] = path
        content = _frame_digest(frame)  # a byte copy, or the same rows in another format, is the same table
        if content in seen:
            raise MaeprobeError(f"{_shown(path)}: holds the same rows as {_shown(seen[content])} (a copy?); its lines "
                                "would be drawn twice: name each results table once")
        seen[content] = path
        frames.append(frame.assign(results_file=os.fspath(path)))
    return pd.concat(frames, ignore_index=True)


def short_names(paths: Sequence[str]) -> list[str]:
    """For each path, its shortest suffix of path components that no other path ends with (``a/ckpt.pth`` and
    ``b/ckpt.pth`` -> those; ``x.pth`` alone -> ``x.pth``): labels that tell inputs apart, built in a number of
    passes bounded by the deepest path. Equal paths get `` #N`` (their position, from 1)."""
    from collections import Counter
    from pathlib import PurePath

    parts = [PurePath(str(p)).parts or (str(p),) for p in paths]
    names: list[str | None] = [None] * len(parts)
    for depth in range(1, max((len(p) for p in parts), default=0) + 1):
        pending = [i for i, name in enumerate(names) if name is None]
        if not pending:
            break
        suffixes = [str(PurePath(*p[-depth:])) for p in parts]
        counts = Counter(suffixes)
        for i in pending:
            if counts[suffixes[i]] == 1:
                names[i] = suffixes[i]
    return [name if name is not None else f"{PurePath(*parts[i])} #{i + 1}" for i, name in enumerate(names)]


def layer_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (metric, module, layer): mean, min and max over heads (for printing, not stored)."""
    grouped = frame.groupby(["metric", "module", "layer"], sort=True)["value"]
    return grouped.agg(mean="mean", min="min", max="max").reset_index()
