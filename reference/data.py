"""Training data: stateless-indexed datasets of (HQ, LQ) pairs, and image loading.

A dataset here maps a global sample index to one deterministic pair, computed from
``np.random.default_rng([seed, index])`` and nothing else. So:

* resuming training at step s reproduces exactly the batches an uninterrupted run would have seen;
* DistributedDataParallel ranks are disjoint by construction (the trainer hands each rank its own
  indices) and need no shared sampler state;
* the datasets are "infinite": ``__len__`` is huge (2**62) only so a ``torch.utils.data.DataLoader``
  accepts them; use a sequential or custom index sampler, not ``shuffle=True`` (which would try to
  permute 2**62 indices) - the index already is the randomness.

Each ``sample(index)`` returns ``(hq, lq)``: float32 CHW tensors in [-1, 1] (the model range of
docs/design/math.md, "State and endpoints"), both of shape (C, crop, crop).
:func:`to_model_range` and :func:`from_model_range` are the only place that conversion is written.

Validation pairs come from a separate seed stream, ``default_rng([seed, index, VALIDATION_STREAM])``,
which no training index reaches (see :func:`validation_set`).
"""
from __future__ import annotations

import abc
import copy
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .degradations import Degradation, dead_leaves, parse_degradation

__all__ = [
    "CleanFolderDataset",
    "DataError",
    "FILE_WEIGHTINGS",
    "IMAGE_EXTENSIONS",
    "PairedFolderDataset",
    "ProceduralDataset",
    "VALIDATION_STREAM",
    "build_dataset",
    "from_model_range",
    "load_image",
    "to_model_range",
    "validation_set",
]

#: File name endings read as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Appended to the seed-sequence entropy of validation samples. Training uses ``[seed, index]``;
#: numpy's SeedSequence pads short entropy with zeros, so a non-zero third word can never equal a
#: training key (for indices below 2**32, i.e. any reachable training run).
VALIDATION_STREAM = 0x56414C  # "VAL"

#: ``__len__`` of the infinite datasets: large, yet below sys.maxsize as len() requires.
INFINITE_LENGTH = 2 ** 62

_DEFAULT_CACHE_MEGABYTES = 1024  # 8-bit pixels: about 40 photographs of 2560 x 1600

#: How a clean-image folder picks the file of a sample: each file equally often, or in proportion
#: to its pixel count (so a 20-megapixel photograph is not cropped as often as a 0.2-megapixel one).
FILE_WEIGHTINGS = ("uniform", "area")

#: ITU-R BT.601 luma weights, as Pillow's RGB -> L conversion: how a colour photograph becomes grey.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class DataError(ValueError):
    """Bad training data: a missing, unreadable or mismatched file or folder (the message names it)."""


# ------------------------------------------------------------------------------------------------
# the model range: the one place [0, 1] HWC numpy <-> [-1, 1] CHW torch is written
# ------------------------------------------------------------------------------------------------
def to_model_range(img01: np.ndarray) -> torch.Tensor:
    """numpy HWC float in [0, 1] -> torch float32 CHW in [-1, 1] (``x * 2 - 1``)."""
    if not isinstance(img01, np.ndarray) or img01.ndim != 3:
        raise ValueError(f"to_model_range expects a numpy HWC array, got "
                         f"{getattr(img01, 'shape', type(img01).__name__)}")
    chw = np.ascontiguousarray(img01.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw) * 2.0 - 1.0


def from_model_range(x: torch.Tensor) -> np.ndarray:
    """torch CHW in [-1, 1] -> numpy float32 HWC in [0, 1], clamped (network outputs overshoot)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"from_model_range expects a torch CHW tensor, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    img01 = ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 0.5).permute(1, 2, 0)
    return np.ascontiguousarray(img01.cpu().numpy(), dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------
def _pil_to_rgb_pixels(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> HWC RGB pixels: uint8 for 8-bit modes (a quarter of the memory of
    float32, so a cache holds four times the photographs), float32 in [0, 1] otherwise; alpha is
    dropped (training wants the colours). :func:`_as_float01` finishes the conversion."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale (PNG/TIFF; Pillow may open it as 32-bit "I"): full scale is 65535.
        grey = np.asarray(image, dtype=np.float32) / 65535.0
    elif image.mode == "F":  # float TIFFs: assumed already in [0, 1]
        grey = np.asarray(image, dtype=np.float32)
    else:
        if image.mode in ("P", "PA"):  # via RGBA so palette transparency is understood, then dropped
            image = image.convert("RGBA")
        if image.mode != "RGB":  # L, LA, RGBA, CMYK, YCbCr, 1, ...
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)
    grey = np.clip(grey, 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=2)


def _as_float01(pixels: np.ndarray) -> np.ndarray:
    """Pixels from :func:`_pil_to_rgb_pixels` as float32 in [0, 1] (uint8 divides by 255)."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    return pixels


