"""Attention entropy per (layer, head): the mean over patch queries of each attention row's Shannon entropy.

For query patch i with attention row a_i over the N keys of its sequence, H_i = -sum_j a_ij ln a_ij (nats,
0 ln 0 = 0). Per head: H_i averaged over the K patch queries (prefix tokens such as CLS, registers and
distillation tokens are not queries, as in the attention distance), then over images. ``patch_keys_only``
renormalises each row over the patch keys first (the entropy of where a query looks among the patches).
Uniform attention gives ln N (ln K with ``patch_keys_only``), one-hot attention 0: each row reports the
uniform level of its sequence, the upper bound. With a mask, N and K count the tokens the layer sees.

The rows come in query blocks (``AttentionRows``), so no [B, H, N, N] map is needed; with each block come its
log-probabilities (log_softmax of the logits), so that -sum a ln a needs no logarithm per entry (``alna_sums``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .._lazy import lazy
from ..errors import MaeprobeError
from .base import BlockVisitor, LayerHeadMean
from .registry import FigureSpec, MetricSpec, check_flag, checkpoint_name, heads_by_layer, images_text, option, register

torch = lazy("torch")
_capture = lazy("maeprobe.capture")


class AttentionEntropy(LayerHeadMean):
    """Streaming mean attention entropy (nats) of every (layer, head) of the encoder or decoder."""

    metric = "attention_entropy"

    def __init__(self, model, *, module: str = "encoder", layers=None, patch_keys_only: bool = False,
                 bootstrap: int = 0, bootstrap_seed: int = 0) -> None:
        if module not in ("encoder", "decoder"):
            raise MaeprobeError(f"module must be 'encoder' or 'decoder', got {module!r}")
        self.module, self.patch_keys_only = module, bool(patch_keys_only)
        self.layers = _capture.resolve_layers(model, module, layers)
        from ..limits import check_attention

        check_attention(model, module)
        self.num_heads = _capture.blocks_of(model, module)[0].attn.num_heads
        self.num_prefix = model.num_prefix_tokens
        self.uniform_level = float("nan")  # ln of the number of keys, known at the first batch
        super().__init__((len(self.layers), self.num_heads), bootstrap, bootstrap_seed)

    def settings(self) -> dict:
        return {"patch_keys_only": self.patch_keys_only}

    def _visitor(self, rows) -> BlockVisitor:
        """Mean row entropy per image and head [B, H] of one layer, from its blocks of patch-query rows."""
        P = self.num_prefix
        B, H, N, _ = rows.shape
        total = torch.zeros(B, H, dtype=torch.float64, device=rows.device)

        def visit(start, index, probs, log_probs) -> None:
            prefix, patch = alna_sums(rows, probs, log_probs, P)  # [B, H, n] sums of a ln a
            if self.patch_keys_only:  # renormalised over the patch keys: H(a / m) = -sum a ln a / m + ln m; 0 if m = 0
                mass = block_memo(rows, probs, ("mass", P), lambda: probs[..., P:].sum(-1)).double()
                entropy = torch.where(mass > 0, -patch.double() / mass + mass.log(), 0.0)
            else:
                entropy = -(prefix.double() + patch.double())
            total.add_(entropy.sum(-1))  # on the device: no sync

        def result() -> torch.Tensor:
            keys = N - P if self.patch_keys_only else N
            self.uniform_level = math.log(keys)
            return (total / (N - P)).cpu()

        return BlockVisitor(torch.arange(P, N), visit, result, log_probs=True)


def block_memo(rows, probs: torch.Tensor, name, compute):
    """``compute()`` once per block of ``rows`` and rows of it (``probs``): the metrics that read the same block in
    the capture's shared pass (``capture.core.shared_block_pass``) share it. Keyed by the block's ``serial`` and the
    view ``probs`` (its storage, shape and strides), so a block's other rows or the next block recompute."""
    key = (getattr(rows, "serial", None), probs.data_ptr(), tuple(probs.shape), tuple(probs.stride()))
    memo = getattr(rows, "_block_memo", None)
    if memo is None or memo[0] != key or key[0] is None:
        memo = (key, {})
        try:
            rows._block_memo = memo
        except AttributeError:  # pragma: no cover - a rows object without attributes: no sharing
            pass
    if name not in memo[1]:
        memo[1][name] = compute()
    return memo[1][name]


def alna_sums(rows, probs: torch.Tensor, log_probs: torch.Tensor | None,
              split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``probs`` [B, H, n, N], a block of ``rows``: (sum_k a ln a over the keys ``:split``, over the keys
    ``split:``), float32 [B, H, n], through the rows' work buffer (``AttentionRows.scratch``); computed once per
    block for all the metrics of the shared pass (``block_memo``). From ``log_probs`` (ln a from log_softmax,
    finite: a product, no logarithm per entry) when given; else ln(a + tiny) times a, with 0 ln 0 = 0 (a + tiny is
    a for every a >= 2^-100, and 0 + tiny keeps the logarithm finite; a NaN stays NaN)."""
    def compute():
        out = rows.scratch(probs.shape)
        if log_probs is not None:
            alna = torch.mul(probs, log_probs, out=out)
        else:
            alna = torch.add(probs, torch.finfo(torch.float32).tiny, out=out).log_().mul_(probs)
        return alna[..., :split].sum(-1), alna[..., split:].sum(-1)

    return block_memo(rows, probs, ("alna", split), compute)


@dataclass(frozen=True)
class AttentionEntropyOptions:
    module: str = option("encoder", "encoder or decoder.", choices=("encoder", "decoder"))
    patch_keys_only: bool = option(False, "Renormalise each row over patch keys (drop CLS/registers) first.",
                                   check=check_flag)


def _report(table) -> list[str]:
    title = (f"{checkpoint_name(table)}: mean attention entropy (nats) of the {table['module'].iloc[0]}, "
             f"{images_text(table)}, mask ratio {table['mask_ratio'].iloc[0]:g}; uniform attention: "
             f"{table['uniform_level'].iloc[0]:.3f}")
    return heads_by_layer(table, title, 3, False)


SPEC = register(MetricSpec(
    name="attn-entropy", function="attention_entropy", column="attention_entropy", reducer=AttentionEntropy,
    options=AttentionEntropyOptions,
    summary="Mean attention entropy per layer and head, in nats; uniform attention gives ln(number of keys).",
    doc="""Mean attention entropy (nats) per (layer, head): each patch query's row entropy -sum_j a_ij ln a_ij,
    averaged over patch queries and images. ``patch_keys_only`` renormalises the rows over patch keys first.
    ``uniform_level`` is ln(number of keys), the value of uniform attention.""",
    report=_report,
    figures=(FigureSpec("entropy", "Mean attention entropy per layer", "heads", quantity="mean attention entropy",
                        units="nats", module="encoder", default=True,
                        variant=("patch_keys_only", " (patch keys)", " (all keys)", " over patch keys")),)))
