"""Shared fixtures: tiny models built in the tests, images the tests generate, one trained checkpoint for the
whole session. No downloads. Plain functions shared by the test modules live in ``helpers/`` (``from helpers
import ...``; tests/ is on sys.path because this file's folder is the rootdir of the tests): test modules never
import each other or this file."""
from __future__ import annotations

import os

import pytest
import torch
from helpers import load_benchmark

# one thread per pytest-xdist worker (make test runs one worker per core), two in a single process
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def ieee_convolutions():
    """IEEE float32 cuDNN convolutions for the test (torch's default on Ampere and later is TF32)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        before = conv.fp32_precision
        conv.fp32_precision = "ieee"
        yield
        conv.fp32_precision = before
    else:
        before = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="session")
def hf_config_kwargs():
    """A tiny ViTMAE: 32 px, patch 8 (4x4 grid), width 64 / 4 heads, decoder 48 wide / 3 heads."""
    return dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                decoder_hidden_size=48, decoder_num_hidden_layers=2, decoder_num_attention_heads=3,
                decoder_intermediate_size=96, image_size=32, patch_size=8, mask_ratio=0.75)


@pytest.fixture(scope="session")
def hf_mae(tmp_path_factory, hf_config_kwargs):
    """(HF ViTMAEForPreTraining in eager attention mode, folder it was saved to)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(**hf_config_kwargs)
    model = transformers.ViTMAEForPreTraining(config)
    # Random, non-trivial weights everywhere (the default init has zero biases and unit norms).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "position" in name or "pos_embed" in name:
                continue
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("hf_vitmae")
    model.save_pretrained(folder)
    model = transformers.ViTMAEForPreTraining.from_pretrained(folder, attn_implementation="eager").eval()
    return model, folder


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty HuggingFace and torch hub caches in tmp_path, offline, no DINO override; tmp_path is the cwd."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MAEPROBE_DINO", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """train/ and val/ with two colour classes (red, blue) of 40 x 40 noisy PNGs (8 + 4 per class)."""
    root = tmp_path_factory.mktemp("imagefolder")
    load_benchmark("gpu_check").make_images(root, per_class=8, size=40)
    return root


@pytest.fixture(scope="session")
def images32():
    """Six smooth random images [6, 3, 32, 32] (already normalised)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)



@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """One tiny MAE pretrained a few steps through ``maeprobe.train.pretrain`` (``helpers.training.TRAINED``), once
    for the session: for the tests that need "a trained model", not a particular training. Its folder also holds
    log.csv and config.yaml. Treat it as read-only (copy it before resuming or writing next to it)."""
    from helpers.training import train_tiny

    torch.manual_seed(0)
    return train_tiny(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def captured(monkeypatch):
    """The figure objects as they are saved (the drawing code closes them after saving)."""
    from maeprobe.plots import figures as figmod

    seen = []

    def keep(fig, paths, dpi):
        fig.canvas.draw()
        seen.append(fig)
        return paths

    monkeypatch.setattr(figmod, "save_figure", keep)
    return seen
