"""Attention NMI (Park et al. 2023; naver-ai/cl-vs-mim ``calculate_nmi``), checked against independent computations.

The oracle is numpy on full [B, H, N, N] maps captured with ``block_queries=0``, written the notebook's way
(I = sum_qk p(q) a_qk ln(a_qk / p(k)), not the metric's H(K) - H(K|Q)); hand-made maps give 0 (uniform), 1
(one-hot rows on distinct keys) and 1/sqrt(2) (two queries per key). Three families: the MAE of the tests'
builders, a timm-layout ViT state (``tiny_state``) and a timm ViT with four register tokens; unmasked, a shared
mask and per-image masks.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import spawn_gloo, tiny_mae, tiny_state
from typer.testing import CliRunner

import maeprobe
from maeprobe import api
from maeprobe.capture import AttentionMap, CaptureRequest, capture
from maeprobe.masking import mask_noise
from maeprobe.metrics.attention_nmi import AttentionNMI
from maeprobe.probe import run_probe


# ----------------------------------------------------------------------------- oracle and models
def _nmi_oracle(attn: np.ndarray, prefix: int, include_prefix: bool) -> np.ndarray:
    """[B, H, N, N] probabilities -> NMI [B, H], as cl-vs-mim computes it (without its 1e-8)."""
    P = 0 if include_prefix else prefix
    a = attn[:, :, P:, P:].astype(np.float64)
    a = a / a.sum(-1, keepdims=True)  # rows over the kept keys
    num_queries = a.shape[2]
    p_key = a.mean(2, keepdims=True)  # [B, H, 1, K]: p(q) = 1 / Nq
    with np.errstate(divide="ignore", invalid="ignore"):
        mutual = np.where(a > 0, a * np.log(a / p_key), 0.0).sum((2, 3)) / num_queries
        h_key = -np.where(p_key > 0, p_key * np.log(p_key), 0.0).sum((2, 3))
    return mutual / np.sqrt(np.log(num_queries) * h_key)


def _sharpen(model, scale: float = 0.4, seed: int = 0):
    """Larger random q/k projections: attention far from uniform, so NMI is well away from 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn.qkv.weight"):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """name -> model: the builders' MAE (CLS), a timm-layout ViT state (CLS), a timm ViT with 4 registers."""
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    folder = tmp_path_factory.mktemp("nmi_families")
    state = tiny_state(depth=2, grid=4, width=16)
    for i in range(2):
        state[f"blocks.{i}.attn.qkv.weight"] *= 20.0  # std 0.05 -> 1
    save_file(state, str(folder / "vit.safetensors"), metadata={"maeprobe": json.dumps({"num_heads": 2})})
    torch.manual_seed(0)
    registers = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, reg_tokens=4,
                                  no_embed_class=True, num_classes=0)
    _sharpen(registers)
    save_file({k: v.contiguous() for k, v in registers.state_dict().items()}, str(folder / "reg.safetensors"))
    models = {"mae": _sharpen(tiny_mae(depth=2, decoder_depth=1)),
              "timm": maeprobe.load(folder / "vit.safetensors"),
              "registers": maeprobe.load(folder / "reg.safetensors", num_heads=2)}
    assert [m.num_prefix_tokens for m in models.values()] == [1, 1, 5]
    return models


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _full_maps(model, images, mask_ratio: float, shared: bool) -> list[np.ndarray]:
    """Every encoder layer's [B, H, N, N] map under the probe's seeded mask (seed 0, images 0..B-1)."""
    B, layers = images.shape[0], list(range(model.config.depth))
    noise = mask_noise(model.config.num_patches, 0, batch_size=B, shared=shared, image_indices=torch.arange(B))
    with capture(model, CaptureRequest.of(attention={"encoder": layers}), block_queries=0) as cache, \
            torch.no_grad():
        model.forward_encoder(images, mask_ratio, noise)
        return [cache.attention[("encoder", layer)].double().numpy() for layer in layers]


def _by_layer_head(table: pd.DataFrame, column: str = "value") -> np.ndarray:
    rows = table.sort_values(["layer", "head"])
    return rows[column].to_numpy(dtype=float).reshape(rows["layer"].nunique(), -1)


