"""Class 1 of issue 15: nothing in a file runs code, reaches the network or makes maeprobe read a file the user
did not name. Every hostile input is generated here; each runs in a limited child (``tests/helpers/hostile.py``) that
records network attempts, and a payload that ran would leave its marker file."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import timm
import torch
from helpers.hostile import (
    MARKER,
    assert_clean_exit,
    assert_refused,
    changed_outside,
    payload_pickle,
    run_cases,
    snapshot,
)
from safetensors.torch import save_file

D, HEADS = 32, 2


def _eva_state() -> dict:
    torch.manual_seed(0)
    net = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0, img_size=28, embed_dim=D,
                            depth=1, num_heads=HEADS)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    """The hostile files and the results of running maeprobe on each (one runner process for the module)."""
    root = tmp_path_factory.mktemp("code")
    marker = root / MARKER
    payload = root / "payload.bin"
    payload.write_bytes(payload_pickle(marker))
    state = _eva_state()
    files = {}

    def eva_safetensors(name, meta):
        path = root / name
        save_file(state, str(path), metadata={"format": "pt", "maeprobe": json.dumps(meta)})
        return path

    # timm's create_model would load checkpoint_path itself (an unsafe pickle load in timm < 1.0.26)
    files["meta_checkpoint_path"] = eva_safetensors("meta_ckpt.safetensors", {
        "num_heads": HEADS, "timm_architecture": "eva02_tiny_patch14_224",
        "timm_model_args": {"checkpoint_path": str(payload), "pretrained": True,
                            "pretrained_cfg_overlay": {"file": str(payload)}, "ref_feat_shape": [2, 2]}})
    # an hf-hub: architecture makes timm contact the hub
    files["meta_hf_hub"] = eva_safetensors("meta_hub.safetensors", {
        "num_heads": HEADS, "timm_architecture": "hf-hub:timm/eva02_tiny_patch14_224.mim_in22k"})
    files["meta_pretrained_tag"] = eva_safetensors("meta_tag.safetensors", {
        "num_heads": HEADS, "timm_architecture": "eva02_tiny_patch14_224.mim_in22k",
        "timm_model_args": {"pretrained": True, "pretrained_cfg": {"file": str(payload)}}})
    # a timm repository folder whose config.json asks timm to load the payload
    folder = root / "timm_folder"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "eva02_tiny_patch14_224", "num_classes": 0,
        "model_args": {"checkpoint_path": str(payload), "num_heads": HEADS, "pretrained": True},
        "pretrained_cfg": {"file": str(payload), "hf_hub_id": "timm/evil", "mean": [0.5] * 3, "std": [0.5] * 3}}))
    # the same as a hub cache snapshot, reached by name
    snapshot_dir = root / "home" / "hf" / "hub" / "models--timm--evil" / "snapshots" / "abc123"
    snapshot_dir.mkdir(parents=True)
    (root / "home" / "hf" / "hub" / "models--timm--evil" / "refs").mkdir()
    (root / "home" / "hf" / "hub" / "models--timm--evil" / "refs" / "main").write_text("abc123")
    save_file(state, str(snapshot_dir / "model.safetensors"))
    (snapshot_dir / "config.json").write_text((folder / "config.json").read_text())
    # pickles that run code, at the top and nested where training checkpoints keep arguments
    files["pickle_top"] = root / "top.pth"
    files["pickle_top"].write_bytes(payload_pickle(marker))
    import pickle

    class Nested:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    files["pickle_args"] = root / "args.pth"
    torch.save({"model": {}, "args": Nested()}, files["pickle_args"], pickle_module=pickle)
    files["pickle_optimizer"] = root / "optim.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "optimizer": {"state": Nested()}}, files["pickle_optimizer"])
    files["pickle_legacy"] = root / "legacy.pth"
    torch.save({"model": Nested()}, files["pickle_legacy"], _use_new_zipfile_serialization=False)
    # a HuggingFace folder whose weights are a payload
    hf = root / "hf_folder"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "vit", "auto_map": {"AutoModel": "evil.Model"},
                                                "trust_remote_code": True}))
    (hf / "pytorch_model.bin").write_bytes(payload_pickle(marker))
    # a .npz with a pickled object array
    files["npz_object"] = root / "object.npz"
    with zipfile.ZipFile(files["npz_object"], "w") as archive:
        with archive.open("embedding/kernel.npy", "w") as f:
            np.lib.format.write_array(f, np.array([Nested()], dtype=object), allow_pickle=True)
    # a recipe asking YAML to construct Python objects
    recipe = root / "evil.yaml"
    recipe.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    out = root / "out"

    cases = [
        {"argv": ["info", files["meta_checkpoint_path"]]},
        {"argv": ["info", files["meta_hf_hub"]]},
        {"argv": ["info", files["meta_pretrained_tag"]]},
        {"argv": ["info", folder]},
        {"argv": ["info", "hf-hub:timm/evil"]},
        {"argv": ["info", files["pickle_top"]]},
        {"argv": ["info", files["pickle_args"]]},
        {"argv": ["info", files["pickle_optimizer"]]},
        {"argv": ["info", files["pickle_legacy"]]},
        {"argv": ["info", hf]},
        {"argv": ["info", files["npz_object"]]},
        {"argv": ["recipe", "show", recipe]},
        {"argv": ["recipe", "run", recipe]},
        {"argv": ["decoder-semantics", files["meta_checkpoint_path"], "--ref", files["pickle_top"], "--out",
                  out / "t.csv"]},
        {"argv": ["attn-distance", folder, "--bootstrap", "0", "--out", out / "ad.csv"]},
    ]
    before = snapshot(root)
    results = run_cases(cases, root)
    return {"root": root, "marker": marker, "results": results, "changed": changed_outside(before, snapshot(root),
                                                                                             ["out"])}


@pytest.mark.slow
def test_no_payload_ran_no_network_nothing_written(attack):
    assert not attack["marker"].exists()
    assert not any(r.network for r in attack["results"])
    assert attack["changed"] == [], attack["changed"]


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])
@pytest.mark.slow
def test_metadata_never_reaches_timm_as_arguments(attack, index):
    """Metadata asking timm to load a file, to use the hub or a pretrained tag is ignored (dropped by the
    allow-list); the file itself loads as what its weights say."""
    result = attack["results"][index]
    assert_clean_exit(result)
    assert "family: EVA" in result.stdout and f"{HEADS} heads" in result.stdout


@pytest.mark.parametrize("index", [5, 6, 7, 8, 9])
@pytest.mark.slow
def test_code_in_pickles_is_refused(attack, index):
    assert_refused(attack["results"][index], "refused to load", "allow-list")


@pytest.mark.slow
def test_object_arrays_in_npz_are_refused(attack):
    assert_refused(attack["results"][10], "refused to load")


@pytest.mark.parametrize("index", [11, 12])
@pytest.mark.slow
def test_yaml_python_tags_are_refused(attack, index):
    assert_refused(attack["results"][index], "invalid YAML")


@pytest.mark.slow
def test_a_payload_reference_is_refused(attack):
    assert_refused(attack["results"][13], "refused to load")


@pytest.mark.slow
def test_a_timm_folder_is_probed_with_its_config_as_data(attack):
    assert_clean_exit(attack["results"][14])
    assert (attack["root"] / "out" / "ad.csv").is_file()


def test_timm_version_loads_safely():
    """timm < 1.0.26 loads a checkpoint_path with weights_only=False; maeprobe requires a newer timm."""
    from importlib.metadata import version

    from packaging.version import Version

    assert Version(version("timm")) >= Version("1.0.26")
