"""Per-layer weighted k-NN accuracy: DINO's k-NN classifier on each encoder layer's features of a labelled folder.

Definition (facebookresearch/dino ``eval_knn.py`` at 7c446df, ``knn_classifier``, lines 143-182; the k-NN
evaluation of Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021, Section 4.1):
features are L2-normalised (lines 81-82); a query q and a bank image j have the cosine similarity s_qj; the k bank
images of largest s_qj (``topk``, line 159) vote for their class with weight exp(s_qj / T) (line 165); the
prediction is the class of the largest summed weight (line 173); the value is the top-1 accuracy over the queries
(a fraction in [0, 1]; DINO prints percent).
Defaults k = 20 and T = 0.07 (``--nb_knn``: "20 is usually working the best", ``--temperature`` 0.07, lines
194-197).

Per layer (Walmer et al., "Teaching Matters: Investigating the Role of Supervision in Vision Transformers", CVPR
2023, Section 6, downstream tasks: k-NN classification at each block; mwalmer-umd/vit_analysis at c8810df,
``run_downstream_analysis.py`` ``extract_features`` lines 52-75 and ``run_knn`` lines 117-136, with DINO's
``knn_classifier`` in ``eval_utils.py`` line 44): the features of layer l are the output of encoder block l (a
forward hook on ``blocks[idx]``, ``meta_utils/feature_extractor.py`` line 15; no final norm), its CLS token
(``feats[0][:, 0, :]``, lines 61 and 72): ``knn_features='cls'``, the default. So the last layer's value is not
DINO's own number, which reads the CLS token after the encoder's final norm (``vision_transformer.py`` lines
213-214). ``knn_features='mean'`` takes the mean of the patch tokens instead (prefix tokens dropped; under a
probe mask the visible ones), for models without CLS. (The option is not called ``features``: CKA's option of that
name defaults to ``'mean'``, and ``run`` hands one value of a name to every metric that has it.) The probe's default
mask ratio is 0 (the whole image, as both codes).

Labels and protocol. The metric's images are the labelled folder (``images=DIR``, ``--images DIR``; the folder
that ``reproduce --eval-data`` names), read as torchvision's ``ImageFolder``: an image's class is the sub-folder
one level below the root (its files found recursively), class indices in sorted name order.

* ``DIR/train`` and ``DIR/val`` both present (DINO's ImageNet layout, ``eval_knn.py`` lines 38-39): the bank is
  ``train/<class>/``, the queries ``val/<class>/``; an image elsewhere, or a val class that train lacks, is refused.
* otherwise ``DIR/<class>/``: leave-one-out, every image a query against all the others (the query itself is
  excluded from its neighbours; its other images, e.g. crops of one photo, are not).

``maeprobe.api`` hands the probed images to the reducer (``bind_images``) before the pass; the reducer maps each
probed image (``cache.image_indices``) to its file in the same sorted order as ``data.image_items``.

Ties (DINO leaves them to ``topk`` and an unstable ``sort``): among equal similarities at the k-th place the lower
bank index (sorted path order) is taken; among classes of equal summed weight the lower class index (sorted name).
The weights are computed as exp((s_qj - max_j s_qj) / T) in float64: DINO's weights times one positive number per
query, so the same prediction without overflow for any T.

Interval: a Poisson bootstrap over the queries' independent units (``metrics.base.units_of``; the images of one
unit share every replicate's weight); the bank stays fixed, so the interval says how the accuracy varies with the
queries drawn, given the bank. Rows report the chance level ``chance_level``: the majority-class rate of the
queries (the accuracy of always answering their most frequent class; 1 / n_classes when classes are balanced),
which the figure draws.

Memory. The statistic needs the feature bank: layers x images x width per process, kept on the CPU (float32, or
float16 with ``bank_dtype``), L2-normalised inside the forward hook (``consume``), merged across processes by
concatenation (``all_gather``) and classified once at the end (on the probe's device, queries in blocks of at most
``WORK_BYTES`` of similarities). The bank (twice, for the concatenation at the end), one layer in float32 and the
block are checked against ``MAEPROBE_MAX_METRIC_MEMORY`` before any image is read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .._lazy import lazy
from ..errors import MaeprobeError
from .base import MIN_UNITS, Reducer, check_bootstrap, percentile_interval, poisson_weights, weighted_replicates
from .registry import FigureSpec, MetricSpec, checkpoint_name, images_text, option, per_layer, register

np = lazy("numpy")
torch = lazy("torch")
F = lazy("torch.nn.functional")
dist = lazy("torch.distributed")
_capture = lazy("maeprobe.capture")

FEATURES = ("cls", "mean")
BANK_DTYPES = ("float32", "float16")
MAX_K = 10_000
# Similarities of one block of queries against the bank: as many queries as fit in this many bytes (at least one).
WORK_BYTES = 64 << 20
# Bytes per (query, bank image) entry of a block: the float32 similarity, the comparison that finds ties at the
# k-th place, and, for the rare rows with such ties, a stable sort's values and int64 indices.
ENTRY_BYTES = 20


def _queries_per_block(bank_size: int) -> int:
    """Queries whose similarities to a bank of ``bank_size`` images fit in ``WORK_BYTES`` (at least one)."""
    return max(1, WORK_BYTES // max(1, bank_size * ENTRY_BYTES))


def _check_k(name: str, value) -> int:
    from ..validate import integer

    return integer(name, value, 1, MAX_K)


def _check_temperature(name: str, value) -> float:
    from ..validate import real

    return real(name, value, 0.0, 100.0, lo_open=True)


def _check_choice(choices: tuple[str, ...]):
    def check(name: str, value) -> str:
        if not isinstance(value, str) or value not in choices:
            from ..validate import short

            raise MaeprobeError(f"{name}: expected one of {', '.join(choices)}, got {short(value, 40)}")
        return value

    return check


def top_k(similarity: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest similarities of each row and their columns ([q, M] -> [q, k] twice, largest first); among equal
    values at the k-th place the lower column (``topk`` leaves that choice to the implementation)."""
    values, columns = similarity.topk(k, dim=1)  # [q, k]
    crowded = (similarity >= values[:, -1:]).sum(1) > k  # [q]: the k-th value is shared beyond the k-th place
    if bool(crowded.any()):
        rows = crowded.nonzero().flatten()
        ordered = torch.sort(similarity[rows], dim=1, descending=True, stable=True)  # equal values keep column order
        values[rows], columns[rows] = ordered.values[:, :k], ordered.indices[:, :k]
    return values, columns


