"""Image-quality metrics on model-range tensors ([-1, 1], (B, C, H, W) or (C, H, W)).

Both metrics are taken on [0, 1] values (data range 1), the convention of published restoration
figures; model-range inputs are rescaled first. They are computed in float64, so rounding in the
metric never shows in a reported digit.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "SSIM_SIGMA", "SSIM_RADIUS"]

#: SSIM's Gaussian window (Wang et al. 2004, Sec. III-C): sigma 1.5, cut at 3.5 sigma, so 11 taps;
#: the same window as scikit-image's ``structural_similarity(gaussian_weights=True)``.
SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _pair(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"{name}: expected (B, C, H, W) or (C, H, W) tensors, got shape {tuple(a.shape)}")
    # [-1, 1] -> [0, 1]
    return (a.double() + 1) / 2, (b.double() + 1) / 2


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the batch of per-image PSNR in dB, with the data range [0, 1] ([-1, 1] rescaled).

    ``PSNR = 10 log10(1 / MSE)`` where MSE is taken on [0, 1] values.
    """
    a, b = _pair(a, b, "psnr")
    mse = (a - b).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


def _gaussian_window() -> torch.Tensor:
    offsets = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    window = torch.exp(-offsets.pow(2) / (2 * SSIM_SIGMA ** 2))
    return window / window.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the batch of per-image SSIM (Wang et al. 2004, eq. 13), data range [0, 1].

    ``SSIM = (2 mu_a mu_b + C1)(2 sigma_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2))``
    with ``C1 = (0.01)^2``, ``C2 = (0.03)^2``, local statistics under an 11-tap Gaussian window
    (sigma 1.5, population covariances), averaged over the positions where the window fits inside
    the image and then over channels: scikit-image's ``structural_similarity(..., data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=...)``.
    """
    a, b = _pair(a, b, "ssim")
    size = 2 * SSIM_RADIUS + 1
    if min(a.shape[-2:]) < size:
        raise ValueError(f"ssim: images must be at least {size}x{size} (the Gaussian window), "
                         f"got {a.shape[-2]}x{a.shape[-1]}")
    channels = a.shape[1]
    window = _gaussian_window()
    # A separable 'valid' filter: the window never reaches past the border, exactly the region
    # scikit-image keeps after cropping its reflect-padded filter output.
    rows = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = window.view(1, 1, 1, size).expand(channels, 1, 1, size)

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a * mu_a
    var_b = local_mean(b * b) - mu_b * mu_b
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = _SSIM_K1 ** 2, _SSIM_K2 ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    per_image = index.flatten(1).mean(dim=1)
    value = float(per_image.mean())
    if not math.isfinite(value):
        raise ValueError("ssim: the images contain NaN or infinite values")
    return value
