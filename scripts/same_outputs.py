"""Byte-identical outputs before and after a refactor (issue 28's acceptance check).

Runs the same commands with the code of a base commit (a temporary ``git worktree``) and with the working tree,
in the same environment, the same scratch folder and the same inputs, and compares the files they write byte for
byte (sha256):

- ``demo``: ``maeprobe demo --steps S`` -> ``results.csv`` (the demo's fixed seed);
- ``run``: ``maeprobe run`` on one fixed tiny checkpoint (the base tree's demo checkpoint, used by both trees) with
  every metric, written as Parquet (``--ref`` the same checkpoint, so Eq. 8 runs too);
- ``tiny``: ``maeprobe reproduce --scale tiny --steps 1 --seeds 1`` -> ``findings.csv``;
- ``released``: ``maeprobe reproduce --scale released`` on random-weight stand-ins of the released files
  (``benchmarks/gpu_check.py``'s ``place_stand_ins``, placed once with the base code) -> ``findings.csv``.

Usage (about 6-8 minutes on 2 cores)::

    .venv/bin/python scripts/same_outputs.py --base 9a875cb            # every part
    .venv/bin/python scripts/same_outputs.py --base 9a875cb --parts run,tiny

Exit status 0 when every compared file is identical, 1 otherwise (the differing cells are printed).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("demo", "run", "tiny", "released")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _maeprobe(tree: Path, cwd: Path, args: list[str], env: dict | None = None) -> None:
    """``python -m maeprobe ARGS`` with the code of ``tree`` first on the path, in ``cwd``."""
    full = dict(os.environ, PYTHONPATH=str(tree), MAEPROBE_OFFLINE="1", HF_HUB_OFFLINE="1", **(env or {}))
    full.pop("MAEPROBE_DINO", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "maeprobe", *args], cwd=cwd, env=full, capture_output=True,
                          text=True)
    print(f"    [{tree.name}] maeprobe {' '.join(args[:3])} ... {time.perf_counter() - started:.0f} s", flush=True)
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"maeprobe {' '.join(args)} failed with {proc.returncode} in {tree}")


def _place_stand_ins(tree: Path, root: Path) -> None:
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import gpu_check; "
            f"gpu_check.place_stand_ins({str(root)!r})")
    subprocess.run([sys.executable, "-c", code], cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), check=True)


def _run_part(part: str, tree: Path, scratch: Path, fixtures: Path, steps: int) -> list[Path]:
    """Run one part with ``tree``'s code in an emptied ``scratch``; the files to compare."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    if part == "demo":
        _maeprobe(tree, scratch, ["demo", "--out", "demo", "--steps", str(steps)])
        return [scratch / "demo" / "results.csv"]
    if part == "run":
        ckpt = fixtures / "tiny.pth"
        _maeprobe(tree, scratch, ["run", str(ckpt), "--ref", str(ckpt), "--out", "run.parquet", "--device", "cpu"])
        return [scratch / "run.parquet"]
    if part == "tiny":
        _maeprobe(tree, scratch, ["reproduce", "--scale", "tiny", "--steps", "1", "--seeds", "1", "--out", "rep",
                                  "--device", "cpu"])
        return [scratch / "rep" / "findings.csv"]
    if part == "released":
        shutil.copytree(fixtures / "caches", scratch / "caches")
        env = {"HF_HUB_CACHE": str(scratch / "caches" / "hf"), "TORCH_HOME": str(scratch / "caches" / "torch")}
        _maeprobe(tree, scratch, ["reproduce", "--scale", "released", "--probe-images", "8", "--out", "rel",
                                  "--device", "cpu"], env)
        return [scratch / "rel" / "findings.csv"]
    raise SystemExit(f"unknown part {part!r}; expected one of {', '.join(PARTS)}")


def _show_difference(before: Path, after: Path) -> None:
    import pandas as pd

    read = pd.read_parquet if before.suffix == ".parquet" else pd.read_csv
    a, b = read(before), read(after)
    if list(a.columns) != list(b.columns) or a.shape != b.shape:
        print(f"      columns/shape differ: {a.shape} {list(a.columns)}\n      vs {b.shape} {list(b.columns)}")
        return
    try:
        print(a.compare(b).head(20).to_string())
    except ValueError as exc:
        print(f"      {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="commit (or ref) whose outputs are the reference")
    parser.add_argument("--after", default=None, help="commit to compare (default: the working tree)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--steps", type=int, default=300, help="demo pretraining steps (default: the demo's 300)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (printed)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed check still removes its worktrees
    parts = [p for p in args.parts.split(",") if p]
    work = Path(tempfile.mkdtemp(prefix="maeprobe-same-"))
    base = work / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.base], check=True,
                   capture_output=True)
    after_tree = REPO
    if args.after:
        after_tree = work / "after"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(after_tree), args.after],
                       check=True, capture_output=True)
    try:
        fixtures = work / "fixtures"
        fixtures.mkdir()
        if "run" in parts:  # one fixed tiny checkpoint for both trees: the base tree's demo checkpoint
            _maeprobe(base, work, ["demo", "--out", str(fixtures / "demo"), "--steps", "5"])
            shutil.copy(fixtures / "demo" / "mae_tiny_trained.pth", fixtures / "tiny.pth")
        if "released" in parts:
            _place_stand_ins(base, fixtures / "caches")
        same = True
        for part in parts:
            print(f"{part}:", flush=True)
            scratch = work / "scratch"  # one path for both trees: path columns are equal
            before = _run_part(part, base, scratch, fixtures, args.steps)
            kept = work / f"{part}-base"
            kept.mkdir()
            before = [Path(shutil.copy(p, kept / p.name)) for p in before]
            after = _run_part(part, after_tree, scratch, fixtures, args.steps)
            for b, a in zip(before, after):
                equal = _sha(b) == _sha(a)
                same &= equal
                print(f"  {a.name}: {'identical' if equal else 'DIFFERENT'} (sha256 {_sha(a)[:16]})")
                if not equal:
                    _show_difference(b, a)
        print("all identical" if same else "outputs differ")
        return 0 if same else 1
    finally:
        for tree in (base, work / "after"):
            if tree.exists():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
