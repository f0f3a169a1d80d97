"""The photographs the embedded `default` model is trained on: where each comes from, and how to gather them.

Every file is a natural photograph shipped inside a package anyone can install: Debian's
wallpaper packages (``apt-get download`` + ``dpkg -x``, no root needed), scikit-image's data
folder and scikit-learn's wheel. Renders, paintings, text pages and anything an evaluation uses
are left out (the evaluation's photographs are listed in ``resflow_fast.evaluation.images``), so
results stay checkable on photographs the models never saw.

``resflow training-photos OUT`` copies them into one folder, named ``<source>-<name>``, and
checks each against the SHA-256 below; ``list_sha256()`` is the digest of this list, printed in
the model card so a reader can tell which list a model was trained on.
"""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .package_files import PackageFileError, checked_copy, debian_package_root, sha256_of, wheel_root

__all__ = ["PHOTOS", "Photo", "TrainingPhotoError", "gather", "list_sha256"]


class TrainingPhotoError(PackageFileError):
    """A training photograph could not be fetched, or its bytes differ from the list's."""


@dataclass(frozen=True)
class Photo:
    """One training photograph: the package (and version) it ships in, its path there, its SHA-256."""

    name: str        # the file name in the gathered folder
    source: str      # "debian", "skimage" or "sklearn-wheel"
    package: str
    version: str
    path: str        # inside the package (the extracted .deb, skimage/data, or the wheel)
    sha256: str


_PLASMA = ("plasma-workspace-wallpapers", "4:5.27.5-2")
_LOMIRI = ("lomiri-wallpapers-20.04", "20.04.0-2")
_SKIMAGE = ("scikit-image", "0.26.0")
_SKLEARN = ("scikit-learn", "1.7.2")


def _plasma(name: str, sha256: str) -> Photo:
    return Photo(f"plasma-{name}.jpg", "debian", *_PLASMA,
                 f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg", sha256)


def _skimage(file: str, sha256: str) -> Photo:
    return Photo(f"skimage-{file}", "skimage", *_SKIMAGE, file, sha256)


#: The list. Of the five wallpaper packages searched (plasma-workspace-wallpapers, ukui-wallpapers,
#: gnome-backgrounds, lomiri-wallpapers-20.04, desktop-base), only these are photographs; the rest
#: are renders, drawings or logos. Plasma ships each photograph at several sizes: the largest is taken.
PHOTOS: tuple[Photo, ...] = (
    Photo("lomiri-Kleiber_by_Lukas_Baubkus.jpg", "debian", *_LOMIRI,
          "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
          "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7"),
    _plasma("BytheWater", "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
    _plasma("ColdRipple", "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f"),
    _plasma("ColorfulCups", "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d"),
    _plasma("DarkestHour", "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
    _plasma("EveningGlow", "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a"),
    _plasma("FallenLeaf", "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
    _plasma("Grey", "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed"),
    _plasma("Kite", "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
    _plasma("OneStandsOut", "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd"),
    _plasma("Path", "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"),
    _plasma("summer_1am", "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
    _skimage("brick.png", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
    _skimage("camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    _skimage("cell.png", "8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515"),
    _skimage("coins.png", "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
    _skimage("grass.png", "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
    _skimage("gravel.png", "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
    _skimage("hubble_deep_field.jpg", "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    _skimage("ihc.png", "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
    _skimage("moon.png", "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577"),
    _skimage("motorcycle_left.png", "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    _skimage("motorcycle_right.png", "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797"),
    _skimage("retina.jpg", "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
    _skimage("rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    Photo("sklearn-china.jpg", "sklearn-wheel", *_SKLEARN, "sklearn/datasets/images/china.jpg",
          "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    Photo("sklearn-flower.jpg", "sklearn-wheel", *_SKLEARN, "sklearn/datasets/images/flower.jpg",
          "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
)


def list_sha256(photos: tuple[Photo, ...] = PHOTOS) -> str:
    """SHA-256 of the list: one ``sha256  name`` line per photograph, sorted by name, as sha256sum prints."""
    lines = "".join(f"{p.sha256}  {p.name}\n" for p in sorted(photos, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def _fetch_sources(photos: tuple[Photo, ...], work: Path) -> dict[tuple[str, str], Path]:
    """Unpack each package the list needs once; returns the root each photo's ``path`` is relative to."""
    roots: dict[tuple[str, str], Path] = {}
    for photo in photos:
        key = (photo.source, photo.package)
        if key in roots:
            continue
        if photo.source == "debian":
            roots[key] = debian_package_root(photo.package, photo.version, work)
        elif photo.source == "skimage":
            import skimage  # checked in gather()

            roots[key] = Path(skimage.__file__).parent / "data"
        elif photo.source == "sklearn-wheel":  # unzipped, never imported: its version need not be installed
            roots[key] = wheel_root(f"{photo.package}=={photo.version}", work)
        else:
            raise TrainingPhotoError(f"{photo.name}: unknown source {photo.source!r}")
    return roots


def gather(out_dir: str | Path, photos: tuple[Photo, ...] = PHOTOS) -> list[Path]:
    """Copy every photograph into ``out_dir``, each checked against its SHA-256; returns the paths.

    Files already there with the right digest are kept. A mismatch (a package updated since the
    list was written, say) stops with an error naming the file, before anything of it is copied.
    """
    out = Path(out_dir)
    missing = [p for p in photos if not (out / p.name).is_file() or sha256_of(out / p.name) != p.sha256]
    from_skimage = [p for p in missing if p.source == "skimage"]
    if from_skimage:  # before any download: the photographs scikit-image ships are read from the installed one
        try:
            import skimage  # noqa: F401
        except ImportError:
            raise TrainingPhotoError(
                f"{len(from_skimage)} of the photographs ship with scikit-image, which is not installed "
                f"(pip install scikit-image=={from_skimage[0].version}, the version the list was made with)") from None
    out.mkdir(parents=True, exist_ok=True)
    if missing:
        with tempfile.TemporaryDirectory(prefix="resflow-photos-") as tmp:
            try:
                roots = _fetch_sources(tuple(missing), Path(tmp))
                for photo in missing:
                    checked_copy(roots[(photo.source, photo.package)] / photo.path, out / photo.name, photo.sha256,
                                 f"{photo.name} ({photo.package} {photo.version})")
            except PackageFileError as error:
                raise TrainingPhotoError(str(error)) from error
    return [out / p.name for p in photos]
