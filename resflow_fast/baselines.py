"""Classical restorers that ``resflow eval`` compares ResFlow against: Gaussian denoisers, and a
dehazer for the haze rows.

None of them is a runtime dependency: they come with the optional ``eval`` extra
(``pip install -e ".[eval]"``), and a missing package leaves its row out with a note instead of
failing the evaluation (the ``bm3d`` package's licence is non-commercial, one more reason it is
never required). The denoisers are *non-blind*: they are given the true noise sigma, which ResFlow
is not. The dehazer is blind, as ResFlow is. Inputs and outputs are 8-bit arrays as an image file
would hold them: RGB (H, W, 3), or, for the denoisers, grey (H, W), which each denoiser treats with
its own greyscale variant (a grey photograph's noise is one plane, not three independent ones). Every tuned parameter was chosen on crops of *training*
photographs, never on the evaluation's images; the functions below say how.
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

    if noisy.ndim == 2:
        return _to_u8(bm3d.bm3d(_to01(noisy), sigma_psd=sigma / 255.0))
    # CBM3D: BM3D in the opponent colour space, the colour variant published figures use.
    return _to_u8(bm3d.bm3d_rgb(_to01(noisy), sigma_psd=sigma / 255.0))


def _channel_axis(image: np.ndarray) -> int | None:
    return None if image.ndim == 2 else -1


# The three denoisers with a strength knob were tuned once on a grid of multiples of sigma, by PSNR on
# two 256x256 crops of training photographs (scikit-image's motorcycle_left and rocket) at sigma
# 15, 25 and 50; at sigma 5 the same multiples are used, untuned there.
def _opencv_nl_means(noisy: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    # h = hColor = 0.6 sigma (grid 0.4-1.0; 0.6 best at all three sigmas); 7x7 template and 21x21
    # search window, OpenCV's recommended sizes
    h = 0.6 * sigma
    if noisy.ndim == 2:
        return cv2.fastNlMeansDenoising(np.ascontiguousarray(noisy), None, h, 7, 21)
    # OpenCV's colour images are BGR: it splits luminance from colour (CIELAB) assuming that order
    bgr = cv2.cvtColor(np.ascontiguousarray(noisy), cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21), cv2.COLOR_BGR2RGB)


def _skimage_nl_means(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    # h = 0.6 sigma with sigma given, fast mode, 5x5 patches, distance 6 (grid 0.4-1.2; 0.6 best at
    # 15, within 0.1 dB of the best at 25, 0.5 dB below 0.4 at 50)
    s = sigma / 255.0
    return _to_u8(denoise_nl_means(_to01(noisy), h=0.6 * s, sigma=s, fast_mode=True, patch_size=5,
                                   patch_distance=6, channel_axis=_channel_axis(noisy)))


def _skimage_tv(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    # weight = sigma (grid 0.5-3 sigma; best at 15 and 25, 0.4 dB below 1.5 sigma at 50)
    return _to_u8(denoise_tv_chambolle(_to01(noisy), weight=sigma / 255.0, channel_axis=_channel_axis(noisy)))


def _skimage_wavelet(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    # BayesShrink soft thresholds per subband, in YCbCr for colour; rescale_sigma keeps sigma right
    # after the colour transform.
    colour = noisy.ndim == 3
    return _to_u8(denoise_wavelet(_to01(noisy), sigma=sigma / 255.0, method="BayesShrink", mode="soft",
                                  convert2ycbcr=colour, rescale_sigma=True, channel_axis=_channel_axis(noisy)))


# dark channel prior --------------------------------------------------------------------------
# He, Sun and Tang (CVPR 2009 / TPAMI 2011), with the transmission refined by the guided filter (He,
# Sun and Tang, ECCV 2010 / TPAMI 2013) in place of the original soft matting, as the guided-filter
# paper proposes. The published constants are kept; the two sizes were picked once for 256x256
# crops, by mean PSNR on the same two training crops under four draws each of the package's
# synthetic haze (12.06 dB in, 21.15 dB out at the chosen sizes).
_DCP_PATCH = 15          # dark-channel window (px): the paper's (grid 7, 15)
_DCP_OMEGA = 0.95        # fraction of the haze removed: a trace is left for depth perception
_DCP_T_FLOOR = 0.1       # transmission floor: dividing by less would blow up noise in dense haze
_DCP_AIRLIGHT_FRACTION = 0.001  # the airlight comes from the brightest 0.1 % of the dark channel
_GUIDED_RADIUS = 30      # px, for 256x256 crops (grid 15, 30, 60; the paper's 60 was for 600x400 images)
_GUIDED_EPS = 1e-3


def _box_mean(plane: np.ndarray, radius: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(plane, size=2 * radius + 1, mode="reflect")


def _guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of ``source`` by a grey ``guide``: in every window the output is
    ``a * guide + b``, with (a, b) the least-squares fit of the source (ECCV 2010, eqs. 7-8)."""
    mean_guide, mean_source = _box_mean(guide, radius), _box_mean(source, radius)
    covariance = _box_mean(guide * source, radius) - mean_guide * mean_source
    variance = _box_mean(guide * guide, radius) - mean_guide * mean_guide
    a = covariance / (variance + eps)
    b = mean_source - a * mean_guide
    return _box_mean(a, radius) * guide + _box_mean(b, radius)


