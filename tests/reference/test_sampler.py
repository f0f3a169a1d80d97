"""Tests of reference/sampler.py: determinism, seeds, the Euler update itself, y modes."""
import pytest
import torch

from resflow_fast.reference.sampler import (PAPER_SAMPLING, SamplingSettings, auxiliary_noise, euler_sample,
                                            euler_steps, euler_update, sample_euler)
from resflow_fast.reference.schedule import Schedule, time_grid


@pytest.fixture(scope="module")
def model(random_unet):
    return random_unet()


def test_deterministic_for_a_seed_and_different_for_another(model):
    lq = torch.rand(1, 3, 19, 23) * 2 - 1
    a = euler_sample(model, lq, steps=4, seed=1)
    b = euler_sample(model, lq, steps=4, seed=1)
    c = euler_sample(model, lq, steps=4, seed=2)
    assert a.shape == lq.shape
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1


class ConstantVelocity(torch.nn.Module):
    """v = constant per channel: the Euler sum is then exact and easy to check by hand."""

    def __init__(self, vx: float, vy: float, channels: int = 3):
        super().__init__()
        self.vx, self.vy, self.c = vx, vy, channels
        self.times = []

    def forward(self, z, t):
        self.times.append(float(t[0]))
        v = torch.empty_like(z)
        v[:, : self.c] = self.vx
        v[:, self.c:] = self.vy
        return v


@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_euler_update_and_time_grid(steps):
    field = ConstantVelocity(vx=0.2, vy=0.0)
    lq = torch.zeros(1, 3, 4, 5)
    out = euler_sample(field, lq, steps=steps, seed=0)
    # x_0 = x_1 - sum_k dt * v = 0 - 1 * 0.2
    assert torch.allclose(out, torch.full_like(out, -0.2), atol=1e-6)
    assert field.times == pytest.approx([1 - k / steps for k in range(steps)])


def test_non_uniform_grid_visits_its_times_and_keeps_the_total_move():
    field = ConstantVelocity(vx=0.2, vy=0.0)
    out = euler_sample(field, torch.zeros(1, 3, 4, 5), steps=3, seed=0, time_power=2.0)
    assert torch.allclose(out, torch.full_like(out, -0.2), atol=1e-6)  # the steps still sum to 1
    assert field.times == pytest.approx([1.0, (2 / 3) ** 2, (1 / 3) ** 2])


def test_sampling_settings_validate_and_round_trip():
    settings = SamplingSettings(steps=2, time_power=1.5, y_mode="exact")
    assert SamplingSettings.from_dict(settings.to_dict()) == settings
    assert SamplingSettings.from_record({"sampling": settings.to_dict()}) == settings
    assert SamplingSettings.from_record({}) == PAPER_SAMPLING == SamplingSettings(4, 1.0, "joint")
    with pytest.raises(ValueError, match="unknown y_mode"):
        SamplingSettings(y_mode="sde")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        SamplingSettings(steps=0)
    with pytest.raises(ValueError, match="time grid power"):
        SamplingSettings(time_power=-1.0)


def test_exact_y_mode_moves_y_along_the_schedule():
    seen = []

    class Spy(ConstantVelocity):
        def forward(self, z, t):
            seen.append(z[:, 3:].clone())
            return super().forward(z, t)

    lq = torch.zeros(1, 3, 4, 4)
    eps = auxiliary_noise((1, 3, 4, 4), seed=3)
    s = Schedule()
    euler_sample(Spy(0.0, 123.0), lq, steps=4, eps=eps, y_mode="exact", schedule=s)
    for k, y in enumerate(seen):  # the network's y velocity (123) is ignored
        assert torch.allclose(y, s.y_t(eps, 1 - k / 4), atol=1e-6)


def test_x_only_schedule_runs_without_y():
    field = ConstantVelocity(0.1, 0.0)
    out = euler_sample(field, torch.zeros(2, 3, 3, 3), steps=2, schedule=Schedule("x_only"))
    assert torch.allclose(out, torch.full((2, 3, 3, 3), -0.1), atol=1e-6)  # x alone moved by its velocity


def test_noise_is_seeded_on_cpu():
    assert torch.equal(auxiliary_noise((2, 3), 5), auxiliary_noise((2, 3), 5))
    assert not torch.equal(auxiliary_noise((2, 3), 5), auxiliary_noise((2, 3), 6))


def test_bad_arguments(model):
    lq = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown y_mode"):
        euler_sample(model, lq, y_mode="sde")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        euler_sample(model, lq, steps=0)
    with pytest.raises(ValueError, match=r"lq must be \(B, C, H, W\)"):
        euler_sample(model, lq[0])
    with pytest.raises(ValueError, match="eps has shape"):
        euler_sample(model, lq, eps=torch.zeros(1, 3, 4, 4))


def test_euler_steps_cover_the_grid_and_scale_y_only_in_exact_mode():
    grid = [1.0, 0.5, 0.125, 0.0]
    s = Schedule()
    joint, exact = euler_steps(grid, s, "joint"), euler_steps(grid, s, "exact")
    assert [(e.index, e.t, e.t_next) for e in exact] == [(0, 1.0, 0.5), (1, 0.5, 0.125), (2, 0.125, 0.0)]
    assert sum(e.dt for e in joint) == 1.0
    assert all(e.y_scale is None for e in joint)
    assert [e.y_scale for e in exact] == [s.y_exact_scale(t, u) for t, u in zip(grid[:-1], grid[1:])]
    assert all(e.y_scale is None for e in euler_steps(grid, Schedule("x_only"), "exact"))  # no y to scale
    with pytest.raises(ValueError, match="unknown y_mode"):
        euler_steps(grid, s, "sde")


def test_euler_update_moves_x_and_y_by_their_halves_of_v_or_y_by_its_scale():
    x, y = torch.ones(1, 2, 1, 1), torch.full((1, 2, 1, 1), 4.0)
    v = torch.tensor([1.0, 2.0, 3.0, 5.0]).view(1, 4, 1, 1).to(torch.bfloat16)
    x_new, y_new = euler_update(x, y, v, 0.5)
    assert x_new.dtype == y_new.dtype == torch.float32
    assert x_new.flatten().tolist() == [0.5, 0.0] and y_new.flatten().tolist() == [2.5, 1.5]
    assert euler_update(x, y, v, 0.5, y_scale=0.25)[1].flatten().tolist() == [1.0, 1.0]
    assert euler_update(x, None, v[:, :2], 0.5)[1] is None


def test_sample_euler_threads_the_state_through_a_callers_step():
    seen = []

    def step(state, s):  # a fused step of its own, as the fast path has
        seen.append((s.index, s.dt))
        return state[0] - s.dt, None

    x, y = sample_euler(None, (torch.zeros(2), None), time_grid(4, 2.0), schedule=Schedule("x_only"), step=step)
    assert [k for k, _ in seen] == [0, 1, 2, 3] and y is None
    assert torch.allclose(x, torch.full((2,), -1.0))  # the steps of any grid sum to 1
    with pytest.raises(ValueError, match="needs a velocity function or a step"):
        sample_euler(None, (torch.zeros(2), None), time_grid(4))
