"""Issue 30, part 1: what a newcomer meets first in the CLI, the API and the Makefile.

Each test checks one behaviour against something computed here, independently of the code under test: help
summaries read from ``--help``, the uniform level of attention distance from a brute-force sum over every pair of
tokens, the recipe header from the YAML file itself, the refusal of ``--out`` before any work by a probe that fails
if it is reached, the offline message against the variables set, the decoder error against the ``img_size`` given.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.builders import ROOT, tiny_mae
from PIL import Image
from typer.testing import CliRunner

import maeprobe
from maeprobe.cli import app
from maeprobe.errors import MaeprobeError

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random tiny MAE with a decoder in the official format: 32 px, patch 8 (a 4 x 4 grid), 2 + 2 layers."""
    model = tiny_mae(depth=2, decoder_depth=2, seed=3)
    with torch.no_grad():  # attention that is not uniform
        for name, p in model.named_parameters():
            if "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.2)
    return maeprobe.save_checkpoint(model, tmp_path_factory.mktemp("newcomer") / "tiny.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of four 32 x 32 noise photos (PNG)."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def _invoke(args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def distance_output(ckpt, images):
    """``maeprobe attn-distance`` without --out."""
    return _invoke(["attn-distance", ckpt, "--images", images, "--layers", "0", "--bootstrap", "0"])


@pytest.fixture(scope="module")
def run_output(ckpt, images):
    """``maeprobe run`` of attention distance and the spectrum, without --out."""
    return _invoke(["run", ckpt, "--images", images, "--metrics", "attn-distance,spectrum", "--bootstrap", "0"])


# --------------------------------------------------------------------------- 1. help summaries
def _summaries(help_text: str) -> dict[str, str]:
    """command -> its summary in the ``Commands:`` block of a ``--help`` (continuation lines joined)."""
    block = help_text.split("Commands:", 1)[1]
    out, name = {}, None
    for line in block.splitlines():
        entry = re.match(r"^  (\S+)\s+(.*)$", line)
        if entry:
            name = entry.group(1)
            out[name] = entry.group(2).strip()
        elif line.strip() and name is not None:
            out[name] += " " + line.strip()
    return out


@pytest.mark.parametrize("group", [[], ["recipe"]], ids=["maeprobe", "recipe"])
def test_every_help_summary_is_a_whole_sentence(group):
    summaries = _summaries(_invoke([*group, "--help"]))
    assert len(summaries) >= (10 if not group else 3)
    for command, text in summaries.items():
        assert text.endswith(".") and not text.endswith("..."), (command, text)  # not cut by click
        assert text.count("(") == text.count(")"), (command, text)  # not cut inside a parenthesis
        assert not text.endswith(("Eq.", "Fig.")), (command, text)


# --------------------------------------------------------------------------- 2. uniform level of attn-distance
def _brute_force_uniform_distance(grid: int, patch: int, num_prefix: int) -> float:
    """Mean distance (px) of uniform attention over every token, prefix keys at distance 0: for every patch query,
    the sum over all N keys of (1 / N) times the distance between patch centres, averaged over patch queries."""
    n = num_prefix + grid * grid
    total = 0.0
    for qy in range(grid):
        for qx in range(grid):
            for ky in range(grid):
                for kx in range(grid):
                    total += np.hypot(qy - ky, qx - kx) * patch / n
    return total / (grid * grid)


def test_attn_distance_prints_the_uniform_level(distance_output):
    header = distance_output.splitlines()[0]
    assert "mean attention distance (px)" in header
    shown = float(re.search(r"uniform attention: ([0-9.]+)", header).group(1))
    assert shown == pytest.approx(_brute_force_uniform_distance(grid=4, patch=8, num_prefix=1), abs=5e-4)


# --------------------------------------------------------------------------- 3. effective rank per feature
def test_run_shows_the_effective_rank_of_each_feature(run_output, ckpt, images):
    table = maeprobe.run(str(ckpt), str(images), metrics=["spectrum"], bootstrap=0)
    ranks = table[table["metric"] == "effective_rank"].set_index("feature")["value"]
    assert set(ranks.index) == {"cls", "patch_mean"}
    lines = run_output.splitlines()
    for feature, value in ranks.items():
        assert [line for line in lines if re.search(rf"\b{feature}\b", line) and f"{value:.3f}" in line], \
            (feature, value, run_output)
    assert f"{ranks.mean():.3f}" not in run_output  # not their mean


# --------------------------------------------------------------------------- 4. recipe header
def test_recipe_show_prints_the_header_comment_first():
    path = ROOT / "maeprobe" / "recipes" / "lcmae_c.yaml"
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert any("Table 1" in line for line in header)  # the paper reference
    output = _invoke(["recipe", "show", "lcmae_c"])
    assert output.startswith("\n".join(header) + "\n")


# --------------------------------------------------------------------------- 5. --out checked first
def _never(*args, **kwargs):
    raise AssertionError("computed before --out was checked")


REFUSED = [  # (arguments, the function that does the work)
    (["attn-distance", "{ckpt}", "--out", "/proc/x.csv"], "maeprobe.checkpoints.load"),
    (["run", "{ckpt}", "--out", "/proc/x.csv"], "maeprobe.checkpoints.load"),
    (["pretrain", "--out", "/proc/x.pth", "--steps", "1"], "maeprobe.train.pretrain"),
    (["demo", "--out", "/proc/x"], "maeprobe.demo.run_demo"),
    (["reproduce", "--out", "/proc/x"], "maeprobe.findings.reproduce"),
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
@pytest.mark.parametrize("args,work", REFUSED, ids=[a[0] for a, _ in REFUSED])
def test_out_is_refused_before_any_work(ckpt, monkeypatch, args, work):
    monkeypatch.setattr(work, _never)
    result = runner.invoke(app, [a.format(ckpt=ckpt) for a in args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "error: --out '/proc/x" in result.output and "computed" not in result.output


# --------------------------------------------------------------------------- 6. nothing saved
@pytest.mark.parametrize("which", ["distance_output", "run_output"])
def test_without_out_one_line_says_nothing_was_saved(request, which):
    lines = request.getfixturevalue(which).splitlines()
    assert lines[-1] == "(not saved: add --out FILE.csv|.parquet|.json to keep the table)"
    assert not [line for line in lines if line.startswith("wrote ")]


# --------------------------------------------------------------------------- 7. offline variables
OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MAEPROBE_OFFLINE")


@pytest.mark.parametrize("variable", ["MAEPROBE_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("name", ["hf-hub:someone/absent-model", "mae_pretrain_vit_base.pth"])
def test_offline_message_names_the_variable_that_is_set(tmp_path, monkeypatch, variable, name):
    for other in OFFLINE:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MaeprobeError) as caught:
        maeprobe.load(name)
    message = str(caught.value)
    assert f"unset {variable}" in message
    assert not [other for other in OFFLINE if other != variable and other in message], message


# --------------------------------------------------------------------------- 8. --img-size and the decoder
def test_run_says_img_size_left_the_decoder_out(ckpt):
    with pytest.raises(MaeprobeError, match=r"img_size=64 left out the MAE decoder.*own input size \(img_size=32\)"):
        maeprobe.run(str(ckpt), metrics=["decoder-attn-sim"], img_size=64, bootstrap=0)
    result = runner.invoke(app, ["run", str(ckpt), "--metrics", "decoder-attn-sim", "--img-size", "64"])
    assert result.exit_code == 2 and "--img-size 64 left out the MAE decoder" in result.output, result.output
    assert "(--img-size 32)" in result.output


def test_decoder_metric_says_img_size_left_the_decoder_out(ckpt):
    with pytest.raises(MaeprobeError, match=r"img_size=64 left out the MAE decoder"):
        maeprobe.decoder_attention_similarity(str(ckpt), img_size=64, bootstrap=0)


def test_render_attn_says_img_size_left_the_decoder_out(ckpt, images, tmp_path):
    result = runner.invoke(app, ["render-attn", str(ckpt), "--image", str(images / "p0.png"), "--img-size", "64",
                                 "--out", str(tmp_path / "render")])
    assert result.exit_code == 2, result.output
    assert "--img-size 64 left out the MAE decoder" in result.output and "--encoder" in result.output
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- 9. API errors name parameters
def test_capture_of_a_missing_layer_names_the_parameter_and_the_range():
    model = tiny_mae(depth=2)
    request = maeprobe.CaptureRequest.of(attention={"encoder": [7, 11]})
    with pytest.raises(MaeprobeError, match=r"^request: attention of encoder layer 7 asked, but the encoder has 2 "
                                            r"layers, valid 0 to 1$"):
        with maeprobe.capture(model, request):
            pass


def test_a_metric_of_a_missing_layer_names_the_parameter_and_the_range():
    with pytest.raises(MaeprobeError, match=r"^layers: encoder layer 7 does not exist; the encoder has 2 layers, "
                                            r"valid 0 to 1"):
        maeprobe.attention_distance(tiny_mae(depth=2), layers=[7, 11], bootstrap=0)


def test_reference_dino_offline_names_the_parameter_in_python_and_the_flag_on_the_command_line(ckpt, caches):
    with pytest.raises(MaeprobeError) as caught:
        maeprobe.run(str(ckpt), metrics=["decoder-semantics"], reference="dino", bootstrap=0)
    assert str(caught.value).startswith("reference='dino': no local copy") and "--ref" not in str(caught.value)
    result = runner.invoke(app, ["run", str(ckpt), "--metrics", "decoder-semantics", "--ref", "dino"])
    assert result.exit_code == 2 and result.output.startswith("error: --ref dino: no local copy"), result.output
    assert "reference=" not in result.output


def test_block_path_error_names_block_queries(images32):
    model = tiny_mae(depth=1)
    del model.blocks[0].attn.fused_attn  # an attention without timm's fused branch
    request = maeprobe.CaptureRequest.of(attention={"encoder": [0]})
    with pytest.raises(MaeprobeError, match=r"use block_queries=0 \(full maps\)$"):
        with maeprobe.capture(model, request, consumers={("attention", "encoder", 0): [lambda *a: None]},
                              block_queries=4):
            pass


@pytest.mark.parametrize("message,shown", [
    ("reference='dino': none found", "--ref dino: none found"),
    ("x cannot be computed in query blocks; use block_queries=0 (full maps)",
     "x cannot be computed in query blocks; use --block-queries 0 (full maps)"),
    ("no decoder; or use encoder=True for encoder attention maps", "no decoder; or use --encoder for encoder "
                                                                   "attention maps"),
    ("tau_quantile must lie in (0, 1), got 2", "--tau-quantile must lie in (0, 1), got 2"),
    ("'runs/seed=3/a.pth': no such file", "'runs/seed=3/a.pth': no such file"),  # a path is left alone
    ("pass --decoder-num-heads N (decoder_num_heads=N in Python)",
     "pass --decoder-num-heads N (decoder_num_heads=N in Python)"),
])
def test_the_command_line_shows_flags_for_parameters(message, shown):
    from maeprobe.cli.errors import as_flags

    assert as_flags(message) == shown


# --------------------------------------------------------------------------- 10. make notebook
def _dry_run(*args) -> str:
    done = subprocess.run(["make", "-n", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".venv" / "bin" / "python").exists(),
                    reason="needs make and the repository's .venv")
def test_make_notebook_allows_root_only_as_root():
    assert "--allow-root" in _dry_run("notebook", "RUN_UID=0")
    assert "--allow-root" not in _dry_run("notebook", "RUN_UID=1000")
    import os

    assert ("--allow-root" in _dry_run("notebook")) == (os.getuid() == 0)


@pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".venv" / "bin" / "python").exists(),
                    reason="needs make and the repository's .venv")
def test_make_notebook_run_executes_a_copy_outside_examples():
    commands = _dry_run("notebook-run")
    assert "nbconvert --to notebook --execute" in commands and "examples/quickstart.ipynb" in commands
    output_dir = re.search(r"--output-dir (\S+)", commands).group(1)
    assert output_dir.split("/")[0] == "outputs"  # git-ignored; the committed notebook is never overwritten
