"""The held-out photographs of ``resflow eval``: fetched, checked by SHA-256 and cropped.

No embedded model was trained on any of them, so the evaluation measures restoration on images
the models never saw: scikit-image's astronaut, chelsea and coffee, and five Kodak images stored
in the pyiqa 0.1.16 wheel. The wheel is fetched once with ``pip download`` and its files are read
as a zip archive (pyiqa is never imported); every file is checked against the hashes below, so a
report always describes the same pixels.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..reference.system import atomic_write_bytes

__all__ = ["CROP", "EvalError", "EvalImage", "KODAK_FILES", "KODAK_MEMBER", "PYIQA_WHEEL", "PYIQA_WHEEL_SHA256",
           "SKIMAGE_CROPS", "cache_dir", "heldout_images", "kodak_dir", "sha256"]

#: Side of every evaluation crop, in pixels.
CROP = 256
PYIQA_WHEEL = "pyiqa==0.1.16"
PYIQA_WHEEL_SHA256 = "42bbcf1c274a8b53f040a3ec5ec304a15b7725afb5a85b81050e9cc7e6d09ed4"
#: The reference (undistorted) Kodak images of the wheel's calibration folder, 512x384 RGB.
KODAK_FILES = {
    "I03.bmp": "28441215ca5b6358e6267717250a02eeec4fa5ef73ae454870b8426320f980a8",
    "I04.bmp": "c8500941a30397bc9e613a297e1286bdb955f49926148f58e7963d6e82b03c9f",
    "I06.bmp": "445c2c0fcb47898e9cd8e6de640f2545621d27cbb248c69ef2c84d8204723061",
    "I08.bmp": "b5d6738ece811f45f43c5bce425ad5d18d5c78466989001fe1129fcdd08efdab",
    "I19.bmp": "b8a2ede827d8db21c45f9ca1fb1c043bcec571b5a7243b4ea1aab3fb4feb7e0b",
}
KODAK_MEMBER = "ResultsCalibra/ref_dir/"
#: scikit-image crops (name -> top, left), the ones docs/MODEL_CARD.md has always reported.
SKIMAGE_CROPS = {"astronaut": (40, 120), "chelsea": (0, 100), "coffee": (100, 200)}


class EvalError(ValueError):
    """Something the evaluation needs is missing or wrong; the message says how to fix it."""


@dataclass(frozen=True)
class EvalImage:
    name: str
    source: str
    clean: np.ndarray  # uint8 (CROP, CROP, 3)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_dir() -> Path:
    """``$RESFLOW_CACHE``, else ``~/.cache/resflow_fast``: where fetched images are kept."""
    return Path(os.environ.get("RESFLOW_CACHE", Path.home() / ".cache" / "resflow_fast"))


def _kodak_from_wheel(wheel: Path, into: Path) -> None:
    if sha256(wheel.read_bytes()) != PYIQA_WHEEL_SHA256:
        raise EvalError(f"{wheel}: not the pyiqa 0.1.16 wheel this evaluation is pinned to (SHA-256 differs)")
    with zipfile.ZipFile(wheel) as archive:
        for name in KODAK_FILES:
            atomic_write_bytes(into / name, archive.read(KODAK_MEMBER + name))


def kodak_dir(explicit: str | os.PathLike | None = None, download: bool = True) -> Path:
    """A folder holding the five Kodak files with the right hashes.

    ``explicit`` may be that folder or the pyiqa wheel itself. Otherwise the cache
    (:func:`cache_dir`) is used, filled once from the wheel that ``pip download`` fetches.
    """
    if explicit is not None:
        path = Path(explicit)
        if path.is_file() and path.suffix == ".whl":
            target = cache_dir() / "kodak"
            _kodak_from_wheel(path, target)
            return target
        return _checked_kodak(path)
    target = cache_dir() / "kodak"
    if all((target / n).is_file() for n in KODAK_FILES):
        return _checked_kodak(target)
    if not download:
        raise EvalError(f"the Kodak images are not in {target}; pass --kodak PATH (a folder or the pyiqa wheel)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, PYIQA_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("pyiqa-*.whl"))
        if done.returncode != 0 or not wheels:
            raise EvalError("could not download the pyiqa 0.1.16 wheel that holds the Kodak images "
                            f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no wheel'}); "
                            "pass --kodak PATH to a copy, or --images skimage to leave them out")
        _kodak_from_wheel(wheels[0], target)
    return _checked_kodak(target)


def _checked_kodak(folder: Path) -> Path:
    for name, digest in KODAK_FILES.items():
        file = folder / name
        if not file.is_file():
            raise EvalError(f"{folder}: {name} is missing (expected the five Kodak files of the pyiqa 0.1.16 wheel)")
        if sha256(file.read_bytes()) != digest:
            raise EvalError(f"{file}: not the expected Kodak image (SHA-256 differs)")
    return folder


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size, :3])


def heldout_images(sets: tuple[str, ...] = ("kodak", "skimage"), kodak: str | os.PathLike | None = None) -> list[EvalImage]:
    """The evaluation's clean 256x256 uint8 crops, in a fixed order."""
    from PIL import Image

    unknown = [w for w in sets if w not in ("kodak", "skimage")]
    if unknown:
        raise EvalError(f"unknown image set {unknown[0]!r}; choose kodak and/or skimage")
    if len(set(sets)) != len(sets):
        raise EvalError(f"--images: a set is named twice ({', '.join(sets)})")
    images: list[EvalImage] = []
    for which in sets:
        if which == "kodak":
            folder = kodak_dir(kodak)
            for name in KODAK_FILES:
                with Image.open(folder / name) as im:
                    pixels = np.asarray(im.convert("RGB"))
                images.append(EvalImage(f"kodak-{name[:-4]}", "pyiqa 0.1.16 wheel, Kodak (centre crop)",
                                        _centre_crop(pixels, CROP)))
        else:
            try:
                from skimage import data as skdata
            except ImportError:
                raise EvalError('the scikit-image images need scikit-image: pip install -e ".[eval]" '
                                '(or --images kodak)') from None

            for name, (top, left) in SKIMAGE_CROPS.items():
                pixels = getattr(skdata, name)()
                images.append(EvalImage(name, f"scikit-image data.{name}() (rows {top}-{top + CROP - 1}, "
                                              f"columns {left}-{left + CROP - 1})",
                                        np.ascontiguousarray(pixels[top:top + CROP, left:left + CROP, :3])))
    return images
