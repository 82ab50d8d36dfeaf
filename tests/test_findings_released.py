"""``maeprobe reproduce --scale released`` offline, on stand-in checkpoints in the official formats placed in
temporary hub caches (an MAE file with its decoder in the torch hub cache, DINO's and MoCo v3's release files,
DeiT as a timm hub snapshot), and on stand-ins in the release files' own containers and key names (``_place_official``):
random weights must give inconclusive verdicts; a missing file is one line naming, per role, where to place each
file and its download URL."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers import load_benchmark

import maeprobe
from maeprobe.findings import reproduce
from maeprobe.findings.catalogue import FINDINGS, RELEASED_FINDINGS

timm = pytest.importorskip("timm")


_place_stand_ins = load_benchmark("gpu_check").place_stand_ins  # the GPU check runs the same stand-ins


def test_released_scale_on_random_stand_ins_is_inconclusive(caches):
    _place_stand_ins(caches)
    out, lines = caches / "out", []
    full = reproduce(None, scale="released", out=out, probe_images=8, device="cpu", echo=lines.append)
    table = full[full["verdict"] != "superseded"]  # version 3; version 2 on the same evidence follows each
    assert table["finding"].tolist() == list(RELEASED_FINDINGS)
    with_v2 = [f for f in RELEASED_FINDINGS if FINDINGS[f].rule_v2 is not None]  # version 2 follows its finding
    assert full.loc[full["verdict"] == "superseded", "finding"].tolist() == [f"{f}-v2" for f in with_v2]
    assert set(table["verdict"]) == {"inconclusive"} and set(table["rule_version"]) == {3}
    assert all(str(d).startswith(("no power at this scale", "W carries no semantics")) for d in table["detail"])
    assert set(table["seeds"]) == {1}
    report = (out / "findings.md").read_text()
    # the report names the checkpoints it used and says the released models trained far longer than the paper's
    for name in ("mae_pretrain_vit_base_full.pth", "dino_vitbase16_pretrain.pth", "timm/deit_base_patch16_224.fb_in1k",
                 "vit-b-300ep.pth.tar", "far longer"):
        assert name in report
    evidence = pd.read_csv(out / "findings" / "mae-local-attention" / "evidence.csv")
    assert set(evidence["model"]) == {"mae", "dino", "deit", "init"}
    for finding in ("contrastive-homogeneous-attention", "mae-high-frequency"):  # cl-vs-mim: every block of each
        evidence = pd.read_csv(out / "findings" / finding / "evidence.csv")
        assert set(evidence["model"]) == {"mae", "dino", "mocov3", "init"} and set(evidence["layer"]) == {0, 1}
    semantic = pd.read_csv(out / "findings" / "decoder-semantic" / "evidence.csv")
    assert semantic["reference"].iloc[0] == "dino_vitbase16_pretrain.pth"  # the released DINO is the reference
    for name in (*RELEASED_FINDINGS, "fig4-render-0"):
        assert (out / "figures" / f"{name}.png").is_file()
    lines.clear()
    again = reproduce(None, scale="released", out=out, probe_images=8, device="cpu", echo=lines.append)
    assert sum("(reused)" in line for line in lines) == len(RELEASED_FINDINGS), lines
    assert again["verdict"].tolist() == full["verdict"].tolist()


def test_released_scale_names_every_missing_file_in_one_line(caches):
    _place_stand_ins(caches, deit=False)
    with pytest.raises(maeprobe.MaeprobeError) as info:
        reproduce(None, scale="released", out=caches / "out", probe_images=8, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "timm/deit_base_patch16_224.fb_in1k" in message and str(caches / "hf") in message
    assert "mae_pretrain" not in message  # found ones are not listed


def test_a_finding_asks_only_for_the_releases_it_reads(caches):
    """Without MoCo v3's file, the findings that do not read it still run; those that do name its file and URL."""
    _place_stand_ins(caches, mocov3=False)
    table = reproduce(["mae-local-attention"], scale="released", out=caches / "out", probe_images=4, device="cpu")
    assert table["verdict"].tolist() == ["inconclusive", "superseded"]
    with pytest.raises(maeprobe.MaeprobeError) as info:
        reproduce(["contrastive-homogeneous-attention"], scale="released", out=caches / "out2", probe_images=4)
    message = str(info.value)
    assert "\n" not in message and "MoCo v3" in message and "DeiT" not in message
    assert f"{caches / 'torch' / 'hub' / 'checkpoints' / 'vit-b-300ep.pth.tar'} (from " \
           "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar)" in message


def test_released_scale_refuses_findings_that_need_training(caches):
    with pytest.raises(maeprobe.MaeprobeError, match="not measured at --scale released"):
        reproduce(["umae-rank"], scale="released", out=caches / "out")


