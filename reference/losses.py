"""The ResFlow velocity-matching loss (docs/design/math.md, "Targets and loss").

    L = E_{t ~ U(0,1), pair, eps} [ lambda(t) * || v_theta(x_t, y_t, t) - dz/dt ||^2 ]

with the squared norm taken as a mean over channels and pixels and the weight applied per
sample [choice]; the batch mean estimates the expectation.
"""
from __future__ import annotations

from typing import Callable

import torch

from .schedule import Schedule


def weighted_velocity_loss(v: torch.Tensor, target: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """``mean_b [ lambda(t_b) * mean_{c,h,w} (v - target)^2 ]`` in fp32."""
    per_sample = (v.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return (schedule.loss_weight(t.float()) * per_sample).mean()


def velocity_matching_loss(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    hq: torch.Tensor,
    lq: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor | None,
    schedule: Schedule,
) -> torch.Tensor:
    """Build z_t and dz/dt from the schedule, run the network, return the weighted loss."""
    z_t = schedule.z_t(hq, lq, eps, t)
    target = schedule.target_velocity(hq, lq, eps, t)
    return weighted_velocity_loss(model(z_t, t), target, t, schedule)
