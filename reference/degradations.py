"""Synthetic images and synthetic degradations for training and testing without datasets.

The paper's datasets (Snow100K, Outdoor-Rain, Dense-Haze, SIDD, LIVE1, ...) cannot be downloaded
here, so the project makes its own (HQ, LQ) pairs: a clean image (a procedural "dead leaves"
image, or a real photo from a clean folder) and a degraded copy made by the functions below.

Conventions, shared by every function in this file:

* images are numpy float32 arrays, HWC, values in [0, 1]; C is 3 (RGB) or 1 (grey);
* every random choice comes from the ``rng`` argument (a ``np.random.Generator``), never from a
  global generator, so a (seed, index) pair always gives the same image (see ``data.py``);
* every degradation returns a new float32 array of the input's shape, clipped to [0, 1]
  (a degraded photo saved to a file is clipped too, and that is what a restorer will meet).

``parse_degradation`` turns a short text spec (``"noise:5-50"``, ``"jpeg:10"``, ``"mix"``, ...)
into a callable ``Degradation`` so a command line or a checkpoint can name one.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "DEGRADATION_NAMES",
    "Degradation",
    "dead_leaves",
    "gaussian_noise",
    "haze",
    "jpeg",
    "parse_degradation",
    "rain",
    "snow",
]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _check_image(img: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an HWC image and return it as float32 (no copy when it already is)."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{what} must be a numpy array (HWC, float in [0, 1]), got {type(img).__name__}")
    if img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1 or img.shape[2] < 1:
        raise ValueError(f"{what} must have shape (H, W, C) with H, W, C >= 1, got shape {img.shape}")
    return img.astype(np.float32, copy=False)


def _check_in_range(name: str, value: float, low: float, high: float) -> float:
    value = float(value)
    if not (low <= value <= high):  # also rejects NaN
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _uniform_or(value: float | None, rng: np.random.Generator, low: float, high: float) -> float:
    """``value`` if given, else a draw from U(low, high): the degradations' 'default strength'."""
    return float(rng.uniform(low, high)) if value is None else float(value)


def _clip01(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)


def _correlate_plane(plane: np.ndarray, kernel: np.ndarray, padding: int | tuple[int, int]) -> np.ndarray:
    """2-D correlation of one (H, W) plane with a (kh, kw) kernel, zero padding.

    torch's CPU conv2d is used because it is fast and avoids a scipy dependency; all kernels
    used here are point-symmetric, so correlation and convolution agree.
    """
    x = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None]
    k = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))[None, None]
    return F.conv2d(x, k, padding=padding)[0, 0].numpy()


