"""``restore()`` and ``Restorer``: any image in, the restored image out, at any size, within a memory budget.

One restore (docs/design/architecture.md, "One restore, as data"):

    split (imageio.py) -> grey repeated to RGB -> [0, 1] to the model range [-1, 1]
    -> a margin of mirrored context on every side (reflect padding, DEFAULT_MARGIN pixels)
    -> eps ~ N(0, I) drawn ONCE for the whole image, margin included, from the seed
    -> tiles (or one tile), each: Euler sampler(lq_tile, eps_tile) -> blended with a smooth window
    -> margin cropped -> back to [0, 1] -> grey as the mean of R, G, B -> rebuilt as the caller's
    kind (imageio.py)

**The margin.** The network zero-pads at the edges of what it is given, and a model meets those
edges on every training crop, yet it still invents texture along them, on a flat image and in the
outer pixels of a photograph. Mirrored context moves those edges off the picture; ``margin=0``
restores the image exactly as the sampler would on its own. A weights file may record its
model's margin: the `mix` and `haze-snow` models record 0, because dehazing reads the statistics of the whole
image, which a mirrored border shifts (BENCHMARKS.md, "Mirrored context at the borders", has
the measurements).

**Tiles, and what attention sees.** The U-Net has self-attention at 1/8 resolution and in its
middle; over a whole image its cost grows with the square of the pixel count. By default
(``tile="auto"``) an image is restored in overlapping square tiles of at most the side the
model's weights file records, else :data:`DEFAULT_TILE` pixels, so attention sees a region close
to the crops the embedded models were trained on (64-256 px), the time grows linearly with the
pixel count and the memory of one tile is fixed. BENCHMARKS.md, "CPU restore", has the
measurement this default comes from (PSNR, time and peak memory of whole-image attention against
tiles of several sizes); the `rain` model records 96 px, because it removes streaks best in
small tiles (docs/MODEL_CARD.md, "`rain`").
``tile=None`` restores the image in one piece (attention over all of it) when that fits the
memory budget, and refuses before any work when it does not.

Tile starts are multiples of the network's multiple (every tile sees the same down-sampling grid
as the whole image would). Tiles are cross-faded over their overlaps with complementary
raised-cosine windows, which sum to one, so there is no seam and no brightness change; each tile
is reflect-padded and cropped exactly as a whole image would be. **GroupNorm statistics are per
tile** (each tile is normalised over its own pixels), so a tiled result is not bit-identical to an
untiled one; the windows hide the difference at tile borders.

**Memory budget.** ``max_memory`` (bytes, or a string such as "4GB"; default: half of the memory
free now, ``MemAvailable`` on Linux or the free GPU memory) bounds everything the restore
allocates on the device it runs on: the image-sized buffers (the input planes, the model-range
copy, the auxiliary noise, the blended output and its weights) and one tile's working set (every
activation kept for a skip connection, a decoder block's temporaries, the fp32 sampler state and
the attention score matrix, counted as if held whole). :meth:`Restorer.plan` shows the decision
before any work; a restore that cannot fit even with :data:`MIN_TILE`-pixel tiles is refused
with the numbers (:class:`MemoryBudgetError`). On a GPU the image-sized buffers stay with the
input (usually the CPU) and the budget bounds the GPU's share.

**The seed decides the result whatever the tiling**: the auxiliary noise y is drawn once for the
full image and its margin with :func:`~resflow_fast.reference.sampler.auxiliary_noise` and sliced
per tile. Untiled, this is exactly the noise the reference sampler draws itself for that seed on
the image with its margin.

**Sampling settings** (steps, time grid, y update) come from the model's weights file where it
records them (:attr:`~resflow_fast.embedded_models.LoadedModel.sampling`), else the paper's;
``sampling="paper"`` asks for the paper's, and ``steps``, ``time_power`` and ``y_mode`` override
single fields.

**Precision and speed.** ``dtype="auto"`` is bf16 on GPUs that have it (fp16 on older ones) and
fp32 on the CPU; "fp32", "bf16" and "fp16" can be chosen (on the CPU reduced precision runs the
reference under ``torch.autocast``). The ODE state stays fp32 either way. On the CPU the network
input is given channels-last, which oneDNN's convolutions run faster and which lets attention use
its flash kernel. A tile whose output is not finite in reduced precision is redone in fp32 (with a
warning); a non-finite output is never returned.

**Progress.** ``progress(done, total)`` is called after every Euler step of every tile on the CPU
(after every tile on a GPU, where the steps run as one fused sequence).

**Out of GPU memory** (``torch.cuda.OutOfMemoryError``, and only it), the image is restored
again with tiles of half the area, down to :data:`MIN_TILE` pixels a side.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .imageio import ResflowInputError, split_image
from .embedded_models import LoadedModel, resolve_model
# MIN_TILE_SIDE, the smallest side tile= accepts, is the one a weights file may record as well.
from .reference.checkpoint import MIN_TILE_SIDE, check_margin
from .reference.sampler import PAPER_SAMPLING, SamplingSettings, auxiliary_noise, euler_sample
from .reference.schedule import Schedule
from .reference.system import DeviceUnavailableError, UnknownDeviceError, pick_device
from .reference.unet import UNetConfig
from .sampler import ResFlowSampler, default_dtype

__all__ = ["restore", "Restorer", "RestoreError", "MemoryBudgetError", "RestorePlan", "parse_memory",
           "max_tile_pixels", "tile_spans", "blend_windows"]

#: Largest tile side of ``tile="auto"``, in pixels: attention sees at most this square
#: (chosen by measurement: BENCHMARKS.md, "CPU restore").
DEFAULT_TILE = 256
#: Default overlap between neighbouring tiles, in pixels (clamped to a quarter of the tile side).
DEFAULT_OVERLAP = 32
#: Pixels of mirrored context added on each side of an image before it is restored, and cropped
#: away after, for a model whose weights file records no margin of its own: the network's
#: convolutions zero-pad at the edge of what they are given, which shows as invented texture
#: along the borders of a flat image; with the context those edges fall outside the picture
#: (BENCHMARKS.md, "Mirrored context at the borders", has the measurement).
DEFAULT_MARGIN = 16
#: Largest seed: the auxiliary noise's generator takes 64 bits.
MAX_SEED = 2**64 - 1
#: Smallest tile side the memory budget and the out-of-memory retries go down to.
MIN_TILE = 64
#: Share of free memory the default budget takes; the rest is left to the system and other programs.
MEMORY_FRACTION = 0.5
#: Used when free CPU memory cannot be read (no /proc/meminfo).
FALLBACK_CPU_MEMORY = 4 << 30
#: Bytes per pixel of the image-sized buffers: fp32 input planes, model-range copy, auxiliary
#: noise and blended output (3 channels each), the blend weights (1), and the fp32 copy the
#: result is rebuilt from (3).
IMAGE_BYTES_PER_PIXEL = 4 * (3 + 3 + 3 + 3 + 1 + 3)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}

_MEMORY_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
                 "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40,
                 "TIB": 1 << 40}


class RestoreError(RuntimeError):
    """A restore that cannot finish: out of memory at the smallest tile, or a model giving NaN/Inf in fp32."""


class MemoryBudgetError(RestoreError):
    """A restore that cannot fit the memory budget; raised before any work, with the numbers."""


# ----------------------------------------------------------------------------------------------
# dtypes, threads
# ----------------------------------------------------------------------------------------------
def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if dtype in ("auto", None):
        return default_dtype(device)
    resolved = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype: {dtype!r} is not one of 'auto', 'fp32', 'bf16', 'fp16'")
    return resolved


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    return count


_threads_configured = False


def configure_cpu_threads() -> None:
    """Once per process, give torch one thread per usable CPU - unless OMP_NUM_THREADS or
    MKL_NUM_THREADS says otherwise. torch's own default counts the host's cores, which
    oversubscribes a container or a taskset."""
    global _threads_configured
    if _threads_configured:
        return
    _threads_configured = True
    if not any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        torch.set_num_threads(usable_cpus())


# ----------------------------------------------------------------------------------------------
# memory: the budget, and what a tile and the image need
# ----------------------------------------------------------------------------------------------
def parse_memory(value: int | str | None) -> int | None:
    """``max_memory``: None or "auto" (from free memory), a number of bytes, or a string such as
    "4GB", "4G", "4GiB" (all 4 x 1024^3 bytes), "512MB", "1.5G"."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number, unit = float(value), ""
    elif isinstance(value, str) and (match := re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)):
        number, unit = float(match.group(1)), match.group(2).upper()
    else:
        number, unit = -1.0, "?"
    if unit not in _MEMORY_UNITS or number <= 0:
        raise ValueError(f"max_memory: expected a size such as '4GB', '512MB' or a number of bytes, got {value!r}")
    return int(number * _MEMORY_UNITS[unit])


