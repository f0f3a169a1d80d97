"""The degradations of ``resflow eval``: which ones, at which levels, seeded per image.

Each is the package's own synthetic degradation (``reference/degradations.py``) at a fixed level,
seeded by the (image, degradation) names alone, so every machine degrades every image the same
way, and rounded to 8 bits, as an image file would hold it.
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
    task: str       # which model restores it: noise, jpeg, rain, haze, snow
    label: str
    level: float | None = None  # sigma in 8-bit units, or JPEG quality

    def apply(self, clean: np.ndarray, image_name: str) -> np.ndarray:
        """The degraded 8-bit image, the same for a given (image, degradation) on every machine."""
        rng = np.random.default_rng(zlib.crc32(f"{image_name}/{self.key}".encode()))
        img01 = clean.astype(np.float32) / np.float32(255.0)
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
        return np.clip(np.round(np.asarray(out, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


#: Every degradation the evaluation knows, in report order.
DEGRADATIONS: dict[str, EvalDegradation] = {d.key: d for d in (
    # sigma 5: a blind denoiser must also leave a nearly clean photograph be
    EvalDegradation("noise-5", "noise", "Gaussian noise, sigma 5 (nearly clean)", 5),
    EvalDegradation("noise-15", "noise", "Gaussian noise, sigma 15", 15),
    EvalDegradation("noise-25", "noise", "Gaussian noise, sigma 25", 25),
    EvalDegradation("noise-50", "noise", "Gaussian noise, sigma 50", 50),
    EvalDegradation("jpeg-10", "jpeg", "JPEG, quality 10", 10),
    EvalDegradation("jpeg-20", "jpeg", "JPEG, quality 20", 20),
    EvalDegradation("jpeg-30", "jpeg", "JPEG, quality 30", 30),
    EvalDegradation("rain", "rain", "synthetic rain (random streaks)"),
    EvalDegradation("haze", "haze", "synthetic haze (random depth and airlight)"),
    # every degradation the package synthesises and trains on is measured
    EvalDegradation("snow", "snow", "synthetic snow (flakes over a veil)"),
)}
