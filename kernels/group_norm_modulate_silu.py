"""Adaptive GroupNorm + SiLU in three short Triton passes.

Implements the normalisation of the adaptive-GroupNorm ResBlock (resflow-math.md, "Network"):

    y = SiLU( GroupNorm(x; weight, bias) * (1 + scale) + shift )                          (1)

with ``scale``, ``shift`` of shape (N, C) from the block's time embedding. ``scale``/``shift`` =
None gives the plain affine GroupNorm, ``apply_silu=False`` drops the SiLU.

Passes (architecture.md, "the fusion plan", items 1 and 2):

1. ``_gn_partial_stats_kernel``: the H*W pixels are split into chunks and every program reduces one
   (sample, channel block, chunk), so batch 1 still launches hundreds of programs. Each writes fp32
   per-channel (mean, M2) of its chunk, from fp32 sums of ``x - K`` and ``(x - K)^2`` with K one
   pixel of the chunk (the shifted-data algorithm; never the one-pass ``E[x^2] - E[x]^2``).
2. ``_gn_combine_fold_kernel``: one program per (sample, group) combines the chunk partials into the
   group mean and ``rstd = 1 / sqrt(var + eps)`` and folds everything of (1) but the SiLU into
   per-(n, c) fp32 coefficients

       A = rstd * weight * (1 + scale),    B = bias * (1 + scale) + shift,    m = mean

3. ``_gn_apply_kernel``: ``y = silu(A * (x - m) + B)``, one read and one write of the activation.

Why centre in pass 3 rather than fold the mean into B (``A * x + (B - A * m)``): that form cancels
two terms of size ``rstd * |mean|``, an error of about 2^-24 * |mean| / std (1e-2 at
mean/std = 1e5); ``x - m`` is exact for x near m and costs one subtraction. For the same reason
the statistics sum deviations from a shift near the mean, never raw values.

Sizes, eps and chunk counts are runtime arguments (H*W-dependent ones are excluded from Triton's
integer specialisation), so a new image size never recompiles; block sizes depend on C and the
layout only. Inputs may be dense NCHW or NHWC (channels-last); anything else is copied to NCHW.
The output has the input's layout.

Inference only: when autograd would record through any input, :func:`group_norm_modulate_silu`
returns the differentiable twin :func:`group_norm_modulate_silu_reference` instead.

Preliminary timing (one H200, torch 2.11.0, Triton 3.6.0, 2026-11-26, bf16 NHWC, through the public
function, so including about 50 us of host-side launch overhead for three launches; an ad-hoc script
of a development session, not kept: rerun with ``benchmarks/gpu_check.py``): 1x128x512^2 137 us (torch.compile of
the formula 153 us); 1x64x2048^2 525 us (4042 us); 4x256x256^2 166 us (1025 us). The kernels
alone take about 37 + 11 + 38 us at 1x128x512^2: the statistics pass reaches only ~1.8 TB/s there
and is the next thing to tune (the issue asks for <= 60 us).
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..reference.unet import modulated_group_norm
from ._group_stats import merge_channels_per_group, merge_tiles_per_channel
from ._runtime import (
    as_dense_4d,
    cdiv,
    check_same_device,
    check_shape,
    check_tensor,
    empty_like_layout,
    is_channels_last,
    is_dense_4d,
    needs_autograd,
    next_power_of_2,
    on_device_of,
    record_launch,
    tl,
    triton,
    use_triton,
)

# Largest H*W (a 32768^2 image): pixel indices inside the kernels are int32 and a tile may reach
# a block past the end; element offsets are int64.
MAX_PIXELS = 2**30


# ------------------------------------------------------------------------------------------------
# Triton kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _tile_offsets(n, c, p, C, HW, CHANNELS_LAST: tl.constexpr):
    """int64 offsets of a [BLOCK_P, BLOCK_C] tile of pixels p (rows) x channels c (columns) of
    sample n in a dense (N, C, H, W) tensor; 64-bit because N * C * H * W can pass 2**31."""
    n64 = n.to(tl.int64)
    p64 = p.to(tl.int64)[:, None]
    c64 = c.to(tl.int64)[None, :]
    if CHANNELS_LAST:
        offsets = (n64 * HW + p64) * C + c64
    else:
        offsets = (n64 * C + c64) * HW + p64
    return offsets


@triton.jit(do_not_specialize=["HW", "num_tiles", "num_chunks", "tiles_per_chunk"])
def _gn_partial_stats_kernel(
    x_ptr,  # (N, C, H, W) fp32/bf16/fp16, dense NCHW or NHWC (CHANNELS_LAST)
    mean_ptr,  # (N, num_chunks, C) fp32 out: mean of each channel over the chunk's pixels
    m2_ptr,  # (N, num_chunks, C) fp32 out: sum of squared deviations from that mean
    C, HW, num_c_blocks, num_tiles, num_chunks, tiles_per_chunk,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_P: tl.constexpr,  # pixels per tile
    BLOCK_C: tl.constexpr,  # channels per program
):
    # program -> (chunk, channel block, sample); chunks vary fastest so neighbours read neighbours
    pid = tl.program_id(0)
    chunk = pid % num_chunks
    rest = pid // num_chunks
    c_block = rest % num_c_blocks
    n = rest // num_c_blocks

    c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    first_tile = chunk * tiles_per_chunk
    last_tile = tl.minimum(first_tile + tiles_per_chunk, num_tiles)  # every chunk has >= 1 tile

    # Shifted-data sums: accumulate d = x - K and d^2 per register lane, with K the chunk's first
    # pixel per channel. K is a sample of the data, typically a few std from the mean, so
    # sum(d^2) - sum(d)^2 / n does not cancel the way E[x^2] - E[x]^2 does when |mean| >> std.
    # The loop only adds; the one cross-lane reduction happens after it.
    first_pixel = first_tile * BLOCK_P + tl.zeros([1], dtype=tl.int32)
    pivot = tl.load(x_ptr + _tile_offsets(n, c, first_pixel, C, HW, CHANNELS_LAST), mask=c_mask[None, :], other=0.0)
    pivot = pivot.to(tl.float32)  # [1, BLOCK_C]: K
    sum_d = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    sum_d2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for tile in range(first_tile, last_tile):
        p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
        mask = (p < HW)[:, None] & c_mask[None, :]
        x = tl.load(x_ptr + _tile_offsets(n, c, p, C, HW, CHANNELS_LAST), mask=mask, other=0.0)
        d = tl.where(mask, x.to(tl.float32) - pivot, 0.0)
        sum_d += d
        sum_d2 += d * d

    count = tl.minimum(HW - first_tile * BLOCK_P, (last_tile - first_tile) * BLOCK_P).to(tl.float32)
    total_d = tl.sum(sum_d, axis=0)
    mean = tl.sum(pivot, axis=0) + total_d / count
    m2 = tl.maximum(tl.sum(sum_d2, axis=0) - total_d * total_d / count, 0.0)
    out = (n.to(tl.int64) * num_chunks + chunk) * C + c
    tl.store(mean_ptr + out, mean, mask=c_mask)
    tl.store(m2_ptr + out, m2, mask=c_mask)


@triton.jit(do_not_specialize=["HW", "num_chunks", "chunk_pixels"])
def _gn_combine_fold_kernel(
    mean_ptr,  # (N, num_chunks, C) fp32: chunk means from _gn_partial_stats_kernel
    m2_ptr,  # (N, num_chunks, C) fp32: chunk M2
    weight_ptr,  # (C,) any float dtype
    bias_ptr,  # (C,) any float dtype
    scale_ptr,  # (N, C) any float dtype, strides (stride_scale_n, stride_scale_c); read if HAS_SCALE
    shift_ptr,  # (N, C) any float dtype, strides (stride_shift_n, stride_shift_c); read if HAS_SHIFT
    a_ptr,  # (N, C) fp32 out: A = rstd * weight * (1 + scale)
    b_ptr,  # (N, C) fp32 out: B = bias * (1 + scale) + shift
    center_ptr,  # (N, C) fp32 out: the group mean, broadcast to the group's channels
    C, HW, num_groups, group_size, num_chunks, chunk_pixels, eps,
    stride_scale_n, stride_scale_c, stride_shift_n, stride_shift_c,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    BLOCK_K: tl.constexpr,  # chunks per loop step (all of them, for the usual split)
    BLOCK_G: tl.constexpr,  # >= group_size, a power of two
):
    pid = tl.program_id(0)  # one program per (sample, group)
    n = pid // num_groups
    group = pid % num_groups
    j = tl.arange(0, BLOCK_G)
    c = group * group_size + j
    c_mask = j < group_size
    # the affine and modulation parameters do not depend on the statistics: load them first so
    # their latency overlaps the partials' (this kernel is a short chain of dependent loads)
    weight = tl.load(weight_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    b = tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        scale = tl.load(scale_ptr + n * stride_scale_n + c * stride_scale_c, mask=c_mask, other=0.0)
        one_plus_scale = 1.0 + scale.to(tl.float32)
        b = b * one_plus_scale
    if HAS_SHIFT:
        shift = tl.load(shift_ptr + n * stride_shift_n + c * stride_shift_c, mask=c_mask, other=0.0)
        b = b + shift.to(tl.float32)

    # chunk k covers pixels [k * chunk_pixels, ...): the tile grid (1, HW) of kernels._group_stats
    mean_c, m2_c = merge_tiles_per_channel(mean_ptr, m2_ptr, n.to(tl.int64) * num_chunks * C, c, c_mask, num_chunks,
                                           C, 1, HW, 1, chunk_pixels, num_chunks, BLOCK_K)
    mean, var = merge_channels_per_group(mean_c[None, :], m2_c[None, :], c_mask[None, :], (j == 0)[None, :],
                                         HW.to(tl.float32))
    rstd = 1.0 / tl.sqrt(var + eps)

    # fold normalisation, affine and modulation into y = A * (x - mean) + B
    a = rstd * weight
    if HAS_SCALE:
        a = a * one_plus_scale
    tl.store(a_ptr + n * C + c, a, mask=c_mask)
    tl.store(b_ptr + n * C + c, b, mask=c_mask)
    tl.store(center_ptr + n * C + c, tl.zeros([BLOCK_G], dtype=tl.float32) + mean, mask=c_mask)


@triton.jit(do_not_specialize=["HW", "num_p_tiles"])
def _gn_apply_kernel(
    x_ptr,  # (N, C, H, W) fp32/bf16/fp16, dense NCHW or NHWC (X_CHANNELS_LAST)
    a_ptr,  # (N, C) fp32: per-(n, c) multiplier A
    b_ptr,  # (N, C) fp32: per-(n, c) offset B
    center_ptr,  # (N, C) fp32: per-(n, c) group mean m
    y_ptr,  # (N, C, H, W) out, x's dtype, dense NCHW or NHWC (Y_CHANNELS_LAST); may be x itself
    C, HW, num_c_blocks, num_p_tiles,
    X_CHANNELS_LAST: tl.constexpr,
    Y_CHANNELS_LAST: tl.constexpr,
    APPLY_SILU: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # 1-D grid (pixel tiles vary fastest): a 2048^2 image has more tiles than CUDA's 65535 limit
    # on grid axes 1 and 2.
    pid = tl.program_id(0)
    p_tile = pid % num_p_tiles
    rest = pid // num_p_tiles
    c_block = rest % num_c_blocks
    n = rest // num_c_blocks

    p = p_tile * BLOCK_P + tl.arange(0, BLOCK_P)
    c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    mask = (p < HW)[:, None] & c_mask[None, :]

    a = tl.load(a_ptr + n * C + c, mask=c_mask, other=0.0)
    b = tl.load(b_ptr + n * C + c, mask=c_mask, other=0.0)
    center = tl.load(center_ptr + n * C + c, mask=c_mask, other=0.0)
    x = tl.load(x_ptr + _tile_offsets(n, c, p, C, HW, X_CHANNELS_LAST), mask=mask, other=0.0)
    y = (x.to(tl.float32) - center[None, :]) * a[None, :] + b[None, :]
    if APPLY_SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + _tile_offsets(n, c, p, C, HW, Y_CHANNELS_LAST), y.to(y_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Launch configuration
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupNormConfig:
    """Block sizes and the statistics split. Depends on C and the layout, never on H or W."""

    block_p: int  # pixels per tile
    block_c: int  # channels per program
    stats_programs: int  # aim for at least this many statistics programs (fills a 132-SM GPU)
    num_warps: int = 4


def pick_config(num_channels: int, channels_last: bool) -> GroupNormConfig:
    """Tiles of about 4096 elements, contiguous along the layout's fast axis: whole pixel rows of
    channels for NHWC, long pixel runs of a few channels for NCHW."""
    c_pow2 = next_power_of_2(num_channels)
    block_c = min(c_pow2, 128) if channels_last else min(c_pow2, 4)
    return GroupNormConfig(block_p=max(4096 // block_c, 16), block_c=block_c, stats_programs=512)


@dataclass(frozen=True)
class StatsSplit:
    """How pass 1 covers the (N, C, H*W) activation: programs = N * num_c_blocks * num_chunks."""

    num_c_blocks: int
    num_tiles: int  # pixel tiles of cfg.block_p per (sample, channel block)
    tiles_per_chunk: int
    num_chunks: int  # every chunk holds at least one tile

    @property
    def programs_per_sample(self) -> int:
        return self.num_c_blocks * self.num_chunks


def combine_block_k(cfg: GroupNormConfig, block_g: int) -> int:
    """Chunks per step of pass 2: all of them (at most cfg.stats_programs) in one step when the
    [BLOCK_K, BLOCK_G] tile stays within 8192 values, so the pass is not a chain of loads."""
    return max(1, min(next_power_of_2(cfg.stats_programs), 8192 // block_g))


def stats_split(batch: int, num_channels: int, num_pixels: int, cfg: GroupNormConfig) -> StatsSplit:
    """Split H*W into chunks so that batch * num_c_blocks * num_chunks reaches cfg.stats_programs:
    at batch 1 the statistics pass still fills the GPU."""
    num_c_blocks = cdiv(num_channels, cfg.block_c)
    num_tiles = cdiv(num_pixels, cfg.block_p)
    wanted_chunks = max(1, min(num_tiles, cdiv(cfg.stats_programs, batch * num_c_blocks)))
    tiles_per_chunk = cdiv(num_tiles, wanted_chunks)
    return StatsSplit(num_c_blocks, num_tiles, tiles_per_chunk, cdiv(num_tiles, tiles_per_chunk))


def _launch(x, num_groups, weight, bias, scale, shift, eps, apply_silu, out) -> None:
    """Run passes 1-3 on dense 4-D ``x`` into dense 4-D ``out`` (validated by the caller)."""
    N, C, H, W = x.shape
    HW = H * W
    x_channels_last = is_channels_last(x)
    cfg = pick_config(C, x_channels_last)
    split = stats_split(N, C, HW, cfg)
    num_c_blocks, num_tiles = split.num_c_blocks, split.num_tiles
    tiles_per_chunk, num_chunks = split.tiles_per_chunk, split.num_chunks

    chunk_mean = torch.empty((N, num_chunks, C), dtype=torch.float32, device=x.device)
    chunk_m2 = torch.empty_like(chunk_mean)
    _gn_partial_stats_kernel[(N * num_c_blocks * num_chunks,)](
        x, chunk_mean, chunk_m2,
        C, HW, num_c_blocks, num_tiles, num_chunks, tiles_per_chunk,
        CHANNELS_LAST=x_channels_last, BLOCK_P=cfg.block_p, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps,
    )
    record_launch("gn_partial_stats")

    group_size = C // num_groups
    block_g = next_power_of_2(group_size)
    a = torch.empty((N, C), dtype=torch.float32, device=x.device)
    b = torch.empty_like(a)
    center = torch.empty_like(a)
    _gn_combine_fold_kernel[(N * num_groups,)](
        chunk_mean, chunk_m2, weight, bias,
        scale if scale is not None else a, shift if shift is not None else a,  # dummies when absent
        a, b, center,
        C, HW, num_groups, group_size, num_chunks, tiles_per_chunk * cfg.block_p, float(eps),
        *(scale.stride() if scale is not None else (0, 0)),
        *(shift.stride() if shift is not None else (0, 0)),
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        BLOCK_K=combine_block_k(cfg, block_g), BLOCK_G=block_g, num_warps=4,
    )
    record_launch("gn_combine_fold")

    _gn_apply_kernel[(N * num_c_blocks * num_tiles,)](
        x, a, b, center, out,
        C, HW, num_c_blocks, num_tiles,
        X_CHANNELS_LAST=x_channels_last, Y_CHANNELS_LAST=is_channels_last(out), APPLY_SILU=bool(apply_silu),
        BLOCK_P=cfg.block_p, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps,
    )
    record_launch("gn_apply")


def _run_into(x, num_groups, weight, bias, scale, shift, eps, apply_silu, out) -> None:
    """Body of both registered ops: the kernels when they can run here, else the twin."""
    if x.numel() == 0:
        return
    x = as_dense_4d(x)
    if use_triton(x, weight, bias, scale, shift, out):
        with on_device_of(x):
            _launch(x, num_groups, weight, bias, scale, shift, eps, apply_silu, out)
    else:
        out.copy_(_reference_fp32(x, num_groups, weight, bias, scale, shift, eps, apply_silu))


# ------------------------------------------------------------------------------------------------
# torch.library registration: opaque to torch.compile, which traces through without a graph break
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("resflow_fast::group_norm_modulate_silu", mutates_args=())
def _group_norm_modulate_silu_op(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor,
    scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], eps: float, apply_silu: bool,
) -> torch.Tensor:
    out = empty_like_layout(x)
    _run_into(x, num_groups, weight, bias, scale, shift, eps, apply_silu, out)
    return out


@_group_norm_modulate_silu_op.register_fake
def _(x, num_groups, weight, bias, scale, shift, eps, apply_silu):
    return empty_like_layout(x)


@torch.library.custom_op("resflow_fast::group_norm_modulate_silu_out", mutates_args=("out",))
def _group_norm_modulate_silu_out_op(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor,
    scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], eps: float, apply_silu: bool,
    out: torch.Tensor,
) -> None:
    _run_into(x, num_groups, weight, bias, scale, shift, eps, apply_silu, out)


@_group_norm_modulate_silu_out_op.register_fake
def _(x, num_groups, weight, bias, scale, shift, eps, apply_silu, out):
    return None


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
def _validate(x, num_groups, weight, bias, scale, shift, eps, apply_silu, out):
    """Check every argument at the boundary; returns (weight, bias) with None replaced."""
    check_tensor("x", x, ndim=4)
    N, C, H, W = x.shape
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if C % num_groups != 0:
        raise ValueError(f"x has C={C} channels, not divisible by num_groups={num_groups}")
    if H * W > MAX_PIXELS:
        raise ValueError(f"x has H*W={H * W} pixels per channel; at most {MAX_PIXELS} are supported")
    weight = torch.ones(C, dtype=x.dtype, device=x.device) if weight is None else weight
    bias = torch.zeros(C, dtype=x.dtype, device=x.device) if bias is None else bias
    for name, t in (("weight", weight), ("bias", bias)):
        check_tensor(name, t)
        check_shape(name, t, (C,))
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None:
            check_tensor(name, t)
            check_shape(name, t, (N, C))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not isinstance(apply_silu, bool):
        raise TypeError(f"apply_silu must be a bool, got {type(apply_silu).__name__}")
    if out is not None:
        check_tensor("out", out, ndim=4)
        check_shape("out", out, tuple(x.shape))
        if out.dtype != x.dtype:
            raise TypeError(f"out must have x's dtype {x.dtype}, got {out.dtype}")
        if not is_dense_4d(out):
            raise ValueError("out must be contiguous or channels_last (dense NCHW or NHWC), "
                             f"got strides {out.stride()} for shape {tuple(out.shape)}")
    check_same_device(x=x, weight=weight, bias=bias, scale=scale, shift=shift, out=out)
    return weight, bias


def _reference_fp32(x, num_groups, weight, bias, scale, shift, eps, apply_silu) -> torch.Tensor:
    """Equation (1) in fp32: the reference's definition fed fp32 copies, in x's layout."""
    return modulated_group_norm(x.float(), num_groups, weight.float(), bias.float(), eps,
                                scale.float() if scale is not None else None,
                                shift.float() if shift is not None else None, silu=apply_silu)


def group_norm_modulate_silu_reference(
    x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None, eps: float = 1e-5,
    apply_silu: bool = True, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Pure-torch twin of :func:`group_norm_modulate_silu`: equation (1) in fp32 through
    ``torch.nn.functional.group_norm``, cast to x's dtype once at the end. Differentiable; the CPU
    path and the test oracle."""
    weight, bias = _validate(x, num_groups, weight, bias, scale, shift, eps, apply_silu, out)
    y = _reference_fp32(x, num_groups, weight, bias, scale, shift, eps, apply_silu).to(x.dtype)
    if out is None:
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        return y.contiguous(memory_format=fmt)
    return out.copy_(y)


