"""One block pass per layer for every attention consumer (issue 29), and the entropy from the logits."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_mae

from maeprobe.capture import rows as rows_module
from maeprobe.metrics.attention_distance import AttentionDistance
from maeprobe.metrics.attention_entropy import AttentionEntropy, row_entropy
from maeprobe.metrics.attention_nmi import AttentionNMI
from maeprobe.probe import run_probe


def _brute(logits: torch.Tensor, first_key: int) -> torch.Tensor:
    """-sum p ln p in float64 over the keys ``first_key:`` of each row, renormalised there."""
    p = torch.softmax(logits.double(), -1)[..., first_key:]
    p = p / p.sum(-1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(-1)


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 30.0])  # from near-uniform rows to near one-hot ones
@pytest.mark.parametrize("first_key", [0, 1, 5])
def test_row_entropy_from_logits_equals_the_definition(scale, first_key):
    g = torch.Generator().manual_seed(int(scale * 10) + first_key)
    logits = torch.randn(2, 3, 17, 200, generator=g) * scale
    logits[0, 0, 0, 0] += 50.0  # a row with (almost) all its mass on key 0 (a prefix key when first_key > 0)
    probs = torch.softmax(logits, -1)
    got, mass = row_entropy(probs, logits, first_key)
    truth = _brute(logits, first_key)
    assert got.dtype == torch.float64 and (mass is None) == (first_key == 0)
    # ~1e-6 relative on the per-head means the metrics report, and row by row to float32 rounding
    torch.testing.assert_close(got.mean(-1), truth.mean(-1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got, truth, rtol=2e-5, atol=2e-6)
    if first_key:
        torch.testing.assert_close(mass.double(), torch.softmax(logits.double(), -1)[..., first_key:].sum(-1),
                                   rtol=1e-5, atol=1e-30)


def test_row_entropy_of_uniform_and_one_hot_rows():
    logits = torch.stack([torch.zeros(6), torch.tensor([0.0, 200.0, 0, 0, 0, 0])])
    got, _ = row_entropy(torch.softmax(logits, -1), logits)
    torch.testing.assert_close(got, torch.tensor([math.log(6), 0.0], dtype=torch.float64))


def _reducers(model, include_prefix: bool = False):
    return [AttentionDistance(model), AttentionEntropy(model), AttentionNMI(model, include_prefix=include_prefix)]


@pytest.mark.parametrize("include_prefix", [False, True])  # True: NMI reads the CLS row too, the others not
def test_one_block_pass_per_layer_for_three_consumers(monkeypatch, images32, include_prefix):
    """Distance, entropy and NMI together compute q.k^T (and the softmax) once per block of a layer, as one metric
    alone does, and give what each gives alone."""
    model = tiny_mae(depth=2, decoder_depth=1)
    calls = []
    original = rows_module.AttentionRows.logits_and_rows

    def counted(self, index):
        calls.append(index)
        return original(self, index)

    monkeypatch.setattr(rows_module.AttentionRows, "logits_and_rows", counted)
    block = 4  # 17 tokens: 16 patch queries in 4 blocks (5 blocks of all 17 rows), per layer
    together = _reducers(model, include_prefix)
    run_probe(model, together, images32, batch_size=3, device="cpu", block_queries=block)
    shared = len(calls)
    calls.clear()
    alone = []
    for i in range(3):
        reducer = _reducers(model, include_prefix)[i]
        run_probe(model, [reducer], images32, batch_size=3, device="cpu", block_queries=block)
        alone.append((reducer, len(calls)))
        calls.clear()
    # per batch (2) and layer, the rows computed once: 16 patch queries in 4 blocks, then the CLS row none read for
    # p @ v (not after the last layer, whose output nothing needs: the pass stops there), or all 17 rows in 5
    assert shared == 2 * (5 + 5 if include_prefix else 5 + 4)
    assert shared == max(count for _, count in alone)
    for got, (want, _) in zip(together, alone):
        torch.testing.assert_close(got.summary()["value"], want.summary()["value"], rtol=1e-6, atol=1e-7)


def test_a_consumer_without_a_visitor_iterates_the_rows_itself(images32):
    """A plain consumer function next to the metrics still gets the rows and can read every block."""
    from maeprobe.capture import CaptureRequest, capture

    model = tiny_mae(depth=1, decoder_depth=1)
    reducers = _reducers(model)
    seen = []

    def plain(kind, module, layer, rows, cache):
        seen.append(sum(probs.shape[2] for _, _, probs in rows.blocks()))

    consumers = {key: [r.consume for r in reducers] + [plain] for key in reducers[0].consumes()}
    with capture(model, CaptureRequest.of(attention={"encoder": [0]}), consumers, block_queries=4) as cache, \
            torch.no_grad():
        cache.image_indices = cache.unit_indices = torch.arange(images32.shape[0])
        cache.mask = None
        model.forward_encoder(images32, 0.0)
        for reducer in reducers:
            reducer.update(cache)
    assert seen == [17]
    alone = _reducers(model)
    run_probe(model, alone, images32, batch_size=6, device="cpu", block_queries=4)
    for got, want in zip(reducers, alone):
        torch.testing.assert_close(got.summary()["value"], want.summary()["value"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("patch_keys_only", [False, True])
def test_entropy_metric_equals_the_definition(patch_keys_only):
    """The metric's ln max(a, tiny) * a path: -sum a ln a per patch-query row (0 ln 0 = 0), mean over queries."""
    from maeprobe.capture import AttentionMap

    model = tiny_mae(depth=1, decoder_depth=1)  # 17 tokens (CLS + 16 patches), 3 heads
    logits = torch.randn(2, 3, 17, 17, generator=torch.Generator().manual_seed(3)) * 4
    logits[0, 0, 1:, 0] += 200.0  # head 0 of image 0: every row on the CLS key, its patch keys 0 by underflow
    logits[1, 1, :, 3] += 200.0  # one-hot rows: entropy 0
    attn = torch.softmax(logits, -1)
    got = AttentionEntropy(model, patch_keys_only=patch_keys_only)._layer_values(AttentionMap(attn))
    truth = _brute(logits, 1 if patch_keys_only else 0)[:, :, 1:]
    if patch_keys_only:  # rows with no patch mass count 0, as before
        truth = torch.where(attn[..., 1:].sum(-1)[:, :, 1:] > 0, truth, 0.0)
    torch.testing.assert_close(got, truth.mean(-1), rtol=1e-6, atol=1e-7)


def test_entropy_and_nmi_share_each_blocks_a_ln_a(monkeypatch, images32):
    """In the shared pass the a ln a of a block is computed once for the entropy and the NMI (``alna_sums``)."""
    model = tiny_mae(depth=2, decoder_depth=1)
    logs = []
    original = torch.Tensor.log_

    def counted(self):
        logs.append(self.shape)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "log_", counted)
    run_probe(model, [AttentionEntropy(model), AttentionNMI(model)], images32, batch_size=3, device="cpu",
              block_queries=4)
    assert len(logs) == 2 * 2 * 4  # batches x layers x blocks of the 16 patch queries
