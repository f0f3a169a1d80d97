"""The ResFlow Euler sampler: integrate dz/dt = v_theta(z, t) from t = 1 (degraded) to t = 0.

docs/design/math.md, "Sampling": start at ``x = LQ``, ``y = sigma_y(1) eps``, ``eps ~ N(0, I)``
(seeded), then on the grid ``1 = t_0 > ... > t_N = 0`` (:func:`~.schedule.time_grid`)

    x <- x - (t_k - t_{k+1}) v_x(z, t_k)
    y <- y - (t_k - t_{k+1}) v_y(z, t_k)    or, with ``y_mode="exact"``, y <- y sigma_y(t_{k+1}) / sigma_y(t_k)

and return x at t = 0, clamped to [-1, 1].

:func:`sample_euler` is the one Euler loop of the package, over a velocity function and a time
grid; the fast path (:class:`resflow_fast.sampler.ResFlowSampler`) runs it with its own network
and update fused into one step. :func:`euler_sample` is the whole restore around it (noise,
padding, cropping). :class:`SamplingSettings` bundles the choices (steps, grid, y mode) a weights
file may record; :data:`PAPER_SAMPLING` is the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

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


#: The sampler's state: fp32 x and y (None for a schedule without y), each (B, C, H, W).
State = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class EulerStep:
    """Step ``index`` of the sampler, from ``t`` down to ``t_next``. ``y_scale`` is the exact-y
    factor ``sigma_y(t_next) / sigma_y(t)``, or None where y moves by the network's velocity
    (``y_mode="joint"``, or a schedule without y)."""

    index: int
    t: float
    t_next: float
    y_scale: float | None = None

    @property
    def dt(self) -> float:
        """The step size ``t_k - t_{k+1}`` (> 0: the sampler runs backwards in t)."""
        return self.t - self.t_next


def euler_steps(grid: Sequence[float], schedule: Schedule, y_mode: str = "joint") -> list[EulerStep]:
    """The steps of ``grid`` (t_0 > t_1 > ... > t_N) for ``schedule`` and ``y_mode``."""
    if y_mode not in Y_MODES:
        raise ValueError(f"unknown y_mode {y_mode!r}; choose one of {', '.join(Y_MODES)}")
    exact = y_mode == "exact" and schedule.has_auxiliary
    return [EulerStep(k, t, t_next, schedule.y_exact_scale(t, t_next) if exact else None)
            for k, (t, t_next) in enumerate(zip(grid[:-1], grid[1:]))]


def euler_update(x: torch.Tensor, y: torch.Tensor | None, v: torch.Tensor, dt: float,
                 y_scale: float | None = None) -> State:
    """One Euler step of the state (docs/design/math.md, "Sampling"), as new fp32 tensors:

        x <- x - dt v[:, :C];   y <- y - dt v[:, C:]   (joint)   or   y <- y * y_scale   (exact)

    ``v`` is the network output (B, 2C, H, W), or (B, C, H, W) without y, in any float dtype."""
    C = x.shape[1]
    x_next = x - dt * v[:, :C].float()
    if y is None:
        return x_next, None
    return x_next, (y * y_scale if y_scale is not None else y - dt * v[:, C:].float())


def network_step(velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[State, EulerStep], State]:
    """The reference step: ``v = velocity_fn([x; y], t)`` (t as a (B,) tensor), then :func:`euler_update`."""

    def step(state: State, s: EulerStep) -> State:
        x, y = state
        z = x if y is None else torch.cat([x, y], dim=1)
        v = velocity_fn(z, torch.full((z.shape[0],), s.t, device=z.device)).float()
        return euler_update(x, y, v, s.dt, s.y_scale)

    return step


def sample_euler(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    state: State,
    grid: Sequence[float],
    *,
    schedule: Schedule | None = None,
    y_mode: str = "joint",
    step: Callable[[State, EulerStep], State] | None = None,
) -> State:
    """Integrate ``dz/dt = velocity_fn(z, t)`` with Euler steps over ``grid``, from ``grid[0]`` to
    ``grid[-1]``; returns the final ``state`` (x, y).

    Each step is ``step(state, EulerStep)``: by default :func:`network_step` of ``velocity_fn``.
    A caller whose network and update are one operation supplies its own ``step`` (and may pass
    ``velocity_fn=None``): the fast path's step runs its U-Net with the update fused into the
    output conv and writes the state in place.
    """
    schedule = schedule or Schedule()
    if step is None:
        if velocity_fn is None:
            raise ValueError("sample_euler needs a velocity function or a step")
        step = network_step(velocity_fn)
    for s in euler_steps(grid, schedule, y_mode):
        state = step(state, s)
    return state


def start_state(lq: torch.Tensor, eps: torch.Tensor | None, schedule: Schedule, t: float = 1.0) -> State:
    """The state at the degraded end: ``x = LQ`` and ``y = sigma_y(t) eps`` (no y for x_only), fp32."""
    x = lq.float()
    if not schedule.has_auxiliary:
        return x, None
    return x, schedule.y_t(eps.to(x.device, torch.float32), t)


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
    if schedule.has_auxiliary:
        if eps is None:
            eps = auxiliary_noise(tuple(lq.shape), seed)
        if eps.shape != lq.shape:
            raise ValueError(f"eps has shape {tuple(eps.shape)}, expected {tuple(lq.shape)}")
    x, y = start_state(lq, eps, schedule, grid[0])
    multiple = multiple or getattr(model, "multiple", 1)
    x, size = pad_to_multiple(x, multiple)
    y = pad_to_multiple(y, multiple)[0] if y is not None else None
    x, _ = sample_euler(model, (x, y), grid, schedule=schedule, y_mode=y_mode)
    x = crop_to(x, size)
    return x.clamp(-1.0, 1.0) if clamp else x
