"""Every switch a GPU run flips, run on the CPU with the same code: bf16 autocast in training and in every metric
(CPU autocast, against float32 within the tolerances stated below), DataLoader workers kept across epochs, fused
AdamW, fused attention (SDPA), the evaluation recipes for one step under 2 gloo processes. ``torch.compile`` is in
``test_compile.py``; gradient accumulation with ``no_sync`` under 2 processes in ``test_recipes.py`` (U-MAE, 2 x 2)
and below (fine-tuning and the linear probe). What only a GPU shows (pinned memory, CUDA autocast, flash attention,
TF32, fused AdamW's CUDA kernel, NCCL) is in the ``cuda``-marked tests at the end (``maeprobe.train.accel`` lists
the differences)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import RECIPES, start, tiny_mae

import maeprobe
from maeprobe.checkpoints import read_pickle
from maeprobe.train.accel import adamw, bf16_enabled, loader_options
from maeprobe.train.config import load_recipe
from maeprobe.train.engine import Objective, build_pretrain_model, pretrain_recipe
from maeprobe.train.evaluate import evaluate_recipe

METHODS = {"mae": [], "lcmae": ["lcmae.proj_dim=64"], "ae": ["model.pred_size=24", "model.mask_ratio=0.0"],
           "umae": ["umae.weight=0.05"]}

# Stated tolerances of bf16 autocast against float32 (measured on CPU autocast at about 1/10 of each bound)
BF16_TOL = {
    "attention_distance": 0.01,            # max |bf16 - fp32| / mean value
    "decoder_attention_similarity": 0.005,  # max |bf16 - fp32| (S is a mean cosine)
    "decoder_semantic_similarity": 0.02,   # max |bf16 - fp32| (binarised W may flip near tau)
    "effective_rank": 0.01,                # max |bf16 - fp32| / value
    "feature_spectrum": 0.01,              # max |bf16 - fp32| / largest singular value
    "loss": 0.02,                          # |bf16 - fp32| / |fp32| of every loss part
    "gradient_cosine": 0.99,               # cos(bf16 gradient, fp32 gradient) at least
}


@pytest.fixture(scope="module")
def probe_models():
    model = tiny_mae(depth=3, decoder_depth=2).eval()
    torch.manual_seed(1)
    reference = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                   decoder_depth=0).eval()
    x = torch.nn.functional.interpolate(torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)),
                                        size=32, mode="bilinear", align_corners=False)
    return model, reference, x


def _all_metrics(model, reference, x, device, dtype, **kwargs) -> pd.DataFrame:
    tables = [maeprobe.run([model], x, metrics=["attn-distance", "decoder-attn-sim", "decoder-semantics", "spectrum"],
                           reference=reference, device=device, dtype=dtype, bootstrap=20, **kwargs),
              maeprobe.attention_distance(model, x, module="decoder", mask_ratio=0.75, device=device, dtype=dtype)]
    return pd.concat(tables, ignore_index=True)


def _assert_metrics_close(fp32: pd.DataFrame, other: pd.DataFrame, scale: float = 1.0) -> None:
    """``other`` within ``scale`` x BF16_TOL of ``fp32``, metric by metric."""
    assert len(fp32) == len(other) and (fp32["n_images"].to_numpy() == other["n_images"].to_numpy()).all()
    for (metric, module), rows in fp32.groupby(["metric", "module"], sort=False):
        a = rows["value"].to_numpy()
        b = other.loc[rows.index, "value"].to_numpy()
        diff = np.abs(b - a)
        if metric == "attention_distance":
            error = diff.max() / a.mean()
        elif metric == "effective_rank":
            error = (diff / a).max()
        elif metric == "feature_spectrum":
            error = diff.max() / a.max()
        else:
            error = diff.max()
        assert error < scale * BF16_TOL[metric], f"{metric} ({module}): {error:.3g} >= {scale * BF16_TOL[metric]}"


# --------------------------------------------------------------------------- bf16 in every metric
@pytest.mark.parametrize("variant", [{}, {"per_head": True, "include_cls_key": True, "tau": None}],
                         ids=["defaults", "per-head-cls-key-continuous-W"])
def test_bf16_autocast_of_every_metric_agrees_with_fp32(probe_models, variant):
    """Attention distance (encoder and decoder), Eq. 7, Eq. 8 and the spectrum under CPU bf16 autocast, within the
    tolerances of BF16_TOL of float32; the table says which dtype it was measured in."""
    model, reference, x = probe_models
    fp32 = _all_metrics(model, reference, x, "cpu", None, **variant)
    bf16 = _all_metrics(model, reference, x, "cpu", "bf16", **variant)
    assert set(bf16["dtype"]) == {"bf16"} and set(fp32["dtype"]) == {"fp32"}
    assert {"attention_distance", "decoder_attention_similarity", "decoder_semantic_similarity", "effective_rank",
            "feature_spectrum"} == set(fp32["metric"])
    _assert_metrics_close(fp32, bf16)


# --------------------------------------------------------------------------- bf16 in training
def test_run_bf16_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bf16_enabled(True, cuda) and not bf16_enabled(True, cpu)  # the recipes' default: CUDA only
    assert bf16_enabled("always", cpu) and bf16_enabled("always", cuda)
    assert not bf16_enabled(False, cuda)
    assert load_recipe(RECIPES / "tiny-mae.yaml", ["run.bf16=always"])["run"]["bf16"] == "always"
    with pytest.raises(maeprobe.MaeprobeError, match="run.bf16: expected true .*, false or always"):
        load_recipe(RECIPES / "tiny-mae.yaml", ["run.bf16=sometimes"])


@pytest.mark.parametrize("method", list(METHODS))
def test_bf16_autocast_training_step_agrees_with_fp32(method):
    """The objective of each method under CPU bf16 autocast: every loss part within 2% of float32, the gradient's
    direction within cos 0.99."""
    config = load_recipe(RECIPES / "tiny-mae.yaml", [f"method={method}", "model.decoder_depth=1"] + METHODS[method])
    torch.manual_seed(0)
    objective = Objective(build_pretrain_model(config), config)
    imgs = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    noises = [torch.rand(8, 64, generator=torch.Generator().manual_seed(v)) for v in (1, 2)]
    results = {}
    for bf16 in (False, True):
        objective.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, parts = objective(imgs, noises)
        assert loss.dtype == torch.float32
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in objective.parameters() if p.grad is not None]).double()
        results[bf16] = {k: v.item() for k, v in parts.items()}, grad
    (fp32, g32), (bf16, g16) = results[False], results[True]
    for part in fp32:
        assert abs(bf16[part] - fp32[part]) <= BF16_TOL["loss"] * abs(fp32[part]), (part, fp32[part], bf16[part])
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > BF16_TOL["gradient_cosine"]


def _log(path: Path) -> pd.DataFrame:
    return pd.read_csv(path / "log.csv")


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [("tiny-mae", []), ("tiny-umae", ["optim.batch_per_process=8"])],
                         ids=["mae", "umae-accumulated"])
def test_engine_with_run_bf16_always_agrees_with_fp32(tmp_path, name, extra):
    """The engine's bf16 switch on the CPU (run.bf16=always): two optimiser steps (U-MAE's full-batch uniformity
    pass under accumulation included) log losses within 2% of the float32 run's."""
    common = ["optim.epochs=1", "data.samples_per_epoch=32", "optim.warmup_epochs=0", "run.checkpoint_every=100",
              "model.decoder_depth=1"] + extra
    logs = {}
    for setting in ("false", "always"):
        out = tmp_path / setting
        pretrain_recipe(load_recipe(RECIPES / f"{name}.yaml", common + [f"run.bf16={setting}",
                                                                        f"run.output_dir={out}"]), progress=False)
        logs[setting] = _log(out)
    assert len(logs["false"]) == 2
    np.testing.assert_allclose(logs["always"]["loss"], logs["false"]["loss"], rtol=BF16_TOL["loss"])


