"""Tests of resflow_fast/evaluation/images.py: the held-out crops are the documented ones; Kodak
files, a wheel or Debian photographs that are not the pinned ones are refused; the Debian ones are
fetched once (with stand-ins for apt-get and dpkg-deb: no network) and then read from the cache."""
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


def _fake_debian_tools(folder, monkeypatch, content: bytes):
    """apt-get download writes PACKAGE.deb; dpkg-deb -x unpacks usr/share/backgrounds/photo.jpg
    holding ``content`` and counts its calls in ``folder/unpacked``."""
    import os
    import stat

    folder.mkdir()
    (folder / "photo.bytes").write_bytes(content)
    scripts = {"apt-get": 'echo deb > "${2%%=*}.deb"\n',
               "dpkg-deb": f'mkdir -p "$3/usr/share/backgrounds" && cp "{folder}/photo.bytes" '
                           f'"$3/usr/share/backgrounds/photo.jpg" && echo x >> "{folder}/unpacked"\n'}
    for name, body in scripts.items():
        path = folder / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_debian_photographs_are_fetched_once_checked_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("RESFLOW_CACHE", str(tmp_path / "cache"))
    with pytest.raises(im.EvalError, match="run once with network access"):
        im.debian_dir(download=False)
    content = b"the photograph's bytes"
    monkeypatch.setattr(im, "DEBIAN_PHOTOS", {"photo": ("some-backgrounds", "1.0-1", "usr/share/backgrounds/photo.jpg",
                                                        im.sha256(content))})
    _fake_debian_tools(tmp_path / "bin", monkeypatch, content)
    folder = im.debian_dir()
    assert (folder / "photo.jpg").read_bytes() == content
    assert im.debian_dir() == folder and (tmp_path / "bin" / "unpacked").read_text() == "x\n"  # cached: no refetch


def test_a_debian_photograph_with_other_bytes_is_refused_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("RESFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(im, "DEBIAN_PHOTOS", {"photo": ("some-backgrounds", "1.0-1", "usr/share/backgrounds/photo.jpg",
                                                        im.sha256(b"the pinned bytes"))})
    _fake_debian_tools(tmp_path / "bin", monkeypatch, b"other bytes")
    with pytest.raises(im.EvalError, match=r"photo \(some-backgrounds 1\.0-1\).*--images kodak,skimage"):
        im.debian_dir()
    assert not (tmp_path / "cache" / "heldout-debian" / "photo.jpg").exists()
