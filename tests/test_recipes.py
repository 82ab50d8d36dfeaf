"""Pretraining and evaluation recipes: losses vs direct formulas, every tiny recipe end to end, overfitting,
exact resume (also after SIGTERM), and 2-process DDP (gloo) against one process with the same global batch."""
from __future__ import annotations

import itertools
import math
import os
import signal
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import RECIPES, start
from typer.testing import CliRunner

import maeprobe
from maeprobe.checkpoints import read_pickle
from maeprobe.cli import app
from maeprobe.train.config import load_recipe
from maeprobe.train.engine import Objective, build_pretrain_model, pretrain_recipe
from maeprobe.train.evaluate import evaluate_recipe
from maeprobe.train.losses import cross_view_loss, in_view_loss, uniformity_loss

TINY_PRETRAIN = sorted(p.stem for p in RECIPES.glob("tiny-*.yaml")
                       if load_recipe(p)["task"] == "pretrain")


# --------------------------------------------------------------------------- losses vs direct formulas
def test_cross_view_loss_matches_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 6, 5, generator=g), torch.randn(2, 6, 5, generator=g)
    m1 = torch.tensor([[1, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 0]]).float()
    m2 = torch.tensor([[1, 0, 0, 1, 1, 1], [1, 1, 0, 1, 0, 0]]).float()
    terms = [1 - F.cosine_similarity(z1[b, p], z2[b, p], dim=0) for b in range(2) for p in range(6)
             if m1[b, p] and m2[b, p]]
    assert cross_view_loss(z1, z2, m1, m2).item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-6)


def test_in_view_loss_matches_loop():
    g = torch.Generator().manual_seed(1)
    z, x = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 12, generator=g)
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 0, 1]]).float()
    terms = []
    for b in range(2):
        masked = [p for p in range(5) if mask[b, p]]
        for i, j in itertools.permutations(masked, 2):
            terms.append(abs(F.cosine_similarity(z[b, i], z[b, j], dim=0)
                             - F.cosine_similarity(x[b, i], x[b, j], dim=0)))
    assert in_view_loss(z, x, mask).item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_uniformity_loss_matches_loop(tau):
    f = torch.randn(5, 7, generator=torch.Generator().manual_seed(2))
    pairs = [(F.cosine_similarity(f[i], f[j], dim=0) / tau) ** 2 for i in range(5) for j in range(5)]
    assert uniformity_loss(f, tau=tau).item() == pytest.approx(torch.stack(pairs).mean().item(), rel=1e-5)


def test_ae_targets_are_centred_blocks_with_zero_padding():
    model = maeprobe.build_mae("mae_vit_tiny_patch8_64", pred_size=24)
    imgs = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    targets = model.targets(imgs)  # [1, 64, 24*24*3]
    padded = np.pad(imgs[0].numpy(), ((0, 0), (8, 8), (8, 8)))
    for token in (0, 9, 63):
        r, c = divmod(token, 8)
        block = padded[:, r * 8: r * 8 + 24, c * 8: c * 8 + 24]  # 24x24 centred on the patch
        expected = block.transpose(1, 2, 0).reshape(-1)  # (row, col, channel) as MAE's patchify
        np.testing.assert_allclose(targets[0, token].numpy(), expected, atol=1e-6)
    plain = maeprobe.build_mae("mae_vit_tiny_patch8_64")
    torch.testing.assert_close(plain.targets(imgs), plain.patchify(imgs))


