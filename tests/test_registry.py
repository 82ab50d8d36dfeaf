"""The metric registry (issue 28): one declaration per metric reaches the API, ``run``, the CLI and the figures.

Checked against independent computations: every option given to ``run`` gives the rows of the metric's own
function with that option; a metric declared in a test (attention mass on the CLS key) works end to end and equals
a direct computation from full attention maps; the CLI's flags are the declared options; ``maeprobe --help`` loads
no torch."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import maeprobe
from maeprobe import api
from maeprobe.metrics import registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A random tiny MAE with a decoder, saved in the official format (32 px, patch 8, 4 x 4 grid)."""
    torch.manual_seed(3)
    model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, decoder_embed_dim=16,
                               decoder_depth=2, decoder_num_heads=2)
    with torch.no_grad():  # non-trivial attention: larger random weights than the initialisation's
        for name, p in model.named_parameters():
            if "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.2)
    return maeprobe.save_checkpoint(model, tmp_path_factory.mktemp("reg") / "tiny.pth")


def _values(table: pd.DataFrame) -> np.ndarray:
    """Values and interval bounds in a fixed row order."""
    rows = table.sort_values(["metric", "module", "layer", "head"], na_position="first", kind="stable")
    return rows[["value", "ci_low", "ci_high"]].to_numpy(dtype=float)


RUN_CASES = [  # (metric, options): each must reach run exactly as the metric's own function takes it
    ("attn-distance", {"units": "patches", "renormalize": True}),
    ("attn-distance", {"module": "decoder"}),
    ("attn-entropy", {"patch_keys_only": True}),
    ("attn-entropy", {"module": "decoder"}),
    ("decoder-attn-sim", {"include_cls_key": True, "per_head": True, "groups": 3}),
    ("decoder-semantics", {"tau": None, "center": True}),
    ("decoder-semantics", {"tau_quantile": 0.6, "eps": 0.01, "ref_features": "tokens"}),
    ("spectrum", {"groups": 3}),
]


@pytest.mark.parametrize("metric,options", RUN_CASES, ids=[f"{m}-{'-'.join(o)}" for m, o in RUN_CASES])
def test_every_option_reaches_run(tiny_ckpt, images32, metric, options):
    spec = registry.spec(metric)
    reference = {"reference": str(tiny_ckpt)} if spec.needs_reference else {}
    direct = getattr(api, spec.function)(str(tiny_ckpt), images=images32, bootstrap=20, **reference, **options)
    for name, value in options.items():  # the option changed the rows: not the default's table
        assert dataclasses.asdict(spec.options())[name] != value
    default = getattr(api, spec.function)(str(tiny_ckpt), images=images32, bootstrap=20, **reference)
    assert len(default) != len(direct) or not np.allclose(_values(default), _values(direct), equal_nan=True) or \
        list(default.columns) != list(direct.columns)
    layers = {"decoder_layers": None} if spec.module_of(options) == "decoder" else {}
    via_run = api.run(str(tiny_ckpt), images32, metrics=[metric], bootstrap=20, **reference, **layers, **options)
    np.testing.assert_allclose(_values(via_run), _values(direct), rtol=0, atol=0)
    via_dict = api.run(str(tiny_ckpt), images32, metrics=[metric], bootstrap=20, **reference,
                       options={metric: options})
    np.testing.assert_allclose(_values(via_dict), _values(direct), rtol=0, atol=0)


def test_run_refuses_an_option_no_metric_has(tiny_ckpt, images32):
    with pytest.raises(maeprobe.MaeprobeError, match="patch_key_only: not an option of run or of any metric"):
        api.run(str(tiny_ckpt), images32, metrics=["attn-entropy"], patch_key_only=True)
    with pytest.raises(maeprobe.MaeprobeError, match="options of attn-entropy"):
        api.run(str(tiny_ckpt), images32, metrics=["attn-entropy"], options={"attn-entropy": {"units": "px"}})