def _load_pixels(path: Path) -> np.ndarray:
    """:func:`load_image` without the final conversion to float (uint8 stays uint8)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not somewhere later
            upright = ImageOps.exif_transpose(image)
        return _pil_to_rgb_pixels(upright)
    except UnidentifiedImageError as error:
        raise DataError(f"{path}: not an image file Pillow can read") from error
    except Image.DecompressionBombError as error:
        raise DataError(f"{path}: image too large ({error})") from error
    except (OSError, SyntaxError, EOFError, ValueError, struct.error) as error:
        raise DataError(f"{path}: truncated or corrupt image file ({error})") from error


def _image_area(path: Path) -> int:
    """Width x height from the file's header (nothing decoded)."""
    try:
        with Image.open(path) as image:
            return image.size[0] * image.size[1]
    except UnidentifiedImageError as error:
        raise DataError(f"{path}: not an image file Pillow can read") from error
    except (OSError, SyntaxError, EOFError, ValueError, struct.error) as error:
        raise DataError(f"{path}: truncated or corrupt image file ({error})") from error


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as float32 HWC RGB in [0, 1], turned upright by its EXIF orientation.

    8-bit modes divide by 255, 16-bit greyscale by 65535; greyscale is repeated to 3 channels and
    alpha dropped. Raises :class:`DataError` naming the file when it is missing, is not an image,
    or is truncated/corrupt.
    """
    return _as_float01(_load_pixels(path))


def _is_image_file(path: Path) -> bool:
    # Hidden files (e.g. macOS "._name.jpg" resource forks) carry image endings but no image.
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _list_images(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in candidates if _is_image_file(p)), key=lambda p: p.relative_to(folder).as_posix())


class _ImageCache:
    """Least-recently-used cache of decoded pixels (uint8 where the file is 8-bit), bounded in
    bytes: decoding dominates loading.

    Each DataLoader worker process holds its own copy, so the budget is per process.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._images: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._bytes = 0

    def load(self, path: Path) -> np.ndarray:
        if path in self._images:
            self._images.move_to_end(path)
            return self._images[path]
        img = _load_pixels(path)
        if img.nbytes <= self.max_bytes:
            self._images[path] = img
            self._bytes += img.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._images.popitem(last=False)
                self._bytes -= evicted.nbytes
        return img


# ------------------------------------------------------------------------------------------------
# crops
# ------------------------------------------------------------------------------------------------
def _pad_to_at_least(img: np.ndarray, crop: int) -> np.ndarray:
    """Mirror-pad (reflect) an image smaller than ``crop`` up to ``crop``, centred.

    Padding rather than rejecting keeps small images usable; the mirrored border is still a
    plausible image, unlike a constant border whose hard edge the model would learn to expect.
    """
    pad_h, pad_w = max(0, crop - img.shape[0]), max(0, crop - img.shape[1])
    if pad_h == 0 and pad_w == 0:
        return img
    return np.pad(img, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)), mode="reflect")


def _random_crop_and_flip(images: list[np.ndarray], rng: np.random.Generator, crop: int) -> list[np.ndarray]:
    """The same random crop x crop window and the same random horizontal flip for every image."""
    padded = [_pad_to_at_least(img, crop) for img in images]
    height, width = padded[0].shape[:2]
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    flip = bool(rng.random() < 0.5)
    crops = []
    for img in padded:
        window = img[top:top + crop, left:left + crop]
        crops.append(np.ascontiguousarray(window[:, ::-1] if flip else window))
    return crops