# ----------------------------------------------------------------------------- against the brute force
CASES = [(family, ratio, shared, prefix) for family in ("mae", "timm", "registers")
         for ratio, shared, prefix in ((0.0, True, False), (0.5, True, False), (0.0, True, True), (0.5, False, True))]


@pytest.mark.parametrize("family,mask_ratio,shared,include_prefix", CASES,
                         ids=[f"{f}-mask{r}-{'shared' if s else 'per_image'}-{'all' if p else 'patches'}"
                              for f, r, s, p in CASES])
def test_equals_numpy_on_full_maps(families, images, family, mask_ratio, shared, include_prefix):
    model = families[family]
    maps = _full_maps(model, images, mask_ratio, shared)
    expected = np.stack([_nmi_oracle(m, model.num_prefix_tokens, include_prefix).mean(0) for m in maps])  # [L, H]
    assert expected.min() > 0.02  # attention far from uniform: a wrong sum would show
    table = maeprobe.attention_nmi(model, images, mask_ratio=mask_ratio, shared_mask=shared, bootstrap=0,
                                   include_prefix=include_prefix, batch_size=4, device="cpu")  # block path
    np.testing.assert_allclose(_by_layer_head(table), expected, rtol=1e-5, atol=1e-6)
    assert (table["uniform_level"] == 0).all() and (table["include_prefix"] == include_prefix).all()


# ----------------------------------------------------------------------------- hand-made maps
@pytest.fixture(scope="module")
def grid2():
    """Grid 2 x 2 with CLS: N = 5 tokens (4 patch queries and keys)."""
    return maeprobe.build_mae(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2, decoder_depth=1,
                              decoder_embed_dim=8, decoder_num_heads=1)


@pytest.mark.parametrize("include_prefix", [False, True])
def test_uniform_attention_gives_zero(grid2, include_prefix):
    metric = AttentionNMI(grid2, include_prefix=include_prefix)
    got = metric._layer_values(AttentionMap(torch.full((2, 2, 5, 5), 0.2)))
    torch.testing.assert_close(got, torch.zeros(2, 2, dtype=torch.float64), atol=1e-7, rtol=0)
    assert metric.uniform_level == 0.0


def test_rows_uniform_over_patch_keys_give_zero(grid2):
    """Every patch query puts 0.6 on CLS and 0.1 on each patch: uniform once renormalised over the patch keys."""
    attn = torch.full((1, 2, 5, 5), 0.1)
    attn[..., 0] = 0.6
    got = AttentionNMI(grid2)._layer_values(AttentionMap(attn))
    torch.testing.assert_close(got, torch.zeros(1, 2, dtype=torch.float64), atol=1e-7, rtol=0)


def test_one_hot_rows_on_distinct_keys_give_one(grid2):
    attn = torch.zeros(1, 2, 5, 5)
    attn[0, 0, 0, 0] = 1.0  # head 0: CLS row (not a query), patch queries 1..4 -> patch keys 3, 1, 4, 2
    attn[0, 0, [1, 2, 3, 4], [3, 1, 4, 2]] = 1.0
    attn[0, 1, [0, 1, 2, 3, 4], [2, 0, 4, 1, 3]] = 1.0  # head 1: a permutation of all 5 tokens
    patches = AttentionNMI(grid2)._layer_values(AttentionMap(attn))
    assert patches[0, 0].item() == pytest.approx(1.0, abs=1e-7)
    every = AttentionNMI(grid2, include_prefix=True)._layer_values(AttentionMap(attn))
    assert every[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-7)


def test_two_queries_per_key_give_one_over_sqrt_two(grid2):
    """p(k) = (1/2, 1/2, 0, 0), H(K) = ln 2, H(K|Q) = 0, H(Q) = ln 4: NMI = ln 2 / sqrt(ln 4 ln 2) = 1/sqrt(2)."""
    attn = torch.zeros(1, 2, 5, 5)
    attn[0, :, 0, 0] = 1.0
    attn[0, :, [1, 2, 3, 4], [1, 1, 2, 2]] = 1.0
    got = AttentionNMI(grid2)._layer_values(AttentionMap(attn))
    torch.testing.assert_close(got, torch.full((1, 2), 1 / math.sqrt(2), dtype=torch.float64), atol=1e-7, rtol=0)


