"""``maeprobe reproduce``: the collapse finding end to end at tiny scale (the verdict the paper predicts), reuse
of finished work, the measurements against direct computations, the base scale's commands, the CLI listing."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import maeprobe
from maeprobe.cli import app
from maeprobe.findings import FINDINGS, reproduce
from maeprobe.findings.runner import encoder_spread_ratio, linear_probe, output_spread

IDS = list(FINDINGS)  # the catalogue's order (maeprobe/findings/catalogue/)
NEW_COLUMNS = ["unit", "control", "seeds", "rule_version", "amended_after_results"]


def test_list_prints_the_catalogue():
    result = CliRunner().invoke(app, ["reproduce", "--list"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.strip().splitlines()]
    assert listed == IDS and len(IDS) == 11


def test_each_finding_is_one_catalogue_module_named_by_its_id():
    from maeprobe.findings import catalogue

    for module in catalogue.MODULES:
        finding = module.FINDING
        assert module.__name__.rsplit(".", 1)[1] == finding.id.replace("-", "_")
        assert finding.rule.__doc__ and finding.on_runs.__module__ == module.__name__
        assert set(finding.runs) <= set(maeprobe.findings.suite.RUNS)


@pytest.fixture(scope="module")
def tiny_collapse(tmp_path_factory):
    """The collapse finding at tiny scale, run once: three LC-MAE settings x 2 seeds of one 10-step epoch (the
    pipeline, several seeds included, not the verdict, is under test here)."""
    out = tmp_path_factory.mktemp("reproduce")
    lines = []
    table = reproduce(["lcmae-collapse"], scale="tiny", out=out, steps=3, seeds=2, probe_images=32,
                      echo=lines.append)
    return out, table, lines


@pytest.mark.slow
def test_lcmae_collapse_at_tiny_scale_writes_the_report_and_is_reused(tiny_collapse):
    out, table, lines = tiny_collapse
    assert all(c in table.columns for c in NEW_COLUMNS)
    saved = pd.read_csv(out / "findings.csv")
    assert saved["verdict"].tolist() == table["verdict"].tolist()
    # version 3 is judged; versions 2 and 1 are reported beside it on the same evidence, marked superseded
    assert saved["finding"].tolist() == ["lcmae-collapse", "lcmae-collapse-v2", "lcmae-collapse-v1"]
    assert saved["verdict"].iloc[1:].tolist() == ["superseded"] * 2
    assert "superseded by version 3" in saved["detail"].iloc[1] and "superseded by version 2" in saved["detail"].iloc[2]
    assert (saved["rule_version"].tolist() == [3, 2, 1]
            and saved["amended_after_results"].tolist() == [True, True, False])
    assert saved["seeds"].iloc[0] == 2 and saved["control"].iloc[0] == 1.0
    # the report: a smoke test, its deviations from what ran (3 steps asked: one whole epoch of 10, not the scale's
    # 240), its code version,
    # the amendments, intervals over the 13 source photographs (12 units: the stereo pair is one photograph)
    report = (out / "findings.md").read_text()
    title = report.splitlines()[0]
    assert "pipeline smoke test" in title
    assert "10 steps per run (10 for LC-MAE)" in report and "240 steps" not in report
    assert "Code: maeprobe" in report and "source sha256:" in report and "[0, 100]" in report
    assert "independent source photos" in report
    evidence_units = pd.read_csv(out / "findings.csv")
    assert evidence_units["rule_version"].iloc[0] == 3
    report = (out / "findings.md").read_text()
    assert "`lcmae-collapse`" in report and "figures/lcmae-collapse.png" in report and "final L_cross" in report
    assert (out / "figures" / "lcmae-collapse.png").is_file()
    assert sum("trained" in line for line in lines) == 6 and sum("[finding" in line for line in lines) == 1
    evidence = pd.read_csv(out / "findings" / "lcmae-collapse" / "evidence.csv")
    assert set(evidence["feature"]) == {"patch", "cls"} and set(evidence["seed"]) == {0, 1}
    assert (evidence["ci_low"] <= evidence["value"]).all() and (evidence["value"] <= evidence["ci_high"]).all()
    lines.clear()
    tic = time.monotonic()
    again = reproduce(["lcmae-collapse"], scale="tiny", out=out, steps=3, seeds=2, probe_images=32,
                      echo=lines.append)
    assert time.monotonic() - tic < 30
    assert sum("reused" in line for line in lines) == 7  # six runs and the finding
    assert again["verdict"].tolist() == table["verdict"].tolist()


@pytest.mark.slow
def test_a_replaced_checkpoint_is_measured_again(tiny_collapse):
    """Stored verdicts are keyed on the checkpoints' content: a run folder whose weights were replaced (same path,
    same config) gives a new measurement, never the old verdict marked '(reused)'."""
    from maeprobe.checkpoints import read_pickle

    out, table, _ = tiny_collapse
    folder = next((out / "runs" / "tiny").glob("lcmae-c-*-seed0"))
    state = read_pickle(folder / "checkpoint-last.pth")  # the file the measurement loads
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, folder / "checkpoint-last.pth")
    lines = []
    reproduce(["lcmae-collapse"], scale="tiny", out=out, steps=3, seeds=2, probe_images=32, echo=lines.append)
    finding = [line for line in lines if "[finding" in line]
    assert len(finding) == 1 and "(reused)" not in finding[0]


def test_encoder_spread_ratio_matches_a_direct_computation():
    torch.manual_seed(0)
    trained = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    torch.manual_seed(1)
    init = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got = {r["feature"]: r for r in encoder_spread_ratio(trained, init, images, bootstrap=50)}

    def spread(model, part):
        with torch.no_grad():
            z = model.forward_encoder(images, 0.0)[0].double().numpy()
        z = z[:, 1:] if part == "patch" else z[:, :1]
        unit = z / np.linalg.norm(z, axis=-1, keepdims=True)
        return np.mean([1 - np.sum(unit[:, i].mean(0) ** 2) for i in range(z.shape[1])])

    for part in ("patch", "cls"):
        assert got[part]["value"] == pytest.approx(spread(trained, part) / spread(init, part), rel=1e-9)
        assert got[part]["ci_low"] <= got[part]["value"] <= got[part]["ci_high"]
    same = encoder_spread_ratio(init, init, images, bootstrap=20)
    assert all(r["value"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(1.0) for r in same)


def test_initial_weights_are_what_training_started_from(tmp_path):
    """A run with learning rate 0 (and no weight decay) ends where it started: its checkpoint must equal the
    control rebuilt by ``initial_weights``, parameter by parameter."""
    from maeprobe.findings.runner import initial_weights
    from maeprobe.train.config import load_recipe
    from maeprobe.train.engine import pretrain_recipe

    config = load_recipe("recipes/tiny-lcmae-a.yaml", ["optim.base_lr=0", "optim.weight_decay=0", "optim.epochs=1",
                                                       "run.seed=5", ("run.output_dir", str(tmp_path / "run"))])
    pretrain_recipe(config, progress=False)
    init = initial_weights(tmp_path / "run")
    from maeprobe.checkpoints import read_pickle

    state = read_pickle(tmp_path / "run" / "checkpoint-last.pth")
    for key, value in init.model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    for key, value in init.projector.state_dict().items():
        assert torch.equal(value, state["projector"][key]), key
    other = load_recipe("recipes/tiny-lcmae-a.yaml", ["run.seed=6"])
    from maeprobe.train.engine import initial_objective

    assert not torch.equal(initial_objective(other).model.cls_token, init.model.cls_token)


def test_eval_data_folder_and_pixel_probe(tmp_path):
    """An ImageFolder-style labelled set: classes from sub-folders, the 60/40 split, and the raw-pixel baseline
    equal to scikit-learn on the same pooled pixels."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from maeprobe.findings.runner import pixel_probe
    from maeprobe.findings.toydata import EvalSet

    rng = np.random.default_rng(0)
    for label, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        (tmp_path / f"class{label}").mkdir()
        for i in range(10):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / f"class{label}" / f"{i:02d}.png")
    evalset = EvalSet(tmp_path, 16)
    assert len(evalset.labels("train")) == 18 and len(evalset.labels("val")) == 12 and evalset.chance == 100 / 3
    got = pixel_probe(evalset)
    x = {s: torch.cat(list(evalset.batches(s))) for s in ("train", "val")}
    f = {s: torch.nn.functional.avg_pool2d(x[s], 1).flatten(1).double().numpy() for s in x}  # 16 px: pooled = itself
    mean, std = f["train"].mean(0), f["train"].std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000).fit((f["train"] - mean) / std, evalset.labels("train"))
    expected = 100 * (clf.predict((f["val"] - mean) / std) == evalset.labels("val")).mean()
    assert got["top1"] == pytest.approx(expected) and got["n_val"] == 12
    with pytest.raises(maeprobe.MaeprobeError, match="class folders"):
        EvalSet(tmp_path / "class0", 16)


