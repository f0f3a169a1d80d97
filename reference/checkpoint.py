"""Checkpoints: weights in safetensors with a JSON record of config and provenance, written atomically.

Two things are saved:

* a **weights file** (``*.safetensors``): tensors plus, in the safetensors header metadata,
  ``format``, ``format_version`` and ``record`` (a JSON string: U-Net config, schedule, step,
  data, seed, versions). It is all a model needs to be rebuilt and used.
* a **training checkpoint**, a folder ``step-00000100/`` holding ``weights.safetensors`` (keys
  ``model.*`` and ``ema.*``), ``train_state.pt`` (optimizer and RNG states) and ``record.json``
  (the same record, for people to read).

Everything is written atomically (:mod:`.system`: a temporary name in the destination folder,
fsynced and renamed), so a crash leaves either the old file or the new one, never half of one; the last ``keep_last``
training checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from .schedule import Schedule
from .system import atomic_write_bytes, atomic_write_dir
from .unet import UNet, UNetConfig

FORMAT = "resflow-fast"
FORMAT_VERSION = 1
WEIGHTS_NAME = "weights.safetensors"
TRAIN_STATE_NAME = "train_state.pt"
RECORD_NAME = "record.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, from another version or for another architecture."""


# ----------------------------------------------------------------------------------------------
# weights files
# ----------------------------------------------------------------------------------------------
def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def weights_bytes(tensors: dict[str, torch.Tensor], record: dict) -> bytes:
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "record": json.dumps(record, sort_keys=True)}
    return safetensors_save(_contiguous_cpu(tensors), metadata=metadata)


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], record: dict) -> None:
    """Write a weights file (tensors + record in the header) atomically."""
    atomic_write_bytes(path, weights_bytes(tensors, record))


