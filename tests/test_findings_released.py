"""``maeprobe reproduce --scale released`` offline, on stand-in checkpoints in the official formats placed in
temporary hub caches (an MAE file with its decoder in the torch hub cache, DINO's release file, DeiT as a timm
hub snapshot): random weights must give inconclusive verdicts; a missing file is one line naming every file."""
from __future__ import annotations


import pandas as pd
import pytest

import maeprobe
from conftest import load_benchmark
from maeprobe.findings import reproduce

timm = pytest.importorskip("timm")


_place_stand_ins = load_benchmark("gpu_check").place_stand_ins  # the GPU check runs the same stand-ins


def test_released_scale_on_random_stand_ins_is_inconclusive(caches):
    _place_stand_ins(caches)
    out, lines = caches / "out", []
    table = reproduce(None, scale="released", out=out, probe_images=8, device="cpu", echo=lines.append)
    assert table["finding"].tolist() == ["decoder-positional", "decoder-semantic", "mae-local-attention"]
    assert set(table["verdict"]) == {"inconclusive"}
    assert all(str(d).startswith("no power at this scale") for d in table["detail"])
    assert set(table["seeds"]) == {1}
    report = (out / "findings.md").read_text()
    # the report names the checkpoints it used and says the released models trained far longer than the paper's
    for name in ("mae_pretrain_vit_base_full.pth", "dino_vitbase16_pretrain.pth", "timm/deit_base_patch16_224.fb_in1k",
                 "far longer"):
        assert name in report
    evidence = pd.read_csv(out / "findings" / "mae-local-attention" / "evidence.csv")
    assert set(evidence["model"]) == {"mae", "dino", "deit", "init"}
    semantic = pd.read_csv(out / "findings" / "decoder-semantic" / "evidence.csv")
    assert semantic["reference"].iloc[0] == "dino_vitbase16_pretrain.pth"  # the released DINO is the reference
    for name in ("decoder-positional", "decoder-semantic", "mae-local-attention", "fig4-render-0"):
        assert (out / "figures" / f"{name}.png").is_file()
    lines.clear()
    again = reproduce(None, scale="released", out=out, probe_images=8, device="cpu", echo=lines.append)
    assert sum("(reused)" in line for line in lines) == 3 and again["verdict"].tolist() == table["verdict"].tolist()


def test_released_scale_names_every_missing_file_in_one_line(caches):
    _place_stand_ins(caches, deit=False)
    with pytest.raises(maeprobe.MaeprobeError) as info:
        reproduce(None, scale="released", out=caches / "out", probe_images=8, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "timm/deit_base_patch16_224.fb_in1k" in message and str(caches / "hf") in message
    assert "mae_pretrain" not in message  # found ones are not listed


def test_released_scale_refuses_findings_that_need_training(caches):
    with pytest.raises(maeprobe.MaeprobeError, match="not measured at --scale released"):
        reproduce(["umae-rank"], scale="released", out=caches / "out")
