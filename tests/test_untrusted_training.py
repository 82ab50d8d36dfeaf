"""Issue 27, training: hostile run folders, recipes, overrides, checkpoints to resume, torchrun variables and signals
given to ``maeprobe pretrain`` / ``maeprobe recipe`` (and the Python API behind them).

Every case is generated here. A refusal must be one line ``error: ...`` with exit status 2 (``hostile.assert_refused``)
and leave every file it did not create as it was; nothing may hang or allocate what a recipe merely states; a run
folder belongs to one run at a time; SIGTERM checkpoints and then still ends the process (or raises in the API)."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers.hostile import assert_clean_exit, assert_refused, changed_outside, run_cases, snapshot

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
TINY = RECIPES / "tiny-mae.yaml"
QUICK = ["optim.epochs=1", "data.samples_per_epoch=8", "optim.global_batch=8", "optim.warmup_epochs=0",
         "run.checkpoint_every=1"]
PRETRAIN = ["--steps", "1", "--batch-size", "2"]  # `maeprobe pretrain`: one step of two images
RUN_FILES = {"checkpoint-last.pth", "config.yaml", "log.csv", "model.safetensors"}  # README: what a run folder gets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(folder: Path, n: int, bad: tuple[str, ...] = ()) -> Path:
    """``n`` small PNGs of different colours, plus files named ``bad`` holding bytes that are no image."""
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (40 + i, 48), (20 * i % 255, 100, 200 - 10 * i)).save(folder / f"img{i:02d}.png")
    for name in bad:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    return folder


def _tampered(source: Path, target: Path, change_args, *, config_change: dict | None = None) -> Path:
    """A copy of the finished run ``source`` whose checkpoint's ``args`` are replaced by ``change_args(args)``
    (``...`` deletes them); with ``config_change`` ({section: {key: value}}), its config.yaml says those settings
    (as if written by a run of them)."""
    shutil.copytree(source, target)
    last = target / "checkpoint-last.pth"
    state = torch.load(last, weights_only=False)
    new = change_args(state["args"])
    if new is ...:
        del state["args"]
    else:
        state["args"] = new
    torch.save(state, last)
    if config_change:
        config = yaml.safe_load((target / "config.yaml").read_text())
        for section, values in config_change.items():
            config[section].update(values)
        (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def _namespace(args, **changes):
    values = dict(vars(args))
    for key, value in changes.items():
        if value is ...:
            values.pop(key)
        else:
            values[key] = value
    out = argparse.Namespace()
    out.__dict__.update(values)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-step tiny MAE run (trained in this process: the cases copy it)."""
    from maeprobe.train.config import load_recipe
    from maeprobe.train.engine import pretrain_recipe

    folder = tmp_path_factory.mktemp("finished") / "run"
    pretrain_recipe(load_recipe(TINY, QUICK + [f"run.output_dir={folder}"]), progress=False)
    assert RUN_FILES <= {p.name for p in folder.iterdir()}
    return folder


