"""Tests of resflow_fast/baselines.py: each classical denoiser denoises, the dehazer dehazes, and
each says when it cannot run."""
import numpy as np
import pytest

from resflow_fast import baselines
from resflow_fast.baselines import BASELINES, BaselineUnavailable, run_baseline
from resflow_fast.reference.degradations import haze

DENOISERS = [name for name, b in BASELINES.items() if b.task == "noise"]
DEHAZERS = [name for name, b in BASELINES.items() if b.task == "haze"]


def _smooth_and_noisy(sigma, size=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    clean = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.5 + 0.3 * np.cos(5 * yy), 0.4 + 0.2 * xx * yy], axis=-1)
    clean_u8 = np.round(clean * 255).astype(np.uint8)
    noisy = np.clip(np.round(clean_u8 + sigma * rng.standard_normal(clean.shape)), 0, 255).astype(np.uint8)
    return clean_u8, noisy


def _outdoor_and_hazy(size=96, seed=0):
    """Saturated colour blocks with shadows (the dark pixels the prior expects in haze-free
    scenes) under haze of a known strength."""
    rng = np.random.default_rng(seed)
    blocks = rng.random((size // 8, size // 8, 3)) ** 3  # mostly dark or strongly coloured
    clean = np.kron(blocks, np.ones((8, 8, 1)))
    clean_u8 = np.round(clean * 255).astype(np.uint8)
    hazy = haze(clean_u8.astype(np.float32) / 255, rng, scattering=1.2, airlight=0.85)
    return clean_u8, np.round(hazy * 255).astype(np.uint8)


@pytest.mark.parametrize("name", DENOISERS)
def test_each_available_baseline_denoises(name, psnr01):
    if not BASELINES[name].available():
        pytest.skip(f"{BASELINES[name].package} is not installed (the optional eval extra)")
    clean, noisy = _smooth_and_noisy(25)
    out = run_baseline(name, noisy, 25)
    assert out.dtype == np.uint8 and out.shape == noisy.shape
    assert psnr01(out / 255, clean / 255) > psnr01(noisy / 255, clean / 255) + 3, name


@pytest.mark.parametrize("name", DENOISERS)
def test_each_available_denoiser_denoises_a_grey_image_as_one_plane(name, psnr01):
    if not BASELINES[name].available():
        pytest.skip(f"{BASELINES[name].package} is not installed (the optional eval extra)")
    clean, _ = _smooth_and_noisy(25)
    grey = clean[..., 1]
    noisy = np.clip(grey + np.random.default_rng(3).normal(0, 25, grey.shape), 0, 255).round().astype(np.uint8)
    out = run_baseline(name, noisy, 25)
    assert out.dtype == np.uint8 and out.shape == grey.shape
    assert psnr01(out / 255, grey / 255) > psnr01(noisy / 255, grey / 255) + 3, name


def test_a_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(baselines.importlib.util, "find_spec", lambda module: None)
    _, noisy = _smooth_and_noisy(15, size=16)
    with pytest.raises(BaselineUnavailable, match=r"needs the 'bm3d' package: pip install -e \"\.\[eval\]\""):
        run_baseline("BM3D", noisy, 15)


def test_bad_input_is_named():
    _, noisy = _smooth_and_noisy(15, size=16)
    with pytest.raises(ValueError, match="unknown baseline 'BM4D'"):
        run_baseline("BM4D", noisy, 15)
    with pytest.raises(ValueError, match=r"8-bit RGB \(H, W, 3\) or grey \(H, W\) array"):
        run_baseline("scikit-image TV", noisy.astype(np.float32) / 255, 15)
    with pytest.raises(ValueError, match=r"8-bit RGB \(H, W, 3\) or grey \(H, W\) array, got uint8 \(16, 16, 4\)"):
        run_baseline("scikit-image TV", np.concatenate([noisy, noisy[..., :1]], axis=2), 15)
    with pytest.raises(ValueError, match=r"expects an 8-bit RGB array \(H, W, 3\), got uint8 \(16, 16\)"):
        run_baseline("dark channel prior", noisy[..., 0])  # the dehazer needs colour
    with pytest.raises(ValueError, match=r"sigma must be in \(0, 255\]"):
        run_baseline("scikit-image TV", noisy, 0)


@pytest.mark.parametrize("name", DEHAZERS)
def test_the_dehazer_dehazes_blind(name, psnr01):
    if not BASELINES[name].available():
        pytest.skip(f"{BASELINES[name].package} is not installed (the optional eval extra)")
    clean, hazy = _outdoor_and_hazy()
    out = run_baseline(name, hazy)
    assert out.dtype == np.uint8 and out.shape == hazy.shape
    assert psnr01(out / 255, clean / 255) > psnr01(hazy / 255, clean / 255) + 3
    # it restores contrast: the haze lifted the darkest pixels towards the airlight
    assert np.percentile(out.min(axis=2), 5) < np.percentile(hazy.min(axis=2), 5) - 40


def test_sigma_is_for_denoisers_only():
    _, noisy = _smooth_and_noisy(15, size=16)
    with pytest.raises(ValueError, match=r"sigma must be in \(0, 255\]"):
        run_baseline(DENOISERS[0], noisy)
    with pytest.raises(ValueError, match="a blind haze restorer takes no sigma"):
        run_baseline("dark channel prior", noisy, 15)
