"""Fine-tuning and evaluation transforms against facebookresearch/mae (commit efb2a80): ``main_finetune.py``
(``--aa rand-m9-mstd0.5-inc1``, ``--color_jitter None``) and ``util/datasets.py`` (crop_pct 224/256 up to 224 px,
1.0 above). The values below are typed in from those files, not read from maeprobe."""
from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

timm = pytest.importorskip("timm")

from timm.data.auto_augment import RandAugment  # noqa: E402

from maeprobe.train.config import DEFAULTS  # noqa: E402
from maeprobe.train.evaluate import _transforms  # noqa: E402

MAE_AA = "rand-m9-mstd0.5-inc1"  # main_finetune.py line 82, the --aa default
MEAN = STD = (0.5, 0.5, 0.5)


def _rand_augment(transform) -> RandAugment:
    found = [t for t in transform.transforms if isinstance(t, RandAugment)]
    assert len(found) == 1
    return found[0]


def _photo(size=24) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_finetune_randaugment_is_maes_string():
    assert DEFAULTS["optim"]["auto_augment"] == MAE_AA


def test_magnitude_draws_are_not_clipped_at_9():
    """N(9, 0.5) puts half its draws above 9 (and 2.3% at or above 10, which timm clips to 10): the ops must see
    them. Under the former ``mmax9`` every magnitude an op saw was <= 9."""
    ra = _rand_augment(_transforms(32, MEAN, STD, True, DEFAULTS["optim"])[0])
    seen = []
    for op in ra.ops:
        if op.level_fn is None:
            continue
        inner = op.level_fn
        op.level_fn = lambda m, h, inner=inner: (seen.append(m), inner(m, h))[1]
        op.prob = 1.0
    random.seed(0)
    img = _photo()
    for _ in range(400):
        for op in ra.ops:
            op(img)
    seen = np.array(seen)
    assert len(seen) > 1000
    above9 = (seen > 9).mean()
    assert 0.4 < above9 < 0.6, above9  # half of N(9, 0.5)
    assert seen.max() == 10.0 and 0.005 < (seen == 10.0).mean() < 0.05  # P(N(9, 0.5) >= 10) = 0.0228
    assert seen.min() >= 0.0


def test_extreme_draws_do_not_crash_and_posterize_keeps_0_bits(monkeypatch):
    """A magnitude-10 draw asks the increasing posterize for 4 - int(10 / 10 * 4) = 0 bits. Pillow before its 1-8
    check computed a LUT ``i & ~(2 ** 8 - 1)``, i.e. 0 for every value: a black image. No op may raise."""
    train, _ = _transforms(32, MEAN, STD, True, DEFAULTS["optim"])
    ra = _rand_augment(train)
    img = _photo()
    monkeypatch.setattr(random, "gauss", lambda mu, sigma: 12.0)  # far above 10: clipped to 10 by timm
    for op in ra.ops:
        op.prob = 1.0
        out = op(img)
        assert out.size == img.size
        if op.name == "PosterizeIncreasing":
            assert np.asarray(out).max() == 0
    for _ in range(20):  # the whole training transform (crop, flip, RandAugment, erasing)
        assert tuple(train(img).shape) == (3, 32, 32)
    monkeypatch.setattr(random, "gauss", lambda mu, sigma: -3.0)  # far below 0: clipped to 0
    for op in ra.ops:
        op(img)


def test_posterize_of_1_to_8_bits_is_pillows():
    from PIL import ImageOps

    from maeprobe.train.evaluate import _posterize

    img = _photo()
    for bits in range(1, 8):
        assert np.array_equal(np.asarray(_posterize(img, bits)), np.asarray(ImageOps.posterize(img, bits)))
    assert np.array_equal(np.asarray(_posterize(img, 8)), np.asarray(img))
    # by hand: 1 bit keeps the top bit of each value
    assert np.array_equal(np.asarray(_posterize(img, 1)), np.asarray(img) & 0x80)


def test_no_colour_jitter_as_mae():
    """MAE passes --color_jitter None to create_transform: no ColorJitter, also with RandAugment off (timm
    disables jitter under RandAugment by itself, so only this case tells)."""
    from torchvision.transforms import ColorJitter

    for aa in (MAE_AA, None):
        train, _ = _transforms(32, MEAN, STD, True, {**DEFAULTS["optim"], "auto_augment": aa})
        assert not any(isinstance(t, ColorJitter) for t in train.transforms)


@pytest.mark.parametrize("size, resize", [(224, 256), (64, 73), (384, 384), (448, 448)])
def test_eval_crop_follows_maes_rule(size, resize):
    """util/datasets.py: crop_pct = 224 / 256 if input_size <= 224 else 1.0; resize to int(size / crop_pct)."""
    from torchvision.transforms import CenterCrop, Resize

    _, val = _transforms(size, MEAN, STD, False, DEFAULTS["optim"])
    resizes = [t for t in val.transforms if isinstance(t, Resize)]
    crops = [t for t in val.transforms if isinstance(t, CenterCrop)]
    assert len(resizes) == 1 and len(crops) == 1
    assert resizes[0].size in (resize, [resize], (resize,))
    assert tuple(crops[0].size) == (size, size)
