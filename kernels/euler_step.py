"""``euler_step``: the joint x/y Euler step of the ResFlow sampler, in one memory pass.

docs/design/math.md, "Sampling"; docs/design/architecture.md, "The fusion plan", item 3: explicit
Euler backwards in t on the augmented state z = [x; y],

    x <- x - dt * v[:, :C]                                                                  (2a)
    y <- y - dt * v[:, C:]                                                                  (2b)

with v = v_theta(z, t) the network output (N, 2C, H, W) and dt = t_k - t_{k+1} > 0. The option
``y_scale`` (docs/design/math.md, "Choices the paper leaves open") moves y exactly along the
schedule instead,

    y <- y * sigma_y(t_next) / sigma_y(t)                                                   (2c)

(the factor is the reference's ``Schedule.y_exact_scale``). The ``x_only`` control has
no y: v has C channels and only (2a) runs.

x and y are fp32 state; v is in the network dtype (fp32, bf16 or fp16). One kernel reads x, y, v
once and writes the new x, y once, and optionally also the next network input ``[x; y]`` cast to
that input's dtype and layout, so the sampler needs no separate cat/cast pass.

Every tensor may be dense NCHW or NHWC independently; the kernel walks memory in x's layout and
recovers (channel, pixel) of each element to address the others. Accesses in the walked layout are
contiguous (and, where C * H * W is a multiple of 16, known to the compiler as 16-byte aligned);
those into a tensor of the other layout are strided, which is why the sampler keeps its state in
the network's layout. H*W is a runtime argument: a new image size compiles no new variant beyond
the one with and the one without the alignment hints.
"""
import math
from typing import Optional

import torch

from ..reference.sampler import euler_update
from ._runtime import (
    as_dense_4d,
    cdiv,
    check_same_device,
    check_shape,
    check_tensor,
    decode_index,
    dense_offset,
    empty_like_layout,
    is_channels_last,
    is_dense_4d,
    needs_autograd,
    on_device_of,
    record_launch,
    samples_aligned,
    tl,
    triton,
    use_triton,
    walk_offset,
)

BLOCK = 4096  # elements per program: large blocks for a memory-bound pass
NUM_WARPS = 8
# in-sample indices are int32 (sample bases int64) and the last block reaches up to BLOCK past the end
MAX_SAMPLE_ELEMENTS = 2**31 - 1 - BLOCK
MAX_BATCH = 65535  # the batch is grid axis 1


@triton.jit(do_not_specialize=["HW", "dt", "y_scale"])
def _euler_step_kernel(
    x_ptr,  # (N, C, H, W) fp32 state x, dense, layout X_CL
    y_ptr,  # (N, C, H, W) fp32 state y, dense, layout Y_CL (unused without HAS_Y)
    v_ptr,  # (N, C_v, H, W) network dtype, C_v = 2C (C without HAS_Y), dense, layout V_CL
    x_out_ptr,  # (N, C, H, W) fp32 new x, layout X_CL; may be x_ptr (in place)
    y_out_ptr,  # (N, C, H, W) fp32 new y, layout Y_CL; may be y_ptr (in place)
    next_ptr,  # (N, C_v, H, W) network dtype, layout NEXT_CL: [x; y] again; written if WRITE_NEXT
    C, HW, dt, y_scale,
    HAS_Y: tl.constexpr,
    EXACT_Y: tl.constexpr,  # y <- y * y_scale (2c) instead of (2b)
    WRITE_NEXT: tl.constexpr,
    X_CL: tl.constexpr, Y_CL: tl.constexpr, V_CL: tl.constexpr, NEXT_CL: tl.constexpr,
    ALIGNED: tl.constexpr,  # C * HW % 16 == 0 (checked by the launcher): sample bases are 16-byte aligned
    BLOCK: tl.constexpr,
):
    n = tl.program_id(1)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # in-sample index, walking x's memory order
    numel = C * HW  # elements of one sample of x
    x_base = n.to(tl.int64) * numel  # int64: N * C * H * W can pass 2**31
    if ALIGNED:  # tell the compiler, so accesses contiguous along i become 16-byte vectors
        numel = tl.multiple_of(numel, 16)
        x_base = tl.multiple_of(x_base, 16)
    mask = i < numel
    c, p = decode_index(i, C, HW, X_CL)
    if HAS_Y:
        C_v = 2 * C
        v_base = 2 * x_base
    else:
        C_v = C
        v_base = x_base

    x = tl.load(x_ptr + x_base + i, mask=mask, other=0.0)
    v_x = tl.load(v_ptr + v_base + walk_offset(i, c, p, C_v, 0, 0, HW, V_CL, X_CL), mask=mask, other=0.0)
    x_new = x - dt * v_x.to(tl.float32)  # (2a), fp32
    tl.store(x_out_ptr + x_base + i, x_new, mask=mask)
    if WRITE_NEXT:
        tl.store(next_ptr + v_base + walk_offset(i, c, p, C_v, 0, 0, HW, NEXT_CL, X_CL),
                 x_new.to(next_ptr.dtype.element_ty), mask=mask)

    if HAS_Y:
        if Y_CL == X_CL:
            y_offset = x_base + i
        else:
            y_offset = x_base + dense_offset(c, p, C, HW, Y_CL)
        y = tl.load(y_ptr + y_offset, mask=mask, other=0.0)
        if EXACT_Y:
            y_new = y * y_scale  # (2c)
        else:
            v_y = tl.load(v_ptr + v_base + walk_offset(i, c, p, C_v, C, numel, HW, V_CL, X_CL), mask=mask, other=0.0)
            y_new = y - dt * v_y.to(tl.float32)  # (2b)
        tl.store(y_out_ptr + y_offset, y_new, mask=mask)
        if WRITE_NEXT:
            tl.store(next_ptr + v_base + walk_offset(i, c, p, C_v, C, numel, HW, NEXT_CL, X_CL),
                     y_new.to(next_ptr.dtype.element_ty), mask=mask)


