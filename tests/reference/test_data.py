"""Tests for reference/data.py: model-range conversion, image loading, the indexed datasets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resflow_fast.reference.data import (
    VALIDATION_STREAM,
    CleanFolderDataset,
    DataError,
    PairedFolderDataset,
    ProceduralDataset,
    build_dataset,
    from_model_range,
    load_image,
    to_model_range,
    validation_set,
)
from resflow_fast.reference.degradations import parse_degradation


def random_uint8(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def assert_model_pair(pair, channels: int, crop: int) -> None:
    hq, lq = pair
    for x in (hq, lq):
        assert x.shape == (channels, crop, crop)
        assert x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0


# ------------------------------------------------------------------------------------------------
# model range
# ------------------------------------------------------------------------------------------------
def test_model_range_round_trip_and_layout():
    img = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)  # non-square: catches H/W swaps
    x = to_model_range(img)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    assert torch.equal(x[:, 2, 4], torch.from_numpy(img[2, 4] * 2 - 1))
    np.testing.assert_allclose(from_model_range(x), img, atol=1e-6)
    assert from_model_range(x).dtype == np.float32


def test_from_model_range_clamps_overshoot():
    out = from_model_range(torch.tensor([[[-3.0, 0.0, 2.0]]]))
    np.testing.assert_array_equal(out[..., 0], [[0.0, 0.5, 1.0]])


def test_model_range_rejects_wrong_layout():
    with pytest.raises(ValueError, match="HWC"):
        to_model_range(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="CHW"):
        from_model_range(torch.zeros(1, 3, 4, 4))


# ------------------------------------------------------------------------------------------------
# load_image
# ------------------------------------------------------------------------------------------------
def test_load_image_rgb_png_is_exact(tmp_path):
    pixels = random_uint8(6, 9)
    img = load_image(save(tmp_path / "a.png", pixels))
    assert img.shape == (6, 9, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img, pixels / np.float32(255))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA"])
def test_load_image_converts_modes_to_rgb(tmp_path, mode):
    image = Image.fromarray(random_uint8(4, 5)).convert(mode)
    image.save(tmp_path / "m.png")
    img = load_image(tmp_path / "m.png")
    assert img.shape == (4, 5, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    if mode in ("L", "LA"):  # grey is repeated to 3 channels
        np.testing.assert_array_equal(img[..., 0], img[..., 2])


def test_load_image_16_bit_divides_by_65535(tmp_path):
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")  # uint16 -> mode "I;16"
    img = load_image(tmp_path / "deep.png")
    np.testing.assert_allclose(img[0, :, 1], values[0] / 65535.0, rtol=1e-6)


def test_load_image_honours_exif_orientation(tmp_path):
    pixels = random_uint8(4, 6)  # stored 6 wide, 4 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    save(tmp_path / "rotated.jpg", pixels, exif=exif, quality=95)
    assert load_image(tmp_path / "rotated.jpg").shape == (6, 4, 3)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found.*missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="text.png: not an image"):
        load_image(tmp_path / "text.png")
    whole = save(tmp_path / "whole.png", random_uint8(32, 32)).read_bytes()
    (tmp_path / "half.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="half.png: truncated"):
        load_image(tmp_path / "half.png")
    assert issubclass(DataError, ValueError)


# ------------------------------------------------------------------------------------------------
# procedural dataset
# ------------------------------------------------------------------------------------------------
def test_procedural_is_deterministic_by_index():
    dataset = ProceduralDataset("noise:25", crop=32, seed=3)
    again = ProceduralDataset("noise:25", crop=32, seed=3)
    for a, b in zip(dataset.sample(11), again.sample(11)):
        assert torch.equal(a, b)
    assert not torch.equal(dataset.sample(11)[0], dataset.sample(12)[0])
    assert not torch.equal(dataset.sample(11)[0], ProceduralDataset("noise:25", crop=32, seed=4).sample(11)[0])


@pytest.mark.parametrize("channels", [3, 1])
def test_procedural_shapes_and_range(channels):
    dataset = ProceduralDataset("mix", crop=24, seed=0, channels=channels)
    assert_model_pair(dataset[5], channels, 24)
    hq, lq = dataset.sample(0)
    assert not torch.equal(hq, lq)


def test_procedural_lq_is_the_degraded_hq():
    hq, lq = ProceduralDataset("noise:20", crop=32, seed=0).sample(4)
    residual = from_model_range(lq) - from_model_range(hq)
    assert residual.std() == pytest.approx(20 / 255, rel=0.2)  # clipping trims it a little


def test_dataset_is_infinite_and_rejects_bad_indices():
    dataset = ProceduralDataset("jpeg:30", crop=16)
    assert len(dataset) >= 2 ** 62
    assert_model_pair(dataset.sample(2 ** 40), 3, 16)  # far-away indices are fine
    with pytest.raises(ValueError, match="index must be an integer >= 0, got -1"):
        dataset.sample(-1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(degradation="noise", crop=4), "crop must be an integer >= 8, got 4"),
    (dict(degradation="noise", seed=-1), "seed must be an integer >= 0, got -1"),
    (dict(degradation="noise", channels=2), "channels must be 1 or 3, got 2"),
    (dict(degradation="fog"), "unknown degradation 'fog'"),
    (dict(degradation=None), "needs a degradation"),
])
def test_procedural_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProceduralDataset(**kwargs)


def test_dataset_works_in_a_dataloader():
    loader = torch.utils.data.DataLoader(ProceduralDataset("noise:25", crop=16), batch_size=4,
                                         sampler=range(8))
    hq, lq = next(iter(loader))
    assert hq.shape == lq.shape == (4, 3, 16, 16)


# ------------------------------------------------------------------------------------------------
# clean folder
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def clean_folder(tmp_path) -> Path:
    save(tmp_path / "b.png", random_uint8(40, 50, seed=1))
    save(tmp_path / "sub" / "a.JPG", random_uint8(36, 36, seed=2), quality=95)
    save(tmp_path / "small.bmp", random_uint8(10, 12, seed=3))  # smaller than the crop: padded
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_clean_folder_finds_images_sorted_and_recursive(clean_folder):
    files = CleanFolderDataset(clean_folder, "noise", crop=16).files
    assert [p.relative_to(clean_folder).as_posix() for p in files] == ["b.png", "small.bmp", "sub/a.JPG"]
    flat = CleanFolderDataset(clean_folder, "noise", crop=16, recursive=False).files
    assert [p.name for p in flat] == ["b.png", "small.bmp"]


def test_clean_folder_samples_are_deterministic_shaped_and_in_range(clean_folder):
    dataset = CleanFolderDataset(clean_folder, "jpeg:20", crop=32, seed=1)
    fresh = CleanFolderDataset(clean_folder, "jpeg:20", crop=32, seed=1)  # its own (empty) cache
    distinct = set()
    for index in range(6):
        pair = dataset.sample(index)
        assert_model_pair(pair, 3, 32)
        assert all(torch.equal(a, b) for a, b in zip(pair, fresh.sample(index)))
        distinct.add(pair[0].numpy().tobytes())
    assert len(distinct) > 1  # indices pick different files / crops / flips (two may coincide)


def test_clean_folder_crops_come_from_the_image(tmp_path):
    pixels = random_uint8(20, 30)
    save(tmp_path / "only.png", pixels)
    dataset = CleanFolderDataset(tmp_path, "noise:0", crop=8, seed=0)
    source = pixels.astype(np.float32) / 255
    for index in range(4):
        hq = from_model_range(dataset.sample(index)[0])
        found = any(np.allclose(hq, candidate[y:y + 8, x:x + 8], atol=1e-6)
                    for candidate in (source, source[:, ::-1]) for y in range(13) for x in range(23))
        assert found, "the HQ crop is not a (possibly flipped) window of the file"


def test_clean_folder_errors(tmp_path):
    with pytest.raises(DataError, match=f"no images .* found in {tmp_path}"):
        CleanFolderDataset(tmp_path, "noise")
    with pytest.raises(DataError, match="folder not found"):
        CleanFolderDataset(tmp_path / "nope", "noise")
    (tmp_path / "broken.png").write_text("garbage")
    with pytest.raises(DataError, match="broken.png: not an image"):
        CleanFolderDataset(tmp_path, "noise", crop=8).sample(0)


# ------------------------------------------------------------------------------------------------
# paired folder
# ------------------------------------------------------------------------------------------------
def make_pairs(root: Path, names=("a", "b"), size=(24, 20)) -> Path:
    for seed, name in enumerate(names):
        hq = random_uint8(size[1], size[0], seed=seed)
        save(root / "hq" / f"{name}.png", hq)
        save(root / "lq" / f"{name}.png", 255 - hq)  # a known, invertible "degradation"
    return root


def test_paired_folder_matches_names_across_extensions(tmp_path):
    save(tmp_path / "hq" / "a.png", random_uint8(20, 20))
    save(tmp_path / "lq" / "a.jpg", random_uint8(20, 20), quality=90)
    save(tmp_path / "hq" / "b.PNG", random_uint8(20, 20))
    save(tmp_path / "lq" / "b.webp", random_uint8(20, 20))
    dataset = PairedFolderDataset(tmp_path, crop=16, seed=0)
    assert [(hq.name, lq.name) for hq, lq in dataset.pairs] == [("a.png", "a.jpg"), ("b.PNG", "b.webp")]
    assert_model_pair(dataset.sample(0), 3, 16)


def test_paired_folder_crops_and_flips_both_alike(tmp_path):
    dataset = PairedFolderDataset(make_pairs(tmp_path), crop=16, seed=0)
    for index in range(8):
        hq, lq = dataset.sample(index)
        torch.testing.assert_close(lq, -hq, atol=1e-6, rtol=0)  # lq = 255 - hq, i.e. -hq in [-1, 1]
    a, b = dataset.sample(3), PairedFolderDataset(tmp_path, crop=16, seed=0).sample(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_paired_folder_pads_small_images(tmp_path):
    dataset = PairedFolderDataset(make_pairs(tmp_path, size=(10, 6)), crop=16, seed=0)
    hq, lq = dataset.sample(0)
    assert hq.shape == (3, 16, 16)
    torch.testing.assert_close(lq, -hq, atol=1e-6, rtol=0)


def test_paired_folder_missing_subfolder(tmp_path):
    save(tmp_path / "hq" / "a.png", random_uint8(8, 8))
    with pytest.raises(DataError, match="missing: lq/"):
        PairedFolderDataset(tmp_path)


def test_paired_folder_empty_subfolder(tmp_path):
    save(tmp_path / "hq" / "a.png", random_uint8(8, 8))
    (tmp_path / "lq").mkdir()
    with pytest.raises(DataError, match=r"no images .* found in .*lq"):
        PairedFolderDataset(tmp_path)


def test_paired_folder_unmatched_names_are_listed(tmp_path):
    make_pairs(tmp_path, names=("a", "b"))
    for name in ("c", "d"):
        save(tmp_path / "lq" / f"{name}.png", random_uint8(8, 8))
    with pytest.raises(DataError, match=r"2 image\(s\) in .*lq have no match by name in .*hq: c, d"):
        PairedFolderDataset(tmp_path)


def test_paired_folder_duplicate_names_are_rejected(tmp_path):
    make_pairs(tmp_path, names=("a",))
    save(tmp_path / "hq" / "a.jpg", random_uint8(8, 8))
    with pytest.raises(DataError, match="have the name 'a'"):
        PairedFolderDataset(tmp_path)


def test_paired_folder_size_mismatch_names_both_files_and_sizes(tmp_path):
    save(tmp_path / "hq" / "a.png", random_uint8(20, 30))
    save(tmp_path / "lq" / "a.png", random_uint8(10, 15))
    dataset = PairedFolderDataset(tmp_path, crop=8)  # sizes are checked at load time
    with pytest.raises(DataError, match=r"hq/a.png is 30x20.*lq/a.png is 15x10"):
        dataset.sample(0)


# ------------------------------------------------------------------------------------------------
# build_dataset, describe, validation_set
# ------------------------------------------------------------------------------------------------
def test_build_dataset_dispatch(tmp_path, clean_folder):
    assert isinstance(build_dataset("procedural", "noise", 16, 0), ProceduralDataset)
    assert isinstance(build_dataset(str(clean_folder), "jpeg", 16, 0), CleanFolderDataset)
    paired_root = make_pairs(tmp_path / "paired")
    assert isinstance(build_dataset(str(paired_root), None, 16, 0), PairedFolderDataset)


@pytest.mark.parametrize("data, degradation, match", [
    ("{tmp}/nope", "noise", "data path does not exist: .*nope"),
    ("{tmp}/file.txt", "noise", "not a folder"),
    ("{tmp}/empty", "noise", "no images"),
    ("{tmp}/clean", None, "needs a degradation"),
    ("procedural", None, "needs a degradation"),
    ("{tmp}/paired", "noise", "already degraded"),
    ("{tmp}/half", None, "missing: lq/"),
])
def test_build_dataset_errors(tmp_path, data, degradation, match):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    save(tmp_path / "clean" / "a.png", random_uint8(8, 8))
    make_pairs(tmp_path / "paired")
    save(tmp_path / "half" / "hq" / "a.png", random_uint8(8, 8))
    with pytest.raises(DataError, match=match):
        build_dataset(data.format(tmp=tmp_path), degradation, 16, 0)


def test_describe_is_json_provenance(tmp_path, clean_folder):
    procedural = build_dataset("procedural", "noise:5-50", 32, 7).describe()
    assert procedural == {"kind": "procedural", "root": None, "degradation": "noise:5-50", "crop": 32,
                          "seed": 7, "files": 0, "channels": 3}
    clean = build_dataset(str(clean_folder), "mix", 16, 1).describe()
    assert clean["kind"] == "clean_folder" and clean["files"] == 3 and clean["root"] == str(clean_folder)
    paired = build_dataset(str(make_pairs(tmp_path / "p")), None, 16, 1).describe()
    assert paired["kind"] == "paired_folder" and paired["files"] == 2 and paired["degradation"] is None
    for record in (procedural, clean, paired):
        assert json.loads(json.dumps(record)) == record
    # The recorded spec rebuilds the same degradation.
    assert parse_degradation(procedural["degradation"]) == parse_degradation("noise:5-50")


def test_validation_set_is_stacked_deterministic_and_apart_from_training():
    dataset = ProceduralDataset("noise:25", crop=16, seed=0)
    hq, lq = validation_set(dataset, 3, seed=0)
    assert hq.shape == lq.shape == (3, 3, 16, 16)
    again_hq, _ = validation_set(ProceduralDataset("noise:25", crop=16, seed=0), 3, seed=0)
    assert torch.equal(hq, again_hq)
    training = torch.stack([dataset.sample(i)[0] for i in range(3)])
    assert all(not torch.equal(hq[i], training[j]) for i in range(3) for j in range(3))
    assert dataset.seed == 0 and torch.equal(dataset.sample(0)[0], training[0])  # the dataset is untouched
    assert VALIDATION_STREAM != 0  # a zero tag would collide with training keys (numpy pads with zeros)
    with pytest.raises(ValueError, match="count must be an integer >= 1, got 0"):
        validation_set(dataset, 0, seed=0)


# ---------------------------------------------------------------------------------------------
# mixed datasets
# ---------------------------------------------------------------------------------------------
def test_mixed_dataset_interleaves_its_parts(tmp_path):
    from resflow_fast.reference.data import MixedDataset

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    mixed = build_dataset(["procedural", str(folder)], "noise:25", 16, seed=3)
    assert isinstance(mixed, MixedDataset)
    procedural = build_dataset("procedural", "noise:25", 16, seed=3)
    photos = build_dataset(str(folder), "noise:25", 16, seed=3)
    for i in range(4):  # even indices from the first part, odd from the second, each at i // 2
        part = procedural if i % 2 == 0 else photos
        for a, b in zip(mixed.sample(i), part.sample(i // 2)):
            assert torch.equal(a, b)
    assert [p["kind"] for p in mixed.describe()["parts"]] == ["procedural", "clean_folder"]
    hq, lq = validation_set(mixed, 2, seed=0)
    assert hq.shape == (2, 3, 16, 16)
    assert build_dataset(["procedural"], "noise:25", 16, seed=3).describe()["kind"] == "procedural"


# ------------------------------------------------------------------------------------------------
# grey samples, area weighting, the uint8 cache
# ------------------------------------------------------------------------------------------------
def test_grey_samples_are_degraded_once_and_repeated(clean_folder):
    dataset = CleanFolderDataset(clean_folder, "noise:25", crop=16, seed=3, grey_fraction=1.0)
    for index in range(3):
        hq, lq = dataset.sample(index)
        for x in (hq, lq):  # three equal channels: the noise too is the same in each
            assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
        assert not torch.equal(hq, lq)


def test_grey_is_the_luma_of_the_colour_crop(tmp_path):
    pixels = random_uint8(24, 24, seed=4)
    save(tmp_path / "c.png", pixels)
    colour = CleanFolderDataset(tmp_path, "noise:0", crop=24, seed=0)
    grey = CleanFolderDataset(tmp_path, "noise:0", crop=24, seed=0, grey_fraction=1.0)
    hq_colour = from_model_range(colour.sample(0)[0])
    hq_grey = from_model_range(grey.sample(0)[0])  # same crop and flip: the draws before the grey one agree
    expected = hq_colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    np.testing.assert_allclose(hq_grey[..., 0], expected, atol=1e-5)


def test_grey_fraction_zero_keeps_the_data_stream(clean_folder):
    before = CleanFolderDataset(clean_folder, "mix", crop=16, seed=2)
    after = CleanFolderDataset(clean_folder, "mix", crop=16, seed=2, grey_fraction=0.0)
    for index in range(4):
        assert all(torch.equal(a, b) for a, b in zip(before.sample(index), after.sample(index)))


def test_grey_fraction_is_a_share_of_samples(clean_folder):
    dataset = CleanFolderDataset(clean_folder, "noise:10", crop=8, seed=0, grey_fraction=0.3)
    grey = sum(bool(torch.equal(hq[0], hq[1]) and torch.equal(hq[1], hq[2]))
               for hq, _ in (dataset.sample(i) for i in range(200)))
    assert 35 <= grey <= 85  # 60 expected; the random images are never grey by themselves


@pytest.mark.parametrize("option", ["grey_fraction", "flat_fraction", "flat_grey_share"])
@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True])
def test_sample_fractions_are_validated(clean_folder, option, bad):
    with pytest.raises(ValueError, match=option):
        CleanFolderDataset(clean_folder, "noise", crop=8, **{option: bad})


@pytest.mark.parametrize("option", ["grey_fraction", "flat_fraction", "flat_grey_share"])
def test_paired_data_refuses_sample_fractions(tmp_path, option):
    with pytest.raises(DataError, match=option):
        build_dataset(str(make_pairs(tmp_path / "p")), None, 16, 0, **{option: 0.5})


# ------------------------------------------------------------------------------------------------
# flat samples
# ------------------------------------------------------------------------------------------------
def test_flat_samples_are_the_crops_mean_colour_then_degraded(tmp_path):
    save(tmp_path / "c.png", random_uint8(24, 24, seed=5))
    photo = CleanFolderDataset(tmp_path, "noise:0", crop=24, seed=0)
    flat = CleanFolderDataset(tmp_path, "noise:25", crop=24, seed=0, flat_fraction=1.0)
    hq_photo = from_model_range(photo.sample(0)[0])
    hq_flat, lq_flat = (from_model_range(x) for x in flat.sample(0))  # same crop: the draws before agree
    np.testing.assert_allclose(hq_flat, np.broadcast_to(hq_photo.mean(axis=(0, 1)), hq_photo.shape), atol=1e-5)
    assert lq_flat.std(axis=(0, 1)).min() > 0.05  # the degradation still applies: sigma 25 is 0.098


def test_flat_and_grey_together_give_a_flat_grey_crop(clean_folder):
    dataset = CleanFolderDataset(clean_folder, "noise:0", crop=16, seed=1, flat_fraction=1.0, grey_fraction=1.0)
    hq, _ = dataset.sample(0)
    assert torch.equal(hq, hq[0, 0, 0].expand_as(hq))


@pytest.mark.parametrize("base, zero", [(dict(grey_fraction=0.2), "flat_fraction"),
                                        (dict(flat_fraction=0.5), "flat_grey_share")])
def test_a_zero_option_keeps_the_data_stream(clean_folder, base, zero):
    before = CleanFolderDataset(clean_folder, "mix", crop=16, seed=2, **base)
    after = CleanFolderDataset(clean_folder, "mix", crop=16, seed=2, **base, **{zero: 0.0})
    for index in range(6):
        assert all(torch.equal(a, b) for a, b in zip(before.sample(index), after.sample(index)))
    assert zero not in after.describe()


def test_flat_fraction_is_a_share_of_samples_and_recorded(clean_folder):
    dataset = CleanFolderDataset(clean_folder, "noise:0", crop=8, seed=0, flat_fraction=0.3)
    flat = sum(bool(torch.equal(hq, hq[:, :1, :1].expand_as(hq))) for hq, _ in (dataset.sample(i) for i in range(200)))
    assert 35 <= flat <= 85  # 60 expected; the random images are never flat by themselves
    assert dataset.describe()["flat_fraction"] == 0.3
    procedural = build_dataset("procedural", "noise:10", 16, 0, flat_fraction=1.0)
    hq, _ = procedural.sample(0)
    assert torch.equal(hq, hq[:, :1, :1].expand_as(hq))


def test_flat_grey_share_gives_grey_levels_across_the_range(tmp_path):
    # one saturated colour: its mean is never grey, so every grey flat crop comes from the share
    save(tmp_path / "c.png", np.broadcast_to(np.array([220, 40, 90], np.uint8), (20, 20, 3)).copy())
    dataset = CleanFolderDataset(tmp_path, "noise:25", crop=8, seed=3, flat_fraction=1.0, flat_grey_share=0.5)
    levels = []
    for index in range(200):
        hq, lq = dataset.sample(index)
        assert torch.equal(hq, hq[:, :1, :1].expand_as(hq))  # every crop is flat...
        if torch.equal(hq[0], hq[1]) and torch.equal(hq[1], hq[2]):  # ...and these are grey
            levels.append(float(hq[0, 0, 0]))
            assert not torch.equal(lq, hq)  # and still degraded
    assert 70 <= len(levels) <= 130  # 100 expected
    # uniform over [0, 1] (model range [-1, 1]), mid-grey included
    assert min(levels) < -0.8 and max(levels) > 0.8 and any(abs(v) < 0.05 for v in levels)
    assert dataset.describe()["flat_grey_share"] == 0.5


def test_flat_grey_share_needs_flat_crops(clean_folder):
    with pytest.raises(ValueError, match="flat_grey_share .* needs flat_fraction > 0"):
        CleanFolderDataset(clean_folder, "noise", crop=8, flat_grey_share=0.5)



def test_area_weighting_picks_files_by_pixel_count(tmp_path):
    save(tmp_path / "big.png", np.full((120, 100, 3), 200, np.uint8))    # 12,000 px
    save(tmp_path / "small.png", np.full((40, 30, 3), 50, np.uint8))     # 1,200 px
    uniform = CleanFolderDataset(tmp_path, "noise:0", crop=8, seed=0)
    by_area = CleanFolderDataset(tmp_path, "noise:0", crop=8, seed=0, file_weighting="area")

    def share_of_big(dataset):
        return np.mean([float(dataset.sample(i)[0].mean()) > 0 for i in range(300)])  # 200/255 -> > 0

    assert 0.4 < share_of_big(uniform) < 0.6
    assert share_of_big(by_area) > 0.85  # 10/11 expected
    assert by_area.describe()["file_weighting"] == "area"
    with pytest.raises(ValueError, match="file_weighting"):
        CleanFolderDataset(tmp_path, "noise:0", crop=8, file_weighting="size")


def test_cache_keeps_8_bit_pixels_and_gives_the_same_values(tmp_path):
    pixels = random_uint8(20, 20, seed=9)
    save(tmp_path / "a.png", pixels)
    dataset = CleanFolderDataset(tmp_path, "noise:0", crop=20, seed=0)
    dataset.sample(0)
    (cached,) = dataset._cache._images.values()
    assert cached.dtype == np.uint8  # a quarter of float32's memory
    hq = from_model_range(dataset.sample(0)[0])  # the crop is the whole image, perhaps mirrored
    full = load_image(tmp_path / "a.png")
    assert np.allclose(hq, full, atol=1e-6) or np.allclose(hq, full[:, ::-1], atol=1e-6)
