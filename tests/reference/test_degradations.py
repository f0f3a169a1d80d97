"""Tests for reference/degradations.py: procedural images, degradations, spec parsing."""
from __future__ import annotations


import numpy as np
import pytest

from resflow_fast.reference.degradations import (
    DEGRADATION_NAMES,
    Degradation,
    dead_leaves,
    gaussian_noise,
    haze,
    jpeg,
    parse_degradation,
    rain,
    snow,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    # Non-square on purpose (rows != columns catches transposed H/W).
    return dead_leaves(48, 64, rng(123))


# ------------------------------------------------------------------------------------------------
# dead leaves
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height, width, channels", [(64, 64, 3), (37, 81, 3), (16, 16, 1), (1, 5, 3)])
def test_dead_leaves_shape_dtype_range(height, width, channels):
    img = dead_leaves(height, width, rng(), channels=channels)
    assert img.shape == (height, width, channels)
    assert img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0


def test_dead_leaves_is_deterministic_per_seed_and_varies_across_seeds():
    np.testing.assert_array_equal(dead_leaves(64, 64, rng(7)), dead_leaves(64, 64, rng(7)))
    assert not np.array_equal(dead_leaves(64, 64, rng(7)), dead_leaves(64, 64, rng(8)))


def test_dead_leaves_has_edges_and_texture():
    img = dead_leaves(128, 128, rng(1))
    assert img.std() > 0.1  # many different colours, not a flat image
    vertical_steps = np.abs(np.diff(img, axis=0))
    assert (vertical_steps > 0.2).mean() > 0.005  # sharp leaf boundaries
    assert ((vertical_steps > 0.001) & (vertical_steps < 0.05)).mean() > 0.05  # smooth shading/texture


@pytest.mark.parametrize("bad", [dict(height=0, width=8), dict(height=8, width=-1),
                                 dict(height=8, width=8, channels=2)])
def test_dead_leaves_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="dead_leaves"):
        dead_leaves(rng=rng(), **{"channels": 3, **bad})


# ------------------------------------------------------------------------------------------------
# every degradation: shape, dtype, range, determinism, effect
# ------------------------------------------------------------------------------------------------
DEGRADATIONS = {
    "noise": lambda img, r: gaussian_noise(img, r, 25 / 255),
    "jpeg": lambda img, r: jpeg(img, r, 20),
    "rain": rain,
    "haze": haze,
    "snow": snow,
}


@pytest.mark.parametrize("name", DEGRADATIONS)
@pytest.mark.parametrize("channels", [3, 1])
def test_degradation_preserves_shape_dtype_range_and_changes_image(name, channels, clean):
    img = clean if channels == 3 else clean.mean(axis=2, keepdims=True)
    out = DEGRADATIONS[name](img, rng(5))
    assert out.shape == img.shape
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - img).mean() > 1e-3, f"{name} left the image (almost) unchanged"


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_degradation_is_deterministic_per_rng_seed(name, clean):
    degrade = DEGRADATIONS[name]
    np.testing.assert_array_equal(degrade(clean, rng(5)), degrade(clean, rng(5)))
    if name != "jpeg":  # the codec is deterministic by design
        assert not np.array_equal(degrade(clean, rng(5)), degrade(clean, rng(6)))


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_degradation_does_not_modify_its_input(name, clean):
    before = clean.copy()
    DEGRADATIONS[name](clean, rng(5))
    np.testing.assert_array_equal(clean, before)


def test_noise_std_matches_sigma_on_flat_grey():
    grey = np.full((128, 128, 3), 0.5, dtype=np.float32)
    sigma = 10 / 255  # small enough that clipping at 0 and 1 never happens
    out = gaussian_noise(grey, rng(), sigma)
    assert out.std() == pytest.approx(sigma, rel=0.03)
    assert out.mean() == pytest.approx(0.5, abs=1e-3)


def test_noise_is_clipped():
    out = gaussian_noise(np.zeros((32, 32, 1), np.float32), rng(), 0.5)
    assert out.min() == 0.0 and out.max() <= 1.0


def test_jpeg_low_quality_is_worse_than_high_quality(psnr01, clean):
    assert psnr01(jpeg(clean, rng(), 10), clean) < psnr01(jpeg(clean, rng(), 90), clean) - 3.0


def test_haze_moves_the_image_toward_the_airlight():
    dark = np.full((32, 48, 3), 0.1, dtype=np.float32)
    out = haze(dark, rng(), scattering=1.0, airlight=0.9)
    assert 0.1 < out.mean() < 0.9
    assert out.max() <= 0.9 + 1e-6  # a convex mix of J and A never passes A
    # Random strength too: any draw brightens a dark image.
    assert haze(dark, rng(3)).mean() > dark.mean() + 0.05


