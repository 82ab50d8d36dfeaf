"""Linear CKA between every encoder layer of a model (A) and every encoder layer of a reference (B), or of itself.

Definition (Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019, Sections 3-4):
for features X [n, D_A] and Y [n, D_B] of the same n images, centred over the images,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)        (linear kernel; = HSIC(K, L) / sqrt(HSIC(K, K)
                                                                 HSIC(L, L)) with K = X X^T, L = Y Y^T)

as in their demo, google-research/google-research ``representation_similarity/Demo.ipynb``, ``feature_space_linear_cka``
(``debiased=False``). Its use for ViTs follows Walmer et al., "Teaching Matters" (CVPR 2023), code
mwalmer-umd/vit_analysis ``cka/cka_main.py``, ``CKA.compare`` (called by ``cka/cka_runner.py``, ``run_cka``): every
hooked layer of model 1 against every hooked layer of model 2 on the same images, the MAE unmasked
(``mask_ratio=0.0``), a heat map with model 1's layers on the y axis (``CKA.plot_results``, ``origin='lower'``).

Two estimators (``estimator``):

* ``'exact'`` (default): the formula above on all images, streamed through sums: per layer sum x, and the
  cross-products sum x x'^T of every needed layer pair (A = B: the pairs i <= j; A != B: every (i, j), plus each
  side's own x x^T). At the end each block is centred, C = S - n m m'^T, and CKA = ||C_ij||_F^2 /
  (||C_ii||_F ||C_jj||_F). Memory is width^2 per pair and constant in the number of images (valid for tens of
  thousands of images; pooled features are buffered, at most ``BUFFER_BYTES``, and added to the sums a few
  thousand images at a time, so that the groups' sums below are touched once per buffer, not per batch); features
  are pooled per image (``features``: ``'cls'`` the CLS token, ``'mean'`` the mean of the patch tokens, prefix
  tokens left out).
* ``'minibatch'``: Nguyen, Raghu & Kornblith, "Do Wide and Deep Networks Learn the Same Things?" (ICLR 2021),
  Section 3.1 (Eq. 3, the equation vit_analysis's ``CKA._HSIC`` cites): on every probe batch of n >= 4 images the
  unbiased HSIC_1 of Song et al. (JMLR 2012),

      HSIC_1(K, L) = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),

  K~, L~ the linear Gram matrices with zero diagonals, and CKA = mean_b HSIC_1(K_b, L_b) /
  sqrt(mean_b HSIC_1(K_b, K_b) mean_b HSIC_1(L_b, L_b)). The estimate depends on the batches: the rows record
  ``minibatch_size`` (the probe's batch size) and ``minibatches``; under torchrun the batches are each process's.
  Batches of fewer than 4 images (a short last batch) are left out (``skipped_images``, and a warning). Also
  ``features='tokens'``: all tokens of the block output (prefix tokens included) flattened into one vector per
  image (vit_analysis's default ``mode='all'``, ``X.flatten(1)``); its Gram matrix is made inside the forward hook.
  Features are centred per batch before the Gram matrix (HSIC_1 does not change: it is invariant to adding a
  constant vector to every feature) for float64 accuracy.

Layers: block outputs (the residual stream after block l, before the final norm; ``layer`` = l of A,
``ref_layer`` = l of B, both 0-based). Without a reference B is the model itself, read from the same forward pass
(never run twice); a reference (``reference``) runs in the same pass on the unmasked image at the probed model's
patch grid (``maeprobe.reference``). Masking: unmasked by default (``mask_ratio`` 0, as vit_analysis).

Differences from vit_analysis (README fidelity notes): its layers are the outputs of every block's ``norm1`` and
``norm2`` (``layer_jsons/cka_all/*.json``: two LayerNorm outputs per block); it uses only the minibatch estimator, on
all tokens flattened by default; and it shifts and scales each batch's Gram matrix to [0, 1] (``K - K.min()``,
``K / K.max()``) before HSIC_1. The shift changes nothing (HSIC_1 ignores constants added to K), the per-batch scale
weights each batch's HSIC by 1 / (max K max L): maeprobe keeps the plain linear kernel of Nguyen et al.

Intervals: a delete-a-group jackknife over G fixed groups of whole independent units (``metrics.base.unit_groups``,
as the spectrum): the statistic without group g, for each non-empty g, gives se = sqrt((G'-1)/G' sum_g (r_g -
mean r)^2) and the interval estimate +- t(0.975, G'-1) se (not clipped to [0, 1]). Exact: each group's own sums are
kept (memory (1 + G) x the sums, checked against ``MAEPROBE_MAX_METRIC_MEMORY`` before anything is allocated; fewer
layers, fewer groups, ``bootstrap=0`` or ``estimator='minibatch'`` need less). Minibatch: the replicate of group g
sums each batch's HSIC_1 recomputed without g's images (a batch left with fewer than 4 images drops out of that
replicate): G x layers_A x layers_B numbers. ``bootstrap=0`` turns intervals off.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._lazy import lazy
from ..errors import MaeprobeError
from .base import MIN_UNITS, Reducer, check_bootstrap, unit_groups, units_of
from .registry import FigureSpec, MetricSpec, checkpoint_name, images_text, option, register

np = lazy("numpy")
torch = lazy("torch")
_capture = lazy("maeprobe.capture")
_reference = lazy("maeprobe.reference")

FEATURES = ("cls", "mean", "tokens")
ESTIMATORS = ("exact", "minibatch")
MIN_BATCH = 4  # HSIC_1 divides by n (n - 3): a batch needs at least 4 images
SELF = "(itself)"  # the ``reference`` column when the model is compared with itself
# Exact estimator: pooled features are buffered up to this many bytes and added to the sums together. With groups,
# every addition touches each group's width^2 sums (6 GB for ViT-B with 16 groups): once per buffer, not per batch.
BUFFER_BYTES = 128 << 20


def unbiased_hsic(K: torch.Tensor, L: torch.Tensor, *, paired: bool = False) -> torch.Tensor:
    """HSIC_1 (Song et al. 2012) of Gram matrices: every pair ([La, n, n], [Lb, n, n] -> [La, Lb]) or, with
    ``paired``, layer by layer ([L, n, n] twice -> [L]). Diagonals are ignored (set to zero); float64 inside."""
    n = K.shape[-1]
    if n < MIN_BATCH:
        raise MaeprobeError(f"unbiased HSIC needs at least {MIN_BATCH} images per batch, got {n}")
    K, L = K.double().clone(), L.double().clone()
    K.diagonal(dim1=-2, dim2=-1).zero_()
    L.diagonal(dim1=-2, dim2=-1).zero_()
    rows_k, rows_l = K.sum(-1), L.sum(-1)  # [La, n], [Lb, n]: K~1, L~1
    total_k, total_l = rows_k.sum(-1), rows_l.sum(-1)  # [La], [Lb]: 1'K~1, 1'L~1
    if paired:
        trace = (K * L).sum((-2, -1))  # [L]: tr(K~ L~) (symmetric matrices)
        cross = (rows_k * rows_l).sum(-1)  # [L]: 1'K~L~1
        totals = total_k * total_l
    else:
        trace = torch.einsum("iab,jab->ij", K, L)  # [La, Lb]
        cross = rows_k @ rows_l.T  # [La, Lb]
        totals = torch.outer(total_k, total_l)
    return (trace + totals / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))


def gram(x: torch.Tensor) -> torch.Tensor:
    """Linear Gram matrices of features centred over the batch: [L, n, D] -> [L, n, n], float64."""
    x = x.double()
    x = x - x.mean(-2, keepdim=True)
    return x @ x.transpose(-1, -2)


def jackknife_interval(estimate: np.ndarray, replicates: list) -> tuple[np.ndarray, np.ndarray]:
    """Delete-a-group jackknife t interval of ``estimate`` from the statistic without each group; NaN with fewer
    than ``MIN_UNITS`` replicates."""
    if len(replicates) < MIN_UNITS:
        return np.full(estimate.shape, np.nan), np.full(estimate.shape, np.nan)
    from scipy.stats import t as student_t

    reps = np.asarray(replicates)  # [G', ...]
    k = len(reps)
    with np.errstate(invalid="ignore"):
        se = np.sqrt((k - 1) / k * ((reps - reps.mean(0)) ** 2).sum(0))
    half = float(student_t.ppf(0.975, k - 1)) * se
    return estimate - half, estimate + half


# A layer whose centred second moment is this small against its uncentred one has no variance over the images
# (identical images: what is left is float32 rounding of batched features, which made CKA 1.07): CKA is undefined.
NO_VARIANCE = 1e-10  # ||C||_F^2 <= 1e-10 ||S||_F^2, i.e. a relative spread below 1e-5


def _no_variance(centred: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """``centred`` (||C||_F^2 per layer) with NaN where the layer has no variance (``NO_VARIANCE``)."""
    return np.where(centred <= NO_VARIANCE * raw, np.nan, centred)


class LinearCKA(Reducer):
    """Streaming linear CKA between ``num_a`` feature sets of width ``width_a`` (side A) and ``num_b`` of width
    ``width_b`` (side B; None: B is A itself), from features (``add_features``, [layers, n, width]) or, for the
    minibatch estimator, Gram matrices (``add_grams``). ``matrix()`` is the [num_a, num_b] CKA; ``interval()``
    its jackknife bounds (``groups`` > 0). Mergeable: every state is a sum."""

    metric = "cka"
    module = "encoder"

    def __init__(self, num_a: int, width_a: int, num_b: int | None = None, width_b: int | None = None, *,
                 estimator: str = "exact", groups: int = 0, batch_size: int = 1, extra_bytes: int = 0) -> None:
        super().__init__()
        self.estimator = _choice("estimator", estimator, ESTIMATORS)
        self.self_mode = num_b is None
        self.num_a, self.width_a = int(num_a), int(width_a)
        self.num_b, self.width_b = (self.num_a, self.width_a) if self.self_mode else (int(num_b), int(width_b))
        self.groups = int(groups)
        self.batch_size: int | None = None  # minibatch: the probe's batch size (``check_memory``), else the largest
        self._buffer: list[tuple] = []  # exact: (xa, xb, units) of batches not yet in the sums
        self._buffered = 0
        row_bytes = 8 * (self.num_a * self.width_a + (0 if self.self_mode else self.num_b * self.width_b))
        self._buffer_images = max(1, BUFFER_BYTES // row_bytes)
        self._check_size(batch_size, extra_bytes)  # before anything is allocated
        G = self.groups
        self.add_state("count", torch.zeros(()))
        if G:
            self.add_state("g_count", torch.zeros(G))  # images of each group
        La, Da, Lb, Db = self.num_a, self.width_a, self.num_b, self.width_b
        if self.estimator == "exact":  # with groups, each group's own sums too ("g_" + name)
            shapes = {"sum_a": (La, Da)}
            if self.self_mode:
                shapes.update({f"prod{i}": (Da, (La - i) * Da) for i in range(La)})  # X_i^T [X_i ... X_last]
            else:
                shapes.update({"sum_b": (Lb, Db), "xx": (La, Da, Da), "yy": (Lb, Db, Db), "xy": (La * Da, Lb * Db)})
            for name, shape in shapes.items():
                self.add_state(name, torch.zeros(shape))
                if G:
                    self.add_state("g_" + name, torch.zeros(G, *shape))
        else:  # sums over batches of HSIC_1; with groups, the same sums without each group ("drop_" + name)
            shapes = {"hsic_xy": (La, Lb)} if self.self_mode else {"hsic_xy": (La, Lb), "hsic_xx": (La,),
                                                                    "hsic_yy": (Lb,)}
            shapes["batches"] = ()
            for name, shape in shapes.items():
                self.add_state(name, torch.zeros(shape))
                if G:
                    self.add_state("drop_" + name, torch.zeros(G, *shape))
            self.add_state("skipped", torch.zeros(()))

    # --- memory ------------------------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes of the sums (float64), the groups' included."""
        La, Da, Lb, Db = self.num_a, self.width_a, self.num_b, self.width_b
        if self.estimator == "exact":
            entries = (Da * Da * La * (La + 1) // 2 + La * Da) if self.self_mode else \
                (La * Da * Da + Lb * Db * Db + La * Lb * Da * Db + La * Da + Lb * Db)
        else:
            entries = La * Lb + La + Lb + 3
        return (1 + self.groups) * entries * 8

    def working_bytes(self, batch_size: int) -> int:
        """Bytes held beside the sums: exact, about two copies of the largest block (a product being added, a
        centred copy at the end) and the buffered features; minibatch, the Gram matrices of a batch and a copy
        without one group."""
        La, Da, Lb, Db = self.num_a, self.width_a, self.num_b, self.width_b
        if self.estimator == "exact":  # and the buffer of features, concatenated once when added (two copies)
            largest = La * Da * Da if self.self_mode else max(La * Lb * Da * Db, La * Da * Da, Lb * Db * Db)
            return 2 * largest * 8 + 2 * (self._buffer_images + batch_size) * (La * Da + Lb * Db) * 8
        return 4 * (La + Lb) * batch_size * batch_size * 8 + batch_size * (La * Da + Lb * Db) * 8

    def _memory_text(self, batch_size: int) -> str:
        hints = ["fewer layers or ref_layers"] + (["fewer groups", "bootstrap=0"] if self.groups else []) + \
            (["estimator='minibatch'"] if self.estimator == "exact" else [])
        pairs = f"{self.num_a} x {self.num_b} layer pairs" + (" (A = B: i <= j kept)" if self.self_mode else "")
        return (f"cka: its sums ({self.estimator}: {pairs}, widths {self.width_a} and {self.width_b}, x (1 + "
                f"{self.groups}) groups x 8 bytes) and working memory for batches of {batch_size} image(s), in bytes; "
                f"{', '.join(hints[:-1])} or {hints[-1]} need less")

    def _check_size(self, batch_size: int, extra: int = 0) -> None:
        from ..limits import check

        check("MAEPROBE_MAX_METRIC_MEMORY", self.state_bytes() + self.working_bytes(batch_size) + extra,
              self._memory_text(batch_size))

    # --- streaming ---------------------------------------------------------------------------------
    def add_features(self, xa: torch.Tensor, xb: torch.Tensor | None, units) -> None:
        """Add one batch: ``xa`` [num_a, n, width_a] and ``xb`` [num_b, n, width_b] (None when B is A), ``units``
        [n] the independent unit of every image (``units_of``). The minibatch estimator takes their Gram matrices."""
        xa = xa.detach().double().cpu()  # [La, n, Da]
        xb = None if xb is None or self.self_mode else xb.detach().double().cpu()  # [Lb, n, Db]
        if xa.shape[0] != self.num_a or xa.shape[-1] != self.width_a or (xb is not None and (
                xb.shape[0] != self.num_b or xb.shape[-1] != self.width_b or xb.shape[1] != xa.shape[1])):
            raise MaeprobeError(f"cka: features of shape {tuple(xa.shape)} / {None if xb is None else tuple(xb.shape)}"
                                f" do not fit {self.num_a} x {self.width_a} / {self.num_b} x {self.width_b}")
        if xb is None and not self.self_mode:
            raise MaeprobeError("cka: this reducer compares with a reference; give its features (xb)")
        if self.estimator == "minibatch":
            self.add_grams(gram(xa), None if xb is None else gram(xb), units)
            return
        units = torch.as_tensor(units).cpu()
        self._units.update(int(u) for u in units.tolist())
        self._buffer.append((xa, xb, units))
        self._buffered += xa.shape[1]
        if self._buffered >= self._buffer_images:
            self._flush()

    def _flush(self) -> None:
        """Add the buffered features to the sums (the totals and each group's)."""
        if not self._buffer:
            return
        buffer, self._buffer, self._buffered = self._buffer, [], 0
        xa = torch.cat([part[0] for part in buffer], 1)  # [La, n, Da]
        xb = None if self.self_mode else torch.cat([part[1] for part in buffer], 1)  # [Lb, n, Db]
        units = torch.cat([part[2] for part in buffer])  # [n]
        del buffer
        self._state["count"] += xa.shape[1]
        self._add_exact(xa, xb, None)
        if self.groups:
            groups = unit_groups(units, self.groups)
            for g in groups.unique().tolist():
                keep = groups == g
                self._state["g_count"][g] += int(keep.sum())
                self._add_exact(xa[:, keep], None if xb is None else xb[:, keep], g)

    def _add_exact(self, xa: torch.Tensor, xb: torch.Tensor | None, group: int | None) -> None:
        """Add the sums of ``xa`` [La, n, Da] (and ``xb`` [Lb, n, Db]) to the totals or to group ``group``'s."""
        state = self._state

        def add(name: str, value: torch.Tensor) -> None:
            if group is None:
                state[name] += value
            else:
                state["g_" + name][group] += value

        n, Da = xa.shape[1], self.width_a
        add("sum_a", xa.sum(1))  # [La, Da]
        flat_a = xa.transpose(0, 1).reshape(n, -1)  # [n, La * Da]: layer i in columns i*Da ... (i+1)*Da
        if self.self_mode:
            for i in range(self.num_a):
                add(f"prod{i}", xa[i].T @ flat_a[:, i * Da:])  # [Da, (La - i) Da]
            return
        add("sum_b", xb.sum(1))  # [Lb, Db]
        add("xx", xa.transpose(1, 2) @ xa)  # [La, Da, Da]
        add("yy", xb.transpose(1, 2) @ xb)  # [Lb, Db, Db]
        add("xy", flat_a.T @ xb.transpose(0, 1).reshape(n, -1))  # [La Da, Lb Db]

    def add_grams(self, ka: torch.Tensor, kb: torch.Tensor | None, units) -> None:
        """Minibatch estimator: add one batch's linear Gram matrices ``ka`` [num_a, n, n] and ``kb`` [num_b, n, n]
        (None when B is A). A batch of fewer than 4 images is left out (counted in ``skipped_images``)."""
        if self.estimator != "minibatch":
            raise MaeprobeError("cka: Gram matrices feed the minibatch estimator only (estimator='minibatch')")
        ka = ka.detach().double().cpu()  # [La, n, n]
        kb = None if kb is None or self.self_mode else kb.detach().double().cpu()  # [Lb, n, n]
        if kb is None and not self.self_mode:
            raise MaeprobeError("cka: this reducer compares with a reference; give its Gram matrices (kb)")
        n = ka.shape[-1]
        self._track_batch(n)
        if n < MIN_BATCH:
            self._state["skipped"] += n
            return
        units = torch.as_tensor(units).cpu()
        self._units.update(int(u) for u in units.tolist())
        self._state["count"] += n
        values = self._batch_hsic(ka, kb)
        for name, value in values.items():
            self._state[name] += value
        if not self.groups:
            return
        groups = unit_groups(units, self.groups)
        present = groups.unique()
        self._state["g_count"] += torch.bincount(groups, minlength=self.groups).double()
        absent = torch.ones(self.groups, dtype=torch.bool)
        absent[present] = False
        for name, value in values.items():  # groups this batch has no image of: the whole batch counts
            self._state["drop_" + name][absent] += value
        for g in present.tolist():  # the batch without group g's images
            keep = groups != g
            if int(keep.sum()) < MIN_BATCH:
                continue
            sub_a = ka[:, keep][:, :, keep]  # [La, m, m]
            sub_b = None if kb is None else kb[:, keep][:, :, keep]
            for name, value in self._batch_hsic(sub_a, sub_b).items():
                self._state["drop_" + name][g] += value

    def _batch_hsic(self, ka: torch.Tensor, kb: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One batch's HSIC_1 sums: every pair (A = B: [La, La], its diagonal the self terms) and each side's own."""
        if kb is None:
            return {"hsic_xy": unbiased_hsic(ka, ka), "batches": torch.ones((), dtype=torch.float64)}
        return {"hsic_xy": unbiased_hsic(ka, kb), "hsic_xx": unbiased_hsic(ka, ka, paired=True),
                "hsic_yy": unbiased_hsic(kb, kb, paired=True), "batches": torch.ones((), dtype=torch.float64)}

    def _track_batch(self, n: int) -> None:
        if self.estimator == "minibatch" and getattr(self, "_probe_batch", None) is None:
            self.batch_size = max(self.batch_size or 0, int(n))

    def state(self) -> dict:
        self._flush()
        return super().state()

    def all_reduce(self, group=None) -> None:
        self._flush()
        super().all_reduce(group)

    def merge(self, other: "LinearCKA") -> "LinearCKA":
        self._flush()
        other._flush()
        super().merge(other)
        if other.batch_size is not None:
            self.batch_size = max(self.batch_size or 0, other.batch_size)
        return self

    # --- results -----------------------------------------------------------------------------------
    def _get(self, group: int | None):
        """name -> the totals as numpy, or (group given) the statistic's inputs without that group."""
        state = self._state
        if group is None:
            return lambda name: state[name].numpy()
        if self.estimator == "exact":
            return lambda name: (state[name] - state["g_" + name][group]).numpy()
        return lambda name: state["drop_" + name][group].numpy()

    def _matrix(self, get) -> np.ndarray:
        """[num_a, num_b] CKA from sums read through ``get``."""
        La, Da, Lb, Db = self.num_a, self.width_a, self.num_b, self.width_b
        if self.estimator == "minibatch":
            hxy = get("hsic_xy")
            hx, hy = (np.diag(hxy), np.diag(hxy)) if self.self_mode else (get("hsic_xx"), get("hsic_yy"))
        else:
            n = float(get("count"))
            mean_a = get("sum_a") / n  # [La, Da]
            if self.self_mode:
                hxy, raw_x = np.empty((La, La)), np.empty(La)
                for i in range(La):
                    product = get(f"prod{i}")  # [Da, (La-i) Da], uncentred
                    raw_x[i] = (product.reshape(Da, La - i, Da)[:, 0] ** 2).sum()  # ||S_ii||_F^2
                    centred = product - n * np.outer(mean_a[i], mean_a[i:].reshape(-1))  # [Da, (La-i) Da]
                    hxy[i, i:] = (centred.reshape(Da, La - i, Da) ** 2).sum((0, 2))  # ||C_ij||_F^2, j >= i
                    hxy[i:, i] = hxy[i, i:]
                hx = hy = _no_variance(np.diag(hxy), raw_x)
            else:
                mean_b = get("sum_b") / n  # [Lb, Db]
                centred = get("xy") - n * np.outer(mean_a.reshape(-1), mean_b.reshape(-1))  # [La Da, Lb Db]
                hxy = (centred.reshape(La, Da, Lb, Db) ** 2).sum((1, 3))  # [La, Lb]
                hx = ((get("xx") - n * np.einsum("li,lj->lij", mean_a, mean_a)) ** 2).sum((1, 2))  # [La]
                hy = ((get("yy") - n * np.einsum("li,lj->lij", mean_b, mean_b)) ** 2).sum((1, 2))  # [Lb]
                hx, hy = _no_variance(hx, (get("xx") ** 2).sum((1, 2))), _no_variance(hy, (get("yy") ** 2).sum((1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return hxy / np.sqrt(np.outer(hx, hy))

    def matrix(self) -> np.ndarray:
        """The [num_a, num_b] linear CKA matrix (NaN where a side has no variance, or a minibatch self-HSIC <= 0)."""
        self._flush()
        if self.estimator == "exact" and self._state["count"].item() < 2:
            raise MaeprobeError("cka needs at least 2 images")
        if self.estimator == "minibatch" and self._state["batches"].item() < 1:
            raise MaeprobeError(f"cka (minibatch): no batch of at least {MIN_BATCH} images was processed; use "
                                f"batch_size >= {MIN_BATCH}")
        return self._matrix(self._get(None))

    def interval(self, estimate: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Delete-a-group jackknife 95% bounds of ``matrix()`` (NaN without groups or with fewer than 3)."""
        estimate = self.matrix() if estimate is None else estimate
        self._flush()
        if not self.groups:
            return np.full(estimate.shape, np.nan), np.full(estimate.shape, np.nan)
        counts = self._state["g_count"].numpy()
        total = self._state["count"].item()
        reps = []
        for g in range(self.groups):
            if counts[g] <= 0:
                continue
            if self.estimator == "exact" and total - counts[g] < 2:
                continue
            if self.estimator == "minibatch" and self._state["drop_batches"][g].item() < 1:
                continue
            reps.append(self._matrix(self._get(g)))
        return jackknife_interval(estimate, reps)


class CKA(LinearCKA):
    """Linear CKA of every (encoder layer of ``model``, encoder layer of ``reference``) pair; without a reference,
    of the model's layers against each other (one forward pass)."""

    def __init__(self, model, reference=None, *, layers=None, ref_layers=None, features: str = "mean",
                 estimator: str = "exact", groups: int = 16, bootstrap: int = 0, bootstrap_seed: int = 0,
                 reference_name: str = "ref") -> None:
        self.features = _choice("features", features, FEATURES)
        estimator = _choice("estimator", estimator, ESTIMATORS)
        if self.features == "tokens" and estimator == "exact":
            raise MaeprobeError("features='tokens' needs estimator='minibatch' (exact CKA keeps width^2 sums per "
                                "layer pair, and a token-level feature is tokens x width wide)")
        bootstrap, bootstrap_seed, groups = check_bootstrap(bootstrap, bootstrap_seed, groups)
        self.layers = _capture.resolve_layers(model, "encoder", layers)
        self.num_prefix = model.num_prefix_tokens
        self._check_cls(model, "model")
        tokens_a = model.config.num_patches + self.num_prefix
        if reference is None:
            if ref_layers is not None:
                raise MaeprobeError("ref_layers: applies to a reference model; without one both axes are the "
                                    "model's layers (layers)")
            self.reference, self.ref_layers, self.reference_label = None, list(self.layers), SELF
            self.ref_prefix, self._ref_feature_bytes = self.num_prefix, 0
            num_b = width_b = None
        else:
            self.ref_layers = _capture.resolve_layers(reference, "encoder", _ref_layers("ref_layers", ref_layers))
            self._check_cls(reference, "reference")
            self.reference = _reference.Reference(
                reference_name, reference, _capture.CaptureRequest.of(features={"encoder": self.ref_layers}))
            info = getattr(reference, "checkpoint", None)
            self.reference_label = info.name if info else reference_name
            self.ref_prefix = reference.num_prefix_tokens
            # the reference's block outputs stay in its cache for the batch (float32), at the probed patch grid
            self._ref_feature_bytes = len(self.ref_layers) * (model.config.num_patches + self.ref_prefix) * \
                reference.config.embed_dim * 4
            num_b, width_b = len(self.ref_layers), reference.config.embed_dim
        # token features: one layer's [n, tokens x width] float64 copy while its Gram matrix is made
        self._token_bytes = tokens_a * model.config.embed_dim * 8 if self.features == "tokens" else 0
        width_a = model.config.embed_dim
        if self.features == "tokens":  # the sums never see the width: Gram matrices only
            width_a, width_b = 1, (None if num_b is None else 1)
        self._pending: dict = {}
        self._probe_batch = None
        super().__init__(len(self.layers), width_a, num_b, width_b, estimator=estimator,
                         groups=groups if bootstrap else 0, extra_bytes=self._ref_feature_bytes + self._token_bytes)

    def _check_cls(self, model, what: str) -> None:
        if self.features == "cls" and not model.config.class_token:
            raise MaeprobeError(f"features='cls': the {what} has no CLS token; use features='mean'")

    def check_memory(self, *, mask_ratio: float = 0.0, batch_size: int = 1) -> None:
        self._probe_batch = int(batch_size)
        if self.estimator == "minibatch":
            self.batch_size = int(batch_size)  # the minibatches are the probe's batches
        self._check_size(batch_size, batch_size * (self._ref_feature_bytes + self._token_bytes))

    def request(self) -> _capture.CaptureRequest:
        return _capture.CaptureRequest.of(features={"encoder": self.layers})

    def consumes(self):
        return {("features", "encoder", layer) for layer in self.layers}

    def _digest(self, tokens: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """[B, N, D] block output -> pooled [B, D] (``cls``, ``mean`` of patch tokens) or, for ``tokens``, the
        Gram matrix [B, B] of all tokens flattened (centred over the batch), float64 on the CPU."""
        if self.features == "cls":
            return tokens[:, 0].double().cpu()
        if self.features == "mean":
            return tokens[:, num_prefix:].double().mean(1).cpu()
        return gram(tokens.flatten(1).double().cpu().unsqueeze(0))[0]  # [B, B]

    def consume(self, kind, module, layer, tensor, cache) -> None:
        self._pending[layer] = self._digest(tensor, self.num_prefix)  # the block output itself is not kept

    def update(self, cache: _capture.ActivationCache) -> None:
        pending, self._pending = self._pending, {}
        side_a = []
        for layer in self.layers:
            value = pending.get(layer)
            if value is None:  # not digested in the hook: the [B, N, D] block output from the cache
                value = self._digest(cache.features[("encoder", layer)], self.num_prefix)
            side_a.append(value)
        side_b = None
        if self.reference is not None:
            ref_cache = cache.references[self.reference.name]
            side_b = torch.stack([self._digest(ref_cache.features[("encoder", layer)], self.ref_prefix)
                                  for layer in self.ref_layers])  # [Lb, B, Db] or [Lb, B, B]
        side_a = torch.stack(side_a)  # [La, B, Da] or [La, B, B]
        units = units_of(cache)
        if self.features == "tokens":
            self.add_grams(side_a, side_b, units)
        else:
            self.add_features(side_a, side_b, units)

    def settings(self) -> dict:
        minibatch = self.estimator == "minibatch"
        return {"reference": self.reference_label, "features": self.features, "estimator": self.estimator,
                "minibatch_size": float(self.batch_size) if minibatch and self.batch_size else float("nan"),
                "minibatches": float(self._state["batches"].item()) if minibatch else float("nan"),
                "skipped_images": float(self._state["skipped"].item()) if minibatch else float("nan")}

    def rows(self) -> list[dict]:
        value = self.matrix()
        low, high = self.interval(value)
        n = int(self._state["count"].item())
        return [{"metric": self.metric, "module": "encoder", "layer": a, "head": None, "ref_layer": b,
                 "value": float(value[i, j]), "std": float("nan"), "ci_low": float(low[i, j]),
                 "ci_high": float(high[i, j]), "n_images": n}
                for i, a in enumerate(self.layers) for j, b in enumerate(self.ref_layers)]


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        from ..validate import short

        raise MaeprobeError(f"{name}: expected {', '.join(repr(c) for c in choices)}, got {short(value, 40)}")
    return value


def _ref_layers(name: str, value):
    """``ref_layers`` as the API takes it: None (all) or a non-empty list of whole numbers."""
    from ..validate import integer, short

    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise MaeprobeError(f"{name}: expected a list of 0-based indices (e.g. [0, 5]) or None, got {short(value, 60)}")
    out = [integer(name, v) for v in value]
    if not out:
        raise MaeprobeError(f"{name}: empty; give at least one index, or None for all")
    return out


def parse_layers(text: str):
    """``--ref-layers`` as typed: 'all' (or '') -> None; '0,5,11', '0-3' or '-1' -> a list."""
    import re

    from ..validate import one_line

    if text is None or text.strip().lower() in ("", "all"):
        return None
    layers = []
    for part in text.replace(" ", "").split(","):
        span = re.fullmatch(r"(\d{1,6})-(\d{1,6})", part)
        if span and int(span[1]) <= int(span[2]):
            layers += list(range(int(span[1]), int(span[2]) + 1))
        elif re.fullmatch(r"-?\d{1,6}", part):
            layers.append(int(part))
        else:
            raise MaeprobeError(f"--ref-layers: cannot read {one_line(part, 40)!r}; use e.g. 0,5,11 or 0-3 "
                                "(0-based), or all")
    return layers


def check_ref_layers(name: str, value):
    return _ref_layers(name, value)


@dataclass(frozen=True)
class CKAOptions:
    features: str = option("mean", "Per-image features of a block output: cls (the CLS token), mean (of the patch "
                                    "tokens) or tokens (all tokens flattened; minibatch only).", choices=FEATURES)
    estimator: str = option("exact", "exact: linear CKA of all images from streamed sums (width^2 per layer pair); "
                                     "minibatch: mean unbiased HSIC over the probe's batches (Nguyen et al. 2021).",
                            choices=ESTIMATORS)
    ref_layers: list | None = option(None, "0-based encoder layers of the reference (default all; without a "
                                           "reference the model's --layers).", cli_default="all",
                                     parse=parse_layers, check=check_ref_layers)
    groups: int = option(16, "Fixed groups of whole independent units that the interval resamples or leaves out in "
                             "turn.", low=1, high=4096)


def _estimator_text(first) -> str:
    import math

    if first["estimator"] != "minibatch":
        return "exact"
    size = first.get("minibatch_size")
    return "minibatch HSIC_1" + (f" over batches of {int(size)}" if size is not None and not math.isnan(size) else "")


def _report(table) -> list[str]:
    from ..validate import one_line

    lines = []
    for reference, rows in table.groupby("reference", sort=False):
        first = rows.iloc[0]
        against = "itself" if reference == SELF else one_line(reference, 120)
        lines.append(f"{checkpoint_name(rows)}: linear CKA, its layers (rows) vs the layers of {against} (columns); "
                     f"features {first['features']}, {_estimator_text(first)}; {images_text(rows)}")
        matrix = rows.astype({"layer": int, "ref_layer": int}).pivot(index="layer", columns="ref_layer", values="value")
        lines.append(matrix.to_string(float_format="%.3f"))
    return lines


def skipped_warning(table) -> str | None:
    """The warning for images of batches too small for the minibatch estimator (left out of it)."""
    if "skipped_images" not in table:
        return None
    skipped = table["skipped_images"].fillna(0).max()
    if not skipped:
        return None
    return (f"cka: {int(skipped)} image(s) in batches of fewer than {MIN_BATCH} were left out of the minibatch "
            f"estimate (the unbiased HSIC needs {MIN_BATCH} images per batch); choose a batch_size that leaves no "
            "such batch")


SPEC = register(MetricSpec(
    name="cka", function="cka", column="cka", reducer=CKA, options=CKAOptions,
    summary="Linear CKA between every encoder layer of a model and every layer of a reference (or of itself).",
    doc="""Linear CKA (Kornblith et al. 2019) between every encoder layer of ``model`` (``layer``) and every encoder
    layer of ``reference`` (``ref_layer``), as Walmer et al. (Teaching Matters, CVPR 2023) compare ViTs: block
    outputs of the same images, one row per layer pair. ``reference``: a loaded model, a checkpoint path or
    ``'dino'``; None (default): the model against itself, from one forward pass. ``estimator='exact'`` streams
    the cross-covariances of pooled features (``features`` 'cls' or 'mean'); ``'minibatch'`` averages the
    unbiased HSIC over the probe's batches (Nguyen et al. 2021; depends on ``batch_size``, recorded), also for
    ``features='tokens'``. Intervals: delete-a-group jackknife over ``groups`` groups of independent units.""",
    mask_ratio=0.0, per_image_mask=False, needs_reference=True, reference_optional=True, block_queries=False,
    layers_help="0-based encoder layers of the model (default all).", detail_rows=("cka",), report=_report,
    warn=skipped_warning,
    figures=(FigureSpec("cka", "Linear CKA", "heatmap", default=True,
                        settings={"features": "mean", "estimator": "exact", "minibatch_size": None}),)))
