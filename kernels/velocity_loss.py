"""The fused training piece: network input z_t and the lambda-weighted velocity loss with its gradient.

resflow-math.md, "Paths" and "Targets and loss". For a batch of pairs (HQ, LQ), noise eps and
per-sample times t_b:

    z_t = [x_t ; y_t],   x_t = alpha_x(t) HQ + sigma_x(t) LQ,   y_t = sigma_y(t) eps            (3)
    dz/dt = [d alpha_x/dt HQ + d sigma_x/dt LQ ; sigma_y'(t) eps]   (= [LQ - HQ ; sigma_y'(t) eps])  (4)
    L = mean_b [ lambda(t_b) * mean_{c,h,w} (v - dz/dt)^2 ]                                      (5)
    dL/dv = 2 lambda(t_b) / (N * M) * (v - dz/dt),   M = elements of one sample of v              (6)

The formulas live in ``reference/schedule.py`` and ``reference/losses.py``; this file never
re-derives them. The host asks the reference Schedule for the per-sample coefficients: sigma_y,
sigma_y' and lambda directly, and alpha_x, sigma_x and the x part of (4) by evaluating
``Schedule.x_t`` / ``Schedule.target_velocity`` on unit probes (both are linear in HQ and LQ, so
their values at unit inputs are the coefficients). The kernels then apply (3), or (4)-(6), per
element in one pass:

* ``training_input``: reads HQ, LQ, eps once, writes z_t in the network dtype and layout;
* ``weighted_velocity_loss``: reads v, HQ, LQ, eps once, writes per-program fp32 partial sums of
  lambda * (v - target)^2 (summed by a deterministic torch reduction, no atomics) and the gradient
  (6) in v's dtype, saved for backward; backward multiplies it by the incoming gradient.

The ``x_only`` schedule (no auxiliary) drops the y halves: z_t = x_t, v has C channels, eps unused.
"""
import math
from typing import Optional

import torch

from ..reference.losses import weighted_velocity_loss as reference_weighted_velocity_loss
from ..reference.schedule import Schedule
from ._runtime import (
    SUPPORTED_FLOAT_DTYPES,
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
    tl,
    triton,
    use_triton,
)

BLOCK = 2048
NUM_WARPS = 8
# in-sample indices are int32 (sample bases int64) and the last block reaches up to BLOCK past the end
MAX_SAMPLE_ELEMENTS = 2**31 - 1 - BLOCK
MAX_BATCH = 65535  # the batch is grid axis 1


# ------------------------------------------------------------------------------------------------
# Triton kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _same_sample_offset(i, c, p, C, HW, CL: tl.constexpr, ORDER_CL: tl.constexpr):
    """Offset of (c, p) in a dense (C, HW) sample of layout CL; just i when the layout is the one
    being walked (which keeps the access visibly contiguous for the compiler)."""
    if CL == ORDER_CL:
        offset = i
    else:
        offset = dense_offset(c, p, C, HW, CL)
    return offset


