"""Images in and out of :func:`resflow_fast.restore`: decode, validate, split, rebuild, write atomically.

Every input kind is split into the same two parts:

* the **colour planes** the model restores: a float32 torch tensor (C, H, W) in [0, 1] with
  C = 1 (grey) or 3 (RGB);
* a **layout** that remembers everything else (kind, Pillow mode, bit depth, dtype, device, the
  alpha channel untouched, ICC profile and EXIF) and rebuilds an image of the caller's own kind
  from the restored planes with :meth:`rebuild`.

Pillow modes, in and out (the output mode is the input mode unless the table says otherwise):

    L, 1              8-bit grey            "1" comes back thresholded at 0.5 (no dithering)
    LA                8-bit grey + alpha
    RGB, RGBA         8-bit colour (+ alpha)
    P, PA             palette: restored as RGB (RGBA when the palette has transparency) and
                      returned as RGB/RGBA - re-quantising to the old palette would undo the
                      restoration; a GIF/PNG writer re-quantises on save if it must
    I;16, I;16L/B/N   16-bit grey, full scale 65535; stays 16-bit in the same byte order
    I                 32-bit integer grey, read as 16-bit data (full scale 65535)
    F                 32-bit float grey, values in [0, 1]
    CMYK, YCbCr, LAB, HSV   restored in RGB, converted back to the source mode
    anything else     converted to RGB(A) and returned in that mode

16 bits per channel stay 16 bits in PNG and TIFF files, grey or colour, with alpha or without.
Pillow holds 16-bit grey (I;16) but decodes 16-bit colour and grey + alpha to 8 bits, so such
files are read and written with pypng (PNG) and tifffile (TIFF) instead, as a
:class:`DeepImage` (an (H, W, C) uint16 array with the file's format and ICC profile), and come
back as one. tifffile reads uncompressed and Deflate-compressed TIFFs by itself; LZW, PackBits and
JPEG-compressed ones need the ``imagecodecs`` package, and without it such a file is refused with
that hint rather than quietly read at 8 bits.
Of a multi-frame file (animated GIF, multi-page TIFF) the first frame is restored.

Grey goes through the RGB model as three equal channels; the mean of the three restored channels
comes back (the least-squares grey of an RGB image whose channels should be equal).

Errors are :class:`ResflowInputError` (a ``ValueError``) and name the file or the argument.
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .reference.system import atomic_write_bytes

__all__ = ["ResflowInputError", "Layout", "DeepImage", "open_image", "read_image", "save_image", "split_image",
           "output_format", "check_can_save"]

#: Float inputs may overshoot [0, 1] by this much (rounding in earlier processing) and are clipped;
#: anything further out is refused, since it usually means 0..255 data passed as float.
FLOAT_RANGE_TOLERANCE = 0.01

#: Encoder settings where Pillow's defaults would throw away what was just restored
#: (JPEG quality 75 with 4:2:0 chroma, WebP quality 80).
_ENCODER_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}

#: Metadata carried from input to output. Palette/colour-key transparency is not: it describes
#: pixel values that restoration changes.
_KEPT_INFO = ("icc_profile", "exif", "dpi")

_GREY16_BYTE_ORDER = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}
_GREY16_MODES = tuple(_GREY16_BYTE_ORDER)
_VIA_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV")


class ResflowInputError(ValueError):
    """An image, array or path that cannot be restored; the message names it and says why."""


@dataclass
class DeepImage:
    """A 16-bit-per-channel image Pillow cannot hold: grey + alpha, RGB or RGBA, from a PNG or TIFF file.

    ``pixels`` is (H, W, C) uint16 with C = 2 (grey, alpha), 3 (RGB) or 4 (RGBA), full scale 65535;
    ``format`` is "PNG" or "TIFF"; ``info`` may hold the ICC profile ("icc_profile", raw bytes) and,
    from a PNG, the EXIF block ("exif", raw bytes; a 16-bit TIFF's EXIF is not carried).
    ``np.asarray(image)`` gives the pixels.
    """

    pixels: np.ndarray
    format: str = "PNG"
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow says it."""
        return self.pixels.shape[1], self.pixels.shape[0]

    @property
    def mode(self) -> str:
        return {2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[self.pixels.shape[2]]

    def __array__(self, dtype=None, copy=None):
        return self.pixels if dtype is None else self.pixels.astype(dtype)


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------
def _png_header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, or None: Pillow refuses a 0-pixel PNG as 'unidentified',
    which would hide the real reason."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    return None


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully, turned upright by its EXIF orientation (the tag is then dropped).

    Raises :class:`ResflowInputError` naming the file when it is missing, empty, not an image,
    truncated or corrupt, has zero size, or has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``
    (Pillow's decompression-bomb guard; Pillow alone only warns between 1x and 2x the limit).
    """
    path = Path(path)
    if not path.exists():
        raise ResflowInputError(f"{path}: no such file")
    if path.is_dir():
        raise ResflowInputError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ResflowInputError(f"{path}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decode now, so a truncated file fails here and not halfway through a restore
                upright = ImageOps.exif_transpose(image)
                upright.format = image.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ResflowInputError(
            f"{path}: image too large: more than PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels "
            "(a decompression-bomb guard); raise that limit if you trust the file") from None
    except UnidentifiedImageError:
        size = _png_header_size(path)
        if size is not None and 0 in size:
            raise ResflowInputError(f"{path}: zero-size image ({size[0]} x {size[1]} pixels)") from None
        raise ResflowInputError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, EOFError, ValueError, struct.error) as error:
        raise ResflowInputError(f"{path}: truncated or corrupt image file ({error})") from None
    _check_size(upright.width, upright.height, str(path))
    return upright


# -- 16-bit colour: pypng and tifffile ----------------------------------------------------------
def _deep_kind(path: Path) -> str | None:
    """"PNG" or "TIFF" when ``path`` holds 16-bit samples Pillow would cut to 8 bits, else None."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        bit_depth, colour_type = head[24], head[25]
        return "PNG" if bit_depth == 16 and colour_type in (2, 4, 6) else None
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                bits, samples = page.bitspersample, page.samplesperpixel
        except Exception:  # noqa: BLE001 - whatever tifffile calls a bad file, open_image reports it
            return None
        return "TIFF" if bits == 16 and samples >= 2 else None
    return None


def _orientation(path: Path) -> int:
    with Image.open(path) as image:
        return int(image.getexif().get(0x0112, 1) or 1)


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` (H, W, C) turned as ``ImageOps.exif_transpose`` turns an image with this EXIF orientation."""
    turns = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
             8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(turns[orientation](pixels) if orientation in turns else pixels)


def _read_png16(path: Path) -> DeepImage:
    import png

    reader = png.Reader(filename=str(path))
    width, height, rows, meta = reader.asDirect()
    pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, meta["planes"])
    info = {}
    for kind, data in png.Reader(filename=str(path)).chunks():
        if kind == b"iCCP":  # name, NUL, compression method 0, zlib stream
            with contextlib.suppress(zlib.error, ValueError):
                info["icc_profile"] = zlib.decompress(data[data.index(b"\x00") + 2:])
        if kind == b"eXIf":
            info["exif"] = _exif_without_orientation(data)
        if kind == b"IDAT":
            break
    return DeepImage(_upright(pixels, _orientation(path)), "PNG", info)


def _exif_without_orientation(data: bytes) -> bytes:
    """The raw EXIF block (TIFF header first, as a PNG eXIf chunk holds it) with its orientation
    tag removed: the pixels are returned upright, so the tag would turn them a second time."""
    exif = Image.Exif()
    try:
        exif.load(data)
    except Exception:  # noqa: BLE001 - an unreadable block is dropped, as Pillow drops it
        return b""
    exif.pop(0x0112, None)
    block = exif.tobytes()
    return block[6:] if block.startswith(b"Exif\x00\x00") else block


def _read_tiff16(path: Path) -> DeepImage:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        try:
            pixels = page.asarray()
        except (KeyError, ValueError, ImportError) as error:
            if "imagecodecs" in str(error):
                raise ResflowInputError(
                    f"{path}: a 16-bit {page.compression.name}-compressed TIFF needs the imagecodecs package to be "
                    "read at 16 bits (pip install imagecodecs)") from None
            raise
        axes = page.axes
        icc = page.tags.get(34675)
        info = {"icc_profile": bytes(icc.value)} if icc is not None else {}
        orientation = page.tags.get(274)
        orientation = int(orientation.value) if orientation is not None else 1
    if axes.startswith("S"):  # planar configuration: samples first
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim != 3 or pixels.shape[2] not in (2, 3, 4) or pixels.dtype != np.uint16:
        raise ResflowInputError(f"{path}: a TIFF of {pixels.dtype} samples shaped {pixels.shape} ({axes}) is not a "
                                "16-bit grey + alpha, RGB or RGBA image")
    return DeepImage(_upright(pixels, orientation), "TIFF", info)


def read_image(path: str | os.PathLike) -> Image.Image | DeepImage:
    """Decode an image file fully and upright: a PIL image (:func:`open_image`), or a
    :class:`DeepImage` for 16-bit colour or grey + alpha PNG and TIFF files, which Pillow cuts to 8 bits."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return open_image(path)  # it says what is wrong
    kind = _deep_kind(path)
    if kind is None:
        return open_image(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = _read_png16(path) if kind == "PNG" else _read_tiff16(path)
    except ResflowInputError:
        raise
    except Exception as error:  # a corrupt file, whatever the decoder calls it
        raise ResflowInputError(f"{path}: truncated or corrupt image file ({error})") from None
    _check_size(image.size[0], image.size[1], str(path))
    if image.size[0] * image.size[1] > (Image.MAX_IMAGE_PIXELS or float("inf")):
        raise ResflowInputError(f"{path}: image too large: more than PIL.Image.MAX_IMAGE_PIXELS = "
                                f"{Image.MAX_IMAGE_PIXELS} pixels (a decompression-bomb guard); raise that limit if "
                                "you trust the file")
    return image


def _encode_deep(image: DeepImage, fmt: str, path: Path) -> bytes:
    buffer = io.BytesIO()
    pixels = np.ascontiguousarray(image.pixels, dtype=np.uint16)
    H, W, C = pixels.shape
    icc = image.info.get("icc_profile")
    if fmt == "PNG":
        import png

        writer = png.Writer(W, H, greyscale=C <= 2, alpha=C in (2, 4), bitdepth=16, compression=6)
        writer.write_array(buffer, pixels.reshape(-1))
        exif = image.info.get("exif")
        if not icc and not exif:
            return buffer.getvalue()
        chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
        if exif:  # eXIf must come before the image data
            chunks.insert(1, (b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
        if icc:  # right after IHDR
            chunks.insert(1, (b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
        out = io.BytesIO()
        png.write_chunks(out, chunks)
        return out.getvalue()
    if fmt == "TIFF":
        import tifffile

        tifffile.imwrite(buffer, pixels, photometric="rgb" if C >= 3 else "minisblack",
                         extrasamples=(2,) if C in (2, 4) else None, compression="zlib",
                         iccprofile=icc or None)
        return buffer.getvalue()
    raise _deep_format_error(path, f"a 16-bit {image.mode[:-3]} image", fmt)


def _deep_format_error(path: Path, what: str, fmt: str) -> ResflowInputError:
    return ResflowInputError(f"{path}: {what} can be written as .png or .tif, not as {fmt} (which would cut it to "
                             "8 bits)")


def _mode_error(path: Path, mode: str, fmt: str, error: Exception) -> ResflowInputError:
    hint = "; choose a format that can, such as .png" if "cannot write mode" in str(error) else ""
    return ResflowInputError(f"{path}: cannot write a {mode} image as {fmt} ({error}){hint}")


def output_format(path: str | os.PathLike) -> str:
    """The Pillow format that writes ``path``'s extension; :class:`ResflowInputError` if none does."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ResflowInputError(f"{path}: Pillow cannot write {path.suffix or 'extension-less'!r} files "
                                "(use .png, .jpg, .tif, .webp, ...)")
    return fmt


def check_can_save(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Refuse, before any restoring, to write the restoration of the image file ``source`` to
    ``path`` when ``path``'s format cannot hold it (16-bit colour as JPEG, RGBA as JPEG, ...), with the
    message :func:`save_image` would give after the work. Reads only the file's header; a file that
    cannot be read is left for :func:`read_image` to report."""
    path, source = Path(path), Path(source)
    fmt = output_format(path)
    try:
        deep = _deep_kind(source)
        if deep is None:
            with Image.open(source) as image:
                mode = _restored_mode(image)
    except Exception:  # noqa: BLE001 - unreadable: read_image says why, per file
        return
    if deep is not None:
        if fmt not in ("PNG", "TIFF"):
            raise _deep_format_error(path, f"{source}, a 16-bit image,", fmt)
        return
    try:
        Image.new(mode, (1, 1)).save(io.BytesIO(), format=fmt, **_ENCODER_OPTIONS.get(fmt, {}))
    except (OSError, ValueError, KeyError) as error:
        raise _mode_error(path, mode, fmt, error) from None


def save_image(image: Image.Image | DeepImage, path: str | os.PathLike) -> None:
    """Encode ``image`` by ``path``'s extension (ICC profile, EXIF and dpi kept) and write it atomically.

    A :class:`DeepImage` is written at 16 bits as PNG (pypng) or TIFF (tifffile, Deflate-compressed).

    The whole file is encoded in memory first, then written to a temporary file in the same
    folder, fsynced and renamed over ``path``: a failure at any point leaves the previous file
    (or no file) and no temporary file behind.
    """
    path = Path(path)
    fmt = output_format(path)
    if isinstance(image, DeepImage):
        atomic_write_bytes(path, _encode_deep(image, fmt, path))
        return
    options = {k: image.info[k] for k in _KEPT_INFO if image.info.get(k)}
    options.update(_ENCODER_OPTIONS.get(fmt, {}))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt, **options)
    except (OSError, ValueError, KeyError) as error:
        raise _mode_error(path, image.mode, fmt, error) from None
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------
# validation shared by every kind
# ----------------------------------------------------------------------------------------------
def _check_size(width: int, height: int, name: str) -> None:
    if width == 0 or height == 0:
        raise ResflowInputError(f"{name}: zero-size image ({width} x {height} pixels)")


def _check_float_values(values: np.ndarray | torch.Tensor, name: str) -> None:
    """Finite and within [0, 1] up to :data:`FLOAT_RANGE_TOLERANCE`, or an error saying what is wrong."""
    if isinstance(values, torch.Tensor):
        finite = bool(torch.isfinite(values).all())
        low, high = (float(values.min()), float(values.max())) if finite else (0.0, 0.0)
    else:
        finite = bool(np.isfinite(values).all())
        low, high = (float(values.min()), float(values.max())) if finite else (0.0, 0.0)
    if not finite:
        raise ResflowInputError(f"{name}: contains NaN or Inf values")
    if low < -FLOAT_RANGE_TOLERANCE or high > 1.0 + FLOAT_RANGE_TOLERANCE:
        raise ResflowInputError(f"{name}: float images must be in [0, 1], got values in [{low:g}, {high:g}]"
                                + (" (divide 8-bit data by 255)" if high > 2.0 else ""))


def _channels_error(name: str, shape: tuple, layout: str) -> ResflowInputError:
    return ResflowInputError(f"{name}: expected {layout} with 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) "
                             f"channels, got shape {shape}")


# ----------------------------------------------------------------------------------------------
# layouts: what is needed to rebuild the caller's kind of image from restored colour planes
# ----------------------------------------------------------------------------------------------
@dataclass
class Layout:
    """How an input was split, to rebuild the same kind of image from restored colour planes.

    ``kind`` is "pil", "deep" (a :class:`DeepImage`), "numpy" or "torch". ``alpha`` is the alpha channel exactly as it came in
    (a uint8 array for Pillow, the caller's own dtype for arrays and tensors), or None.
    """

    kind: str
    grey: bool
    alpha: Any = None
    mode: str | None = None  # pil: the mode to write back
    dtype: Any = None  # numpy / torch: the dtype to give back
    squeeze: bool = False  # numpy: input was HW (no channel axis)
    device: Any = None  # torch
    info: dict = field(default_factory=dict)  # pil: ICC profile, EXIF, dpi

    def rebuild(self, colour: torch.Tensor) -> Any:
        """``colour``: restored (C, H, W) float32 in [0, 1], C = 1 or 3 as split."""
        rebuild = {"pil": _rebuild_pil, "deep": _rebuild_deep, "numpy": _rebuild_numpy, "torch": _rebuild_torch}
        return rebuild[self.kind](colour, self)


def split_image(image: Any, name: str = "image") -> tuple[torch.Tensor, Layout]:
    """Split a path, PIL image, numpy array (HW/HWC) or torch tensor (CHW) into colour planes + layout.

    A path is opened with :func:`read_image` and handled as the PIL image (or :class:`DeepImage`) it
    decodes to.
    """
    if isinstance(image, (str, os.PathLike)):
        image, name = read_image(image), str(image)
    if isinstance(image, DeepImage):
        return _split_deep(image, name)
    if isinstance(image, Image.Image):
        return _split_pil(image, name)
    if isinstance(image, np.ndarray):
        return _split_numpy(image, name)
    if isinstance(image, torch.Tensor):
        return _split_torch(image, name)
    raise ResflowInputError(f"{name}: expected a path, a PIL image, a numpy array or a torch tensor, "
                            f"got {type(image).__name__}")


# -- PIL ----------------------------------------------------------------------------------------
def _to_planes(hwc01: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc01.transpose(2, 0, 1), dtype=np.float32))


def _restored_mode(image: Image.Image) -> str:
    """The mode ``image`` is restored in and written back as: its own, or RGB(A) for a palette or
    other mode the restore does not rebuild."""
    mode = image.mode
    if mode in ("P", "PA"):
        return "RGBA" if mode == "PA" or image.has_transparency_data else "RGB"
    if mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F", *_GREY16_MODES, *_VIA_RGB_MODES):
        return "RGBA" if "A" in image.getbands() else "RGB"
    return mode


def _split_pil(image: Image.Image, name: str) -> tuple[torch.Tensor, Layout]:
    _check_size(image.width, image.height, name)
    info = {k: image.info[k] for k in _KEPT_INFO if image.info.get(k)}
    mode = _restored_mode(image)
    if mode != image.mode:
        image = image.convert(mode)
    layout = Layout("pil", grey=mode in ("1", "L", "LA", "I", "F", *_GREY16_MODES), mode=mode, info=info)

    if mode in ("LA", "RGBA"):
        layout.alpha = np.asarray(image.getchannel("A")).copy()
        image = image.convert(mode[:-1])
    if mode in _GREY16_MODES or mode == "I":
        # Full scale 65535; np.asarray honours the byte order of I;16B.
        grey = np.asarray(image).astype(np.float32) / np.float32(65535.0)
        return _to_planes(np.clip(grey, 0.0, 1.0)[..., None]), layout
    if mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        _check_float_values(grey, name)
        return _to_planes(np.clip(grey, 0.0, 1.0)[..., None]), layout
    if mode in _VIA_RGB_MODES:
        image = image.convert("RGB")
    if mode == "1":
        image = image.convert("L")
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return _to_planes(pixels if pixels.ndim == 3 else pixels[..., None]), layout


def _quantise(colour: torch.Tensor, full_scale: int, dtype: np.dtype) -> np.ndarray:
    """(C, H, W) [0, 1] -> HWC integers, rounded to nearest (one float temporary, however large the image)."""
    hwc = colour.detach().float().clamp(0.0, 1.0).permute(1, 2, 0).cpu().numpy()
    scaled = np.multiply(hwc, np.float32(full_scale), dtype=np.float32)
    return np.rint(scaled, out=scaled).astype(dtype)


def _rebuild_pil(colour: torch.Tensor, layout: Layout) -> Image.Image:
    mode = layout.mode
    if mode in _GREY16_MODES:
        grey = _quantise(colour, 65535, np.uint16)[..., 0]
        raw = grey.astype(_GREY16_BYTE_ORDER[mode]).tobytes()  # the source's own byte order
        out = Image.frombytes(mode, (grey.shape[1], grey.shape[0]), raw)
    elif mode == "I":
        out = Image.fromarray(_quantise(colour, 65535, np.int32)[..., 0], "I")
    elif mode == "F":
        out = Image.fromarray(colour[0].detach().float().clamp(0, 1).cpu().numpy(), "F")
    else:
        pixels = _quantise(colour, 255, np.uint8)
        out = Image.fromarray(pixels[..., 0], "L") if layout.grey else Image.fromarray(pixels, "RGB")
        if layout.alpha is not None:
            out.putalpha(Image.fromarray(layout.alpha, "L"))
        if mode == "1":
            out = out.convert("1", dither=Image.Dither.NONE)
        elif mode in _VIA_RGB_MODES:
            out = out.convert(mode)
    out.info.update(layout.info)
    return out


# -- DeepImage ----------------------------------------------------------------------------------
def _split_deep(image: DeepImage, name: str) -> tuple[torch.Tensor, Layout]:
    pixels = np.asarray(image.pixels)
    if pixels.ndim != 3 or pixels.shape[2] not in (2, 3, 4) or pixels.dtype != np.uint16:
        raise ResflowInputError(f"{name}: a DeepImage holds (H, W, 2|3|4) uint16 pixels, got {pixels.dtype} "
                                f"{pixels.shape}")
    colour, layout = _split_numpy(pixels, name)
    layout.kind, layout.mode, layout.info = "deep", image.format, dict(image.info)
    return colour, layout


def _rebuild_deep(colour: torch.Tensor, layout: Layout) -> DeepImage:
    return DeepImage(_rebuild_numpy(colour, layout), layout.mode, dict(layout.info))


# -- numpy --------------------------------------------------------------------------------------
def _split_numpy(array: np.ndarray, name: str) -> tuple[torch.Tensor, Layout]:
    if array.ndim not in (2, 3):
        raise ResflowInputError(f"{name}: a numpy image must be HW or HWC, got {array.ndim} dimensions "
                                f"(shape {array.shape})")
    hwc = array[..., None] if array.ndim == 2 else array
    if hwc.shape[-1] not in (1, 2, 3, 4):
        hint = " - numpy images are channels-last; try array.transpose(1, 2, 0)" if hwc.shape[0] in (1, 3, 4) else ""
        raise ResflowInputError(str(_channels_error(name, array.shape, "HWC")) + hint)
    _check_size(hwc.shape[1], hwc.shape[0], name)
    if array.dtype == np.uint8:
        colour01 = hwc.astype(np.float32) / np.float32(255.0)
    elif array.dtype == np.uint16:
        colour01 = hwc.astype(np.float32) / np.float32(65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        _check_float_values(hwc, name)
        colour01 = np.clip(hwc.astype(np.float32), 0.0, 1.0)
    else:
        raise ResflowInputError(f"{name}: numpy images must be uint8, uint16 or float in [0, 1], got {array.dtype}")
    C = hwc.shape[-1]
    has_alpha = C in (2, 4)
    layout = Layout("numpy", grey=C <= 2, dtype=array.dtype, squeeze=array.ndim == 2,
                    alpha=hwc[..., -1:].copy() if has_alpha else None)
    return _to_planes(colour01[..., : C - 1] if has_alpha else colour01), layout


def _rebuild_numpy(colour: torch.Tensor, layout: Layout) -> np.ndarray:
    if layout.dtype == np.uint8:
        out = _quantise(colour, 255, np.uint8)
    elif layout.dtype == np.uint16:
        out = _quantise(colour, 65535, np.uint16)
    else:
        out = colour.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(layout.dtype)
    if layout.alpha is not None:
        out = np.concatenate([out, layout.alpha], axis=-1)
    return out[..., 0] if layout.squeeze else np.ascontiguousarray(out)


# -- torch --------------------------------------------------------------------------------------
def _split_torch(tensor: torch.Tensor, name: str) -> tuple[torch.Tensor, Layout]:
    """One CHW image (the caller splits NCHW batches)."""
    if tensor.ndim != 3:
        raise ResflowInputError(f"{name}: a torch image must be CHW or NCHW, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] not in (1, 2, 3, 4):
        raise _channels_error(name, tuple(tensor.shape), "CHW (channels first)")
    _check_size(tensor.shape[2], tensor.shape[1], name)
    if not tensor.is_floating_point():
        raise ResflowInputError(f"{name}: torch images must be floating point in [0, 1], got {tensor.dtype}"
                                + (" (divide by 255)" if tensor.dtype == torch.uint8 else ""))
    tensor = tensor.detach()
    _check_float_values(tensor, name)
    C = tensor.shape[0]
    has_alpha = C in (2, 4)
    layout = Layout("torch", grey=C <= 2, dtype=tensor.dtype, device=tensor.device,
                    alpha=tensor[-1:].clone() if has_alpha else None)
    colour = tensor[: C - 1] if has_alpha else tensor
    return colour.float().clamp(0.0, 1.0), layout


def _rebuild_torch(colour: torch.Tensor, layout: Layout) -> torch.Tensor:
    out = colour.detach().clamp(0.0, 1.0).to(layout.device, layout.dtype)
    return torch.cat([out, layout.alpha], dim=0) if layout.alpha is not None else out