def _launch(x, y, v, dt, y_scale, x_out, y_out, next_input) -> None:
    N, C, H, W = x.shape
    HW = H * W
    has_y = y is not None
    grid = (cdiv(C * HW, BLOCK), N)
    _euler_step_kernel[grid](
        x, y if has_y else x, v, x_out, y_out if has_y else x_out,
        next_input if next_input is not None else v,  # dummy, never written without WRITE_NEXT
        C, HW, float(dt), float(y_scale) if y_scale is not None else 1.0,
        HAS_Y=has_y, EXACT_Y=y_scale is not None, WRITE_NEXT=next_input is not None,
        X_CL=is_channels_last(x), Y_CL=has_y and is_channels_last(y), V_CL=is_channels_last(v),
        NEXT_CL=next_input is not None and is_channels_last(next_input),
        ALIGNED=samples_aligned(C * HW), BLOCK=BLOCK, num_warps=NUM_WARPS,
    )
    record_launch("euler_step")


def _run_into(x, y, v, dt, y_scale, x_out, y_out, next_input) -> None:
    """Body of both registered ops: the kernel when it can run here, else the twin."""
    if x.numel() == 0:
        return
    if use_triton(x, y, v, x_out, y_out, next_input):
        # layouts the kernel addresses: x_out shares x's, y_out shares y's (checked by callers)
        x, y, v = as_dense_4d(x), (as_dense_4d(y) if y is not None else None), as_dense_4d(v)
        if is_channels_last(x_out) != is_channels_last(x) or (
                y is not None and is_channels_last(y_out) != is_channels_last(y)):
            raise ValueError("euler_step: x_out/y_out must have the layout of x/y")
        with on_device_of(x):
            _launch(x, y, v, dt, y_scale, x_out, y_out, next_input)
        return
    x_new, y_new = euler_update(x, y, v, dt, y_scale)  # (2a)-(2c), the reference sampler's update
    x_out.copy_(x_new)
    if y is not None:
        y_out.copy_(y_new)
    if next_input is not None:
        C = x.shape[1]
        next_input[:, :C].copy_(x_new)
        if y is not None:
            next_input[:, C:].copy_(y_new)


# ------------------------------------------------------------------------------------------------
# torch.library registration
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("resflow_fast::euler_step", mutates_args=())
def _euler_step_op(
    x: torch.Tensor, y: Optional[torch.Tensor], v: torch.Tensor, dt: float, y_scale: Optional[float],
) -> list[torch.Tensor]:
    """Functional form: returns [x_new] or [x_new, y_new]."""
    x = as_dense_4d(x)
    y = as_dense_4d(y) if y is not None else None
    x_out = empty_like_layout(x)
    y_out = empty_like_layout(y) if y is not None else None
    _run_into(x, y, v, dt, y_scale, x_out, y_out, None)
    return [x_out] if y is None else [x_out, y_out]


@_euler_step_op.register_fake
def _(x, y, v, dt, y_scale):
    x_out = empty_like_layout(x)
    return [x_out] if y is None else [x_out, empty_like_layout(y)]


@torch.library.custom_op("resflow_fast::euler_step_out", mutates_args=("x_out", "y_out", "next_input"))
def _euler_step_out_op(
    x: torch.Tensor, y: Optional[torch.Tensor], v: torch.Tensor, dt: float, y_scale: Optional[float],
    x_out: torch.Tensor, y_out: Optional[torch.Tensor], next_input: Optional[torch.Tensor],
) -> None:
    """Writes the new state into x_out, y_out (which may be x, y: in place) and, if given, the next
    network input [x; y] into next_input."""
    _run_into(x, y, v, dt, y_scale, x_out, y_out, next_input)