# --------------------------------------------------------------------------- DataLoader workers, pinned memory
def test_loader_options_pin_on_cuda_and_keep_workers():
    assert loader_options(torch.device("cuda", 0), 4) == {"num_workers": 4, "pin_memory": True,
                                                          "persistent_workers": True}
    assert loader_options(torch.device("cpu"), 0) == {"num_workers": 0, "pin_memory": False,
                                                      "persistent_workers": False}


@pytest.mark.slow
def test_engine_with_persistent_workers_equals_no_workers(tmp_path, image_folder, monkeypatch):
    """Two epochs (one step each) from an image folder with 2 persistent DataLoader workers give exactly the
    weights of decoding in the main process: each sample carries its epoch to the workers. (Pinned memory is a
    no-op without an accelerator: torch's DataLoader ignores it with a warning, so it is tested in the cuda
    tests.)"""
    from maeprobe.train import engine

    loaders = []

    def recording(*args, **kwargs):
        loaders.append(engine.make_loader.__wrapped__(*args, **kwargs))
        return loaders[-1]

    recording.__wrapped__ = engine.make_loader
    monkeypatch.setattr(engine, "make_loader", recording)
    common = [f"data.path={image_folder}", "data.samples_per_epoch=8", "optim.global_batch=8", "optim.epochs=2",
              "run.checkpoint_every=100", "model.decoder_depth=1"]
    weights = {}
    for workers in (0, 2):
        path = pretrain_recipe(load_recipe(RECIPES / "tiny-mae.yaml", common + [
            f"data.num_workers={workers}", f"run.output_dir={tmp_path / str(workers)}"]), progress=False)
        state = read_pickle(path)
        assert (state["step"], state["epoch"]) == (2, 2)
        weights[workers] = state["model"]
    assert [(d.num_workers, d.persistent_workers) for d in loaders] == [(0, False), (2, True)]  # one loader a run
    for key in weights[0]:
        torch.testing.assert_close(weights[2][key], weights[0][key], atol=0, rtol=0)


