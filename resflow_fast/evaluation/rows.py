"""The rows of ``resflow eval`` and the run that measures them.

A row is one way of restoring a degraded image: the degraded input itself, a classical restorer
of :mod:`resflow_fast.baselines` on the degradations of its own kind (the Gaussian denoisers on
noise, given the true sigma; the dark-channel dehazer on haze, blind), ResFlow with the task's
embedded model at the sampler settings its weights file records (what a user gets) and at the
paper's uniform grid with several step counts, sampler variants (a non-uniform grid, exact y) on
a few degradations, the blind ``default`` model at its settings beside a task's own, and, at sigma
25, the schedule ablations (docs/ablation-models/README.md). :func:`evaluate` runs every row on
every image for every degradation and records PSNR, SSIM and wall seconds per image, with the
machine and the exact weights that produced them.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..baselines import BASELINES, run_baseline
from ..embedded_models import embedded_model_path, embedded_name
from ..reference.checkpoint import resolve_weights_path
from ..reference.metrics import psnr, ssim
from ..reference.sampler import SamplingSettings
from .degradations import EvalDegradation
from .images import EvalError, EvalImage, sha256

__all__ = ["ABLATIONS", "ABLATION_DEGRADATIONS", "ABLATION_DIR", "DEFAULT_MODEL_ROW", "EvalResult", "Row", "STEPS",
           "SAMPLER_VARIANTS", "VARIANT_DEGRADATIONS", "build_rows", "default_task_models", "describe_device",
           "evaluate", "image_metrics", "settings_label"]

#: The schedule-ablation models, kept in the source checkout (an installed package has none, and
#: the evaluation then leaves their rows out).
ABLATION_DIR = Path(__file__).resolve().parents[2] / "docs" / "ablation-models"
#: ablation label -> weights file name in ABLATION_DIR, in table order.
ABLATIONS = {
    "entropy-preserving (the paper's)": "entropy_preserving.safetensors",
    "straight-line y, sigma_y(t) = t": "linear.safetensors",
    "constant y, sigma_y(t) = 1": "constant.safetensors",
    "x-only control (no y)": "x_only.safetensors",
}
#: ResFlow step counts evaluated by default, each on the paper's uniform grid with joint y.
STEPS = (1, 2, 4)
#: Sampler settings beside those: 8 steps, a grid with a long first step, and y moved exactly.
SAMPLER_VARIANTS = (SamplingSettings(8), SamplingSettings(2, 2.0), SamplingSettings(4, 2.0),
                    SamplingSettings(4, 1.0, "exact"))
#: Where the variants run (one degradation per kind the noise and JPEG models restore): enough to
#: choose a model's settings, without multiplying the evaluation's time (8 steps on every row
#: would add a third to it).
VARIANT_DEGRADATIONS = ("noise-25", "jpeg-10")
#: Where the schedule ablations run (they are models trained at sigma 0-50 noise only).
ABLATION_DEGRADATIONS = ("noise-25",)
#: The row that puts the blind ``default`` model, at its recorded settings, beside a task's own model.
DEFAULT_MODEL_ROW = "ResFlow `default` (what restore() uses when no model is named), its settings"


def default_task_models() -> dict[str, str]:
    """Which embedded model restores each task: ``default`` for noise, JPEG and the clean
    photograph (it is what a user gets with no model named), ``rain`` for rain, and ``haze-snow``
    for haze and snow, each with ``default`` beside it; docs/MODEL_CARD.md says how they compare.
    ``--model TASK=...`` evaluates another."""
    return {"noise": "default", "jpeg": "default", "rain": "rain", "haze": "haze-snow", "snow": "haze-snow",
            "clean": "default"}


def settings_label(settings: SamplingSettings) -> str:
    """``2 steps``, ``4 steps, grid power 2``, ``4 steps, exact y``: how a row names its sampler."""
    text = f"{settings.steps} step{'s' if settings.steps > 1 else ''}"
    if settings.time_power != 1.0:
        text += f", grid power {settings.time_power:g}"
    if settings.y_mode != "joint":
        text += f", {settings.y_mode} y"
    return text


@dataclass
class Row:
    name: str
    group: str                       # "input", "classical", "resflow", "ablation"
    run: Callable[[np.ndarray, EvalDegradation], np.ndarray]
    device: str
    model: str | None = None
    warm_up: bool = False  # one untimed call first (CUDA start-up, Triton compilation, allocator)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"CPU, {n} thread{'s' if n > 1 else ''} ({_cpu_name()})"


def _resflow_row(name: str | None, group: str, model: str, sampling: SamplingSettings | None, device: str,
                 dtype: str) -> Row:
    """A ResFlow row: ``sampling`` None runs the model's recorded settings, and ``name`` None
    names the row after them. The crop is restored as ``restore()`` restores it, mirrored margin
    and default tiles included, so the rows are what a user gets."""
    from ..restorer import Restorer

    restorer = Restorer(model, device=device, dtype=dtype, sampling=sampling)
    if name is None:
        name = f"ResFlow at its settings ({settings_label(restorer.sampling)})"
    return Row(name, group, lambda lq, deg: restorer.restore(lq, seed=0), describe_device(restorer.device), model,
               warm_up=True)


def build_rows(degradation: EvalDegradation, task_models: dict[str, str], steps: tuple[int, ...],
               baselines: tuple[str, ...], ablations: dict[str, Path], device: str, dtype: str) -> list[Row]:
    rows = [Row("degraded input", "input", lambda lq, deg: lq, "-")]
    cpu = f"CPU ({_cpu_name()})"
    # each classical restorer on the rows of its own kind: the denoisers given the true sigma, the
    # dehazer blind
    rows += [Row(b, "classical", (lambda name: lambda lq, deg: run_baseline(name, lq, deg.level))(b), cpu)
             for b in baselines if BASELINES[b].task == degradation.task]
    model = task_models[degradation.task]
    # first the settings the model ships with: what a user gets, and what the goals are judged on
    rows.append(_resflow_row(None, "shipped", model, None, device, dtype))
    rows += [_resflow_row(f"ResFlow, {settings_label(SamplingSettings(n))}", "resflow", model, SamplingSettings(n),
                          device, dtype) for n in steps]
    if degradation.key in VARIANT_DEGRADATIONS:
        rows += [_resflow_row(f"ResFlow, {settings_label(v)}", "variant", model, v, device, dtype)
                 for v in SAMPLER_VARIANTS]
    if embedded_name(str(model)) not in (None, "default"):
        # a task with an embedded model of its own: the blind model beside it shows what it gains
        rows.append(_resflow_row(DEFAULT_MODEL_ROW, "resflow", "default", None, device, dtype))
    if degradation.key in ABLATION_DEGRADATIONS:
        rows += [_resflow_row(f"ablation: {label}, 4 steps", "ablation", str(path), SamplingSettings(4), device,
                              dtype) for label, path in ablations.items()]
    return rows


def image_metrics(restored: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """(PSNR, SSIM) of two 8-bit images, RGB (H, W, 3) or grey (H, W), on [0, 1] values
    (``reference/metrics.py``)."""
    if restored.shape != clean.shape:
        raise ValueError(f"restored image {restored.shape} and clean image {clean.shape} differ in shape")
    # float64 all the way: the metrics of 8-bit images, with no rounding of their own
    a, b = (torch.from_numpy(np.atleast_3d(img).astype(np.float64) / 255.0 * 2 - 1).permute(2, 0, 1)
            for img in (restored, clean))
    return psnr(a, b), ssim(a, b)


@dataclass
class EvalResult:
    images: list[EvalImage]
    degradations: list[EvalDegradation]
    records: list[dict] = field(default_factory=list)   # one per (degradation, row, image)
    rows: dict[str, list[dict]] = field(default_factory=dict)  # degradation key -> row descriptions
    figure_tiles: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    seconds: float = 0.0


def evaluate(images: list[EvalImage], degradations: list[EvalDegradation], task_models: dict[str, str],
             steps: tuple[int, ...] = STEPS, baselines: tuple[str, ...] = tuple(BASELINES),
             ablations: dict[str, Path] | None = None, device: str = "auto", dtype: str = "auto",
             figure_image: str | None = None, progress: bool = True) -> EvalResult:
    """Run every row on every image for every degradation; returns the measurements."""
    from tqdm import tqdm

    if not images:
        raise EvalError("no images to evaluate")
    ablations = ablations or {}
    for label, path in ablations.items():
        if not Path(path).exists():
            raise EvalError(f"ablation model {label!r}: {path} not found")
    figure_image = figure_image or images[0].name
    result = EvalResult(images, degradations)
    # first, so a model that is not there fails now rather than after the whole evaluation
    result.environment = _environment(task_models, ablations)
    start = time.perf_counter()
    plans = [(deg, build_rows(deg, task_models, steps, baselines, ablations, device, dtype)) for deg in degradations]
    total = sum(len(rows) for _, rows in plans) * len(images)
    with tqdm(total=total, unit="restore", desc="eval", disable=not progress) as bar:
        for deg, rows in plans:
            result.rows[deg.key] = [{"name": r.name, "group": r.group, "device": r.device, "model": _model_label(r.model)}
                                    for r in rows]
            for row in rows:
                if row.warm_up:
                    row.run(deg.apply(images[0].clean, images[0].name), deg)
            for image in images:
                lq = deg.apply(image.clean, image.name)
                target = deg.target(image.clean)
                for row in rows:
                    bar.set_postfix_str(f"{deg.key} {image.name} {row.name}", refresh=False)
                    t0 = time.perf_counter()
                    out = row.run(lq, deg)
                    seconds = time.perf_counter() - t0
                    value_psnr, value_ssim = image_metrics(out, target)
                    result.records.append({"degradation": deg.key, "row": row.name, "image": image.name,
                                           "psnr": value_psnr, "ssim": value_ssim, "seconds": seconds})
                    if image.name == figure_image and row.group in ("input", "shipped"):
                        result.figure_tiles.setdefault(deg.key, {})[row.group] = out
                    bar.update(1)
                if image.name == figure_image:
                    result.figure_tiles.setdefault(deg.key, {})["clean"] = target
    result.seconds = time.perf_counter() - start
    return result


def _distribution_version(distribution: str, module: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        # another distribution may provide the module (opencv-python instead of -headless, say)
        try:
            return str(__import__(module).__version__)
        except Exception:  # not installed, or no version attribute
            return "not installed"


def _model_label(model: str | None) -> str | None:
    """How a row's model is recorded: none for a row without one, an embedded name as it is, a file
    inside the source checkout relative to it (the report must not carry the machine's own paths),
    any other path as given."""
    if model is None:
        return None
    if embedded_name(str(model)) is not None:
        return str(model)
    try:
        return Path(model).resolve().relative_to(ABLATION_DIR.parents[1]).as_posix()
    except (ValueError, OSError):
        return str(model)


def _environment(task_models: dict[str, str], ablations: dict[str, Path]) -> dict:
    import PIL

    from .. import __version__

    versions = {"resflow_fast": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "pillow": PIL.__version__}
    for key, distribution in (("skimage", "scikit-image"), ("cv2", "opencv-python-headless"), ("bm3d", "bm3d"),
                              ("pywt", "PyWavelets")):
        versions[key] = _distribution_version(distribution, key)

    def weights_sha(model: str | os.PathLike) -> str:
        # the file restore() loads: an embedded name's weights, else the path's (resolve_model's rule)
        path = embedded_model_path(str(model)) if embedded_name(str(model)) else resolve_weights_path(model)
        return sha256(path.read_bytes())[:16]

    return {"date": date.today().isoformat(), "versions": versions, "cpu": _cpu_name(),
            "torch_threads": torch.get_num_threads(),
            "task_models": {task: {"model": m, "sha256_16": weights_sha(m)} for task, m in task_models.items()},
            "ablations": {label: {"file": str(Path(p).name), "sha256_16": weights_sha(p)}
                          for label, p in ablations.items()}}
