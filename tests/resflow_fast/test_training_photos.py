"""Tests for resflow_fast/training_photos.py: the list itself, and gathering without the network."""
from __future__ import annotations

import hashlib
import re

import pytest

from resflow_fast import training_photos
from resflow_fast.training_photos import PHOTOS, Photo, TrainingPhotoError, gather, list_sha256


def test_the_list_is_well_formed_and_apart_from_the_evaluation():
    from resflow_fast.evaluate import SKIMAGE_CROPS

    names = [p.name for p in PHOTOS]
    assert len(names) == len(set(names)) == 27
    assert all(re.fullmatch(r"[0-9a-f]{64}", p.sha256) for p in PHOTOS)
    assert len({p.sha256 for p in PHOTOS}) == len(PHOTOS)  # no photograph twice under two names
    assert {p.source for p in PHOTOS} == {"debian", "skimage", "sklearn-wheel"}
    held_out = {f"{name}.png" for name in SKIMAGE_CROPS}
    assert not held_out & {p.path for p in PHOTOS if p.source == "skimage"}


def test_list_digest_is_sha256sum_of_the_sorted_list():
    lines = "".join(f"{p.sha256}  {p.name}\n" for p in sorted(PHOTOS, key=lambda p: p.name))
    assert list_sha256() == hashlib.sha256(lines.encode()).hexdigest()
    changed = PHOTOS[:-1] + (Photo(PHOTOS[-1].name, "skimage", "x", "1", "y", "0" * 64),)
    assert list_sha256(changed) != list_sha256()


def _local_photo(tmp_path, name: str, data: bytes) -> Photo:
    (tmp_path / "skdata").mkdir(exist_ok=True)
    (tmp_path / "skdata" / name).write_bytes(data)
    return Photo(f"skimage-{name}", "skimage", "scikit-image", "0", name, hashlib.sha256(data).hexdigest())


def test_gather_copies_checks_and_keeps_what_is_already_right(tmp_path, monkeypatch):
    photo = _local_photo(tmp_path, "a.png", b"pixels")
    monkeypatch.setattr(training_photos, "_fetch_sources",
                        lambda photos, work: {("skimage", "scikit-image"): tmp_path / "skdata"})
    out = tmp_path / "out"
    (path,) = gather(out, (photo,))
    assert path.read_bytes() == b"pixels" and sorted(p.name for p in out.iterdir()) == ["skimage-a.png"]
    monkeypatch.setattr(training_photos, "_fetch_sources", lambda photos, work: pytest.fail("fetched again"))
    gather(out, (photo,))  # already there with the right digest: nothing fetched


def test_gather_refuses_bytes_that_differ_from_the_list(tmp_path, monkeypatch):
    photo = _local_photo(tmp_path, "a.png", b"pixels")
    (tmp_path / "skdata" / "a.png").write_bytes(b"changed upstream")
    monkeypatch.setattr(training_photos, "_fetch_sources",
                        lambda photos, work: {("skimage", "scikit-image"): tmp_path / "skdata"})
    with pytest.raises(TrainingPhotoError, match="skimage-a.png .*SHA-256"):
        gather(tmp_path / "out", (photo,))
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written


def test_gather_without_scikit_image_says_so_before_fetching_anything(tmp_path, monkeypatch):
    import sys

    photo = _local_photo(tmp_path, "a.png", b"pixels")
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now raises ImportError
    monkeypatch.setattr(training_photos, "_fetch_sources", lambda photos, work: pytest.fail("fetched"))
    with pytest.raises(TrainingPhotoError, match="ship with scikit-image, which is not installed .*pip install"):
        gather(tmp_path / "out", (photo,))
    assert not (tmp_path / "out").exists()