def group_norm_modulate_silu(
    x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None, eps: float = 1e-5,
    apply_silu: bool = True, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``SiLU(GroupNorm(x; weight, bias) * (1 + scale) + shift)``, equation (1) of this module.

    Args:
        x: (N, C, H, W) fp32, bf16 or fp16; dense NCHW or channels-last (others are copied to NCHW).
        num_groups: G, dividing C (32 in the U-Net).
        weight, bias: (C,) GroupNorm affine parameters, any float dtype (None: 1 and 0).
        scale, shift: (N, C) modulation from the time embedding, or None (no modulation).
        eps: added to the variance; any finite value > 0 (a runtime argument, never recompiles).
        apply_silu: False returns the (modulated) GroupNorm alone.
        out: optional (N, C, H, W) tensor of x's dtype, contiguous or channels-last, to write into;
            may be ``x`` itself (the statistics are complete before the first write).

    Returns:
        ``out`` if given, else a new tensor of x's dtype in x's layout. Statistics and arithmetic
        are fp32; the result is cast once.

    When autograd would record through any input, this returns the twin
    :func:`group_norm_modulate_silu_reference` (differentiable) instead of running the kernels.
    """
    weight, bias = _validate(x, num_groups, weight, bias, scale, shift, eps, apply_silu, out)
    if needs_autograd(x, weight, bias, scale, shift):
        if out is not None:
            raise RuntimeError("group_norm_modulate_silu(): out= does not support autograd; "
                               "an input requires grad")
        return group_norm_modulate_silu_reference(x, num_groups, weight, bias, scale, shift, eps, apply_silu)
    x = as_dense_4d(x)
    eps = float(eps)
    if out is None:
        return torch.ops.resflow_fast.group_norm_modulate_silu(
            x, num_groups, weight, bias, scale, shift, eps, apply_silu)
    torch.ops.resflow_fast.group_norm_modulate_silu_out(
        x, num_groups, weight, bias, scale, shift, eps, apply_silu, out)
    return out
