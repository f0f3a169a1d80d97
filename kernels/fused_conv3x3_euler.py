"""``fused_conv3x3_euler``: the U-Net's output conv and the sampler's Euler step as one kernel.

The output conv computes the velocity v; its epilogue moves the fp32 state in place and writes
the next network input, so neither v nor a separate :func:`euler_step` pass touches memory
(docs/design/architecture.md, "The fusion plan", items 3 and 5; docs/design/math.md, "Sampling"):

    v = conv3x3(SiLU(A * h + B)) + bias          stride 1, v kept in fp32                     (1)
    x <- x - dt * v[:, :C]                                                                     (2)
    y <- y - dt * v[:, C:]   or   y <- y * y_scale    (the exact-y option)                      (3)
    next_input <- [x; y]                              (cast to next_input's dtype)              (4)

(1) is the implicit GEMM of :mod:`kernels._conv3x3_common` with the output norm folded into its
prologue; (2)-(3) are equations (2a)-(2c) of :mod:`kernels.euler_step`. Output channel o < C
moves x[o], the others y[o - C]; each state element is read and written by the program that owns
its velocity element, so the update in place is safe. Inference only: when autograd would record
through any input, the twin :func:`fused_conv3x3_euler_reference` runs.
"""
from typing import Optional

import torch

from ._conv3x3_common import (
    as_4d_weight,
    channels_last,
    check_finite_number,
    conv3x3_accumulate,
    conv3x3_fp32,
    conv_tile,
    pack_conv3x3_weight,
    plan_launch,
    shares_memory,
    unpack_conv3x3_weight,
    validate_conv,
)
from ._runtime import (
    check_same_device,
    check_shape,
    check_tensor,
    needs_autograd,
    on_device_of,
    record_launch,
    tl,
    triton,
    use_triton,
)
from .euler_step import euler_step_reference


@triton.jit(do_not_specialize=["H", "W", "num_m_tiles", "tiles_w", "dt", "y_scale"])
def _fused_conv3x3_euler_kernel(
    h_ptr,  # (N, H, W, C_in) dense NHWC activation entering the output norm
    w_ptr,  # (9 * C_in, C_out) packed weight in h's dtype
    h_desc,  # USE_TMA: tensor descriptor of h as (N, H, W, C_in)
    w_desc,  # USE_TMA: tensor descriptor of the weight as (9, C_in, C_out)
    bias_ptr,  # (C_out,) fp32; read if HAS_BIAS
    pro_a_ptr,  # (N, C_in) fp32 contiguous: A of (1); read if HAS_PROLOGUE
    pro_b_ptr,  # (N, C_in) fp32 contiguous: B of (1); read if HAS_PROLOGUE
    state_x_ptr,  # (N, H, W, C_state) fp32 dense NHWC state x, updated in place
    state_y_ptr,  # (N, H, W, C_state) fp32 dense NHWC state y, updated in place; if HAS_Y
    next_ptr,  # (N, H, W, C_out) dense NHWC, any float dtype: the next [x; y]; if WRITE_NEXT
    C_in, C_out, H, W, num_m_tiles, num_n_tiles, tiles_w, C_state, dt, y_scale,
    HAS_BIAS: tl.constexpr,
    HAS_PROLOGUE: tl.constexpr,
    HAS_Y: tl.constexpr,  # the state has y (channels C_state.. of the output are v_y)
    EXACT_Y: tl.constexpr,  # y <- y * y_scale instead of y - dt * v_y
    WRITE_NEXT: tl.constexpr,
    IEEE_FP32: tl.constexpr,
    UPCAST_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_TMA: tl.constexpr,  # the tiling flags of kernels._conv3x3_common.ConvPlan
    HALO: tl.constexpr,
    TILED_2D: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    HALO_M: tl.constexpr,
):
    pid = tl.program_id(0)
    n32, m_tile, n_tile, oh_first, ow_first, oh, ow, p, p_mask, co = conv_tile(
        pid, num_m_tiles, num_n_tiles, tiles_w, H, W, BLOCK_M, BLOCK_N, TILED_2D, TILE_H, TILE_W)
    co_mask = co < C_out
    acc = conv3x3_accumulate(h_ptr, w_ptr, h_desc, w_desc, pro_a_ptr, pro_b_ptr,
                             n32, oh_first, ow_first, oh, ow, p_mask, n_tile, co, co_mask, C_in, C_out, H, W,
                             1, HAS_PROLOGUE, USE_TMA, HALO, IEEE_FP32, UPCAST_BF16,
                             BLOCK_M, BLOCK_N, BLOCK_K, TILE_H, TILE_W, HALO_M)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_mask, other=0.0)[None, :]
    # acc is the velocity v = [v_x; v_y] in fp32 (never rounded to the activation dtype)
    out_row = n32.to(tl.int64) * H * W + p
    out_mask = p_mask[:, None] & co_mask[None, :]
    is_x = co < C_state
    state_offsets = out_row[:, None] * C_state + co[None, :]
    x_mask = out_mask & is_x[None, :]
    x_new = tl.load(state_x_ptr + state_offsets, mask=x_mask, other=0.0) - dt * acc  # (2)
    tl.store(state_x_ptr + state_offsets, x_new, mask=x_mask)
    z_new = x_new
    if HAS_Y:
        y_mask = out_mask & (co >= C_state)[None, :]
        y_offsets = state_offsets - C_state  # negative for x channels: masked, never dereferenced
        y_old = tl.load(state_y_ptr + y_offsets, mask=y_mask, other=0.0)
        if EXACT_Y:
            y_new = y_old * y_scale
        else:
            y_new = y_old - dt * acc  # (3)
        tl.store(state_y_ptr + y_offsets, y_new, mask=y_mask)
        z_new = tl.where(is_x[None, :], x_new, y_new)
    if WRITE_NEXT:
        tl.store(next_ptr + out_row[:, None] * C_out + co[None, :], z_new.to(next_ptr.dtype.element_ty),
                 mask=out_mask)  # (4)