def _upsample_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Smoothly (bicubic) upsample a small (h, w) plane to (height, width)."""
    x = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None]
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=True)[0, 0].numpy()


# ------------------------------------------------------------------------------------------------
# procedural clean images
# ------------------------------------------------------------------------------------------------
def _power_law_radii(rng: np.random.Generator, count: int, r_min: float, r_max: float) -> np.ndarray:
    """Radii with density p(r) ~ r^-3 on [r_min, r_max], by inverting the CDF.

    r^-3 is the classic dead-leaves law (Lee, Mumford & Huang 2001): it makes the image
    statistically scale invariant, like natural images.
    """
    u = rng.random(count)
    inv_sq_min, inv_sq_max = r_min ** -2, r_max ** -2
    return (inv_sq_min - u * (inv_sq_min - inv_sq_max)) ** -0.5


def _leaf_label_map(height: int, width: int, cy, cx, radius, half_height, is_disk) -> np.ndarray:
    """Paint leaves back to front into an int32 map of 'which leaf is visible here' (0 = background).

    Only the label is painted here (one cheap mask write per leaf over its bounding box); the
    colours and textures are gathered afterwards for all pixels at once.
    """
    label = np.zeros((height, width), dtype=np.int32)
    rows = np.arange(height, dtype=np.float32)
    cols = np.arange(width, dtype=np.float32)
    for leaf, (y, x, r, hh, disk) in enumerate(zip(cy, cx, radius, half_height, is_disk), start=1):
        extent_y = r if disk else hh
        y0, y1 = max(int(y - extent_y), 0), min(int(y + extent_y) + 1, height)
        x0, x1 = max(int(x - r), 0), min(int(x + r) + 1, width)
        if y0 >= y1 or x0 >= x1:
            continue
        if disk:
            inside = (rows[y0:y1, None] - y) ** 2 + (cols[None, x0:x1] - x) ** 2 <= r * r
            label[y0:y1, x0:x1][inside] = leaf
        else:  # axis-aligned rectangle: its bounding box is the shape
            label[y0:y1, x0:x1] = leaf
    return label


def dead_leaves(height: int, width: int, rng: np.random.Generator, channels: int = 3) -> np.ndarray:
    """A procedural "dead leaves" image: occluding disks and rectangles, float32 HWC in [0, 1].

    Model: leaves fall one on top of the other; each is a disk (or, one time in four, an
    axis-aligned rectangle) with radius drawn from p(r) ~ r^-3 between about 1.5 px and half
    the image side, a random colour, a gentle linear shading and, for half of them, a faint
    sinusoidal stripe texture. So a crop holds sharp edges at all scales, flat areas, smooth
    gradients and fine texture: the structures a restorer must keep while removing a degradation.
    Enough leaves are dropped to cover the image about three times over; the few pixels left
    bare show a shaded background leaf.
    """
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"dead_leaves {name} must be an integer >= 1, got {value!r}")
    if channels not in (1, 3):
        raise ValueError(f"dead_leaves channels must be 1 or 3, got {channels!r}")
    height, width = int(height), int(width)

    side = min(height, width)
    # Small leaves cost the most (there are many); a floor that grows with large images keeps
    # 256^2 in tens of milliseconds and the leaf count bounded for bigger images.
    r_min = max(1.5, side / 128.0)
    r_max = max(r_min * 1.5, side / 2.0)
    mean_area = math.pi * 2.0 * r_min ** 2 * math.log(r_max / r_min)  # pi E[r^2] for the r^-3 law
    count = int(min(3.0 * height * width / mean_area, 20000))

    radius = _power_law_radii(rng, count, r_min, r_max)
    cy = rng.uniform(0.0, height, count)
    cx = rng.uniform(0.0, width, count)
    is_disk = rng.random(count) >= 0.25
    half_height = radius * rng.uniform(0.5, 2.0, count)  # rectangles' aspect ratio
    label = _leaf_label_map(height, width, cy.tolist(), cx.tolist(), radius.tolist(),
                            half_height.tolist(), is_disk.tolist())

    # Per-leaf appearance; index 0 is the background leaf that spans the whole image.
    leaves = count + 1
    grey = rng.random((leaves, 1))
    saturation = rng.random((leaves, 1))
    colour = grey + saturation * (rng.random((leaves, channels)) - grey)  # muted, natural-ish colours
    centre_y = np.concatenate([[height / 2.0], cy])
    centre_x = np.concatenate([[width / 2.0], cx])
    scale = np.concatenate([[side / 2.0], radius])
    gradient = rng.normal(0.0, 0.08, (leaves, 2))  # brightness change per leaf radius
    stripe_amplitude = rng.uniform(0.0, 0.08, leaves) * (rng.random(leaves) < 0.5)
    stripe_frequency = rng.uniform(0.05, 0.35, leaves)  # cycles per pixel
    stripe_angle = rng.uniform(0.0, math.pi, leaves)
    stripe_phase = rng.uniform(0.0, 2.0 * math.pi, leaves)

    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    dy = (rows - centre_y[label]) / scale[label]
    dx = (cols - centre_x[label]) / scale[label]
    shading = gradient[label, 0] * dy + gradient[label, 1] * dx
    along = rows * np.sin(stripe_angle)[label] + cols * np.cos(stripe_angle)[label]
    texture = stripe_amplitude[label] * np.sin(2.0 * math.pi * stripe_frequency[label] * along
                                               + stripe_phase[label])
    img = colour[label] + (shading + texture)[..., None]
    return _clip01(img)


# ------------------------------------------------------------------------------------------------
# degradations
# ------------------------------------------------------------------------------------------------
def gaussian_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Additive white Gaussian noise, ``I = clip(J + sigma * n)``, ``n ~ N(0, I)``.

    ``sigma`` is in [0, 1] image units (25/255 is the classic "sigma 25"). The result is clipped
    to [0, 1] like a noisy photo saved to a file, so near black and white the noise is one-sided.
    """
    img = _check_image(img)
    sigma = _check_in_range("noise sigma (in [0, 1] units, e.g. 25/255)", sigma, 0.0, 1.0)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    return _clip01(img + np.float32(sigma) * noise)