def test_gaussian_decoder_averages_visible_neighbours():
    model = maeprobe.build_mae(img_size=8, patch_size=1, embed_dim=8, depth=1, num_heads=1, decoder_embed_dim=4,
                               decoder_type="gaussian")
    tokens = torch.randn(1, 64, 4)
    visible = torch.zeros(1, 64)
    visible[0, [0, 9, 27]] = 1
    with torch.no_grad():
        model.decoder_mlp.fc2.weight.zero_()
        model.decoder_mlp.fc2.bias.zero_()  # MLP residual off: the output is the weighted average
        out = model._local_decoder(tokens, visible)
    for q in (1, 18, 63):
        qr, qc = divmod(q, 8)
        num, den = torch.zeros(4), 0.0
        for j in (0, 9, 27):
            jr, jc = divmod(j, 8)
            if abs(jr - qr) <= 2 and abs(jc - qc) <= 2:
                w = math.exp(-((jr - qr) ** 2 + (jc - qc) ** 2) / 2)
                num, den = num + w * tokens[0, j], den + w
        expected = num / den if den else tokens[0, q]
        torch.testing.assert_close(out[0, q], expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- every tiny recipe
@pytest.fixture(scope="module")
def single_image(tmp_path_factory):
    from matplotlib.cbook import get_sample_data

    return get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.mark.parametrize("name", TINY_PRETRAIN)
def test_tiny_pretrain_recipe_runs_and_its_checkpoint_runs_every_metric(name, tmp_path, single_image):
    # one optimiser step: the recipe's pipeline (build, train, save, reload, probe) is under test, not its training
    overrides = [f"run.output_dir={tmp_path / name}", "optim.epochs=1", "data.samples_per_epoch=16",
                 "optim.global_batch=16", "optim.warmup_epochs=0"]
    if name == "tiny-single-image":
        overrides.append(f"data.single_image={single_image}")
    config = load_recipe(RECIPES / f"{name}.yaml", overrides)
    path = pretrain_recipe(config, progress=False)
    assert (tmp_path / name / "config.yaml").is_file() and (tmp_path / name / "log.csv").is_file()
    model = maeprobe.load(path)  # official format, strict keys
    assert maeprobe.load(tmp_path / name / "model.safetensors").config == model.config
    images = torch.randn(4, 3, 64, 64)
    metrics = ["attn-distance", "spectrum"]
    if model.config.decoder_type == "transformer":
        metrics += ["decoder-attn-sim", "decoder-semantics"]
    table = maeprobe.run([model], images, metrics=metrics, reference=model, mask_ratio=0.5, device="cpu")
    assert {"attention_distance", "effective_rank"} <= set(table["metric"])
    if model.config.decoder_type != "transformer":
        with pytest.raises(maeprobe.MaeprobeError, match="no attention blocks"):
            maeprobe.decoder_attention_similarity(model, images, device="cpu")


@pytest.mark.parametrize("task", ["finetune", "linprobe", "knn"])
def test_tiny_evaluation_recipes(task, tmp_path, image_folder, trained_checkpoint):
    """Each evaluation recipe on a trained tiny MAE (the session's ``trained_checkpoint``: any trained one will do)."""
    config = load_recipe(RECIPES / f"tiny-{task}.yaml", [f"data.path={image_folder}",
                                                         f"eval.checkpoint={trained_checkpoint}",
                                                         f"run.output_dir={tmp_path}"])
    result = evaluate_recipe(config, progress=False)
    assert 0 <= result["top1"] <= 100 and result["num_classes"] == 2 and result["val_images"] == 8
    assert (tmp_path / "results.json").is_file()
    if task == "finetune":
        finetuned = maeprobe.load(tmp_path / "checkpoint-finetuned.pth")
        assert finetuned.config.num_classes == 2 and finetuned.config.fc_norm


# --------------------------------------------------------------------------- overfitting
@pytest.mark.parametrize("method, extra", [("mae", {}), ("mae", {"decoder_type": "gaussian"}),
                                           ("mae", {"decoder_type": "conv"}), ("lcmae", {}), ("ae", {"pred_size": 24}),
                                           ("umae", {})])
def test_each_loss_goes_down_when_overfitting_one_batch(method, extra):
    config = load_recipe(RECIPES / "tiny-mae.yaml", [f"method={method}", "lcmae.proj_dim=32", "umae.weight=0.05",
                                                    "model.decoder_depth=1"]
                         + [f"model.{k}={v}" for k, v in extra.items()])
    torch.manual_seed(0)
    objective = Objective(build_pretrain_model(config), config)
    imgs = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    noises = [torch.rand(8, 64, generator=torch.Generator().manual_seed(v)) for v in (1, 2)]
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-3)
    history = []
    for _ in range(40):
        loss, parts = objective(imgs, noises)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in parts.items()})
    for part in history[0]:
        first, last = np.mean([h[part] for h in history[:3]]), np.mean([h[part] for h in history[-3:]])
        assert last < first, f"{method}: {part} did not go down ({first:.4f} -> {last:.4f})"


# --------------------------------------------------------------------------- resume
def _state(path):
    return read_pickle(path)


def _weights(path):
    return _state(path)["model"]


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    base = ["optim.epochs=2", "run.checkpoint_every=100"]
    whole = pretrain_recipe(load_recipe(RECIPES / "tiny-lcmae-a.yaml", base + [f"run.output_dir={tmp_path / 'a'}"]),
                            progress=False)
    config = load_recipe(RECIPES / "tiny-lcmae-a.yaml", base + [f"run.output_dir={tmp_path / 'b'}"])
    pretrain_recipe(config, progress=False, stop_after_steps=3)  # stops mid-epoch 0 (4 steps per epoch)
    state = _state(tmp_path / "b" / "checkpoint-last.pth")
    assert (state["step"], state["epoch"], state["position"]) == (3, 0, 3)
    resumed = pretrain_recipe(config, progress=False)
    a, b = _weights(whole), _weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_sigterm_saves_and_resume_completes(tmp_path):
    config = load_recipe(RECIPES / "tiny-mae.yaml", ["optim.epochs=2", "run.checkpoint_every=100",
                                                     f"run.output_dir={tmp_path / 'b'}"])
    reference = pretrain_recipe(load_recipe(RECIPES / "tiny-mae.yaml", ["optim.epochs=2", "run.checkpoint_every=100",
                                                                        f"run.output_dir={tmp_path / 'a'}"]),
                                progress=False)
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def step_then_terminate(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # as a cluster scheduler would
        return out

    torch.optim.AdamW.step = step_then_terminate
    before = signal.signal(signal.SIGTERM, lambda *_: None)  # the signal goes back to this handler after the save
    try:
        with pytest.raises(maeprobe.MaeprobeError, match="SIGTERM stopped training at step 5"):
            pretrain_recipe(config, progress=False)
    finally:
        torch.optim.AdamW.step = original
        signal.signal(signal.SIGTERM, before)
    assert _state(tmp_path / "b" / "checkpoint-last.pth")["step"] == 5  # nothing lost
    resumed = pretrain_recipe(config, progress=False)
    a, b = _weights(reference), _weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, recipe, overrides):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        pretrain_recipe(load_recipe(recipe, overrides), progress=False)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("name, split", [("tiny-mae", []), ("tiny-umae", []),
                                         ("tiny-umae", ["optim.batch_per_process=4"])],
                         ids=["mae", "umae", "umae-2x2-accumulated"])