def format_bytes(count: float) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def bytes_per_pixel(config: UNetConfig, dtype: torch.dtype) -> float:
    """Estimated peak memory of one sampler step per tile pixel, attention aside (inference, batch 1).

    Live at the peak: every encoder activation kept for a skip connection, plus a decoder ResBlock
    at full resolution (its concatenated input and a few temporaries of that size, the GroupNorms'
    fp32 copies included), plus the fp32 sampler state, times a margin for the allocator
    (measured peaks are in BENCHMARKS.md, "CPU restore").
    """
    size = torch.tensor([], dtype=dtype).element_size()
    ch = config.base_channels
    skips = sum((config.num_res_blocks + 1) * ch * m / 4 ** level for level, m in enumerate(config.channel_mult))
    decoder_block = 6 * 2 * ch * config.channel_mult[0]
    state = 12 * config.in_channels * 4
    return 1.5 * ((skips + decoder_block) * max(size, 4) + state)


def attention_bytes(config: UNetConfig, height: int, width: int) -> int:
    """The largest attention score matrix of one forward on a (height, width) tile, in fp32 bytes,
    counted three times (scores, their softmax and a mask, as the math path of
    ``scaled_dot_product_attention`` holds them): it grows with the square of the tile's pixels."""
    levels = len(config.channel_mult)
    deepest = 2 ** (levels - 1)
    places = {ds for ds in config.attention_downsample if ds <= deepest} | ({deepest} if config.middle_attention else set())
    largest = 0
    for ds in places:
        level = int(math.log2(ds))
        heads = config.base_channels * config.channel_mult[min(level, levels - 1)] // config.head_channels
        tokens = math.ceil(height / ds) * math.ceil(width / ds)
        largest = max(largest, 3 * heads * tokens * tokens * 4)
    return largest


