"""Tests of resflow_fast/training_hooks.py: the fused loss gives the reference loss and gradients."""
import math

import pytest
import torch

from resflow_fast.kernels import _runtime
from resflow_fast.reference.losses import velocity_matching_loss
from resflow_fast.reference.schedule import Schedule
from resflow_fast.reference.train import TrainConfig, Trainer
from resflow_fast.training_hooks import fast_sample, fused_velocity_matching_loss, trainer_hooks


@pytest.mark.parametrize("schedule", [Schedule(), Schedule("x_only")])
def test_fused_loss_matches_reference_loss_and_gradients(random_unet, schedule):
    g = torch.Generator().manual_seed(0)
    hq, lq = torch.rand(2, 3, 6, 10, generator=g) * 2 - 1, torch.rand(2, 3, 6, 10, generator=g) * 2 - 1
    eps = torch.randn(2, 3, 6, 10, generator=g) if schedule.has_auxiliary else None
    t = torch.tensor([0.3, 0.9])
    model = random_unet(schedule, channel_mult=(1, 2))
    launched = sum(_runtime.launch_counts.values())
    fused = fused_velocity_matching_loss(model, hq, lq, t, eps, schedule)
    fused.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    if _runtime.triton_available() and _runtime.interpreter_enabled():
        assert sum(_runtime.launch_counts.values()) > launched, "the fused kernels did not run"
    model.zero_grad()
    reference = velocity_matching_loss(model, hq, lq, t, eps, schedule)
    reference.backward()
    torch.testing.assert_close(fused, reference, atol=1e-6, rtol=1e-5)
    for a, p in zip(fused_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("fp32_ends, network_input", [(False, torch.bfloat16), (True, torch.float32)])
def test_under_autocast_the_fused_loss_builds_the_input_the_network_reads(random_unet, fp32_ends, network_input):
    """A network that keeps its first conv in fp32 gets an fp32 z_t (made in bf16 and cast back, the
    image would already be rounded); otherwise z_t is made in the autocast dtype, saving a cast."""
    schedule = Schedule()
    hq = lq = eps = torch.zeros(1, 3, 8, 8)
    model = random_unet(schedule, channel_mult=(1, 2))
    model.fp32_ends = fp32_ends
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))  # None: args unchanged
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused_velocity_matching_loss(model, hq, lq, torch.tensor([0.5]), eps, schedule)
    assert seen == [network_input]


def test_trainer_runs_with_the_fast_hooks(tmp_path):
    config = TrainConfig(preset="test", crop=16, batch_size=2, steps=1, out_dir=str(tmp_path), val_images=1,
                         degradation="noise:25")
    calls = []

    def loss_fn(*args):
        calls.append("loss")
        return fused_velocity_matching_loss(*args)

    def sample_fn(*args, **kwargs):
        calls.append("sample")
        return fast_sample(*args, **kwargs)

    trainer = Trainer(config, progress=False, loss_fn=loss_fn, sample_fn=sample_fn)
    assert torch.isfinite(trainer.train_step())
    restored = trainer.validate()["psnr_restored"]
    assert calls == ["loss", "sample"]  # the trainer trained and validated through the hooks
    assert math.isfinite(restored)


def test_hooks_only_on_cuda():
    assert trainer_hooks(torch.device("cpu")) == {}
    assert trainer_hooks(torch.device("cuda")) == {"loss_fn": fused_velocity_matching_loss, "sample_fn": fast_sample}


def test_the_old_documented_import_path_gives_the_same_functions():
    from resflow_fast import training, training_hooks

    assert all(getattr(training, name) is getattr(training_hooks, name) for name in training.__all__)