def _tiny_lcmae_checkpoint(tmp_path, projector_weight=None):
    torch.manual_seed(0)
    model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                               decoder_depth=1, decoder_num_heads=2)
    projector = torch.nn.Linear(8 * 8 * 3, 5)
    if projector_weight is not None:
        with torch.no_grad():
            projector.weight.copy_(projector_weight)
    folder = tmp_path / "run"
    maeprobe.save_checkpoint(model, folder / "checkpoint-last.pth", projector=projector.state_dict())
    return model, projector, folder


def test_output_spread_matches_a_direct_computation(tmp_path):
    model, projector, folder = _tiny_lcmae_checkpoint(tmp_path)
    images = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    got = output_spread(folder, images, bootstrap=50)
    noise = torch.rand(1, 16, generator=torch.Generator().manual_seed(0))  # the shared seed-0 mask
    masked = np.argsort(noise[0].numpy(), kind="stable")[4:]  # int(16 * 0.25) = 4 visible patches
    with torch.no_grad():
        latent, _, ids = model.forward_encoder(images, 0.75, noise.expand(7, -1))
        v = projector(model.forward_decoder(latent, ids)).double().numpy()  # [7, 16, 5]
    spreads = []
    for i in masked:
        unit = v[:, i] / np.linalg.norm(v[:, i], axis=1, keepdims=True)
        spreads.append(1 - np.sum(unit.mean(0) ** 2))
    assert got["value"] == pytest.approx(np.mean(spreads), abs=1e-9)
    assert got["ci_low"] <= got["value"] <= got["ci_high"] and got["n_images"] == 7


