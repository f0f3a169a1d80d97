"""``group_norm_modulate_silu``: the ResBlock's adaptive GroupNorm + SiLU in two Triton passes.

docs/design/math.md, "Network"; docs/design/architecture.md, "The fusion plan", items 1 and 2:

    y = SiLU( GroupNorm(x; weight, bias) * (1 + scale) + shift )                          (1)

with ``scale``, ``shift`` of shape (N, C) from the block's time embedding (the reference's
``modulated_group_norm``, which the twin calls). ``scale``/``shift`` = None gives the plain affine
GroupNorm, ``apply_silu=False`` drops the SiLU.

1. The statistics pass (:mod:`kernels._group_stats`) reduces the activation once and, in its last
   programs, folds everything of (1) but the SiLU into per-(n, c) fp32 coefficients
   (the reference's ``group_norm_coefficients``):

       A = rstd * weight * (1 + scale),    B = bias * (1 + scale) + shift,    m = group mean

2. ``_gn_apply_kernel``: ``y = silu(A * (x - m) + B)``, one read and one write of the activation.

Why centre in pass 2 rather than fold the mean into B (``A * x + (B - A * m)``): that form cancels
two terms of size ``rstd * |mean|``, an error of about 2^-24 * |mean| / std (1e-2 at
mean/std = 1e5); ``x - m`` is exact for x near m and costs one subtraction. For the same reason
the statistics sum deviations from a shift near the mean, never raw values.

Sizes, eps and chunk counts are runtime arguments (H*W-dependent ones are excluded from Triton's
integer specialisation), so a new image size never recompiles; block sizes depend on C and the
layout only. Inputs may be dense NCHW or NHWC (channels-last); anything else is copied to NCHW.
The output has the input's layout. Inference only: when autograd would record through any input,
:func:`group_norm_modulate_silu` returns the differentiable twin
:func:`group_norm_modulate_silu_reference` instead.
"""
import math
from typing import Optional

import torch

from ..reference.unet import modulated_group_norm
from ._group_stats import (  # noqa: F401 - GroupNormConfig: the type of pick_config's result
    GroupNormConfig,
    _gn_stats_kernel,
    _tile_offsets,
    aligned_pixels,
    hw_aligned,
    launch_statistics,
    pick_config,
    stats_split,
)
from ._runtime import (
    as_dense_4d,
    check_same_device,
    check_shape,
    check_tensor,
    empty_like_layout,
    is_channels_last,
    is_dense_4d,
    needs_autograd,
    on_device_of,
    record_launch,
    silu,
    tl,
    triton,
    use_triton,
)

# Largest H*W (a 32768^2 image): pixel indices inside the kernels are int32 and a tile may reach
# a block past the end; element offsets are int64.
MAX_PIXELS = 2**30


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
    HW_ALIGNED: tl.constexpr,  # an NCHW tensor with H*W % 16 == 0 (checked by the launcher)
    APPLY_SILU: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    if HW_ALIGNED:
        HW = aligned_pixels(HW)
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
        y = silu(y)
    tl.store(y_ptr + _tile_offsets(n, c, p, C, HW, Y_CHANNELS_LAST), y.to(y_ptr.dtype.element_ty), mask=mask)


def _launch(x, num_groups, weight, bias, scale, shift, eps, apply_silu, out) -> None:
    """Run the statistics pass and the apply pass on dense 4-D ``x`` into dense 4-D ``out``
    (validated by the caller)."""
    N, C, H, W = x.shape
    x_channels_last = is_channels_last(x)
    cfg = pick_config(C, x_channels_last, on_gpu=x.is_cuda)
    split = stats_split(N, C, H * W, cfg)
    a, b, center = torch.empty((3, N, C), dtype=torch.float32, device=x.device)
    launch_statistics(x, num_groups, eps, cfg, split, a, b, center, weight, bias, scale, shift)
    _gn_apply_kernel[(N * split.num_c_blocks * split.num_tiles,)](
        x, a, b, center, out,
        C, H * W, split.num_c_blocks, split.num_tiles,
        X_CHANNELS_LAST=x_channels_last, Y_CHANNELS_LAST=is_channels_last(out),
        HW_ALIGNED=hw_aligned(x, out), APPLY_SILU=bool(apply_silu),
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
