"""Class 2 of issue 15: small files cannot make maeprobe allocate, decode or build without bound. Each case runs
in a child whose address space is limited to what the runner already mapped plus 1.5 GB
(``tests/helpers/hostile.py``); its peak resident memory above the runner's must stay under 1 GB, and the refusal
names the limit and the environment variable that raises it."""
from __future__ import annotations

import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from helpers import tiny_state
from helpers.hostile import assert_clean_exit, assert_refused, changed_outside, run_cases, snapshot
from PIL import Image
from safetensors.torch import save_file


def _png_with_header_size(path, width: int, height: int) -> None:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (a decompression bomb as far as the header goes)."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


def _zip_bomb_entry(path, name: str, size: int, header: bytes = b"") -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(info, "w", force_zip64=True) as f:
            f.write(header)
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)


def _deep_json(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    root = tmp_path_factory.mktemp("resources")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    meta = {"maeprobe": json.dumps({"num_heads": 2})}
    ckpt = inputs / "tiny.safetensors"
    save_file(tiny_state(), str(ckpt), metadata=meta)
    # images: tall and wide strips (their resize to the model's size would be gigabytes), header bombs
    Image.new("L", (1, 100_000)).save(inputs / "tall.png")  # 274 bytes
    Image.new("L", (1_000_000, 1)).save(inputs / "wide.png")
    _png_with_header_size(inputs / "bomb.png", 30_000, 30_000)
    _png_with_header_size(inputs / "bomb_huge.png", 2**31 - 1, 2**31 - 1)
    Image.new("RGB", (16, 400)).save(inputs / "strip25.png")  # 25:1, beyond the default of 20:1
    folder = inputs / "mixed"
    folder.mkdir()
    for name in ("tall.png", "bomb.png"):
        (folder / name).write_bytes((inputs / name).read_bytes())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / "ok.png")
    # checkpoints: a zip entry that inflates 256 MB (torch.save stores entries uncompressed), an npz likewise
    torch.save({"model": tiny_state()}, inputs / "zipbomb.pth")
    _zip_bomb_entry(inputs / "zipbomb.pth", "zipbomb/data/99", 256 << 20)
    header = (b"\x93NUMPY\x01\x00"
              + b"{'descr': '<f4', 'fortran_order': False, 'shape': (67108864,), }".ljust(118) + b"\n")
    with zipfile.ZipFile(inputs / "bomb.npz", "w") as archive:
        archive.writestr("embedding/kernel.npy", header)
    _zip_bomb_entry(inputs / "bomb.npz", "Transformer/posembed_input/pos_embedding.npy", 256 << 20, header)
    # a key naming block 999,999,999; one whose index would need a billion-digit number
    deep = tiny_state()
    deep["blocks.999999999.norm1.weight"] = torch.ones(16)
    save_file(deep, str(inputs / "deep.safetensors"), metadata=meta)
    long_index = tiny_state()
    long_index["blocks." + "9" * 40 + ".norm1.weight"] = torch.ones(16)
    save_file(long_index, str(inputs / "long_index.safetensors"), metadata=meta)
    # metadata and config files nested 2000 deep or larger than any configuration
    save_file(tiny_state(), str(inputs / "nested.safetensors"), metadata={"maeprobe": _deep_json(2000)})
    save_file(tiny_state(), str(inputs / "bigmeta.safetensors"),
              metadata={"maeprobe": json.dumps({"num_heads": 2, "pad": "x" * 2_000_000})})
    hf_deep = inputs / "hf_deep"
    hf_deep.mkdir()
    (hf_deep / "config.json").write_text(_deep_json(2000))
    hf_big = inputs / "hf_big"
    hf_big.mkdir()
    (hf_big / "config.json").write_text(json.dumps({"model_type": "vit", "pad": "x" * 3_000_000}))
    # a safetensors header that claims 90 MB
    (inputs / "header.safetensors").write_bytes(struct.pack("<Q", 90_000_000) + b'{"__metadata__": {}}')
    # a 1.3 MB encoder whose position embedding asks for a 200 x 200 grid
    save_file(tiny_state(grid=200, width=8), str(inputs / "biggrid.safetensors"),
              metadata={"maeprobe": json.dumps({"num_heads": 2})})

    cases = [
        {"argv": ["render-attn", ckpt, "--image", inputs / "tall.png", "--encoder", "--out", out / "r1"]},
        {"argv": ["render-attn", ckpt, "--image", inputs / "wide.png", "--encoder", "--out", out / "r2"]},
        {"argv": ["render-attn", ckpt, "--image", inputs / "bomb.png", "--encoder", "--out", out / "r3"]},
        {"argv": ["render-attn", ckpt, "--image", inputs / "bomb_huge.png", "--encoder", "--out", out / "r4"]},
        {"argv": ["render-attn", ckpt, "--image", inputs / "strip25.png", "--encoder", "--out", out / "r5"]},
        {"argv": ["render-attn", ckpt, "--image", inputs / "strip25.png", "--encoder", "--out", out / "r6"],
         "env": {"MAEPROBE_MAX_ASPECT": "30"}},
        {"argv": ["attn-distance", ckpt, "--images", folder, "--bootstrap", "0", "--out", out / "mixed.csv"]},
        {"argv": ["info", inputs / "zipbomb.pth"]},
        {"argv": ["info", inputs / "bomb.npz"]},
        {"argv": ["info", inputs / "deep.safetensors"]},
        {"argv": ["info", inputs / "long_index.safetensors"]},
        {"argv": ["info", inputs / "nested.safetensors"]},
        {"argv": ["info", inputs / "bigmeta.safetensors"]},
        {"argv": ["info", hf_deep]},
        {"argv": ["info", hf_big]},
        {"argv": ["info", inputs / "header.safetensors"]},
        {"argv": ["info", inputs / "biggrid.safetensors"]},
        {"argv": ["attn-distance", ckpt, "--img-size", "8192", "--bootstrap", "0"]},
        {"argv": ["attn-distance", ckpt, "--layers", "0-99999999999", "--bootstrap", "0"]},
        {"argv": ["info", inputs / "biggrid.safetensors"], "env": {"MAEPROBE_MAX_PATCHES": "50000"}},
        {"argv": ["info", ckpt], "env": {"MAEPROBE_MAX_DEPTH": "lots"}},
    ]
    before = snapshot(root)
    results = run_cases(cases, root)
    return {"root": root, "results": results, "changed": changed_outside(before, snapshot(root), ["out"])}


