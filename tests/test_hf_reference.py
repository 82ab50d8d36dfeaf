"""maeprobe vs HuggingFace ViTMAE (an independent implementation) on the same weights and noise."""
from __future__ import annotations

import json
import shutil

import torch
from helpers.oracles import hf_forward
from safetensors.torch import load_file

import maeprobe
from maeprobe.capture import CaptureRequest, capture


def ours_forward(model, x, noise, mask_ratio):
    request = CaptureRequest.of(attention={"encoder": range(model.config.depth),
                                           "decoder": range(model.config.decoder_depth)})
    with capture(model, request) as cache, torch.no_grad():
        latent, mask, ids_restore = model.forward_encoder(x, mask_ratio, noise)
        pred = model.forward_decoder(latent, ids_restore)
    enc = [cache.attention[("encoder", i)] for i in range(model.config.depth)]
    dec = [cache.attention[("decoder", i)] for i in range(model.config.decoder_depth)]
    return pred, mask, enc, dec


def test_architecture_and_settings_come_from_the_folder(hf_mae, hf_config_kwargs):
    _, folder = hf_mae
    model = maeprobe.load(folder)
    cfg = model.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (64, 3, 4)
    assert (cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads) == (48, 2, 3)
    assert (cfg.img_size, cfg.patch_size, cfg.mlp_ratio) == (32, 8, 2.0)
    assert model.norm.eps == 1e-12  # layer_norm_eps from config.json, not the MAE default 1e-6
    assert "transformers 5.x" in model.checkpoint.format


def test_masked_attention_and_prediction_match_hf(hf_mae, images32):
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    noise = torch.rand(images32.shape[0], 16, generator=torch.Generator().manual_seed(3))
    out, hf_enc, hf_dec = hf_forward(hf, images32, noise)
    pred, mask, enc, dec = ours_forward(model, images32, noise, 0.75)
    assert torch.equal(mask, out.mask)
    assert len(enc) == len(hf_enc) == 3 and len(dec) == len(hf_dec) == 2
    for ours, theirs in zip(enc + dec, hf_enc + hf_dec):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=1e-4)
    torch.testing.assert_close(pred, out.logits, atol=1e-5, rtol=1e-4)


def test_unmasked_attention_matches_hf_with_monotone_noise(hf_mae, images32):
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    hf.config.mask_ratio = 0.0
    try:
        monotone = torch.arange(16.0).expand(images32.shape[0], 16)  # HF keeps the order only then
        _, hf_enc, _ = hf_forward(hf, images32, monotone)
    finally:
        hf.config.mask_ratio = 0.75
    random_noise = torch.rand(images32.shape[0], 16)  # maeprobe: ratio 0 keeps the order for any noise
    _, mask, enc, _ = ours_forward(model, images32, random_noise, 0.0)
    assert mask.sum() == 0
    for ours, theirs in zip(enc, hf_enc):
        torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=1e-4)


def test_transformers4_and_hub_layout_loads_identically(hf_mae, tmp_path):
    _, folder = hf_mae
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(folder / "config.json", legacy / "config.json")
    state = load_file(folder / "model.safetensors")
    renamed = {k.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers."): v for k, v in state.items()}
    assert any(k.startswith("decoder.decoder_layers.") for k in renamed)
    torch.save(renamed, legacy / "pytorch_model.bin")
    new, old = maeprobe.load(folder), maeprobe.load(legacy)
    assert "4.x" in old.checkpoint.format
    for (k1, v1), (k2, v2) in zip(new.state_dict().items(), old.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_transformers5_module_names_in_a_raw_state_dict(hf_mae, tmp_path):
    hf, folder = hf_mae
    raw = hf.state_dict()  # 5.x in-memory names: vit.layers.N.attention.q_proj, mlp.fc1, ...
    assert any(".q_proj." in k for k in raw)
    torch.save(raw, tmp_path / "hf_raw.pth")
    cfg = json.loads((folder / "config.json").read_text())
    model = maeprobe.load(tmp_path / "hf_raw.pth", num_heads=cfg["num_attention_heads"],
                          decoder_num_heads=cfg["decoder_num_attention_heads"])
    reference = maeprobe.load(folder)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