def tile_memory_bytes(config: UNetConfig, height: int, width: int, dtype: torch.dtype) -> int:
    """Peak working memory of restoring one (height, width) tile: activations and state, attention."""
    multiple = config.multiple
    h, w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    return int(bytes_per_pixel(config, dtype) * h * w + attention_bytes(config, h, w))


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Memory torch has cached but not handed out is free for us too.
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    with contextlib.suppress(OSError, ValueError, StopIteration):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return FALLBACK_CPU_MEMORY


def max_tile_pixels(config: UNetConfig, device: torch.device, dtype: torch.dtype) -> int:
    """The most pixels one square tile may have on ``device`` with the default budget, now."""
    budget = free_memory_bytes(device) * MEMORY_FRACTION
    side = MIN_TILE
    while tile_memory_bytes(config, 2 * side, 2 * side, dtype) <= budget and side < 1 << 16:
        side *= 2
    return side * side


@dataclass(frozen=True)
class RestorePlan:
    """How an image will be restored: tile side, tiles, and the memory it needs against the budget."""

    height: int
    width: int
    margin: tuple[int, int]  # mirrored context rows (top and bottom) and columns (left and right)
    tile_side: int
    rows: list[tuple[int, int]]  # tile spans in the image with its margin, (height + 2 margin[0]) rows
    cols: list[tuple[int, int]]
    budget_bytes: int
    image_bytes: int  # image-sized buffers counted against the budget (0 when they live elsewhere)
    tile_bytes: int  # one tile's working set
    weight_bytes: int  # the model's parameters

    @property
    def tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def needed_bytes(self) -> int:
        return self.image_bytes + self.tile_bytes + self.weight_bytes


