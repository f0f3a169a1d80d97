"""The held-out photographs of ``resflow eval``: fetched, checked by SHA-256 and cropped.

No embedded model was trained on any of them, so the evaluation measures restoration on images
the models never saw: five Kodak images stored in the pyiqa 0.1.16 wheel, scikit-image's
astronaut, chelsea and coffee, and eighteen photographs of two Debian wallpaper packages that the
training list (``resflow_fast.training_photos``) leaves alone. Packages are fetched once (``pip
download``; ``apt-get download``, unpacked, never installed) and every file is checked against the
hashes below, so a report always describes the same pixels.
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

from ..package_files import PackageFileError, checked_copy, debian_package_root, sha256_of
from ..reference.system import atomic_write_bytes

__all__ = ["CROP", "DEBIAN_PHOTOS", "DEBIAN_SHORT_SIDE", "EvalError", "EvalImage", "IMAGE_SETS", "KODAK_FILES",
           "KODAK_MEMBER", "PYIQA_WHEEL", "PYIQA_WHEEL_SHA256", "SKIMAGE_CROPS", "cache_dir", "debian_dir",
           "heldout_images", "kodak_dir", "sha256"]

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

_LOMIRI_16 = ("lomiri-wallpapers-16.04", "20.04.0-2", "usr/share/backgrounds/")
_MATE = ("mate-backgrounds", "1.26.0-1", "usr/share/backgrounds/mate/nature/")
#: Held-out photographs of two Debian wallpaper packages (none of them a training package):
#: name -> (package, version, path inside the package, SHA-256). Renders and drawings of the same
#: packages are left out. Each is shrunk so its short side is :data:`DEBIAN_SHORT_SIDE` px
#: (wallpapers are 2-6k px wide: a plain centre crop would show a few leaves of blur) and
#: centre-cropped to :data:`CROP`.
DEBIAN_PHOTOS = {
    "bridge": (*_LOMIRI_16[:2], _LOMIRI_16[2] + "Bridge_by_Sander_Klootwijk.jpg",
               "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050"),
    "dragonfly": (*_LOMIRI_16[:2], _LOMIRI_16[2] + "Dragonfly_by_Bolly.jpg",
                  "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3"),
    "fig": (*_LOMIRI_16[:2], _LOMIRI_16[2] + "Picture_0B_by_freespace.jpg",
            "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad"),
    "brushes": (*_LOMIRI_16[:2], _LOMIRI_16[2] + "Picture_1A_by_freespace.jpg",
                "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b"),
    "wine": (*_LOMIRI_16[:2], _LOMIRI_16[2] + "Wine_by_Jakkub_Mede.jpg",
             "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74"),
    "aitzgorri": (*_LOMIRI_16[:2], _LOMIRI_16[2] + "aitzgorri_by_Aitzol_Berasategi.jpg",
                  "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36"),
    "dogs": (*_LOMIRI_16[:2], _LOMIRI_16[2] + "friends_by_Aitzol_Berasategi.jpg",
             "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d"),
    "stream": (*_LOMIRI_16[:2], _LOMIRI_16[2] + "life_by_Aitzol_Berasategi.jpg",
               "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05"),
    "picos": (*_LOMIRI_16[:2], _LOMIRI_16[2] + "picosdeeuropa_by_Aitzol_Berasategi.jpg",
              "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a"),
    "sunset": (*_LOMIRI_16[:2], _LOMIRI_16[2] + "sunset_by_Aitzol_Berasategi.jpg",
               "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18"),
    "aqua": (*_MATE[:2], _MATE[2] + "Aqua.jpg", "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
    "dune": (*_MATE[:2], _MATE[2] + "Dune.jpg", "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
    "garden": (*_MATE[:2], _MATE[2] + "Garden.jpg", "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
    "ladybird": (*_MATE[:2], _MATE[2] + "LadyBird.jpg",
                 "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
    "storm": (*_MATE[:2], _MATE[2] + "Storm.jpg", "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"),
    "two-wings": (*_MATE[:2], _MATE[2] + "TwoWings.jpg",
                  "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
    "wood": (*_MATE[:2], _MATE[2] + "Wood.jpg", "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"),
    "yellow-flower": (*_MATE[:2], _MATE[2] + "YellowFlower.jpg",
                      "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"),
}
#: The Debian photographs' short side after shrinking, before the centre crop.
DEBIAN_SHORT_SIDE = 512
#: The image sets ``heldout_images`` knows, in report order.
IMAGE_SETS = ("kodak", "skimage", "debian")


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


def debian_dir(download: bool = True) -> Path:
    """A folder (in :func:`cache_dir`) holding the Debian photographs with the right hashes, fetched
    once with ``apt-get download`` and ``dpkg-deb -x``."""
    target = cache_dir() / "heldout-debian"

    def is_right(name: str) -> bool:
        file = target / f"{name}.jpg"
        return file.is_file() and sha256_of(file) == DEBIAN_PHOTOS[name][3]

    missing = [name for name in DEBIAN_PHOTOS if not is_right(name)]
    if not missing:
        return target
    if not download:
        raise EvalError(f"the Debian photographs are not in {target}; run once with network access")
    with tempfile.TemporaryDirectory() as tmp:
        roots: dict[str, Path] = {}
        try:
            for name in missing:
                package, version, path, digest = DEBIAN_PHOTOS[name]
                if package not in roots:
                    roots[package] = debian_package_root(package, version, Path(tmp))
                checked_copy(roots[package] / path, target / f"{name}.jpg", digest, f"{name} ({package} {version})")
        except PackageFileError as error:
            raise EvalError(f"the Debian held-out photographs: {error}; or --images kodak,skimage to leave "
                            "them out") from None
    return target


def _shrunk_centre_crop(pixels: np.ndarray, short_side: int, size: int) -> np.ndarray:
    """Shrink (Lanczos) so the short side is ``short_side`` px, then take the centre ``size`` x ``size``."""
    from PIL import Image

    h, w = pixels.shape[:2]
    scale = short_side / min(h, w)
    shrunk = Image.fromarray(pixels).resize((max(size, round(w * scale)), max(size, round(h * scale))),
                                            Image.Resampling.LANCZOS)
    return _centre_crop(np.asarray(shrunk), size)


def heldout_images(sets: tuple[str, ...] = IMAGE_SETS, kodak: str | os.PathLike | None = None) -> list[EvalImage]:
    """The evaluation's clean 256x256 uint8 RGB crops, in a fixed order."""
    from PIL import Image

    unknown = [w for w in sets if w not in IMAGE_SETS]
    if unknown:
        raise EvalError(f"unknown image set {unknown[0]!r}; choose from {', '.join(IMAGE_SETS)}")
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
        elif which == "skimage":
            try:
                from skimage import data as skdata
            except ImportError:
                raise EvalError('the scikit-image images need scikit-image: pip install -e ".[eval]" '
                                '(or --images kodak,debian)') from None

            for name, (top, left) in SKIMAGE_CROPS.items():
                pixels = getattr(skdata, name)()
                images.append(EvalImage(name, f"scikit-image data.{name}() (rows {top}-{top + CROP - 1}, "
                                              f"columns {left}-{left + CROP - 1})",
                                        np.ascontiguousarray(pixels[top:top + CROP, left:left + CROP, :3])))
        else:
            folder = debian_dir()
            for name, (package, version, path, _) in DEBIAN_PHOTOS.items():
                with Image.open(folder / f"{name}.jpg") as im:
                    pixels = np.asarray(im.convert("RGB"))
                images.append(EvalImage(name, f"Debian {package} {version}, {Path(path).name} (short side "
                                              f"{DEBIAN_SHORT_SIDE} px, centre crop)",
                                        _shrunk_centre_crop(pixels, DEBIAN_SHORT_SIDE, CROP)))
    return images