@triton.jit(do_not_specialize=["HW"])
def _training_input_kernel(
    hq_ptr,  # (N, C, H, W) any float dtype, dense, layout HQ_CL (the walk order)
    lq_ptr,  # (N, C, H, W) any float dtype, dense, layout LQ_CL
    eps_ptr,  # (N, C, H, W) any float dtype, dense, layout EPS_CL; read if HAS_Y
    coef_ptr,  # (N, 3) fp32: alpha_x(t_n), sigma_x(t_n), sigma_y(t_n)
    z_ptr,  # (N, C_z, H, W) out dtype, dense, layout Z_CL; C_z = 2C (C without HAS_Y)
    C, HW,
    HAS_Y: tl.constexpr,
    HQ_CL: tl.constexpr, LQ_CL: tl.constexpr, EPS_CL: tl.constexpr, Z_CL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(1)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < C * HW
    c, p = decode_index(i, C, HW, HQ_CL)
    if HAS_Y:
        C_z = 2 * C
    else:
        C_z = C
    base = n.to(tl.int64) * C * HW  # int64: N * C * H * W can pass 2**31
    z_base = n.to(tl.int64) * C_z * HW

    alpha_x = tl.load(coef_ptr + n * 3)
    sigma_x = tl.load(coef_ptr + n * 3 + 1)
    hq = tl.load(hq_ptr + base + i, mask=mask, other=0.0).to(tl.float32)
    lq = tl.load(lq_ptr + base + _same_sample_offset(i, c, p, C, HW, LQ_CL, HQ_CL), mask=mask, other=0.0)
    x_t = alpha_x * hq + sigma_x * lq.to(tl.float32)  # (3)
    tl.store(z_ptr + z_base + dense_offset(c, p, C_z, HW, Z_CL), x_t.to(z_ptr.dtype.element_ty), mask=mask)
    if HAS_Y:
        sigma_y = tl.load(coef_ptr + n * 3 + 2)
        eps = tl.load(eps_ptr + base + _same_sample_offset(i, c, p, C, HW, EPS_CL, HQ_CL), mask=mask, other=0.0)
        y_t = sigma_y * eps.to(tl.float32)  # (3)
        tl.store(z_ptr + z_base + dense_offset(c + C, p, C_z, HW, Z_CL), y_t.to(z_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["HW", "num_blocks", "grad_scale"])
def _velocity_loss_kernel(
    v_ptr,  # (N, C_v, H, W) network dtype, dense, layout V_CL; C_v = 2C (C without HAS_Y)
    hq_ptr,  # (N, C, H, W) any float dtype, dense, layout HQ_CL (the walk order)
    lq_ptr,  # (N, C, H, W) any float dtype, dense, layout LQ_CL
    eps_ptr,  # (N, C, H, W) any float dtype, dense, layout EPS_CL; read if HAS_Y
    coef_ptr,  # (N, 4) fp32: d alpha_x/dt, d sigma_x/dt, sigma_y'(t_n), lambda(t_n)
    grad_ptr,  # (N, C_v, H, W) fp32 in v's layout: dL/dv (6); written if WRITE_GRAD
    partial_ptr,  # (N, num_blocks) fp32 out: lambda(t_n) * sum of (v - target)^2 over this block
    C, HW, num_blocks, grad_scale,  # grad_scale = 2 / (N * C_v * H * W)
    HAS_Y: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    HQ_CL: tl.constexpr, LQ_CL: tl.constexpr, EPS_CL: tl.constexpr, V_CL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(1)
    block = tl.program_id(0)
    i = block * BLOCK + tl.arange(0, BLOCK)
    mask = i < C * HW
    c, p = decode_index(i, C, HW, HQ_CL)
    if HAS_Y:
        C_v = 2 * C
    else:
        C_v = C
    base = n.to(tl.int64) * C * HW
    v_base = n.to(tl.int64) * C_v * HW

    d_alpha_x = tl.load(coef_ptr + n * 4)
    d_sigma_x = tl.load(coef_ptr + n * 4 + 1)
    loss_weight = tl.load(coef_ptr + n * 4 + 3)
    hq = tl.load(hq_ptr + base + i, mask=mask, other=0.0).to(tl.float32)
    lq = tl.load(lq_ptr + base + _same_sample_offset(i, c, p, C, HW, LQ_CL, HQ_CL), mask=mask, other=0.0)
    v_x_offset = v_base + dense_offset(c, p, C_v, HW, V_CL)
    v_x = tl.load(v_ptr + v_x_offset, mask=mask, other=0.0).to(tl.float32)
    error_x = v_x - (d_alpha_x * hq + d_sigma_x * lq.to(tl.float32))  # v - dz/dt, x half (4)
    squared = error_x * error_x
    if WRITE_GRAD:
        grad_x = (grad_scale * loss_weight) * error_x  # (6)
        tl.store(grad_ptr + v_x_offset, grad_x.to(grad_ptr.dtype.element_ty), mask=mask)
    if HAS_Y:
        sigma_y_derivative = tl.load(coef_ptr + n * 4 + 2)
        eps = tl.load(eps_ptr + base + _same_sample_offset(i, c, p, C, HW, EPS_CL, HQ_CL), mask=mask, other=0.0)
        v_y_offset = v_base + dense_offset(c + C, p, C_v, HW, V_CL)
        v_y = tl.load(v_ptr + v_y_offset, mask=mask, other=0.0).to(tl.float32)
        error_y = v_y - sigma_y_derivative * eps.to(tl.float32)  # v - dz/dt, y half (4)
        squared += error_y * error_y
        if WRITE_GRAD:
            grad_y = (grad_scale * loss_weight) * error_y
            tl.store(grad_ptr + v_y_offset, grad_y.to(grad_ptr.dtype.element_ty), mask=mask)
    squared = tl.where(mask, squared, 0.0)
    tl.store(partial_ptr + n * num_blocks + block, loss_weight * tl.sum(squared, axis=0))


# ------------------------------------------------------------------------------------------------
# Coefficients from the reference schedule (host side, tiny (N,) tensors)
# ------------------------------------------------------------------------------------------------
def per_sample_time(t, batch: int, device: torch.device) -> torch.Tensor:
    """t as an (N,) fp32 tensor on ``device``: a float or 0-d tensor is shared by all samples."""
    if isinstance(t, torch.Tensor):
        if not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor, got {t.dtype}")
        if t.ndim == 0:
            t = t.expand(batch)
        elif tuple(t.shape) != (batch,):
            raise ValueError(f"t must be a float, a 0-d tensor or shape ({batch},), got {tuple(t.shape)}")
        return t.to(device=device, dtype=torch.float32)
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a float or a tensor, got {type(t).__name__}")
    if not math.isfinite(t):
        raise ValueError(f"t must be finite, got {t!r}")
    return torch.full((batch,), float(t), dtype=torch.float32, device=device)


def path_coefficients(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """(N, 3) fp32 ``[alpha_x(t), sigma_x(t), sigma_y(t)]`` of (3), read from the reference.

    ``Schedule.x_t`` is linear in (HQ, LQ), so its values at the unit probes (1, 0) and (0, 1) are
    alpha_x and sigma_x. sigma_y is 0 for ``x_only`` (unused there).
    """
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    alpha_x = schedule.x_t(one, zero, t)
    sigma_x = schedule.x_t(zero, one, t)
    sigma_y = schedule.sigma_y(t) if schedule.has_auxiliary else zero
    return torch.stack([alpha_x, sigma_x, sigma_y], dim=1).float().contiguous()


def target_coefficients(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """(N, 4) fp32 ``[d alpha_x/dt, d sigma_x/dt, sigma_y'(t), lambda(t)]`` of (4)-(5).

    The x half of ``Schedule.target_velocity`` is linear in (HQ, LQ); its values at unit probes
    are the coefficients (-1 and 1 for the straight path).
    """
    one, zero = torch.ones_like(t)[:, None], torch.zeros_like(t)[:, None]  # (N, 1) one-pixel probes
    eps_probe = zero if schedule.has_auxiliary else None
    d_alpha_x = schedule.target_velocity(one, zero, eps_probe, t)[:, 0]
    d_sigma_x = schedule.target_velocity(zero, one, eps_probe, t)[:, 0]
    sigma_y_derivative = schedule.sigma_y_derivative(t) if schedule.has_auxiliary else torch.zeros_like(t)
    return torch.stack([d_alpha_x, d_sigma_x, sigma_y_derivative, schedule.loss_weight(t)], dim=1).float().contiguous()


# ------------------------------------------------------------------------------------------------
# Launchers and twins at the coefficient level (the bodies of the registered ops)
# ------------------------------------------------------------------------------------------------
def _training_input_into(hq, lq, eps, coefficients, out) -> None:
    if out.numel() == 0:
        return
    hq, lq = as_dense_4d(hq), as_dense_4d(lq)
    eps = as_dense_4d(eps) if eps is not None else None
    if use_triton(hq, lq, eps, coefficients, out):
        N, C, H, W = hq.shape
        with on_device_of(hq):
            _training_input_kernel[(cdiv(C * H * W, BLOCK), N)](
                hq, lq, eps if eps is not None else hq, coefficients, out, C, H * W,
                HAS_Y=eps is not None, HQ_CL=is_channels_last(hq), LQ_CL=is_channels_last(lq),
                EPS_CL=eps is not None and is_channels_last(eps), Z_CL=is_channels_last(out),
                BLOCK=BLOCK, num_warps=NUM_WARPS,
            )
        record_launch("training_input")
    else:
        _training_input_twin(hq, lq, eps, coefficients, out)


def _training_input_twin(hq, lq, eps, coefficients, out) -> None:
    """(3) with torch ops from the same coefficients: the CPU path."""
    C = hq.shape[1]
    a = coefficients[:, :, None, None]  # (N, 3, 1, 1)
    out[:, :C].copy_(a[:, 0:1] * hq.float() + a[:, 1:2] * lq.float())
    if eps is not None:
        out[:, C:].copy_(a[:, 2:3] * eps.float())


def _velocity_loss_and_grad(v, hq, lq, eps, coefficients, compute_grad):
    """(loss, grad_v) by (5)-(6); grad_v is an empty (0,) tensor unless ``compute_grad``."""
    N = v.shape[0]
    grad_scale = 2.0 / v.numel() if v.numel() else 0.0
    v, hq, lq = as_dense_4d(v), as_dense_4d(hq), as_dense_4d(lq)
    eps = as_dense_4d(eps) if eps is not None else None
    # fp32 even for bf16/fp16 v: dL/dv is ~2/numel small (1e-7 at 3M elements), below fp16's
    # subnormals, and is scaled by grad_loss (a GradScaler's large factor) only in backward
    grad_v = empty_like_layout(v, dtype=torch.float32) if compute_grad else v.new_empty((0,))
    if v.numel() == 0:
        return v.new_full((), float("nan"), dtype=torch.float32), grad_v
    if use_triton(v, hq, lq, eps, coefficients):
        _, C, H, W = hq.shape
        num_blocks = cdiv(C * H * W, BLOCK)
        partials = torch.empty((N, num_blocks), dtype=torch.float32, device=v.device)
        with on_device_of(v):
            _velocity_loss_kernel[(num_blocks, N)](
                v, hq, lq, eps if eps is not None else hq, coefficients,
                grad_v if compute_grad else v, partials,
                C, H * W, num_blocks, grad_scale,
                HAS_Y=eps is not None, WRITE_GRAD=compute_grad,
                HQ_CL=is_channels_last(hq), LQ_CL=is_channels_last(lq),
                EPS_CL=eps is not None and is_channels_last(eps), V_CL=is_channels_last(v),
                BLOCK=BLOCK, num_warps=NUM_WARPS,
            )
        record_launch("velocity_loss")
        # a fixed-shape torch reduction: deterministic run to run, unlike atomics
        return partials.sum() * (0.5 * grad_scale), grad_v
    return _velocity_loss_twin(v, hq, lq, eps, coefficients, grad_scale, grad_v if compute_grad else None), grad_v


def _velocity_loss_twin(v, hq, lq, eps, coefficients, grad_scale, grad_v):
    """(4)-(6) with torch ops from the same coefficients (the CPU path); fills grad_v if given."""
    k = coefficients[:, :, None, None]  # (N, 4, 1, 1)
    target = k[:, 0:1] * hq.float() + k[:, 1:2] * lq.float()
    if eps is not None:
        target = torch.cat([target, k[:, 2:3] * eps.float()], dim=1)
    error = v.float() - target
    loss_weight = k[:, 3:4]
    loss = (loss_weight * error.square()).sum() * (0.5 * grad_scale)
    if grad_v is not None:
        grad_v.copy_(grad_scale * loss_weight * error)
    return loss


# ------------------------------------------------------------------------------------------------
# torch.library registration
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("resflow_fast::training_input", mutates_args=())
def _training_input_op(
    hq: torch.Tensor, lq: torch.Tensor, eps: Optional[torch.Tensor], coefficients: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """z_t (3) from per-sample coefficients (N, 3); layout of hq."""
    out = empty_like_layout(hq, dtype=out_dtype, channels=hq.shape[1] * (2 if eps is not None else 1))
    _training_input_into(hq, lq, eps, coefficients, out)
    return out


@_training_input_op.register_fake
def _(hq, lq, eps, coefficients, out_dtype):
    return empty_like_layout(hq, dtype=out_dtype, channels=hq.shape[1] * (2 if eps is not None else 1))


@torch.library.custom_op("resflow_fast::training_input_out", mutates_args=("out",))
def _training_input_out_op(
    hq: torch.Tensor, lq: torch.Tensor, eps: Optional[torch.Tensor], coefficients: torch.Tensor,
    out: torch.Tensor,
) -> None:
    _training_input_into(hq, lq, eps, coefficients, out)


@_training_input_out_op.register_fake
def _(hq, lq, eps, coefficients, out):
    return None


@torch.library.custom_op("resflow_fast::weighted_velocity_loss_fwd", mutates_args=())
def _weighted_velocity_loss_fwd_op(
    v: torch.Tensor, hq: torch.Tensor, lq: torch.Tensor, eps: Optional[torch.Tensor],
    coefficients: torch.Tensor, compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dL/dv) by (4)-(6) from per-sample coefficients (N, 4); dL/dv is empty unless compute_grad."""
    return _velocity_loss_and_grad(v, hq, lq, eps, coefficients, compute_grad)


@_weighted_velocity_loss_fwd_op.register_fake
def _(v, hq, lq, eps, coefficients, compute_grad):
    loss = v.new_empty((), dtype=torch.float32)
    return loss, (empty_like_layout(as_dense_4d(v), dtype=torch.float32) if compute_grad else v.new_empty((0,)))


class _WeightedVelocityLoss(torch.autograd.Function):
    """Loss (5) whose forward kernel also produces dL/dv (6); backward only rescales it."""

    @staticmethod
    def forward(ctx, v, hq, lq, eps, coefficients):
        loss, grad_v = torch.ops.resflow_fast.weighted_velocity_loss_fwd(v, hq, lq, eps, coefficients, True)
        ctx.save_for_backward(grad_v)
        ctx.v_dtype = v.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_v,) = ctx.saved_tensors  # fp32: scale first, round to v's dtype last
        return (grad_v * grad_loss).to(ctx.v_dtype), None, None, None, None


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
def _validate_images(hq, lq, eps, schedule):
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a reference Schedule, got {type(schedule).__name__}")
    check_tensor("hq", hq, ndim=4)
    check_tensor("lq", lq, ndim=4)
    check_shape("lq", lq, tuple(hq.shape))
    if schedule.has_auxiliary:
        if eps is None:
            raise ValueError(f"schedule {schedule.name!r} has an auxiliary y: eps is required")
        check_tensor("eps", eps, ndim=4)
        check_shape("eps", eps, tuple(hq.shape))
    N, C, H, W = hq.shape
    if N > MAX_BATCH:
        raise ValueError(f"hq has batch {N}; at most {MAX_BATCH} samples per call (CUDA grid axis 1)")
    if schedule.state_channels(C) * H * W > MAX_SAMPLE_ELEMENTS:
        raise ValueError(f"z_t would have {schedule.state_channels(C) * H * W} elements per sample; "
                         f"at most {MAX_SAMPLE_ELEMENTS} are supported")
    check_same_device(hq=hq, lq=lq, eps=eps if schedule.has_auxiliary else None)
    return eps if schedule.has_auxiliary else None  # x_only ignores eps, as the reference does


def training_input_reference(
    hq: torch.Tensor, lq: torch.Tensor, eps: Optional[torch.Tensor], t, schedule: Schedule,
    out_dtype: Optional[torch.dtype] = None, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Twin of :func:`training_input`: ``Schedule.z_t`` in fp32, cast to out_dtype."""
    eps = _validate_images(hq, lq, eps, schedule)
    out_dtype = _check_out(hq, schedule, out_dtype, out)
    t = per_sample_time(t, hq.shape[0], hq.device)
    z = schedule.z_t(hq.float(), lq.float(), eps.float() if eps is not None else None, t).to(out_dtype)
    if out is not None:
        return out.copy_(z)
    fmt = torch.channels_last if is_channels_last(hq) else torch.contiguous_format
    return z.contiguous(memory_format=fmt)


def _check_out(hq, schedule, out_dtype, out) -> torch.dtype:
    N, C, H, W = hq.shape
    if out_dtype is not None and out_dtype not in SUPPORTED_FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be one of float32, bfloat16, float16, got {out_dtype}")
    if out is None:
        return out_dtype or hq.dtype
    check_tensor("out", out, ndim=4)
    check_shape("out", out, (N, schedule.state_channels(C), H, W))
    if out_dtype is not None and out.dtype != out_dtype:
        raise TypeError(f"out has dtype {out.dtype} but out_dtype={out_dtype}")
    if not is_dense_4d(out):
        raise ValueError(f"out must be contiguous or channels_last, got strides {out.stride()}")
    check_same_device(hq=hq, out=out)
    return out.dtype


def training_input(
    hq: torch.Tensor, lq: torch.Tensor, eps: Optional[torch.Tensor], t, schedule: Schedule,
    out_dtype: Optional[torch.dtype] = None, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The network input ``z_t = [x_t ; y_t]`` of equation (3), in one pass.

    Args:
        hq, lq: (N, C, H, W) clean and degraded images, fp32/bf16/fp16, contiguous or channels-last.
        eps: (N, C, H, W) auxiliary noise; ignored (may be None) for the ``x_only`` schedule.
        t: per-sample times, an (N,) tensor, or one float / 0-d tensor for the whole batch.
        schedule: the reference :class:`Schedule` (its coefficients are computed on the host).
        out_dtype: dtype of z_t (default hq's); out: optional (N, 2C, H, W) tensor to write into
            (contiguous or channels-last), else a new tensor in hq's layout.

    Returns:
        (N, 2C, H, W) z_t ((N, C, H, W) for ``x_only``). Not differentiable (training data).
    """
    eps = _validate_images(hq, lq, eps, schedule)
    out_dtype = _check_out(hq, schedule, out_dtype, out)
    coefficients = path_coefficients(schedule, per_sample_time(t, hq.shape[0], hq.device))
    if out is None:
        return torch.ops.resflow_fast.training_input(hq, lq, eps, coefficients, out_dtype)
    torch.ops.resflow_fast.training_input_out(hq, lq, eps, coefficients, out)
    return out


def _validate_v(v, hq, schedule):
    check_tensor("v", v, ndim=4)
    N, C, H, W = hq.shape
    check_shape("v", v, (N, schedule.state_channels(C), H, W))
    check_same_device(hq=hq, v=v)


def weighted_velocity_loss_reference(
    v: torch.Tensor, hq: torch.Tensor, lq: torch.Tensor, eps: Optional[torch.Tensor], t, schedule: Schedule,
) -> torch.Tensor:
    """Twin of :func:`weighted_velocity_loss`: the reference loss (``reference/losses.py``) of the
    reference target ``Schedule.target_velocity``, in fp32, differentiated by autograd."""
    eps = _validate_images(hq, lq, eps, schedule)
    _validate_v(v, hq, schedule)
    t = per_sample_time(t, hq.shape[0], hq.device)
    target = schedule.target_velocity(hq.float(), lq.float(), eps.float() if eps is not None else None, t)
    return reference_weighted_velocity_loss(v, target, t, schedule)


def weighted_velocity_loss(
    v: torch.Tensor, hq: torch.Tensor, lq: torch.Tensor, eps: Optional[torch.Tensor], t, schedule: Schedule,
) -> torch.Tensor:
    """The lambda(t)-weighted velocity-matching loss (5), with dL/dv (6) from the same pass.

    Args:
        v: (N, 2C, H, W) network output (N, C, H, W for ``x_only``), fp32/bf16/fp16.
        hq, lq, eps, t, schedule: as for :func:`training_input`.

    Returns:
        A 0-d fp32 loss. When v requires grad, its gradient (in v's dtype) was computed by the
        forward kernel and backward only scales it. hq, lq, eps are data: when one of them requires
        grad the differentiable twin :func:`weighted_velocity_loss_reference` runs instead.
    """
    eps = _validate_images(hq, lq, eps, schedule)
    _validate_v(v, hq, schedule)
    coefficients = target_coefficients(schedule, per_sample_time(t, hq.shape[0], hq.device))
    if needs_autograd(hq, lq, eps):
        return weighted_velocity_loss_reference(v, hq, lq, eps, t, schedule)
    if needs_autograd(v):
        return _WeightedVelocityLoss.apply(v, hq, lq, eps, coefficients)
    loss, _ = torch.ops.resflow_fast.weighted_velocity_loss_fwd(v, hq, lq, eps, coefficients, False)
    return loss
