"""Tests of resflow_fast/imageio.py: every mode in and out, metadata kept, bad input refused clearly,
and writes that are never half-done. No model here: the restored planes are the input planes (or
a known change), so a round trip must give back exactly what went in."""
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from resflow_fast.imageio import ResflowInputError, open_image, save_image, split_image

RNG = np.random.default_rng(0)
RGB = (RNG.random((9, 7, 3)) * 255).astype(np.uint8)  # odd, tiny, non-square
ALPHA = (RNG.random((9, 7)) * 255).astype(np.uint8)
GREY16 = (RNG.random((9, 7)) * 65535).astype(np.uint16)


def pil_images() -> dict[str, Image.Image]:
    """One image per Pillow mode a user hands in, plus a 16-bit big-endian one."""
    palette = Image.fromarray(RGB).convert("P")
    with_transparency = palette.copy()
    with_transparency.info["transparency"] = 0
    return {
        "L": Image.fromarray(RGB[..., 0]),
        "LA": Image.fromarray(np.dstack([RGB[..., 0], ALPHA])),
        "RGB": Image.fromarray(RGB),
        "RGBA": Image.fromarray(np.dstack([RGB, ALPHA])),
        "P": palette,
        "P+transparency": with_transparency,
        "I;16": Image.fromarray(GREY16),
        "I;16B": Image.frombytes("I;16B", (7, 9), GREY16.astype(">u2").tobytes()),
    }


# (mode on disk, mode back, alpha kept, bit depth)
EXPECTED = {
    "L": ("L", False, 8), "LA": ("LA", True, 8), "RGB": ("RGB", False, 8), "RGBA": ("RGBA", True, 8),
    "P": ("RGB", False, 8), "P+transparency": ("RGBA", True, 8), "I;16": ("I;16", False, 16),
    "I;16B": ("I;16", False, 16),  # PNG stores 16-bit big-endian; Pillow reads it back as I;16
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_png_round_trip_is_exact_in_the_source_mode(tmp_path, name):
    source = pil_images()[name]
    path = tmp_path / "in.png"
    source.save(path)
    colour, layout = split_image(path)
    assert colour.dtype == torch.float32 and colour.shape[1:] == (9, 7)
    assert colour.shape[0] == (1 if layout.grey else 3) and 0.0 <= colour.min() and colour.max() <= 1.0
    save_image(layout.rebuild(colour), tmp_path / "out.png")

    mode, has_alpha, bits = EXPECTED[name]
    back, original = Image.open(tmp_path / "out.png"), Image.open(path)
    assert back.mode == mode and back.size == (7, 9)
    np.testing.assert_array_equal(np.asarray(back), np.asarray(original.convert(mode)))  # alpha included
    assert "A" in back.getbands() if has_alpha else "A" not in back.getbands()
    assert np.asarray(back).dtype == (np.uint16 if bits == 16 else np.uint8)


def test_alpha_is_carried_untouched_while_the_colour_changes(tmp_path):
    Image.fromarray(np.dstack([RGB, ALPHA])).save(tmp_path / "in.png")
    colour, layout = split_image(tmp_path / "in.png")
    out = layout.rebuild(1.0 - colour)  # a "restoration" that changes every colour value
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out)[..., 3], ALPHA)
    np.testing.assert_array_equal(np.asarray(out)[..., :3], 255 - RGB)


def test_16_bit_keeps_16_bit_precision(tmp_path):
    Image.fromarray(GREY16).save(tmp_path / "in.png")
    colour, layout = split_image(tmp_path / "in.png")
    save_image(layout.rebuild(colour), tmp_path / "out.png")
    back = np.asarray(Image.open(tmp_path / "out.png"))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, GREY16)  # 8-bit quantisation would lose the low byte


