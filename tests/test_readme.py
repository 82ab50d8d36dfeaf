"""The README guides (issue 30): its runnable blocks run, its walkthrough is runnable throughout, its links and
contents resolve, its lines fit.

A fenced block is runnable when the line before its fence is ``<!-- runnable -->``. Runnable blocks run on a
checkpoint of the demo's size (the session's ``trained_checkpoint``, copied to ``outputs/demo/mae_tiny_trained.pth``
in a temporary folder, with the same recipe's initial weights as ``mae_tiny_untrained.pth``), so that the README's
paths are used as written: ``bash`` blocks line by line through the CLI (typer's CliRunner: each command must be a
``maeprobe`` command), ``python`` blocks with ``exec``. Everything else is read as text."""
from __future__ import annotations

import re
import shlex
import shutil

import pytest
from helpers import ROOT

README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
WALKTHROUGH = "## Analyse your own checkpoint"
MAX_LINE = 120


def _blocks(text: str) -> list[dict]:
    """Every fenced block: its language, code, first line number (1-based) and whether it is marked runnable."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, language = i, lines[i][3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            runnable = start > 0 and lines[start - 1].strip() == MARKER
            blocks.append({"language": language, "code": "\n".join(lines[start + 1:end]), "line": start + 1,
                           "runnable": runnable})
            i = end + 1
        else:
            i += 1
    return blocks


def _section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    following = text.find("\n## ", start + len(heading))
    return text[start:following if following >= 0 else len(text)]


def _commands(code: str) -> list[list[str]]:
    """The shell commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


RUNNABLE = [block for block in _blocks(README.read_text()) if block["runnable"]]


def test_the_walkthrough_is_runnable_throughout():
    text = README.read_text()
    section = _blocks(_section(text, WALKTHROUGH))
    assert len(section) >= 5  # about five commands
    assert all(block["runnable"] for block in section), [block["line"] for block in section]
    assert {block["language"] for block in section} <= {"bash", "python"}


def test_runnable_blocks_name_their_language_and_use_the_cli():
    assert RUNNABLE  # a lost marker would silently test nothing
    for block in RUNNABLE:
        assert block["language"] in ("bash", "python"), block["line"]
        if block["language"] == "bash":
            assert all(words[0] == "maeprobe" for words in _commands(block["code"])), block["line"]


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory, trained_checkpoint):
    """A folder holding ``outputs/demo/`` as ``make demo`` leaves it: a trained checkpoint of the demo's size and
    the same recipe's initial weights."""
    from helpers.training import TRAINED

    from maeprobe import save_checkpoint
    from maeprobe.train import PretrainConfig
    from maeprobe.train.engine import initial_objective

    folder = tmp_path_factory.mktemp("readme")
    demo = folder / "outputs" / "demo"
    demo.mkdir(parents=True)
    shutil.copy(trained_checkpoint, demo / "mae_tiny_trained.pth")
    config = PretrainConfig(out=str(folder / "unused.pth"), **TRAINED)
    save_checkpoint(initial_objective(config.recipe()).model, demo / "mae_tiny_untrained.pth")
    return folder


def test_the_runnable_blocks_run_as_written(demo_folder, monkeypatch):
    """In README order, so that a block may read what an earlier one wrote (the walkthrough's table)."""
    import matplotlib
    from typer.testing import CliRunner

    from maeprobe.cli import app

    matplotlib.use("Agg")
    monkeypatch.chdir(demo_folder)
    runner = CliRunner()
    for block in RUNNABLE:
        if block["language"] == "bash":
            for words in _commands(block["code"]):
                result = runner.invoke(app, words[1:], terminal_width=200)
                assert result.exit_code == 0, f"README line {block['line']}: {' '.join(words)}\n{result.output}"
        else:
            exec(compile(block["code"], f"README.md, block at line {block['line']}", "exec"), {})
    written = {str(p.relative_to(demo_folder)) for p in (demo_folder / "outputs" / "mine").rglob("*.png")}
    assert {"outputs/mine/figures/fig5.png", "outputs/mine/figures/entropy.png", "outputs/mine/render.png"} <= written


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_to_sections_and_files_resolve():
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        anchors = {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            where = (path.parent / file) if file else path
            assert where.exists(), f"{path.name}: link to {target}"
            if anchor and where.suffix == ".md":
                own = anchors if not file else {_slug(line.lstrip("#")) for line in where.read_text().splitlines()
                                                if line.startswith("#")}
                assert anchor in own, f"{path.name}: link to {target}"


def test_the_contents_list_every_section():
    text = README.read_text()
    contents = _section(text, "## Contents")
    for heading in re.findall(r"^## (.+)$", text, flags=re.MULTILINE):
        if heading != "Contents":
            assert f"(#{_slug(heading)})" in contents, heading


@pytest.mark.parametrize("path", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_lines_fit_except_tables_and_urls(path):
    long = [n for n, line in enumerate((ROOT / path).read_text().splitlines(), 1)
            if len(line) > MAX_LINE and not line.startswith("|") and "://" not in line]
    assert not long, f"{path}: lines {long} are longer than {MAX_LINE} characters"


def test_the_synopsis_shows_steps_and_device():
    synopsis = _blocks(_section(README.read_text(), "## Command line"))[0]["code"]
    reproduce = synopsis[synopsis.index("maeprobe reproduce"):synopsis.index("maeprobe pretrain")]
    assert "--steps" in reproduce and "--device" in reproduce
    assert "--steps" in synopsis[synopsis.index("maeprobe demo"):]
