"""What :mod:`kernels.training_input` and :mod:`kernels.weighted_velocity_loss` share: the per-sample
times, the checks of a training pair (HQ, LQ, eps), the size limits and the addressing of tensors
that are read in the walk order of HQ.

Both ops take their per-sample coefficients from the reference ``Schedule`` on the host (tiny (N,)
tensors) and apply them per element on the device; the formulas live in ``reference/schedule.py``
and ``reference/losses.py``, never here.
"""
import math

import torch

from ..reference.schedule import Schedule
from ._runtime import check_same_device, check_shape, check_tensor, dense_offset, tl, triton

BLOCK = 2048  # elements per program
NUM_WARPS = 8
# in-sample indices are int32 (sample bases int64) and the last block reaches up to BLOCK past the end
MAX_SAMPLE_ELEMENTS = 2**31 - 1 - BLOCK
MAX_BATCH = 65535  # the batch is grid axis 1


@triton.jit
def same_sample_offset(i, c, p, C, HW, CL: tl.constexpr, ORDER_CL: tl.constexpr):
    """Offset of (c, p) in a dense (C, HW) sample of layout CL; just i when the layout is the one
    being walked (which keeps the access visibly contiguous for the compiler)."""
    if CL == ORDER_CL:
        offset = i
    else:
        offset = dense_offset(c, p, C, HW, CL)
    return offset


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


def validate_images(hq, lq, eps, schedule):
    """Check a training pair and its noise; returns eps, or None for ``x_only`` (which ignores it,
    as the reference does)."""
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
    return eps if schedule.has_auxiliary else None
