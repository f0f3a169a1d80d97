"""The degradations of ``resflow eval``: which ones, at which levels, seeded per image.

Each is the package's own synthetic degradation (``reference/degradations.py``) at a fixed level,
seeded by the (image, degradation) names alone, so every machine degrades every image the same
way, and rounded to 8 bits, as an image file would hold it. Two rows check that a restorer does
no harm where there is little or nothing to do: the clean photograph itself, and a greyscale
photograph (one channel, as a grey file holds it) with its noise.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..reference.degradations import gaussian_noise, haze, jpeg, rain, snow

__all__ = ["DEGRADATIONS", "EvalDegradation"]


@dataclass(frozen=True)
class EvalDegradation:
    key: str        # "noise-25"
    task: str       # which model restores it: noise, jpeg, rain, haze, snow, clean
    label: str
    level: float | None = None  # sigma in 8-bit units, or JPEG quality
    grey: bool = False  # the photograph made greyscale (H, W) first, as a grey file would hold it

    def target(self, clean: np.ndarray) -> np.ndarray:
        """The clean image a restoration is compared with: the RGB crop, or its grey version
        (Pillow's ITU-R 601 luma, what converting a photograph to greyscale gives)."""
        if not self.grey:
            return clean
        from PIL import Image

        return np.asarray(Image.fromarray(clean).convert("L"))

    def apply(self, clean: np.ndarray, image_name: str) -> np.ndarray:
        """The degraded 8-bit image, the same for a given (image, degradation) on every machine:
        (H, W, 3) from an RGB crop, (H, W) for a grey row."""
        rng = np.random.default_rng(zlib.crc32(f"{image_name}/{self.key}".encode()))
        target = self.target(clean)
        img01 = (target[..., None] if self.grey else target).astype(np.float32) / np.float32(255.0)
        if self.task == "clean":
            return target.copy()
        if self.task == "noise":
            out = gaussian_noise(img01, rng, self.level / 255.0)
        elif self.task == "jpeg":
            out = jpeg(img01, rng, int(self.level))
        elif self.task == "rain":
            out = rain(img01, rng)
        elif self.task == "haze":
            out = haze(img01, rng)
        elif self.task == "snow":
            out = snow(img01, rng)
        else:  # a programming error, not a user's
            raise AssertionError(self.task)
        out8 = np.clip(np.round(np.asarray(out, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return out8[..., 0] if self.grey else out8


#: Every degradation the evaluation knows, in report order.
DEGRADATIONS: dict[str, EvalDegradation] = {d.key: d for d in (
    # nothing to do: a restorer should give the photograph back (a user cannot know it was clean)
    EvalDegradation("clean", "clean", "clean photograph (nothing to restore)"),
    # sigma 5: a blind denoiser must also leave a nearly clean photograph be
    EvalDegradation("noise-5", "noise", "Gaussian noise, sigma 5 (nearly clean)", 5),
    EvalDegradation("noise-15", "noise", "Gaussian noise, sigma 15", 15),
    EvalDegradation("noise-25", "noise", "Gaussian noise, sigma 25", 25),
    EvalDegradation("noise-50", "noise", "Gaussian noise, sigma 50", 50),
    # a grey photograph reaches the RGB model as three equal channels with the same noise in each
    EvalDegradation("grey-noise-25", "noise", "greyscale photograph, Gaussian noise sigma 25", 25, grey=True),
    EvalDegradation("jpeg-10", "jpeg", "JPEG, quality 10", 10),
    EvalDegradation("jpeg-20", "jpeg", "JPEG, quality 20", 20),
    EvalDegradation("jpeg-30", "jpeg", "JPEG, quality 30", 30),
    EvalDegradation("rain", "rain", "synthetic rain (random streaks)"),
    EvalDegradation("haze", "haze", "synthetic haze (random depth and airlight)"),
    # every degradation the package synthesises and trains on is measured
    EvalDegradation("snow", "snow", "synthetic snow (flakes over a veil)"),
)}