# ------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------
def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_non_negative_int(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_degradation(degradation: str | Degradation | None, where: str) -> Degradation:
    if degradation is None:
        raise DataError(f"{where} needs a degradation spec (e.g. 'noise:25' or 'mix') to make LQ images")
    return degradation if isinstance(degradation, Degradation) else parse_degradation(degradation)


class _IndexedDataset(abc.ABC):
    """Shared machinery: index -> rng -> (HQ, LQ) in [0, 1] -> model-range tensors."""

    kind = "indexed"

    def __init__(self, crop: int, seed: int, grey_fraction: float = 0.0, flat_fraction: float = 0.0,
                 flat_grey_share: float = 0.0):
        self.crop = _check_non_negative_int("crop", crop, minimum=8)
        self.seed = _check_non_negative_int("seed", seed)
        self.grey_fraction = _check_fraction("grey_fraction", grey_fraction)
        self.flat_fraction = _check_fraction("flat_fraction", flat_fraction)
        self.flat_grey_share = _check_fraction("flat_grey_share", flat_grey_share)
        if self.flat_grey_share and not self.flat_fraction:
            raise ValueError("flat_grey_share is a share of the flat crops, so it needs flat_fraction > 0")
        self._stream: tuple[int, ...] = ()  # () for training, (VALIDATION_STREAM,) for validation

    @abc.abstractmethod
    def _pair01(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(HQ, LQ) as float32 HWC in [0, 1], every random choice from ``rng``."""

    def _degrade(self, hq: np.ndarray, rng: np.random.Generator,
                 degradation: Degradation) -> tuple[np.ndarray, np.ndarray]:
        """``(hq, degradation(hq))``; for a ``flat_fraction`` share of samples the clean crop is first
        replaced by its mean colour, and for a ``grey_fraction`` share both are made grey.

        A flat crop teaches the network that a region with no structure has none to restore:
        its velocity must not answer the auxiliary variable with texture. The mean colour keeps
        the colours photographs have. A ``flat_grey_share`` of the flat crops instead takes a grey
        level drawn uniformly from [0, 1]: crop means almost never put all three channels near
        mid-level (0 in every channel of the model range), the flat input a trained network was
        measured to texture most (docs/MODEL_CARD.md), so without these draws it meets that input
        only at restore time. A grey photograph reaches an RGB model as three equal channels
        whose noise (or JPEG blocks) is the same in each: the grey image is degraded once and
        then repeated, never degraded per channel. No draw is taken when a fraction is 0, so
        runs without flat or grey samples keep their exact data stream.
        """
        if self.flat_fraction > 0.0 and rng.random() < self.flat_fraction:
            if self.flat_grey_share > 0.0 and rng.random() < self.flat_grey_share:
                colour = np.full(hq.shape[2], rng.random(), np.float32)
            else:
                colour = hq.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
            hq = np.broadcast_to(colour, hq.shape).copy()
        if self.grey_fraction > 0.0 and hq.shape[2] == 3 and rng.random() < self.grey_fraction:
            grey = np.tensordot(hq, _LUMA_WEIGHTS, axes=([2], [0]))[..., None].astype(np.float32)
            lq = degradation(grey, rng)
            return np.repeat(grey, 3, axis=2), np.repeat(lq, 3, axis=2)
        return hq, degradation(hq, rng)

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (hq, lq) pair for ``index``: float32 (C, crop, crop) tensors in [-1, 1]; same index, same pair."""
        index = _check_non_negative_int("dataset index", index)
        rng = np.random.default_rng([self.seed, index, *self._stream])
        hq, lq = self._pair01(rng)
        return to_model_range(hq), to_model_range(lq)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sample(index)

    def __len__(self) -> int:
        return INFINITE_LENGTH

    def for_validation(self, seed: int) -> "_IndexedDataset":
        """The same dataset drawing from the validation stream of ``seed`` (shares the image cache)."""
        view = copy.copy(self)
        view.seed = _check_non_negative_int("validation seed", seed)
        view._stream = (VALIDATION_STREAM,)
        return view

    def describe(self) -> dict:
        """JSON-able provenance for checkpoints."""
        described = {"kind": self.kind, "root": None, "degradation": None, "crop": self.crop, "seed": self.seed,
                     "files": 0}
        # recorded only when used, so older records compare equal
        if self.grey_fraction:
            described["grey_fraction"] = self.grey_fraction
        if self.flat_fraction:
            described["flat_fraction"] = self.flat_fraction
        if self.flat_grey_share:
            described["flat_grey_share"] = self.flat_grey_share
        return described

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({fields})"


class ProceduralDataset(_IndexedDataset):
    """Dead-leaves images (see ``degradations.dead_leaves``) of size crop x crop, degraded on the fly."""

    kind = "procedural"

    def __init__(self, degradation: str | Degradation, crop: int = 64, seed: int = 0, channels: int = 3,
                 grey_fraction: float = 0.0, flat_fraction: float = 0.0, flat_grey_share: float = 0.0):
        super().__init__(crop, seed, grey_fraction, flat_fraction, flat_grey_share)
        if channels not in (1, 3):
            raise ValueError(f"ProceduralDataset channels must be 1 or 3, got {channels!r}")
        self.channels = channels
        self.degradation = _as_degradation(degradation, "ProceduralDataset")

    def _pair01(self, rng):
        hq = dead_leaves(self.crop, self.crop, rng, channels=self.channels)
        return self._degrade(hq, rng, self.degradation)

    def describe(self) -> dict:
        return {**super().describe(), "degradation": self.degradation.spec, "channels": self.channels}


class CleanFolderDataset(_IndexedDataset):
    """Clean images under ``root``, degraded on the fly.

    For index i: a file picked uniformly (from the sorted list), a random crop x crop window
    (images smaller than the crop are mirror-padded up to it), a random horizontal flip, then
    the degradation. Decoded images stay in an LRU cache of ``cache_megabytes``.
    """

    kind = "clean_folder"

    def __init__(self, root: str | Path, degradation: str | Degradation, crop: int = 64, seed: int = 0,
                 recursive: bool = True, cache_megabytes: float = _DEFAULT_CACHE_MEGABYTES,
                 grey_fraction: float = 0.0, file_weighting: str = "uniform", flat_fraction: float = 0.0,
                 flat_grey_share: float = 0.0):
        super().__init__(crop, seed, grey_fraction, flat_fraction, flat_grey_share)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"clean image folder not found: {self.root}")
        if file_weighting not in FILE_WEIGHTINGS:
            raise ValueError(f"file_weighting must be one of {', '.join(FILE_WEIGHTINGS)}, got {file_weighting!r}")
        self.file_weighting = file_weighting
        self.degradation = _as_degradation(degradation, "CleanFolderDataset")
        self.files = _list_images(self.root, recursive)
        if not self.files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.root}"
                            f"{' or its subfolders' if recursive else ''}")
        # cumulative pixel counts: a uniform draw in [0, total) lands in file i with probability area_i / total
        self._cumulative_area = (np.cumsum([_image_area(p) for p in self.files], dtype=np.float64)
                                 if file_weighting == "area" else None)
        self._cache = _ImageCache(int(cache_megabytes * 2 ** 20))

    def _pick_file(self, rng: np.random.Generator) -> Path:
        if self._cumulative_area is None:
            return self.files[int(rng.integers(len(self.files)))]
        draw = rng.random() * self._cumulative_area[-1]
        return self.files[min(int(np.searchsorted(self._cumulative_area, draw, side="right")), len(self.files) - 1)]

    def _pair01(self, rng):
        path = self._pick_file(rng)
        (hq,) = _random_crop_and_flip([self._cache.load(path)], rng, self.crop)
        return self._degrade(_as_float01(hq), rng, self.degradation)

    def describe(self) -> dict:
        described = {**super().describe(), "root": str(self.root), "degradation": self.degradation.spec,
                     "files": len(self.files), "channels": 3}
        if self.file_weighting != "uniform":
            described["file_weighting"] = self.file_weighting
        return described