# --------------------------------------------------------------------------- the official containers
# Key names and containers typed in from the release code, not from maeprobe: facebookresearch/mae models_mae.py
# (MaskedAutoencoderViT; the demo and main_finetune.py read checkpoint['model']), facebookresearch/dino hubconf.py
# (load_state_dict(state_dict, strict=True) on a num_classes=0 ViT: a plain state dict, no head) and
# facebookresearch/deit models.py (deit_base_patch16_224 loads checkpoint["model"] into timm's VisionTransformer,
# 1000-class head). Width 192 (3 heads, as DeiT-Ti) and MAE's 512-wide decoder (16 heads): widths of real releases
# that maeprobe knows the heads of, as it must for a release file, which stores none.
W, DEPTH, P, GRID, DEC_W = 192, 2, 16, 4, 512


def _block(prefix: str, d: int, g) -> dict:
    shapes = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
              "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
              "mlp.fc1.weight": (4 * d, d), "mlp.fc1.bias": (4 * d,), "mlp.fc2.weight": (d, 4 * d),
              "mlp.fc2.bias": (d,)}
    return {f"{prefix}.{k}": 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()}


def _encoder(g) -> dict:
    sd = {"cls_token": 0.02 * torch.randn(1, 1, W, generator=g),
          "pos_embed": 0.02 * torch.randn(1, GRID * GRID + 1, W, generator=g),
          "patch_embed.proj.weight": 0.02 * torch.randn(W, 3, P, P, generator=g),
          "patch_embed.proj.bias": torch.zeros(W)}
    for i in range(DEPTH):
        sd.update(_block(f"blocks.{i}", W, g))
    sd.update({"norm.weight": torch.ones(W), "norm.bias": torch.zeros(W)})
    return sd


def _mae_full(g) -> dict:
    sd = _encoder(g)
    sd.update({"mask_token": 0.02 * torch.randn(1, 1, DEC_W, generator=g),
               "decoder_embed.weight": 0.02 * torch.randn(DEC_W, W, generator=g),
               "decoder_embed.bias": torch.zeros(DEC_W),
               "decoder_pos_embed": 0.02 * torch.randn(1, GRID * GRID + 1, DEC_W, generator=g)})
    sd.update(_block("decoder_blocks.0", DEC_W, g))
    sd.update({"decoder_norm.weight": torch.ones(DEC_W), "decoder_norm.bias": torch.zeros(DEC_W),
               "decoder_pred.weight": 0.02 * torch.randn(P * P * 3, DEC_W, generator=g),
               "decoder_pred.bias": torch.zeros(P * P * 3)})
    return sd


def _place_official(root, *, deit: bool = True) -> dict:
    """The four release files in the torch hub cache, in their own containers, under their release names. MoCo v3:
    facebookresearch/moco-v3 main_moco.py saves {'epoch', 'arch', 'state_dict': DDP(MoCo_ViT).state_dict(),
    'optimizer'}; the ViT sits in ``module.base_encoder.`` (its ``head`` the projection MLP), beside
    ``module.momentum_encoder.`` and ``module.predictor.``."""
    g = torch.Generator().manual_seed(3)
    folder = root / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    files = {"mae": ("mae_pretrain_vit_base_full.pth", {"model": _mae_full(g)}),
             "dino": ("dino_vitbase16_pretrain.pth", _encoder(g))}
    if deit:
        files["deit"] = ("deit_base_patch16_224-b5f2ef4d.pth",
                         {"model": {**_encoder(g), "head.weight": 0.02 * torch.randn(1000, W, generator=g),
                                    "head.bias": torch.zeros(1000)}})
    base, momentum = _encoder(g), _encoder(g)
    state = {f"module.base_encoder.{k}": v for k, v in base.items()}
    state.update({f"module.momentum_encoder.{k}": v for k, v in momentum.items()})
    for enc in ("base_encoder", "momentum_encoder"):
        state.update({f"module.{enc}.head.0.weight": torch.randn(64, W, generator=g),
                      f"module.{enc}.head.1.weight": torch.ones(64), f"module.{enc}.head.1.bias": torch.zeros(64)})
    state.update({"module.predictor.0.weight": torch.randn(64, 64, generator=g)})
    files["mocov3"] = ("vit-b-300ep.pth.tar", {"epoch": 300, "arch": "vit_base", "state_dict": state,
                                               "optimizer": {"state": {}, "param_groups": []}})
    for name, obj in files.values():
        torch.save(obj, folder / name)
    return files


_CONTAINER = {"mae": "model", "deit": "model", "mocov3": "state_dict"}  # the key holding the weights (DINO: none)


def _weights(role: str, raw: dict) -> dict:
    """The encoder's tensors under timm's names, read from a release file's own container."""
    if role == "dino":
        return raw
    if role == "mocov3":
        prefix = "module.base_encoder."
        return {k[len(prefix):]: v for k, v in raw["state_dict"].items() if k.startswith(prefix)}
    return raw[_CONTAINER[role]]