def knn_predict(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int, k: int,
                temperature: float, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """DINO's weighted k-NN vote (``eval_knn.py`` ``knn_classifier``) for L2-normalised features.

    Args:
        queries: [Q, D] unit vectors.
        bank: [M, D] unit vectors, on the device of ``queries``.
        bank_labels: [M] class indices in [0, num_classes).
        num_classes: the number of classes.
        k, temperature: neighbours and T of the weights exp(cos / T).
        exclude: [Q] the bank row that each query may not take as a neighbour (itself; -1: none), or None.

    Returns:
        [Q] predicted class indices (on the CPU).
    """
    Q, M = queries.shape[0], bank.shape[0]
    step = _queries_per_block(M)
    labels = bank_labels.to(bank.device)
    out = []
    for lo in range(0, Q, step):
        similarity = queries[lo:lo + step] @ bank.T  # [q, M]
        if exclude is not None:
            own = exclude[lo:lo + step].to(bank.device)  # [q]
            rows = torch.arange(len(own), device=bank.device)[own >= 0]
            similarity[rows, own[own >= 0]] = -float("inf")
        values, columns = top_k(similarity, k)  # [q, k], largest first
        values = values.double()
        weights = torch.exp((values - values[:, :1]) / temperature)  # [q, k]: exp(s / T) x exp(-max s / T)
        votes = torch.zeros(len(values), num_classes, dtype=torch.float64, device=bank.device)
        votes.scatter_add_(1, labels[columns], weights)  # [q, C]
        out.append(votes.argmax(1).cpu())  # the first of equal maxima: the lower class index
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True, eq=False)
class LabelledFolder:
    """The classes of a labelled folder's images, in ``data.image_items`` order (index i = the probe's image i).

    Attributes:
        root: the folder.
        protocol: ``'train/val'`` (bank = train, queries = val) or ``'leave-one-out'``.
        classes: the class names in sorted order (label = position).
        labels: [N] the class index of each image.
        query: [N] whether each image is a query.
        bank: [N] whether each image is in the bank.
    """

    root: str
    protocol: str
    classes: tuple[str, ...]
    labels: np.ndarray
    query: np.ndarray
    bank: np.ndarray

    @classmethod
    def read(cls, images) -> "LabelledFolder":
        """Classes from the folder layout (ImageFolder's rule), or a one-line MaeprobeError naming ``images``."""
        from pathlib import Path

        from ..data import find_images, shown_path
        from ..validate import short

        if not isinstance(images, (str, os.PathLike)) or isinstance(images, bytes):
            raise MaeprobeError(f"images: k-NN accuracy needs a labelled folder (one sub-folder per class, or train/ "
                                f"and val/ each with one sub-folder per class), got {short(images, 60)}")
        root = Path(images)
        paths = find_images(root)  # the probe's order (``data.image_items``)
        split = (root / "train").is_dir() and (root / "val").is_dir()
        names, splits = [], []
        for path in paths:
            parts = path.relative_to(root).parts
            if split and (len(parts) < 3 or parts[0] not in ("train", "val")):
                raise MaeprobeError(f"images: {shown_path(path)} is not in train/<class>/ or val/<class>/ of "
                                    f"{shown_path(root)}; a folder with train/ and val/ holds only those")
            if not split and len(parts) < 2:
                raise MaeprobeError(f"images: {shown_path(path)} is not in a class folder of {shown_path(root)}; "
                                    "put each image in the sub-folder named after its class")
            names.append(parts[1] if split else parts[0])
            splits.append(parts[0] if split else "")
        splits = np.asarray(splits)
        query = splits == "val" if split else np.ones(len(paths), dtype=bool)
        bank = splits == "train" if split else np.ones(len(paths), dtype=bool)
        bank_classes = sorted({n for n, b in zip(names, bank) if b})
        if split:
            missing = sorted({n for n, q in zip(names, query) if q} - set(bank_classes))
            if missing:
                raise MaeprobeError(f"images: val/ of {shown_path(root)} has classes that train/ lacks "
                                    f"({', '.join(short(m, 40) for m in missing[:5])}); their images could never be "
                                    "classified right")
            if not query.any():
                raise MaeprobeError(f"images: val/ of {shown_path(root)} holds no image to classify")
        if len(bank_classes) < 2:
            raise MaeprobeError(f"images: {shown_path(root)} has {len(bank_classes)} class folder(s)"
                                f"{' in train/' if split else ''}; k-NN accuracy needs at least 2")
        index = {name: i for i, name in enumerate(bank_classes)}
        labels = np.asarray([index[n] for n in names], dtype=np.int64)
        return cls(str(root), "train/val" if split else "leave-one-out", tuple(bank_classes), labels, query, bank)

    @property
    def leave_one_out(self) -> bool:
        return self.protocol == "leave-one-out"

    def bank_size(self, seen: np.ndarray | None = None) -> int:
        """Neighbours a query can have: the bank (of the images ``seen``, [N] bool) less the query itself."""
        bank = self.bank if seen is None else self.bank & seen
        return int(bank.sum()) - (1 if self.leave_one_out else 0)


