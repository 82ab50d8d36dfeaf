"""One block pass per layer for every attention consumer (issue 29), and the entropy from its log-probabilities."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_mae

from maeprobe.capture import rows as rows_module
from maeprobe.metrics.attention_distance import AttentionDistance
from maeprobe.metrics.attention_entropy import AttentionEntropy
from maeprobe.metrics.attention_nmi import AttentionNMI
from maeprobe.probe import run_probe


def _brute(logits: torch.Tensor, first_key: int) -> torch.Tensor:
    """-sum p ln p in float64 over the keys ``first_key:`` of each row, renormalised there."""
    p = torch.softmax(logits.double(), -1)[..., first_key:]
    p = p / p.sum(-1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(-1)


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 30.0])  # from near-uniform rows to near one-hot ones
@pytest.mark.parametrize("bias", ["none", "additive", "boolean"])
def test_a_ln_a_from_the_blocks_log_probabilities_equals_the_definition(scale, bias):
    """``alna_sums`` of each block (a product with ln p from log_softmax; with a boolean mask, whose -inf logits
    give no log-probabilities, ln(a + tiny) a) against -sum p ln p in float64 from the same logits, split at a
    prefix key; the probabilities against a float64 softmax."""
    from maeprobe.metrics.attention_entropy import alna_sums

    g = torch.Generator().manual_seed(int(scale * 10))
    q, k = torch.randn(2, 3, 40, 8, generator=g) * scale, torch.randn(2, 3, 40, 8, generator=g)
    q[0, 0, 5] = k[0, 0, 0] * 40  # a row with (almost) all its mass on key 0 (the prefix key)
    mask = {"none": None, "additive": torch.randn(1, 3, 40, 40, generator=g),
            "boolean": torch.rand(1, 1, 40, 40, generator=g) > 0.3}[bias]
    if mask is not None and mask.dtype == torch.bool:
        mask[..., 0] = True  # every row keeps a key
    logits = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(8)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
    truth_p = torch.softmax(logits, -1)
    truth = torch.special.xlogy(truth_p, truth_p)
    rows = rows_module.AttentionRows(q, k, mask, block=16)
    seen = 0
    for start, index, probs, log_probs in rows.block_pass(log=True):
        assert (log_probs is None) == (bias == "boolean")
        torch.testing.assert_close(probs.double(), truth_p[:, :, index], rtol=1e-4, atol=1e-6)  # float32 logits
        prefix, patch = alna_sums(rows, probs, log_probs, 1)
        torch.testing.assert_close(prefix.double(), truth[:, :, index, :1].sum(-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(patch.double(), truth[:, :, index, 1:].sum(-1), rtol=1e-5, atol=1e-6)
        seen += len(index)
    assert seen == 40


def test_a_ln_a_of_uniform_and_one_hot_rows():
    from maeprobe.capture import AttentionMap
    from maeprobe.metrics.attention_entropy import alna_sums

    probs = torch.softmax(torch.stack([torch.zeros(6), torch.tensor([0.0, 200.0, 0, 0, 0, 0])]), -1)[None, None]
    prefix, patch = alna_sums(AttentionMap(probs), probs, None, 1)
    torch.testing.assert_close((prefix + patch).double()[0, 0], torch.tensor([-math.log(6), 0.0], dtype=torch.float64))


def _reducers(model, include_prefix: bool = False):
    return [AttentionDistance(model), AttentionEntropy(model), AttentionNMI(model, include_prefix=include_prefix)]


@pytest.mark.parametrize("include_prefix", [False, True])  # True: NMI reads the CLS row too, the others not
def test_one_block_pass_per_layer_for_three_consumers(monkeypatch, images32, include_prefix):
    """Distance, entropy and NMI together compute q.k^T (and the softmax) once per block of a layer, as one metric
    alone does, and give what each gives alone."""
    model = tiny_mae(depth=2, decoder_depth=1)
    calls = []
    original = rows_module.AttentionRows.probs_of

    def counted(self, index, log=False):
        calls.append(index)
        return original(self, index, log)

    monkeypatch.setattr(rows_module.AttentionRows, "probs_of", counted)
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
    """A full map (no log-probabilities: the ln(a + tiny) a path): -sum a ln a per patch-query row (0 ln 0 = 0),
    mean over queries."""
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
    """In the shared pass the a ln a of a block is computed once for the entropy and the NMI (``alna_sums``), as
    the product of the block's probabilities and log-probabilities."""
    from maeprobe.metrics import attention_entropy

    model = tiny_mae(depth=2, decoder_depth=1)
    products = []
    original = torch.mul

    def counted(*args, **kwargs):
        products.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(attention_entropy.torch, "mul", counted)  # the module's (lazy) torch: alna_sums' product
    run_probe(model, [AttentionEntropy(model), AttentionNMI(model)], images32, batch_size=3, device="cpu",
              block_queries=4)
    assert len(products) == 2 * 2 * 4  # batches x layers x blocks of the 16 patch queries
