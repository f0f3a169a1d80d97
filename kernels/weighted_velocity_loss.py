"""``weighted_velocity_loss``: the lambda-weighted velocity-matching loss and its gradient in one pass.

docs/design/math.md, "Targets and loss". With z_t as in :mod:`kernels.training_input` (3):

    dz/dt = [d alpha_x/dt HQ + d sigma_x/dt LQ ; sigma_y'(t) eps]   (= [LQ - HQ ; sigma_y'(t) eps])  (4)
    L = mean_b [ lambda(t_b) * mean_{c,h,w} (v - dz/dt)^2 ]                                      (5)
    dL/dv = 2 lambda(t_b) / (N * M) * (v - dz/dt),   M = elements of one sample of v              (6)

The host asks the reference ``Schedule`` for the per-sample coefficients: sigma_y' and lambda
directly, and the x part of (4) by evaluating ``Schedule.target_velocity`` on unit probes (it is
linear in HQ and LQ). The kernel reads v, HQ, LQ, eps once, writes per-program fp32 partial sums of
lambda * (v - target)^2 (summed by a deterministic torch reduction, no atomics) and the gradient
(6), saved for backward, which only multiplies it by the incoming gradient. The ``x_only``
schedule drops the y halves: v has C channels, eps is unused.
"""
from typing import Optional

import torch

from ..reference.losses import weighted_velocity_loss as reference_weighted_velocity_loss
from ..reference.schedule import Schedule
from ._runtime import (
    as_dense_4d,
    cdiv,
    check_same_device,
    check_shape,
    check_tensor,
    decode_index,
    empty_like_layout,
    is_channels_last,
    needs_autograd,
    on_device_of,
    record_launch,
    samples_aligned,
    tl,
    triton,
    use_triton,
    walk_offset,
)
from ._training_common import BLOCK, NUM_WARPS, per_sample_time, same_sample_offset, validate_images


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
    ALIGNED: tl.constexpr,  # C * HW % 16 == 0 (checked by the launcher): sample bases are 16-byte aligned
    BLOCK: tl.constexpr,
):
    n = tl.program_id(1)
    block = tl.program_id(0)
    i = block * BLOCK + tl.arange(0, BLOCK)
    numel = C * HW  # elements of one sample of hq
    base = n.to(tl.int64) * numel  # int64: N * C * H * W can pass 2**31
    if ALIGNED:  # tell the compiler, so accesses contiguous along i become 16-byte vectors
        numel = tl.multiple_of(numel, 16)
        base = tl.multiple_of(base, 16)
    mask = i < numel
    c, p = decode_index(i, C, HW, HQ_CL)
    if HAS_Y:
        C_v = 2 * C
        v_base = 2 * base
    else:
        C_v = C
        v_base = base

    d_alpha_x = tl.load(coef_ptr + n * 4)
    d_sigma_x = tl.load(coef_ptr + n * 4 + 1)
    loss_weight = tl.load(coef_ptr + n * 4 + 3)
    hq = tl.load(hq_ptr + base + i, mask=mask, other=0.0).to(tl.float32)
    lq = tl.load(lq_ptr + base + same_sample_offset(i, c, p, C, HW, LQ_CL, HQ_CL), mask=mask, other=0.0)
    v_x_offset = v_base + walk_offset(i, c, p, C_v, 0, 0, HW, V_CL, HQ_CL)
    v_x = tl.load(v_ptr + v_x_offset, mask=mask, other=0.0).to(tl.float32)
    error_x = v_x - (d_alpha_x * hq + d_sigma_x * lq.to(tl.float32))  # v - dz/dt, x half (4)
    squared = error_x * error_x
    if WRITE_GRAD:
        grad_x = (grad_scale * loss_weight) * error_x  # (6)
        tl.store(grad_ptr + v_x_offset, grad_x.to(grad_ptr.dtype.element_ty), mask=mask)
    if HAS_Y:
        sigma_y_derivative = tl.load(coef_ptr + n * 4 + 2)
        eps = tl.load(eps_ptr + base + same_sample_offset(i, c, p, C, HW, EPS_CL, HQ_CL), mask=mask, other=0.0)
        v_y_offset = v_base + walk_offset(i, c, p, C_v, C, numel, HW, V_CL, HQ_CL)
        v_y = tl.load(v_ptr + v_y_offset, mask=mask, other=0.0).to(tl.float32)
        error_y = v_y - sigma_y_derivative * eps.to(tl.float32)  # v - dz/dt, y half (4)
        squared += error_y * error_y
        if WRITE_GRAD:
            grad_y = (grad_scale * loss_weight) * error_y
            tl.store(grad_ptr + v_y_offset, grad_y.to(grad_ptr.dtype.element_ty), mask=mask)
    squared = tl.where(mask, squared, 0.0)
    tl.store(partial_ptr + n * num_blocks + block, loss_weight * tl.sum(squared, axis=0))


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
                ALIGNED=samples_aligned(C * H * W), BLOCK=BLOCK, num_warps=NUM_WARPS,
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
    eps = validate_images(hq, lq, eps, schedule)
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
    eps = validate_images(hq, lq, eps, schedule)
    _validate_v(v, hq, schedule)
    coefficients = target_coefficients(schedule, per_sample_time(t, hq.shape[0], hq.device))
    if needs_autograd(hq, lq, eps):
        return weighted_velocity_loss_reference(v, hq, lq, eps, t, schedule)
    if needs_autograd(v):
        return _WeightedVelocityLoss.apply(v, hq, lq, eps, coefficients)
    loss, _ = torch.ops.resflow_fast.weighted_velocity_loss_fwd(v, hq, lq, eps, coefficients, False)
    return loss