def _launch(h, packed_weight, bias, pro_a, pro_b, x, y, next_input, dt, y_scale) -> None:
    """Run the kernel on validated tensors (h dense NHWC, the state channels-last)."""
    N, C_in, H, W = h.shape
    C_out = packed_weight.shape[1]
    plan = plan_launch(h, packed_weight, 1, H, W, has_prologue=pro_a is not None)
    _fused_conv3x3_euler_kernel[(plan.programs(N),)](
        h, packed_weight, plan.x_desc, plan.w_desc,
        bias if bias is not None else x,  # dummies when absent: the constexpr flags skip them
        pro_a if pro_a is not None else x, pro_b if pro_b is not None else x,
        x, y if y is not None else x, next_input if next_input is not None else x,
        C_in, C_out, H, W, plan.num_m_tiles, plan.num_n_tiles, plan.tiles_w,
        x.shape[1], float(dt), float(y_scale) if y_scale is not None else 1.0,
        HAS_BIAS=bias is not None, HAS_PROLOGUE=pro_a is not None, HAS_Y=y is not None,
        EXACT_Y=y_scale is not None, WRITE_NEXT=next_input is not None,
        **plan.kernel_flags(h),
    )
    record_launch("fused_conv3x3_euler")
    if plan.use_tma:
        record_launch("fused_conv3x3_tma")


def _run_into(h, packed_weight, bias, pro_a, pro_b, x, y, next_input, dt, y_scale) -> None:
    """Body of the registered op: the kernel when it can run here, else the twin's math."""
    if x.numel() == 0:
        return
    h = channels_last(h)
    if use_triton(h, packed_weight, bias, pro_a, pro_b, x, y, next_input):
        with on_device_of(h):
            _launch(h, packed_weight, bias, pro_a, pro_b, x, y, next_input, dt, y_scale)
        return
    v = conv3x3_fp32(h, unpack_conv3x3_weight(packed_weight), bias, 1, pro_a, pro_b)
    euler_step_reference(x, y, v, dt, inplace=True, next_input=next_input, y_scale=y_scale)


@torch.library.custom_op("resflow_fast::fused_conv3x3_euler", mutates_args=("x", "y", "next_input"))
def _fused_conv3x3_euler_op(
    h: torch.Tensor, packed_weight: torch.Tensor, bias: Optional[torch.Tensor],
    prologue_a: Optional[torch.Tensor], prologue_b: Optional[torch.Tensor],
    x: torch.Tensor, y: Optional[torch.Tensor], next_input: Optional[torch.Tensor], dt: float,
    y_scale: Optional[float],
) -> None:
    """Updates the fp32 state x (and y) in place from the conv's velocity, and writes next_input."""
    _run_into(h, packed_weight, bias, prologue_a, prologue_b, x, y, next_input, dt, y_scale)


@_fused_conv3x3_euler_op.register_fake
def _(h, packed_weight, bias, prologue_a, prologue_b, x, y, next_input, dt, y_scale):
    return None


