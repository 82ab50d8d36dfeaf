"""The command line: outputs, written tables, and one-line errors without tracebacks."""
import pandas as pd
import pytest
from helpers import tiny_mae
from typer.testing import CliRunner

import maeprobe
from maeprobe.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_mae(depth=2, decoder_depth=1)
    return maeprobe.save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pth")


def test_info(checkpoint):
    result = runner.invoke(app, ["info", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert "width 48, depth 2, 3 heads, patch 8" in result.output
    assert "decoder" in result.output and "width 32, depth 1, 2 heads" in result.output
    assert "parameters" in result.output


def test_attn_distance_prints_summary_and_writes_table(checkpoint, tmp_path):
    out = tmp_path / "ad.json"
    result = runner.invoke(app, ["attn-distance", str(checkpoint), "--layers", "0", "--mask-ratio", "0.5",
                                 "--bootstrap", "10", "--out", str(out), "--module", "decoder",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "mean(heads)" in result.output and f"wrote {out}" in result.output
    table = pd.read_json(out)
    assert set(table["module"]) == {"decoder"} and set(table["layer"]) == {0} and len(table) == 2
    assert table["ci_low"].notna().all() and (table["mask_ratio"] == 0.5).all()


@pytest.mark.parametrize("args, message", [
    (["info", "/no/such/file.pth"], "no such file"),
    (["attn-distance", "{ckpt}", "--layers", "7"], "encoder layer 7 does not exist"),
    (["attn-distance", "{ckpt}", "--mask-ratio", "1.2"], "--mask-ratio: expected a finite number in [0.0, 1.0)"),
    (["attn-distance", "{ckpt}", "--images", "{empty}"], "no image files found"),
    (["attn-distance", "{ckpt}", "--out", "{tmp}/table.xlsx", "--bootstrap", "0"], "unknown output format"),
    (["info", "{random}"], "unrecognised file content"),
])
def test_errors_are_one_line_with_nonzero_exit(checkpoint, tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    random_file = tmp_path / "random.bin"
    random_file.write_bytes(bytes(range(3, 200)) * 3)
    args = [a.format(ckpt=checkpoint, empty=empty, tmp=tmp_path, random=random_file) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- a newcomer's first hour (issue 17)
def test_version_and_plain_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("maeprobe ")
    help_text = runner.invoke(app, ["attn-distance", "--help"]).output
    assert "<bool>" not in help_text and "--per-image-mask" in help_text
    assert "decoder metrics need the checkpoint's own size" in " ".join(help_text.split())


def test_recipe_names_as_listed_and_only_used_settings():
    listed = runner.invoke(app, ["recipe", "ls"]).output
    assert "lcmae_c " in listed
    shown = runner.invoke(app, ["recipe", "show", "lcmae_c"])
    assert shown.exit_code == 0, shown.output
    import yaml

    config = yaml.safe_load(shown.output)
    assert config["lcmae"]["cross"] == 1 and "umae" not in config and "eval" not in config
    assert not {"layer_decay", "drop_path", "mixup", "reprob"} & set(config["optim"])
    finetune = yaml.safe_load(runner.invoke(app, ["recipe", "show", "finetune_vit_b16"]).output)
    assert "umae" not in finetune and "lcmae" not in finetune and "mask_ratio" not in finetune["model"]
    assert finetune["optim"]["layer_decay"] == 0.65


def test_batch_split_message_names_what_works():
    result = runner.invoke(app, ["recipe", "show", "recipes/tiny-mae.yaml", "--nproc", "3"])
    assert result.exit_code != 0 and "run on 1, 2, 4, 8, 16 processes" in result.output
    assert result.output.count("\n") == 1


@pytest.mark.slow
def test_a_finished_recipe_run_again_writes_nothing(tmp_path):
    args = ["recipe", "run", "recipes/tiny-mae.yaml", "optim.epochs=1", "data.samples_per_epoch=16",
            f"run.output_dir={tmp_path / 'run'}"]  # one optimiser step: any finished run will do
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and "wrote" in first.output
    ckpt = tmp_path / "run" / "checkpoint-last.pth"
    before = ckpt.stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "nothing was trained or written" in again.output
    assert ckpt.stat().st_mtime_ns == before


def test_decoder_attn_sim_per_head_prints_heads(checkpoint):
    result = runner.invoke(app, ["decoder-attn-sim", str(checkpoint), "--per-head", "--bootstrap", "0",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "per head" in result.output and "head" in result.output.split("per head")[1]