def _dark_channel(image01: np.ndarray) -> np.ndarray:
    """min over a patch of min over channels (CVPR 2009, eq. 5): near 0 in haze-free outdoor patches."""
    from scipy.ndimage import minimum_filter

    return minimum_filter(image01.min(axis=2), size=_DCP_PATCH, mode="nearest")


def _dark_channel_dehaze(hazy: np.ndarray, level: None) -> np.ndarray:
    """Invert the scattering model ``I = J t + A (1 - t)`` (CVPR 2009, eq. 1) with ``A`` and ``t``
    estimated by the dark channel prior: ``t = 1 - omega * dark(I / A)`` (eq. 12), refined by the
    guided filter, and ``J = (I - A) / max(t, t0) + A`` (eq. 22). ``level`` is always None: the
    method is blind."""
    image = _to01(hazy)
    dark = _dark_channel(image)
    count = max(1, int(round(dark.size * _DCP_AIRLIGHT_FRACTION)))
    haziest = np.argpartition(dark.ravel(), -count)[-count:]
    candidates = image.reshape(-1, 3)[haziest]
    # of the haziest pixels, the brightest input pixel is the airlight (CVPR 2009, section 4.4)
    airlight = np.maximum(candidates[np.argmax(candidates.sum(axis=1))], 1e-3)
    transmission = 1.0 - _DCP_OMEGA * _dark_channel(image / airlight)
    transmission = _guided_filter(image.mean(axis=2), transmission, _GUIDED_RADIUS, _GUIDED_EPS)
    transmission = np.maximum(transmission, _DCP_T_FLOOR)[..., None]
    return _to_u8((image - airlight) / transmission + airlight)


@dataclass(frozen=True)
class Baseline:
    name: str                 # the row's label
    modules: tuple[str, ...]  # the importable modules it needs
    package: str              # the pip package(s) that provide them
    restore: Callable[[np.ndarray, float | None], np.ndarray]  # (8-bit image, sigma or None) -> 8-bit image
    task: str = "noise"       # the evaluation rows it runs on: "noise" or "haze"

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)


#: The classical rows of the evaluation, in table order.
BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("BM3D", ("bm3d",), "bm3d", _bm3d),  # CBM3D on colour, BM3D on grey
    Baseline("OpenCV NL-means", ("cv2",), "opencv-python-headless", _opencv_nl_means),
    Baseline("scikit-image NL-means", ("skimage",), "scikit-image", _skimage_nl_means),
    Baseline("scikit-image TV", ("skimage",), "scikit-image", _skimage_tv),
    Baseline("scikit-image wavelet", ("skimage", "pywt"), "scikit-image and PyWavelets", _skimage_wavelet),
    Baseline("dark channel prior", ("scipy",), "scipy (comes with scikit-image)", _dark_channel_dehaze, task="haze"),
)}


def run_baseline(name: str, degraded: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Restore 8-bit ``degraded``, RGB (H, W, 3) or, for a denoiser, grey (H, W): a denoiser is
    given the noise ``sigma`` (in 0..255 units); the dehazer is blind and takes none."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    baseline = BASELINES[name]
    grey_ok = baseline.task == "noise"
    is_rgb = isinstance(degraded, np.ndarray) and degraded.ndim == 3 and degraded.shape[2] == 3
    is_grey = isinstance(degraded, np.ndarray) and degraded.ndim == 2
    if not isinstance(degraded, np.ndarray) or degraded.dtype != np.uint8 or not (is_rgb or (grey_ok and is_grey)):
        expected = "an 8-bit RGB (H, W, 3) or grey (H, W) array" if grey_ok else "an 8-bit RGB array (H, W, 3)"
        raise ValueError(f"{name}: expects {expected}, got "
                         f"{getattr(degraded, 'dtype', type(degraded).__name__)} {getattr(degraded, 'shape', '')}")
    if baseline.task == "noise":
        if sigma is None or not 0 < sigma <= 255:
            raise ValueError(f"{name}: sigma must be in (0, 255] (8-bit units), got {sigma!r}")
        sigma = float(sigma)
    elif sigma is not None:
        raise ValueError(f"{name}: a blind {baseline.task} restorer takes no sigma, got {sigma!r}")
    if not baseline.available():
        raise BaselineUnavailable(f"{name} needs the {baseline.package!r} package: pip install -e \".[eval]\"")
    out = baseline.restore(degraded, sigma)
    if out.shape != degraded.shape or out.dtype != np.uint8:
        raise RuntimeError(f"{name} returned {out.dtype} {out.shape} for {degraded.shape}")  # a library changed
    return out