def test_rain_and_snow_brighten_the_image(clean):
    assert rain(clean, rng()).mean() > clean.mean()
    assert snow(clean, rng()).mean() > clean.mean()


@pytest.mark.parametrize("call, match", [
    (lambda img: gaussian_noise(img, rng(), 1.5), r"sigma.*\[0.0, 1.0\].*1.5"),
    (lambda img: gaussian_noise(img, rng(), float("nan")), "sigma"),
    (lambda img: jpeg(img, rng(), 0), r"quality.*\[1, 100\].*0"),
    (lambda img: jpeg(img, rng(), 50.5), "quality"),
    (lambda img: jpeg(np.zeros((8, 8, 2), np.float32), rng(), 50), "1 or 3 channels, got 2"),
    (lambda img: haze(img, rng(), airlight=1.5), "airlight"),
    (lambda img: rain(img, rng(), opacity=-0.1), "opacity"),
    (lambda img: snow(img[..., 0], rng()), r"\(H, W, C\)"),
])
def test_degradations_reject_bad_arguments(call, match, clean):
    with pytest.raises(ValueError, match=match):
        call(clean)


# ------------------------------------------------------------------------------------------------
# spec parsing
# ------------------------------------------------------------------------------------------------
def choice_summary(degradation: Degradation) -> list[tuple]:
    return [(c.name, c.low, c.high) for c in degradation.choices]


@pytest.mark.parametrize("spec, expected", [
    ("noise", [("noise", 0.0, 50.0)]),
    ("noise:25", [("noise", 25.0, 25.0)]),
    ("noise:5-50", [("noise", 5.0, 50.0)]),
    ("noise:12.5", [("noise", 12.5, 12.5)]),
    ("jpeg", [("jpeg", 10, 50)]),
    ("jpeg:10", [("jpeg", 10, 10)]),
    ("jpeg:10-50", [("jpeg", 10, 50)]),
    ("rain", [("rain", 0.0, 0.0)]),
    (" Noise:25 , JPEG:30 ", [("noise", 25.0, 25.0), ("jpeg", 30, 30)]),
])
def test_parse_degradation_accepts_the_grammar(spec, expected):
    assert choice_summary(parse_degradation(spec)) == expected


def test_parse_mix_covers_every_basic_degradation():
    names = [c.name for c in parse_degradation("mix").choices]
    assert names == [n for n in DEGRADATION_NAMES if n != "mix"]


def test_degradation_spec_and_repr_are_readable():
    degradation = parse_degradation("noise:25, jpeg:30")
    assert degradation.spec == "noise:25,jpeg:30"
    assert repr(degradation) == "Degradation('noise:25,jpeg:30')"
    assert parse_degradation(degradation.spec) == degradation  # the spec round-trips


def test_fixed_noise_spec_matches_the_function(clean):
    np.testing.assert_array_equal(parse_degradation("noise:25")(clean, rng(1)), gaussian_noise(clean, rng(1), 25 / 255))


def test_fixed_jpeg_spec_matches_the_function(clean):
    np.testing.assert_array_equal(parse_degradation("jpeg:30")(clean, rng(1)), jpeg(clean, rng(1), 30))


def test_list_and_mix_pick_every_choice_and_are_deterministic(clean):
    small = clean[:16, :16]
    mixed = parse_degradation("noise:25,jpeg:30")
    jpeg_result = jpeg(small, rng(0), 30)
    picked_jpeg = [np.array_equal(mixed(small, rng(seed)), jpeg_result) for seed in range(12)]
    assert any(picked_jpeg) and not all(picked_jpeg)  # both items get picked
    np.testing.assert_array_equal(parse_degradation("mix")(small, rng(3)), parse_degradation("mix")(small, rng(3)))


@pytest.mark.parametrize("spec, match", [
    ("blur", r"unknown degradation 'blur'.*noise"),
    ("", "empty"),
    ("noise,,jpeg", "empty item"),
    ("noise:abc", r"'noise:abc'.*number"),
    ("noise:", "number"),
    ("noise:-5", "number"),
    ("noise:50-5", "inverted"),
    ("noise:300", r"outside the allowed 0\.\.255"),
    ("jpeg:0", r"outside the allowed 1\.\.100"),
    ("jpeg:101", r"outside the allowed 1\.\.100"),
    ("jpeg:50-10", "inverted"),
    ("jpeg:10.5", "integer"),
    ("haze:3", "takes no parameter"),
])
def test_parse_degradation_rejects_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match) as raised:
        parse_degradation(spec)
    if spec:
        assert repr(spec) in str(raised.value)  # the message names the spec


def test_parse_degradation_rejects_non_strings():
    with pytest.raises(TypeError, match="string"):
        parse_degradation(25)
