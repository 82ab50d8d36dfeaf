"""Image folders: modes, resizing, unreadable files, empty folders, built-in photos."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import maeprobe
from maeprobe.data import builtin_images, find_images, make_transform, to_rgb
from maeprobe.errors import MaeprobeError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_modes_become_rgb():
    grey = Image.fromarray(np.full((4, 4), 100, np.uint8), "L")
    assert to_rgb(grey).getpixel((0, 0)) == (100, 100, 100)
    sixteen = Image.fromarray(np.full((4, 4), 65535, np.uint16))  # 16-bit
    assert to_rgb(sixteen).getpixel((1, 1)) == (255, 255, 255)
    half = Image.fromarray(np.full((4, 4), 257 * 128, np.uint16))
    assert to_rgb(half).getpixel((1, 1)) == (128, 128, 128)
    rgba = Image.fromarray(np.dstack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30, 0)]), "RGBA")
    assert to_rgb(rgba).getpixel((0, 0)) == (10, 20, 30)
    palette = Image.fromarray(np.zeros((4, 4), np.uint8), "P")
    palette.putpalette([200, 100, 50] + [0] * 765)
    assert to_rgb(palette).getpixel((2, 2)) == (200, 100, 50)
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_image_at_input_size_is_used_as_is_others_resized_and_cropped():
    arr = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    tensor = make_transform(16, MEAN, STD)(Image.fromarray(arr))
    expected = ((torch.from_numpy(arr).permute(2, 0, 1) / 255.0 - torch.tensor(MEAN)[:, None, None])
                / torch.tensor(STD)[:, None, None])
    torch.testing.assert_close(tensor, expected.float(), atol=1e-6, rtol=1e-6)
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # the centre third is white: after resize to 16x48 and centre crop, all white
    out = make_transform(16, (0, 0, 0), (1, 1, 1))(Image.fromarray(wide))
    assert out.shape == (3, 16, 16) and out[:, :, 3:13].min() > 0.95


def _write_folder(root):
    (root / "b" / "deep").mkdir(parents=True)
    Image.fromarray(np.full((40, 50), 90, np.uint8), "L").save(root / "b" / "deep" / "grey.png")
    Image.fromarray(np.full((30, 30), 40000, np.uint16)).save(root / "a16.png")
    Image.new("RGBA", (33, 35), (1, 2, 3, 4)).save(root / "c.png")
    Image.new("P", (32, 32)).save(root / "b" / "pal.gif")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "notes.txt").write_text("not an image")


def test_folder_is_read_recursively_sorted_and_unreadable_files_are_skipped(tmp_path):
    _write_folder(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert names == ["a16.png", "b/deep/grey.png", "b/pal.gif", "broken.jpg", "c.png"]
    model = maeprobe.build_mae(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, decoder_depth=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = maeprobe.attention_distance(model, tmp_path, batch_size=2, device="cpu")
    assert set(table["n_images"]) == {4}
    assert any("broken.jpg" in str(w.message) for w in caught)


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MaeprobeError, match="no image files"):
        find_images(tmp_path)


def test_builtin_photographs_ship_with_the_packages():
    images = builtin_images()
    assert len(images) >= 10
    assert all(img.mode == "RGB" and min(img.size) >= 256 for _, img in images)
