"""Which model :func:`resflow_fast.restore` runs: a name, a checkpoint path or a module.

* a **name** of an embedded model (:data:`EMBEDDED_MODELS`), shipped inside the package as
  ``resflow_fast/models/<name>.safetensors`` (setup.py's package_data);
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
(:data:`~resflow_fast.reference.sampler.PAPER_SAMPLING`) where the file records none.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from .reference.checkpoint import CheckpointError, load_model, resolve_weights_path
from .reference.sampler import PAPER_SAMPLING, SamplingSettings
from .reference.schedule import Schedule
from .reference.unet import UNet

__all__ = ["EMBEDDED_MODELS", "LoadedModel", "ModelNotInstalledError", "resolve_model", "clear_cache"]

MODELS_DIR = Path(__file__).parent / "models"

#: Embedded model names and what they restore.
EMBEDDED_MODELS: dict[str, str] = {
    "default": "the compact blind model the package ships, trained on Gaussian noise and JPEG (it denoises; "
               "it removes little of JPEG's blocking, about +0.5 dB: docs/MODEL_CARD.md)",
    "denoise": "the default model fine-tuned on Gaussian noise alone (blind, sigma 0-50): about as good as "
               "`default` at sigma 15-50, far better on nearly clean images; not for JPEG (docs/MODEL_CARD.md)",
    "mix": "the default model fine-tuned on the package's synthetic mix (noise, JPEG, rain, haze, snow): the model "
           "for rain, haze and snow; worse than `default` and `denoise` on noise and JPEG (docs/MODEL_CARD.md)",
}

#: Models restore RGB images; grey is fed as three equal channels (imageio.py).
IMAGE_CHANNELS = 3

_CACHE_SIZE = 4
_cache: "OrderedDict[tuple, tuple[UNet, Schedule, SamplingSettings]]" = OrderedDict()


class ModelNotInstalledError(CheckpointError):
    """An embedded model name whose weights file is not in this installation."""


@dataclass(frozen=True)
class LoadedModel:
    unet: UNet
    schedule: Schedule
    source: str  # for messages: the name, the file, or "module"
    sampling: SamplingSettings = PAPER_SAMPLING  # the settings the weights file records, else the paper's


def embedded_model_path(name: str) -> Path:
    return MODELS_DIR / f"{name}.safetensors"


def _looks_like_name(text: str) -> bool:
    """A bare word ("default"), as opposed to something meant as a path ("run/", "m.safetensors")."""
    return os.sep not in text and "/" not in text and "." not in text


def _check_channels(unet: UNet, schedule: Schedule, source: str) -> None:
    per_image = unet.config.in_channels // (2 if schedule.has_auxiliary else 1)
    if per_image != IMAGE_CHANNELS:
        raise CheckpointError(f"{source}: the model restores {per_image}-channel images; restore() needs an "
                              f"RGB ({IMAGE_CHANNELS}-channel) model")


def _load_file(path: str | os.PathLike, device: torch.device) -> tuple[UNet, Schedule, SamplingSettings]:
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
    _cache[key] = (unet.to(device).eval(), schedule, sampling)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return _cache[key]


def clear_cache() -> None:
    """Forget every loaded model (frees their memory once no Restorer holds them)."""
    _cache.clear()


def resolve_model(model: str | os.PathLike | torch.nn.Module, device: torch.device,
                  schedule: Schedule | None = None) -> LoadedModel:
    """The U-Net and schedule that ``model`` names, on ``device``.

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
    if text in EMBEDDED_MODELS and not Path(text).exists():
        path = embedded_model_path(text)
        if not path.is_file():
            raise ModelNotInstalledError(
                f"the embedded {text!r} model is not installed ({path} is missing); pass a checkpoint instead "
                "(model='path/to/weights.safetensors' or a training run folder; `resflow train` or "
                "`resflow demo` makes one)")
        unet, schedule, sampling = _load_file(path, device)
        return LoadedModel(unet, schedule, text, sampling)
    if _looks_like_name(text) and not Path(text).exists():
        raise CheckpointError(f"unknown model {text!r}: not an embedded model name "
                              f"(known: {', '.join(EMBEDDED_MODELS)}) and no such file or folder")
    unet, schedule, sampling = _load_file(text, device)
    return LoadedModel(unet, schedule, text, sampling)