@pytest.fixture(scope="module")
def attack(tmp_path_factory, finished):
    root = tmp_path_factory.mktemp("training")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    out.mkdir()
    base = RECIPES / "_tiny.yaml"
    cases, names = [], []

    def case(name, argv, **extra):
        names.append(name)
        cases.append({"argv": [str(a) for a in argv], **extra})

    # 1. files maeprobe did not write
    user = out / "user"
    user.mkdir()
    (user / "config.yaml").write_text("my notes: keep them\n")
    (user / "log.csv").write_text("when,what\nmonday,my own log\n")
    case("user_config", ["pretrain", "--out", user / "model.pth", *PRETRAIN])
    user_log = out / "user_log"
    user_log.mkdir()
    (user_log / "log.csv").write_text("when,what\nmonday,my own log\n")
    case("user_log", ["recipe", "run", TINY, *QUICK, f"run.output_dir={user_log}"])
    user_weights = out / "user_weights"
    user_weights.mkdir()
    (user_weights / "model.safetensors").write_bytes(b"my own weights")
    case("user_weights", ["recipe", "run", TINY, *QUICK, f"run.output_dir={user_weights}"])
    two = out / "two_runs"  # one run's files, then a run of another checkpoint name into the same folder
    case("first_run", ["pretrain", "--out", two / "a.pth", *PRETRAIN], timeout=120)
    case("second_run", ["pretrain", "--out", two / "b.pth", *PRETRAIN], timeout=120)
    case("first_again", ["pretrain", "--out", two / "a.pth", *PRETRAIN], timeout=120)  # its own run: starts over
    other = out / "other_settings"
    shutil.copytree(finished, other)
    case("other_settings", ["recipe", "run", TINY, *QUICK, "run.seed=1", f"run.output_dir={other}"])
    same = out / "same"
    shutil.copytree(finished, same)
    case("same_run", ["recipe", "run", TINY, *QUICK, f"run.output_dir={same}"], timeout=120)

    # 4. resumes whose stored settings are missing, unreadable or tampered
    seed1 = ({"run": {"seed": 1}}, ["run.seed=1"])  # config.yaml and the command line say seed 1, args do not
    lr = ({"optim": {"base_lr": 1.5e-4}}, ["optim.base_lr=1.5e-4"])  # the tiny recipe trained with 1.5e-3
    unchanged = (None, [])
    tampered = {
        "args_missing": (lambda a: ..., seed1),
        "args_number": (lambda a: 5, seed1),
        "args_dict": (lambda a: dict(vars(a)), seed1),
        "args_no_lr": (lambda a: _namespace(a, optim_base_lr=...), lr),  # absent: would read as the default
        "args_tensor": (lambda a: _namespace(a, run_seed=torch.zeros(3)), unchanged),
        "args_int_key": (lambda a: _with_int_key(a), unchanged),
        "args_list": (lambda a: [1, 2], unchanged),
    }
    for name, (change, (config_change, overrides)) in tampered.items():
        folder = _tampered(finished, out / name, change, config_change=config_change)
        case(name, ["recipe", "run", TINY, *QUICK, *overrides, f"run.output_dir={folder}"])

    # 5. sizes a recipe states: each file is about 90 bytes
    recipes = {
        "huge_decoder": "model:\n  decoder_embed_dim: 8192\n  decoder_depth: 64\n",
        "huge_projector": "method: lcmae\nmodel:\n  pred_size: 1024\nlcmae:\n  proj_dim: 65536\n",
        "huge_epoch": "data:\n  samples_per_epoch: 1000000000\n",
        "huge_batch": "optim:\n  global_batch: 16777216\ndata:\n  samples_per_epoch: 16777216\n",
    }
    for name, text in recipes.items():
        (inputs / f"{name}.yaml").write_text(f"base: {base}\n{text}")
        case(name, ["recipe", "run", inputs / f"{name}.yaml", f"run.output_dir={out / name}"], timeout=60)
    images = _images(inputs / "images", 10)
    case("many_workers", ["recipe", "run", TINY, *QUICK, f"data.path={images}", "data.num_workers=1024",
                          f"run.output_dir={out / 'many_workers'}"], timeout=60)
    case("lowered_limit", ["recipe", "run", TINY, *QUICK, f"run.output_dir={out / 'lowered_limit'}"],
         env={"MAEPROBE_MAX_MODEL_BYTES": "1000"})

    # 6. an epoch smaller than one global batch
    case("batch_over_folder", ["recipe", "run", TINY, "optim.epochs=1", f"data.path={images}",
                               "optim.global_batch=1024", f"run.output_dir={out / 'batch_over_folder'}"], timeout=30)
    case("batch_over_epoch", ["recipe", "run", TINY, "optim.epochs=1", "data.samples_per_epoch=8",
                              "optim.global_batch=16", f"run.output_dir={out / 'batch_over_epoch'}"], timeout=30)

    # 7. torchrun variables
    dist = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port())}
    show = ["recipe", "show", TINY]
    case("missing_peer", show, env={**dist, "MAEPROBE_DIST_TIMEOUT": "3"}, timeout=40)
    case("no_master_addr", show, env={**dist, "WORLD_SIZE": "1", "MASTER_ADDR": ""}, timeout=40)
    case("port_too_big", show, env={**dist, "WORLD_SIZE": "1", "MASTER_PORT": "70000"}, timeout=40)
    case("port_text", show, env={**dist, "WORLD_SIZE": "1", "MASTER_PORT": "http"}, timeout=40)
    case("timeout_text", show, env={**dist, "WORLD_SIZE": "1", "MAEPROBE_DIST_TIMEOUT": "soon"}, timeout=40)

    # 8. wrongly typed recipe fields
    typed = {
        "readings_run_number": "readings:\n  a:\n    run: 5\n",
        "readings_number": "readings: 7\n",
        "seed_huge": "run:\n  seed: " + "9" * 400 + "\n",
        "heads_not_dividing": "model:\n  decoder_num_heads: 3\n",
        "betas_mapping": "optim:\n  betas: {a: 1}\n",
        "crop_nested": "data:\n  crop_scale: [[0.2], [1.0]]\n",
    }
    for name, text in typed.items():
        (inputs / f"{name}.yaml").write_text(f"base: {base}\n{text}")
        case(name, ["recipe", "run", inputs / f"{name}.yaml", *QUICK[:1], f"run.output_dir={out / name}"],
             timeout=60)

    # 10. a recipe reading data from outside, an unreadable image read by DataLoader workers
    (inputs / "outside.yaml").write_text(f"base: {base}\ndata:\n  path: {images}\n")
    case("outside", ["recipe", "show", inputs / "outside.yaml"])
    bad_images = _images(inputs / "bad_images", 3, bad=("broken.png",))
    case("bad_image", ["recipe", "run", TINY, "optim.epochs=1", f"data.path={bad_images}", "optim.global_batch=4",
                       "data.num_workers=2", f"run.output_dir={out / 'bad_image'}"], timeout=60)

    before = snapshot(root)
    folders_before = {name: snapshot(out / name) for name in ("user", "user_log", "user_weights", "other_settings")}
    results = dict(zip(names, run_cases(cases, root)))
    return {"root": root, "out": out, "results": results, "before": before, "after": snapshot(root),
            "folders_before": folders_before}


