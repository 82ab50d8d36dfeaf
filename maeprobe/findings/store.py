"""Each finding's stored results, ``findings/<id>/``: the evidence (``evidence.csv``), the verdict rows and the key
of the inputs they were measured on (``verdict.json``, reused while the key is the same), and the figure."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..distributed import is_main
from ..errors import MaeprobeError
from ..io import write_text
from . import rules
from .catalogue import FINDINGS
from .finding import Measured
from .runs import _small_text

_NUMBERS = ("measured", "ci_low", "ci_high", "control", "control_low", "control_high")
_TEXTS = ("claim", "paper", "unit", "detail", "measure", "scale")


def _valid_row(row, finding_id: str) -> bool:
    """A stored result row as ``_result_row`` writes it: this finding (or its superseded versions), a known
    verdict, numbers where numbers belong, bounded text, figures inside ``figures/``."""
    if not isinstance(row, dict) or row.get("finding") not in (finding_id, f"{finding_id}-v1", f"{finding_id}-v2"):
        return False
    if row.get("verdict") not in (rules.HOLDS, rules.FAILS, rules.INCONCLUSIVE, rules.SUPERSEDED):
        return False
    numbers = [row.get(k) for k in _NUMBERS] + [row.get("seeds"), row.get("rule_version")]
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in numbers):
        return False
    if any(not isinstance(row.get(k), str) or len(row[k]) > 20_000 for k in _TEXTS):
        return False
    figures = row.get("figures", [])
    return isinstance(row.get("amended_after_results"), bool) and isinstance(figures, list) and all(
        isinstance(f, str) and f.startswith("figures/") and ".." not in Path(f).parts and len(f) < 300
        for f in figures)


def _stored(root: Path, finding_id: str, key: dict) -> list[dict] | None:
    """The stored results of a finding measured on the same inputs (``key``), or None. ``verdict.json`` is read
    as untrusted input: bounded (``MAEPROBE_MAX_METADATA``), nesting of any depth, and rows that are not what
    this code writes, mean "not stored" (the finding is measured again and the file replaced)."""
    stored = root / "findings" / finding_id / "verdict.json"
    try:
        saved = json.loads(_small_text(stored, "a stored verdict")) if stored.is_file() else None
    except (MaeprobeError, OSError, ValueError, RecursionError):
        saved = None
    if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("results"), list) \
            or not saved["results"] or not all(_valid_row(r, finding_id) for r in saved["results"]):
        return None
    return saved["results"]


def _result_row(finding_id: str, verdict: rules.Verdict, scale: str, measure_text: str, figures=()) -> dict:
    """One row of ``findings.csv``: the finding (or a superseded version of its rule) and its verdict."""
    finding = FINDINGS.get(finding_id.removesuffix("-v1").removesuffix("-v2"))
    return {"finding": finding_id, "claim": finding.claim, "paper": finding.paper, "measured": verdict.measured,
            "ci_low": verdict.ci_low, "ci_high": verdict.ci_high, "unit": verdict.unit, "control": verdict.control,
            "control_low": getattr(verdict, "control_low", np.nan),  # versions 1 and 2 kept no control interval
            "control_high": getattr(verdict, "control_high", np.nan),
            "verdict": verdict.verdict, "seeds": verdict.seeds, "rule_version": verdict.rule_version,
            "amended_after_results": bool(verdict.amended_after_results), "scale": scale, "detail": verdict.detail,
            "measure": measure_text, "figures": list(figures)}


def _record(root: Path, finding_id: str, key: dict, measured: Measured, labels: dict, scale: str) -> list[dict]:
    """Draw the figure and store the evidence and the verdict rows under ``key``; returns the rows."""
    from .figures import finding_figure

    figures = finding_figure(finding_id, measured, labels, root / "figures")
    rows = [_result_row(finding_id, measured.verdict, scale, FINDINGS[finding_id].measure,
                        [str(p.relative_to(root)) for p in figures if p.suffix == ".png"])]
    rows += [_result_row(i, v, scale, text) for i, v, text in measured.superseded]
    if is_main():
        folder = root / "findings" / finding_id
        folder.mkdir(parents=True, exist_ok=True)
        if not measured.evidence.empty:
            from ..results import write_table

            write_table(measured.evidence, folder / "evidence.csv")
        write_text(folder / "verdict.json", json.dumps({"key": key, "results": rows}, indent=1, default=float))
    return rows