def _validate(h, weight, bias, prologue, x, y, dt, y_scale, next_input):
    """The conv's checks (stride 1) plus the state's."""
    C_out, pro_a, pro_b = validate_conv(h, weight, bias, 1, prologue)
    N, _, H, W = h.shape
    check_tensor("x", x, ndim=4, dtypes=(torch.float32,))
    C_state = x.shape[1]
    expected_c_out = 2 * C_state if y is not None else C_state
    if C_out != expected_c_out:
        what = "2C for the state [x; y]" if y is not None else "C for an x-only state"
        raise ValueError(f"the conv has C_out={C_out} outputs but the velocity of a state with x of "
                         f"{C_state} channels{' and y' if y is not None else ''} has {expected_c_out} ({what})")
    check_shape("x", x, (N, C_state, H, W))
    if y is not None:
        check_tensor("y", y, ndim=4, dtypes=(torch.float32,))
        check_shape("y", y, tuple(x.shape))
    elif y_scale is not None:
        raise ValueError("y_scale moves y exactly along the schedule, but y is None (x-only state)")
    if next_input is not None:
        check_tensor("next_input", next_input, ndim=4)
        check_shape("next_input", next_input, (N, C_out, H, W))
    # updated in place through NHWC addressing: the state and next_input must be dense NHWC
    for name, t in (("x", x), ("y", y), ("next_input", next_input)):
        if t is not None and not t.is_contiguous(memory_format=torch.channels_last):
            raise ValueError(f"{name} must be channels_last (dense NHWC) to be updated in place, "
                             f"got strides {t.stride()} for shape {tuple(t.shape)}")
    written = [("x", x), ("y", y), ("next_input", next_input)]
    for i, (name, t) in enumerate(written):
        if t is None:
            continue
        for other_name, other in [("h", h), ("weight", weight)] + written[i + 1:]:
            if shares_memory(t, other):
                raise ValueError(f"{name} must not share memory with {other_name}")
    check_finite_number("dt", dt)
    if y_scale is not None:
        check_finite_number("y_scale", y_scale)
    check_same_device(h=h, weight=weight, bias=bias, prologue_A=pro_a, prologue_B=pro_b, x=x, y=y,
                      next_input=next_input)
    return pro_a, pro_b


def fused_conv3x3_euler_reference(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
    prologue: Optional[tuple] = None, x: torch.Tensor, y: Optional[torch.Tensor] = None, dt: float,
    y_scale: Optional[float] = None, next_input: Optional[torch.Tensor] = None,
):
    """Pure-torch twin of :func:`fused_conv3x3_euler`: the conv (1) in fp32, then
    :func:`euler_step_reference` with that fp32 velocity. Same arguments and returns."""
    pro_a, pro_b = _validate(h, weight, bias, prologue, x, y, dt, y_scale, next_input)
    v = conv3x3_fp32(h, as_4d_weight(weight), bias, 1, pro_a, pro_b)
    return euler_step_reference(x, y, v, float(dt), inplace=True, next_input=next_input,
                                y_scale=None if y_scale is None else float(y_scale))


def fused_conv3x3_euler(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
    prologue: Optional[tuple] = None, x: torch.Tensor, y: Optional[torch.Tensor] = None, dt: float,
    y_scale: Optional[float] = None, next_input: Optional[torch.Tensor] = None,
):
    """The output conv and one Euler step, equations (1)-(4) of this module.

    Args:
        h: (N, C_in, H, W) activation entering the output norm, as x of :func:`fused_conv3x3`.
        weight, bias, prologue: as for :func:`fused_conv3x3`; C_out = 2C (C without y).
        x: (N, C, H, W) fp32 state, channels-last; updated in place.
        y: (N, C, H, W) fp32 auxiliary state, channels-last, updated in place; None for x-only.
        dt: the step t_k - t_{k+1} (a runtime float, never recompiles).
        y_scale: sigma_y(t_next) / sigma_y(t) (``Schedule.y_exact_scale``) to move y exactly instead.
        next_input: optional (N, C_out, H, W) channels-last tensor of any float dtype that receives
            the new [x; y]: the next network input. h may not share memory with it or the state.

    Returns:
        (x, y): the updated state tensors themselves (y None without y).

    The velocity is not rounded to the activation dtype before the update (the unfused path rounds
    it once, to the dtype of the conv's output).
    """
    pro_a, pro_b = _validate(h, weight, bias, prologue, x, y, dt, y_scale, next_input)
    if needs_autograd(h, weight, bias, pro_a, pro_b, x, y):
        return fused_conv3x3_euler_reference(h, weight, bias, prologue=prologue, x=x, y=y, dt=dt,
                                             y_scale=y_scale, next_input=next_input)
    h = channels_last(h)
    packed = weight if weight.ndim == 2 else pack_conv3x3_weight(weight, h.dtype)
    total_bias = bias.float().contiguous() if bias is not None else None
    if pro_a is not None:
        pro_a, pro_b = pro_a.contiguous(), pro_b.contiguous()
    torch.ops.resflow_fast.fused_conv3x3_euler(h, packed, total_bias, pro_a, pro_b, x, y, next_input, float(dt),
                                               None if y_scale is None else float(y_scale))
    return x, y