def test_a_row_without_patch_mass_counts_as_uniform_over_patches(grid2):
    """cl-vs-mim adds 1e-8 before renormalising: a row whose mass is all on CLS becomes uniform over the patches."""
    attn = torch.zeros(1, 2, 5, 5)
    attn[0, :, [0, 1, 2, 3, 4], [0, 0, 1, 2, 3]] = 1.0  # patch query 1 looks only at CLS
    uniform = attn.clone()
    uniform[0, :, 1] = torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25])
    got = AttentionNMI(grid2)._layer_values(AttentionMap(attn))
    expected = _nmi_oracle(uniform.numpy(), 1, False)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-7)
    assert 0 < expected[0, 0] < 1


@pytest.mark.parametrize("include_prefix", [False, True])
def test_a_nan_probability_gives_nan_not_a_number_that_looks_valid(grid2, include_prefix):
    attn = torch.full((1, 2, 5, 5), 0.2)
    attn[0, 1, 2, 3] = float("nan")  # head 1, patch query 2
    got = AttentionNMI(grid2, include_prefix=include_prefix)._layer_values(AttentionMap(attn))
    assert got[0, 0].item() == pytest.approx(0.0, abs=1e-7) and math.isnan(got[0, 1].item())


# ----------------------------------------------------------------------------- block sizes, shards
def test_block_sizes_agree(families, images):
    model = families["registers"]
    common = dict(mask_ratio=0.5, shared_mask=False, bootstrap=30, batch_size=4, device="cpu")
    full = maeprobe.attention_nmi(model, images, block_queries=0, **common)
    for block in (1, 3):
        blocked = maeprobe.attention_nmi(model, images, block_queries=block, **common)
        for column in ("value", "ci_low", "ci_high"):
            np.testing.assert_allclose(blocked[column].to_numpy(), full[column].to_numpy(), rtol=1e-5, atol=1e-6)


def _feed(reducer, model, images, indices, block_queries: int = 3) -> None:
    """One unmasked batch through ``reducer`` as the probe feeds it, with the images' global indices (a shard)."""
    consumers = {key: [reducer.consume] for key in reducer.consumes()}
    with capture(model, reducer.request(), consumers, block_queries=block_queries) as cache, torch.no_grad():
        cache.image_indices = cache.unit_indices = torch.as_tensor(indices)
        model.forward_encoder(images, 0.0)
        reducer.update(cache)


def test_merge_of_two_halves_equals_one_pass(families, images):
    model = families["mae"]
    whole, first, second = (AttentionNMI(model, bootstrap=40, bootstrap_seed=1) for _ in range(3))
    run_probe(model, [whole], images, device="cpu", batch_size=4)
    _feed(first, model, images[:3], [0, 1, 2])
    _feed(second, model, images[3:], [3, 4, 5])
    merged = pd.DataFrame(first.merge(second).rows())
    one = pd.DataFrame(whole.rows())
    assert (merged["n_images"] == 6).all() and first.n_units == 6
    for column in ("value", "std", "ci_low", "ci_high"):
        np.testing.assert_allclose(merged[column].to_numpy(), one[column].to_numpy(), rtol=1e-5, atol=1e-8)


def _gloo_worker(rank, state, images, out_file):
    model = tiny_mae(depth=2, decoder_depth=1, seed=None)
    model.load_state_dict(state)
    table = maeprobe.attention_nmi(model, images, mask_ratio=0.5, shared_mask=False, bootstrap=25, batch_size=2,
                                   device="cpu")
    if rank == 0:
        table.to_csv(out_file, index=False)


@pytest.mark.slow
def test_two_gloo_processes_equal_one(families, images, tmp_path):
    model = families["mae"]
    single = maeprobe.attention_nmi(model, images, mask_ratio=0.5, shared_mask=False, bootstrap=25, device="cpu")
    out = tmp_path / "rank0.csv"
    spawn_gloo(_gloo_worker, 2, tmp_path / "init", model.state_dict(), images, out)
    both = pd.read_csv(out)
    for column in ("value", "std", "ci_low", "ci_high"):
        np.testing.assert_allclose(both[column].to_numpy(), single[column].to_numpy(), rtol=1e-5)