def test_jpeg_exif_rotation_is_honoured_and_the_tag_dropped(tmp_path):
    wide = np.zeros((8, 12, 3), np.uint8)
    wide[:, :6] = 255  # left half white: after orientation 6 (rotate 90 clockwise) the top is white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(wide).save(tmp_path / "in.jpg", exif=exif.tobytes(), quality=100)
    upright = open_image(tmp_path / "in.jpg")
    assert upright.size == (8, 12)  # (W, H): rotated
    assert np.asarray(upright)[:6].mean() > 200 and np.asarray(upright)[6:].mean() < 50
    colour, layout = split_image(tmp_path / "in.jpg")
    save_image(layout.rebuild(colour), tmp_path / "out.jpg")
    back = Image.open(tmp_path / "out.jpg")
    assert back.size == (8, 12) and back.getexif().get(0x0112) in (None, 1)  # not rotated a second time


def test_icc_profile_is_kept(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for ext in ("png", "jpg"):
        Image.fromarray(RGB).save(tmp_path / f"in.{ext}", icc_profile=icc)
        colour, layout = split_image(tmp_path / f"in.{ext}")
        save_image(layout.rebuild(colour), tmp_path / f"out.{ext}")
        assert Image.open(tmp_path / f"out.{ext}").info.get("icc_profile") == icc


def test_pil_input_keeps_its_pixel_grid_and_grey_comes_back_grey():
    image = Image.fromarray(RGB[..., 0])
    colour, layout = split_image(image)
    assert layout.grey and colour.shape == (1, 9, 7)
    out = layout.rebuild(colour)
    assert out.mode == "L" and out.size == image.size
    np.testing.assert_array_equal(np.asarray(out), RGB[..., 0])


@pytest.mark.parametrize("array, grey, alpha", [
    (RGB, False, False), (RGB[..., 0], True, False), (RGB[..., :1], True, False),
    (np.dstack([RGB[..., 0], ALPHA]), True, True), (np.dstack([RGB, ALPHA]), False, True),
    (GREY16, True, False), (RGB.astype(np.float32) / 255, False, False), (RGB.astype(np.float64) / 255, False, False),
])
def test_numpy_round_trip_keeps_shape_dtype_and_alpha(array, grey, alpha):
    colour, layout = split_image(array)
    assert layout.grey == grey and (layout.alpha is not None) == alpha
    out = layout.rebuild(colour)
    assert out.shape == array.shape and out.dtype == array.dtype
    if np.issubdtype(array.dtype, np.floating):
        np.testing.assert_allclose(out, array, atol=1e-6)
    else:
        np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_torch_round_trip_keeps_shape_dtype_and_alpha(channels):
    tensor = torch.rand(channels, 9, 7, dtype=torch.float64)
    colour, layout = split_image(tensor)
    assert colour.shape[0] == (1 if channels <= 2 else 3)
    out = layout.rebuild(colour)
    assert out.shape == tensor.shape and out.dtype == tensor.dtype
    torch.testing.assert_close(out, tensor, atol=1e-6, rtol=0)
    if channels in (2, 4):
        assert torch.equal(out[-1], tensor[-1])  # bit-identical alpha


# ----------------------------------------------------------------------------------------------
# bad input: one clear error naming the file or argument and the reason
# ----------------------------------------------------------------------------------------------
def _write_truncated_png(path):
    noisy = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(noisy).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _write_zero_width_png(path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("make, reason", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"this is not an image at all"), "not an image file"),
    (_write_truncated_png, "truncated or corrupt"),
    (_write_zero_width_png, "zero-size image"),
])
def test_bad_files_are_one_clear_error(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ResflowInputError, match=reason) as info:
        open_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("side", [10, 15])  # over the limit (Pillow warns) and over twice the limit (Pillow raises)
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, side):
    Image.new("L", (side, side)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(ResflowInputError, match="bomb.png: image too large.*MAX_IMAGE_PIXELS = 50"):
        open_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("image, reason", [
    (np.full((4, 4, 3), np.nan, np.float32), "NaN or Inf"),
    (np.array([[0.5, np.inf]]), "NaN or Inf"),
    (np.zeros(5), "HW or HWC, got 1 dimensions"),
    (np.zeros((2, 4, 4, 3)), "HW or HWC, got 4 dimensions"),
    (np.zeros((3, 16, 16), np.float32), "got shape \\(3, 16, 16\\).*transpose"),
    (np.zeros((4, 4, 5), np.uint8), "channels"),
    (np.zeros((0, 4, 3), np.uint8), "zero-size"),
    (np.full((4, 4, 3), 255.0), "must be in \\[0, 1\\].*divide 8-bit data by 255"),
    (np.zeros((4, 4, 3), np.int32), "uint8, uint16 or float"),
    (torch.full((3, 4, 4), float("nan")), "NaN or Inf"),
    (torch.zeros(3, 4), "CHW or NCHW"),
    (torch.zeros(5, 4, 4), "channels"),
    (torch.zeros(3, 4, 4, dtype=torch.uint8), "floating point.*divide by 255"),
    (Image.new("RGB", (0, 3)), "zero-size"),
    ([1, 2], "expected a path, a PIL image"),
])
def test_bad_arrays_are_one_clear_error_naming_the_argument(image, reason):
    with pytest.raises(ResflowInputError, match=reason) as info:
        split_image(image, name="photo")
    assert str(info.value).startswith("photo: ")


def test_a_format_that_cannot_hold_the_mode_is_a_clear_error(tmp_path):
    with pytest.raises(ResflowInputError, match="cannot write a RGBA image as JPEG"):
        save_image(Image.new("RGBA", (4, 4)), tmp_path / "x.jpg")
    with pytest.raises(ResflowInputError, match="cannot write '.xyz'"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "x.xyz")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# atomic writes: a failure leaves the previous file and no temporary file
# ----------------------------------------------------------------------------------------------
def test_a_failing_rename_leaves_the_previous_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    Image.new("RGB", (4, 4), "red").save(target)
    before = target.read_bytes()

    def fail(*args):
        raise OSError("disk vanished")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk vanished"):
        save_image(Image.new("RGB", (4, 4), "blue"), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_failing_encoder_writes_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    original_save = Image.Image.save

    def write_then_fail(self, fp, *args, **kwargs):
        original_save(self, fp, *args, **kwargs)  # the encoder has produced bytes...
        raise OSError("encoder crashed")  # ...and then fails
    monkeypatch.setattr(Image.Image, "save", write_then_fail)
    with pytest.raises(ResflowInputError, match="encoder crashed"):
        save_image(Image.new("RGB", (4, 4)), target)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# 16 bits per channel in colour and grey + alpha: pypng and tifffile, where Pillow keeps 8 bits
# ----------------------------------------------------------------------------------------------
def _deep_pixels(channels, seed=0):
    return (np.random.default_rng(seed).random((9, 7, channels)) * 65535).astype(np.uint16)


def _write_png16(path, pixels):
    import png

    H, W, C = pixels.shape
    with open(path, "wb") as f:
        png.Writer(W, H, greyscale=C <= 2, alpha=C in (2, 4), bitdepth=16).write_array(f, pixels.reshape(-1))


def _write_tiff16(path, pixels, **options):
    import tifffile

    C = pixels.shape[2]
    tifffile.imwrite(path, pixels, photometric="rgb" if C >= 3 else "minisblack",
                     extrasamples=(2,) if C in (2, 4) else None, **options)


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("write, ext", [(_write_png16, "png"), (_write_tiff16, "tif")])
def test_16_bit_colour_files_round_trip_exactly_at_16_bits(tmp_path, write, ext, channels):
    from resflow_fast.imageio import DeepImage, read_image

    pixels = _deep_pixels(channels)
    write(tmp_path / f"in.{ext}", pixels)  # written by pypng / tifffile directly, as another program would
    colour, layout = split_image(tmp_path / f"in.{ext}")
    assert colour.shape == (1 if channels == 2 else 3, 9, 7) and layout.grey == (channels == 2)
    out = layout.rebuild(colour)
    assert isinstance(out, DeepImage) and out.format == ("PNG" if ext == "png" else "TIFF")
    save_image(out, tmp_path / f"out.{ext}")
    back = read_image(tmp_path / f"out.{ext}")
    assert isinstance(back, DeepImage) and back.pixels.dtype == np.uint16
    np.testing.assert_array_equal(back.pixels, pixels)  # 8-bit decoding would lose the low byte
    if ext == "tif":
        import tifffile

        assert tifffile.imread(tmp_path / f"out.{ext}").dtype == np.uint16  # another reader agrees


def test_16_bit_colour_keeps_its_icc_profile_and_is_turned_upright(tmp_path):
    from resflow_fast.imageio import DeepImage, read_image

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    pixels = _deep_pixels(3)
    save_image(DeepImage(pixels, "PNG", {"icc_profile": icc}), tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").info["icc_profile"] == icc
    _write_tiff16(tmp_path / "a.tif", pixels, iccprofile=icc, extratags=[(274, "H", 1, 6, True)])  # rotate 90 cw
    back = read_image(tmp_path / "a.tif")
    assert back.info["icc_profile"] == icc and back.size == (9, 7)
    np.testing.assert_array_equal(back.pixels, np.rot90(pixels, -1))


def test_16_bit_png_keeps_its_exif_less_the_orientation_it_was_turned_by(tmp_path):
    from resflow_fast.imageio import DeepImage, read_image

    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "Camera maker", 6  # Make; orientation: rotate 90 clockwise
    pixels = _deep_pixels(3)
    save_image(DeepImage(pixels, "PNG", {"exif": exif.tobytes()}), tmp_path / "in.png")
    image = read_image(tmp_path / "in.png")
    np.testing.assert_array_equal(image.pixels, np.rot90(pixels, -1))
    save_image(image, tmp_path / "out.png")
    back = Image.open(tmp_path / "out.png").getexif()
    assert back.get(0x010F) == "Camera maker" and back.get(0x0112) is None  # kept; not turned a second time
    np.testing.assert_array_equal(read_image(tmp_path / "out.png").pixels, image.pixels)


def test_16_bit_colour_cannot_be_written_as_an_8_bit_format(tmp_path):
    from resflow_fast.imageio import DeepImage

    with pytest.raises(ResflowInputError, match="can be written as .png or .tif"):
        save_image(DeepImage(_deep_pixels(3)), tmp_path / "x.jpg")
    assert list(tmp_path.iterdir()) == []


def test_a_compressed_16_bit_tiff_without_its_codec_is_a_clear_error(tmp_path, monkeypatch):
    import tifffile

    pixels = _deep_pixels(3)
    _write_tiff16(tmp_path / "in.tif", pixels, compression="zlib")
    real = tifffile.TiffPage.asarray

    def missing_codec(self, *args, **kwargs):  # what tifffile raises for LZW when imagecodecs is absent
        raise KeyError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")
    monkeypatch.setattr(tifffile.TiffPage, "asarray", missing_codec)
    with pytest.raises(ResflowInputError, match=r"in.tif: a 16-bit .*TIFF needs the imagecodecs package"):
        split_image(tmp_path / "in.tif")
    monkeypatch.setattr(tifffile.TiffPage, "asarray", real)
    np.testing.assert_array_equal(np.asarray(split_image(tmp_path / "in.tif")[1].rebuild(split_image(
        tmp_path / "in.tif")[0])), pixels)


def test_a_corrupt_16_bit_png_is_a_clear_error(tmp_path):
    _write_png16(tmp_path / "bad.png", _deep_pixels(3))
    data = (tmp_path / "bad.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ResflowInputError, match="bad.png: truncated or corrupt"):
        split_image(tmp_path / "bad.png")