def test_two_processes_equal_one_process_with_the_same_global_batch(name, split, tmp_path):
    """Global batch 16 on one process vs two processes of 8 (or of 2 x 4 accumulated): U-MAE's uniformity term
    is over all 16 images in every split (umae.batch=global)."""
    common = ["optim.epochs=1", "run.checkpoint_every=100"]
    single = pretrain_recipe(load_recipe(RECIPES / f"{name}.yaml", common + [f"run.output_dir={tmp_path / 'one'}"]),
                             progress=False)
    # the same recipe (global batch 16) on two processes: 8 images each per step, derived, not configured
    start(_ddp_worker, 2, (2, _free_port(), RECIPES / f"{name}.yaml",
                           common + split + [f"run.output_dir={tmp_path / 'two'}"]))
    a, b = _weights(single), _weights(tmp_path / "two" / "checkpoint-last.pth")
    assert _state(tmp_path / "two" / "checkpoint-last.pth")["step"] == 4
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4)


# --------------------------------------------------------------------------- CLI
def test_recipe_cli(tmp_path):
    runner = CliRunner()
    listing = runner.invoke(app, ["recipe", "ls"])
    assert listing.exit_code == 0
    for name in ("mae_vit_b16_dec2", "mae_vit_b16_dec8", "mae_vit_b16_mask30", "mae_vit_b16_mask90", "lcmae_a",
                 "lcmae_g",
                 "ae16", "ae112", "umae_vit_b16", "single_image", "finetune_vit_b16", "linprobe_vit_b16", "knn_vit_b16",
                 "mae_vit_b16_decoder_gaussian", "mae_vit_b16_decoder_conv", "tiny-mae"):
        assert name in listing.output
    assert "torchrun --nproc-per-node 8" in listing.output
    result = runner.invoke(app, ["recipe", "run", str(RECIPES / "tiny-mae.yaml"), "optim.epochs=1",
                                 f"run.output_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "checkpoint-last.pth").is_file()
    saved = (tmp_path / "config.yaml").read_text()
    assert "epochs: 1" in saved  # the resolved config is saved beside the outputs
    bad = runner.invoke(app, ["recipe", "run", str(RECIPES / "tiny-mae.yaml"), "optim.epoch=1"])
    assert bad.exit_code == 2 and "unknown key 'optim.epoch'" in bad.output


@pytest.mark.parametrize("accumulate", [2, 4])
def test_umae_accumulated_update_equals_one_full_batch(tmp_path, accumulate):
    """U-MAE's uniformity term under gradient accumulation is the full-batch term (gradient cache): batch 16 as
    2 x 8 or 4 x 4 gives the weights of 16 in one go. The per-micro-step term (umae.batch=micro, U-MAE's code
    under --accum_iter) does not, which shows the comparison can fail."""
    common = ["optim.epochs=1", "run.checkpoint_every=100", "optim.global_batch=16"]
    micro = 16 // accumulate

    def train(name, extra):
        return _weights(pretrain_recipe(load_recipe(RECIPES / "tiny-umae.yaml", common + extra + [
            f"run.output_dir={tmp_path / name}"]), progress=False))

    full = train("full", [])
    accumulated = train("accum", [f"optim.batch_per_process={micro}"])
    for key in full:
        torch.testing.assert_close(full[key], accumulated[key], atol=2e-5, rtol=1e-4)
    per_micro = train("micro", [f"optim.batch_per_process={micro}", "umae.batch=micro"])
    assert max((full[k] - per_micro[k]).abs().max().item() for k in full) > 1e-4


def test_gradient_accumulation_equals_the_full_batch_on_an_image_folder(tmp_path, image_folder):
    """global batch 16 capped at 8 per process (2 accumulation steps) gives the weights of batch 16 in one go."""
    common = [f"data.path={image_folder}", "data.samples_per_epoch=32", "optim.epochs=1", "run.checkpoint_every=100"]
    full = pretrain_recipe(load_recipe(RECIPES / "tiny-mae.yaml", common + ["optim.global_batch=16",
                                                                           f"run.output_dir={tmp_path / 'full'}"]),
                           progress=False)
    accum = pretrain_recipe(load_recipe(RECIPES / "tiny-mae.yaml", common + ["optim.global_batch=16",
                                                                            "optim.batch_per_process=8",
                                                                            f"run.output_dir={tmp_path / 'accum'}"]),
                            progress=False)
    assert _state(full)["step"] == _state(accum)["step"] == 2
    a, b = _weights(full), _weights(accum)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4)
