"""Tests of reference/schedule.py: values from docs/design/math.md, conservation, derivatives."""
import math

import pytest
import torch

from resflow_fast.reference.schedule import SCHEDULES, Schedule, loss_weight, sigma_y, time_grid

TIMES = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_sigma_y_values_from_the_design():
    # beta / (1 - t + beta) with beta = 10, to 1e-6 (the table rounds to 4 decimals)
    expected = [10 / 11, 10 / 10.75, 10 / 10.5, 10 / 10.25, 1.0]
    for t, e in zip(TIMES, expected):
        assert sigma_y(t) == pytest.approx(e, abs=1e-6)
    assert [round(sigma_y(t), 4) for t in TIMES] == [0.9091, 0.9302, 0.9524, 0.9756, 1.0]


def test_loss_weight_values():
    # (1 - cos(pi t / 2)) ** 1.75 evaluated with 30-digit arithmetic (mpmath); the design table
    # (docs/design/math.md, "Targets and loss") gives them to 4 places.
    exact = [0.0, 0.0110313212447, 0.116611479228, 0.429921220863, 1.0]
    design_table = [0.0, 0.0110, 0.1166, 0.4299, 1.0]
    for t, e, d in zip(TIMES, exact, design_table):
        assert loss_weight(t) == pytest.approx(e, abs=1e-6)
        # the paper's own form, cos(pi/2 (t - 2)) + 1, is the same function
        assert (math.cos(math.pi / 2 * (t - 2)) + 1) ** 1.75 == pytest.approx(e, abs=1e-6)
        assert round(loss_weight(t), 4) == d


def test_tensor_and_float_forms_agree():
    t = torch.tensor(TIMES, dtype=torch.float64)
    assert torch.allclose(sigma_y(t), torch.tensor([sigma_y(x) for x in TIMES], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(loss_weight(t), torch.tensor([loss_weight(x) for x in TIMES], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("beta", [0.5, 10.0, 100.0])
def test_entropy_preserving_volume_is_constant(beta):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    volume = (1 - t + beta) * sigma_y(t, beta)
    assert torch.allclose(volume, torch.full_like(volume, beta), atol=1e-12)


@pytest.mark.parametrize("name", [s for s in SCHEDULES])
def test_target_velocity_is_the_time_derivative_of_the_path(name):
    schedule = Schedule(name)
    g = torch.Generator().manual_seed(0)
    hq, lq = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64) * 2 - 1, torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64) if schedule.has_auxiliary else None
    t = torch.tensor([0.2, 0.9], dtype=torch.float64, requires_grad=True)
    # d/dt of each sample's path, by autograd: sum over samples, since sample b depends only on t_b
    z = schedule.z_t(hq, lq, eps, t)
    target = schedule.target_velocity(hq, lq, eps, t.detach())
    for c in range(z.shape[1]):
        for b in range(2):
            (grad,) = torch.autograd.grad(z[b, c].sum(), t, retain_graph=True)
            assert grad[b].item() == pytest.approx(target[b, c].sum().item(), abs=1e-9)
    # and by central finite differences on the whole tensor
    h = 1e-6
    td = t.detach()
    fd = (schedule.z_t(hq, lq, eps, td + h) - schedule.z_t(hq, lq, eps, td - h)) / (2 * h)
    assert torch.allclose(fd, target, atol=1e-6)


def test_paths_hit_their_endpoints():
    s = Schedule()
    hq, lq, eps = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    assert torch.equal(s.x_t(hq, lq, 0.0), hq) and torch.equal(s.x_t(hq, lq, 1.0), lq)
    assert torch.allclose(s.y_t(eps, 1.0), eps)
    assert torch.allclose(s.y_t(eps, 0.0), eps * 10 / 11)  # the formula, not the prose's y_0 = 0


def test_ablation_schedules():
    assert Schedule("linear").sigma_y(0.3) == pytest.approx(0.3)
    assert Schedule("constant").sigma_y(0.3) == 1.0 and Schedule("constant").sigma_y_derivative(0.3) == 0.0
    assert not Schedule("x_only").has_auxiliary and Schedule("x_only").state_channels(3) == 3
    assert Schedule().state_channels(3) == 6
    with pytest.raises(ValueError, match="no auxiliary"):
        Schedule("x_only").sigma_y(0.5)


def test_exact_y_step_follows_the_schedule():
    s = Schedule()
    y = s.y_t(torch.ones(3), 1.0)
    assert torch.allclose(s.y_exact_step(y, 1.0, 0.75), s.y_t(torch.ones(3), 0.75))


def test_exact_y_scale_is_the_ratio_of_sigma_y():
    schedule = Schedule()
    assert schedule.y_exact_scale(1.0, 0.75) == pytest.approx(schedule.sigma_y(0.75) / schedule.sigma_y(1.0))
    assert Schedule("constant").y_exact_scale(0.5, 0.25) == 1.0
    with pytest.raises(ValueError, match="sigma_y"):  # linear: sigma_y(0) = 0
        Schedule("linear").y_exact_scale(0.0, 0.0)
    with pytest.raises(ValueError, match="no auxiliary"):
        Schedule("x_only").y_exact_scale(1.0, 0.75)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="cosine"), "unknown schedule 'cosine'"),
    (dict(beta=0.0), "beta must be a positive"),
    (dict(gamma=float("nan")), "gamma must be"),
])
def test_bad_schedules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


def test_time_grid():
    assert time_grid(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            time_grid(bad)


def test_round_trip_dict():
    s = Schedule("linear", beta=3.0, gamma=2.0)
    assert Schedule.from_dict(s.to_dict()) == s


def test_time_grid_power_shapes_the_steps():
    assert time_grid(4, power=1.0) == time_grid(4)
    grid = time_grid(4, power=2.0)
    assert grid == pytest.approx([1.0, 0.5625, 0.25, 0.0625, 0.0])
    steps = [a - b for a, b in zip(grid, grid[1:])]
    assert steps == sorted(steps, reverse=True)  # power > 1: the longest step leaves the degraded end
    gentle = time_grid(4, power=0.5)
    assert [a - b for a, b in zip(gentle, gentle[1:])] == sorted(a - b for a, b in zip(gentle, gentle[1:]))
    for bad in (0, -1.0, float("nan"), 16.0, True):
        with pytest.raises(ValueError, match="time grid power"):
            time_grid(4, power=bad)


def test_weight_floor_raises_small_weights_only():
    floored = Schedule(weight_floor=0.25)
    paper = Schedule()
    t = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    expected = torch.maximum(paper.loss_weight(t), torch.tensor(0.25))
    torch.testing.assert_close(floored.loss_weight(t), expected)
    assert floored.loss_weight(0.0) == 0.25 and floored.loss_weight(1.0) == pytest.approx(1.0)
    assert floored.loss_weight(0.9) == pytest.approx(paper.loss_weight(0.9))  # above the floor: unchanged
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="weight_floor"):
            Schedule(weight_floor=bad)


def test_weight_floor_round_trips_and_old_records_read_as_the_papers():
    floored = Schedule(weight_floor=0.1)
    assert Schedule.from_dict(floored.to_dict()) == floored
    assert "weight_floor" not in Schedule().to_dict()  # records of the paper's weight are unchanged
    assert Schedule.from_dict({"name": "entropy_preserving", "beta": 10.0, "gamma": 1.75}).weight_floor == 0.0