@pytest.mark.slow
def test_nothing_written_outside_the_named_output(attack):
    assert attack["changed"] == [], attack["changed"]


@pytest.mark.parametrize("index, limit", [(0, "MAEPROBE_MAX_ASPECT"), (1, "MAEPROBE_MAX_ASPECT"),
                                          (2, "MAEPROBE_MAX_IMAGE_PIXELS"), (3, "MAEPROBE_MAX_IMAGE_PIXELS"),
                                          (4, "MAEPROBE_MAX_ASPECT")])
@pytest.mark.slow
def test_image_beyond_a_limit_is_refused_before_decoding(attack, index, limit):
    assert_refused(attack["results"][index], limit, "exceeds" if "PIXELS" in limit else "aspect ratio",
                   budget_mb=300)


@pytest.mark.slow
def test_raising_a_limit_lets_the_image_through(attack):
    assert_clean_exit(attack["results"][5])
    assert (attack["root"] / "out" / "r6.png").is_file()


@pytest.mark.slow
def test_a_folder_skips_images_beyond_the_limits_with_a_warning(attack):
    result = attack["results"][6]
    assert_clean_exit(result, budget_mb=500)
    assert result.stderr.count("warning: skipping") == 2 and "MAEPROBE_MAX_ASPECT" in result.stderr
    import pandas as pd

    assert set(pd.read_csv(attack["root"] / "out" / "mixed.csv")["n_images"]) == {1}


@pytest.mark.parametrize("index", [7, 8])
@pytest.mark.slow
def test_zip_entries_that_inflate_are_refused_before_reading(attack, index):
    assert_refused(attack["results"][index], "MAEPROBE_MAX_INFLATE", budget_mb=200)


@pytest.mark.slow
def test_a_block_index_beyond_the_depth_limit_builds_nothing(attack):
    assert_refused(attack["results"][9], "MAEPROBE_MAX_DEPTH", budget_mb=200)


@pytest.mark.slow
def test_an_absurd_block_index_is_an_unknown_key(attack):
    assert_refused(attack["results"][10], "unexpected", budget_mb=200)


@pytest.mark.parametrize("index, text", [(11, "nested too deeply"), (12, "MAEPROBE_MAX_METADATA"),
                                         (13, "nested too deeply"), (14, "MAEPROBE_MAX_METADATA"),
                                         (15, "MAEPROBE_MAX_METADATA")])
@pytest.mark.slow
def test_metadata_is_bounded(attack, index, text):
    assert_refused(attack["results"][index], text, budget_mb=200)


@pytest.mark.parametrize("index, text", [(16, "MAEPROBE_MAX_PATCHES"), (17, "MAEPROBE_MAX_PATCHES"),
                                         (18, "longer than any model")])
@pytest.mark.slow
def test_sizes_are_bounded_before_building(attack, index, text):
    assert_refused(attack["results"][index], text, budget_mb=200)


@pytest.mark.slow
def test_raising_the_patch_limit_builds_the_model(attack):
    assert_clean_exit(attack["results"][19])
    assert "200x200 patches" in attack["results"][19].stdout


