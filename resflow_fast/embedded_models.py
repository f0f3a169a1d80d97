"""Which model :func:`resflow_fast.restore` runs: a name, a checkpoint path or a module.

* a **name** of an embedded model (:data:`EMBEDDED_MODELS`), shipped inside the package as
  ``resflow_fast/models/<name>.safetensors`` (setup.py's package_data), or of a retired one
  (:data:`MODEL_ALIASES`), which loads the model that replaced it;
* a **checkpoint path**: a weights file, a training checkpoint folder or a run folder (its latest
  checkpoint), read by :func:`resflow_fast.reference.checkpoint.load_model`;
* a reference :class:`~resflow_fast.reference.unet.UNet` **module**, used in place (a model in
  training can be sampled with its current weights), with the entropy-preserving schedule unless
  ``schedule=`` says otherwise.

Loaded files are cached per (file, modification time, size, device), so a ``Restorer`` per image
or repeated ``restore()`` calls do not re-read the weights, and a file rewritten by training is
read again.

A weights file may record the sampler settings its model restores best with (``resflow export
--steps/--time-power/--y-mode``); :attr:`LoadedModel.sampling` holds them, or the paper's
(:data:`~resflow_fast.reference.sampler.PAPER_SAMPLING`) where the file records none. It may also
record the mirrored margin the restorer puts around an image for it (``resflow export
--margin``): :attr:`LoadedModel.margin`, and the largest tile side it restores with when the
caller leaves the tiling to the restorer (``resflow export --tile``): :attr:`LoadedModel.tile`;
each None where the file records none.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from .reference.checkpoint import (MIN_TILE_SIDE, CheckpointError, check_margin, check_tile_side, load_model,
                                   resolve_weights_path)
from .reference.sampler import PAPER_SAMPLING, SamplingSettings
from .reference.schedule import Schedule
from .reference.unet import UNet

__all__ = ["EMBEDDED_MODELS", "MODEL_ALIASES", "LoadedModel", "ModelNotInstalledError", "resolve_model",
           "clear_cache"]

MODELS_DIR = Path(__file__).parent / "models"

#: Embedded model names and what they restore.
EMBEDDED_MODELS: dict[str, str] = {
    "default": "the blind model for Gaussian noise (sigma 0-50, colour and grey) and JPEG (quality 10-50), "
               "trained on photographs; it gives a clean photograph back nearly unchanged (docs/MODEL_CARD.md)",
    "mix": "an earlier default model fine-tuned on the package's synthetic mix (noise, JPEG, rain, haze, snow): "
           "behind `default`, `rain` and `haze-snow` on each, and it makes JPEG worse and changes clean photographs, "
           "as `rain` and `haze-snow` do (docs/MODEL_CARD.md)",
    "rain": "the photograph-trained `default` fine-tuned on the same synthetic mix: the model for rain (about 4 dB "
            "ahead of `mix` there) (docs/MODEL_CARD.md)",
    "haze-snow": "`mix` fine-tuned on synthetic haze and snow alone, on photographs at 256-px crops: the model for "
                 "haze and snow (docs/MODEL_CARD.md)",
}

#: Names of retired models, and the embedded model each now loads. ``denoise`` was a noise-only
#: fine-tune of an earlier ``default``; the photograph-trained ``default`` denoises better at every
#: sigma the evaluation measures (docs/MODEL_CARD.md, "Retired models").
MODEL_ALIASES: dict[str, str] = {"denoise": "default"}

#: Models restore RGB images; grey is fed as three equal channels (imageio.py).
IMAGE_CHANNELS = 3

_CACHE_SIZE = 4
_cache: "OrderedDict[tuple, tuple[UNet, Schedule, SamplingSettings, int | None, int | None]]" = OrderedDict()


class ModelNotInstalledError(CheckpointError):
    """An embedded model name whose weights file is not in this installation."""


@dataclass(frozen=True)
class LoadedModel:
    unet: UNet
    schedule: Schedule
    source: str  # for messages: the name, the file, or "module"
    sampling: SamplingSettings = PAPER_SAMPLING  # the settings the weights file records, else the paper's
    margin: int | None = None  # the mirrored context (pixels) the weights file records for restoring, if any
    tile: int | None = None  # the largest tile side (pixels) the weights file records for restoring, if any


def embedded_name(text: str) -> str | None:
    """The embedded model a name loads (an alias gives the model it stands for), or None."""
    if text in EMBEDDED_MODELS:
        return text
    return MODEL_ALIASES.get(text)


def embedded_model_path(name: str) -> Path:
    return MODELS_DIR / f"{embedded_name(name) or name}.safetensors"


def _looks_like_name(text: str) -> bool:
    """A bare word ("default"), as opposed to something meant as a path ("run/", "m.safetensors")."""
    return os.sep not in text and "/" not in text and "." not in text


def _check_channels(unet: UNet, schedule: Schedule, source: str) -> None:
    per_image = unet.config.in_channels // (2 if schedule.has_auxiliary else 1)
    if per_image != IMAGE_CHANNELS:
        raise CheckpointError(f"{source}: the model restores {per_image}-channel images; restore() needs an "
                              f"RGB ({IMAGE_CHANNELS}-channel) model")


def _recorded_pixels(record: dict, key: str, check, expected: str, source: str) -> int | None:
    """A size in pixels the record holds under ``key`` (the margin, the tile side), None where absent."""
    value = record.get(key) if isinstance(record, dict) else None
    if value is None:
        return None
    try:
        return check(value)
    except ValueError:
        raise CheckpointError(f"{source}: its recorded {key} is invalid ({value!r}; expected {expected})") from None


def _load_file(path: str | os.PathLike, device: torch.device
               ) -> tuple[UNet, Schedule, SamplingSettings, int | None, int | None]:
    file = resolve_weights_path(path)
    stat = file.stat()
    key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size, str(device))
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    unet, schedule, record = load_model(file)
    _check_channels(unet, schedule, str(file))
    try:
        sampling = SamplingSettings.from_record(record)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{file}: its recorded sampling settings are invalid ({error})") from None
    margin = _recorded_pixels(record, "margin", check_margin, "pixels >= 0", str(file))
    tile = _recorded_pixels(record, "tile", check_tile_side, f"a side of at least {MIN_TILE_SIDE} pixels", str(file))
    _cache[key] = (unet.to(device).eval(), schedule, sampling, margin, tile)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return _cache[key]


def clear_cache() -> None:
    """Forget every loaded model (frees their memory once no Restorer holds them)."""
    _cache.clear()


def resolve_model(model: str | os.PathLike | torch.nn.Module, device: torch.device,
                  schedule: Schedule | None = None) -> LoadedModel:
    """The U-Net and schedule that ``model`` names, on ``device``.

    An embedded name (``"default"``, ``"mix"``, an alias) always loads the packaged file; a local
    checkpoint that shares the name is passed as a path (``"./default"``).

    Raises :class:`ModelNotInstalledError` for an embedded name whose file is missing,
    :class:`CheckpointError` for an unknown name, a missing or corrupt checkpoint, or one for
    another architecture, and ``TypeError`` for anything that is not a name, path or U-Net.
    """
    if isinstance(model, torch.nn.Module):
        if not isinstance(model, UNet):
            raise TypeError(f"model: expected a resflow_fast.reference UNet, got {type(model).__name__}")
        schedule = schedule or Schedule()
        _check_channels(model, schedule, "model")
        return LoadedModel(model.to(device), schedule, "module")
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model: expected a name, a checkpoint path or a UNet, got {type(model).__name__}")
    if schedule is not None:
        raise ValueError("schedule= applies to a module; a checkpoint carries its own schedule")
    text = os.fspath(model)
    # A bare embedded name always means the embedded model, even where the working folder holds a
    # file or folder of that name (a folder of photographs called "default" must not replace the
    # model); such a local checkpoint is reached as "./default".
    name = embedded_name(text)
    if name is not None:
        path = embedded_model_path(name)
        if not path.is_file():
            raise ModelNotInstalledError(
                f"the embedded {name!r} model is not installed ({path} is missing); pass a checkpoint instead "
                "(model='path/to/weights.safetensors' or a training run folder; `resflow train` or "
                "`resflow demo` makes one)")
        unet, schedule, sampling, margin, tile = _load_file(path, device)
        return LoadedModel(unet, schedule, name, sampling, margin, tile)
    if _looks_like_name(text) and not Path(text).exists():
        raise CheckpointError(f"unknown model {text!r}: not an embedded model name "
                              f"(known: {', '.join(EMBEDDED_MODELS)}) and no such file or folder")
    unet, schedule, sampling, margin, tile = _load_file(text, device)
    return LoadedModel(unet, schedule, text, sampling, margin, tile)