def _images_by_name(folder: Path) -> dict[str, Path]:
    """Image files under ``folder`` keyed by relative path without extension ('sub/a' for sub/a.png)."""
    by_name: dict[str, Path] = {}
    for path in _list_images(folder, recursive=True):
        name = path.relative_to(folder).with_suffix("").as_posix()
        if name in by_name:
            raise DataError(f"two images in {folder} have the name {name!r}: {by_name[name].name} and "
                            f"{path.name}; pairs are matched by name, so keep one")
        by_name[name] = path
    return by_name


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class PairedFolderDataset(_IndexedDataset):
    """Pre-degraded pairs: ``root/lq/`` and ``root/hq/`` matched by file name without extension.

    ``lq/a.jpg`` pairs with ``hq/a.png``; subfolders are matched by relative path. For index i: a
    pair picked uniformly, then the same random crop (mirror-padding small images) and the same
    random flip applied to both. The pair's sizes are checked when it is first loaded.
    """

    kind = "paired_folder"

    def __init__(self, root: str | Path, crop: int = 64, seed: int = 0,
                 cache_megabytes: float = _DEFAULT_CACHE_MEGABYTES):
        super().__init__(crop, seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"paired data folder not found: {self.root}")
        missing = [sub for sub in ("lq", "hq") if not (self.root / sub).is_dir()]
        if missing:
            raise DataError(f"paired data folder {self.root} needs subfolders lq/ and hq/; "
                            f"missing: {', '.join(s + '/' for s in missing)}")
        lq, hq = _images_by_name(self.root / "lq"), _images_by_name(self.root / "hq")
        for sub, found in (("lq", lq), ("hq", hq)):
            if not found:
                raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.root / sub}")
        for here, there, found_here, found_there in (("lq", "hq", lq, hq), ("hq", "lq", hq, lq)):
            unmatched = sorted(set(found_here) - set(found_there))
            if unmatched:
                raise DataError(f"{len(unmatched)} image(s) in {self.root / here} have no match by name in "
                                f"{self.root / there}: {_few(unmatched)}")
        self.pairs = [(hq[name], lq[name]) for name in sorted(hq)]
        self._cache = _ImageCache(int(cache_megabytes * 2 ** 20))

    def _load_pair(self, hq_path: Path, lq_path: Path) -> tuple[np.ndarray, np.ndarray]:
        hq, lq = self._cache.load(hq_path), self._cache.load(lq_path)
        if hq.shape != lq.shape:
            raise DataError(f"image pair sizes differ: {hq_path} is {hq.shape[1]}x{hq.shape[0]} (WxH) but "
                            f"{lq_path} is {lq.shape[1]}x{lq.shape[0]}")
        return hq, lq

    def _pair01(self, rng):
        hq_path, lq_path = self.pairs[int(rng.integers(len(self.pairs)))]
        hq, lq = _random_crop_and_flip(list(self._load_pair(hq_path, lq_path)), rng, self.crop)
        return _as_float01(hq), _as_float01(lq)

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root), "files": len(self.pairs), "channels": 3}