# ----------------------------------------------------------------------------- a metric declared in one place
def _cls_mass_spec():
    """A new metric in a few lines: the mean attention mass that patch queries put on the CLS key."""
    from maeprobe.capture import attention_rows, blocks_of, resolve_layers
    from maeprobe.metrics.base import LayerHeadMean

    class ClsAttention(LayerHeadMean):
        metric = "cls_attention"

        def __init__(self, model, *, module="encoder", layers=None, bootstrap=0, bootstrap_seed=0):
            self.module, self.layers = module, resolve_layers(model, module, layers)
            self.num_heads = blocks_of(model, module)[0].attn.num_heads
            super().__init__((len(self.layers), self.num_heads), bootstrap, bootstrap_seed)

        def _layer_values(self, attn):
            rows = attention_rows(attn)
            B, H, N, _ = rows.shape
            total = torch.zeros(B, H, dtype=torch.float64)
            for _, _, probs in rows.blocks(torch.arange(1, N)):
                total += probs[..., 0].double().sum(-1).cpu()
            self.uniform_level = 1.0 / N  # uniform attention puts 1/N on every key
            return total / (N - 1)

    @dataclasses.dataclass(frozen=True)
    class Options:
        module: str = registry.option("encoder", "encoder or decoder.", choices=("encoder", "decoder"))

    return registry.MetricSpec(name="cls-attention", function="cls_attention", column="cls_attention",
                               reducer=ClsAttention, options=Options, summary="Attention mass on the CLS key.",
                               doc="Mean attention mass on the CLS key.")


@pytest.fixture
def cls_metric(monkeypatch):
    spec = _cls_mass_spec()
    monkeypatch.setitem(registry._METRICS, spec.name, spec)
    monkeypatch.setattr(api, "METRICS", (*api.METRICS, spec.name))
    monkeypatch.setitem(api.DEFAULT_MASK_RATIOS, spec.name, 0.0)
    return spec


