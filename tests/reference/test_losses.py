"""Tests of reference/losses.py: the weighted velocity loss against a hand computation."""
import torch

from resflow_fast.reference.losses import velocity_matching_loss, weighted_velocity_loss
from resflow_fast.reference.schedule import Schedule, loss_weight


def test_weighted_loss_by_hand():
    v = torch.zeros(2, 6, 2, 2)
    target = torch.ones(2, 6, 2, 2)
    target[1] *= 2
    t = torch.tensor([0.5, 1.0])
    expected = (loss_weight(0.5) * 1.0 + loss_weight(1.0) * 4.0) / 2
    assert torch.allclose(weighted_velocity_loss(v, target, t, Schedule()), torch.tensor(expected))


def test_perfect_velocity_has_zero_loss():
    s = Schedule()
    hq, lq, eps = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([0.3, 0.8])

    def oracle(z, tt):  # returns the exact target: a model that already learnt the flow
        return s.target_velocity(hq, lq, eps, tt)

    assert velocity_matching_loss(oracle, hq, lq, t, eps, s).item() == 0.0


def test_loss_at_t0_has_no_weight():
    s = Schedule()
    v, target = torch.zeros(1, 6, 2, 2), torch.ones(1, 6, 2, 2)
    assert weighted_velocity_loss(v, target, torch.tensor([0.0]), s).item() == 0.0