class KnnAccuracy(Reducer):
    """Per-layer weighted k-NN top-1 accuracy of the encoder's CLS or mean-pooled patch features on a labelled
    folder (see the module's docstring). The bank is kept: a list of per-batch chunks (image indices [B], units
    [B], L2-normalised features [B, layers, D]) concatenated at the end."""

    metric = "knn_accuracy"
    module = "encoder"

    def __init__(self, model, *, layers=None, k: int = 20, temperature: float = 0.07, knn_features: str = "cls",
                 bank_dtype: str = "float32", bootstrap: int = 0, bootstrap_seed: int = 0, images=None) -> None:
        super().__init__()
        self.bootstrap, self.bootstrap_seed = check_bootstrap(bootstrap, bootstrap_seed)
        self.k = _check_k("k", k)
        self.temperature = _check_temperature("temperature", temperature)
        self.features = _check_choice(FEATURES)("knn_features", knn_features)
        self.bank_dtype = _check_choice(BANK_DTYPES)("bank_dtype", bank_dtype)
        if self.features == "cls" and not model.config.class_token:
            raise MaeprobeError("knn_features: 'cls', but this model has no class token; use knn_features='mean'")
        self.layers = _capture.resolve_layers(model, "encoder", layers)
        self.num_prefix = model.num_prefix_tokens
        self.width = int(model.config.embed_dim)
        self.folder: LabelledFolder | None = None
        self._chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pending: dict[int, torch.Tensor] = {}
        self._device = None
        if images is not None:
            self.bind_images(images)

    # --- labels and memory ---------------------------------------------------------------------
    def bind_images(self, images) -> None:
        """Read the classes of the labelled folder the probe will read (``maeprobe.api`` calls this with the probe's
        ``images``), check k against the bank and the bank's memory, before any image is decoded."""
        folder = LabelledFolder.read(images)
        if self.k > folder.bank_size():
            raise MaeprobeError(f"k: {self.k} neighbours, but a query of {folder.protocol} has only "
                                f"{folder.bank_size()} bank images; choose k <= {folder.bank_size()}")
        self.folder = folder
        self._check()

    def memory_bytes(self) -> int:
        """Bytes the bank and the final classification hold: the bank twice (its chunks and their concatenation),
        one layer's features in float32 three times (all images, the bank's and the queries' rows), and one block
        of similarities (``_queries_per_block``)."""
        if self.folder is None:
            return 0
        n, bank, queries = len(self.folder.labels), int(self.folder.bank.sum()), int(self.folder.query.sum())
        itemsize = 2 if self.bank_dtype == "float16" else 4
        block = min(queries, _queries_per_block(bank)) * bank * ENTRY_BYTES
        return 2 * n * len(self.layers) * self.width * itemsize + 3 * n * self.width * 4 + block

    def check_memory(self, *, mask_ratio: float = 0.0, batch_size: int = 1) -> None:
        self._check()

    def _check(self) -> None:
        if self.folder is None:
            return
        from ..limits import check

        n = len(self.folder.labels)
        check("MAEPROBE_MAX_METRIC_MEMORY", self.memory_bytes(),
              f"k-NN accuracy: its feature bank ({n} images x {len(self.layers)} layer(s) x {self.width} x "
              f"{self.bank_dtype}, twice, plus one layer in float32 and a block of similarities of at most "
              f"{WORK_BYTES >> 20} MB; fewer layers or bank_dtype='float16' need less), in bytes")

    def settings(self) -> dict:
        return {"k": self.k, "temperature": self.temperature, "features": self.features,
                "bank_dtype": self.bank_dtype}

    # --- streaming -----------------------------------------------------------------------------
    def request(self) -> _capture.CaptureRequest:
        return _capture.CaptureRequest.of(features={"encoder": self.layers})

    def consumes(self) -> set[tuple[str, str, int]]:
        return {("features", "encoder", layer) for layer in self.layers}

    def _pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, D] block output -> [B, D] unit vectors (CLS, or the mean of the patch tokens), on its device."""
        x = tokens[:, 0] if self.features == "cls" else tokens[:, self.num_prefix:].float().mean(1)  # [B, D]
        return F.normalize(x.float(), dim=-1)

    def consume(self, kind, module, layer, tensor, cache) -> None:
        self._pending[layer] = self._pooled(tensor)  # the block output itself is not kept

    def update(self, cache: _capture.ActivationCache) -> None:
        if self.folder is None:
            raise MaeprobeError("k-NN accuracy: no labels; give the labelled folder as images (maeprobe.api does) or "
                                "call bind_images(folder) before the probe")
        pending, self._pending = self._pending, {}
        units = self.note_units(cache)
        indices = torch.as_tensor(cache.image_indices).long().cpu()  # [B]
        if len(indices) and int(indices.max()) >= len(self.folder.labels):
            raise MaeprobeError(f"k-NN accuracy: image {int(indices.max())} of the probe is not among the "
                                f"{len(self.folder.labels)} images of the labelled folder; probe that folder")
        feats = []
        for layer in self.layers:
            x = pending.get(layer)
            if x is None:  # not digested in the hook: the [B, N, D] block output from the cache
                x = self._pooled(cache.features[("encoder", layer)])
            feats.append(x)
        self._device = feats[0].device
        dtype = torch.float16 if self.bank_dtype == "float16" else torch.float32
        stacked = torch.stack(feats, dim=1).to("cpu", dtype)  # [B, layers, D]
        self._chunks.append((indices, units.long(), stacked))

    # --- merging -------------------------------------------------------------------------------
    def _bank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices [n], units [n], features [n, layers, D]) of every image seen, in image order, as one chunk."""
        if not self._chunks:
            dtype = torch.float16 if self.bank_dtype == "float16" else torch.float32
            return (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                    torch.zeros(0, len(self.layers), self.width, dtype=dtype))
        indices = torch.cat([c[0] for c in self._chunks])
        order = torch.argsort(indices, stable=True)
        indices = indices[order]
        if len(indices) > 1 and bool((indices[1:] == indices[:-1]).any()):
            raise MaeprobeError("k-NN accuracy: an image was seen twice (merged with a copy of itself?)")
        units = torch.cat([c[1] for c in self._chunks])[order]
        features = torch.cat([c[2] for c in self._chunks])[order]
        self._chunks = [(indices, units, features)]
        return indices, units, features

    def merge(self, other: "Reducer") -> "Reducer":
        """Add another reducer's images (same settings and folder, other images): the banks are concatenated."""
        if not isinstance(other, KnnAccuracy) or other.settings() != self.settings() or other.layers != self.layers:
            raise MaeprobeError("k-NN accuracy: merge needs a k-NN reducer of the same settings and layers")
        if self.folder is None or other.folder is None or self.folder.root != other.folder.root or \
                not np.array_equal(self.folder.labels, other.folder.labels):
            raise MaeprobeError("k-NN accuracy: merge needs reducers of the same labelled folder")
        self._chunks += other._chunks
        self._units |= other._units
        self._device = self._device or other._device
        return self

    def all_reduce(self, group=None) -> None:
        """Concatenate every process's bank (all_gather; shards of different sizes are padded), so that every
        process classifies the whole set."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        indices, units, features = self._bank()
        world = dist.get_world_size(group)
        sizes = [None] * world
        dist.all_gather_object(sizes, int(len(indices)), group=group)
        top = max(sizes)
        if top == 0:
            return
        raw = features.contiguous().view(torch.uint8)  # [n, layers, D * itemsize]: any dtype travels as bytes
        padded = [torch.full((top,), -1, dtype=torch.long), torch.zeros(top, dtype=torch.long),
                  torch.zeros(top, *raw.shape[1:], dtype=torch.uint8)]
        for buffer, mine in zip(padded, (indices, units, raw)):
            buffer[:len(mine)] = mine
        parts = []
        for buffer in padded:
            gathered = [torch.empty_like(buffer) for _ in range(world)]
            dist.all_gather(gathered, buffer, group=group)
            parts.append(gathered)
        self._chunks = [(parts[0][r][:n], parts[1][r][:n], parts[2][r][:n].view(features.dtype))
                        for r, n in enumerate(sizes) if n]
        self._gather_units(group)

    # --- result --------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        folder = self.folder
        if folder is None:
            raise MaeprobeError("k-NN accuracy: no labels; bind_images(folder) before the probe")
        indices, units, features = self._bank()
        if not len(indices):
            raise MaeprobeError(f"{self.metric}: no images were processed (all unreadable?)")
        index = indices.numpy()
        seen = np.zeros(len(folder.labels), dtype=bool)
        seen[index] = True
        if folder.bank_size(seen) < self.k:
            raise MaeprobeError(f"k: {self.k} neighbours, but only {folder.bank_size(seen)} bank images could be "
                                f"read (of {folder.protocol}); choose k <= {max(folder.bank_size(seen), 1)}")
        labels = torch.as_tensor(folder.labels[index])  # [n]
        query = np.flatnonzero(folder.query[index])  # positions among the images seen
        bank = np.flatnonzero(folder.bank[index])
        if not len(query):
            raise MaeprobeError("k-NN accuracy: no query image could be read")
        query_labels = labels[query]  # [Q]
        query_units = units[query]  # [Q]
        exclude = None
        if folder.leave_one_out:  # bank == every image seen: each query's own row is position == its own position
            exclude = torch.as_tensor(query)
        n_units = len(set(query_units.tolist()))
        chance = float(np.bincount(query_labels.numpy(), minlength=len(folder.classes)).max() / len(query))
        weights = poisson_weights(query_units, self.bootstrap, self.bootstrap_seed) if self.bootstrap else None
        device = self._device if self._device is not None else torch.device("cpu")
        out = []
        for i, layer in enumerate(self.layers):
            x = F.normalize(features[:, i].float(), dim=-1)  # [n, D]
            base = {"metric": self.metric, "module": "encoder", "layer": layer, "head": None, "n_images": len(query),
                    "n_units": n_units, "n_bank": len(bank), "n_classes": len(folder.classes),
                    "chance_level": chance, "protocol": folder.protocol}
            if not bool(torch.isfinite(x).all()):  # non-finite features: no accuracy (figures leave it out)
                out.append({**base, "value": float("nan"), "std": float("nan"), "ci_low": float("nan"),
                            "ci_high": float("nan")})
                continue
            x = x.to(device)
            predicted = knn_predict(x[torch.as_tensor(query, device=device)], x[torch.as_tensor(bank, device=device)],
                                    labels[torch.as_tensor(bank)], len(folder.classes), self.k, self.temperature,
                                    exclude)
            correct = (predicted == query_labels).double()  # [Q]
            accuracy = float(correct.mean())
            Q = len(correct)
            std = float(np.sqrt(accuracy * (1 - accuracy) * Q / max(Q - 1, 1)))
            low = high = float("nan")
            if weights is not None and n_units >= MIN_UNITS:
                replicates = weighted_replicates(weights.T @ correct, weights.sum(0))  # [R]
                low, high = (float(v) for v in percentile_interval(replicates))
            out.append({**base, "value": accuracy, "std": std, "ci_low": low, "ci_high": high})
        return out


@dataclass(frozen=True)
class KnnOptions:
    k: int = option(20, "Neighbours that vote (DINO's default; at most the bank's size).", flag="--k", low=1,
                    high=MAX_K, check=_check_k)
    temperature: float = option(0.07, "Temperature T of the vote weights exp(cos / T) (DINO's 0.07).", low=1e-6,
                                high=100.0, check=_check_temperature)
    knn_features: str = option("cls", "Each layer's feature: the CLS token of the block output (Walmer et al.) or "
                                      "the mean of its patch tokens.", choices=FEATURES, check=_check_choice(FEATURES))
    bank_dtype: str = option("float32", "Precision of the kept features (float16 halves the bank's memory).",
                             choices=BANK_DTYPES, check=_check_choice(BANK_DTYPES))


def _report(table) -> list[str]:
    first = table.iloc[0]
    title = (f"{checkpoint_name(table)}: weighted k-NN top-1 accuracy per encoder layer ({first['features']} "
             f"features, k {int(first['k'])}, T {float(first['temperature']):g}; {first['protocol']}, "
             f"{int(first['n_bank'])} bank images, {int(first['n_classes'])} classes; chance (majority class) "
             f"{float(first['chance_level']):.3f}; {images_text(table)} as queries)")
    return per_layer(table, title)


SPEC = register(MetricSpec(
    name="knn", function="knn_accuracy", column="knn_accuracy", reducer=KnnAccuracy, options=KnnOptions,
    summary="Weighted k-NN top-1 accuracy (DINO's classifier) of each encoder layer on a labelled folder.",
    doc="""Per-layer weighted k-NN top-1 accuracy (DINO's ``knn_classifier``; per block as Walmer et al., CVPR 2023).

    ``images`` must be a labelled folder, read as torchvision's ImageFolder (class = the sub-folder below the
    root): with ``train/`` and ``val/`` the bank is train and the queries val (DINO's ImageNet layout), otherwise
    leave-one-out over the folder (each image against all others, itself excluded). Features of each encoder layer:
    the CLS token of the block output (``knn_features='cls'``) or the mean of its patch tokens (``'mean'``),
    L2-normalised; the k most similar bank images vote with weights exp(cos / T). One row per layer: value = top-1
    accuracy (0-1), ``chance_level`` = the queries' majority-class rate, ``k``, ``temperature``, ``n_classes``,
    ``n_bank``, ``protocol``; the interval resamples the queries' independent units (the bank fixed).""",
    block_queries=False, layers_help="0-based encoder layers, e.g. 0,5,11 or 0-3 (default all).", report=_report,
    figures=(FigureSpec("knn", "Weighted k-NN accuracy per layer", "layers", ylabel="k-NN top-1 accuracy",
                        settings={"k": None, "temperature": None, "features": None, "protocol": None},
                        default=True, level_column="chance_level"),)))