def jpeg(img: np.ndarray, rng: np.random.Generator, quality: int) -> np.ndarray:
    """JPEG compression artefacts: quantise to 8 bits, encode with Pillow at ``quality``, decode.

    ``quality`` is Pillow's 1..100 (above 95 Pillow's docs advise against it; it is allowed).
    ``rng`` is unused (the codec is deterministic) and kept so every degradation has the same
    signature. Handles 1-channel (greyscale JPEG) and 3-channel (RGB, 4:2:0 chroma) images.
    """
    del rng
    img = _check_image(img)
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"jpeg quality must be an integer in [1, 100], got {quality!r}")
    channels = img.shape[2]
    if channels not in (1, 3):
        raise ValueError(f"jpeg needs an image with 1 or 3 channels, got {channels}")
    as_uint8 = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    pil = Image.fromarray(as_uint8[..., 0] if channels == 1 else as_uint8, mode="L" if channels == 1 else "RGB")
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    return decoded.reshape(img.shape) / np.float32(255.0)


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """An anti-aliased line segment of ``length`` pixels at ``angle`` radians from vertical.

    Weight = max(0, 1 - distance to the segment), so the line is about 2 px wide with soft
    sides and a peak of 1 (a streak is as bright as the drop that made it, not 1/length of it).
    """
    half = int(math.ceil(length / 2.0)) + 1
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    yy, xx = offsets[:, None], offsets[None, :]
    direction_y, direction_x = math.cos(angle), math.sin(angle)
    along = np.clip(yy * direction_y + xx * direction_x, -length / 2.0, length / 2.0)
    distance = np.hypot(yy - along * direction_y, xx - along * direction_x)
    return np.maximum(0.0, 1.0 - distance).astype(np.float32)


def rain(img: np.ndarray, rng: np.random.Generator, density: float | None = None,
         length: float | None = None, angle_degrees: float | None = None,
         opacity: float | None = None) -> np.ndarray:
    """Synthetic rain streaks: sparse drops motion-blurred along one near-vertical direction.

    Model (as in the Rain100/Rain800 synthetic sets): a sparse drop map ``S`` (each pixel a drop
    with probability ``density``, brightness U(0.5, 1)) is convolved with a line kernel of
    ``length`` pixels at ``angle_degrees`` from vertical, and screen-blended over the image,
    ``I = 1 - (1 - J) * (1 - opacity * S_blurred)``, which only brightens.
    Unset parameters are drawn per call: density U(0.002, 0.008), length U(0.1, 0.3) of the
    shorter side (at least 3 px), angle U(-20, 20) degrees, opacity U(0.4, 0.9).
    """
    img = _check_image(img)
    height, width = img.shape[:2]
    density = _check_in_range("rain density", _uniform_or(density, rng, 0.002, 0.008), 0.0, 1.0)
    if length is None:
        length = rng.uniform(0.1, 0.3) * min(height, width)
    length = max(3.0, _check_in_range("rain length (pixels)", length, 0.0, 4.0 * max(height, width)))
    angle = math.radians(_check_in_range("rain angle_degrees", _uniform_or(angle_degrees, rng, -20.0, 20.0),
                                         -90.0, 90.0))
    opacity = _check_in_range("rain opacity", _uniform_or(opacity, rng, 0.4, 0.9), 0.0, 1.0)

    kernel = _line_kernel(length, angle)
    pad = kernel.shape[0] // 2
    # Drops are scattered over a canvas larger by the kernel radius, so streaks also enter
    # from outside the frame instead of all starting inside it; a 'valid' correlation crops back.
    canvas = (height + 2 * pad, width + 2 * pad)
    drops = (rng.random(canvas) < density) * rng.uniform(0.5, 1.0, canvas)
    streaks = np.clip(_correlate_plane(drops, kernel, padding=0), 0.0, 1.0)[..., None]
    return _clip01(1.0 - (1.0 - img) * (1.0 - opacity * streaks))