def _with_int_key(args):
    out = _namespace(args)
    out.__dict__[1] = 2  # a Namespace whose state dict has a key that is not a name
    return out


# --------------------------------------------------------------------------- 1. files maeprobe did not write
@pytest.mark.slow
def test_files_maeprobe_did_not_write_are_never_replaced(attack):
    r = attack["results"]
    assert "config.yaml" in assert_refused(r["user_config"])
    assert "log.csv" in assert_refused(r["user_log"])
    assert "model.safetensors" in assert_refused(r["user_weights"])
    assert "seed" in assert_refused(r["other_settings"])
    for name in ("user", "user_log", "user_weights", "other_settings"):
        assert snapshot(attack["out"] / name) == attack["folders_before"][name], name
    assert (attack["out"] / "user" / "log.csv").read_text() == "when,what\nmonday,my own log\n"


@pytest.mark.slow
def test_a_second_run_cannot_take_over_a_run_folder(attack):
    r = attack["results"]
    assert_clean_exit(r["first_run"], budget_mb=1200)
    assert "config.yaml" in assert_refused(r["second_run"])
    assert_clean_exit(r["first_again"], budget_mb=1200)  # the same run again: its own files, started over
    folder = attack["out"] / "two_runs"
    assert {p.name for p in folder.iterdir()} == {"a.pth", "a.safetensors", "config.yaml", "log.csv"}
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["run"]["checkpoint_name"] == "a.pth"


