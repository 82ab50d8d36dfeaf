"""``maeprobe reproduce``: the collapse finding end to end at tiny scale (the verdict the paper predicts), reuse
of finished work, the measurements against direct computations, the base scale's commands, the CLI listing."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import maeprobe
from maeprobe.cli import app
from maeprobe.findings import FINDINGS, reproduce
from maeprobe.findings.runner import linear_probe, output_spread

IDS = ["lcmae-collapse", "decoder-positional", "decoder-semantic", "mask-ratio-distance", "ae-block-distance",
       "ae-linear-probe", "umae-rank", "local-decoders"]


def test_list_prints_the_eight_ids():
    result = CliRunner().invoke(app, ["reproduce", "--list"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.strip().splitlines()]
    assert listed == IDS == list(FINDINGS)


@pytest.fixture(scope="module")
def tiny_collapse(tmp_path_factory):
    """The collapse finding at tiny scale, run once: three LC-MAE runs of 160 steps on 2 cores (~2.5 min)."""
    out = tmp_path_factory.mktemp("reproduce")
    lines = []
    table = reproduce(["lcmae-collapse"], scale="tiny", out=out, echo=lines.append)
    return out, table, lines


@pytest.mark.slow
def test_lcmae_collapse_at_tiny_scale_writes_the_report_and_is_reused(tiny_collapse):
    out, table, lines = tiny_collapse
    assert list(table.columns[:8]) == ["finding", "claim", "paper", "measured", "ci_low", "ci_high", "verdict", "scale"]
    assert pd.read_csv(out / "findings.csv")["verdict"].tolist() == table["verdict"].tolist()
    report = (out / "findings.md").read_text()
    assert "`lcmae-collapse`" in report and "figures/lcmae-collapse.png" in report
    assert (out / "figures" / "lcmae-collapse.png").is_file()
    assert sum("trained" in line for line in lines) == 3 and sum("[finding" in line for line in lines) == 1
    evidence = pd.read_csv(out / "findings" / "lcmae-collapse" / "evidence.csv").set_index("setting")
    # the paper's prediction for (c): L_cross alone collapses to a constant point (spread < 0.05, the rule's bound)
    assert evidence.loc["c", "ci_high"] < 0.05
    lines.clear()
    tic = time.monotonic()
    again = reproduce(["lcmae-collapse"], scale="tiny", out=out, echo=lines.append)
    assert time.monotonic() - tic < 30
    assert sum("reused" in line for line in lines) == 4  # three runs and the finding
    assert again["verdict"].tolist() == table["verdict"].tolist()


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="at tiny scale setting (e)'s projected outputs collapse too (spread ~0.02, "
                                       "docs/findings-tiny/findings.md); the rule was fixed before the run and is "
                                       "not changed to pass. strict: a run where it holds must update the report")
def test_lcmae_collapse_at_tiny_scale_gives_the_papers_verdict(tiny_collapse):
    _, table, _ = tiny_collapse
    assert table["verdict"].tolist() == ["holds"], table["detail"].iloc[0]


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
                   "mae_vit_b16_decoder_conv", "linprobe_vit_b16"):
        assert f"recipes/{recipe}.yaml" in commands
    assert "torchrun --nproc-per-node 8" in commands and (tmp_path / "findings.md").is_file()


def test_unknown_finding_and_scale_are_one_line_errors(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["reproduce", "no-such-finding", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown finding" in bad.output
    bad = runner.invoke(app, ["reproduce", "--scale", "huge", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown scale" in bad.output
