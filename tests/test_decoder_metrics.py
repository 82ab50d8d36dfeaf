"""Eq. 7, Eq. 8 and the spectrum against direct computations on independently captured activations."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import spawn_gloo, tiny_mae
from helpers.oracles import hf_decoder_outputs
from timm.models.vision_transformer import VisionTransformer

import maeprobe
from maeprobe.masking import mask_noise


def brute_force_eq7(attn_per_image):
    """Mean over ordered pairs i != j of cosine similarity, by explicit loops."""
    vectors = [a.flatten().double() for a in attn_per_image]
    sims = [torch.nn.functional.cosine_similarity(u, v, dim=0).item()
            for (i, u), (j, v) in itertools.permutations(enumerate(vectors), 2)]
    return float(np.mean(sims))


@pytest.mark.parametrize("include_cls_key", [False, True])
def test_eq7_matches_brute_force_pairs_on_hf_attention(hf_mae, images32, include_cls_key):
    """A_{l,i}: masked query rows x heads x the n patch keys (Eq. 7); with include_cls_key also the CLS column."""
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    n = images32.shape[0]
    noise = mask_noise(16, seed=4, batch_size=n)  # one shared mask
    out, _, hf_dec, _ = hf_decoder_outputs(hf, images32, noise)
    masked = torch.nonzero(out.mask[0]).flatten()  # HF's own masked patches, ascending
    rows = 1 + masked
    keys = slice(0, None) if include_cls_key else slice(1, None)  # HF's key 0 is CLS
    table = maeprobe.decoder_attention_similarity(model, images32, per_head=True, include_cls_key=include_cls_key,
                                                  mask_ratio=0.75, seed=4, batch_size=4, bootstrap=50, device="cpu")
    assert (table["cls_key"] == include_cls_key).all()
    for layer in range(2):
        expected = brute_force_eq7([hf_dec[layer][i][:, rows][:, :, keys] for i in range(n)])
        got = table[(table["layer"] == layer) & table["head"].isna()]
        assert got["value"].item() == pytest.approx(expected, abs=1e-6)
        assert got["ci_low"].item() <= got["ci_high"].item()
        for head in range(3):
            expected_head = brute_force_eq7([hf_dec[layer][i][head, rows][:, keys] for i in range(n)])
            row = table[(table["layer"] == layer) & (table["head"] == head)]
            assert row["value"].item() == pytest.approx(expected_head, abs=1e-6)
    assert (table["masked_queries"] == 12).all() and (table["n_images"] == n).all()


def test_eq7_refuses_per_image_masks_and_unmasked_runs(hf_mae, images32):
    _, folder = hf_mae
    model = maeprobe.load(folder)
    with pytest.raises(maeprobe.MaeprobeError, match="needs masked patches"):
        maeprobe.decoder_attention_similarity(model, images32, mask_ratio=0.0, device="cpu")
    encoder_only = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, decoder_depth=0)
    with pytest.raises(maeprobe.MaeprobeError, match="no decoder"):
        maeprobe.decoder_attention_similarity(encoder_only, images32, device="cpu")


def direct_eq8(decoder_tokens, ref_tokens, tau=None, eps=1e-5):
    """Per image: cosine between flattened affinity matrices, written with numpy loops over pairs."""
    scores = []
    for dec, ref in zip(decoder_tokens, ref_tokens):
        mats = []
        for f in (ref.double().numpy(), dec.double().numpy()):
            f = f / np.linalg.norm(f, axis=1, keepdims=True)
            n = len(f)
            W = np.array([[f[a] @ f[b] for b in range(n)] for a in range(n)])
            if tau is not None:
                W = np.where(W > tau, 1.0, eps)
            mats.append(W.flatten())
        scores.append(mats[0] @ mats[1] / np.linalg.norm(mats[0]) / np.linalg.norm(mats[1]))
    return float(np.mean(scores))


def timm_reference(tmp_path, img_size, patch_size, seed=3):
    torch.manual_seed(seed)
    ref = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=64, depth=2, num_heads=4,
                            num_classes=0, dynamic_img_size=True).eval()
    path = tmp_path / "ref.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


def timm_keys(ref, x):
    """Keys of timm's own last block: its qkv output (q | k | v), prefix dropped."""
    got = {}
    handle = ref.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: got.__setitem__("qkv", o))
    with torch.no_grad():
        ref.forward_features(x)
    handle.remove()
    return got["qkv"][:, 1:, 64:128]


