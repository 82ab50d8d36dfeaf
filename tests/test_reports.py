"""Multi-metric runs, figure regeneration from stored tables, attention renders, and their CLI commands."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import maeprobe
from maeprobe.cli import app
from maeprobe.metrics import AttentionDistance, DecoderAttentionSimilarity
from maeprobe.probe import run_probe

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                   decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)
        paths.append(maeprobe.save_checkpoint(model, folder / f"model{seed}.pth"))
    return paths


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_run_equals_separate_metrics_and_covers_all_checkpoints(checkpoints, image_dir):
    table = maeprobe.run([str(p) for p in checkpoints], image_dir, metrics=["attn-distance", "decoder-attn-sim",
                                                                              "decoder-semantics", "spectrum"],
                         reference=str(checkpoints[0]), mask_ratio=0.5, device="cpu")
    assert set(table["checkpoint"]) == {"model0.pth", "model1.pth"}
    assert set(table["metric"]) == {"attention_distance", "decoder_attention_similarity",
                                     "decoder_semantic_similarity", "feature_spectrum", "effective_rank"}
    model = maeprobe.load(checkpoints[1])
    alone = maeprobe.decoder_attention_similarity(model, image_dir, mask_ratio=0.5, device="cpu")
    together = table[(table["checkpoint"] == "model1.pth") & (table["metric"] == "decoder_attention_similarity")]
    np.testing.assert_allclose(together["value"].to_numpy(), alone["value"].to_numpy(), rtol=1e-6)


def test_one_forward_pass_per_batch_feeds_every_metric(checkpoints):
    model = maeprobe.load(checkpoints[0])
    calls = []
    handle = model.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    reducers = [AttentionDistance(model), DecoderAttentionSimilarity(model), AttentionDistance(model, module="decoder")]
    run_probe(model, reducers, torch.randn(6, 3, 32, 32), mask_ratio=0.5, batch_size=3, device="cpu")
    handle.remove()
    assert len(calls) == 2


def test_figures_from_stored_tables_only(checkpoints, image_dir, tmp_path, monkeypatch):
    table = maeprobe.run([str(p) for p in checkpoints], image_dir, metrics=["attn-distance", "decoder-attn-sim",
                                                                              "decoder-semantics", "spectrum"],
                         reference=str(checkpoints[0]), bootstrap=20, device="cpu")
    stored = maeprobe.write_table(table, tmp_path / "results.parquet")
    monkeypatch.setattr(maeprobe.MaskedAutoencoderViT, "forward_encoder",
                        lambda *a, **k: pytest.fail("figures must not run a model"))
    result = runner.invoke(app, ["figures", str(stored), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    for name in ("fig2", "fig3", "fig5", "spectrum"):
        for suffix in (".png", ".pdf"):
            path = tmp_path / "figs" / f"{name}{suffix}"
            assert path.is_file() and path.stat().st_size > 1000
    result = runner.invoke(app, ["figures", str(stored), "--out", str(tmp_path / "figs"), "--figure", "fig6"])
    assert result.exit_code == 0 and (tmp_path / "figs" / "fig6.png").is_file()
    png = Image.open(tmp_path / "figs" / "fig2.png")
    assert 500 < png.width < 1000  # single-column paper width at 200 dpi


def test_figures_cli_reports_missing_data(checkpoints, image_dir, tmp_path):
    table = maeprobe.attention_distance(str(checkpoints[0]), image_dir, device="cpu")
    stored = maeprobe.write_table(table, tmp_path / "ad.csv")
    result = runner.invoke(app, ["figures", str(stored), "--figure", "fig2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "fig2 needs decoder_attention_similarity rows" in result.output


@pytest.mark.parametrize("encoder", [False, True])
def test_render_attention_cli(checkpoints, image_dir, tmp_path, encoder):
    args = ["render-attn", str(checkpoints[0]), "--image", str(image_dir / "img0.png"), "--out",
            str(tmp_path / "render")] + (["--encoder"] if encoder else ["--query", "0,5", "--layers", "0,1"])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    png = Image.open(tmp_path / "render.png")
    if not encoder:  # two query rows, input + masked + two layers
        assert png.width > png.height * 1.5
    assert (tmp_path / "render.pdf").stat().st_size > 1000


def test_metric_commands_write_tables(checkpoints, image_dir, tmp_path):
    for command, extra, metric in (("decoder-attn-sim", ["--per-head"], "decoder_attention_similarity"),
                                   ("decoder-semantics", ["--ref", str(checkpoints[1]), "--tau", "0.1"],
                                    "decoder_semantic_similarity"),
                                   ("spectrum", [], "effective_rank")):
        out = tmp_path / f"{command}.csv"
        result = runner.invoke(app, [command, str(checkpoints[0]), "--images", str(image_dir), "--out", str(out),
                                     "--bootstrap", "10", "--device", "cpu"] + extra)
        assert result.exit_code == 0, result.output
        assert metric in set(pd.read_csv(out)["metric"])
    result = runner.invoke(app, ["run", str(checkpoints[0]), str(checkpoints[1]), "--metrics",
                                 "attn-distance,decoder-semantics", "--images", str(image_dir)])
    assert result.exit_code == 2 and "needs a reference" in result.output
