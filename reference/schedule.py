"""The ResFlow schedule: paths, auxiliary noise scale, target velocities and loss weight.

Everything time-dependent in this project is derived here and nowhere else
(``docs/design/math.md``, "Paths" and "Targets and loss"). Symbols follow the paper:

* augmented state ``z_t = [x_t ; y_t]``, ``t = 0`` is the clean (HQ) end, ``t = 1`` the degraded end;
* data path   ``x_t = alpha_x(t) * HQ + sigma_x(t) * LQ`` with ``alpha_x = 1 - t``, ``sigma_x = t``;
* auxiliary   ``y_t = sigma_y(t) * eps``, ``eps ~ N(0, I)``;
* entropy-preserving ``sigma_y(t) = beta / (1 - t + beta)``, ``beta = 10``;
* target velocity ``dz/dt = [LQ - HQ ; sigma_y'(t) * eps]``;
* loss weight ``lambda(t) = (cos(pi/2 * (t - 2)) + 1) ** gamma = (1 - cos(pi t / 2)) ** gamma``,
  optionally floored, ``max(lambda(t), floor)`` [choice]: the paper's weight leaves small t almost
  untrained (lambda(0.25) = 0.011), yet every Euler step of the sampler moves the image by the
  same ``1/N`` of its velocity.

Functions accept a Python float or a tensor of times; tensors of shape (B,) are broadcast over
image tensors of shape (B, C, H, W) by :func:`expand_time`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch

TimeLike = Union[float, torch.Tensor]

DEFAULT_BETA = 10.0
DEFAULT_GAMMA = 1.75

#: Named auxiliary schedules. ``entropy_preserving`` is the paper's; ``linear`` and ``constant``
#: are the ablations it compares against [choice of names]; ``x_only`` drops y altogether (a
#: control: the network sees and predicts x alone).
SCHEDULES = ("entropy_preserving", "linear", "constant", "x_only")


def sigma_y(t: TimeLike, beta: float = DEFAULT_BETA) -> TimeLike:
    """Entropy-preserving auxiliary scale, ``sigma_y(t) = beta / (1 - t + beta)``.

    ``(1 - t + beta) * sigma_y(t) = beta`` is constant in t: the volume (entropy) conservation
    that names the schedule. Note ``sigma_y(0) = beta / (1 + beta)``, not 0 (docs/design/math.md, "Paths").
    """
    return beta / (1.0 - t + beta)


def sigma_y_derivative(t: TimeLike, beta: float = DEFAULT_BETA) -> TimeLike:
    """``d sigma_y / dt = beta / (1 - t + beta) ** 2`` for the entropy-preserving schedule."""
    return beta / (1.0 - t + beta) ** 2


def loss_weight(t: TimeLike, gamma: float = DEFAULT_GAMMA) -> TimeLike:
    """``lambda(t) = (cos(pi/2 * (t - 2)) + 1) ** gamma``, written as ``(1 - cos(pi t / 2)) ** gamma``.

    The two forms are equal since cos(a - pi) = -cos(a); the second avoids the cancellation
    near t = 0. lambda(0) = 0 and lambda(1) = 1: the weight grows toward the degraded end.
    """
    if isinstance(t, torch.Tensor):
        return (1.0 - torch.cos(0.5 * math.pi * t)).clamp_min(0.0) ** gamma
    return max(1.0 - math.cos(0.5 * math.pi * t), 0.0) ** gamma


def expand_time(t: TimeLike, like: torch.Tensor) -> TimeLike:
    """Reshape a (B,) time tensor to (B, 1, 1, ...) so it broadcasts over ``like``."""
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))
    return t


@dataclass(frozen=True)
class Schedule:
    """A named ResFlow schedule with its constants.

    ``name`` is one of :data:`SCHEDULES`; ``beta`` parametrises the entropy-preserving
    auxiliary; ``gamma`` the loss weight lambda(t); ``weight_floor`` the least weight any t gets
    (0, the paper's weight, by default).
    """

    name: str = "entropy_preserving"
    beta: float = DEFAULT_BETA
    gamma: float = DEFAULT_GAMMA
    weight_floor: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"schedule beta must be a positive finite number, got {self.beta!r}")
        if not (self.gamma >= 0 and math.isfinite(self.gamma)):
            raise ValueError(f"schedule gamma must be a non-negative finite number, got {self.gamma!r}")
        if not 0.0 <= self.weight_floor <= 1.0:  # also rejects NaN; lambda(1) = 1 is the largest weight
            raise ValueError(f"schedule weight_floor must be in [0, 1], got {self.weight_floor!r}")

    @property
    def has_auxiliary(self) -> bool:
        """Whether the state carries y (all schedules but the ``x_only`` control)."""
        return self.name != "x_only"

    def state_channels(self, image_channels: int) -> int:
        """Channels of z = [x; y] for an image with ``image_channels`` channels."""
        return image_channels * (2 if self.has_auxiliary else 1)

    # -- the auxiliary scale and its time derivative ------------------------------------------
    def sigma_y(self, t: TimeLike) -> TimeLike:
        if self.name == "entropy_preserving":
            return sigma_y(t, self.beta)
        if self.name == "linear":  # ablation: y moves on a straight line from 0 to eps
            return t * 1.0
        if self.name == "constant":  # ablation: y = eps for all t
            return torch.ones_like(t) if isinstance(t, torch.Tensor) else 1.0
        raise ValueError(f"schedule {self.name!r} has no auxiliary variable y")

    def sigma_y_derivative(self, t: TimeLike) -> TimeLike:
        if self.name == "entropy_preserving":
            return sigma_y_derivative(t, self.beta)
        if self.name == "linear":
            return torch.ones_like(t) if isinstance(t, torch.Tensor) else 1.0
        if self.name == "constant":
            return torch.zeros_like(t) if isinstance(t, torch.Tensor) else 0.0
        raise ValueError(f"schedule {self.name!r} has no auxiliary variable y")

    def loss_weight(self, t: TimeLike) -> TimeLike:
        """lambda(t), raised to ``weight_floor`` where it is smaller."""
        weight = loss_weight(t, self.gamma)
        if self.weight_floor == 0.0:
            return weight
        if isinstance(weight, torch.Tensor):
            return weight.clamp_min(self.weight_floor)
        return max(weight, self.weight_floor)

    # -- paths and targets ----------------------------------------------------------------------
    def x_t(self, hq: torch.Tensor, lq: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """Data path ``x_t = (1 - t) * HQ + t * LQ``."""
        tb = expand_time(t, hq)
        return (1.0 - tb) * hq + tb * lq

    def y_t(self, eps: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """Auxiliary path ``y_t = sigma_y(t) * eps``."""
        return expand_time(self.sigma_y(t), eps) * eps

    def z_t(self, hq: torch.Tensor, lq: torch.Tensor, eps: torch.Tensor | None, t: TimeLike) -> torch.Tensor:
        """Network input ``z_t = [x_t ; y_t]`` (channels concatenated), or x_t alone for x_only."""
        x = self.x_t(hq, lq, t)
        if not self.has_auxiliary:
            return x
        return torch.cat([x, self.y_t(eps, t)], dim=1)

    def target_velocity(self, hq: torch.Tensor, lq: torch.Tensor, eps: torch.Tensor | None, t: TimeLike) -> torch.Tensor:
        """``dz/dt = [LQ - HQ ; sigma_y'(t) * eps]``: the velocity-matching target."""
        vx = lq - hq
        if not self.has_auxiliary:
            return vx
        return torch.cat([vx, expand_time(self.sigma_y_derivative(t), eps) * eps], dim=1)

    def y_exact_scale(self, t: float, t_next: float) -> float:
        """The factor ``sigma_y(t_next) / sigma_y(t)`` that moves y exactly along the schedule [choice]."""
        s = self.sigma_y(t)
        if s == 0:
            raise ValueError(f"schedule {self.name!r} has sigma_y({t}) = 0; cannot rescale y exactly")
        return self.sigma_y(t_next) / s

    def y_exact_step(self, y: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        """Move y exactly along the schedule, ``y <- y * sigma_y(t_next) / sigma_y(t)`` [choice]."""
        return y * self.y_exact_scale(t, t_next)

    def to_dict(self) -> dict:
        d = {"name": self.name, "beta": self.beta, "gamma": self.gamma}
        if self.weight_floor:  # weights files written before the floor existed stay byte-identical
            d["weight_floor"] = self.weight_floor
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        return cls(name=d["name"], beta=float(d["beta"]), gamma=float(d["gamma"]),
                   weight_floor=float(d.get("weight_floor", 0.0)))


def time_grid(steps: int, power: float = 1.0) -> list[float]:
    """Euler grid from t = 1 down to t = 0: ``t_k = (1 - k/N) ** power`` for k = 0..N.

    ``power = 1`` is the paper's uniform grid ``t_k = 1 - k/N``; ``power > 1`` takes a longer
    first step from the degraded end and shorter ones near the clean end, ``power < 1`` the
    reverse [choice: a one-parameter family of non-uniform grids].
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0.0 < power < 16.0:
        raise ValueError(f"time grid power must be a number in (0, 16), got {power!r}")
    if power == 1.0:
        return [1.0 - k / steps for k in range(steps + 1)]
    return [(1.0 - k / steps) ** power for k in range(steps + 1)]