@pytest.mark.parametrize("ref_features, decoder_features, tau", [
    ("keys", None, 0.15),        # the default: CutLER's MaskCut (keys, W > 0.15 else 1e-5) for both models
    ("keys", "tokens", None),    # continuous cosine, decoder block outputs
    ("tokens", "tokens", 0.2),
])
def test_eq8_matches_direct_implementation(hf_mae, images32, tmp_path, ref_features, decoder_features, tau):
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    ref, ref_path = timm_reference(tmp_path, img_size=32, patch_size=8)  # same grid, no resizing
    n = images32.shape[0]
    noise = mask_noise(16, seed=0, batch_size=n)
    decoder_keys = (decoder_features or ref_features) == "keys"
    _, _, _, decoder_out = hf_decoder_outputs(hf, images32, noise, keys=decoder_keys)
    if ref_features == "keys":
        ref_feats = timm_keys(ref, images32)
    else:
        with torch.no_grad():
            ref_feats = ref.blocks[-1](ref.blocks[0](ref._pos_embed(ref.patch_embed(images32))))[:, 1:]
    kwargs = {} if tau == 0.15 else {"tau": tau}  # 0.15 must be the default
    table = maeprobe.decoder_semantic_similarity(model, str(ref_path), images32, ref_features=ref_features,
                                                 decoder_features=decoder_features, bootstrap=30, device="cpu",
                                                 ref_num_heads=4, batch_size=4, **kwargs)
    assert len(table) == 2
    assert (table["decoder_features"] == (decoder_features or ref_features)).all()
    for layer in range(2):
        expected = direct_eq8(decoder_out[layer][:, 1:], ref_feats, tau=tau)
        row = table[table["layer"] == layer]
        assert row["value"].item() == pytest.approx(expected, abs=1e-5)
        assert row["ci_low"].item() <= row["value"].item() <= row["ci_high"].item()


def test_eq8_reference_is_resized_to_the_probed_grid(hf_mae, images32, tmp_path):
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    ref, ref_path = timm_reference(tmp_path, img_size=224, patch_size=16)  # grid 14 -> resampled to 4x4
    n = images32.shape[0]
    _, _, _, decoder_out = hf_decoder_outputs(hf, images32, mask_noise(16, seed=0, batch_size=n))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = torch.nn.functional.interpolate(images32 * std + mean, size=64, mode="bicubic", antialias=True,
                                             align_corners=False).clamp(0, 1)
    keys = timm_keys(ref, (pixels - mean) / std)  # timm's dynamic_img_size resamples its own pos embed
    table = maeprobe.decoder_semantic_similarity(model, str(ref_path), images32, ref_features="keys",
                                                 decoder_features="tokens", tau=None, device="cpu", ref_num_heads=4)
    for layer in range(2):
        expected = direct_eq8(decoder_out[layer][:, 1:], keys)
        assert table[table["layer"] == layer]["value"].item() == pytest.approx(expected, abs=1e-4)


def test_dino_reference_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MAEPROBE_DINO", raising=False)
    with pytest.raises(maeprobe.MaeprobeError, match="MAEPROBE_DINO"):
        maeprobe.load_reference("dino")
    ref, path = timm_reference(tmp_path, img_size=32, patch_size=8)
    snapshot = tmp_path / "hf" / "hub" / "models--timm--vit_base_patch16_224.dino" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "pytorch_model.bin").write_bytes(path.read_bytes())
    assert maeprobe.load_reference("dino", num_heads=4).config.embed_dim == 64


def hf_last_hidden_state(hf, images):
    """HF's own unmasked encoder: output of the last block, before the final layernorm [N, 1 + L, D]."""
    with torch.no_grad():
        hf.config.mask_ratio = 0.0
        try:
            out = hf.vit(pixel_values=images, noise=torch.arange(16.0).expand(len(images), 16),
                         output_hidden_states=True)
        finally:
            hf.config.mask_ratio = 0.75
    return out.hidden_states[-1]


