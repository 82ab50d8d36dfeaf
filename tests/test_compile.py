"""``run.compile=true`` (torch.compile of the pretraining step) gives the step of the eager run, for every method:
one optimiser step of each tiny recipe, compiled by inductor's CPU backend, against the same step in eager mode
with the same seed. Compared: the logged loss (forward), AdamW's first moment after the step (0.1 x the gradient:
backward) and the weights after the step.

On the CPU inductor generates C++ kernels (gcc); on CUDA Triton kernels. Dynamo's graph capture, AOT autograd and
the lowering are the same on both, and they are what maeprobe's code meets. To keep the suite's time, the C++
kernels here are built without SIMD intrinsics (``cpp.vec_isa_ok = False``: about half of gcc's time, the same
graphs)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from maeprobe.checkpoints import read_pickle
from maeprobe.train.config import load_recipe
from maeprobe.train.engine import pretrain_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

CASES = {"mae": "tiny-mae", "lcmae": "tiny-lcmae-a", "ae": "tiny-ae24", "umae": "tiny-umae"}  # method: recipe
LOSS_RTOL = 1e-4      # logged loss, relative
MOMENT_RTOL = 1e-3    # |exp_avg(compiled) - exp_avg(eager)| / |exp_avg(eager)| over all parameters
WEIGHT_ATOL = 2e-4    # after one AdamW step at lr 9.4e-5 (the step moves each weight by at most about lr)


@pytest.fixture
def fresh_compiler():
    import torch._dynamo
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    with inductor.patch({"cpp.vec_isa_ok": False}):
        yield
    torch._dynamo.reset()


def _losses(row) -> dict[str, float]:
    parts = dict(part.split("=") for part in str(row["parts"]).split(";"))
    return {"loss": float(row["loss"]), **{k: float(v) for k, v in parts.items()}}


def _moments(state: dict) -> torch.Tensor:
    optimizer = state["optimizer"]["state"]
    return torch.cat([optimizer[i]["exp_avg"].flatten().double() for i in sorted(optimizer)])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_step_equals_eager(case, tmp_path, fresh_compiler):
    name = CASES[case]
    common = ["optim.epochs=1", "data.samples_per_epoch=16", "optim.warmup_epochs=0", "run.checkpoint_every=100",
              "run.bf16=false"]
    states, logs = {}, {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        path = pretrain_recipe(load_recipe(RECIPES / f"{name}.yaml", common + [
            f"run.compile={str(compiled).lower()}", f"run.output_dir={out}"]), progress=False)
        states[compiled], logs[compiled] = read_pickle(path), pd.read_csv(out / "log.csv")
    assert states[True]["step"] == states[False]["step"] == 1
    eager, compiled = (_losses(logs[c].iloc[0]) for c in (False, True))
    assert set(eager) == set(compiled) and len(eager) > 1
    for key, value in eager.items():  # the total and every part
        assert compiled[key] == pytest.approx(value, rel=LOSS_RTOL), key
    a, b = _moments(states[False]), _moments(states[True])
    assert (b - a).norm() <= MOMENT_RTOL * a.norm()
    for key, value in states[False]["model"].items():
        torch.testing.assert_close(states[True]["model"][key], value, atol=WEIGHT_ATOL, rtol=0)
