"""``group_stats``: the GroupNorm statistics of an activation, in one Triton pass.

    mean[n, g] = mean of x[n, c, h, w] over the channels c of group g and all pixels
    rstd[n, g] = 1 / sqrt(var[n, g] + eps),   var the biased variance                      (1)

(the reference's ``group_norm_statistics``, which the twin calls). The fast U-Net needs them where
a fused conv's prologue normalises an activation that no conv epilogue described (after a
resampler, a skip concatenation or attention). The pass of :mod:`kernels._group_stats` reads the
activation once in its own dtype and accumulates in fp32 registers: no fp32 copy of the activation
is made. Inputs may be dense NCHW or NHWC; anything else is copied to NCHW first. Sizes and eps
are runtime arguments (a new image size never recompiles). When autograd would record through x,
the differentiable twin :func:`group_stats_reference` runs instead.
"""
import math

import torch

from ..reference.unet import group_norm_statistics
from ._group_stats import launch_statistics, pick_config, stats_split
from ._runtime import as_dense_4d, check_tensor, is_channels_last, needs_autograd, on_device_of, use_triton

# pixel indices inside the kernel are int32 and a tile may reach a block past the end
MAX_PIXELS = 2**30


def _run_into(x, num_groups, eps, mean, rstd) -> None:
    """Body of the registered op: the kernel when it can run here, else the twin."""
    if x.numel() == 0:
        return
    x = as_dense_4d(x)
    if use_triton(x, mean, rstd):
        N, C, H, W = x.shape
        cfg = pick_config(C, is_channels_last(x), on_gpu=x.is_cuda)
        with on_device_of(x):
            launch_statistics(x, num_groups, eps, cfg, stats_split(N, C, H * W, cfg), mean, rstd)
        return
    m, r = group_norm_statistics(x, num_groups, eps)
    mean.copy_(m)
    rstd.copy_(r)


def _new_outputs(x, num_groups):
    return [torch.empty((x.shape[0], num_groups), dtype=torch.float32, device=x.device) for _ in range(2)]


@torch.library.custom_op("resflow_fast::group_stats", mutates_args=())
def _group_stats_op(x: torch.Tensor, num_groups: int, eps: float) -> list[torch.Tensor]:
    """[mean, rstd], each (N, num_groups) fp32."""
    mean, rstd = _new_outputs(x, num_groups)
    _run_into(x, num_groups, eps, mean, rstd)
    return [mean, rstd]


@_group_stats_op.register_fake
def _(x, num_groups, eps):
    return _new_outputs(x, num_groups)


def _validate(x, num_groups, eps) -> None:
    check_tensor("x", x, ndim=4)
    N, C, H, W = x.shape
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if C % num_groups != 0:
        raise ValueError(f"x has C={C} channels, not divisible by num_groups={num_groups}")
    if H * W > MAX_PIXELS:
        raise ValueError(f"x has H*W={H * W} pixels per channel; at most {MAX_PIXELS} are supported")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")


def group_stats_reference(x: torch.Tensor, num_groups: int, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch twin of :func:`group_stats` (equation (1) through ``torch.var_mean`` on an fp32
    copy); differentiable; the CPU path and the test oracle."""
    _validate(x, num_groups, eps)
    return group_norm_statistics(x, num_groups, eps)


def group_stats(x: torch.Tensor, num_groups: int, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm statistics of ``x``, equation (1) of this module.

    Args:
        x: (N, C, H, W) fp32, bf16 or fp16; dense NCHW or channels-last (others are copied to NCHW).
        num_groups: G, dividing C.
        eps: added to the variance in rstd; any finite value > 0.

    Returns:
        (mean, rstd), each (N, G) fp32, as ``F.group_norm`` computes them (biased variance).
    """
    _validate(x, num_groups, eps)
    if needs_autograd(x):
        return group_stats_reference(x, num_groups, eps)
    mean, rstd = torch.ops.resflow_fast.group_stats(as_dense_4d(x), num_groups, float(eps))
    return mean, rstd