@pytest.mark.slow
def test_the_same_run_started_again_is_allowed(attack):
    result = attack["results"]["same_run"]
    assert_clean_exit(result, budget_mb=1200)
    assert "already finished" in result.stdout


@pytest.mark.slow
def test_nothing_written_outside_the_run_folders(attack):
    allowed = ["out/two_runs", "out/same", "out/bad_image"]  # runs that started (the bad image is met in training)
    changed = changed_outside(attack["before"], attack["after"], allowed)
    assert changed == [], changed


# --------------------------------------------------------------------------- 4. resume settings
@pytest.mark.parametrize("name", ["args_missing", "args_number", "args_dict", "args_no_lr", "args_tensor",
                                  "args_int_key", "args_list"])
@pytest.mark.slow
def test_a_resume_that_cannot_compare_settings_is_refused(attack, name):
    line = assert_refused(attack["results"][name])
    assert "cannot resume" in line, line


@pytest.mark.slow
def test_resume_compares_settings_stored_as_a_dict(attack):
    assert "seed" in assert_refused(attack["results"]["args_dict"])


# --------------------------------------------------------------------------- 5. sizes a recipe states
@pytest.mark.parametrize("name, variable", [("huge_decoder", "MAEPROBE_MAX_MODEL_BYTES"),
                                            ("huge_projector", "MAEPROBE_MAX_MODEL_BYTES"),
                                            ("huge_epoch", "MAEPROBE_MAX_EPOCH_SAMPLES"),
                                            ("huge_batch", "MAEPROBE_MAX_BATCH_BYTES"),
                                            ("many_workers", "MAEPROBE_MAX_WORKERS"),
                                            ("lowered_limit", "MAEPROBE_MAX_MODEL_BYTES")])
@pytest.mark.slow
def test_sizes_are_bounded_before_anything_is_built(attack, name, variable):
    assert_refused(attack["results"][name], variable, budget_mb=600)
    assert not (attack["out"] / name).exists()


# --------------------------------------------------------------------------- 6. no loop without progress
@pytest.mark.parametrize("name", ["batch_over_folder", "batch_over_epoch"])
@pytest.mark.slow
def test_an_epoch_smaller_than_one_global_batch_is_refused(attack, name):
    line = assert_refused(attack["results"][name])
    assert "optim.global_batch" in line, line


# --------------------------------------------------------------------------- 7. torchrun variables
@pytest.mark.parametrize("name, text", [("missing_peer", "MAEPROBE_DIST_TIMEOUT"), ("no_master_addr", "MASTER_ADDR"),
                                        ("port_too_big", "MASTER_PORT"), ("port_text", "MASTER_PORT"),
                                        ("timeout_text", "MAEPROBE_DIST_TIMEOUT")])
@pytest.mark.slow
def test_torchrun_variables_are_checked_and_the_wait_is_bounded(attack, name, text):
    assert_refused(attack["results"][name], text)


# --------------------------------------------------------------------------- 8. wrongly typed recipe fields
@pytest.mark.parametrize("name, key", [("readings_run_number", "readings"), ("readings_number", "readings"),
                                       ("seed_huge", "run.seed"), ("heads_not_dividing", "model.decoder_num_heads"),
                                       ("betas_mapping", "optim.betas"), ("crop_nested", "data.crop_scale")])
@pytest.mark.slow
def test_wrongly_typed_recipe_fields_name_the_field(attack, name, key):
    assert_refused(attack["results"][name], key)


# --------------------------------------------------------------------------- 10. data from elsewhere, bad images
@pytest.mark.slow
def test_a_recipe_reading_data_from_outside_says_so(attack):
    result = attack["results"]["outside"]
    assert_clean_exit(result)
    notices = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(notices) == 1 and str(attack["root"] / "in" / "images") in notices[0], result.stderr


@pytest.mark.slow
def test_an_unreadable_image_under_workers_is_one_line_naming_it(attack):
    """Met during training (the progress bar is already on stderr): the last line, the only error line."""
    result = attack["results"]["bad_image"]
    assert result.code == 2 and not result.hung and "Traceback" not in result.stderr, result.describe()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]] and "broken.png" in errors[0] and "worker" not in errors[0], result.describe()


