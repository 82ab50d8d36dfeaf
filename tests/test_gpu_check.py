"""``benchmarks/gpu_check.sh``: the one command for a GPU machine, tested by its ``--dry-run`` (every stage on the
CPU, tiny sizes, gloo); its time budgets fit 8 minutes; a stage that runs out of time is reported and the script
goes on."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STAGES = ["env", "pytest-cuda", "probe", "pretrain", "compile", "torchrun", "reproduce"]


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)


def _rows(results: str) -> dict[str, list[str]]:
    rows = [line for line in results.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in row.strip("|").split("|")] for row in rows)}


def test_budgets_fit_eight_minutes():
    text = SCRIPT.read_text()
    budgets = dict(re.findall(r"\[([a-z-]+)\]=(\d+)", text.split("declare -A BUDGET=", 1)[1].splitlines()[0]))
    assert list(budgets) == STAGES
    assert sum(map(int, budgets.values())) <= 470  # 8 minutes with 10 s for the script itself


def test_refusals_are_one_line(tmp_path):
    for args in (["--bogus"], ["--only", "nothing"], ["--budget", "probe=soon"]):
        result = _run(*args, "--out", str(tmp_path))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ")


@pytest.mark.slow
def test_a_stage_out_of_time_is_reported_and_the_script_goes_on(tmp_path):
    result = _run("--dry-run", "--only", "pretrain", "--budget", "env=1", "--out", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    results = (tmp_path / "results.md").read_text()
    rows = _rows(results)
    assert rows["env"][0] == "out of time (budget 1 s)" and "unknown device" in results.splitlines()[0]
    assert rows["pretrain"][0] == "ok"  # the next stage still ran
    assert rows["compile"][0] == "not run (--only)"


@pytest.mark.slow
def test_dry_run_runs_every_stage(tmp_path):
    result = _run("--dry-run", "--out", str(tmp_path))
    results = (tmp_path / "results.md").read_text()
    assert result.returncode == 0, results + result.stdout + result.stderr
    rows = _rows(results)
    assert list(rows) == STAGES and all(row[0] == "ok" for row in rows.values()), results
    assert results.splitlines()[0].startswith("# maeprobe GPU check: CPU (")  # headed by the device
    assert "dry run" in results and "torch 2." in results
    assert "skipped" in rows["pytest-cuda"][3]  # the cuda tests are collected, and skipped without CUDA
    for stage in ("probe", "pretrain", "compile"):
        assert rows[stage][3].startswith("{") and '"ratio"' in rows[stage][3]
    assert "compile (aot_eager)" in rows["compile"][3]
    assert "gloo x 2" in rows["torchrun"][3] and "bf16 autocast" in rows["torchrun"][3]
    assert "inconclusive" in rows["reproduce"][3]
    for stage in STAGES:
        assert (tmp_path / "logs" / f"{stage}.log").is_file()
