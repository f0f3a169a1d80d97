"""PSNR and SSIM against scikit-image's implementations, which published figures use."""
import numpy as np
import pytest
import torch

from resflow_fast.reference.metrics import SSIM_RADIUS, psnr, ssim

skimage_metrics = pytest.importorskip("skimage.metrics")


def _model_range(hwc01: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(hwc01).permute(2, 0, 1) * 2 - 1


def _pair(shape, noise, seed):
    rng = np.random.default_rng(seed)
    clean = rng.random(shape)
    # smooth it a little so SSIM's structure term is not just noise against noise
    clean = (clean + np.roll(clean, 1, axis=0) + np.roll(clean, 1, axis=1)) / 3
    return clean, np.clip(clean + noise * rng.standard_normal(shape), 0, 1)


@pytest.mark.parametrize("shape", [(11, 11, 3), (37, 53, 3), (64, 40, 1), (12, 90, 2)])
@pytest.mark.parametrize("noise", [0.01, 0.1, 0.4])
def test_ssim_matches_scikit_image(shape, noise):
    a, b = _pair(shape, noise, seed=shape[0] + int(noise * 100))
    expected = skimage_metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=1.5,
                                                     use_sample_covariance=False, channel_axis=2)
    assert ssim(_model_range(a), _model_range(b)) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("noise", [0.003, 0.1])
def test_psnr_matches_scikit_image(noise):
    a, b = _pair((37, 53, 3), noise, seed=1)
    expected = skimage_metrics.peak_signal_noise_ratio(a, b, data_range=1)
    assert psnr(_model_range(a), _model_range(b)) == pytest.approx(expected, abs=1e-9)


def test_batch_is_the_mean_of_per_image_values():
    a1, b1 = _pair((20, 20, 3), 0.05, seed=2)
    a2, b2 = _pair((20, 20, 3), 0.2, seed=3)
    batch_a = torch.stack([_model_range(a1), _model_range(a2)])
    batch_b = torch.stack([_model_range(b1), _model_range(b2)])
    for metric in (psnr, ssim):
        single = [metric(_model_range(a1), _model_range(b1)), metric(_model_range(a2), _model_range(b2))]
        assert metric(batch_a, batch_b) == pytest.approx(np.mean(single), abs=1e-12)


def test_identical_images_score_one_and_differences_lower_it():
    a, b = _pair((24, 24, 3), 0.1, seed=4)
    assert ssim(_model_range(a), _model_range(a)) == pytest.approx(1.0, abs=1e-12)
    assert ssim(_model_range(a), _model_range(b)) < 0.99


def test_errors_name_the_problem():
    x = torch.zeros(3, 16, 16)
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(x, torch.zeros(3, 16, 17))
    size = 2 * SSIM_RADIUS + 1
    with pytest.raises(ValueError, match=f"at least {size}x{size}"):
        ssim(torch.zeros(3, size - 1, 30), torch.zeros(3, size - 1, 30))
    with pytest.raises(ValueError, match="NaN"):
        ssim(torch.full((3, 16, 16), float("nan")), x)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        psnr(torch.zeros(16, 16), torch.zeros(16, 16))