# --------------------------------------------------------------------------- fused AdamW, fused attention
def test_fused_adamw_step_equals_the_default_on_the_engines_parameter_groups():
    """The CUDA path's optimiser (AdamW fused=True) runs on the CPU too: the same step as torch's default
    implementation on the pretraining engine's weight-decay groups and on fine-tuning's layer-decay groups."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    config = load_recipe(RECIPES / "tiny-mae.yaml", ["model.decoder_depth=1"])
    torch.manual_seed(0)
    objective = Objective(build_pretrain_model(config), config)
    for make_groups in (lambda m: param_groups_weight_decay(m, 0.05),
                        lambda m: param_groups_layer_decay(m.model, 0.05, layer_decay=0.65)):
        states = {}
        for fused in (False, True):
            torch.manual_seed(0)
            model = Objective(build_pretrain_model(config), config)
            model.load_state_dict(objective.state_dict())
            optimizer = adamw(make_groups(model), lr=1e-3, betas=(0.9, 0.95), device=torch.device("cpu"),
                              fused=fused)
            assert bool(optimizer.param_groups[0]["fused"]) is fused
            for step in range(2):
                for p in model.parameters():
                    p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step + p.numel()))
                optimizer.step()
            states[fused] = model.state_dict()
        for key in states[False]:
            torch.testing.assert_close(states[True][key], states[False][key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_fused_attention_agrees_with_explicit_softmax(bf16):
    """timm's fused attention (scaled_dot_product_attention, used in training) against the explicit softmax
    attention that the probe reads, on the CPU; float32 to 1e-5, bf16 autocast to 2e-2 of the output's scale."""
    torch.manual_seed(0)
    block = maeprobe.build_mae("mae_vit_tiny_patch8_64").blocks[0].attn
    x = torch.randn(4, 65, 192)
    outputs = {}
    for fused in (True, False):
        block.fused_attn = fused
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs[fused] = block(x).float()
    scale = outputs[False].abs().max()
    tol = 2e-2 if bf16 else 1e-5
    assert (outputs[True] - outputs[False]).abs().max() <= tol * scale


# --------------------------------------------------------------------------- evaluation recipes under 2 processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# finetune: bf16 autocast and 2 accumulation micro-steps (no_sync on the first); linprobe: LARS, accumulation and
# a persistent worker; knn: bf16 features
EVAL_SETTINGS = {
    "finetune": ["run.bf16=always", "optim.batch_per_process=4"],
    "linprobe": ["optim.batch_per_process=4", "data.num_workers=1"],
    "knn": ["run.bf16=always"],
}


