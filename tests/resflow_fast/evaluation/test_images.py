"""Tests of resflow_fast/evaluation/images.py: the held-out crops are the documented ones, and
Kodak files or a wheel that are not the pinned ones are refused."""
import zipfile

import numpy as np
import pytest

from resflow_fast.evaluation import images as im


def test_skimage_crops_are_the_documented_256_pixel_squares():
    skdata = pytest.importorskip("skimage.data")
    crops = im.heldout_images(("skimage",))
    assert [c.name for c in crops] == list(im.SKIMAGE_CROPS)
    for crop in crops:
        top, left = im.SKIMAGE_CROPS[crop.name]
        whole = getattr(skdata, crop.name)()
        assert crop.clean.dtype == np.uint8 and crop.clean.shape == (im.CROP, im.CROP, 3)
        assert np.array_equal(crop.clean, whole[top:top + im.CROP, left:left + im.CROP, :3])
        assert f"rows {top}-{top + im.CROP - 1}" in crop.source


@pytest.mark.parametrize("sets, message", [(("div2k",), "unknown image set 'div2k'"),
                                           (("skimage", "skimage"), "named twice")])
def test_unknown_or_repeated_image_sets_are_refused(sets, message):
    with pytest.raises(im.EvalError, match=message):
        im.heldout_images(sets)


def test_kodak_folder_checks_files_and_hashes(tmp_path, monkeypatch):
    monkeypatch.setenv("RESFLOW_CACHE", str(tmp_path / "cache"))
    with pytest.raises(im.EvalError, match="I03.bmp is missing"):
        im.kodak_dir(tmp_path)
    for name in im.KODAK_FILES:
        (tmp_path / name).write_bytes(b"not a bmp")
    with pytest.raises(im.EvalError, match="SHA-256 differs"):
        im.kodak_dir(tmp_path)
    with pytest.raises(im.EvalError, match="pass --kodak PATH"):
        im.kodak_dir(None, download=False)


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RESFLOW_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "pyiqa-0.1.16-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in im.KODAK_FILES:
            z.writestr(im.KODAK_MEMBER + name, b"x")
    with pytest.raises(im.EvalError, match="not the pyiqa 0.1.16 wheel"):
        im.kodak_dir(wheel)
    assert not (tmp_path / "cache" / "kodak").exists()