def test_spectrum_matches_numpy_svd_of_hf_hidden_states(hf_mae, images32):
    hf, folder = hf_mae
    model = maeprobe.load(folder)
    last = hf_last_hidden_state(hf, images32)
    table = maeprobe.feature_spectrum(model, images32, device="cpu", bootstrap=20)
    for kind, feats in (("cls", last[:, 0]), ("patch_mean", last[:, 1:].mean(1))):
        X = feats.double().numpy()
        sv = np.linalg.svd(X - X.mean(0), compute_uv=False) / np.sqrt(len(X) - 1)
        rows = table[(table["metric"] == "feature_spectrum") & (table["feature"] == kind)].sort_values("component")
        np.testing.assert_allclose(rows["value"].to_numpy()[: len(sv)], sv, atol=1e-5, rtol=1e-4)
        assert np.abs(rows["value"].to_numpy()[len(sv):]).max() < 1e-4  # rank <= N - 1
        p = sv / sv.sum()
        erank = table[(table["metric"] == "effective_rank") & (table["feature"] == kind)]["value"].item()
        assert erank == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-3)


def _eq7_worker(rank, state, images, out):
    model = tiny_mae(depth=1, decoder_depth=2, seed=None)
    model.load_state_dict(state)
    table = maeprobe.decoder_attention_similarity(model, images, per_head=True, bootstrap=10, device="cpu")
    if rank == 0:
        table.to_csv(out, index=False)


@pytest.mark.slow
def test_eq7_under_torch_distributed_with_an_idle_process(tmp_path):
    """Three processes, two images: the third process sees none and must still join the all-reduce."""
    model = tiny_mae(depth=1, decoder_depth=2)
    images = torch.randn(2, 3, 32, 32)
    single = maeprobe.decoder_attention_similarity(model, images, per_head=True, bootstrap=10, device="cpu")
    spawn_gloo(_eq7_worker, 3, tmp_path / "init", model.state_dict(), images, tmp_path / "out.csv")
    import pandas as pd

    both = pd.read_csv(tmp_path / "out.csv")
    np.testing.assert_allclose(both["value"].to_numpy(), single["value"].to_numpy(), rtol=1e-6)
    assert (both["n_images"] == 2).all()


def test_effective_rank_interval_is_a_group_jackknife(hf_mae, images32):
    """ci of the effective rank and of every singular value = estimate -+ t(0.975, k-1) x jackknife se over the
    k source units (images 0-1, 2-3 and 4, 5 here: every unit is left out whole), computed here with numpy SVDs of
    HF's own hidden states with each unit's images left out. (Before intervals resampled units, the groups were
    hashed from image indices and the singular values had no interval.)"""
    from scipy.stats import t as student_t

    hf, folder = hf_mae
    model = maeprobe.load(folder)
    X = hf_last_hidden_state(hf, images32)[:, 0].double().numpy()  # CLS feature of the last block
    units = np.array([0, 0, 1, 1, 2, 3])
    table = maeprobe.feature_spectrum(model, images32, device="cpu", bootstrap=1, seed=3, resample_by=list(units))
    row = table[(table["metric"] == "effective_rank") & (table["feature"] == "cls")].iloc[0]
    spectrum = table[(table["metric"] == "feature_spectrum") & (table["feature"] == "cls")].sort_values("component")

    def svals(feats):
        return np.linalg.svd(feats - feats.mean(0), compute_uv=False) / np.sqrt(len(feats) - 1)

    def erank(feats):
        sv = svals(feats)
        p = sv / sv.sum()
        p = p[p > 1e-12]
        return np.exp(-(p * np.log(p)).sum())

    def jackknife(stat):
        reps = np.array([stat(X[units != u]) for u in np.unique(units)])
        k = len(reps)
        return student_t.ppf(0.975, k - 1) * np.sqrt((k - 1) / k * ((reps - reps.mean(0)) ** 2).sum(0))

    half = jackknife(erank)
    assert row["value"] == pytest.approx(erank(X), rel=1e-4)
    assert row["ci_low"] == pytest.approx(erank(X) - half, rel=1e-3, abs=1e-3)
    assert row["ci_high"] == pytest.approx(erank(X) + half, rel=1e-3, abs=1e-3)
    assert row["n_units"] == 4 and row["n_images"] == 6
    first = lambda feats: svals(feats)[:3]  # the three largest singular values (n - 1 = 3 left out of 4 images)
    np.testing.assert_allclose(spectrum["ci_low"].to_numpy()[:3], svals(X)[:3] - jackknife(first), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(spectrum["ci_high"].to_numpy()[:3], svals(X)[:3] + jackknife(first),
                               rtol=1e-3, atol=1e-4)