@pytest.mark.slow
def test_a_bad_limit_value_is_one_line(attack):
    assert_refused(attack["results"][20], "MAEPROBE_MAX_DEPTH", "positive whole number")


@pytest.fixture(scope="module")
def attack2(tmp_path_factory):
    """Inputs found by an independent attack on the first version of these bounds."""
    root = tmp_path_factory.mktemp("resources2")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    # metadata whose list shares itself 60 levels deep: its repr alone would have 2^60 items
    shared = [0.1, 0.2]
    for _ in range(60):
        shared = [shared, shared]
    torch.save({"model": tiny_state(), "maeprobe": {"num_heads": 2, "mean": shared}}, inputs / "dag.pth")
    # broadcast (zero-stride) tensors: a ~100 KB file that claims a 4096-wide, 16-deep model
    one = torch.zeros(1)
    big = {k: one.expand(v.shape[:1] * 0 + tuple(s * 256 if s == 16 else (s * 256 if s in (48, 64) else s)
                                                  for s in v.shape)) for k, v in tiny_state(depth=16).items()}
    torch.save(big, inputs / "expanded.pth")
    # a model within every size limit whose attention maps are 69 GB per image (patch 1, 128 x 128, 64 heads)
    wide = tiny_state(grid=128, width=64)
    wide["patch_embed.proj.weight"] = torch.randn(64, 3, 1, 1) * 0.02
    save_file(wide, str(inputs / "attention.safetensors"), metadata={"maeprobe": json.dumps({"num_heads": 64})})
    Image.new("RGB", (128, 128)).save(inputs / "one.png")
    # an ICO whose directory says 16 x 16 around a 20000 x 20000 PNG
    import io

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    ihdr = png.index(b"IHDR")
    png[ihdr + 4:ihdr + 12] = struct.pack(">II", 20000, 20000)
    png[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr:ihdr + 17])))
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + bytes(png)
    (inputs / "bomb.ico").write_bytes(ico)
    (inputs / "page.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    # a YAML "billion laughs": nine aliases of nine aliases ... of nine items
    parts = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (inputs / "laughs.yaml").write_text("name: [" + ", ".join(parts) + "]\n")
    # an 8 KB zstd Parquet table holding a 200 MB label
    import pandas as pd

    frame = pd.DataFrame({"metric": ["attention_distance"], "module": ["encoder"], "layer": [0], "head": [0],
                          "value": [1.0], "checkpoint": ["x" * 200_000_000]})
    frame.to_parquet(inputs / "bomb.parquet", compression="zstd")
    del frame
    cases = [
        {"argv": ["info", inputs / "dag.pth"], "timeout": 30},
        {"argv": ["info", inputs / "expanded.pth"], "timeout": 30},
        {"argv": ["attn-distance", inputs / "attention.safetensors", "--images", inputs, "--batch-size", "1"],
         "timeout": 60},
        {"argv": ["render-attn", inputs / "attention.safetensors", "--image", inputs / "one.png", "--encoder",
                  "--out", out / "r"], "timeout": 60},
        {"argv": ["render-attn", inputs / "expanded.pth", "--image", inputs / "bomb.ico", "--encoder",
                  "--out", out / "r"], "timeout": 30},
        {"argv": ["render-attn", inputs / "attention.safetensors", "--image", inputs / "bomb.ico", "--encoder",
                  "--out", out / "r"], "timeout": 30},
        {"argv": ["render-attn", inputs / "attention.safetensors", "--image", inputs / "page.eps", "--encoder",
                  "--out", out / "r"], "timeout": 30},
        {"argv": ["recipe", "show", inputs / "laughs.yaml"], "timeout": 30},
        {"argv": ["figures", inputs / "bomb.parquet", "--out", out / "figs"], "timeout": 60},
    ]
    before = snapshot(root)
    results = run_cases(cases, root)
    return {"results": results, "changed": changed_outside(before, snapshot(root), ["out"])}


@pytest.mark.slow
def test_found_later_nothing_written(attack2):
    assert attack2["changed"] == []


@pytest.mark.parametrize("index, text", [(0, "'mean'"), (1, "MAEPROBE_MAX_INFLATE"), (2, "MAEPROBE_MAX_ATTENTION"),
                                         (3, "MAEPROBE_MAX_ATTENTION"), (4, "not a readable image"),
                                         (5, "not a readable image"), (6, "not a readable image"),
                                         (7, "recipe key name"), (8, "MAEPROBE_MAX_INFLATE")])
@pytest.mark.slow
def test_found_later_is_refused_in_bounded_memory(attack2, index, text):
    assert_refused(attack2["results"][index], text, budget_mb=400)
