"""Image-quality metrics on model-range tensors ([-1, 1], (B, C, H, W))."""
from __future__ import annotations

import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the batch of per-image PSNR in dB, with the data range [0, 1] ([-1, 1] rescaled).

    ``PSNR = 10 log10(1 / MSE)`` where MSE is taken on [0, 1] values, i.e. on (a - b) / 2.
    """
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    mse = ((a.float() - b.float()) / 2).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())