def _random_depth(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth depth map in [0, 1]: bicubic-upsampled coarse noise plus a vertical gradient.

    The gradient makes the top of the frame (sky, horizon) far and the bottom near, as in
    most outdoor photos; the coarse noise adds hills and objects at random distances.
    """
    grid = int(rng.integers(3, 7))
    coarse = _upsample_plane(rng.random((grid, grid)), height, width)
    top_is_far = 1.0 - np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    gradient_weight = rng.uniform(0.3, 0.8)
    depth = gradient_weight * top_is_far + (1.0 - gradient_weight) * coarse
    depth -= depth.min()
    return depth / max(float(depth.max()), 1e-6)


def haze(img: np.ndarray, rng: np.random.Generator, scattering: float | None = None,
         airlight: float | None = None) -> np.ndarray:
    """Haze by the atmospheric scattering model, ``I = J * t + A * (1 - t)``, ``t = exp(-beta * d)``.

    ``d`` is a random smooth depth map scaled to [0.2, 1] (nothing is at zero distance),
    ``beta`` = ``scattering`` (drawn from U(0.4, 2.0) when unset), and the airlight ``A`` a grey
    level (drawn from U(0.7, 1.0) when unset). Pixels move toward A, far ones the most.
    """
    img = _check_image(img)
    height, width = img.shape[:2]
    beta = _check_in_range("haze scattering coefficient", _uniform_or(scattering, rng, 0.4, 2.0), 0.0, 10.0)
    airlight = _check_in_range("haze airlight", _uniform_or(airlight, rng, 0.7, 1.0), 0.0, 1.0)
    depth = 0.2 + 0.8 * _random_depth(height, width, rng)
    transmission = np.exp(-beta * depth)[..., None]
    return _clip01(img * transmission + airlight * (1.0 - transmission))


def _gaussian_blob_kernel(sigma: float) -> np.ndarray:
    """An isotropic Gaussian with peak 1 (not sum 1): one flake keeps its opacity at its centre."""
    half = max(1, int(math.ceil(3.0 * sigma)))
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    return np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma * sigma)).astype(np.float32)


#: (radius range in px at 256 px, drops per pixel range): many small far flakes, few big near ones.
_SNOW_LAYERS = (((0.5, 1.0), (0.002, 0.008)), ((1.0, 2.0), (0.0005, 0.002)), ((2.0, 3.5), (0.0001, 0.0005)))


def snow(img: np.ndarray, rng: np.random.Generator, amount: float | None = None,
         veil: float | None = None) -> np.ndarray:
    """Synthetic snow: soft white flakes in three size layers over a mild white veil.

    Model (in the spirit of Snow100K's synthetic masks): ``I = (1 - a) * V + a * W`` with
    ``V = (1 - v) * J + v * W`` the veiled image, ``W`` a near-white snow colour, ``v = veil``
    (drawn from U(0, 0.2) when unset) and ``a`` the flake opacity map: sparse drops (opacity
    U(0.5, 1)) convolved with Gaussian blobs, per layer. ``amount`` scales the flake counts
    (drawn from U(0.5, 1.5) when unset). Flake sizes grow with the image above 256 px.
    """
    img = _check_image(img)
    height, width = img.shape[:2]
    amount = _check_in_range("snow amount", _uniform_or(amount, rng, 0.5, 1.5), 0.0, 20.0)
    veil = _check_in_range("snow veil", _uniform_or(veil, rng, 0.0, 0.2), 0.0, 1.0)
    snow_colour = np.float32(rng.uniform(0.85, 1.0))
    size_scale = max(1.0, min(height, width) / 256.0)

    opacity = np.zeros((height, width), dtype=np.float32)
    for (r_low, r_high), (d_low, d_high) in _SNOW_LAYERS:
        radius = rng.uniform(r_low, r_high) * size_scale
        density = min(1.0, amount * rng.uniform(d_low, d_high))
        drops = (rng.random((height, width)) < density) * rng.uniform(0.5, 1.0, (height, width))
        kernel = _gaussian_blob_kernel(sigma=radius / 1.5 + 0.3)  # +0.3: even tiny flakes are a bit blurred
        layer = _correlate_plane(drops, kernel, padding=kernel.shape[0] // 2)
        opacity = 1.0 - (1.0 - opacity) * (1.0 - np.clip(layer, 0.0, 1.0))  # layers occlude like alpha
    veiled = (1.0 - veil) * img + veil * snow_colour
    alpha = opacity[..., None]
    return _clip01((1.0 - alpha) * veiled + alpha * snow_colour)


# ------------------------------------------------------------------------------------------------
# text specs
# ------------------------------------------------------------------------------------------------
#: Names accepted by :func:`parse_degradation`; ``mix`` picks one of the others per call.
DEGRADATION_NAMES = ("noise", "jpeg", "rain", "haze", "snow", "mix")
_BASIC_NAMES = DEGRADATION_NAMES[:-1]

_DEFAULT_NOISE_SIGMA_255 = (0.0, 50.0)
_DEFAULT_JPEG_QUALITY = (10, 50)
_NUMBER_RANGE = re.compile(r"^(\d+(?:\.\d*)?)(?:-(\d+(?:\.\d*)?))?$")

_GRAMMAR = ("noise | noise:S | noise:S1-S2 (sigma in /255 units, 0..255; default 0-50), "
            "jpeg | jpeg:Q | jpeg:Q1-Q2 (integer quality 1..100; default 10-50), rain, haze, snow, "
            "mix (one of noise/jpeg/rain/haze/snow per call), or a comma list of these "
            "(one item picked per call)")


@dataclass(frozen=True)
class _Choice:
    """One item of a spec: a degradation name and, for noise/jpeg, the range its parameter is drawn from."""

    name: str
    low: float = 0.0
    high: float = 0.0

    def apply(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.name == "noise":
            sigma_255 = self.low if self.low == self.high else rng.uniform(self.low, self.high)
            return gaussian_noise(img, rng, sigma_255 / 255.0)
        if self.name == "jpeg":
            quality = int(self.low) if self.low == self.high else int(rng.integers(self.low, self.high + 1))
            return jpeg(img, rng, quality)
        function: Callable[[np.ndarray, np.random.Generator], np.ndarray] = {"rain": rain, "haze": haze,
                                                                             "snow": snow}[self.name]
        return function(img, rng)


class Degradation:
    """A parsed degradation spec: ``degradation(img, rng) -> degraded img``.

    ``spec`` is the text it was parsed from (whitespace removed), fit for logs and checkpoints.
    With several choices (a comma list or ``mix``) one is picked uniformly per call, from ``rng``.
    """

    def __init__(self, spec: str, choices: tuple[_Choice, ...]):
        self.spec = spec
        self.choices = choices

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        choice = self.choices[0] if len(self.choices) == 1 else self.choices[int(rng.integers(len(self.choices)))]
        return choice.apply(img, rng)

    def __repr__(self) -> str:
        return f"Degradation({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Degradation) and self.choices == other.choices

    def __hash__(self) -> int:
        return hash(self.choices)


def _parse_range(spec: str, item: str, argument: str, low_limit: float, high_limit: float,
                 integer: bool) -> tuple[float, float]:
    match = _NUMBER_RANGE.match(argument)
    if match is None or (integer and "." in argument):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"degradation spec {spec!r}: {item!r} needs {kind} or a range like "
                         f"{'10-50' if integer else '5-50'} after ':', got {argument!r}")
    low = float(match.group(1))
    high = float(match.group(2)) if match.group(2) is not None else low
    if low > high:
        raise ValueError(f"degradation spec {spec!r}: range {argument!r} in {item!r} is inverted (low > high)")
    if not (low_limit <= low and high <= high_limit):
        raise ValueError(f"degradation spec {spec!r}: {item!r} is outside the allowed "
                         f"{low_limit:g}..{high_limit:g}")
    return low, high


def _parse_item(spec: str, item: str) -> tuple[_Choice, ...]:
    name, colon, argument = item.partition(":")
    if name not in DEGRADATION_NAMES:
        raise ValueError(f"degradation spec {spec!r}: unknown degradation {name!r}; allowed: {_GRAMMAR}")
    if colon and name not in ("noise", "jpeg"):
        raise ValueError(f"degradation spec {spec!r}: {name!r} takes no parameter, got {item!r}; "
                         f"allowed: {_GRAMMAR}")
    if name == "noise":
        low, high = (_parse_range(spec, item, argument, 0.0, 255.0, integer=False) if colon
                     else _DEFAULT_NOISE_SIGMA_255)
        return (_Choice("noise", low, high),)
    if name == "jpeg":
        low, high = _parse_range(spec, item, argument, 1, 100, integer=True) if colon else _DEFAULT_JPEG_QUALITY
        return (_Choice("jpeg", low, high),)
    if name == "mix":
        return tuple(choice for basic in _BASIC_NAMES for choice in _parse_item(spec, basic))
    return (_Choice(name),)


def parse_degradation(spec: str) -> Degradation:
    """Parse a degradation spec such as ``"noise:25"``, ``"jpeg:10-50"``, ``"mix"`` or ``"noise:25,jpeg:30"``.

    Grammar: ``noise`` (sigma ~ U(0, 50)/255 per call), ``noise:25`` (sigma = 25/255),
    ``noise:5-50`` (sigma ~ U(5, 50)/255); ``jpeg`` (quality ~ integer U[10, 50]), ``jpeg:10``,
    ``jpeg:10-50``; ``rain``, ``haze``, ``snow`` (strengths drawn per call from the ranges in
    their functions); ``mix`` = one of noise/jpeg/rain/haze/snow with default ranges, picked
    uniformly per call; a comma list picks one of its items uniformly per call (``mix`` in a
    list counts as its five items). Raises ``ValueError`` naming the spec and what is allowed.
    """
    if not isinstance(spec, str):
        raise TypeError(f"degradation spec must be a string, got {type(spec).__name__}")
    normalised = "".join(spec.split()).lower()
    if not normalised:
        raise ValueError(f"degradation spec is empty; allowed: {_GRAMMAR}")
    items = normalised.split(",")
    if any(not item for item in items):
        raise ValueError(f"degradation spec {spec!r} has an empty item between commas; allowed: {_GRAMMAR}")
    choices = tuple(choice for item in items for choice in _parse_item(spec, item))
    return Degradation(normalised, choices)