def test_a_metric_declared_once_runs_through_measure_run_and_the_cli(tiny_ckpt, images32, cls_metric):
    from maeprobe.capture import CaptureRequest, capture

    model = maeprobe.load(str(tiny_ckpt))
    table = api.measure(model, "cls-attention", images32, bootstrap=0)
    # direct: full attention maps of the encoder, column 0 averaged over patch queries and images
    with capture(model, CaptureRequest.of(attention={"encoder": [0, 1, 2]})) as cache, torch.no_grad():
        model.forward_encoder(images32, 0.0)
        direct = torch.stack([cache.attention[("encoder", layer)][:, :, 1:, 0].mean((0, 2)) for layer in range(3)])
    got = table.sort_values(["layer", "head"])["value"].to_numpy().reshape(3, -1)
    assert (table["uniform_level"] == 1 / 17).all()
    np.testing.assert_allclose(got, direct.double().numpy(), rtol=1e-5, atol=1e-7)
    both = api.run(str(tiny_ckpt), images32, metrics=["cls-attention", "attn-entropy"], bootstrap=0,
                   options={"cls-attention": {"module": "decoder"}})
    assert set(both["metric"]) == {"cls_attention", "attention_entropy"}
    assert set(both.loc[both["metric"] == "cls_attention", "module"]) == {"decoder"}
    # its command: the options dataclass's fields are its flags
    import typer

    from maeprobe.cli.probe import metric_command

    app = typer.Typer()
    app.command("cls-attention")(metric_command(cls_metric))
    app.command("other")(lambda: None)
    out = Path(tiny_ckpt).parent / "cls.csv"
    result = CliRunner().invoke(app, ["cls-attention", str(tiny_ckpt), "--module", "decoder", "--bootstrap", "0",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(out)["module"]) == {"decoder"}
    refused = CliRunner().invoke(app, ["cls-attention", str(tiny_ckpt), "--module", "middle"])
    assert refused.exit_code == 2


# ----------------------------------------------------------------------------- the CLI and the library agree
def test_cli_flags_are_the_declared_options():
    from maeprobe.cli import app

    runner = CliRunner()
    for spec in registry.metrics().values():
        text = runner.invoke(app, [spec.name, "--help"], terminal_width=200).output
        for field in spec.fields():
            flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
            assert flag in text, (spec.name, flag)
    run_help = runner.invoke(app, ["run", "--help"], terminal_width=200).output
    for flag in ("--renormalize", "--units", "--patch-keys-only", "--module", "--center-keys", "--tau-quantile",
                 "--eps", "--groups"):
        assert flag in run_help, flag


def test_cli_run_passes_metric_flags(tiny_ckpt, tmp_path):
    from maeprobe.cli import app

    out = tmp_path / "t.csv"
    result = CliRunner().invoke(app, ["run", str(tiny_ckpt), "--metrics", "attn-entropy", "--patch-keys-only",
                                      "--module", "decoder", "--bootstrap", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert set(table["module"]) == {"decoder"} and table["patch_keys_only"].all()


def test_help_loads_no_torch():
    code = ("import sys; from typer.testing import CliRunner; from maeprobe.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(app, ['attn-entropy', '--help']); assert r.exit_code == 0; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_one_package_file_names_attn_entropy():
    """Issue 28's acceptance: the metric's name is declared once (its file); everything else iterates."""
    files = [p for p in (REPO / "maeprobe").rglob("*.py") if "attn-entropy" in p.read_text(encoding="utf-8")]
    assert [p.relative_to(REPO).as_posix() for p in files] == ["maeprobe/metrics/attention_entropy.py"]


# ----------------------------------------------------------------------------- summaries and warnings in the library
def test_saturation_warning_comes_from_the_library(tiny_ckpt, images32):
    with pytest.warns(UserWarning, match="W is saturated"):  # tau -1: every cosine is above it
        table = api.decoder_semantic_similarity(str(tiny_ckpt), str(tiny_ckpt), images32, tau=-1.0, bootstrap=0)
    assert (table["w_density"] == 1.0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api.decoder_semantic_similarity(str(tiny_ckpt), str(tiny_ckpt), images32, tau=None, bootstrap=0)


def test_report_and_describe(tiny_ckpt, images32):
    model = maeprobe.load(str(tiny_ckpt))
    table = api.attention_entropy(model, images32, bootstrap=0)
    text = api.report(table)
    assert f"uniform attention: {np.log(17):.3f}" in text and "tiny.pth" in text  # 16 patches + CLS
    described = dict(api.describe(model))
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("decoder", "mask_token")))
    assert described["parameters"] == f"{total:,} ({encoder:,} encoder)"
    assert described["decoder"].startswith("width 16, depth 2, 2 heads")


@pytest.mark.parametrize("metric, name", [("fourier", "channel_average"), ("attn-nmi", "module"),
                                          ("token-svd", "svd_matrix"), ("attn-entropy", "module")])
def test_a_declared_choice_takes_only_its_texts(metric, name):
    """An array (whose truth value is ambiguous) or a non-choice is one MaeprobeError naming the option, before any
    image is read; every declared choice is checked the same way (hostile review)."""
    model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3)
    for value in (np.array(["encoder", "log"]), "nope", 3):
        with pytest.raises(maeprobe.MaeprobeError, match=f"^{name}: expected one of"):
            maeprobe.measure(model, metric, torch.randn(2, 3, 32, 32), **{name: value})


def test_run_refuses_an_option_that_no_chosen_metric_takes(tmp_path):
    """``run(metrics=['fourier'], k=5)``: k is knn's; set for none of the chosen metrics, it was silently dropped.
    Its default (what the command line always passes) is not a slip."""
    model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3)
    path = maeprobe.save_checkpoint(model, tmp_path / "m.pth") or tmp_path / "m.pth"
    images = torch.randn(3, 3, 32, 32)
    with pytest.raises(maeprobe.MaeprobeError, match="^k: an option of knn, none of the metrics chosen"):
        maeprobe.run([str(path)], images, metrics=["fourier"], k=5)
    table = maeprobe.run([str(path)], images, metrics=["fourier"], k=20)  # knn's default
    assert set(table["metric"]) >= {"feature_fourier"}