# ----------------------------------------------------------------------------- run, the CLI, the figure
@pytest.fixture(scope="module")
def checkpoint(families, tmp_path_factory):
    return maeprobe.save_checkpoint(families["mae"], tmp_path_factory.mktemp("nmi_ckpt") / "tiny.pth")


def test_run_with_other_attention_metrics_gives_the_metric_s_own_rows(checkpoint, images):
    alone = api.attention_nmi(str(checkpoint), images, bootstrap=20, include_prefix=True)
    default = api.attention_nmi(str(checkpoint), images, bootstrap=20)
    assert not np.allclose(alone["value"], default["value"])  # the option changes the rows
    together = api.run(str(checkpoint), images, metrics=["attn-nmi", "attn-distance", "attn-entropy"], bootstrap=20,
                       include_prefix=True)
    assert set(together["metric"]) == {"attention_nmi", "attention_distance", "attention_entropy"}
    nmi = together[together["metric"] == "attention_nmi"].reset_index(drop=True)
    for column in ("value", "ci_low", "ci_high"):
        np.testing.assert_allclose(nmi[column].to_numpy(), alone[column].to_numpy(), rtol=0, atol=0)
    assert nmi["include_prefix"].all()
    decoder = api.run(str(checkpoint), images, metrics=["attn-nmi"], bootstrap=0,
                      options={"attn-nmi": {"module": "decoder"}}, decoder_layers=None)
    assert set(decoder["module"]) == {"decoder"} and len(decoder) == 2  # 1 decoder layer x 2 heads


def test_cli_command_and_run(checkpoint, tmp_path):
    from maeprobe.cli import app

    out = tmp_path / "nmi.csv"
    result = CliRunner().invoke(app, ["attn-nmi", str(checkpoint), "--include-prefix", "--bootstrap", "0",
                                      "--block-queries", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "attention NMI" in result.output and "uniform attention: 0" in result.output
    table = maeprobe.read_table(out)
    direct = api.attention_nmi(str(checkpoint), bootstrap=0, include_prefix=True)  # the built-in photos, as the CLI
    np.testing.assert_allclose(table["value"].to_numpy(), direct["value"].to_numpy(), rtol=1e-5, atol=1e-7)
    via_run = tmp_path / "run.csv"
    result = CliRunner().invoke(app, ["run", str(checkpoint), "--metrics", "attn-nmi", "--bootstrap", "0", "--out",
                                      str(via_run)])
    assert result.exit_code == 0, result.output
    ran = maeprobe.read_table(via_run)
    assert set(ran["metric"]) == {"attention_nmi"} and not ran["include_prefix"].any()
    assert ((ran["value"] > 0) & (ran["value"] <= 1)).all()


def test_refuses_a_bad_option(checkpoint):
    with pytest.raises(maeprobe.MaeprobeError, match="include_prefix: expected True or False"):
        api.attention_nmi(str(checkpoint), bootstrap=0, include_prefix="no")
    with pytest.raises(maeprobe.MaeprobeError, match="module must be"):
        AttentionNMI(maeprobe.load(str(checkpoint)), module="middle")


def test_figure_draws_heads_and_the_uniform_level(tmp_path, captured):
    rows = [{"metric": "attention_nmi", "module": "encoder", "layer": layer, "head": head,
             "value": 0.3 - 0.05 * layer + 0.01 * head, "ci_low": 0.25 - 0.05 * layer, "ci_high": 0.35 - 0.05 * layer,
             "n_images": 8, "checkpoint": "mae.pth", "include_prefix": False, "mask_ratio": 0.0, "shared_mask": True,
             "uniform_level": 0.0} for layer in range(3) for head in range(2)]
    import matplotlib

    matplotlib.use("Agg")
    from maeprobe.plots import figures as figmod

    figmod.make_figures(pd.DataFrame(rows), tmp_path)  # drawn by default
    (fig,) = captured
    ax = fig.axes[0]
    assert ax.get_ylabel() == "attention NMI (unitless)"
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("uniform attention (0.0") for t in texts) and any("mae.pth" in t for t in texts)
    flat = [line for line in ax.get_lines() if len(set(np.round(line.get_ydata(), 6))) == 1]
    assert any(float(line.get_ydata()[0]) == 0.0 for line in flat)  # the uniform level, drawn at 0