# ----------------------------------------------------------------------------------------------
# tiles and their windows
# ----------------------------------------------------------------------------------------------
def tile_spans(length: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """(start, stop) of tiles covering [0, length): at most ``tile`` long, neighbours overlapping by
    at least ``overlap``, starts on multiples of ``multiple``, spread evenly; the last tile ends at
    ``length`` (and may be a little shorter, like a whole image it is padded by the sampler).

    Tiles are made no longer than the fewest tiles that cover the line need, so no work is spent
    on overlap beyond ``overlap`` (375 px in 256-px tiles: two of 208, not two of 256)."""
    if length <= tile:
        return [(0, length)]

    def count_of(side: int) -> int:
        return math.ceil((length - side) / max(multiple, (side - overlap) // multiple * multiple)) + 1

    fewest = count_of(tile)
    fitted = math.ceil((length + (fewest - 1) * overlap) / fewest / multiple) * multiple
    while fitted < tile and count_of(fitted) > fewest:  # strides on the grid may need a little more
        fitted += multiple
    tile = min(tile, fitted)
    widest_stride = max(multiple, (tile - overlap) // multiple * multiple)
    count = count_of(tile)
    stride = math.ceil((length - tile) / (count - 1) / multiple) * multiple  # <= widest_stride: spread evenly
    spans, start = [], 0
    while True:
        spans.append((start, min(start + tile, length)))
        if start + tile >= length:
            return spans
        start += stride


def _rise(n: int) -> torch.Tensor:
    """A raised-cosine ramp 0 -> 1 over n pixels; ``_rise(n) + _rise(n).flip(0) == 1``."""
    u = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    return torch.sin(0.5 * math.pi * u) ** 2


def blend_windows(spans: list[tuple[int, int]]) -> list[torch.Tensor]:
    """One 1-D window per span: 1 inside, a raised-cosine ramp across each overlap with a neighbour.

    Over an overlap one tile's ramp falls as the next one's rises, and the two sum to one, so the
    windows of a row of tiles add up to exactly one everywhere (a partition of unity)."""
    windows = []
    for i, (start, stop) in enumerate(spans):
        window = torch.ones(stop - start)
        if i > 0:
            before = spans[i - 1][1] - start
            window[:before] *= _rise(before)
        if i + 1 < len(spans):
            after = stop - spans[i + 1][0]
            window[stop - start - after:] *= _rise(after).flip(0)
        windows.append(window)
    return windows


# ----------------------------------------------------------------------------------------------
# the restorer
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """Sample a model in training (dropout off) and leave its mode as it was."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class _StepCounted:
    """The velocity field the CPU sampler calls: the U-Net on a channels-last input, and a tick per step."""

    def __init__(self, unet: torch.nn.Module, tick: Callable[[int], None]):
        self.unet, self.tick, self.multiple = unet, tick, unet.multiple

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = self.unet(z.contiguous(memory_format=torch.channels_last), t)
        self.tick(1)
        return v


def resolve_sampling(model_sampling: SamplingSettings, sampling: str | SamplingSettings | None,
                     steps: int | None, time_power: float | None, y_mode: str | None) -> SamplingSettings:
    """The settings a restore runs with: the model's recorded ones (``sampling`` None or "model"),
    the paper's (``"paper"``) or the given :class:`SamplingSettings`, then each of ``steps``,
    ``time_power``, ``y_mode`` that is not None replacing its field."""
    if sampling in (None, "model"):
        base = model_sampling
    elif sampling == "paper":
        base = PAPER_SAMPLING
    elif isinstance(sampling, SamplingSettings):
        base = sampling
    else:
        raise ValueError(f"sampling: expected None/'model' (the model's recorded settings), 'paper' or a "
                         f"SamplingSettings, got {sampling!r}")
    fields = base.to_dict()
    fields.update({k: v for k, v in (("steps", steps), ("time_power", time_power), ("y_mode", y_mode)) if v is not None})
    return SamplingSettings(**fields)


class Restorer:
    """A model loaded once, to restore many images.

    Args:
        model: an embedded model name ("default"), a checkpoint (weights file, checkpoint folder or
            training run folder), or a reference ``UNet`` module (its current weights are used in
            place; it stays on its own device unless ``device`` names another, where it is moved
            as ``module.to`` would).
        steps: Euler steps; None: the model's recorded default (else the paper's 4).
        device: "auto" (CUDA when available, else the CPU), "cpu", "cuda", "cuda:N" or a torch.device.
        dtype: "auto" (bf16 on GPUs that have it, fp32 on the CPU), "fp32", "bf16" or "fp16".
        tile: "auto" (tiles of at most the side the model's weights file records, else
            :data:`DEFAULT_TILE` px; smaller if the budget says so), an
            int (the largest tile side in pixels), or None / 0 (one piece: attention sees the whole
            image; refused before any work if it does not fit the budget).
        overlap: pixels shared by neighbouring tiles (at most a quarter of the tile side is used).
        margin: pixels of mirrored context restored around the image and cropped away (at most the
            image's side less one), so that no edge of the network's view lies on the picture; None:
            what the model's weights file records, else :data:`DEFAULT_MARGIN`.
        schedule: with a module, the schedule it was trained with (default entropy-preserving).
        y_mode: "joint" or "exact" (see :func:`~resflow_fast.reference.sampler.euler_sample`);
            None: the model's recorded default.
        time_power: the time grid ``t_k = (1 - k/N) ** time_power``; None: the model's recorded default.
        sampling: None or "model" (the settings the weights file records), "paper" (the paper's:
            4 uniform steps, joint y), or a :class:`~resflow_fast.reference.sampler.SamplingSettings`;
            ``steps``, ``time_power`` and ``y_mode`` override its fields.
        fused_conv: the GPU fast path's fused-conv policy, "off", "on" or "auto"
            (:mod:`resflow_fast.conv_dispatch`); None: ``$RESFLOW_FUSED_CONV``, else "off". The CPU
            path runs the reference convolutions whatever it says.
        max_memory: the memory budget, bytes or a string such as "4GB"; None: half the free memory.
    """

    def __init__(self, model: str | os.PathLike | torch.nn.Module = "default", steps: int | None = None,
                 device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                 tile: int | str | None = "auto", overlap: int = DEFAULT_OVERLAP,
                 schedule: Schedule | None = None, y_mode: str | None = None, *, time_power: float | None = None,
                 sampling: str | SamplingSettings | None = None, fused_conv: str | None = None,
                 max_memory: int | str | None = None, margin: int | None = None):
        self.device = self._pick_device(device, model)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tile = self._check_tile(tile)
        if isinstance(overlap, bool) or not isinstance(overlap, numbers.Integral) or overlap < 0:
            raise ValueError(f"overlap: must be a non-negative number of pixels, got {overlap!r}")
        self.overlap = int(overlap)
        if margin is not None:
            check_margin(margin)
        self.max_memory = parse_memory(max_memory)
        if self.device.type == "cpu":
            configure_cpu_threads()
        self.model: LoadedModel = resolve_model(model, self.device, schedule)
        self.sampling = resolve_sampling(self.model.sampling, sampling, steps, time_power, y_mode)
        self.margin = next(m for m in (margin, self.model.margin, DEFAULT_MARGIN) if m is not None)
        self.steps = self.sampling.steps
        self.multiple = self.model.unet.multiple
        # The GPU fast path; built now so that a bad fused_conv policy fails here, not on the first image.
        self._samplers = {dt: ResFlowSampler(self.model.unet, self.model.schedule, steps=self.sampling.steps, dtype=dt,
                                             y_mode=self.sampling.y_mode, time_power=self.sampling.time_power,
                                             fused_conv=fused_conv)
                          for dt in {self.dtype, torch.float32}}
        self._weight_bytes = sum(p.numel() * p.element_size() for p in self.model.unet.parameters())
        self._tick: Callable[[int], None] = lambda n: None
        # How the last image was cut: the tile side, and the (start, stop) rows and columns of its tiles
        # (in the image with its margin).
        self.last_tile_side: int | None = None
        self.last_spans: tuple[list[tuple[int, int]], list[tuple[int, int]]] | None = None
        self.last_plan: RestorePlan | None = None

    @staticmethod
    def _pick_device(device: str | torch.device | None, model: Any) -> torch.device:
        """"auto" keeps a module where it is; everything else is the package's device rule
        (:func:`~resflow_fast.reference.system.pick_device`), its errors worded as this class's
        other argument errors (``device: ...``)."""
        if device in ("auto", None) and isinstance(model, torch.nn.Module):
            parameter = next(model.parameters(), None)
            return parameter.device if parameter is not None else torch.device("cpu")
        try:
            return pick_device(device)
        except UnknownDeviceError as error:
            raise ValueError(f"device: {device!r} is not a device (use 'auto', 'cpu', 'cuda' or 'cuda:N'): "
                             f"{error.detail}") from None
        except DeviceUnavailableError:
            if not torch.cuda.is_available():
                raise ValueError(f"device: {device!r} asked for, but CUDA is not available on this machine") from None
            raise ValueError(f"device: {device!r}: this machine has {torch.cuda.device_count()} GPU(s)") from None

    @staticmethod
    def _check_tile(tile: int | str | None) -> int | str | None:
        if isinstance(tile, str) and tile == "auto":
            return tile
        if tile is None or (isinstance(tile, numbers.Integral) and not isinstance(tile, bool) and tile == 0):
            return None
        if isinstance(tile, bool) or not isinstance(tile, numbers.Integral) or tile < MIN_TILE_SIDE:
            raise ValueError(f"tile: expected 'auto', None/0 (never tile) or a side of at least {MIN_TILE_SIDE} pixels, "
                             f"got {tile!r}")
        return int(tile)

    # -- public ----------------------------------------------------------------------------------
    @torch.no_grad()
    def restore(self, image: Any, seed: int = 0, progress: Callable[[int, int], None] | None = None) -> Any:
        """Restore ``image`` and return it as the same kind, size, channel layout and bit depth.

        ``image``: a path (read, turned upright by EXIF; the image comes back in the file's own
        mode and bit depth - a PIL image, or an :class:`~resflow_fast.imageio.DeepImage` for
        16-bit colour - and nothing is written), a PIL image, a numpy array (HW or HWC; uint8,
        uint16 or float in [0, 1]), a torch tensor (CHW or NCHW, float in [0, 1]; same dtype and
        device back), or a list of any of these (a list back). Each image of a batch is restored
        with ``seed``, as if it were restored alone. ``progress(done, total)``, if given, is called
        as the work of each image advances (Euler steps x tiles).
        """
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed: must be an integer from 0 to 2**64 - 1, got {seed!r}")
        seed = int(seed)
        if isinstance(image, (list, tuple)):
            return [self._restore_one(item, seed, f"image[{i}]", progress) for i, item in enumerate(image)]
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            if image.shape[0] == 0:
                raise ResflowInputError(f"image: an empty batch, shape {tuple(image.shape)}; give at least one image")
            return torch.stack([self._restore_one(item, seed, f"image[{i}]", progress) for i, item in enumerate(image)])
        return self._restore_one(image, seed, "image", progress)

    def margins(self, height: int, width: int) -> tuple[int, int]:
        """The mirrored context (rows, columns) a (height, width) image gets on each side: the
        margin, less where the image is too small to reflect that far."""
        return min(self.margin, height - 1), min(self.margin, width - 1)

    def plan(self, height: int, width: int, image_device: torch.device | str = "cpu") -> RestorePlan:
        """How a (height, width) image would be restored now: its margin, tile side and tiles,
        memory needed and the budget. Raises :class:`MemoryBudgetError` when it cannot fit."""
        image_device = torch.device(image_device)
        margin = self.margins(height, width)
        full_h, full_w = height + 2 * margin[0], width + 2 * margin[1]  # what the tiles cover
        budget = self.max_memory if self.max_memory is not None else int(free_memory_bytes(self.device) * MEMORY_FRACTION)
        same_device = image_device.type == self.device.type
        image_bytes = IMAGE_BYTES_PER_PIXEL * full_h * full_w if same_device else 0
        config = self.model.unet.config

        def tile_bytes(side: int) -> int:
            return tile_memory_bytes(config, min(side, full_h), min(side, full_w), self.dtype)

        def fits(side: int) -> bool:
            return image_bytes + tile_bytes(side) + self._weight_bytes <= budget

        if self.tile is None:
            side = max(full_h, full_w)
            if not fits(side):
                need = image_bytes + tile_bytes(side) + self._weight_bytes
                raise MemoryBudgetError(
                    f"restoring {width}x{height} in one piece (tile=None) needs about {format_bytes(need)}, more than "
                    f"the memory budget of {format_bytes(budget)}; let it tile (tile='auto') or raise max_memory")
        else:
            wanted = (self.model.tile or DEFAULT_TILE) if self.tile == "auto" else self.tile
            side = max(self.multiple, wanted // self.multiple * self.multiple)
            while not fits(side) and side > MIN_TILE:
                side = max(MIN_TILE, int(side / math.sqrt(2)) // self.multiple * self.multiple)
            if not fits(side):
                need = image_bytes + tile_bytes(side) + self._weight_bytes
                raise MemoryBudgetError(
                    f"restoring {width}x{height} needs about {format_bytes(need)} even with {side}-pixel tiles "
                    f"({format_bytes(image_bytes)} for the image-sized buffers), more than the memory budget of "
                    f"{format_bytes(budget)}; free some memory or raise max_memory")
            if self.tile != "auto" and side < wanted // self.multiple * self.multiple:
                warnings.warn(f"tile={self.tile} does not fit the memory budget of {format_bytes(budget)}; "
                              f"using {side}-pixel tiles", RuntimeWarning)
        overlap = min(self.overlap, side // 4)
        rows, cols = tile_spans(full_h, side, overlap, self.multiple), tile_spans(full_w, side, overlap, self.multiple)
        return RestorePlan(height, width, margin, side, rows, cols, budget,
                           image_bytes, tile_bytes(side), self._weight_bytes)

    @torch.no_grad()
    def restore_planes(self, rgb01: torch.Tensor, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """The core: (3, H, W) float in [0, 1] -> restored (3, H, W) float32 in [0, 1], same device."""
        H, W = rgb01.shape[-2:]
        plan = self.plan(H, W, rgb01.device)  # refuses before any work when it cannot fit
        lq = rgb01.float()[None] * 2.0 - 1.0  # the model range (reference.data.to_model_range)
        mh, mw = plan.margin
        if mh or mw:
            lq = F.pad(lq, (mw, mw, mh, mh), mode="reflect")
        # Drawn once for the whole image and its margin, so tiles only slice it and the seed alone decides y.
        eps = auxiliary_noise(tuple(lq.shape), seed).to(lq.device) if self.model.schedule.has_auxiliary else None
        side = plan.tile_side
        while True:
            try:
                restored = self._restore_tiles(lq, eps, side, progress)
                break
            except torch.cuda.OutOfMemoryError:
                if side <= MIN_TILE:
                    raise RestoreError(f"out of GPU memory even with {side}x{side} tiles; use a smaller model, "
                                       "a smaller max_memory, or --device cpu") from None
            # Outside the except block: the exception's traceback no longer pins the tile's tensors.
            torch.cuda.empty_cache()
            smaller = max(MIN_TILE, int(min(side, max(H, W)) / math.sqrt(2)) // self.multiple * self.multiple)
            warnings.warn(f"out of GPU memory with {side}-pixel tiles; retrying with {smaller}", RuntimeWarning)
            side = smaller
        self.last_tile_side = side
        self.last_plan = plan
        del lq, eps
        # out of place: the result is a tensor of its own, not a view that holds on to the margin
        return restored[0, :, mh:mh + H, mw:mw + W].add(1.0).mul_(0.5).clamp_(0.0, 1.0)

    # -- one image -------------------------------------------------------------------------------
    def _restore_one(self, image: Any, seed: int, name: str, progress: Callable[[int, int], None] | None) -> Any:
        colour, layout = split_image(image, name)
        rgb = colour.expand(3, -1, -1) if layout.grey else colour  # grey goes through the RGB model
        restored = self.restore_planes(rgb, seed, progress)
        del colour, rgb
        if layout.grey:
            restored = restored.mean(dim=0, keepdim=True)
        return layout.rebuild(restored)

    def _restore_tiles(self, lq: torch.Tensor, eps: torch.Tensor | None, side: int,
                       progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """Restore (1, 3, H, W) ``lq`` in tiles of at most side x side, cross-faded; one tile if it fits."""
        H, W = lq.shape[-2:]
        overlap = min(self.overlap, side // 4)
        rows, cols = tile_spans(H, side, overlap, self.multiple), tile_spans(W, side, overlap, self.multiple)
        self.last_spans = (rows, cols)
        total, done = len(rows) * len(cols) * self.steps, 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        self._tick = tick
        try:
            if len(rows) == len(cols) == 1:
                return self._sample(lq, eps)
            out = torch.zeros_like(lq)
            weight = torch.zeros((1, 1, H, W), device=lq.device)
            for (y0, y1), wy in zip(rows, blend_windows(rows)):
                for (x0, x1), wx in zip(cols, blend_windows(cols)):
                    window = (wy[:, None] * wx[None, :]).to(lq.device)
                    tile_eps = eps[..., y0:y1, x0:x1] if eps is not None else None
                    out[..., y0:y1, x0:x1] += self._sample(lq[..., y0:y1, x0:x1], tile_eps) * window
                    weight[..., y0:y1, x0:x1] += window
            return out.div_(weight)  # the windows sum to one; dividing keeps that exact at float precision
        finally:
            self._tick = lambda n: None

    # -- one tile --------------------------------------------------------------------------------
    def _sample(self, lq: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        """One tile through the sampler on the model's device; never returns NaN/Inf."""
        home = lq.device
        lq = lq.to(self.device)
        eps = eps.to(self.device) if eps is not None else None
        out = self._run(lq, eps, self.dtype)
        if self.dtype != torch.float32 and not torch.isfinite(out).all():
            warnings.warn(f"non-finite values in the {self.dtype} output; redone in fp32", RuntimeWarning)
            out = self._run(lq, eps, torch.float32)
        if not torch.isfinite(out).all():
            raise RestoreError("the model produced NaN or Inf even in fp32: the weights are likely broken")
        return out.clamp(-1.0, 1.0).to(home)

    def _run(self, lq: torch.Tensor, eps: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        # Unclamped: clamping would turn an Inf into a plausible +-1 and hide it from the check above.
        s = self.sampling
        with _eval_mode(self.model.unet):
            if self.device.type != "cpu":
                out = self._samplers[dtype](lq, eps=eps, clamp=False).float()
                self._tick(s.steps)
                return out
            # The CPU path is the reference sampler, its network fed channels-last (faster convs, and
            # attention's flash kernel instead of a full score matrix); autocast lowers it on request.
            velocity = _StepCounted(self.model.unet, self._tick)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                return euler_sample(velocity, lq, steps=s.steps, schedule=self.model.schedule, y_mode=s.y_mode,
                                    eps=eps, clamp=False, time_power=s.time_power).float()


def restore(image: Any, model: str | os.PathLike | torch.nn.Module = "default", steps: int | None = None,
            seed: int = 0, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
            tile: int | str | None = "auto", overlap: int = DEFAULT_OVERLAP, schedule: Schedule | None = None,
            y_mode: str | None = None, *, time_power: float | None = None,
            sampling: str | SamplingSettings | None = None, fused_conv: str | None = None,
            max_memory: int | str | None = None, progress: Callable[[int, int], None] | None = None,
            margin: int | None = None) -> Any:
    """Restore one image (or a list, or an NCHW batch) and return it as the same kind.

    See :class:`Restorer` for the arguments and :meth:`Restorer.restore` for what ``image`` may be.
    A path in gives the image back (nothing is written; ``imageio.save_image`` writes atomically).
    Models loaded from files are cached, so calling this in a loop does not re-read the weights.
    """
    return Restorer(model, steps=steps, device=device, dtype=dtype, tile=tile, overlap=overlap, schedule=schedule,
                    y_mode=y_mode, time_power=time_power, sampling=sampling, fused_conv=fused_conv,
                    max_memory=max_memory, margin=margin).restore(image, seed=seed, progress=progress)