@_euler_step_out_op.register_fake
def _(x, y, v, dt, y_scale, x_out, y_out, next_input):
    return None


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
def _check_real(name, value, *, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")


def _validate(x, y, v, dt, inplace, next_input, y_scale):
    check_tensor("x", x, ndim=4, dtypes=(torch.float32,))
    N, C, H, W = x.shape
    if N > MAX_BATCH:
        raise ValueError(f"x has batch {N}; at most {MAX_BATCH} samples per call (CUDA grid axis 1)")
    C_v = 2 * C if y is not None else C
    if y is not None:
        check_tensor("y", y, ndim=4, dtypes=(torch.float32,))
        check_shape("y", y, tuple(x.shape))
    elif y_scale is not None:
        raise ValueError("y_scale moves y exactly along the schedule, but y is None (x-only state)")
    check_tensor("v", v, ndim=4)
    if tuple(v.shape) != (N, C_v, H, W):
        what = "2C channels for the state [x; y]" if y is not None else "C channels for an x-only state"
        raise ValueError(f"v must have shape {(N, C_v, H, W)} ({what}), got {tuple(v.shape)}")
    if C_v * H * W > MAX_SAMPLE_ELEMENTS:
        raise ValueError(f"v has {C_v * H * W} elements per sample; at most {MAX_SAMPLE_ELEMENTS} are supported")
    _check_real("dt", dt)
    if y_scale is not None:
        _check_real("y_scale", y_scale)
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    if inplace:
        for name, t in (("x", x), ("y", y)):
            if t is not None and not is_dense_4d(t):
                raise ValueError(f"inplace=True needs {name} contiguous or channels_last, got strides {t.stride()}")
    if next_input is not None:
        check_tensor("next_input", next_input, ndim=4)
        check_shape("next_input", next_input, (N, C_v, H, W))
        if not is_dense_4d(next_input):
            raise ValueError("next_input must be contiguous or channels_last, "
                             f"got strides {next_input.stride()} for shape {tuple(next_input.shape)}")
    check_same_device(x=x, y=y, v=v, next_input=next_input)


def euler_step_reference(
    x: torch.Tensor, y: Optional[torch.Tensor], v: torch.Tensor, dt: float, *,
    inplace: bool = False, next_input: Optional[torch.Tensor] = None, y_scale: Optional[float] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Pure-torch twin of :func:`euler_step` (equations (2a)-(2c) in fp32); CPU path and oracle."""
    _validate(x, y, v, dt, inplace, next_input, y_scale)
    x_new, y_new = euler_update(x, y, v, dt, y_scale)  # (2a)-(2c), the reference sampler's update
    if inplace:
        x_new = x.copy_(x_new)
        y_new = y.copy_(y_new) if y is not None else None
    if next_input is not None:
        C = x.shape[1]
        next_input[:, :C].copy_(x_new)
        if y is not None:
            next_input[:, C:].copy_(y_new)
    return x_new, y_new


def euler_step(
    x: torch.Tensor, y: Optional[torch.Tensor], v: torch.Tensor, dt: float, *,
    inplace: bool = False, next_input: Optional[torch.Tensor] = None, y_scale: Optional[float] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One Euler step of the sampler, equations (2a)-(2c) of this module, in one memory pass.

    Args:
        x: (N, C, H, W) fp32 state x (the image).
        y: (N, C, H, W) fp32 auxiliary state, or None for the ``x_only`` control.
        v: (N, 2C, H, W) network output [v_x; v_y] (N, C, H, W without y) in fp32, bf16 or fp16.
        dt: step size t_k - t_{k+1} (a runtime float; new values never recompile).
        inplace: write the new state into x and y (which must be contiguous or channels-last).
        next_input: optional (N, 2C, H, W) tensor, any supported dtype, contiguous or channels-last,
            that also receives the new [x; y] cast to its dtype: the next network input.
        y_scale: the named option (2c): y <- y * y_scale, with y_scale =
            ``Schedule.y_exact_scale(t, t_next)`` = sigma_y(t_next) / sigma_y(t); v's y half is then unused.

    Returns:
        (x_new, y_new): x and y themselves when ``inplace``; y_new is None without y. Each keeps
        its input's layout.
    """
    _validate(x, y, v, dt, inplace, next_input, y_scale)
    if needs_autograd(x, y, v):
        return euler_step_reference(x, y, v, dt, inplace=inplace, next_input=next_input, y_scale=y_scale)
    dt = float(dt)
    y_scale = None if y_scale is None else float(y_scale)
    v = as_dense_4d(v)
    if not inplace and next_input is None:
        out = torch.ops.resflow_fast.euler_step(x, y, v, dt, y_scale)
        return out[0], (out[1] if y is not None else None)
    if inplace:
        x_out, y_out = x, y
    else:
        x, y = as_dense_4d(x), (as_dense_4d(y) if y is not None else None)
        x_out, y_out = empty_like_layout(x), (empty_like_layout(y) if y is not None else None)
    torch.ops.resflow_fast.euler_step_out(x, y, v, dt, y_scale, x_out, y_out, next_input)
    return x_out, y_out