def _eval_worker(rank, world, port, checkpoint, images, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        for task, extra in EVAL_SETTINGS.items():
            config = load_recipe(RECIPES / f"tiny-{task}.yaml", [
                f"data.path={images}", f"eval.checkpoint={checkpoint}", f"run.output_dir={out / task}",
                "optim.epochs=1", "optim.global_batch=16", "optim.warmup_epochs=0", "run.device=cpu"] + extra)
            result = evaluate_recipe(config, progress=False)
            (out / f"{task}-rank{rank}.json").write_text(json.dumps(result))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_evaluation_recipes_run_one_step_under_two_gloo_processes(tmp_path, image_folder):
    """Fine-tuning, the linear probe and k-NN under 2 gloo processes (DDP, DistributedSampler, all-reduced top-1),
    one optimiser step each: both processes report the same result over all 8 validation images, and only rank 0
    writes."""
    torch.manual_seed(0)
    checkpoint = maeprobe.save_checkpoint(maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=2,
                                                             num_heads=3, decoder_depth=0), tmp_path / "encoder.pth")
    start(_eval_worker, 2, (2, _free_port(), checkpoint, image_folder, tmp_path))
    for task in EVAL_SETTINGS:
        ranks = [json.loads((tmp_path / f"{task}-rank{r}.json").read_text()) for r in (0, 1)]
        for result in ranks:  # the training loss is each process's own; top-1 is all-reduced
            for epoch in result.get("history", []):
                epoch.pop("loss")
        assert ranks[0] == ranks[1], task
        assert ranks[0]["val_images"] == 8 and ranks[0]["num_classes"] == 2 and 0 <= ranks[0]["top1"] <= 100
        written = json.loads((tmp_path / task / "results.json").read_text())
        assert written["top1"] == ranks[0]["top1"]
        if task != "knn":
            assert len(written["history"]) == 1 and np.isfinite(written["history"][0]["loss"])
    assert maeprobe.load(tmp_path / "finetune" / "checkpoint-finetuned.pth").config.num_classes == 2


def test_evaluation_refuses_run_compile(tmp_path, image_folder):
    config = load_recipe(RECIPES / "tiny-knn.yaml", [f"data.path={image_folder}", "eval.checkpoint=x.pth",
                                                     "run.compile=true", f"run.output_dir={tmp_path}"])
    with pytest.raises(maeprobe.MaeprobeError, match="torch.compile applies to pretraining"):
        evaluate_recipe(config, progress=False)


def test_process_group_backend_keeps_cpu_tensors_on_gloo(monkeypatch):
    """With CUDA, the group is NCCL for CUDA tensors and gloo for CPU ones (the probe's sums are CPU float64)."""
    from maeprobe import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.backend() == "cpu:gloo,cuda:nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.backend() == "gloo"


# =========================================================================== on a GPU
@pytest.mark.cuda
def test_cuda_every_metric_bf16_and_fp32_agree_with_the_cpu(probe_models, ieee_convolutions):
    """CUDA bf16 autocast within BF16_TOL of the CPU's float32; CUDA float32 (IEEE convolutions) within 1/20 of
    it (attention distance 5e-4 relative, Eq. 7 2.5e-4, Eq. 8 1e-3, spectrum 5e-4 of the largest value)."""
    model, reference, x = probe_models
    cpu = _all_metrics(model, reference, x, "cpu", None)
    _assert_metrics_close(cpu, _all_metrics(model, reference, x, "cuda", "bf16"))
    _assert_metrics_close(cpu, _all_metrics(model, reference, x, "cuda", None), scale=0.05)


@pytest.mark.cuda
def test_cuda_fp32_probe_under_default_tf32_convolutions_stays_close(probe_models):
    """Under torch's default flags (TF32 cuDNN convolutions: the patch embedding) a float32 probe on CUDA stays
    within half of BF16_TOL of the CPU's."""
    model, reference, x = probe_models
    cpu = _all_metrics(model, reference, x, "cpu", None)
    _assert_metrics_close(cpu, _all_metrics(model, reference, x, "cuda", None), scale=0.5)


