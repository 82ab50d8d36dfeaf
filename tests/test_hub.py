"""Models by name from temporary HuggingFace / torch hub caches; nothing here touches the network."""
from __future__ import annotations

import json

import pytest
import torch

import maeprobe
from maeprobe.models import build_mae

transformers = pytest.importorskip("transformers")


def _snapshot(root, repo, commit="0123abcd"):
    folder = root / "hf" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def _tiny_dinov2(folder):
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, image_size=28, patch_size=14)
    transformers.Dinov2Model(config).save_pretrained(folder)


def test_hf_hub_name_resolves_from_the_cache(caches):
    _tiny_dinov2(_snapshot(caches, "facebook/dinov2-small"))
    model = maeprobe.load("hf-hub:facebook/dinov2-small", img_size=56)
    assert model.checkpoint.family_label == "DINOv2" and model.config.grid_size == 4


def test_timm_name_reads_weights_and_pretrained_cfg(caches):
    import timm
    from safetensors.torch import save_file

    snapshot = _snapshot(caches, "timm/vit_small_patch16_224.dino")
    net = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=40,
                            depth=1, num_heads=5, num_classes=0)
    save_file(net.state_dict(), str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({
        "architecture": "vit_small_patch16_224", "model_args": {"num_heads": 5},
        "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    model = maeprobe.load("timm/vit_small_patch16_224.dino")
    assert model.config.num_heads == 5  # 40 wide is no known release: the head count came from config.json
    assert model.checkpoint.mean == (0.5, 0.5, 0.5)


def test_official_release_name_resolves_from_the_torch_hub_cache(caches):
    target = caches / "torch" / "hub" / "checkpoints" / "mae_pretrain_vit_base.pth"
    target.parent.mkdir(parents=True)
    maeprobe.save_checkpoint(build_mae("mae_vit_tiny_patch8_64"), target)
    assert maeprobe.load("mae_pretrain_vit_base.pth").config.embed_dim == 192


def test_deit_release_name_resolves_from_the_torch_hub_cache(caches):
    """facebookresearch/deit models.py: torch.hub.load_state_dict_from_url(url=".../deit/deit_base_patch16_224-
    b5f2ef4d.pth") keeps the file under that name in the torch hub cache; its container is {'model': state dict}."""
    import timm

    from maeprobe.checkpoints.hub import release_url

    assert release_url("deit_base_patch16_224-b5f2ef4d.pth") == \
        "https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth"  # README_deit.md
    assert release_url("deit_base_patch16_224.pth") is None  # no hash: not a release name
    target = caches / "torch" / "hub" / "checkpoints" / "deit_base_patch16_224-b5f2ef4d.pth"
    target.parent.mkdir(parents=True)
    net = timm.create_model("deit_base_patch16_224", pretrained=False, img_size=32, patch_size=16, embed_dim=192,
                            depth=1, num_heads=3)
    torch.save({"model": net.state_dict()}, target)
    model = maeprobe.load("deit_base_patch16_224-b5f2ef4d.pth")
    assert (model.config.embed_dim, model.config.img_size) == (192, 32)


def test_missing_name_offline_gives_one_line(caches):
    with pytest.raises(maeprobe.MaeprobeError, match="offline mode is on"):
        maeprobe.load("hf-hub:facebook/dinov2-large")
    with pytest.raises(maeprobe.MaeprobeError, match="torch hub cache"):
        maeprobe.load("dinov2_vitl14_pretrain.pth")


def test_failed_download_gives_one_line(caches, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def unreachable(*args, **kwargs):
        calls.append(args)
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(maeprobe.MaeprobeError, match="download failed .network is unreachable"):
        maeprobe.load("hf-hub:facebook/dinov2-large")
    assert calls == [("facebook/dinov2-large",)]


def test_ref_dino_accepts_dinov2_from_the_cache(caches):
    with pytest.raises(maeprobe.MaeprobeError, match="DINO or DINOv2"):
        maeprobe.load_reference("dino")
    _tiny_dinov2(_snapshot(caches, "facebook/dinov2-base"))
    reference = maeprobe.load_reference("dino")
    assert reference.checkpoint.family_label == "DINOv2"


def test_existing_paths_are_never_names(caches):
    (caches / "timm").mkdir()
    with pytest.raises(maeprobe.MaeprobeError, match="no config.json"):
        maeprobe.load("timm")
    torch.save({"x": torch.zeros(1)}, caches / "dinov2_vitb14_pretrain.pth")
    with pytest.raises(maeprobe.MaeprobeError, match="not a ViT"):
        maeprobe.load("dinov2_vitb14_pretrain.pth")


def test_ref_dino_prefers_dino_v1_over_dinov2(caches):
    """LC-MAE Eq. 8 and CutLER use DINO (v1): with both in the caches, --ref dino takes DINO and says so."""
    import timm

    _tiny_dinov2(_snapshot(caches, "facebook/dinov2-base"))
    assert maeprobe.load_reference("dino").checkpoint.family_label == "DINOv2"
    checkpoints = caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    net = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=40,
                            depth=1, num_heads=5, num_classes=0)
    torch.save(net.state_dict(), checkpoints / "dino_vitbase16_pretrain.pth")
    # DINO v1 is taken first; a tiny stand-in under the release's name is not described as DINO ViT-B/16 (issue 27)
    with pytest.raises(maeprobe.MaeprobeError, match=r"dino_vitbase16_pretrain.pth is named like the DINO release "
                                                     r"but its contents do not match"):
        maeprobe.load_reference("dino", num_heads=5)
    renamed = checkpoints / "my_dino_standin.pth"  # the same file under its own name, given explicitly
    (checkpoints / "dino_vitbase16_pretrain.pth").rename(renamed)
    reference = maeprobe.load_reference(str(renamed), num_heads=5)
    assert reference.checkpoint.family_label != "DINOv2"