def _read_header_metadata(data: bytes, path: Path) -> dict:
    # safetensors layout: 8-byte little-endian header length, then a JSON header.
    if len(data) < 8:
        raise CheckpointError(f"{path}: not a resflow-fast weights file (only {len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise CheckpointError(f"{path}: not a resflow-fast weights file (bad safetensors header; truncated or another format)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a resflow-fast weights file (unreadable header: {e})") from None
    return header.get("__metadata__", {}) or {}


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a weights file; return (tensors, record). Validates format and version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    meta = _read_header_metadata(data, path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a resflow-fast weights file (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {meta.get('format_version')!r}, this resflow-fast reads version {FORMAT_VERSION}")
    try:
        record = json.loads(meta["record"])
        tensors = safetensors_load(data)
    except (KeyError, json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None
    return tensors, record


# ----------------------------------------------------------------------------------------------
# models from records
# ----------------------------------------------------------------------------------------------
def model_from_record(record: dict) -> tuple[UNet, Schedule]:
    try:
        config = UNetConfig.from_dict(record["unet"])
        schedule = Schedule.from_dict(record["schedule"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint record does not describe a resflow-fast model: {e}") from None
    return UNet(config), schedule


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` with an error that says which keys and shapes disagree."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(f"{where}: weights do not fit this architecture: " + "; ".join(parts))
    module.load_state_dict(state)


def _split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """A weights file, a training checkpoint folder, or a run folder (its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS_NAME).is_file():
            return path / WEIGHTS_NAME
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: folder holds no resflow-fast checkpoint")
        return latest / WEIGHTS_NAME
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def load_model(path: str | os.PathLike, use_ema: bool = True, expected: UNetConfig | None = None
               ) -> tuple[UNet, Schedule, dict]:
    """Rebuild a model from a weights file or checkpoint folder; returns (model, schedule, record).

    Training checkpoints hold ``model.*`` and ``ema.*``; the EMA weights are used unless
    ``use_ema`` is False. ``expected`` refuses a checkpoint of another architecture.
    """
    file = resolve_weights_path(path)
    tensors, record = load_weights(file)
    model, schedule = model_from_record(record)
    if expected is not None and model.config != expected:
        raise CheckpointError(f"{file}: checkpoint is for architecture {model.config}, expected {expected}")
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in tensors) else "model."
    state = _split_prefix(tensors, prefix) if any(k.startswith(prefix) for k in tensors) else tensors
    load_state_strict(model, state, str(file))
    return model.eval(), schedule, record


# ----------------------------------------------------------------------------------------------
# training checkpoints
# ----------------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / WEIGHTS_NAME).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_training_checkpoint(run_dir: str | os.PathLike, step: int, model_state: dict, ema_state: dict,
                             train_state: dict, record: dict, keep_last: int = 3) -> Path:
    """Write ``run_dir/step-XXXXXXXX/`` atomically, then prune all but the newest ``keep_last``."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    tensors = {**{f"model.{k}": v for k, v in model_state.items()}, **{f"ema.{k}": v for k, v in ema_state.items()}}
    payload = weights_bytes(tensors, record)  # serialise before touching the disk

    def fill(tmp: Path) -> None:
        (tmp / WEIGHTS_NAME).write_bytes(payload)
        torch.save(train_state, tmp / TRAIN_STATE_NAME)
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")

    target = checkpoint_dir(run_dir, step)
    atomic_write_dir(target, fill)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint folder: model/ema state dicts, train state and record."""
    path = Path(path)
    if not (path / WEIGHTS_NAME).is_file() or not (path / TRAIN_STATE_NAME).is_file():
        raise CheckpointError(f"{path}: not a resflow-fast training checkpoint (needs {WEIGHTS_NAME} and {TRAIN_STATE_NAME})")
    tensors, record = load_weights(path / WEIGHTS_NAME)
    try:
        train_state = torch.load(path / TRAIN_STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged pickle/zip
        raise CheckpointError(f"{path / TRAIN_STATE_NAME}: corrupt training state ({type(e).__name__}: {e})") from None
    return {"model": _split_prefix(tensors, "model."), "ema": _split_prefix(tensors, "ema."),
            "train_state": train_state, "record": record, "path": path}


def check_margin(margin: object) -> int:
    """A recorded or requested restore margin: a whole number of pixels, 0 or more."""
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin: must be a non-negative number of pixels, got {margin!r}")
    return margin


#: Smallest tile side a restore may cut an image into, and so the smallest a weights file may record.
MIN_TILE_SIDE = 16


def check_tile_side(tile: object) -> int:
    """A recorded restore tile side: a whole number of pixels, at least :data:`MIN_TILE_SIDE`."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE_SIDE:
        raise ValueError(f"tile: must be a side of at least {MIN_TILE_SIDE} pixels, got {tile!r}")
    return tile


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True,
                   half: bool = False, sampling: dict | None = None, margin: int | None = None,
                   tile: int | None = None) -> Path:
    """Write an inference-only weights file (EMA weights by default) from a training checkpoint.

    ``half`` stores the floating-point tensors as fp16 (half the file; loading casts them back to
    the fp32 model, so the model runs what fp16 rounding left: about 3 significant digits).
    ``sampling`` (a :class:`~.sampler.SamplingSettings` dict: steps, time_power, y_mode) is
    recorded as the settings the model restores with unless a caller asks otherwise. ``margin``
    (pixels) is recorded as the mirrored context the package's restorer puts around an image for
    this model (``resflow_fast.restorer``, "The margin"), and ``tile`` (pixels) as the largest
    tile side it restores with when the caller leaves the tiling to it (``tile="auto"``).
    """
    if margin is not None:
        check_margin(margin)
    if tile is not None:
        check_tile_side(tile)
    if sampling is not None:
        from .sampler import SamplingSettings

        sampling = SamplingSettings.from_dict(sampling).to_dict()  # validated, complete
    model, _, record = load_model(checkpoint, use_ema=use_ema)
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        overflow = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if overflow:  # beyond fp16's range (65504): refuse rather than write inf
            raise CheckpointError(f"{checkpoint}: {len(overflow)} tensors do not fit fp16 (e.g. {overflow[0]}); "
                                  f"export without --half")
    record = dict(record, exported_from=str(checkpoint), weights="ema" if use_ema else "model",
                  stored_dtype="float16" if half else "float32")
    if sampling is not None:
        record["sampling"] = sampling
    if margin is not None:
        record["margin"] = margin
    if tile is not None:
        record["tile"] = tile
    save_weights(out, state, record)
    return Path(out)
