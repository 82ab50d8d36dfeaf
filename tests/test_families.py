"""Every HuggingFace ViT family, saved with transformers' own ``save_pretrained``: maeprobe's attention distance
against a brute-force distance over transformers' own eager ``output_attentions``, at the native input size
and at another size (``img_size=``) against transformers' own ``interpolate_pos_encoding``."""
from __future__ import annotations

import math

import pytest
import torch

import maeprobe

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
             patch_size=8)
# name: (config class, model class, extra config, number of prefix tokens, family label)
FAMILIES = {
    "vit": ("ViTConfig", "ViTModel", {}, 1, "ViT"),
    "deit": ("DeiTConfig", "DeiTModel", {}, 2, "DeiT"),
    "dinov2": ("Dinov2Config", "Dinov2Model", {}, 1, "DINOv2"),
    "dinov2-registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", {"num_register_tokens": 4}, 5,
                         "DINOv2"),
    "beit": ("BeitConfig", "BeitModel", {"use_relative_position_bias": True, "layer_scale_init_value": 0.1,
                                         "use_mean_pooling": True}, 1, "BEiT"),
    "beit-shared-abs": ("BeitConfig", "BeitModel", {"use_shared_relative_position_bias": True,
                                                    "use_absolute_position_embeddings": True,
                                                    "use_mean_pooling": False}, 1, "BEiT"),
    "data2vec-vision": ("Data2VecVisionConfig", "Data2VecVisionModel", {"use_relative_position_bias": True}, 1,
                        "data2vec-vision"),
    "clip": ("CLIPVisionConfig", "CLIPVisionModel", {}, 1, "CLIP"),
    "siglip": ("SiglipVisionConfig", "SiglipVisionModel", {}, 0, "SigLIP"),
}


def _randomize(model):
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial weights everywhere (default init: zero biases, unit norms, zero tables)
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "relative_position" in name else 0.05))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (HF model in eager attention mode, folder written by save_pretrained)."""
    out = {}
    for name, (conf_cls, model_cls, extra, _, _) in FAMILIES.items():
        config = getattr(transformers, conf_cls)(**SMALL, **extra)
        model = getattr(transformers, model_cls)(config)
        _randomize(model)
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        hf = getattr(transformers, model_cls).from_pretrained(folder, attn_implementation="eager").eval()
        out[name] = (hf, folder)
    return out


def brute_force_distance(attn: torch.Tensor, num_prefix: int, grid: int, patch: int) -> torch.Tensor:
    """attn [B, H, N, N] -> [H] mean over images and patch queries of sum_k a(q, k) * |q - k| in pixels."""
    B, H = attn.shape[:2]
    out = torch.zeros(H, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            total = 0.0
            for q in range(grid * grid):
                for k in range(grid * grid):
                    a = float(attn[b, h, num_prefix + q, num_prefix + k])
                    total += a * math.hypot(q // grid - k // grid, q % grid - k % grid) * patch
            out[h] += total / (grid * grid)
    return out / B


def _expected(hf, x, num_prefix, grid, **kwargs):
    with torch.no_grad():
        out = hf(pixel_values=x, output_attentions=True, **kwargs)
    return torch.stack([brute_force_distance(a, num_prefix, grid, 8) for a in out.attentions])  # [layers, H]


def _ours(model, x, block_queries=None, metric=maeprobe.attention_distance, **kwargs):
    table = metric(model, x, batch_size=3, device="cpu", block_queries=block_queries, **kwargs)
    return torch.tensor(table.sort_values(["layer", "head"])["value"].to_numpy()).reshape(2, 2)


# block_queries: 0 = full maps from timm's explicit attention; 3 = q/k rows in blocks of 3 (17-21 tokens: uneven
# blocks); None = the default block size (one block here). All against transformers' eager attentions.
@pytest.mark.parametrize("block_queries", [0, 3, None], ids=["full-maps", "blocks-of-3", "default-blocks"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_attention_distance_matches_transformers(saved, name, block_queries):
    hf, folder = saved[name]
    num_prefix, label = FAMILIES[name][3], FAMILIES[name][4]
    model = maeprobe.load(folder)
    assert model.checkpoint.family_label == label
    assert model.num_prefix_tokens == num_prefix
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_ours(model, x, block_queries), _expected(hf, x, num_prefix, 4), atol=1e-4, rtol=1e-4)


def _entropy_by_hand(attentions, num_prefix, patch_keys_only):
    """[layers, H]: mean over images and patch queries of -sum_k a ln a, rows from transformers' eager maps."""
    out = []
    for attn in attentions:
        rows = attn[:, :, num_prefix:].double()  # patch queries
        if patch_keys_only:
            rows = rows[..., num_prefix:] / rows[..., num_prefix:].sum(-1, keepdim=True)
        terms = torch.where(rows > 0, -rows * rows.log(), torch.zeros_like(rows))
        out.append(terms.sum(-1).mean(dim=(0, 2)))
    return torch.stack(out)


@pytest.mark.parametrize("block_queries", [0, 3], ids=["full-maps", "blocks-of-3"])
@pytest.mark.parametrize("name", ["vit", "dinov2-registers", "beit", "siglip"])
def test_attention_entropy_matches_transformers(saved, name, block_queries):
    hf, folder = saved[name]
    num_prefix = FAMILIES[name][3]
    model = maeprobe.load(folder)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        attentions = hf(pixel_values=x, output_attentions=True).attentions
    for only in (False, True):
        got = _ours(model, x, block_queries, maeprobe.attention_entropy, patch_keys_only=only)
        torch.testing.assert_close(got, _entropy_by_hand(attentions, num_prefix, only), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [48, 24])  # up (4 -> 6 patches a side) and down (4 -> 3): antialias matters