@pytest.mark.cuda
def test_cuda_fused_adamw_step_matches_the_cpu():
    torch.manual_seed(0)
    params = [torch.randn(64, 32), torch.randn(32)]
    grads = [torch.randn_like(p) for p in params]
    results = []
    for device in ("cpu", "cuda"):
        ps = [p.clone().to(device).requires_grad_() for p in params]
        optimizer = adamw([{"params": ps, "weight_decay": 0.05}], lr=1e-3, betas=(0.9, 0.95),
                          device=torch.device(device))
        assert bool(optimizer.param_groups[0]["fused"]) is (device == "cuda")
        for _ in range(3):
            for p, g in zip(ps, grads):
                p.grad = g.to(device)
            optimizer.step()
        results.append([p.detach().cpu() for p in ps])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"])
def test_cuda_sdpa_kernels_agree_with_explicit_attention(kernel):
    """The bf16 SDPA kernels a GPU run uses against float32 explicit attention (2e-2 of the output's scale)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    block = maeprobe.build_mae("mae_vit_base_patch16").blocks[0].attn.cuda()
    x = torch.randn(4, 197, 768, device="cuda")
    block.fused_attn = False
    with torch.no_grad():
        reference = block(x)
    block.fused_attn = True
    with torch.no_grad(), sdpa_kernel([getattr(SDPBackend, kernel)]), torch.autocast("cuda", dtype=torch.bfloat16):
        out = block(x).float()
    assert (out - reference).abs().max() <= 2e-2 * reference.abs().max()


@pytest.mark.cuda
def test_cuda_engine_bf16_compiled_pinned_workers_agree_with_the_cpu(tmp_path, image_folder):
    """The tiny recipe as a GPU run runs it (bf16 autocast, torch.compile with Triton kernels, fused AdamW, pinned
    memory, 2 persistent workers) against float32 eager on the CPU: losses within 3%."""
    common = [f"data.path={image_folder}", "data.samples_per_epoch=16", "optim.global_batch=8", "optim.epochs=2",
              "optim.warmup_epochs=0", "run.checkpoint_every=100"]
    pretrain_recipe(load_recipe(RECIPES / "tiny-mae.yaml", common + [
        "run.device=cpu", "run.bf16=false", f"run.output_dir={tmp_path / 'cpu'}"]), progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pretrain_recipe(load_recipe(RECIPES / "tiny-mae.yaml", common + [
            "run.device=cuda", "run.bf16=true", "run.compile=true", "data.num_workers=2",
            f"run.output_dir={tmp_path / 'cuda'}"]), progress=False)
    assert not [w for w in caught if "pin" in str(w.message)]  # pinned memory took effect
    np.testing.assert_allclose(_log(tmp_path / "cuda")["loss"], _log(tmp_path / "cpu")["loss"], rtol=0.03)


@pytest.mark.cuda
def test_cuda_evaluation_recipes_run(tmp_path, image_folder):
    torch.manual_seed(0)
    checkpoint = maeprobe.save_checkpoint(maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=2,
                                                             num_heads=3, decoder_depth=0), tmp_path / "encoder.pth")
    for task in ("finetune", "linprobe", "knn"):
        config = load_recipe(RECIPES / f"tiny-{task}.yaml", [
            f"data.path={image_folder}", f"eval.checkpoint={checkpoint}", f"run.output_dir={tmp_path / task}",
            "optim.epochs=1", "run.device=cuda", "run.bf16=true", "data.num_workers=2"])
        result = evaluate_recipe(config, progress=False)
        assert result["val_images"] == 8 and 0 <= result["top1"] <= 100


@pytest.mark.cuda
def test_cuda_probe_under_torchrun_reduces_cpu_sums(tmp_path):
    """A probe launched by torchrun on one GPU: the NCCL group reduces the probe's CPU sums through gloo."""
    torch.manual_seed(0)
    checkpoint = maeprobe.save_checkpoint(maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=2,
                                                             num_heads=3, decoder_embed_dim=32, decoder_depth=2,
                                                             decoder_num_heads=2), tmp_path / "tiny.pth")
    out = tmp_path / "table.csv"
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                               "-m", "maeprobe", "run", str(checkpoint), "--metrics", "attn-distance,spectrum",
                               "--bootstrap", "10", "--device", "cuda", "--dtype", "bf16", "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert len(pd.read_csv(out)) > 0
