"""Attention NMI per (layer, head): the normalised mutual information between query position and key position.

Park et al., "What Do Self-Supervised Vision Transformers Learn?" (ICLR 2023), Section 2 (self-attentions of CL
"collapse into homogeneity": the same map for every query, so the key says nothing about the query; NMI near 0).
Source read: naver-ai/cl-vs-mim, ``self_attention_analysis.ipynb``, cell "Normalized Mutual Information" (lines
724-780 of the notebook file at commit eafe516): ``calculate_nmi(attn)`` and the loop that feeds it.

Definition. One image, one head; queries q (``Nq`` of them) and keys k (``Nk``); ``a_qk`` the attention row of q.
The query is drawn uniformly, p(q) = 1/Nq, and the key from the row, p(k|q) = a_qk, so p(k) = (1/Nq) sum_q a_qk:

    H(Q) = ln Nq,   H(K) = -sum_k p(k) ln p(k),   H(K|Q) = (1/Nq) sum_q -sum_k a_qk ln a_qk (mean row entropy),
    I(Q;K) = H(K) - H(K|Q),   NMI = I(Q;K) / sqrt(H(Q) H(K)).

``calculate_nmi`` computes I as sum_qk p(q) a_qk ln(a_qk / p(k)), the same quantity; natural logarithms (the
ratio does not depend on the base). Per image and head, then averaged over images (the notebook:
``torch.mean(nmi, dim=0)`` over the batch; its figure then averages the heads of a layer, here each head is a row).

Tokens. The notebook drops the CLS token as query and as key (``attn[:, :, 1:, 1:]``) and renormalises each row
over the patch keys (after adding 1e-8 to every entry, which keeps its logarithms finite); maeprobe does the same
by default, dropping every prefix token (CLS, registers, distillation token) and using 0 ln 0 = 0 instead of the
1e-8. ``include_prefix=True`` keeps the prefix tokens as queries and keys (the whole map, rows as they are). A
row whose whole mass sits on prefix keys (only by underflow) counts as uniform over the patch keys, the
notebook's limit as its 1e-8 goes to 0. With a mask, queries and keys are the tokens the layer sees.

Values: uniform attention gives 0 (the ``uniform_level`` of every row), rows one-hot on distinct keys give 1 (here
Nq = Nk). Where H(K) = 0 (every query on one key) or Nq = 1 the ratio is 0/0: reported as 0 (no information).

Block path: no N x N map. Per layer the rows come in query blocks (``AttentionRows``); each block adds its row
entropies to H(K|Q) and its column sums to p(k), both per (image, head); H(K) and the ratio follow after the last
block. Working memory beyond the block: [B, heads, keys] float64 column sums and one block-sized float32 buffer
(a ln a), kept across the blocks and layers of a batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .._lazy import lazy
from ..errors import MaeprobeError
from .attention_entropy import alna_sums, block_memo
from .base import BlockVisitor, LayerHeadMean
from .registry import FigureSpec, MetricSpec, check_flag, checkpoint_name, heads_by_layer, images_text, option, register

torch = lazy("torch")
_capture = lazy("maeprobe.capture")


def nmi_from_sums(row_entropy: torch.Tensor, column_mass: torch.Tensor, num_queries: int) -> torch.Tensor:
    """NMI from the sums a pass over the rows collects.

    Args:
        row_entropy: [..., ] sum over the queries of each row's entropy (nats).
        column_mass: [..., Nk] sum over the queries of the rows (each row sums to 1).
        num_queries: Nq, the number of queries summed.

    Returns:
        [...] I(Q;K) / sqrt(H(Q) H(K)) in float64; 0 where H(Q) H(K) = 0; NaN where a probability was NaN. I is
        clamped at 0 (rounding can leave it a hair below for uniform attention).
    """
    p_key = column_mass.double() / num_queries  # [..., Nk] p(k)
    h_key = -torch.special.xlogy(p_key, p_key).sum(-1)  # [...] H(K)
    mutual = (h_key - row_entropy.double() / num_queries).clamp_min(0)  # [...] H(K) - H(K|Q)
    denominator = (h_key * math.log(num_queries)).sqrt()  # [...] sqrt(H(Q) H(K))
    return torch.where(denominator == 0, torch.zeros_like(mutual), mutual / denominator)  # NaN stays NaN


class AttentionNMI(LayerHeadMean):
    """Streaming mean attention NMI (query position vs key position) of every (layer, head) of the encoder or
    decoder."""

    metric = "attention_nmi"
    uniform_level = 0.0

    def __init__(self, model, *, module: str = "encoder", layers=None, include_prefix: bool = False,
                 bootstrap: int = 0, bootstrap_seed: int = 0) -> None:
        if module not in ("encoder", "decoder"):
            raise MaeprobeError(f"module must be 'encoder' or 'decoder', got {module!r}")
        self.module, self.include_prefix = module, check_flag("include_prefix", include_prefix)
        self.layers = _capture.resolve_layers(model, module, layers)
        from ..limits import check_attention

        check_attention(model, module)
        self.num_heads = _capture.blocks_of(model, module)[0].attn.num_heads
        self.num_prefix = int(model.num_prefix_tokens)
        self.tokens = model.config.num_patches + self.num_prefix  # the most a layer sees (no mask)
        super().__init__((len(self.layers), self.num_heads), bootstrap, bootstrap_seed)

    def settings(self) -> dict:
        return {"include_prefix": self.include_prefix}

    def check_memory(self, *, mask_ratio: float = 0.0, batch_size: int = 1) -> None:
        """The per-layer sums: column sums [B, heads, keys] in float64, plus their float32 block partials. (The
        a ln a buffer is one block of rows, as large as the block the capture itself holds and bounded with it.)"""
        from ..limits import check

        need = int(batch_size) * self.num_heads * self.tokens * (8 + 4)
        check("MAEPROBE_MAX_METRIC_MEMORY", need, f"attention NMI's column sums ({batch_size} images x "
                                                  f"{self.num_heads} heads x {self.tokens} keys)")

    def _visitor(self, rows) -> BlockVisitor:
        """NMI per image and head [B, H] (float64) of one layer, from its blocks of query rows.

        Per block of query rows a_q (never modified: a full map's rows are other metrics' too): their entropies and
        their column sums. Without prefix tokens each row is a_q / m_q over the patch keys, m_q its patch mass,
        without forming it: H(a_q / m_q) = -sum_k a_qk ln a_qk / m_q + ln m_q, and the column sums are the m_q^-1
        weighted sum of the rows (one batched matrix-vector product); only a ln a needs a block-sized buffer.
        """
        P = 0 if self.include_prefix else self.num_prefix
        B, H, N, _ = rows.shape
        queries = torch.arange(P, N)
        keys = N - P
        f64 = dict(dtype=torch.float64, device=rows.device)
        row_entropy_sum = torch.zeros(B, H, **f64)  # sum over queries of H(row)
        column_mass = torch.zeros(B, H, keys, **f64)  # sum over queries of the rows
        empty_rows = torch.zeros(B, H, **f64)  # rows with no patch mass (by underflow only)
        tiny = torch.finfo(torch.float32).tiny

        def visit(start, index, probs, log_probs) -> None:  # probs [B, H, n, N]: the next block overwrites it
            patch = probs[..., P:]  # [B, H, n, K] (a view)
            # sum_k -a ln a per row, split at the prefix keys: computed once per block with the entropy metric
            # (``alna_sums``, from the block's log-probabilities)
            prefix_alna, patch_alna = alna_sums(rows, probs, log_probs, self.num_prefix)
            entropy = -(patch_alna.double() + (0.0 if P else prefix_alna.double()))  # [B, H, n]
            if P:
                mass = block_memo(rows, probs, ("mass", P), lambda: patch.sum(-1))  # [B, H, n]
                empty = mass < tiny
                inverse = torch.where(empty, 0.0, 1.0 / mass.clamp_min(tiny))  # [B, H, n]
                column_mass.add_((inverse.unsqueeze(-2) @ patch).squeeze(-2))  # [B, H, 1, n] @ [B, H, n, K]
                entropy = entropy * inverse.double() + torch.where(empty, 0.0, mass.clamp_min(tiny).double().log())
                empty_rows.add_(empty.sum(-1))
            else:  # as a matrix-vector product: half the time of a sum over the strided query axis
                column_mass.add_((patch.new_ones(B, H, 1, patch.shape[2]) @ patch).squeeze(-2))  # [B, H, K]
            row_entropy_sum.add_(entropy.sum(-1))  # [B, H], on the device: no sync

        def result() -> torch.Tensor:
            if P:  # a row with no patch mass is uniform over the K patch keys: entropy ln K, 1/K on every key
                row_entropy_sum.add_(empty_rows * math.log(keys))
                column_mass.add_((empty_rows / keys).unsqueeze(-1))
            return nmi_from_sums(row_entropy_sum, column_mass, len(queries))  # [B, H]

        return BlockVisitor(queries, visit, result, log_probs=True)


@dataclass(frozen=True)
class AttentionNMIOptions:
    module: str = option("encoder", "encoder or decoder.", choices=("encoder", "decoder"))
    include_prefix: bool = option(False, "Keep prefix tokens (CLS, registers) as queries and keys (default: patch "
                                         "queries and patch keys, rows renormalised over patch keys).",
                                  check=check_flag)


def _report(table) -> list[str]:
    flag = str(table["include_prefix"].iloc[0]).strip().lower() in ("true", "1", "1.0")  # a table read from a file
    tokens = "all tokens" if flag else "patch tokens"
    title = (f"{checkpoint_name(table)}: attention NMI (query vs key position, {tokens}) of the "
             f"{table['module'].iloc[0]}, {images_text(table)}, mask ratio {table['mask_ratio'].iloc[0]:g}; "
             "uniform attention: 0, one-hot rows on distinct keys: 1")
    return heads_by_layer(table, title, 3, True)


SPEC = register(MetricSpec(
    name="attn-nmi", function="attention_nmi", column="attention_nmi", reducer=AttentionNMI,
    options=AttentionNMIOptions,
    summary="Attention NMI per layer and head (Park et al. 2023): 0 when every query attends alike, 1 at most.",
    doc="""Normalised mutual information between query and key position per (layer, head) (Park et al., ICLR
    2023, Section 2; naver-ai/cl-vs-mim ``calculate_nmi``): queries uniform, p(k|q) the attention row,
    I(Q;K) / sqrt(H(Q) H(K)), per image, averaged over images. Patch queries and patch keys (rows renormalised over
    patch keys) unless ``include_prefix``. ``uniform_level`` is 0, the value of uniform attention (collapse).""",
    report=_report,
    figures=(FigureSpec("nmi", "Attention NMI per layer", "heads", quantity="attention NMI", units="unitless",
                        module="encoder", default=True,
                        variant=("include_prefix", " (all tokens)", " (patch tokens)", " with prefix tokens")),)))
