"""Tests of resflow_fast/evaluation/degradations.py: every degradation is 8-bit, fixed and seeded
per image, at the level its name says."""
import numpy as np
import pytest

from resflow_fast.evaluation.degradations import DEGRADATIONS


@pytest.mark.parametrize("key", list(DEGRADATIONS))
def test_degradations_are_8_bit_fixed_and_seeded_per_image(key, make_images):
    deg = DEGRADATIONS[key]
    clean = make_images()[1].clean
    first, again, other = deg.apply(clean, "a"), deg.apply(clean, "a"), deg.apply(clean, "b")
    target = deg.target(clean)
    assert first.dtype == np.uint8 and first.shape == target.shape == (clean.shape if not deg.grey else clean.shape[:2])
    assert np.array_equal(first, again)
    if deg.task == "clean":  # nothing to restore: the photograph itself, as a new array
        assert np.array_equal(first, clean) and first is not clean
        return
    assert not np.array_equal(first, target)
    if deg.task != "jpeg":  # random per image; JPEG is deterministic
        assert not np.array_equal(first, other)


def test_the_grey_row_is_the_photographs_luma_with_one_plane_of_noise(make_images):
    deg = DEGRADATIONS["grey-noise-25"]
    clean = make_images()[1].clean
    target = deg.target(clean)
    luma = clean.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's "L"
    assert np.abs(target - luma).max() <= 1.0
    noise = deg.apply(clean, "a").astype(np.float64) - target
    assert abs(noise[(target > 60) & (target < 195)].std() - 25) < 2.5  # away from clipping


def test_noise_has_the_named_sigma_and_jpeg_quality_orders(make_images):
    flat = np.full((128, 128, 3), 128, np.uint8)  # no clipping, so the noise is all there
    for sigma in (15, 25, 50):
        noisy = DEGRADATIONS[f"noise-{sigma}"].apply(flat, "x").astype(np.float64)
        assert abs(noisy.std() - sigma) < 0.05 * sigma
    clean = make_images(64)[1].clean

    def err(q):
        return np.mean((DEGRADATIONS[f"jpeg-{q}"].apply(clean, "x").astype(float) - clean) ** 2)
    assert err(10) > err(20) > err(30)
