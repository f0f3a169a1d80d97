"""The ResFlow Euler sampler: integrate dz/dt = v_theta(z, t) from t = 1 (degraded) to t = 0.

docs/design/math.md, "Sampling": start at ``x = LQ``, ``y = eps ~ N(0, I)`` (seeded), then on the
uniform grid ``t_k = 1 - k/N``

    z <- z - (1/N) * v_theta(z, t_k),   k = 0 .. N-1

and return x at t = 0, clamped to [-1, 1]. With ``y_mode="exact"`` y is instead moved exactly
along the schedule, ``y <- y * sigma_y(t_{k+1}) / sigma_y(t_k)`` [choice]. A non-uniform grid
``t_k = (1 - k/N) ** p`` (``time_power``) replaces ``1/N`` by ``t_k - t_{k+1}`` [choice].

:class:`SamplingSettings` bundles the three choices (steps, grid, y mode); a weights file may
carry the settings its model restores best with (``record["sampling"]``), and
:data:`PAPER_SAMPLING` is the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .schedule import Schedule, time_grid
from .unet import crop_to, pad_to_multiple

Y_MODES = ("joint", "exact")


@dataclass(frozen=True)
class SamplingSettings:
    """How a model is sampled: ``steps`` Euler steps on the grid ``t_k = (1 - k/N) ** time_power``,
    y moved ``"joint"``ly with x by the network's velocity or ``"exact"``ly along the schedule."""

    steps: int = 4
    time_power: float = 1.0
    y_mode: str = "joint"

    def __post_init__(self) -> None:
        time_grid(self.steps, self.time_power)  # validates both
        if self.y_mode not in Y_MODES:
            raise ValueError(f"unknown y_mode {self.y_mode!r}; choose one of {', '.join(Y_MODES)}")

    def to_dict(self) -> dict:
        return {"steps": self.steps, "time_power": self.time_power, "y_mode": self.y_mode}

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingSettings":
        return cls(steps=int(d.get("steps", 4)), time_power=float(d.get("time_power", 1.0)),
                   y_mode=str(d.get("y_mode", "joint")))

    @classmethod
    def from_record(cls, record: dict) -> "SamplingSettings":
        """The settings a weights file's record carries, or the paper's where it carries none."""
        stored = record.get("sampling") if isinstance(record, dict) else None
        return cls.from_dict(stored) if isinstance(stored, dict) else PAPER_SAMPLING


#: The paper's sampler: 4 uniform Euler steps, x and y moved together by the network.
PAPER_SAMPLING = SamplingSettings()


def auxiliary_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The starting auxiliary ``y_1 = eps ~ N(0, I)``, drawn on the CPU from ``seed`` in fp32.

    Drawing on the CPU makes a seed give the same eps on every device.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


@torch.no_grad()
def euler_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lq: torch.Tensor,
    steps: int = 4,
    seed: int = 0,
    schedule: Schedule | None = None,
    y_mode: str = "joint",
    eps: torch.Tensor | None = None,
    multiple: int | None = None,
    clamp: bool = True,
    time_power: float = 1.0,
) -> torch.Tensor:
    """Restore ``lq`` (B, C, H, W) in [-1, 1] with ``steps`` Euler steps of the velocity ``model``.

    ``eps`` overrides the seeded auxiliary noise (same shape as ``lq``). ``multiple`` is the
    size the network needs (defaults to ``model.multiple`` when it has one): the state is
    reflect-padded once, not at every step, and cropped back at the end. ``time_power`` shapes
    the grid (:func:`~.schedule.time_grid`; 1 is the paper's uniform grid).
    """
    schedule = schedule or Schedule()
    if y_mode not in Y_MODES:
        raise ValueError(f"unknown y_mode {y_mode!r}; choose one of {', '.join(Y_MODES)}")
    if lq.ndim != 4:
        raise ValueError(f"lq must be (B, C, H, W), got shape {tuple(lq.shape)}")
    grid = time_grid(steps, time_power)
    x = lq.float()
    C = x.shape[1]
    if schedule.has_auxiliary:
        if eps is None:
            eps = auxiliary_noise(tuple(x.shape), seed)
        if eps.shape != x.shape:
            raise ValueError(f"eps has shape {tuple(eps.shape)}, expected {tuple(x.shape)}")
        y = schedule.y_t(eps.to(x.device, torch.float32), grid[0])
        z = torch.cat([x, y], dim=1)
    else:
        z = x
    multiple = multiple or getattr(model, "multiple", 1)
    z, size = pad_to_multiple(z, multiple)

    for k in range(steps):
        t, t_next = grid[k], grid[k + 1]
        dt = t - t_next
        v = model(z, torch.full((z.shape[0],), t, device=z.device)).float()
        if schedule.has_auxiliary and y_mode == "exact":
            x_next = z[:, :C] - dt * v[:, :C]
            z = torch.cat([x_next, schedule.y_exact_step(z[:, C:], t, t_next)], dim=1)
        else:
            z = z - dt * v  # x and y move jointly from the one network output
    x = crop_to(z[:, :C], size)
    return x.clamp(-1.0, 1.0) if clamp else x