def test_output_spread_of_a_constant_projector_is_zero(tmp_path):
    _, _, folder = _tiny_lcmae_checkpoint(tmp_path, projector_weight=torch.zeros(5, 192))
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert output_spread(folder, images, bootstrap=10)["value"] == pytest.approx(0.0, abs=1e-12)


def test_linear_probe_matches_sklearn_on_the_same_features(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from maeprobe.findings.toydata import digits

    torch.manual_seed(0)
    model = maeprobe.build_mae(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    maeprobe.save_checkpoint(model, tmp_path / "checkpoint-last.pth")
    got = linear_probe(tmp_path, 16)
    x_train, y_train, x_val, y_val = digits(16)
    assert len(y_train) + len(y_val) == 1797 and np.bincount(y_val).min() >= 0.39 * np.bincount(y_train).min()
    with torch.no_grad():
        f_train = model.forward_encoder(x_train, 0.0)[0][:, 0].double().numpy()
        f_val = model.forward_encoder(x_val, 0.0)[0][:, 0].double().numpy()
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000).fit((f_train - mean) / std, y_train)
    expected = 100 * (clf.predict((f_val - mean) / std) == y_val).mean()
    assert got["top1"] == pytest.approx(expected, abs=0.2) and got["chance"] == 10.0


def test_base_scale_writes_the_papers_commands(tmp_path):
    lines = []
    table = reproduce(None, scale="base", out=tmp_path, echo=lines.append)
    assert table["finding"].tolist() == IDS and set(table["verdict"]) == {"inconclusive"}
    commands = (tmp_path / "commands.sh").read_text()
    for recipe in ("lcmae_c", "lcmae_e", "lcmae_g", "mae_vit_b16_dec8", "mae_vit_b16_mask30", "ae112", "umae_vit_b16",
                   "mae_vit_b16_decoder_conv"):
        assert f"recipes/{recipe}.yaml" in commands
    assert "torchrun --nproc-per-node 8" in commands and (tmp_path / "findings.md").is_file()
    # three seeds per run (rules v3 need them), then one command that measures them with their controls under v3;
    # no mention of the superseded v1 collapse rule
    assert all(f"run.seed={seed}" in commands for seed in range(3))
    assert "maeprobe reproduce --scale base" in commands and "rules version 3" in commands
    assert "collapse_rule" not in commands and "output_spread" not in commands


def test_unknown_finding_and_scale_are_one_line_errors(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["reproduce", "no-such-finding", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown finding" in bad.output
    bad = runner.invoke(app, ["reproduce", "--scale", "huge", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown scale" in bad.output


def test_a_run_stopped_early_is_never_measured(tmp_path, monkeypatch):
    """The engine checkpoints and returns on SIGTERM or a time cap; reproduce must stop there, not measure the
    half-trained checkpoint as if it were the run."""
    from maeprobe.findings import runner
    from maeprobe.findings.suite import SCALES
    from maeprobe.train import engine

    def interrupted(config, progress=True):
        folder = Path(config["run"]["output_dir"])
        folder.mkdir(parents=True)
        model = maeprobe.build_mae("mae_vit_tiny_patch8_64")
        return maeprobe.save_checkpoint(model, folder / "checkpoint-last.pth", step=7)

    monkeypatch.setattr(engine, "pretrain_recipe", interrupted)
    with pytest.raises(maeprobe.MaeprobeError, match="stopped at step 7 of 240.*again to resume"):
        runner.train("mae", SCALES["tiny"], tmp_path)


def test_a_setting_added_later_at_its_default_keeps_runs_reusable(tmp_path):
    """A run saved before maeprobe gained a setting (absent from its config.yaml) is reused when this run keeps
    the setting's default (which reproduces the earlier behaviour), and refused when it does not."""
    import yaml

    from maeprobe.findings.runner import _check_reusable, run_config
    from maeprobe.findings.suite import SCALES

    config = run_config("umae", SCALES["tiny"], tmp_path)
    folder = Path(config["run"]["output_dir"])
    folder.mkdir(parents=True)
    old = yaml.safe_load(yaml.safe_dump(config))
    del old["umae"]["feature"]  # written by a maeprobe without umae.feature
    (folder / "config.yaml").write_text(yaml.safe_dump(old))
    _check_reusable(folder, config)
    config["umae"]["feature"] = "double_norm"
    with pytest.raises(maeprobe.MaeprobeError, match="umae_feature"):
        _check_reusable(folder, config)
