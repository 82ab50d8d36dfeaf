"""Class 4 of issue 15: outputs stay inside what the user named, only regular files are replaced, and a refused
run leaves every earlier output as it was. Paths are checked before anything is computed: the cases below name a
checkpoint that does not exist, so a refusal that names the output proves the output was checked first."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from helpers import QUICK, RECIPES
from helpers import save_tiny_safetensors as _save
from helpers.hostile import assert_refused, changed_outside, run_cases, snapshot

VICTIM = "victim: an existing file that no maeprobe run may touch\n"


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    root = tmp_path_factory.mktemp("writes")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    out.mkdir()
    ckpt = _save(inputs / "ok.safetensors")
    missing = inputs / "missing.pth"
    victim = root / "victim.pth"
    victim.write_text(VICTIM)
    (root / "victim.csv").write_text(VICTIM)
    fifo = out / "fifo.csv"
    os.mkfifo(fifo)
    (out / "fifo_link.csv").symlink_to(fifo)
    (out / "folder.csv").mkdir()
    (out / "outside.csv").symlink_to(root / "victim.csv")  # a link the user keeps in the output folder
    (out / "stem.png").mkdir()
    (out / "afile").write_text("a file, not a folder\n")
    device = None
    if os.geteuid() == 0:  # as root, a device node named like an output (the issue's /dev case)
        device = out / "device.csv"
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    previous = out / "previous.csv"
    previous.write_text("metric,value\nearlier,1\n")
    recipe = inputs / "abs_name.yaml"
    recipe.write_text(f"base: {RECIPES / '_tiny.yaml'}\nname: evil\nrun:\n  checkpoint_name: {victim}\n")
    climbing = inputs / "climbing.yaml"
    climbing.write_text(f"base: {RECIPES / 'tiny-mae.yaml'}\nname: ../../../../../{root.name}/escaped\n")
    absolute = inputs / "absolute.yaml"
    absolute.write_text(f"base: {RECIPES / 'tiny-mae.yaml'}\nrun:\n  output_dir: {root / 'escaped'}\n")
    run = ["recipe", "run", RECIPES / "tiny-mae.yaml", *QUICK]
    cases = [
        {"argv": [*run, f"run.output_dir={out / 'r1'}", f"run.checkpoint_name={victim}"]},
        {"argv": [*run, f"run.output_dir={out / 'r2'}", "run.checkpoint_name=../../victim.pth"]},
        {"argv": [*run, f"run.output_dir={out / 'r3'}", "run.checkpoint_name=sub/x.pth"]},
        {"argv": [*run, f"run.output_dir={out / 'r4'}", "run.checkpoint_name=x.txt"]},
        {"argv": ["recipe", "run", recipe, f"run.output_dir={out / 'evil'}"]},
        {"argv": ["attn-distance", missing, "--out", fifo]},
        {"argv": ["attn-distance", missing, "--out", out / "fifo_link.csv"]},
        {"argv": ["attn-distance", missing, "--out", out / "folder.csv"]},
        {"argv": ["render-attn", missing, "--image", "x.png", "--out", out / "stem"]},
        {"argv": ["figures", previous, "--out", out / "afile"]},
        {"argv": ["demo", "--out", out / "afile"]},
        {"argv": ["reproduce", "--out", out / "afile"]},
        {"argv": ["pretrain", "--out", out / "folder.csv"]},
        {"argv": ["pretrain", "--out", out / "model.txt"]},
        {"argv": [*run, f"run.output_dir={out / 'afile'}"]},
        {"argv": [*run, f"run.output_dir={out / 'r5'}", "optim.epochs=abc"]},
        {"argv": ["attn-distance", ckpt, "--out", out / "afile" / "t.csv"]},
        {"argv": ["attn-distance", ckpt, "--mask-ratio", "2", "--out", previous]},
        {"argv": ["attn-distance", ckpt, "--bootstrap", "0", "--out", out / "outside.csv"]},
    ]
    cases += [{"argv": ["recipe", "run", climbing, *QUICK]}, {"argv": ["recipe", "run", absolute, *QUICK]}]
    if device is not None:
        cases.append({"argv": ["attn-distance", missing, "--out", device]})
    before = snapshot(root)
    results = run_cases(cases, root, timeout=120)
    return {"root": root, "out": out, "results": results, "device": device,
            "changed": changed_outside(before, snapshot(root), [f"out/{n}" for n in ("outside.csv", "r1", "r2",
                                                                                     "r3", "r4", "evil")])}


@pytest.mark.slow
def test_nothing_outside_the_output_changed(attack):
    root = attack["root"]
    assert attack["changed"] == [], attack["changed"]
    assert (root / "victim.pth").read_text() == VICTIM and (root / "victim.csv").read_text() == VICTIM


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])
@pytest.mark.slow
def test_checkpoint_name_must_be_a_plain_name(attack, index):
    assert_refused(attack["results"][index], "run.checkpoint_name", "plain file name")
    assert not any((attack["out"] / f"r{index + 1}").glob("*"))  # refused before the run folder was written


@pytest.mark.parametrize("index", [5, 6])
@pytest.mark.slow
def test_only_regular_files_are_replaced(attack, index):
    assert_refused(attack["results"][index], "not a regular file")
    assert stat.S_ISFIFO(os.stat(attack["out"] / "fifo.csv").st_mode)


@pytest.mark.slow
def test_a_device_node_is_never_replaced(attack):
    if attack["device"] is None:
        pytest.skip("creating a device node needs root")
    assert_refused(attack["results"][-1], "not a regular file")
    assert stat.S_ISCHR(os.lstat(attack["device"]).st_mode)


@pytest.mark.parametrize("index, text", [(7, "is a folder"), (8, "is a folder"), (9, "not a folder"),
                                         (10, "not a folder"), (11, "not a folder"), (12, "is a folder"),
                                         (13, "unknown output format"), (14, "not a folder"),
                                         (16, "not a folder")])
@pytest.mark.slow
def test_outputs_are_checked_before_computing(attack, index, text):
    line = assert_refused(attack["results"][index], text)
    assert "missing.pth" not in line  # the checkpoint was never opened


@pytest.mark.slow
def test_a_bad_override_writes_nothing(attack):
    assert_refused(attack["results"][15], "optim.epochs")
    assert not (attack["out"] / "r5").exists()


@pytest.mark.slow
def test_a_refused_run_keeps_the_earlier_output(attack):
    assert_refused(attack["results"][17], "--mask-ratio")
    assert (attack["out"] / "previous.csv").read_text() == "metric,value\nearlier,1\n"


@pytest.mark.slow
def test_a_link_in_the_output_folder_is_refused_not_followed(attack):
    """Issue 27: a symbolic link at an output name is neither followed nor replaced (the link was the user's)."""
    assert_refused(attack["results"][18], "symbolic link")
    link = attack["out"] / "outside.csv"
    assert link.is_symlink()
    assert (attack["root"] / "victim.csv").read_text() == VICTIM


def test_atomic_path_refuses_non_regular_targets(tmp_path):
    from maeprobe import MaeprobeError
    from maeprobe.io import write_text

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(MaeprobeError, match="not a regular file"):
        write_text(tmp_path / "pipe", "x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(MaeprobeError, match="is a folder"):
        write_text(Path(tmp_path / "dir"), "x")


@pytest.mark.slow
def test_a_recipe_file_cannot_send_outputs_elsewhere(attack):
    """A recipe's name goes into paths and its output folder is relative to where it is run; a place outside
    is the user's to name on the command line."""
    assert_refused(attack["results"][19], "plain run name")
    assert_refused(attack["results"][20], "run.output_dir", "on the command line")
    assert not (attack["root"] / "escaped").exists()
