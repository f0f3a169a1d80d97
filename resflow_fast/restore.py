"""``restore()`` and ``Restorer``: any image in, the restored image out, at any size.

One restore (architecture.md, "One restore, as data"):

    split (imageio.py) -> grey repeated to RGB -> [0, 1] to the model range [-1, 1]
    -> eps ~ N(0, I) drawn ONCE for the whole image from the seed
    -> tiles (or one tile), each: ResFlowSampler(lq_tile, eps_tile) -> blended with a smooth window
    -> back to [0, 1] -> grey as the mean of R, G, B -> rebuilt as the caller's kind (imageio.py)

**Tiling.** An image with more pixels than fit in free memory (:func:`max_tile_pixels`) is
restored in overlapping square tiles whose starts are multiples of the network's multiple (so
every tile sees the same down-sampling grid as the whole image would). Tiles are cross-faded
over their overlaps with complementary raised-cosine windows, which sum to one, so there is no
seam and no brightness change. Each tile is reflect-padded and cropped exactly as a whole image
would be (the sampler and the U-Net do it).

**GroupNorm statistics are per tile**: each tile is normalised over its own pixels, not the
whole image's (gathering them over the whole image first would need every layer run over every
tile in lock-step). So a tiled result is not bit-identical to an untiled one; the windows hide
the difference at tile borders. Measured PSNR of tiled against untiled (CPU, fp32):

* random-weight test-preset U-Net of tests/resflow_fast/test_restore.py (it changes the image by
  26 dB), 96x80 noisy image, 2 steps: 45.6 dB with 48-px tiles, 46.8 dB between 48- and 64-px tiles;
* the test-preset model of ``resflow demo`` (119 training steps, noise sigma 25), 4 steps:
  43.3 dB on 128x128 with 64-px tiles, 40.3 dB on 256x256 with 128-px tiles.

Agreement grows with the tile: "auto" tiles only images larger than free memory holds (millions of
pixels), so tiles in practice are far larger than these.

**The seed decides the result whatever the tiling**: the auxiliary noise y is drawn once for the
full image with :func:`~resflow_fast.reference.sampler.auxiliary_noise` and sliced per tile.
Untiled, this is exactly the noise the reference sampler draws itself for that seed.

**Precision.** ``dtype="auto"`` is bf16 on GPUs that have it (fp16 on older ones) and fp32 on
the CPU; "fp32", "bf16" and "fp16" can be chosen (on the CPU reduced precision runs the
reference under ``torch.autocast``). The ODE state stays fp32 either way. A tile whose output is
not finite in reduced precision is redone in fp32 (with a warning); a non-finite output is never
returned.

**Out of memory.** On ``torch.cuda.OutOfMemoryError``, and only on it, the image is restored
again with tiles of half the area, down to :data:`MIN_TILE` pixels a side.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .imageio import split_image
from .models import LoadedModel, resolve_model
from .reference.sampler import auxiliary_noise
from .reference.schedule import Schedule
from .reference.unet import UNetConfig
from .sampler import ResFlowSampler, default_dtype

__all__ = ["restore", "Restorer", "RestoreError", "max_tile_pixels", "tile_spans", "blend_windows"]

#: Default overlap between neighbouring tiles, in pixels (clamped to a quarter of the tile side).
DEFAULT_OVERLAP = 32
#: Smallest tile side the out-of-memory retries go down to.
MIN_TILE = 64
#: Share of free memory a tile may use; the rest absorbs allocator fragmentation and the estimate's error.
MEMORY_FRACTION = 0.5
#: Used when free CPU memory cannot be read (no /proc/meminfo).
FALLBACK_CPU_MEMORY = 4 << 30

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


class RestoreError(RuntimeError):
    """A restore that cannot finish: out of memory at the smallest tile, or a model giving NaN/Inf in fp32."""


# ----------------------------------------------------------------------------------------------
# devices, dtypes, threads
# ----------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device, model: Any = None) -> torch.device:
    """"auto": a module's own device; else the CUDA device of this torchrun rank, or the current one,
    or the CPU."""
    if device in ("auto", None):
        if isinstance(model, torch.nn.Module):
            parameter = next(model.parameters(), None)
            return parameter.device if parameter is not None else torch.device("cpu")
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: {device!r} is not a device (use 'auto', 'cpu', 'cuda' or 'cuda:N'): {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but CUDA is not available on this machine")
    return resolved


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
# how big a tile may be
# ----------------------------------------------------------------------------------------------
def bytes_per_pixel(config: UNetConfig, dtype: torch.dtype) -> float:
    """Estimated peak memory of one sampler step per image pixel (inference, batch 1).

    Live at the peak: every encoder activation kept for a skip connection, plus a decoder ResBlock
    at full resolution (its concatenated input and a few temporaries of that size, the GroupNorms'
    fp32 copies included), plus the fp32 sampler state. Attention is ignored: scaled-dot-product
    attention does not hold the (HW x HW) matrix.
    """
    size = torch.tensor([], dtype=dtype).element_size()
    ch = config.base_channels
    skips = sum((config.num_res_blocks + 1) * ch * m / 4 ** level for level, m in enumerate(config.channel_mult))
    decoder_block = 6 * 2 * ch * config.channel_mult[0]
    state = 12 * config.in_channels * 4
    return (skips + decoder_block) * max(size, 4) + state


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
    """The most pixels one tile may have on ``device`` now."""
    return int(free_memory_bytes(device) * MEMORY_FRACTION / bytes_per_pixel(config, dtype))


# ----------------------------------------------------------------------------------------------
# tiles and their windows
# ----------------------------------------------------------------------------------------------
def tile_spans(length: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """(start, stop) of tiles covering [0, length): at most ``tile`` long, neighbours overlapping by
    at least ``overlap``, starts on multiples of ``multiple``, spread evenly; the last tile ends at
    ``length`` (and may be a little shorter, like a whole image it is padded by the sampler)."""
    if length <= tile:
        return [(0, length)]
    widest_stride = max(multiple, (tile - overlap) // multiple * multiple)
    count = math.ceil((length - tile) / widest_stride) + 1
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


class Restorer:
    """A model loaded once, to restore many images.

    Args:
        model: an embedded model name ("default"), a checkpoint (weights file, checkpoint folder or
            training run folder), or a reference ``UNet`` module (its current weights are used in
            place; it stays on its own device unless ``device`` names another, where it is moved
            as ``module.to`` would).
        steps: Euler steps (4 in the paper).
        device: "auto" (CUDA when available, else the CPU), "cpu", "cuda", "cuda:N" or a torch.device.
        dtype: "auto" (bf16 on GPUs that have it, fp32 on the CPU), "fp32", "bf16" or "fp16".
        tile: "auto" (tile only above what free memory holds), an int (the largest tile side in
            pixels), or None / 0 (never tile).
        overlap: pixels shared by neighbouring tiles (at most a quarter of the tile side is used).
        schedule: with a module, the schedule it was trained with (default entropy-preserving).
        y_mode: "joint" or "exact" (see :func:`~resflow_fast.reference.sampler.euler_sample`).
    """

    def __init__(self, model: str | os.PathLike | torch.nn.Module = "default", steps: int = 4,
                 device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                 tile: int | str | None = "auto", overlap: int = DEFAULT_OVERLAP,
                 schedule: Schedule | None = None, y_mode: str = "joint"):
        self.device = resolve_device(device, model)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tile = self._check_tile(tile)
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
            raise ValueError(f"overlap: must be a non-negative number of pixels, got {overlap!r}")
        self.overlap = overlap
        if self.device.type == "cpu":
            configure_cpu_threads()
        self.model: LoadedModel = resolve_model(model, self.device, schedule)
        self.multiple = self.model.unet.multiple
        self.steps = steps
        self._samplers = {dt: ResFlowSampler(self.model.unet, self.model.schedule, steps=steps, dtype=dt, y_mode=y_mode)
                          for dt in {self.dtype, torch.float32}}
        # How the last image was cut: the tile side, and the (start, stop) rows and columns of its tiles.
        self.last_tile_side: int | None = None
        self.last_spans: tuple[list[tuple[int, int]], list[tuple[int, int]]] | None = None

    @staticmethod
    def _check_tile(tile: int | str | None) -> int | str | None:
        if tile in ("auto", None, 0):
            return tile or None
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 16:
            raise ValueError(f"tile: expected 'auto', None/0 (never tile) or a side of at least 16 pixels, got {tile!r}")
        return tile

    # -- public ----------------------------------------------------------------------------------
    @torch.no_grad()
    def restore(self, image: Any, seed: int = 0) -> Any:
        """Restore ``image`` and return it as the same kind, size, channel layout and bit depth.

        ``image``: a path (read, turned upright by EXIF; a PIL image in the file's mode comes back,
        nothing is written), a PIL image, a numpy array (HW or HWC; uint8, uint16 or float in
        [0, 1]), a torch tensor (CHW or NCHW, float in [0, 1]; same dtype and device back), or a
        list of any of these (a list back). Each image of a batch is restored with ``seed``, as if
        it were restored alone.
        """
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed: must be an integer, got {seed!r}")
        seed = int(seed)
        if isinstance(image, (list, tuple)):
            return [self._restore_one(item, seed, f"image[{i}]") for i, item in enumerate(image)]
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            return torch.stack([self._restore_one(item, seed, f"image[{i}]") for i, item in enumerate(image)])
        return self._restore_one(image, seed, "image")

    @torch.no_grad()
    def restore_planes(self, rgb01: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The core: (3, H, W) float in [0, 1] -> restored (3, H, W) float32 in [0, 1], same device."""
        H, W = rgb01.shape[-2:]
        lq = rgb01.float()[None] * 2.0 - 1.0  # the model range (reference.data.to_model_range)
        # Drawn once for the whole image, so tiles only slice it and the seed alone decides y.
        eps = auxiliary_noise((1, 3, H, W), seed).to(lq.device) if self.model.schedule.has_auxiliary else None
        side = self._first_tile_side(H, W)
        while True:
            try:
                restored = self._restore_tiles(lq, eps, side)
                break
            except torch.cuda.OutOfMemoryError:
                if side <= MIN_TILE:
                    raise RestoreError(f"out of GPU memory even with {side}x{side} tiles; use a smaller model "
                                       "or --device cpu") from None
            # Outside the except block: the exception's traceback no longer pins the tile's tensors.
            torch.cuda.empty_cache()
            smaller = max(MIN_TILE, int(min(side, max(H, W)) / math.sqrt(2)) // self.multiple * self.multiple)
            warnings.warn(f"out of GPU memory with {side}-pixel tiles; retrying with {smaller}", RuntimeWarning)
            side = smaller
        self.last_tile_side = side
        return ((restored[0] + 1.0) * 0.5).clamp(0.0, 1.0)

    # -- one image -------------------------------------------------------------------------------
    def _restore_one(self, image: Any, seed: int, name: str) -> Any:
        colour, layout = split_image(image, name)
        rgb = colour.expand(3, -1, -1) if layout.grey else colour  # grey goes through the RGB model
        restored = self.restore_planes(rgb, seed)
        if layout.grey:
            restored = restored.mean(dim=0, keepdim=True)
        return layout.rebuild(restored)

    def _first_tile_side(self, H: int, W: int) -> int:
        """The largest tile side to try: the whole image when it fits, else from ``tile``."""
        if self.tile is None:
            return max(H, W)
        if self.tile == "auto":
            budget = max_tile_pixels(self.model.unet.config, self.device, self.dtype)
            if H * W <= budget:
                return max(H, W)
            return max(MIN_TILE, math.isqrt(budget) // self.multiple * self.multiple)
        return max(self.multiple, self.tile // self.multiple * self.multiple)

    def _restore_tiles(self, lq: torch.Tensor, eps: torch.Tensor | None, side: int) -> torch.Tensor:
        """Restore (1, 3, H, W) ``lq`` in tiles of at most side x side, cross-faded; one tile if it fits."""
        H, W = lq.shape[-2:]
        overlap = min(self.overlap, side // 4)
        rows, cols = tile_spans(H, side, overlap, self.multiple), tile_spans(W, side, overlap, self.multiple)
        self.last_spans = (rows, cols)
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
        return out / weight  # the windows sum to one; dividing keeps that exact at float precision

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
        sampler = self._samplers[dtype]
        with _eval_mode(self.model.unet):
            if self.device.type == "cpu" and dtype != torch.float32:
                with torch.autocast("cpu", dtype=dtype):  # the CPU path is the reference; autocast lowers it
                    return sampler(lq, eps=eps, clamp=False).float()
            return sampler(lq, eps=eps, clamp=False).float()


def restore(image: Any, model: str | os.PathLike | torch.nn.Module = "default", steps: int = 4, seed: int = 0,
            device: str | torch.device = "auto", dtype: str | torch.dtype = "auto", tile: int | str | None = "auto",
            overlap: int = DEFAULT_OVERLAP, schedule: Schedule | None = None, y_mode: str = "joint") -> Any:
    """Restore one image (or a list, or an NCHW batch) and return it as the same kind.

    See :class:`Restorer` for the arguments and :meth:`Restorer.restore` for what ``image`` may be.
    A path in gives a PIL image back (nothing is written; ``imageio.save_image`` writes atomically).
    Models loaded from files are cached, so calling this in a loop does not re-read the weights.
    """
    return Restorer(model, steps=steps, device=device, dtype=dtype, tile=tile, overlap=overlap,
                    schedule=schedule, y_mode=y_mode).restore(image, seed=seed)