# --------------------------------------------------------------------------- 3. override and recipe values
def _recipe(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"base: {RECIPES / '_tiny.yaml'}\n{textwrap.dedent(text)}")
    return path


def test_override_values_keep_their_text(tmp_path):
    from maeprobe.errors import MaeprobeError
    from maeprobe.train.config import load_recipe

    config = load_recipe(TINY, ["run.seed=010", "run.output_dir=0123", "optim.epochs=007", "name=0123",
                                "data.path=1.50", "optim.betas=[0.9, 0.950]"])
    assert config["run"]["seed"] == 10 and config["optim"]["epochs"] == 7
    assert config["run"]["output_dir"] == "0123" and config["name"] == "0123" and config["data"]["path"] == "1.50"
    assert config["optim"]["betas"] == [0.9, 0.95]
    for text, key in [("optim.epochs=1:00", "optim.epochs"), ("run.seed=2001-01-01", "run.seed"),
                      ("run.compile=yes", "run.compile"), ("run.resume=off", "run.resume"),
                      ("optim.betas=[0.9, 1:00]", "optim.betas")]:
        with pytest.raises(MaeprobeError, match=key.replace(".", r"\.")):
            load_recipe(TINY, [text])


def test_recipe_files_are_read_without_yaml_11_surprises(tmp_path):
    from maeprobe.errors import MaeprobeError
    from maeprobe.train.config import load_recipe

    config = load_recipe(_recipe(tmp_path, """\
        name: '0123'
        run:
          seed: 010
          output_dir: 0123
        optim:
          epochs: 2
          base_lr: 1e-4
        """))
    assert config["run"]["seed"] == 10 and config["run"]["output_dir"] == "0123"
    assert config["optim"]["base_lr"] == pytest.approx(1e-4)
    for text, key in [("optim:\n  epochs: 1:00\n", "optim.epochs"), ("run:\n  compile: on\n", "run.compile"),
                      ("model:\n  norm_pix_loss: yes\n", "model.norm_pix_loss")]:
        with pytest.raises(MaeprobeError, match=key.replace(".", r"\.")):
            load_recipe(_recipe(tmp_path, text))


def test_recipe_show_prints_the_value_as_typed(tmp_path):
    results = run_cases([{"argv": ["recipe", "show", str(TINY), "run.seed=010", "run.output_dir=0123"]}], tmp_path)
    assert_clean_exit(results[0])
    shown = yaml.safe_load(results[0].stdout)
    assert shown["run"]["seed"] == 10 and shown["run"]["output_dir"] == "0123"


# --------------------------------------------------------------------------- 2. one run per folder at a time
def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAEPROBE_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", MAEPROBE_OFFLINE="1", HF_HUB_OFFLINE="1")
    return env


def _wait_for(predicate, proc, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _log_rows(folder: Path) -> list[str]:
    path = folder / "log.csv"
    return path.read_text().splitlines()[1:] if path.is_file() else []


@pytest.mark.slow  # two training processes, about 10 s
def test_two_runs_into_one_folder_at_once(tmp_path):
    """The first run is frozen (SIGSTOP) while it writes the folder; a second run into the same folder is refused
    with one line naming the folder and writes nothing; the first then finishes with one log of its own steps."""
    folder = tmp_path / "run"
    argv = [sys.executable, "-m", "maeprobe", "recipe", "run", str(TINY), "optim.epochs=1", "data.samples_per_epoch=48",
            "optim.global_batch=8", "run.log_every=1", f"run.output_dir={folder}"]
    first = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(_log_rows(folder)) >= 1, first)
        first.send_signal(signal.SIGSTOP)
        before = snapshot(folder)
        second = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(folder) in lines[0], second.stderr
        assert snapshot(folder) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    rows = [row.split(",")[0] for row in _log_rows(folder)]
    assert rows == [str(i) for i in range(1, 7)]  # 48 / 8 steps, each once: one run's log
    assert {p.name for p in folder.iterdir()} == RUN_FILES


