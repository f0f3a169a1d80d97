"""Tests of resflow_fast/embedded_models.py: names, checkpoint paths and modules, clear errors, the cache."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resflow_fast import embedded_models
from resflow_fast.embedded_models import EMBEDDED_MODELS, ModelNotInstalledError, embedded_model_path, resolve_model
from resflow_fast.reference.checkpoint import CheckpointError, save_weights
from resflow_fast.reference.schedule import Schedule
from resflow_fast.reference.unet import build_unet

CPU = torch.device("cpu")


def save_model(path, model, schedule=Schedule()):
    save_weights(path, model.state_dict(), {"unet": model.config.to_dict(), "schedule": schedule.to_dict()})
    return path


@pytest.fixture(autouse=True)
def fresh_cache():
    embedded_models.clear_cache()
    yield
    embedded_models.clear_cache()


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_unet("test").eval()


def test_a_checkpoint_path_loads_its_weights_and_schedule(tmp_path, unet):
    path = save_model(tmp_path / "m.safetensors", unet, Schedule("linear"))
    loaded = resolve_model(str(path), CPU)
    assert loaded.schedule == Schedule("linear") and loaded.source == str(path)
    for a, b in zip(loaded.unet.state_dict().values(), unet.state_dict().values()):
        assert torch.equal(a, b)
    assert not loaded.unet.training


def test_loaded_models_are_cached_until_the_file_changes(tmp_path, unet):
    path = save_model(tmp_path / "m.safetensors", unet)
    first = resolve_model(path, CPU).unet
    assert resolve_model(path, CPU).unet is first  # no second read
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file was rewritten
    assert resolve_model(path, CPU).unet is not first


def test_a_module_is_used_in_place_with_the_default_schedule(unet):
    loaded = resolve_model(unet, CPU)
    assert loaded.unet is unet and loaded.schedule == Schedule()
    assert resolve_model(unet, CPU, Schedule("constant")).schedule == Schedule("constant")


def test_the_embedded_name_reads_the_packaged_file(tmp_path, monkeypatch, unet):
    monkeypatch.setattr(embedded_models, "MODELS_DIR", tmp_path)
    save_model(tmp_path / "default.safetensors", unet)
    assert resolve_model("default", CPU).source == "default"


def test_an_embedded_name_is_not_shadowed_by_a_local_folder_of_that_name(tmp_path, monkeypatch, unet):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setattr(embedded_models, "MODELS_DIR", models)
    save_model(models / "default.safetensors", unet)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()  # e.g. a folder of photographs to restore
    assert resolve_model("default", CPU).source == "default"
    with pytest.raises(CheckpointError, match="default"):  # the local folder, asked for as a path
        resolve_model("./default", CPU)


def test_a_retired_name_loads_the_model_that_replaced_it(tmp_path, monkeypatch, unet):
    monkeypatch.setattr(embedded_models, "MODELS_DIR", tmp_path)
    save_model(tmp_path / "default.safetensors", unet)
    assert embedded_models.MODEL_ALIASES["denoise"] == "default"
    loaded = resolve_model("denoise", CPU)
    assert loaded.source == "default" and loaded.unet is resolve_model("default", CPU).unet
    assert embedded_model_path("denoise") == tmp_path / "default.safetensors"


def test_a_missing_embedded_model_says_to_pass_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded_models, "MODELS_DIR", tmp_path)
    with pytest.raises(ModelNotInstalledError, match="embedded 'default' model is not installed.*pass a checkpoint"):
        resolve_model("default", CPU)


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="unknown model 'denoise-xl'.*known: default"):
        resolve_model("denoise-xl", CPU)


def test_a_missing_checkpoint_path_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.safetensors: checkpoint not found"):
        resolve_model(tmp_path / "nothing.safetensors", CPU)


def test_a_checkpoint_for_another_architecture_is_refused(tmp_path, unet):
    # The record says one architecture, the tensors are of another (a wider U-Net).
    wider = build_unet("test", base_channels=64)
    path = tmp_path / "m.safetensors"
    save_weights(path, wider.state_dict(), {"unet": unet.config.to_dict(), "schedule": Schedule().to_dict()})
    with pytest.raises(CheckpointError, match="weights do not fit this architecture"):
        resolve_model(path, CPU)


def test_a_model_for_other_than_rgb_is_refused(tmp_path):
    grey_model = build_unet("test", image_channels=1)
    with pytest.raises(CheckpointError, match="restores 1-channel images.*RGB"):
        resolve_model(save_model(tmp_path / "grey.safetensors", grey_model), CPU)


def test_wrong_kinds_of_model_argument(tmp_path, unet):
    with pytest.raises(TypeError, match="expected a resflow_fast.reference UNet, got Linear"):
        resolve_model(torch.nn.Linear(2, 2), CPU)
    with pytest.raises(TypeError, match="got int"):
        resolve_model(3, CPU)
    with pytest.raises(ValueError, match="schedule= applies to a module"):
        resolve_model(save_model(tmp_path / "m.safetensors", unet), CPU, Schedule())


@pytest.mark.parametrize("name", list(EMBEDDED_MODELS))
def test_every_embedded_model_ships_within_the_size_limit(name):
    path = embedded_model_path(name)
    assert path.is_file(), f"{name}: {path} is not in the package"
    assert path.stat().st_size <= 25 * 1024 * 1024, "an embedded model ships in at most 25 MB"


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name):
    """An image of examples/ as float64 in [0, 1]."""
    return np.asarray(Image.open(EXAMPLES / name), dtype=np.float64) / 255


def test_the_shipped_default_denoises_the_example(psnr01):
    """The embedded weights load, and restore the README's example at their recorded settings
    (1 step): 20.7 dB noisy -> 30.5 dB, as measured; a corrupt or untrained file would fail this."""
    from resflow_fast import restore

    clean, noisy = _example("astronaut-clean.png"), Image.open(EXAMPLES / "astronaut-noisy-sigma25.png")
    restored = np.asarray(restore(noisy), dtype=np.float64) / 255
    assert psnr01(restored, clean) - psnr01(np.asarray(noisy, dtype=np.float64) / 255, clean) > 8.0


def test_the_shipped_default_denoises_a_grey_photograph_as_well_as_a_colour_one():
    """A grey file holds one plane of noise, which reaches the RGB model as three equal channels.
    The grey example at sigma 25 goes 20.6 -> 28.8 dB with `default` (22.2 dB with `mix`, which
    never saw grey in training), as measured; 7 dB is what a grey photograph must gain."""
    from resflow_fast import restore

    grey = np.asarray(Image.open(EXAMPLES / "astronaut-clean.png").convert("L"), dtype=np.float64)
    noisy = np.clip(np.round(grey + np.random.default_rng(0).normal(0, 25, grey.shape)), 0, 255).astype(np.uint8)

    def psnr8(a):
        return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - grey) ** 2))

    restored = restore(noisy)
    assert restored.shape == noisy.shape and restored.dtype == np.uint8
    assert psnr8(restored) - psnr8(noisy) > 7.0


def test_the_shipped_default_deblocks_the_jpeg_example(psnr01):
    """examples/astronaut-jpeg-q10.jpg is the clean example saved as a JPEG file of quality 10
    (26.60 dB); `default` returns it at 27.29 dB at its recorded settings, as measured."""
    from resflow_fast import restore

    clean, blocky = _example("astronaut-clean.png"), Image.open(EXAMPLES / "astronaut-jpeg-q10.jpg")
    assert blocky.format == "JPEG"
    restored = np.asarray(restore(blocky), dtype=np.float64) / 255
    assert psnr01(restored, clean) - psnr01(np.asarray(blocky, dtype=np.float64) / 255, clean) > 0.5


def test_the_shipped_default_leaves_a_clean_photograph_nearly_alone(psnr01):
    """A blind restorer meets images whose degradation nobody measured. The clean example comes
    back at 45.3 dB (1 step, its recorded setting; the two defaults of before gave 40.2 and 43.3 dB)."""
    from resflow_fast import restore

    clean = _example("astronaut-clean.png")
    restored = np.asarray(restore((clean * 255).round().astype(np.uint8)), dtype=np.float64) / 255
    assert psnr01(restored, clean) > 44.0


@pytest.mark.parametrize("example, gains", [("astronaut-hazy.png", (5.0, 0.05)), ("astronaut-snowy.png", (4.0, 4.0))])
def test_the_haze_snow_model_clears_the_hazy_and_snowy_examples_beyond_mix_and_default(psnr01, example, gains):
    """`haze-snow` is the model for haze and snow. At its recorded 1 step and margin 0, as
    measured: examples/astronaut-hazy.png (13.13 dB) comes back at 18.78 dB, with `mix` 18.63 and
    `default` 13.11 dB (on this one image the lead over `mix` is small; over the 26 held-out crops
    it is about 0.5 dB); examples/astronaut-snowy.png (23.47 dB) at 27.89 dB, with `mix` 23.36
    and `default` 23.48 dB."""
    from resflow_fast import restore

    clean, degraded = _example("astronaut-clean.png"), Image.open(EXAMPLES / example)
    before = psnr01(np.asarray(degraded, dtype=np.float64) / 255, clean)
    by_model = {name: psnr01(np.asarray(restore(degraded, model=name), dtype=np.float64) / 255, clean)
                for name in ("haze-snow", "mix", "default")}
    gain, lead = gains
    assert by_model["haze-snow"] - before > gain
    assert by_model["haze-snow"] - max(by_model["mix"], by_model["default"]) > lead


def test_the_rain_model_derains_the_rainy_example_where_mix_and_default_barely_do(psnr01):
    """`rain` is the model for rain. On examples/astronaut-rainy.png (22.5 dB) it returns 27.1 dB
    at its recorded 1 step and 96-px tiles, `mix` 22.8 dB and `default` 22.7 dB, as measured."""
    from resflow_fast import restore

    clean, rainy = _example("astronaut-clean.png"), Image.open(EXAMPLES / "astronaut-rainy.png")
    before = psnr01(np.asarray(rainy, dtype=np.float64) / 255, clean)
    by_model = {name: psnr01(np.asarray(restore(rainy, model=name), dtype=np.float64) / 255, clean)
                for name in ("rain", "mix", "default")}
    assert by_model["rain"] - before > 3.0
    assert by_model["rain"] - max(by_model["mix"], by_model["default"]) > 3.0


def test_the_sampling_settings_a_weights_file_records_are_loaded(tmp_path, unet):
    from resflow_fast.reference.sampler import PAPER_SAMPLING, SamplingSettings

    path = tmp_path / "m.safetensors"
    save_weights(path, unet.state_dict(), {"unet": unet.config.to_dict(), "schedule": Schedule().to_dict(),
                                           "sampling": {"steps": 2, "time_power": 1.5, "y_mode": "exact"}})
    assert resolve_model(path, CPU).sampling == SamplingSettings(2, 1.5, "exact")
    assert resolve_model(save_model(tmp_path / "plain.safetensors", unet), CPU).sampling == PAPER_SAMPLING
    assert resolve_model(unet, CPU).sampling == PAPER_SAMPLING


@pytest.mark.parametrize("key, good, bad_values", [("margin", 0, (-3, 1.5, "16", True)),
                                                    ("tile", 96, (8, 0, 96.5, "96", True))])
def test_the_pixel_sizes_a_weights_file_records_are_loaded_and_checked(tmp_path, unet, key, good, bad_values):
    """The mirrored margin and the tile side a file records for restoring; None where it records none."""
    record = {"unet": unet.config.to_dict(), "schedule": Schedule().to_dict()}
    save_weights(tmp_path / "m.safetensors", unet.state_dict(), dict(record, **{key: good}))
    assert getattr(resolve_model(tmp_path / "m.safetensors", CPU), key) == good
    assert getattr(resolve_model(save_model(tmp_path / "plain.safetensors", unet), CPU), key) is None
    assert getattr(resolve_model(unet, CPU), key) is None
    for bad in bad_values:
        save_weights(tmp_path / "bad.safetensors", unet.state_dict(), dict(record, **{key: bad}))
        embedded_models.clear_cache()
        with pytest.raises(CheckpointError, match=f"bad.safetensors: its recorded {key} is invalid"):
            resolve_model(tmp_path / "bad.safetensors", CPU)


def test_the_shipped_dehazers_record_no_margin_and_default_records_none():
    """`mix` and `haze-snow` dehaze from the whole image's statistics, which a mirrored border
    shifts: they record margin 0; `default` records none, so it gets the restorer's default."""
    assert resolve_model("mix", CPU).margin == 0 and resolve_model("haze-snow", CPU).margin == 0
    assert resolve_model("default", CPU).margin is None


def test_the_shipped_rain_model_records_small_tiles_and_the_others_none():
    """`rain` removes streaks best in 96-px tiles (docs/MODEL_CARD.md); the others take the
    restorer's default tiles."""
    assert resolve_model("rain", CPU).tile == 96
    assert all(resolve_model(name, CPU).tile is None for name in ("default", "mix", "haze-snow"))


def test_invalid_recorded_sampling_settings_are_a_clear_error(tmp_path, unet):
    path = tmp_path / "m.safetensors"
    save_weights(path, unet.state_dict(), {"unet": unet.config.to_dict(), "schedule": Schedule().to_dict(),
                                           "sampling": {"steps": 0}})
    with pytest.raises(CheckpointError, match="m.safetensors: its recorded sampling settings are invalid"):
        resolve_model(path, CPU)
