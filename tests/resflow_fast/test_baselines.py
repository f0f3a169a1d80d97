"""Tests of resflow_fast/baselines.py: each classical denoiser denoises, and says when it cannot run."""
import numpy as np
import pytest

from resflow_fast import baselines
from resflow_fast.baselines import BASELINES, BaselineUnavailable, run_baseline


def _smooth_and_noisy(sigma, size=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    clean = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.5 + 0.3 * np.cos(5 * yy), 0.4 + 0.2 * xx * yy], axis=-1)
    clean_u8 = np.round(clean * 255).astype(np.uint8)
    noisy = np.clip(np.round(clean_u8 + sigma * rng.standard_normal(clean.shape)), 0, 255).astype(np.uint8)
    return clean_u8, noisy


def _psnr(a, b):
    return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.mark.parametrize("name", list(BASELINES))
def test_each_available_baseline_denoises(name):
    if not BASELINES[name].available():
        pytest.skip(f"{BASELINES[name].package} is not installed (the optional eval extra)")
    clean, noisy = _smooth_and_noisy(25)
    out = run_baseline(name, noisy, 25)
    assert out.dtype == np.uint8 and out.shape == noisy.shape
    assert _psnr(out, clean) > _psnr(noisy, clean) + 3, name


def test_a_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(baselines.importlib.util, "find_spec", lambda module: None)
    _, noisy = _smooth_and_noisy(15, size=16)
    with pytest.raises(BaselineUnavailable, match=r"needs the 'bm3d' package: pip install -e \"\.\[eval\]\""):
        run_baseline("BM3D (CBM3D)", noisy, 15)


def test_bad_input_is_named():
    _, noisy = _smooth_and_noisy(15, size=16)
    with pytest.raises(ValueError, match="unknown baseline 'BM4D'"):
        run_baseline("BM4D", noisy, 15)
    with pytest.raises(ValueError, match="8-bit RGB array"):
        run_baseline("scikit-image TV", noisy.astype(np.float32) / 255, 15)
    with pytest.raises(ValueError, match="8-bit RGB array"):
        run_baseline("scikit-image TV", noisy[..., 0], 15)
    with pytest.raises(ValueError, match=r"sigma must be in \(0, 255\]"):
        run_baseline("scikit-image TV", noisy, 0)
