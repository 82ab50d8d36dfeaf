"""Running maeprobe's command line on hostile inputs, the way an attacker's file would reach it.

``run_cases`` sends its cases to a Python process (``hostile_runner.py``, next to this file) that imported maeprobe
once and forks one child per case; the process is started at the first call and serves every later call of the
same test process (its imports cost about 6 s, once). Each child:

* runs ``maeprobe <argv>`` in its own working folder with ``HOME`` and the hub caches inside the test's
  temporary folder, offline mode on (its environment is the call's, set in the child);
* has its address space limited to what the parent already mapped plus ``budget_mb`` (``RLIMIT_AS``), so an
  input that makes maeprobe allocate gigabytes fails instead of exhausting the machine; its peak resident
  memory above the parent's is reported (``extra_mb``);
* has every network call (``socket.connect`` off the machine, ``getaddrinfo``, ``create_connection``) replaced
  by one that records the attempt and fails (local AF_UNIX sockets stay open: DataLoader workers use them);
* is killed after ``timeout`` seconds (a hang is reported as ``hung``).

The helpers below then check what a refusal must look like: exit status 2, one line ``error: ...`` on stderr,
no traceback, no terminal escape characters, no payload marker, nothing written outside the named output.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

RUNNER = Path(__file__).with_name("hostile_runner.py")
MARKER = "PAYLOAD_RAN"


@dataclass
class Result:
    argv: list
    code: int | None
    stdout: str
    stderr: str
    extra_mb: float
    network: bool
    hung: bool

    def describe(self) -> str:
        return (f"maeprobe {' '.join(map(str, self.argv))}: exit {self.code}, hung={self.hung}, "
                f"network={self.network}, +{self.extra_mb:.0f} MB\nstdout: {self.stdout[-800:]}\n"
                f"stderr: {self.stderr[-1500:]}")


_RUNNER: dict = {}  # the runner process of this test process, started by the first ``run_cases``


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAEPROBE_", "HF_", "TORCH_HOME", "RANK",
                                                                      "WORLD_SIZE", "LOCAL_RANK"))}
    env.update({"HOME": str(home), "HF_HOME": str(home / "hf"), "TORCH_HOME": str(home / "torch"),
                "HF_HUB_OFFLINE": "1", "MAEPROBE_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "COLUMNS": "200"})
    return env


def _runner() -> subprocess.Popen:
    """The runner process, started on first use (its own home and caches in a temporary folder of its own, where
    its imports may write; removed when the test process ends)."""
    proc = _RUNNER.get("proc")
    if proc is None or proc.poll() is not None:
        folder = Path(tempfile.mkdtemp(prefix="hostile_runner_"))
        (folder / "home").mkdir()
        stderr = open(folder / "stderr.txt", "w+")
        proc = subprocess.Popen([sys.executable, str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, text=True, env=_base_env(folder / "home"), cwd=folder)
        _RUNNER.update(proc=proc, folder=folder, stderr=stderr)
        atexit.register(_stop_runner)
    return proc


def _stop_runner() -> None:
    proc = _RUNNER.pop("proc", None)
    if proc is not None:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        _RUNNER["stderr"].close()
        shutil.rmtree(_RUNNER["folder"], ignore_errors=True)


def run_cases(cases: list[dict], root: Path, *, budget_mb: int = 1500, timeout: float = 60.0) -> list[Result]:
    """Run each case (``{"argv": [...], "cwd": path, "env": {...}}``) in a forked, limited child.

    ``root`` holds the children's home and caches (``root/home``)."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    payload = {"cases": [{"argv": [str(a) for a in c["argv"]], "cwd": str(c.get("cwd", root)),
                          "env": c.get("env", {}), "timeout": c.get("timeout", timeout)} for c in cases],
               "budget_mb": budget_mb, "network_log": str(root / "network.log"), "env": _base_env(home)}
    proc = _runner()
    proc.stdin.write(json.dumps(payload) + "\n")
    proc.stdin.flush()
    wait = 120 + sum(p["timeout"] + 5 for p in payload["cases"])
    ready, _, _ = select.select([proc.stdout], [], [], wait)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _RUNNER.pop("proc", None)
        _RUNNER["stderr"].seek(0)
        raise RuntimeError(f"hostile runner failed or took over {wait} s: {_RUNNER['stderr'].read()[-3000:]}")
    rows = json.loads(line)
    return [Result(c["argv"], r["code"], r["stdout"], r["stderr"], r["extra_mb"], r["network"], r["hung"])
            for c, r in zip(cases, rows)]


def assert_refused(result: Result, *must_contain: str, budget_mb: float = 1000) -> str:
    """Exit status 2 with exactly one line ``error: ...`` (containing each of ``must_contain``) on stderr, no
    traceback, no control characters, no network, no hang, bounded memory. Returns the line."""
    assert not result.hung, result.describe()
    assert not result.network, result.describe()
    assert result.code == 2, result.describe()
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.describe()
    assert "Traceback" not in result.stderr + result.stdout, result.describe()
    assert not any(ord(ch) < 32 and ch not in "\n\t" or 0x7f <= ord(ch) < 0xa0 for ch in result.stderr), \
        result.describe()
    for text in must_contain:
        assert text in lines[0], f"{text!r} not in the error line\n{result.describe()}"
    assert result.extra_mb < budget_mb, result.describe()
    return lines[0]


def assert_clean_exit(result: Result, budget_mb: float = 1000) -> None:
    """Exit status 0, no traceback, no network, bounded memory."""
    assert not result.hung and not result.network, result.describe()
    assert result.code == 0, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    assert result.extra_mb < budget_mb, result.describe()


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with (size, mtime_ns, mode), links not followed."""
    out = {}
    for path in sorted(folder.rglob("*")):
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):  # a folder's own times change with its entries: compare entries instead
            out[str(path.relative_to(folder))] = (0, 0, st.st_mode)
        else:
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def changed_outside(before: dict, after: dict, allowed: list[str]) -> list[str]:
    """Paths created or modified between two snapshots that are not under one of ``allowed`` (relative paths);
    the runner's own home and network log are always allowed."""
    allowed = [a.rstrip("/") for a in allowed] + ["home", "network.log"]
    changed = [p for p in after if before.get(p) != after[p]] + [p for p in before if p not in after]
    return [p for p in changed if not any(p == a or p.startswith(a + "/") for a in allowed)]


def payload_pickle(marker: Path) -> bytes:
    """Pickle bytes whose loading (by an unsafe unpickler) writes ``marker``."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    return pickle.dumps({"model": Payload()}, protocol=2)
