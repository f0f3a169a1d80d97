"""``training_input``: the network input z_t of a training step, in one pass.

docs/design/math.md, "Paths". For a batch of pairs (HQ, LQ), noise eps and per-sample times t_b:

    z_t = [x_t ; y_t],   x_t = alpha_x(t) HQ + sigma_x(t) LQ,   y_t = sigma_y(t) eps            (3)

The host asks the reference ``Schedule`` for the per-sample coefficients: sigma_y directly, and
alpha_x, sigma_x by evaluating ``Schedule.x_t`` on unit probes (it is linear in HQ and LQ, so its
values at unit inputs are the coefficients). The kernel reads HQ, LQ, eps once and writes z_t in
the network dtype and layout. The ``x_only`` schedule (no auxiliary) drops the y half: z_t = x_t.
(The tags (3)-(6) are shared with :mod:`kernels.weighted_velocity_loss`.)
"""
from typing import Optional

import torch

from ..reference.schedule import Schedule
from ._runtime import (
    SUPPORTED_FLOAT_DTYPES,
    as_dense_4d,
    cdiv,
    check_same_device,
    check_shape,
    check_tensor,
    decode_index,
    empty_like_layout,
    is_channels_last,
    is_dense_4d,
    on_device_of,
    record_launch,
    samples_aligned,
    tl,
    triton,
    use_triton,
    walk_offset,
)
from ._training_common import BLOCK, NUM_WARPS, per_sample_time, same_sample_offset, validate_images


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
    ALIGNED: tl.constexpr,  # C * HW % 16 == 0 (checked by the launcher): sample bases are 16-byte aligned
    BLOCK: tl.constexpr,
):
    n = tl.program_id(1)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    numel = C * HW  # elements of one sample of hq
    base = n.to(tl.int64) * numel  # int64: N * C * H * W can pass 2**31
    if ALIGNED:  # tell the compiler, so accesses contiguous along i become 16-byte vectors
        numel = tl.multiple_of(numel, 16)
        base = tl.multiple_of(base, 16)
    mask = i < numel
    c, p = decode_index(i, C, HW, HQ_CL)
    if HAS_Y:
        C_z = 2 * C
        z_base = 2 * base
    else:
        C_z = C
        z_base = base

    alpha_x = tl.load(coef_ptr + n * 3)
    sigma_x = tl.load(coef_ptr + n * 3 + 1)
    hq = tl.load(hq_ptr + base + i, mask=mask, other=0.0).to(tl.float32)
    lq = tl.load(lq_ptr + base + same_sample_offset(i, c, p, C, HW, LQ_CL, HQ_CL), mask=mask, other=0.0)
    x_t = alpha_x * hq + sigma_x * lq.to(tl.float32)  # (3)
    tl.store(z_ptr + z_base + walk_offset(i, c, p, C_z, 0, 0, HW, Z_CL, HQ_CL), x_t.to(z_ptr.dtype.element_ty),
             mask=mask)
    if HAS_Y:
        sigma_y = tl.load(coef_ptr + n * 3 + 2)
        eps = tl.load(eps_ptr + base + same_sample_offset(i, c, p, C, HW, EPS_CL, HQ_CL), mask=mask, other=0.0)
        y_t = sigma_y * eps.to(tl.float32)  # (3)
        tl.store(z_ptr + z_base + walk_offset(i, c, p, C_z, C, numel, HW, Z_CL, HQ_CL),
                 y_t.to(z_ptr.dtype.element_ty), mask=mask)


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
                ALIGNED=samples_aligned(C * H * W), BLOCK=BLOCK, num_warps=NUM_WARPS,
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


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
def training_input_reference(
    hq: torch.Tensor, lq: torch.Tensor, eps: Optional[torch.Tensor], t, schedule: Schedule,
    out_dtype: Optional[torch.dtype] = None, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Twin of :func:`training_input`: ``Schedule.z_t`` in fp32, cast to out_dtype."""
    eps = validate_images(hq, lq, eps, schedule)
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
    eps = validate_images(hq, lq, eps, schedule)
    out_dtype = _check_out(hq, schedule, out_dtype, out)
    coefficients = path_coefficients(schedule, per_sample_time(t, hq.shape[0], hq.device))
    if out is None:
        return torch.ops.resflow_fast.training_input(hq, lq, eps, coefficients, out_dtype)
    torch.ops.resflow_fast.training_input_out(hq, lq, eps, coefficients, out)
    return out
