"""The field's analyses (issue 29) sharded over 2 gloo processes equal one process: each process takes every 2nd
image, the reducers' sums are all-reduced (k-NN's banks gathered; its own test covers it), the intervals too."""
import pandas as pd
import pytest
import torch
from helpers import spawn_gloo, tiny_mae

import maeprobe

# CKA's minibatch estimator depends on which images share a batch, hence on the sharding (its rows record it)
METRICS = {"attn-nmi": {}, "attn-nmi:prefix": {"include_prefix": True}, "fourier": {}, "token-svd": {}, "cka": {}}


@pytest.fixture(scope="module")
def model():
    return tiny_mae(depth=2, decoder_depth=1).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _tables(model, images) -> dict:
    return {key: maeprobe.measure(model, key.split(":")[0], images, bootstrap=20, batch_size=2, device="cpu",
                                  **options) for key, options in METRICS.items()}


def _worker(rank, model_state, images, out_dir):
    model = tiny_mae(depth=2, decoder_depth=1, seed=None)
    model.load_state_dict(model_state)
    for key, table in _tables(model, images).items():
        if rank == 0:
            table.to_csv(f"{out_dir}/{key.replace(':', '-')}.csv", index=False)


@pytest.mark.slow
def test_two_gloo_processes_equal_one(model, images, tmp_path):
    single = _tables(model, images)
    spawn_gloo(_worker, 2, tmp_path / "init", model.state_dict(), images, str(tmp_path))
    for key, table in single.items():
        both = pd.read_csv(tmp_path / f"{key.replace(':', '-')}.csv")
        assert len(both) == len(table), key
        for column in ("value", "ci_low", "ci_high"):
            assert both[column].to_numpy() == pytest.approx(table[column].to_numpy(), rel=1e-5, abs=1e-7,
                                                            nan_ok=True), (key, column)
        assert (both["n_images"] == 12).all(), key
