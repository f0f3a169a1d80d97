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
    assert first.dtype == np.uint8 and first.shape == clean.shape
    assert np.array_equal(first, again)
    assert not np.array_equal(first, clean)
    if deg.task != "jpeg":  # random per image; JPEG is deterministic
        assert not np.array_equal(first, other)


def test_noise_has_the_named_sigma_and_jpeg_quality_orders(make_images):
    flat = np.full((128, 128, 3), 128, np.uint8)  # no clipping, so the noise is all there
    for sigma in (15, 25, 50):
        noisy = DEGRADATIONS[f"noise-{sigma}"].apply(flat, "x").astype(np.float64)
        assert abs(noisy.std() - sigma) < 0.05 * sigma
    clean = make_images(64)[1].clean

    def err(q):
        return np.mean((DEGRADATIONS[f"jpeg-{q}"].apply(clean, "x").astype(float) - clean) ** 2)
    assert err(10) > err(20) > err(30)