class MixedDataset:
    """Several datasets interleaved: sample i comes from part ``i % k`` at its index ``i // k``.

    Stateless like its parts, so training over a mix (procedural images plus photographs, say)
    resumes exactly and DDP ranks stay disjoint.
    """

    kind = "mixed"

    def __init__(self, parts: list):
        if len(parts) < 2:
            raise DataError(f"a mixed dataset needs at least two parts, got {len(parts)}")
        crops = {p.crop for p in parts}
        if len(crops) != 1:
            raise DataError(f"mixed datasets must share one crop size, got {sorted(crops)}")
        self.parts = list(parts)
        self.crop = parts[0].crop

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = _check_non_negative_int("dataset index", index)
        k = len(self.parts)
        return self.parts[index % k].sample(index // k)

    __getitem__ = sample

    def __len__(self) -> int:
        return INFINITE_LENGTH

    def for_validation(self, seed: int) -> "MixedDataset":
        return MixedDataset([p.for_validation(seed) for p in self.parts])

    def describe(self) -> dict:
        return {"kind": self.kind, "parts": [p.describe() for p in self.parts], "crop": self.crop}


def build_dataset(data: str | list[str] | tuple[str, ...], degradation: str | None, crop: int, seed: int,
                  channels: int = 3, grey_fraction: float = 0.0,
                  file_weighting: str = "uniform", flat_fraction: float = 0.0,
                  flat_grey_share: float = 0.0) -> _IndexedDataset | MixedDataset:
    """:func:`build_one_dataset` for one ``data`` string; a list of them gives a :class:`MixedDataset`
    (each part with the same degradation, crop, seed and options)."""
    options = dict(channels=channels, grey_fraction=grey_fraction, file_weighting=file_weighting,
                   flat_fraction=flat_fraction, flat_grey_share=flat_grey_share)
    if isinstance(data, (list, tuple)):
        if len(data) == 1:
            return build_one_dataset(data[0], degradation, crop, seed, **options)
        return MixedDataset([build_one_dataset(d, degradation, crop, seed, **options) for d in data])
    return build_one_dataset(data, degradation, crop, seed, **options)


def build_one_dataset(data: str, degradation: str | None, crop: int, seed: int, channels: int = 3,
                      grey_fraction: float = 0.0, file_weighting: str = "uniform",
                      flat_fraction: float = 0.0, flat_grey_share: float = 0.0) -> _IndexedDataset:
    """Pick a dataset from a ``data`` string.

    * ``"procedural"``: :class:`ProceduralDataset` (``degradation`` required);
    * a folder with ``lq/`` and ``hq/``: :class:`PairedFolderDataset` (``degradation`` must be None:
      paired data is already degraded);
    * any other folder: :class:`CleanFolderDataset` of the images under it (``degradation`` required).

    ``grey_fraction``, ``flat_fraction`` and ``flat_grey_share`` apply to the datasets that degrade
    on the fly, ``file_weighting`` to clean-image folders. Raises :class:`DataError` naming the path
    when it does not exist or holds no images.
    """
    if data == "procedural":
        return ProceduralDataset(_as_degradation(degradation, "data 'procedural'"), crop, seed, channels,
                                 grey_fraction=grey_fraction, flat_fraction=flat_fraction,
                                 flat_grey_share=flat_grey_share)
    root = Path(data)
    if not root.exists():
        raise DataError(f"data path does not exist: {root} (expected 'procedural', a folder of clean "
                        f"images, or a folder with lq/ and hq/ subfolders)")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root} (expected 'procedural', a folder of clean "
                        f"images, or a folder with lq/ and hq/ subfolders)")
    if channels != 3:
        raise DataError(f"image folders are read as RGB (3 channels); got channels={channels} for {root}")
    has_lq, has_hq = (root / "lq").is_dir(), (root / "hq").is_dir()
    if has_lq or has_hq:
        if degradation is not None:
            raise DataError(f"{root} holds paired data (lq/ and hq/), which is already degraded; "
                            f"got degradation {degradation!r}, pass none")
        for name, fraction in (("grey_fraction", grey_fraction), ("flat_fraction", flat_fraction),
                               ("flat_grey_share", flat_grey_share)):
            if fraction:
                raise DataError(f"{root} holds paired data (lq/ and hq/), which is already degraded; "
                                f"{name} changes clean samples before degrading and cannot apply to it")
        return PairedFolderDataset(root, crop, seed)  # names the missing half if only one exists
    return CleanFolderDataset(root, _as_degradation(degradation, f"clean image folder {root}"), crop, seed,
                              grey_fraction=grey_fraction, file_weighting=file_weighting, flat_fraction=flat_fraction,
                              flat_grey_share=flat_grey_share)


def validation_set(dataset: _IndexedDataset | MixedDataset, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` fixed validation pairs, stacked to (N, C, crop, crop) hq and lq tensors in [-1, 1].

    Sample i comes from ``default_rng([seed, i, VALIDATION_STREAM])`` (via
    ``dataset.for_validation(seed)``), a stream disjoint from every training key ``[seed, index]``,
    so validation never repeats a training sample's random draw even with the same seed.
    (With a folder of few images the same files may of course appear, differently cropped/degraded.)
    """
    count = _check_non_negative_int("validation count", count, minimum=1)
    view = dataset.for_validation(seed)
    pairs = [view.sample(i) for i in range(count)]
    return torch.stack([hq for hq, _ in pairs]), torch.stack([lq for _, lq in pairs])
