"""A tool writes and replaces only what it created: a file at an output name that maeprobe did not write is refused
(one ``error:`` line, exit 2, the user's bytes untouched), before any work; a symbolic link at an output name is
refused, never replaced; a rerun into the tool's own folder still works (``.maeprobe-outputs.json`` records what
maeprobe wrote there). Each command runs as ``maeprobe <argv>`` in its own process: a forked child of one runner
process per batch (``helpers/hostile.py``), in the order given."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import save_tiny_safetensors as _save
from helpers.hostile import Result, run_cases

USER = b"USER: a file of the user's\n"


def _cli(*commands: list, cwd: Path) -> list[Result]:
    """Run each command (a list of arguments) in turn in ``cwd``, without a DINO copy."""
    cases = [{"argv": [str(a) for a in argv], "cwd": cwd, "env": {"MAEPROBE_DINO": str(cwd / "no-dino-here")}}
             for argv in commands]
    return run_cases(cases, cwd / ".runner", timeout=300)


def _ok(result: Result) -> None:
    assert result.code == 0 and not result.hung, result.describe()


def _refused(result: Result, *names: str) -> str:
    assert result.code == 2, result.describe()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in lines[0]
    return lines[0]


def _user_files(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(USER)


def _untouched(*paths: Path) -> None:
    for path in paths:
        assert not path.is_symlink() and path.read_bytes() == USER, path


@pytest.mark.slow
def test_reproduce_base_refuses_user_files_and_links(tmp_path):
    u = tmp_path / "u"
    names = [u / "findings.csv", u / "findings.md", u / "commands.sh"]
    _user_files(*names)
    singles = {name: tmp_path / f"one-{name}" for name in ("findings.csv", "findings.md", "commands.sh")}
    for name, folder in singles.items():  # each name alone is enough to refuse
        _user_files(folder / name)
    link = tmp_path / "w" / "findings.md"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "elsewhere")
    results = _cli(*(["reproduce", "--scale", "base", "--out", out] for out in (u, *singles.values(), link.parent)),
                   cwd=tmp_path)
    _refused(results[0], "not written by maeprobe")
    _untouched(*names)
    for (name, folder), result in zip(singles.items(), results[1:4]):
        _refused(result, name)
        _untouched(folder / name)
    _refused(results[4], "symbolic link")
    assert link.is_symlink() and not (tmp_path / "elsewhere").exists()


@pytest.mark.slow
def test_reproduce_base_reruns_into_its_own_folder(tmp_path):
    out = tmp_path / "own"
    command = ["reproduce", "--scale", "base", "--out", out]
    for result in _cli(command, command, cwd=tmp_path):  # a first run, then a rerun into its own folder
        _ok(result)
    assert (out / "findings.md").read_text().startswith("#") or (out / "findings.md").stat().st_size > 0
    (out / "findings.md").write_bytes(USER)  # edited by the user since: theirs now
    _refused(_cli(command, cwd=tmp_path)[0], "findings.md")
    _untouched(out / "findings.md")


def test_demo_check_refuses_user_files_and_accepts_its_own(tmp_path):
    from maeprobe import MaeprobeError
    from maeprobe.demo import check_demo_outputs, demo_outputs
    from maeprobe.io import record_outputs

    d = tmp_path / "d"
    assert check_demo_outputs(d)  # nothing there yet
    for name in ("results.csv", "mae_tiny_untrained.pth", "renders/decoder_attention_trained.png",
                 "figures/fig2.pdf"):
        folder = tmp_path / name.replace("/", "-")
        _user_files(folder / name)
        with pytest.raises(MaeprobeError, match="not written by maeprobe"):
            check_demo_outputs(folder)
        _untouched(folder / name)
    own = tmp_path / "own"
    paths = demo_outputs(own)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"written by maeprobe\n")
    record_outputs(paths)
    check_demo_outputs(own)  # a second `make demo` replaces the demo's own files
    paths[0].write_bytes(b"changed by the user\n")
    with pytest.raises(MaeprobeError, match="results.csv"):
        check_demo_outputs(own)
    link = tmp_path / "linked" / "results.csv"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(MaeprobeError, match="symbolic link"):
        check_demo_outputs(link.parent)


@pytest.mark.slow
def test_demo_cli_refuses_before_training(tmp_path):
    d = tmp_path / "d"
    names = [d / "results.csv", d / "mae_tiny_untrained.pth", d / "renders" / "decoder_attention_trained.png"]
    _user_files(*names)
    (result,) = _cli(["demo", "--out", d], cwd=tmp_path)
    _refused(result, "not written by maeprobe")
    assert "[1/4]" not in result.stdout  # refused before training started
    _untouched(*names)
    assert sorted(p.name for p in d.iterdir()) == ["mae_tiny_untrained.pth", "renders", "results.csv"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    ckpt = _save(root / "tiny.safetensors")
    from PIL import Image

    image = root / "image.png"
    Image.fromarray((np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)).save(image)
    _ok(_cli(["attn-distance", ckpt, "--out", root / "all.csv"], cwd=root)[0])
    return {"root": root, "ckpt": ckpt, "image": image, "csv": root / "all.csv"}


@pytest.mark.slow
def test_figures_refuse_a_user_file_and_rerun_into_their_own_folder(table, tmp_path):
    figs = tmp_path / "figs"
    _user_files(figs / "fig5.png")
    own = tmp_path / "own"
    refused, *own_runs = _cli(["figures", table["csv"], "--out", figs], *[["figures", table["csv"], "--out", own]] * 2,
                              cwd=tmp_path)
    _refused(refused, "fig5.png", "not written by maeprobe")
    _untouched(figs / "fig5.png")
    assert not (figs / "fig5.pdf").exists()
    for result in own_runs:  # a first run, then a rerun into its own folder
        _ok(result)
    assert (own / "fig5.png").stat().st_size > 0 and (own / "fig5.pdf").stat().st_size > 0
    (own / "fig5.pdf").unlink()
    (own / "fig5.pdf").symlink_to(tmp_path / "elsewhere.pdf")
    _refused(_cli(["figures", table["csv"], "--out", own], cwd=tmp_path)[0], "fig5.pdf", "symbolic link")
    assert (own / "fig5.pdf").is_symlink() and not (tmp_path / "elsewhere.pdf").exists()


@pytest.mark.slow
def test_render_refuses_a_user_companion_pdf_and_reruns(table, tmp_path):
    r = tmp_path / "r"
    _user_files(r / "x.pdf")
    # a file the user names (y.png) may be a regular file of theirs, replaced; its companion (x.pdf) may not
    named = tmp_path / "named"
    _user_files(named / "y.png")
    argv = ["render-attn", table["ckpt"], "--image", table["image"], "--encoder"]
    refused, first, again, replaced = _cli([*argv, "--out", r / "x"], *[[*argv, "--out", tmp_path / "own" / "x"]] * 2,
                                           [*argv, "--out", named / "y.png"], cwd=tmp_path)
    _refused(refused, "x.pdf", "not written by maeprobe")
    _untouched(r / "x.pdf")
    assert not (r / "x.png").exists()
    _ok(first)
    _ok(again)  # a rerun into its own folder
    _ok(replaced)
    assert (named / "y.png").read_bytes() != USER


@pytest.mark.slow
def test_a_link_named_as_the_output_table_is_refused(table, tmp_path):
    target = tmp_path / "victim.csv"
    target.write_bytes(USER)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    mine = tmp_path / "mine.csv"  # a regular file the user names is theirs to replace (README)
    mine.write_bytes(USER)
    refused, replaced = _cli(["attn-distance", table["ckpt"], "--out", link],
                             ["attn-distance", table["ckpt"], "--out", mine], cwd=tmp_path)
    _refused(refused, "symbolic link")
    assert link.is_symlink() and target.read_bytes() == USER
    _ok(replaced)
    assert mine.read_bytes() != USER