@pytest.mark.parametrize("name", list(FAMILIES))
def test_img_size_matches_transformers_interpolation(saved, name, size):
    hf, folder = saved[name]
    num_prefix = FAMILIES[name][3]
    model = maeprobe.load(folder, img_size=size)
    assert model.config.img_size == size and model.config.grid_size == size // 8
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    kwargs = {} if name.startswith("dinov2") else {"interpolate_pos_encoding": True}
    torch.testing.assert_close(_ours(model, x), _expected(hf, x, num_prefix, size // 8, **kwargs),
                               atol=1e-4, rtol=1e-4)


def test_full_clip_and_siglip_folders_load_their_vision_tower(tmp_path):
    for conf_cls, model_cls in (("CLIPConfig", "CLIPModel"), ("SiglipConfig", "SiglipModel")):
        text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    vocab_size=99)
        config = getattr(transformers, conf_cls)(text_config=text, vision_config=SMALL)
        full = getattr(transformers, model_cls)(config)
        _randomize(full)
        folder = tmp_path / model_cls
        full.save_pretrained(folder)
        full = getattr(transformers, model_cls).from_pretrained(folder, attn_implementation="eager").eval()
        model = maeprobe.load(folder)
        assert any("text tower" in note for note in model.checkpoint.notes)
        num_prefix = 1 if model_cls == "CLIPModel" else 0
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(_ours(model, x), _expected(full.vision_model, x, num_prefix, 4),
                                   atol=1e-4, rtol=1e-4)


def test_siglip_probe_features_use_every_token(saved):
    """No CLS: the spectrum has no 'cls' kind and every token is a patch."""
    _, folder = saved["siglip"]
    model = maeprobe.load(folder)
    table = maeprobe.feature_spectrum(model, torch.randn(4, 3, 32, 32), device="cpu")
    assert set(table["feature"]) == {"patch_mean"}
    clip = maeprobe.feature_spectrum(maeprobe.load(saved["clip"][1]), torch.randn(4, 3, 32, 32), device="cpu")
    assert set(clip["feature"]) == {"cls", "patch_mean"}


def test_beit_refuses_masking_with_one_line(saved):
    _, folder = saved["beit"]
    with pytest.raises(maeprobe.MaeprobeError, match="mask ratio 0"):
        maeprobe.attention_distance(folder, torch.randn(2, 3, 32, 32), mask_ratio=0.75, device="cpu")


def _hf_last_keys(hf, x):
    """Output of the last layer's key projection in transformers' own model (a hook on its Linear)."""
    layers = [m for n, m in hf.named_modules() if n.endswith(("attention.attention.key", "attention.k_proj",
                                                             "self_attn.k_proj"))]
    got = {}
    handle = layers[-1].register_forward_hook(lambda m, i, o: got.__setitem__("k", o))
    try:
        with torch.no_grad():
            hf(pixel_values=x)
    finally:
        handle.remove()
    return got["k"]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_reference_keys_match_transformers_and_eq8_runs(saved, name, hf_mae):
    """Eq. 8's reference features (last block's attention keys, CutLER) equal transformers' key projection,
    and each family serves as the reference of a tiny MAE (given the MAE's patch grid)."""
    from maeprobe.capture import CaptureRequest, capture

    hf, folder = saved[name]
    model = maeprobe.load(folder)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with capture(model, CaptureRequest.of(keys={"encoder": [1]})) as cache, torch.no_grad():
        model.forward_encoder(x, 0.0)
    torch.testing.assert_close(cache.keys[("encoder", 1)], _hf_last_keys(hf, x), atol=1e-5, rtol=1e-4)

    _, mae_folder = hf_mae
    table = maeprobe.decoder_semantic_similarity(maeprobe.load(mae_folder), model, torch.randn(2, 3, 32, 32),
                                                 device="cpu")
    assert len(table) == 2 and table["value"].between(0, 1).all()


@pytest.mark.parametrize("name", ["beit", "siglip", "dinov2-registers"])
def test_encoder_render_and_spectrum_run(saved, name, tmp_path):
    import numpy as np

    _, folder = saved[name]
    image = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8")
    from PIL import Image

    paths = maeprobe.render_attention(folder, Image.fromarray(image), tmp_path / "r", encoder=True, device="cpu")
    assert all(p.is_file() for p in paths)
    table = maeprobe.feature_spectrum(folder, torch.randn(5, 3, 32, 32), device="cpu")
    assert (table[table["metric"] == "effective_rank"]["value"] > 0).all()


def test_cli_info_names_the_family_and_img_size_changes_the_grid(saved, tmp_path):
    from typer.testing import CliRunner

    from maeprobe.cli import app

    runner = CliRunner()
    _, folder = saved["dinov2-registers"]
    result = runner.invoke(app, ["info", str(folder), "--img-size", "48"])
    assert result.exit_code == 0, result.output
    assert "family: DINOv2" in result.output and "input 48px (6x6 patches)" in result.output
    assert "cls, 4 registers" in result.output
    out = tmp_path / "ad.csv"
    result = runner.invoke(app, ["attn-distance", str(folder), "--img-size", "48", "--device", "cpu",
                                 "--bootstrap", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["attn-distance", str(folder), "--img-size", "50"])
    assert result.exit_code == 2 and "multiple of the patch size 8" in result.output
