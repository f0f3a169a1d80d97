"""Classical Gaussian denoisers that ``resflow eval`` compares ResFlow against.

None of them is a runtime dependency: they come with the optional ``eval`` extra
(``pip install -e ".[eval]"``), and a missing package makes its row say so instead of failing the
evaluation. The ``bm3d`` package's licence is non-commercial, which is one more reason it is
never required.

All of them are *non-blind*: they are given the true noise sigma, which ResFlow is not. Inputs and
outputs are 8-bit RGB arrays (H, W, 3), as an image file would hold them.

Parameters. BM3D and the wavelet denoiser take sigma directly. The three with a strength knob
(OpenCV's and scikit-image's NL-means, TV) were tuned once on a grid of multiples of sigma, by PSNR
on two 256x256 crops of *training* photographs (scikit-image's motorcycle_left and rocket, at
sigma 15, 25 and 50), never on the evaluation images; at sigma 5 (added later) the same multiples
are used, untuned there:

* OpenCV ``fastNlMeansDenoisingColored`` (given BGR, its channel order): ``h = hColor = 0.6 sigma``
  (grid 0.4-1.0; 0.6 best at all three sigmas), 7x7 template, 21x21 search window (OpenCV's
  recommended sizes);
* scikit-image ``denoise_nl_means``: ``h = 0.6 sigma`` with ``sigma`` given, fast mode, 5x5
  patches, distance 6 (grid 0.4-1.2; 0.6 best at 15, within 0.1 dB of the best at 25, 0.5 dB
  below 0.4 at 50);
* scikit-image ``denoise_tv_chambolle``: ``weight = sigma`` (grid 0.5-3 sigma; best at 15 and 25,
  0.4 dB below 1.5 sigma at 50).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Baseline", "BASELINES", "BaselineUnavailable", "run_baseline"]


class BaselineUnavailable(ValueError):
    """The package a baseline needs is not installed."""


def _to01(image_u8: np.ndarray) -> np.ndarray:
    return image_u8.astype(np.float64) / 255.0


def _to_u8(image01: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(image01, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def _bm3d(noisy: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d

    # CBM3D: BM3D in the opponent colour space, the colour variant published figures use.
    return _to_u8(bm3d.bm3d_rgb(_to01(noisy), sigma_psd=sigma / 255.0))


def _opencv_nl_means(noisy: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    h = 0.6 * sigma
    # OpenCV's colour images are BGR: it splits luminance from colour (CIELAB) assuming that order
    bgr = cv2.cvtColor(np.ascontiguousarray(noisy), cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21), cv2.COLOR_BGR2RGB)


def _skimage_nl_means(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    s = sigma / 255.0
    return _to_u8(denoise_nl_means(_to01(noisy), h=0.6 * s, sigma=s, fast_mode=True, patch_size=5,
                                   patch_distance=6, channel_axis=-1))


def _skimage_tv(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return _to_u8(denoise_tv_chambolle(_to01(noisy), weight=sigma / 255.0, channel_axis=-1))


def _skimage_wavelet(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    # BayesShrink soft thresholds per subband, in YCbCr; rescale_sigma keeps sigma right after the
    # colour transform.
    return _to_u8(denoise_wavelet(_to01(noisy), sigma=sigma / 255.0, method="BayesShrink", mode="soft",
                                  convert2ycbcr=True, rescale_sigma=True, channel_axis=-1))


@dataclass(frozen=True)
class Baseline:
    name: str                 # the row's label
    modules: tuple[str, ...]  # the importable modules it needs
    package: str              # the pip package(s) that provide them
    denoise: Callable[[np.ndarray, float], np.ndarray]

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)


#: The classical rows of the evaluation, in table order.
BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("BM3D (CBM3D)", ("bm3d",), "bm3d", _bm3d),
    Baseline("OpenCV NL-means", ("cv2",), "opencv-python-headless", _opencv_nl_means),
    Baseline("scikit-image NL-means", ("skimage",), "scikit-image", _skimage_nl_means),
    Baseline("scikit-image TV", ("skimage",), "scikit-image", _skimage_tv),
    Baseline("scikit-image wavelet", ("skimage", "pywt"), "scikit-image and PyWavelets", _skimage_wavelet),
)}


def run_baseline(name: str, noisy: np.ndarray, sigma: float) -> np.ndarray:
    """Denoise 8-bit RGB ``noisy`` (H, W, 3) knowing the noise ``sigma`` (in 0..255 units)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    baseline = BASELINES[name]
    if not isinstance(noisy, np.ndarray) or noisy.dtype != np.uint8 or noisy.ndim != 3 or noisy.shape[2] != 3:
        raise ValueError(f"{name}: expects an 8-bit RGB array (H, W, 3), got "
                         f"{getattr(noisy, 'dtype', type(noisy).__name__)} {getattr(noisy, 'shape', '')}")
    if not 0 < sigma <= 255:
        raise ValueError(f"{name}: sigma must be in (0, 255] (8-bit units), got {sigma!r}")
    if not baseline.available():
        raise BaselineUnavailable(f"{name} needs the {baseline.package!r} package: pip install -e \".[eval]\"")
    out = baseline.denoise(noisy, float(sigma))
    if out.shape != noisy.shape or out.dtype != np.uint8:
        raise RuntimeError(f"{name} returned {out.dtype} {out.shape} for {noisy.shape}")  # a library changed
    return out
