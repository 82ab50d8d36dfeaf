"""Issue 27, ``maeprobe reproduce``: hostile image folders, release-named files, stored runs and path names.

Every CLI case runs in a limited child (``tests/hostile.py``: address space capped, network refused, killed when it
hangs). The inputs are generated here: tiny stand-in checkpoints in temporary hub caches, images written with
Pillow, corrupt files cut from them, folders nested past what the system or Python's recursion allows, and a
tiny run (10 steps) whose stored files are then attacked. Expectations are independent of the code under test:
file names the refusal must name, parameter counts of timm's own models and of MAE's tensor shapes written out by
hand, linear-probe accuracies of a labelled set whose classes are identical pixels (exactly 50%)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import load_benchmark
from helpers.hostile import assert_clean_exit, assert_refused, run_cases
from PIL import Image

timm = pytest.importorskip("timm")
place_stand_ins = load_benchmark("gpu_check").place_stand_ins
TINY = ["--scale", "tiny", "--seeds", "1", "--steps", "10", "--probe-images", "4", "--device", "cpu"]


# --------------------------------------------------------------------------- generated inputs
def _png(path, size=(40, 40), colour=(200, 30, 30), seed=0) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _header_bomb() -> bytes:
    """A 1x1 PNG whose header claims 100000 x 100000 pixels."""
    import struct
    import zlib

    data = bytearray(_bytes("PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", 100_000, 100_000)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


# name -> bytes of one unusable image file (each refused naming the file, before any training)
CORRUPT = {
    "text.png": b"not an image at all\n" * 10,
    "empty.jpg": b"",
    "cut.png": _bytes("PNG")[:200],
    "cut.jpg": _bytes("JPEG")[:300],
    "bomb.png": _header_bomb(),
}


def _nest(root, levels: int, name: str = "d") -> None:
    """``levels`` folders nested in ``root`` (through directory descriptors: the path may exceed PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def _unnest(folder, name: str = "d") -> None:
    """Remove ``_nest``'s folders level by level, with short paths only (rename the top one aside, lift its child)."""
    top, aside = folder / name, folder / (name + "-aside")
    while top.exists():
        os.rename(top, aside)
        if (aside / name).exists():
            os.rename(aside / name, top)
        os.rmdir(aside)


def _release_root(root, dino=None):
    """Stand-ins of the three released files (random tiny ViTs at 32 px, patch 8, under the release names);
    ``dino=(img_size, patch)`` replaces DINO's file by one at that input size and patch, ``"encoder"`` MAE's by
    an encoder without decoder."""
    place_stand_ins(root)
    folder = root / "torch" / "hub" / "checkpoints"
    if dino == "encoder":
        shutil.copyfile(folder / "dino_vitbase16_pretrain.pth", folder / "mae_pretrain_vit_base_full.pth")
        dino = None
    if dino is not None:
        torch.manual_seed(2)
        size, patch = dino
        model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=size, patch_size=patch,
                                  embed_dim=192, depth=2, num_heads=3, num_classes=0)
        torch.save(model.state_dict(), root / "torch" / "hub" / "checkpoints" / "dino_vitbase16_pretrain.pth")
    return {"TORCH_HOME": str(root / "torch"), "HF_HUB_CACHE": str(root / "hf")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce_inputs")
    good = root / "good"
    good.mkdir()
    for i in range(4):
        _png(good / f"{i}.png", seed=i)
    bad = {}
    for name, data in CORRUPT.items():
        folder = root / f"data-{name}"
        shutil.copytree(good, folder)
        (folder / "sub").mkdir()
        (folder / "sub" / name).write_bytes(data)
        evalset = root / f"eval-{name}"
        for label, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
            (evalset / label).mkdir(parents=True)
            for i in range(5):
                _png(evalset / label / f"{i}.png", colour=colour, seed=i)
        (evalset / "b" / name).write_bytes(data)
        bad[name] = (folder, evalset)
    # large decoded images from tiny files: 24 PNGs of 4000 x 4000 zeros (48 MB each decoded, 1.1 GB in all)
    big = root / "big"
    big.mkdir()
    Image.new("RGB", (4000, 4000)).save(big / "00.png")
    for i in range(1, 24):
        shutil.copyfile(big / "00.png", big / f"{i:02d}.png")
    deep = {}
    for levels in (1200, 2100):  # past Python's recursion limit; past PATH_MAX (4096 bytes)
        folder = root / f"deep{levels}"
        shutil.copytree(good, folder)
        _nest(folder, levels)
        deep[levels] = folder
    releases = {key: _release_root(root / f"release-{key}", dino) for key, dino in
                (("plain", None), ("dino48", (48, 8)), ("dino36p12", (36, 12)), ("dino64p16", (64, 16)),
                 ("encoder", "encoder"))}
    yield {"root": root, "good": good, "bad": bad, "big": big, "deep": deep, "releases": releases}
    for folder in deep.values():  # pytest's own clean-up (a recursive rmtree) cannot remove them
        _unnest(folder)


TRAINED_LINES: list = []


@pytest.fixture(scope="module")
def trained(inputs):
    """A finished tiny run (10 steps, one seed, on ``good``) and its stored verdict, measured in this process."""
    from maeprobe.findings import reproduce

    out = inputs["root"] / "trained"
    reproduce(["decoder-positional"], scale="tiny", out=out, seeds=1, steps=10, probe_images=4, device="cpu",
              data=inputs["good"], echo=TRAINED_LINES.append)
    return out


RUN = "runs/tiny/mae-s10-seed0"


def _attacked(trained, root, name: str, attack) -> str:
    """A copy of the trained output folder with ``attack(copy)`` applied; returns its path. The stored verdict's
    key names the run folders by path: it is moved to the copy's, so that the copy's verdict would be reused
    but for the attack."""
    copy = root / f"attack-{name}"
    shutil.copytree(trained, copy, symlinks=True)
    verdict = copy / "findings" / "decoder-positional" / "verdict.json"
    verdict.write_text(verdict.read_text().replace(json.dumps(str(trained))[1:-1], json.dumps(str(copy))[1:-1]))
    attack(copy)
    return str(copy)


def _with_checkpoint(edit):
    """An attack that rewrites the run's checkpoint-last.pth through ``edit(state)`` and restores its size-keeping
    modification time (what a same-size, same-mtime replacement looks like)."""
    def attack(copy):
        path = copy / RUN / "checkpoint-last.pth"
        before = path.stat()
        state = torch.load(path, map_location="cpu", weights_only=False)
        edit(state)
        torch.save(state, path)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return attack


def _seed_1(state):
    state["args"].run_seed = 1


def _early(state):
    state["step"] = 5


def _perturbed(state):
    for key, value in state["model"].items():
        if value.is_floating_point():
            state["model"][key] = value + 0.01


def _alias_bomb(copy):
    lines = ["l0: &l0 {a: 1, b: 2}"] + [f"l{i}: &l{i} {{a: *l{i - 1}, b: *l{i - 1}}}" for i in range(1, 60)]
    (copy / RUN / "config.yaml").write_text("\n".join(lines) + "\n")


def _fifo_config(copy):
    (copy / RUN / "config.yaml").unlink()
    os.mkfifo(copy / RUN / "config.yaml")


def _huge_config(copy):
    path = copy / RUN / "config.yaml"
    path.write_text(path.read_text() + "#" * 4_000_000 + "\n")


def _deep_verdict(copy):
    (copy / "findings" / "decoder-positional" / "verdict.json").write_text("[" * 200_000 + "]" * 200_000)


def _forged_verdict(copy):
    path = copy / "findings" / "decoder-positional" / "verdict.json"
    stored = json.loads(path.read_text())
    stored["results"][0]["measured"] = {"not": "a number"}
    stored["results"][0]["detail"] = "forged"
    path.write_text(json.dumps(stored))


def _link(relative: str):
    """An attack replacing ``relative`` (a folder reproduce writes into) by a link to a folder outside --out."""
    def attack(copy):
        outside = copy.parent / f"outside-{copy.name}"
        outside.mkdir()
        shutil.rmtree(copy / relative)
        (copy / relative).symlink_to(outside, target_is_directory=True)
    return attack


STALE = {"seed": _with_checkpoint(_seed_1), "early": _with_checkpoint(_early), "alias": _alias_bomb,
         "fifo": _fifo_config, "huge": _huge_config, "deep-verdict": _deep_verdict, "forged": _forged_verdict,
         "same-size": _with_checkpoint(_perturbed), "link-findings": _link("findings"), "link-run": _link(RUN)}


@pytest.fixture(scope="module")
def results(inputs, trained):
    """Every CLI case of this module, run once in limited children: name -> Result."""
    root, cases = inputs["root"], {}
    long = "a" * 300
    for name, (data, evalset) in inputs["bad"].items():
        cases[f"data:{name}"] = {"argv": ["reproduce", "decoder-positional", *TINY, "--data", data,
                                          "--out", root / f"o-data-{name}"]}
        cases[f"eval:{name}"] = {"argv": ["reproduce", "decoder-positional", *TINY, "--eval-data", evalset,
                                          "--out", root / f"o-eval-{name}"]}
    plain = inputs["releases"]["plain"]
    cases["big"] = {"argv": ["reproduce", "mae-local-attention", "--scale", "released", "--device", "cpu",
                             "--data", inputs["big"], "--probe-images", "4", "--out", root / "o-big"],
                    "env": inputs["releases"]["dino48"]}
    cases["probe-limit-tiny"] = {"argv": ["reproduce", "decoder-positional", *TINY[:-4], "--probe-images", "1000000",
                                          "--device", "cpu", "--out", root / "o-limit-tiny"]}
    cases["probe-limit-released"] = {"argv": ["reproduce", "mae-local-attention", "--scale", "released", "--device",
                                              "cpu", "--probe-images", "1000000", "--out", root / "o-limit-rel"],
                                     "env": plain}
    cases["probe-limit-env"] = {"argv": ["reproduce", "decoder-positional", *TINY, "--out", root / "o-limit-env"],
                                "env": {"MAEPROBE_MAX_PROBE_BYTES": "1000"}}
    for key in ("dino36p12",):
        cases[f"released:{key}"] = {"argv": ["reproduce", "mae-local-attention", "--scale", "released", "--device",
                                             "cpu", "--probe-images", "4", "--out", root / f"o-{key}"],
                                    "env": inputs["releases"][key]}
    cases["released:semantic-p16"] = {"argv": ["reproduce", "decoder-semantic", "--scale", "released", "--device",
                                               "cpu", "--probe-images", "4", "--out", root / "o-semantic"],
                                      "env": inputs["releases"]["dino64p16"]}
    cases["released:encoder-only-mae"] = {"argv": ["reproduce", "mae-local-attention", "decoder-positional", "--scale",
                                                   "released", "--device", "cpu", "--probe-images", "4", "--out",
                                                   root / "o-encoder"], "env": inputs["releases"]["encoder"]}
    for option in ("--data", "--out", "--eval-data"):
        for form, path in (("name", long), ("inner", f"x/{long}/y"), ("total", "/".join(["b" * 250] * 20))):
            cases[f"path:{option}:{form}"] = {"argv": ["reproduce", "decoder-positional", *TINY, option, path,
                                                       *(["--out", root / "o-path"] if option != "--out" else [])],
                                              "cwd": root}
    for levels, folder in inputs["deep"].items():
        for option in ("--data", "--eval-data"):
            cases[f"deep:{option}:{levels}"] = {"argv": ["reproduce", "decoder-positional", *TINY, option, folder,
                                                         "--out", root / f"o-deep-{option[2:]}-{levels}"]}
    for name, attack in STALE.items():
        cases[f"stale:{name}"] = {"argv": ["reproduce", "decoder-positional", *TINY, "--data", inputs["good"],
                                           "--out", _attacked(trained, root, name, attack)], "timeout": 40}
    names = list(cases)
    return dict(zip(names, run_cases([cases[n] for n in names], root, timeout=40)))


# --------------------------------------------------------------------------- 1. memory of the probe set
@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
def test_probe_set_from_large_images_holds_one_decoded_image_at_a_time(results):
    """24 tiny PNGs that decode to 48 MB each: the probe set of 4 crops reads 4 of them, one at a time (the old
    code decoded all of them at once, 1.1 GB)."""
    assert_clean_exit(results["big"], budget_mb=450)


@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
@pytest.mark.parametrize("case", ["probe-limit-tiny", "probe-limit-released", "probe-limit-env"])
def test_probe_set_beyond_the_limit_is_refused_before_anything_is_built(results, inputs, case):
    line = assert_refused(results[case], "MAEPROBE_MAX_PROBE_BYTES", "--probe-images", budget_mb=400)
    assert "x 3 x" in line  # the cost is stated: images x 3 x size^2 x 4 bytes
    assert not (inputs["root"] / "o-limit-tiny" / "runs" / "tiny").exists()  # nothing trained


def test_probe_images_equal_the_same_crops_decoded_all_at_once(tmp_path):
    """The streaming probe set is the crops the old all-in-memory code cut: written out here independently."""
    from maeprobe.findings.toydata import probe_images
    from maeprobe.models import IMAGENET_MEAN, IMAGENET_STD

    for i, (w, h) in enumerate([(50, 40), (41, 77), (64, 64)]):
        _png(tmp_path / f"{i}.png", size=(w, h), seed=i)
    sources = [Image.open(tmp_path / f"{i}.png").convert("RGB") for i in range(3)]
    rng = np.random.default_rng(0)
    expected = []
    for i in range(7):  # more crops than sources: sources are used again in order
        img = sources[i % 3]
        w, h = img.size
        for _ in range(20):
            area = rng.uniform(0.3, 1.0) * w * h
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw = ch = min(w, h)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = np.asarray(img.crop((left, top, left + cw, top + ch)).resize((16, 16), Image.BICUBIC), np.float32)
        expected.append((crop / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32))
    got = probe_images(7, 16, seed=0, folder=tmp_path)
    torch.testing.assert_close(got, torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- 2. unreadable images, before training
@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
@pytest.mark.parametrize("name", list(CORRUPT))
@pytest.mark.parametrize("option", ["data", "eval"])
def test_an_unusable_image_is_refused_naming_it_before_any_training(results, inputs, option, name):
    line = assert_refused(results[f"{option}:{name}"], name, "--data" if option == "data" else "--eval-data")
    if name == "bomb.png":
        assert "MAEPROBE_MAX_IMAGE_PIXELS" in line
    out = inputs["root"] / f"o-{option}-{name}"
    assert not (out / "runs" / "tiny").exists(), "trained before the images were checked"


def test_a_checked_folder_is_recorded_and_not_decoded_again(trained, inputs):
    from maeprobe.findings import reproduce
    from maeprobe.findings.runner import CHECKED

    assert sum(line.startswith("checking 4 images of --data") for line in TRAINED_LINES) == 1
    assert json.loads((trained / "runs" / CHECKED).read_text())[0][:2] == ["--data", str(inputs["good"].resolve())]
    lines = []
    reproduce(["decoder-positional"], scale="tiny", out=trained, seeds=1, steps=10, probe_images=4, device="cpu",
              data=inputs["good"], echo=lines.append)
    assert not any(line.startswith("checking") for line in lines) and lines[-1].startswith("findings:")
    assert any(line.startswith("[run 1/1] mae seed 0: reused") for line in lines)


# --------------------------------------------------------------------------- 3. released files at other sizes
@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
def test_released_dino_at_another_input_size_is_resampled_to_mae(results, inputs):
    assert_clean_exit(results["big"], budget_mb=450)  # DINO at 48 px, MAE at 32 px
    report = (inputs["root"] / "o-big" / "findings.md").read_text()
    assert "resampled from 48 px to MAE's 32 px" in report


@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
def test_released_sizes_that_cannot_be_compared_are_one_line(results, inputs):
    assert_refused(results["released:dino36p12"], "dino_vitbase16_pretrain.pth", "32 px")
    assert_refused(results["released:semantic-p16"], "patch 16", "patch 8")
    # an MAE file without its decoder: refused before any finding is measured (not after the first)
    assert_refused(results["released:encoder-only-mae"], "mae_pretrain_vit_base_full.pth", "no transformer decoder")
    assert not (inputs["root"] / "o-encoder" / "findings").exists()


# --------------------------------------------------------------------------- 4. releases by content, not by name
@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
def test_files_named_like_releases_are_not_described_as_them(results, inputs):
    report = (inputs["root"] / "o-big" / "findings.md").read_text()
    for name in ("mae_pretrain_vit_base_full.pth", "dino_vitbase16_pretrain.pth", "timm/deit_base_patch16_224.fb_in1k"):
        assert f"file named like {name} but its contents do not match" in report
        assert f": {name}" not in report.replace(f"named like {name}", "")


def _meta_vit(**kwargs):
    from maeprobe.models import build_mae

    with torch.device("meta"):
        return build_mae(**{"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12,
                            "decoder_depth": 0, **kwargs})


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _mae_b16_parameters() -> int:
    """facebookresearch/mae models_mae.py, mae_vit_base_patch16_dec512d8b, tensor by tensor."""
    D, Dd, p, n = 768, 512, 16, 14 * 14 + 1

    def block(d):
        return 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + 4 * d * d + 4 * d + 4 * d * d + d

    encoder = D * 3 * p * p + D + D + n * D + 12 * block(D) + 2 * D
    decoder = D * Dd + Dd + Dd + n * Dd + 8 * block(Dd) + 2 * Dd + Dd * p * p * 3 + p * p * 3
    return encoder + decoder


@pytest.mark.parametrize("name, timm_name, kwargs", [
    ("dino_vitbase16_pretrain.pth", "vit_base_patch16_224", {}),
    ("timm/vit_base_patch16_224.dino", "vit_base_patch16_224", {}),
    ("dino_deitsmall16_pretrain.pth", "vit_small_patch16_224", {"embed_dim": 384, "num_heads": 6}),
    ("timm/deit_base_patch16_224.fb_in1k", "deit_base_patch16_224", {"num_classes": 1000}),
    ("dinov2_vitb14_pretrain.pth", "vit_base_patch14_dinov2", {"patch_size": 14, "img_size": 518,
                                                               "init_values": 1.0}),
])
def test_a_release_is_recognised_by_its_architecture_and_parameter_count(name, timm_name, kwargs):
    from maeprobe.checkpoints.originals import release_mismatch

    model = _meta_vit(**kwargs)
    with torch.device("meta"):
        reference = timm.create_model(timm_name, pretrained=False, num_classes=kwargs.get("num_classes", 0))
    assert _count(model) == _count(reference)  # the stand-in has the release's tensors
    assert release_mismatch(name, model) is None
    deeper = _meta_vit(**{**kwargs, "depth": 11})
    assert "11 blocks" in release_mismatch(name, deeper)
    if not kwargs.get("num_classes"):
        assert "parameters" in release_mismatch(name, _meta_vit(**{**kwargs, "num_classes": 10}))


def test_mae_release_and_deit_hash_prefix():
    from maeprobe.checkpoints.originals import release_mismatch

    mae = _meta_vit(decoder_depth=8, decoder_embed_dim=512, decoder_num_heads=16)
    assert _count(mae) == _mae_b16_parameters()
    assert release_mismatch("mae_pretrain_vit_base_full.pth", mae) is None
    assert release_mismatch("mae_visualize_vit_base.pth", mae) is None
    assert "decoder of 4 blocks" in release_mismatch("mae_pretrain_vit_base_full.pth",
                                                     _meta_vit(decoder_depth=4, decoder_embed_dim=512,
                                                               decoder_num_heads=16))
    deit = _meta_vit(num_classes=1000)
    name = "deit_base_patch16_224-b5f2ef4d.pth"  # torch.hub: the name carries the first 8 hex digits of the SHA-256
    assert release_mismatch(name, deit, "b5f2ef4d" + "0" * 56) is None
    assert "SHA-256 starts with 12345678" in release_mismatch(name, deit, "12345678" + "0" * 56)
    assert "knows no contents" in release_mismatch("my_model.pth", deit)


# --------------------------------------------------------------------------- 5. stale stored runs and results
@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
@pytest.mark.parametrize("name, text", [("seed", "run_seed"), ("early", "stopped at step 5 of 10")])
def test_a_checkpoint_of_another_run_is_refused(results, name, text):
    assert_refused(results[f"stale:{name}"], "checkpoint-last.pth", text)


@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
@pytest.mark.parametrize("name, text", [("alias", "aliases"), ("fifo", "not a regular file"),
                                        ("huge", "MAEPROBE_MAX_METADATA")])
def test_a_hostile_config_yaml_is_one_line(results, name, text):
    assert_refused(results[f"stale:{name}"], "config.yaml", text, budget_mb=400)


@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
@pytest.mark.parametrize("name", ["deep-verdict", "forged", "same-size"])
def test_an_unusable_or_changed_stored_result_is_measured_again(results, trained, inputs, name):
    """Measured again and stored anew: a valid verdict.json for this finding (the forged row is gone); after a
    same-size, same-time replacement of the checkpoint, the value of the new weights (not the stored one)."""
    result = results[f"stale:{name}"]
    assert_clean_exit(result)
    finding = next(line for line in result.stdout.splitlines() if line.startswith("[finding 1/1]"))
    assert not finding.endswith("(reused)"), result.describe()
    stored = json.loads((inputs["root"] / f"attack-{name}" / "findings" / "decoder-positional" / "verdict.json")
                        .read_text())
    assert [r["finding"] for r in stored["results"]] == ["decoder-positional", "decoder-positional-v2"]
    assert all(isinstance(r["measured"], float) and r["detail"] != "forged" for r in stored["results"])
    if name == "same-size":
        before = json.loads((trained / "findings" / "decoder-positional" / "verdict.json").read_text())
        assert stored["results"][0]["measured"] != before["results"][0]["measured"]


@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
@pytest.mark.parametrize("name", ["link-findings", "link-run"])
def test_a_link_leading_outside_out_is_refused_and_nothing_is_written_there(results, inputs, name):
    assert_refused(results[f"stale:{name}"], "symbolic link", "outside --out")
    assert list((inputs["root"] / f"outside-attack-{name}").iterdir()) == []


def test_a_labelled_folder_changed_between_calls_is_probed_again(trained, tmp_path):
    """In one process, a probe of the same encoder on the same folder name is not taken from the cache once the
    folder's images changed: two classes of identical pixels give exactly 50% (every validation image gets the
    same prediction; two of four are right)."""
    from maeprobe.findings.runner import _cached_probe
    from maeprobe.findings.toydata import EvalSet

    for label, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        (tmp_path / label).mkdir()
        for i in range(5):
            _png(tmp_path / label / f"{i}.png", colour=colour, seed=i)
    first = _cached_probe(trained / RUN, "trained", EvalSet(tmp_path, 64), "cpu")  # red vs blue: all right
    _png(tmp_path / "same.png", colour=(120, 120, 120))
    for i in range(5):
        shutil.copyfile(tmp_path / "same.png", tmp_path / "a" / f"{i}.png")
        shutil.copyfile(tmp_path / "same.png", tmp_path / "b" / f"{i}.png")
    second = _cached_probe(trained / RUN, "trained", EvalSet(tmp_path, 64), "cpu")
    assert first["top1"] == 100.0 and second["top1"] == 50.0


def test_a_long_log_is_read_from_its_end(tmp_path):
    from maeprobe.findings.runner import final_loss_parts

    lines = ["step,epoch,lr,loss,parts,images_per_s"] + [f"{i},0,1e-4,1.0,loss_mae={i}.5;loss_cross=0.25,1.0"
                                                          for i in range(1, 20001)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    assert final_loss_parts(tmp_path) == {"loss_mae": 20000.5, "loss_cross": 0.25}
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "log.csv")  # reading it would wait forever for a writer
    code = f"from pathlib import Path; from maeprobe.findings.runner import final_loss_parts; " \
           f"print(final_loss_parts(Path({str(fifo)!r})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "{}", done.stderr[-2000:]


# --------------------------------------------------------------------------- 6. path names and nesting
@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
@pytest.mark.parametrize("option", ["--data", "--out", "--eval-data"])
@pytest.mark.parametrize("form", ["name", "inner", "total"])
def test_a_path_the_system_cannot_take_is_one_line(results, option, form):
    assert_refused(results[f"path:{option}:{form}"], option, "bytes")


@pytest.mark.slow  # shares the module's 40 s `results` fixture (reproduce on attacked folders)
@pytest.mark.parametrize("option", ["--data", "--eval-data"])
@pytest.mark.parametrize("levels", [1200, 2100])
def test_folders_nested_thousands_deep_are_one_line(results, option, levels):
    """Past PATH_MAX (2100 levels) a refusal naming the folder; at 1200 levels (where a recursive listing may
    exceed Python's recursion limit, depending on how deep the call stack already is) a run or a refusal."""
    result = results[f"deep:{option}:{levels}"]
    if levels == 1200 and result.code == 0:
        assert_clean_exit(result)
        return
    assert_refused(result, f"deep{levels}")