def test_official_release_containers_are_found_and_load(caches):
    """DeiT's own file in the torch hub cache is found (it used to be reported missing: only timm's hub snapshot
    was looked for), and the four official containers load with their own key names, nothing added; MoCo v3's base
    encoder is the one loaded."""
    from maeprobe.findings.runner import released_checkpoints

    files = _place_official(caches)
    found, missing = released_checkpoints()
    assert missing == []
    assert {role: path.name for role, (path, _) in found.items()} == {r: n for r, (n, _) in files.items()}
    for role, (path, label) in found.items():
        assert label.endswith(files[role][0])
        raw = torch.load(path, map_location="cpu", weights_only=True)
        assert "maeprobe" not in raw and set(raw) == set(files[role][1])
        sd = _weights(role, raw)
        model = maeprobe.load(path)
        cfg = model.config
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == (W, DEPTH, 3, P, GRID * P)
        assert cfg.decoder_depth == (1 if role == "mae" else 0)
        mine = model.state_dict()
        for key in ("patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "norm.weight"):
            torch.testing.assert_close(mine[key], sd[key], rtol=0, atol=0)
        if role == "mae":
            assert cfg.decoder_num_heads == 16 and cfg.decoder_embed_dim == DEC_W
            torch.testing.assert_close(mine["decoder_blocks.0.attn.qkv.weight"], sd["decoder_blocks.0.attn.qkv.weight"],
                                        rtol=0, atol=0)
    # by its release name too, as DeiT's models.py finds it through torch.hub
    assert maeprobe.load("deit_base_patch16_224-b5f2ef4d.pth").config.embed_dim == W


def test_released_scale_runs_on_the_official_containers(caches):
    _place_official(caches)
    table = reproduce(["mae-local-attention"], scale="released", out=caches / "out", probe_images=4, device="cpu")
    assert table["verdict"].tolist() == ["inconclusive", "superseded"]
    report = (caches / "out" / "findings.md").read_text()
    assert "deit_base_patch16_224-b5f2ef4d.pth" in report


def test_missing_line_says_where_to_place_each_file_and_its_url(caches):
    """Per role: the torch hub checkpoints folder with the exact file names and their download URLs (typed in from
    the releases' READMEs / hubconf.py / models.py), and the HuggingFace cache layout for hub repositories."""
    from maeprobe.findings.runner import released_checkpoints

    _place_official(caches, deit=False)
    found, missing = released_checkpoints(("mae", "dino", "deit"))
    assert set(found) == {"mae", "dino"} and len(missing) == 1
    line = missing[0]
    assert "\n" not in line
    checkpoints = caches / "torch" / "hub" / "checkpoints"
    assert f"{checkpoints / 'deit_base_patch16_224-b5f2ef4d.pth'} (from " \
           "https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth)" in line
    repo = caches / "hf" / "models--timm--deit_base_patch16_224.fb_in1k"
    assert str(repo / "snapshots") in line and str(repo / "refs" / "main") in line and "model.safetensors" in line
    assert "https://huggingface.co/timm/deit_base_patch16_224.fb_in1k" in line
    (checkpoints / "dino_vitbase16_pretrain.pth").unlink()
    line = next(m for m in released_checkpoints()[1] if m.startswith("DINO"))
    assert f"{checkpoints / 'dino_vitbase16_pretrain.pth'} (from " \
           "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth)" in line
    (checkpoints / "mae_pretrain_vit_base_full.pth").unlink()
    line = next(m for m in released_checkpoints()[1] if m.startswith("MAE"))
    assert "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base_full.pth" in line
    assert "https://dl.fbaipublicfiles.com/mae/visualize/mae_visualize_vit_base.pth" in line


def test_dino_under_moco_v3s_name_is_not_the_release(caches):
    """DINO's ViT-B/16 has MoCo v3's shapes and parameter count: under MoCo v3's release name its layout (no
    ``module.base_encoder.``) says it is not that release; a link making two roles one file is refused."""
    from maeprobe.checkpoints.originals import release_mismatch
    from maeprobe.findings.released import check_distinct, load_released

    timm_vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    path = caches / "vit-b-300ep.pth.tar"
    torch.save(timm_vit.state_dict(), path)
    why = release_mismatch("vit-b-300ep.pth.tar", maeprobe.load(path))
    assert why is not None and "mocov3" in why
    _place_stand_ins(caches)
    checkpoints = caches / "torch" / "hub" / "checkpoints"
    (checkpoints / "vit-b-300ep.pth.tar").unlink()
    (checkpoints / "vit-b-300ep.pth.tar").symlink_to(checkpoints / "dino_vitbase16_pretrain.pth")
    from maeprobe.findings.runner import released_checkpoints

    found, _ = released_checkpoints(("mae", "dino", "mocov3"))
    _, checkpoints = load_released(found)
    with pytest.raises(maeprobe.MaeprobeError, match="same contents as DINO"):
        check_distinct(found, checkpoints)
