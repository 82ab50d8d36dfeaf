"""Attention entropy per (layer, head): the mean over patch queries of each attention row's Shannon entropy.

For query patch i with attention row a_i over the N keys of its sequence, H_i = -sum_j a_ij ln a_ij (nats,
0 ln 0 = 0). Per head: H_i averaged over the K patch queries (prefix tokens such as CLS, registers and
distillation tokens are not queries, as in the attention distance), then over images. ``patch_keys_only``
renormalises each row over the patch keys first (the entropy of where a query looks among the patches).
Uniform attention gives ln N (ln K with ``patch_keys_only``), one-hot attention 0: each row reports the
uniform level of its sequence, the upper bound. With a mask, N and K count the tokens the layer sees.

The rows come in query blocks (``AttentionRows``), so no [B, H, N, N] map is needed. ``row_entropy`` gives the
same entropies from a block's logits (no logarithm per entry) but measured slower on CPU than ln a times a into a
kept buffer, which the metric uses.
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

        def visit(start, index, probs, logits) -> None:
            prefix, patch = alna_sums(rows, probs, P, self._scratch)  # [B, H, n] sums of a ln a
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

        return BlockVisitor(torch.arange(P, N), visit, result)

    def _scratch(self, shape: tuple[int, ...], device) -> torch.Tensor:
        """A float32 buffer of ``shape`` kept across the blocks and layers of a batch; ``update`` frees it."""
        need = math.prod(shape)
        if getattr(self, "_buffer", None) is None or self._buffer.numel() < need or self._buffer.device != device:
            self._buffer = torch.empty(need, device=device)
        return self._buffer[:need].view(shape)

    def update(self, cache) -> None:
        super().update(cache)
        self._buffer = None  # nothing block-sized outlives the batch


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


def alna_sums(rows, probs: torch.Tensor, split: int, scratch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``probs`` [B, H, n, N]: (sum_k a ln a over the keys ``:split``, over the keys ``split:``), float32
    [B, H, n], with 0 ln 0 = 0 (ln max(a, tiny) times a; a NaN stays NaN), the logarithms into ``scratch(shape,
    device)``; computed once per block for all the metrics of the shared pass (``block_memo``)."""
    def compute():
        tiny = torch.finfo(torch.float32).tiny
        alna = torch.clamp_min(probs, tiny, out=scratch(probs.shape, probs.device)).log_().mul_(probs)
        return alna[..., :split].sum(-1), alna[..., split:].sum(-1)

    return block_memo(rows, probs, ("alna", split), compute)


def row_entropy(probs: torch.Tensor, logits: torch.Tensor, first_key: int = 0,
                scratch=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shannon entropy (nats) of each row of ``probs`` = softmax(``logits``) ([..., n, Nk] float32), from the logits
    instead of -sum p ln p (a logarithm per entry). With lse(z) = ln sum_k e^{z_k}, ln p_k = z_k - lse, and the
    largest probability p_max = e^{z_max - lse} sits at the largest logit z_max, so lse = z_max - ln p_max and

        H = lse - sum_k p_k z_k = -ln p_max + sum_k p_k (z_max - z_k),

    two terms >= 0 (no cancellation, unlike lse - sum p z in float32 for peaked rows). Over the keys ``first_key:``
    only, each row renormalised by its mass m = sum_{k >= first_key} p_k there (p'_k = p_k / m, a softmax of those
    logits, its largest p'_max = p_max / m at their largest logit z_max, maxima over those keys):

        H' = -sum_k p'_k ln p'_k = -ln(p_max / m) + (1/m) sum_k p_k (z_max - z_k).

    Returns (entropies [..., n] float64, m [..., n] float32, or None without ``first_key``); where m = 0 (all the
    mass on the left-out keys, by underflow) H' is not finite: the caller decides. ``scratch(shape, device)``: a
    float32 buffer for p (z_max - z) (default: a new tensor). Equal to -sum p ln p to float32 rounding
    (tests/test_shared_blocks.py), but not used by the metrics: on CPU (ViT-S/14 block, 2 threads) it took 7-9 ms
    against 4-5 ms for ln a times a (five passes over the block, none transcendental, against three)."""
    p, z = (probs, logits) if not first_key else (probs[..., first_key:], logits[..., first_key:])
    z_max, p_max = z.amax(-1, keepdim=True), p.amax(-1).double()  # [..., n, 1], [..., n]
    out = scratch(p.shape, p.device) if scratch is not None else None
    spread = torch.sub(z_max, z, out=out).mul_(p).sum(-1).double()  # [..., n] sum_k p_k (z_max - z_k) >= 0
    if not first_key:
        return spread - p_max.log(), None
    mass = p.sum(-1)
    m = mass.double()
    return spread / m - (p_max / m).log(), mass


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
