"""Class 5 of issue 15: malformed checkpoints, folders, configuration files, recipes, numbers and names end in
one line ``error: <what>: <what was expected>`` with exit status 2: never a traceback, never a hang, never a
terminal escape sequence printed raw; under torchrun only one process prints it."""
from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import QUICK, RECIPES, tiny_state
from helpers.hostile import assert_clean_exit, assert_refused, changed_outside, run_cases, snapshot
from safetensors.torch import save_file

META = {"maeprobe": json.dumps({"num_heads": 2})}


def _safetensors(path, state, meta=META):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    return path


def _broken_states() -> dict:
    """name -> a state dict with one thing wrong."""
    def without(*keys):
        return {k: v for k, v in tiny_state(depth=3).items() if not any(k.startswith(p) for p in keys)}

    def changed(**values):
        state = tiny_state()
        state.update({k.replace("__", "."): v for k, v in values.items()})
        return state

    return {
        "missing_block": without("blocks.1."),
        "missing_part": without("blocks.0.mlp.fc2."),
        "no_blocks": without("blocks."),
        "pos_1d": changed(pos_embed=torch.zeros(80)),
        "pos_2d": changed(pos_embed=torch.zeros(5, 16)),
        "pos_not_square": changed(pos_embed=torch.zeros(1, 7, 16)),
        "pos_wrong_width": changed(pos_embed=torch.zeros(1, 5, 9)),
        "patch_0": changed(patch_embed__proj__weight=torch.zeros(16, 3, 0, 0)),
        "patch_rect": changed(patch_embed__proj__weight=torch.zeros(16, 3, 8, 4)),
        "patch_3d": changed(patch_embed__proj__weight=torch.zeros(16, 3, 8)),
        "channels_7": changed(patch_embed__proj__weight=torch.zeros(16, 7, 8, 8)),
        "qkv_wrong": changed(blocks__0__attn__qkv__weight=torch.zeros(47, 16)),
        "fc1_1d": changed(blocks__0__mlp__fc1__weight=torch.zeros(64)),
        "cls_wrong": changed(cls_token=torch.zeros(2, 16)),
        "int_weights": changed(blocks__0__attn__qkv__weight=torch.zeros(48, 16, dtype=torch.int64)),
        "decoder_half": {**tiny_state(), "decoder_embed.weight": torch.zeros(8, 16)},
        "decoder_pred": {**tiny_state(), "decoder_embed.weight": torch.zeros(8, 16),
                         "decoder_pred.weight": torch.zeros(190, 8),
                         "decoder_blocks.0.attn.qkv.weight": torch.zeros(24, 8)},
    }


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    ok = _safetensors(inputs / "ok.safetensors", tiny_state())
    broken = {name: _safetensors(inputs / f"{name}.safetensors", state) for name, state in _broken_states().items()}
    odd_heads = {h: _safetensors(inputs / f"heads{h}.safetensors", tiny_state(), {"maeprobe": json.dumps(
        {"num_heads": h})}) for h in (3, 7)}
    pickles = {
        "int_keys": {0: torch.zeros(1), 1: torch.zeros(2)},
        "a_list": [torch.zeros(1)],
        "a_tensor": torch.zeros(3),
        "a_string": "not a checkpoint",
        "model_is_list": {"model": [1, 2, 3]},
        "empty": {},
        "meta_not_dict": {"model": tiny_state(), "maeprobe": {"num_heads": [2]}},
        "mixed_keys": {**tiny_state(), 5: torch.zeros(1)},
    }
    pickle_files = {}
    for name, obj in pickles.items():
        pickle_files[name] = inputs / f"{name}.pth"
        torch.save(obj, pickle_files[name])
    raw = {"zero_bytes": b"", "text": b"hello, I am a checkpoint\n", "truncated_pth": (pickle_files["empty"]
           .read_bytes()[:40]), "truncated_safetensors": ok.read_bytes()[:200],
           "garbage_zip": b"PK\x03\x04" + os.urandom(300), "garbage_pickle": b"\x80\x04" + os.urandom(200)}
    raw_files = {}
    for name, data in raw.items():
        raw_files[name] = inputs / f"{name}.bin"
        raw_files[name].write_bytes(data)
    # HuggingFace folders with a bad config.json or preprocessor_config.json
    weights = _safetensors(inputs / "hf_weights.safetensors", tiny_state())
    configs = {
        "bad_json": "{model_type: vit",
        "list": json.dumps([1, 2]),
        "heads_list": json.dumps({"model_type": "vit", "num_attention_heads": [2], "hidden_act": "gelu"}),
        "eps_text": json.dumps({"model_type": "vit", "num_attention_heads": 2, "layer_norm_eps": "small"}),
        "type_list": json.dumps({"model_type": ["vit"]}),
        "act_dict": json.dumps({"model_type": "vit", "hidden_act": {"name": "gelu"}}),
        "vision_list": json.dumps({"model_type": "clip", "vision_config": [1]}),
        "not_utf8": b'{"model_type": "vit", "x": "\xff\xfe"}',
        "unknown_type": json.dumps({"model_type": "resnet"}),
    }
    hf_folders = {}
    for name, text in configs.items():
        folder = inputs / f"hf_{name}"
        folder.mkdir()
        (folder / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        (folder / "model.safetensors").write_bytes(weights.read_bytes())
        hf_folders[name] = folder
    pre = inputs / "hf_pre"
    pre.mkdir()
    (pre / "config.json").write_text(json.dumps({"model_type": "vit", "num_attention_heads": 2}))
    (pre / "preprocessor_config.json").write_text(json.dumps({"image_mean": "grey", "image_std": [0.5]}))
    (pre / "model.safetensors").write_bytes(weights.read_bytes())
    hf_folders["preprocessor"] = pre
    hf_empty = inputs / "hf_empty"
    hf_empty.mkdir()
    (hf_empty / "config.json").write_text(json.dumps({"model_type": "vit"}))
    hf_folders["no_weights"] = hf_empty
    # hub cache entries: a timm snapshot with a bad config.json, a damaged ref
    hub = root / "home" / "hf" / "hub"
    for repo, config in (("timm--badcfg", "[1, 2"), ("timm--listargs", json.dumps(
            {"architecture": "vit_small_patch16_224", "model_args": [1], "pretrained_cfg": {}}))):
        snap = hub / f"models--{repo}" / "snapshots" / "abc"
        snap.mkdir(parents=True)
        (hub / f"models--{repo}" / "refs").mkdir()
        (hub / f"models--{repo}" / "refs" / "main").write_text("abc")
        (snap / "model.safetensors").write_bytes(weights.read_bytes())
        (snap / "config.json").write_text(config)
    (hub / "models--timm--badref" / "refs").mkdir(parents=True)
    (hub / "models--timm--badref" / "refs" / "main").write_text("../../../../../etc")
    # a FIFO named like a checkpoint, an image and a recipe
    fifo = inputs / "fifo.pth"
    os.mkfifo(fifo)
    fifo_image = inputs / "fifo.png"
    os.mkfifo(fifo_image)
    fifo_recipe = inputs / "fifo.yaml"
    os.mkfifo(fifo_recipe)
    # names with terminal escape sequences and bidi overrides
    escape = inputs / "\x1b[31mred\x1b[0m\x07.pth"
    escape.write_bytes(b"junk")
    bidi = inputs / "evil\u202egnp.pth"
    bidi.write_bytes(b"junk")
    # recipes
    recipes = {"base_int": "base: 5\n", "base_list": "base: [a, b]\n", "list": "- a\n- b\n",
               "scalar": "just text\n", "not_utf8": b"name: \xff\xfe\n", "bad_yaml": "name: [unclosed\n",
               "section_scalar": f"base: {RECIPES / '_tiny.yaml'}\noptim: 5\n",
               "unknown": f"base: {RECIPES / '_tiny.yaml'}\noptim:\n  epochz: 3\n",
               "missing_base": "base: nowhere.yaml\n", "self_base": "base: self_base.yaml\n",
               "yaml11_number": f"base: {RECIPES / '_tiny.yaml'}\noptim:\n  base_lr: 1e-4\n"}
    recipe_files = {}
    for name, text in recipes.items():
        recipe_files[name] = inputs / f"{name}.yaml"
        recipe_files[name].write_bytes(text if isinstance(text, bytes) else text.encode())
    tiny = RECIPES / "tiny-mae.yaml"
    bad_overrides = ["optim.epochs=abc", "optim.epochs=2.5", "model.mask_ratio=1.5", "run.checkpoint_every=0",
                     "optim.global_batch=0", "optim.betas=[0.9]", "data.crop_scale=[0.9, 0.1]", "method=magic",
                     "model.preset=vit_gigantic", "run.seed=-1", "nonsense", "optim.nope=1", "run.device=foo",
                     "optim=3", "run.log_every=abc", "umae.tau=0", "optim.base_lr=nan"]
    run_dir = out / "run"

    cases = [{"argv": ["info", path]} for path in broken.values()]
    cases += [{"argv": ["info", path]} for path in odd_heads.values()]
    cases += [{"argv": ["info", path]} for path in pickle_files.values()]
    cases += [{"argv": ["info", path]} for path in raw_files.values()]
    cases += [{"argv": ["info", path]} for path in hf_folders.values()]
    named = ["hf-hub:timm/badcfg", "hf-hub:timm/listargs", "hf-hub:timm/badref", "hf-hub:org/name@../../..",
             "hf-hub:../../etc/passwd", "hf-hub:org/name@/etc", "timm/..", "hf-hub:org/na\x1bme"]
    cases += [{"argv": ["info", name]} for name in named]
    cases += [
        {"argv": ["info", fifo], "timeout": 20},
        {"argv": ["render-attn", ok, "--image", fifo_image, "--encoder", "--out", out / "r"], "timeout": 20},
        {"argv": ["recipe", "show", fifo_recipe], "timeout": 20},
        {"argv": ["info", escape]},
        {"argv": ["info", bidi]},
        {"argv": ["info", inputs / "missing\x1b]0;pwned\x07.pth"]},
    ]
    cases += [{"argv": ["recipe", "show", path]} for path in recipe_files.values()]
    cases += [{"argv": ["recipe", "show", tiny, text]} for text in bad_overrides]
    numbers = [["--img-size", "0"], ["--img-size", "-8"], ["--img-size", "100000"], ["--img-size", "12"],
               ["--batch-size", "0"], ["--layers", "5-2"], ["--layers", "a-b"], ["--layers", ","],
               ["--layers", "9"], ["--num-workers", "-1"], ["--device", "foo"], ["--device", "cuda:7"],
               ["--device", "cpu:x"], ["--seed", "-1"], ["--bootstrap", "-1"], ["--mask-ratio", "inf"],
               ["--num-heads", "5"], ["--units", "miles"], ["--dtype", "fp8"], ["--out", out / "t.xlsx"]]
    cases += [{"argv": ["attn-distance", ok, *n]} for n in numbers]
    tables = {"garbage.csv": b"\x00\xff\xfe,,,\n\"unclosed", "columns.csv": b"a,b\n1,2\n",
              "text_values.csv": b"metric,module,layer,value\nattention_distance,encoder,0,many\n",
              "scalar.json": b"5", "garbage.json": b"{[", "garbage.parquet": b"PAR1" + bytes(64)}
    for name, data in tables.items():
        (inputs / name).write_bytes(data)
    cases += [{"argv": ["figures", inputs / name, "--out", out / "figs"]} for name in tables]
    good = inputs / "good.csv"
    good.write_text("metric,module,layer,head,value\nattention_distance,encoder,0,0,3.5\n")
    cases += [{"argv": ["figures", good, "--label-by", "nonexistent", "--out", out / "figs"]}]
    cases += [
        {"argv": ["decoder-semantics", ok, "--ref", ok, "--tau", "abc"]},
        {"argv": ["decoder-semantics", ok, "--ref", ok, "--tau", "nan"]},
        {"argv": ["run", ok, "--mask-ratios", "attn-distance=x"]},
        {"argv": ["render-attn", ok, "--image", inputs / "missing.png", "--out", out / "r2"]},
        {"argv": ["render-attn", ok, "--image", raw_files["text"], "--encoder", "--out", out / "r3"]},
        {"argv": ["render-attn", ok, "--image", raw_files["text"], "--encoder", "--query", "99", "--out",
                  out / "r4"]},
        {"argv": ["figures", raw_files["text"], "--out", out / "figs"]},
        {"argv": ["attn-distance", ok, "--images", raw_files["text"]]},
        # a finished run, then resumes that cannot be made
        {"argv": ["recipe", "run", tiny, *QUICK, f"run.output_dir={run_dir}"], "timeout": 120},
        {"argv": ["recipe", "run", tiny, *QUICK, f"run.output_dir={run_dir}", "model.preset=mae_vit_small_patch8_96"],
         "timeout": 120},
        {"argv": ["recipe", "show", recipe_files["yaml11_number"]]},
        {"argv": ["info", ok], "env": {"RANK": "1", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                                       "MASTER_PORT": "29533"}, "timeout": 30},
    ]
    before = snapshot(root)
    results = run_cases(cases, root)
    counts = {"broken": len(broken), "heads": len(odd_heads), "pickles": len(pickle_files), "raw": len(raw_files),
              "hf": len(hf_folders), "named": len(named), "special": 6, "recipes": len(recipe_files),
              "overrides": len(bad_overrides), "numbers": len(numbers), "tables": len(tables) + 1}
    return {"root": root, "results": results, "counts": counts, "run_dir": run_dir,
            "changed": changed_outside(before, snapshot(root), ["out"])}


def _section(attack, name):
    start = 0
    for key, count in attack["counts"].items():
        if key == name:
            return attack["results"][start:start + count]
        start += count
    return attack["results"][start:]


@pytest.mark.slow
def test_nothing_written_outside_the_output(attack):
    assert attack["changed"] == [], attack["changed"]


@pytest.mark.parametrize("kind", ["broken", "heads", "pickles", "raw", "hf", "named", "recipes", "overrides",
                                  "numbers", "tables"])
@pytest.mark.slow
def test_every_malformed_input_is_one_line(attack, kind):
    for result in _section(attack, kind)[:-1] if kind == "recipes" else _section(attack, kind):
        assert_refused(result)


@pytest.mark.slow
def test_broken_checkpoints_say_what_was_expected(attack):
    lines = [assert_refused(r) for r in _section(attack, "broken")]
    assert "blocks.1 is missing" in lines[0]
    assert "expected [1, tokens, 16]" in lines[3]
    assert "p >= 1" in lines[7]
    assert "3 (RGB)" in lines[10]


@pytest.mark.slow
def test_hub_names_stay_inside_the_cache(attack):
    lines = [assert_refused(r) for r in _section(attack, "named")]
    assert "not valid JSON" in lines[0] and "model_args" in lines[1]
    assert "not a commit hash" in lines[2] and "not a revision" in lines[3]
    assert "not a hub repository id" in lines[4] and "not a revision" in lines[5]


@pytest.mark.slow
def test_fifos_are_refused_without_hanging(attack):
    fifo, fifo_image, fifo_recipe = _section(attack, "special")[:3]
    assert_refused(fifo, "FIFO")
    assert_refused(fifo_image, "not a regular file")
    assert_refused(fifo_recipe)


@pytest.mark.slow
def test_control_characters_in_names_are_escaped(attack):
    escape, bidi, missing = _section(attack, "special")[3:6]
    assert "\\x1b[31mred" in assert_refused(escape)
    assert "\\u202e" in assert_refused(bidi)
    assert "\\x1b]0;pwned\\x07" in assert_refused(missing, "no such file")


@pytest.mark.slow
def test_recipe_files_and_overrides_name_the_problem(attack):
    lines = [assert_refused(r) for r in _section(attack, "recipes")[:-1]]
    assert "must name another recipe file" in lines[0] and "must name another recipe file" in lines[1]
    assert "expected a mapping" in lines[2] and "not UTF-8" in lines[4] and "invalid YAML" in lines[5]
    assert "expected a section" in lines[6] and "unknown recipe key" in lines[7]
    assert "circular" in lines[9]
    overrides = [assert_refused(r) for r in _section(attack, "overrides")]
    assert "optim.epochs" in overrides[0] and "whole number" in overrides[1]
    assert "model.mask_ratio" in overrides[2] and "run.checkpoint_every" in overrides[3]


@pytest.mark.slow
def test_yaml_11_numbers_are_read_as_numbers(attack):
    result = _section(attack, "recipes")[-1]
    assert_clean_exit(result)
    assert "base_lr: 0.0001" in result.stdout


@pytest.mark.slow
def test_bad_numbers_name_the_option(attack):
    lines = [assert_refused(r) for r in _section(attack, "numbers")]
    options = ["--img-size", "--img-size", "--img-size", "--img-size", "--batch-size", "--layers", "--layers",
               "--layers", "layer 9", "--num-workers", "--device", "cuda", "--device", "--seed", "--bootstrap",
               "--mask-ratio", "5 heads", "--units", "--dtype", "unknown output format"]
    for line, option in zip(lines, options):
        assert option in line, (option, line)


@pytest.mark.slow
def test_the_rest(attack):
    rest = _section(attack, "rest")
    tau, tau_nan, ratios, missing_image, text_image, query, figures, images, trained, resume, _, rank1 = rest
    assert "--tau" in assert_refused(tau) and "--tau" in assert_refused(tau_nan)
    assert "--mask-ratios" in assert_refused(ratios)
    assert_refused(missing_image)
    assert "not a readable image" in assert_refused(text_image)
    assert "not a readable image" in assert_refused(query)  # the image is checked before the query
    assert_refused(figures)
    assert "not a folder of images" in assert_refused(images)
    assert_clean_exit(trained, budget_mb=1200)
    assert "cannot resume" in assert_refused(resume)
    assert "expected 0 <= RANK < WORLD_SIZE" in assert_refused(rank1)  # would wait forever for rank 0


def test_under_torchrun_only_the_main_process_prints_the_error(monkeypatch, tmp_path):
    """Every process meets the same refusal; rank 1 exits 2 silently, rank 0 prints the line."""
    from typer.testing import CliRunner

    import maeprobe.distributed as distributed
    from maeprobe.cli import app

    monkeypatch.setattr(distributed, "rank", lambda: 1)
    result = CliRunner().invoke(app, ["info", str(tmp_path / "missing.pth")])
    assert result.exit_code == 2 and result.output == ""
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    result = CliRunner().invoke(app, ["info", str(tmp_path / "missing.pth")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "no such file" in result.output


@pytest.mark.slow
def test_resume_refuses_a_damaged_or_foreign_checkpoint(attack, tmp_path):
    """A negative step, or a checkpoint of another model without training arguments, is one line and leaves
    the run folder as it was."""
    import shutil

    from typer.testing import CliRunner

    from maeprobe.cli import app
    from maeprobe.models import build_mae

    run_dir = tmp_path / "run"
    shutil.copytree(attack["run_dir"], run_dir)
    last = run_dir / "checkpoint-last.pth"
    state = torch.load(last, weights_only=False)
    state["step"] = -5
    torch.save(state, last)
    before = snapshot(run_dir)
    args = ["recipe", "run", str(RECIPES / "tiny-mae.yaml"), *QUICK, f"run.output_dir={run_dir}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "its step is -5" in result.output, result.output
    torch.save({"model": build_mae("mae_vit_small_patch8_96").state_dict(), "optimizer": {}, "step": 1,
                "epoch": 0, "position": 1}, last)
    before = snapshot(run_dir)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "does not fit this recipe's model" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert snapshot(run_dir) == before


@pytest.fixture(scope="module")
def attack2(tmp_path_factory):
    """Inputs found by an independent attack on the first version of these checks."""
    root = tmp_path_factory.mktemp("errors2")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    state = tiny_state()
    complex_state = {**state, "blocks.0.attn.qkv.weight": state["blocks.0.attn.qkv.weight"].to(torch.complex64)}
    torch.save({"model": complex_state, "maeprobe": {"num_heads": 2}}, inputs / "complex.pth")
    _safetensors(inputs / "huge.safetensors", {**state, "blocks.0.attn.qkv.weight": torch.full((48, 16), 3e38)})
    _safetensors(inputs / "tiny_std.safetensors", state, {"maeprobe": json.dumps(
        {"num_heads": 2, "mean": [0.5] * 3, "std": [1e-300, 1.0, 1.0]})})
    # a sharded HuggingFace folder with a leftover third shard that repeats a tensor
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    hf = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            image_size=16, patch_size=8), add_pooling_layer=False)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    keys = sorted(sd)
    shards = inputs / "hf_shards"
    shards.mkdir()
    (shards / "config.json").write_text(json.dumps({"model_type": "vit", "num_attention_heads": 2,
                                                    "hidden_act": "gelu", "layer_norm_eps": 1e-12}))
    half = len(keys) // 2
    save_file({k: sd[k] for k in keys[:half]}, str(shards / "model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in keys[half:]}, str(shards / "model-00002-of-00002.safetensors"))
    query = next(k for k in keys if k.endswith(".weight") and ("query" in k or "q_proj" in k))
    save_file({query: torch.randn_like(sd[query])}, str(shards / "model-00003-of-00003.safetensors"))
    indexed = inputs / "hf_indexed"
    import shutil

    shutil.copytree(shards, indexed)
    (indexed / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        **{k: "model-00001-of-00002.safetensors" for k in keys[:half]},
        **{k: "model-00002-of-00002.safetensors" for k in keys[half:]}}}))
    single = inputs / "hf_single"
    single.mkdir()
    (single / "config.json").write_text((shards / "config.json").read_text())
    save_file(sd, str(single / "model.safetensors"))
    # a hub snapshot whose config.json holds a 5000-digit integer
    snap = root / "home" / "hf" / "hub" / "models--evil--hugeint" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc")
    (snap / "config.json").write_text('{"architecture": "vit_small_patch16_224", "model_args": {"num_heads": '
                                      + "9" * 5000 + "}}")
    save_file(state, str(snap / "model.safetensors"))
    # recipes: timestamps and huge numbers YAML cannot turn into Python values, a base outside the folder
    recipes = inputs / "recipes"
    recipes.mkdir()
    (recipes / "timestamp.yaml").write_text("name: !!timestamp 2001-13-45\n")  # YAML 1.2 reads it untagged as text
    (recipes / "hugeint.yaml").write_text("optim:\n  epochs: " + "9" * 5000 + "\n")
    secret = root / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("TOPSECRET: [ ^\n")
    (recipes / "steal.yaml").write_text("base: ../secret/id_rsa\n")
    (recipes / "steal_abs.yaml").write_text(f"base: {secret / 'id_rsa'}\n")
    (recipes / "ok.yaml").write_text(f"base: {RECIPES / 'tiny-mae.yaml'}\nname: fine\n")
    table = inputs / "layer_huge.csv"
    table.write_text("metric,module,layer,head,value\nattention_distance,encoder,99999999999999999999999,0,1\n")
    images = inputs / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(images / "red.png")
    cases = [
        {"argv": ["info", inputs / "complex.pth"]},
        {"argv": ["info", inputs / "huge.safetensors"]},
        {"argv": ["info", inputs / "tiny_std.safetensors"]},
        {"argv": ["attn-distance", shards, "--images", images, "--bootstrap", "0"]},
        {"argv": ["attn-distance", indexed, "--images", images, "--bootstrap", "0", "--out", out / "indexed.csv"]},
        {"argv": ["attn-distance", single, "--images", images, "--bootstrap", "0", "--out", out / "single.csv"]},
        {"argv": ["info", "hf-hub:evil/hugeint"]},
        {"argv": ["recipe", "show", recipes / "timestamp.yaml"]},
        {"argv": ["recipe", "show", recipes / "hugeint.yaml"]},
        {"argv": ["recipe", "show", RECIPES / "tiny-mae.yaml", "name=2001-13-45"]},
        {"argv": ["recipe", "show", recipes / "steal.yaml"]},
        {"argv": ["recipe", "show", recipes / "steal_abs.yaml"]},
        {"argv": ["recipe", "show", recipes / "ok.yaml"], "env": {"WORLD_SIZE": "abc"}},
        {"argv": ["recipe", "ls", recipes]},
        {"argv": ["run", inputs / "huge.safetensors", "--metrics", ""]},
        {"argv": ["figures", table, "--out", out / "figs"]},
    ]
    before = snapshot(root)
    results = run_cases(cases, root)
    return {"root": root, "results": results, "changed": changed_outside(before, snapshot(root), ["out"])}


@pytest.mark.slow
def test_found_later_nothing_written(attack2):
    assert attack2["changed"] == []


@pytest.mark.parametrize("index, text", [
    (0, "expected real floating-point weights"), (1, "expected the weights of a network"), (2, "'std'"),
    (3, "holds"), (6, "JSON cannot read"), (7, "cannot read"), (8, "cannot read"),
    (10, "same folder"), (11, "same folder"), (12, "WORLD_SIZE"), (14, "--metrics"), (15, "numbers")])
@pytest.mark.slow
def test_found_later_is_one_line(attack2, index, text):
    line = assert_refused(attack2["results"][index], text)
    assert "TOPSECRET" not in line


@pytest.mark.slow
def test_shards_follow_the_index_and_equal_the_single_file(attack2):
    import pandas as pd

    for k in (4, 5):
        assert_clean_exit(attack2["results"][k])
    out = attack2["root"] / "out"
    indexed, single = pd.read_csv(out / "indexed.csv"), pd.read_csv(out / "single.csv")
    assert indexed["value"].tolist() == pytest.approx(single["value"].tolist())


@pytest.mark.slow
def test_recipe_ls_lists_around_a_bad_file(attack2):
    result = attack2["results"][13]
    assert_clean_exit(result)
    assert "fine" in result.stdout or "ok" in result.stdout
    assert "not listed" in result.stdout and "TOPSECRET" not in result.stdout


@pytest.mark.slow
def test_an_override_yaml_cannot_read_is_taken_as_text(attack2):
    result = attack2["results"][9]
    assert_clean_exit(result)
    assert "name: '2001-13-45'" in result.stdout
