"""One report and one writer per run: a command under torchrun (2 gloo processes) prints its summary once,
writes its table once and gives the one-process table; writes are atomic; unwritable places are one line."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_mae
from PIL import Image
from typer.testing import CliRunner

import maeprobe
from maeprobe.cli import app
from maeprobe.results import write_table


@pytest.fixture(scope="module")
def checkpoint_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_cli")
    model = tiny_mae(depth=2, decoder_depth=2)
    ckpt = maeprobe.save_checkpoint(model, root / "tiny.pth")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # odd on purpose: the two processes get 3 and 2 images
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return ckpt, images


@pytest.mark.slow
def test_attn_distance_under_two_processes_reports_and_writes_once(checkpoint_and_images, tmp_path):
    ckpt, images = checkpoint_and_images
    args = ["attn-distance", str(ckpt), "--images", str(images), "--bootstrap", "20", "--device", "cpu"]
    single = CliRunner().invoke(app, args + ["--out", str(tmp_path / "one.csv")])
    assert single.exit_code == 0, single.output
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "maeprobe", *args, "--out", str(tmp_path / "out" / "two.csv")],
                              capture_output=True, text=True, env=env, timeout=300)
    output = launched.stdout + launched.stderr
    assert launched.returncode == 0, output
    assert output.count("mean attention distance (px) of the encoder") == 1, output
    assert output.count("wrote ") == 1, output
    assert "5 images" in output  # the all-reduced count, not one process's share
    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "out" / "two.csv")
    assert list(one.columns) == list(two.columns)
    np.testing.assert_allclose(two["value"].to_numpy(), one["value"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(two["ci_low"].to_numpy(), one["ci_low"].to_numpy(), rtol=1e-5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["two.csv"]  # no temporary files left


def test_an_interrupted_table_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "table.csv"
    old = pd.DataFrame({"metric": ["a"], "value": [1.0]})
    write_table(old, path)
    before = path.read_bytes()

    def half_then_fail(self, target, **kwargs):
        with open(target, "w") as f:
            f.write("metric,val")  # a partial table
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_table(pd.DataFrame({"metric": ["b"] * 1000, "value": np.arange(1000.0)}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_an_interrupted_checkpoint_write_leaves_the_previous_file(tmp_path, monkeypatch):
    model = maeprobe.build_mae(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    path = maeprobe.save_checkpoint(model, tmp_path / "ckpt.pth")
    before = path.read_bytes()

    def interrupted(obj, target, *args, **kwargs):
        with open(target, "wb") as f:
            f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        maeprobe.save_checkpoint(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_out_in_a_missing_folder_is_created_and_an_unwritable_one_is_one_line(checkpoint_and_images, tmp_path):
    ckpt, images = checkpoint_and_images
    args = ["attn-distance", str(ckpt), "--images", str(images), "--bootstrap", "0", "--device", "cpu"]
    made = CliRunner().invoke(app, args + ["--out", str(tmp_path / "new" / "deeper" / "t.csv")])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "new" / "deeper" / "t.csv").is_file()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad = CliRunner().invoke(app, args + ["--out", str(blocker / "t.csv")])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1].startswith(f"error: {blocker / 't.csv'}: cannot write there")
    assert "Traceback" not in bad.output
