"""Fast pieces for training loops: the fused velocity-matching loss and a fast validation sampler.

Both keep the reference signatures, so they plug into
:class:`resflow_fast.reference.train.Trainer` (``loss_fn=``, ``sample_fn=``) or any user loop:

    loss = fused_velocity_matching_loss(model, hq, lq, t, eps, schedule)   # same value as the reference
    restored = fast_sample(model, lq, steps=4, seed=0, schedule=schedule)
"""
from __future__ import annotations

import torch

from .kernels import training_input, weighted_velocity_loss
from .reference.schedule import Schedule
from .sampler import ResFlowSampler


def fused_velocity_matching_loss(model, hq: torch.Tensor, lq: torch.Tensor, t: torch.Tensor,
                                 eps: torch.Tensor | None, schedule: Schedule) -> torch.Tensor:
    """:func:`resflow_fast.reference.losses.velocity_matching_loss` with two fused passes: one
    builds z_t = [x_t; y_t], one computes the lambda(t)-weighted loss and its gradient w.r.t. v.

    Under autocast the network input is made in the autocast dtype directly, unless the network
    reads its input in fp32 (``UNet.fp32_ends``, which the trainer sets when it uses autocast)."""
    network = getattr(model, "module", model)  # DistributedDataParallel holds the network as .module
    lowered = torch.is_autocast_enabled(hq.device.type) and not getattr(network, "fp32_ends", False)
    dtype = torch.get_autocast_dtype(hq.device.type) if lowered else hq.dtype
    z_t = training_input(hq, lq, eps, t, schedule, out_dtype=dtype)
    return weighted_velocity_loss(model(z_t, t), hq, lq, eps, t, schedule)


def fast_sample(model, lq: torch.Tensor, steps: int = 4, seed: int = 0, schedule: Schedule | None = None) -> torch.Tensor:
    """:func:`resflow_fast.reference.sampler.euler_sample`'s signature over :class:`ResFlowSampler`
    (fast on CUDA tensors, the reference path elsewhere)."""
    return ResFlowSampler(model, schedule, steps=steps)(lq, seed=seed)


def trainer_hooks(device: torch.device) -> dict:
    """The fast hooks where they pay (CUDA), none elsewhere (the reference formulas run)."""
    if device.type != "cuda":
        return {}
    return {"loss_fn": fused_velocity_matching_loss, "sample_fn": fast_sample}