@pytest.mark.slow  # command-line trainings in subprocesses, about 10 s
def test_a_dead_runs_folder_can_be_run_again(tmp_path):
    """A run killed outright (no clean-up) does not keep its folder from the same run started again."""
    folder = tmp_path / "run"
    argv = [sys.executable, "-m", "maeprobe", "recipe", "run", str(TINY), "optim.epochs=1", "data.samples_per_epoch=48",
            "optim.global_batch=8", "run.log_every=1", "run.checkpoint_every=1", f"run.output_dir={folder}"]
    first = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (folder / "checkpoint-last.pth").is_file(), first)
    first.kill()
    first.communicate()
    again = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert {p.name for p in folder.iterdir()} == RUN_FILES
    assert torch.load(folder / "checkpoint-last.pth", weights_only=False)["step"] == 6


# --------------------------------------------------------------------------- 9. SIGTERM
SIGNAL_SCRIPT = """
import os, signal, sys, torch
from maeprobe.train.config import load_recipe
from maeprobe.train.engine import pretrain_recipe

received = []
if sys.argv[2] == "handler":
    signal.signal(signal.SIGTERM, lambda *_: received.append("TERM"))
original = torch.optim.AdamW.step
calls = []

def step_then_terminate(self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # as a cluster scheduler would
    return out

torch.optim.AdamW.step = step_then_terminate
config = load_recipe(sys.argv[3], ["optim.epochs=1", "data.samples_per_epoch=48", "optim.global_batch=8",
                                   "run.checkpoint_every=100", "run.output_dir=" + sys.argv[1]])
try:
    pretrain_recipe(config, progress=False)
except Exception as exc:
    print("raised", type(exc).__name__, flush=True)
print("received", received, "handler kept", signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), flush=True)
print("continued", flush=True)
"""


@pytest.mark.parametrize("mode", ["default", "handler"])
def test_sigterm_checkpoints_then_still_ends_the_run(tmp_path, mode):
    """With the default SIGTERM action the process ends by the signal (status -15, what a preempted job expects)
    after checkpointing; with a handler of the caller's, that handler gets the signal and the call raises."""
    script = tmp_path / "signalled.py"
    script.write_text(SIGNAL_SCRIPT)
    folder = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), str(folder), mode, str(TINY)], env=_env(),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    state = torch.load(folder / "checkpoint-last.pth", weights_only=False)
    assert state["step"] == 2  # checkpointed where it stopped
    if mode == "default":
        assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stdout, proc.stderr)
        assert "continued" not in proc.stdout
    else:
        assert proc.returncode == 0, proc.stderr
        assert "raised TrainingInterrupted" in proc.stdout, proc.stdout
        assert "received ['TERM'] handler kept True" in proc.stdout, proc.stdout
    assert {p.name for p in folder.iterdir()} == {"checkpoint-last.pth", "config.yaml", "log.csv"}


@pytest.mark.slow  # command-line trainings in subprocesses, about 10 s
def test_sigterm_ends_the_command_line_run_and_it_resumes(tmp_path):
    folder = tmp_path / "run"
    argv = [sys.executable, "-m", "maeprobe", "recipe", "run", str(TINY), "optim.epochs=1", "data.samples_per_epoch=80",
            "optim.global_batch=8", "run.log_every=1", "run.checkpoint_every=100", f"run.output_dir={folder}"]
    first = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(_log_rows(folder)) >= 2, first)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGTERM
    step = torch.load(folder / "checkpoint-last.pth", weights_only=False)["step"]
    assert 2 <= step < 10
    again = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert torch.load(folder / "checkpoint-last.pth", weights_only=False)["step"] == 10
    assert [row.split(",")[0] for row in _log_rows(folder)] == [str(i) for i in range(1, 11)]
