"""Tests of resflow_fast/sampler.py: the fast sampler against the reference sampler."""
import pytest
import torch

from resflow_fast.reference.metrics import psnr
from resflow_fast.reference.sampler import euler_sample
from resflow_fast.reference.schedule import Schedule
from resflow_fast.sampler import ResFlowSampler

#: Two levels, attention at 1/2 and in the middle: every kind of block, in a small network.
SMALL = dict(channel_mult=(1, 2), attention_downsample=(2,), middle_attention=True)


@pytest.fixture
def twins(monkeypatch):
    """The fast path with the kernels' pure-torch twins: quick, and exact in fp32."""
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")


@pytest.mark.parametrize("schedule, y_mode", [
    (Schedule(), "joint"), (Schedule(), "exact"), (Schedule("linear"), "joint"), (Schedule("x_only"), "joint"),
])
def test_fast_path_matches_reference(random_unet, twins, schedule, y_mode):
    model = random_unet(schedule, **SMALL)
    lq = torch.rand(2, 3, 9, 13) * 2 - 1  # odd size: padded once, cropped back
    expected = euler_sample(model, lq, steps=3, seed=4, schedule=schedule, y_mode=y_mode)
    got = ResFlowSampler(model, schedule, steps=3, dtype=torch.float32, y_mode=y_mode, fast=True)(lq, seed=4)
    assert got.shape == lq.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_fast_path_with_triton_kernels(random_unet):
    from resflow_fast.kernels import _runtime

    if not (_runtime.triton_available() and _runtime.interpreter_enabled()):
        pytest.skip("needs Triton with TRITON_INTERPRET=1")
    model = random_unet(seed=2, **SMALL)
    lq = torch.rand(1, 3, 5, 7) * 2 - 1
    launched = _runtime.launch_counts["euler_step"]
    got = ResFlowSampler(model, steps=2, dtype=torch.float32, fast=True)(lq, seed=1)
    assert _runtime.launch_counts["euler_step"] == launched + 2, "the fused Euler step did not run"
    torch.testing.assert_close(got, euler_sample(model, lq, steps=2, seed=1), atol=2e-5, rtol=1e-5)


def test_cpu_default_is_the_reference_path(random_unet):
    model = random_unet(**SMALL)
    lq = torch.rand(1, 3, 8, 8) * 2 - 1
    assert torch.equal(ResFlowSampler(model)(lq, seed=7), euler_sample(model, lq, seed=7))


def test_uses_the_current_weights_of_a_model_in_training(random_unet, twins):
    model = random_unet(**SMALL)
    sampler = ResFlowSampler(model, steps=2, dtype=torch.float32, fast=True)
    lq = torch.rand(1, 3, 8, 8) * 2 - 1
    before = sampler(lq)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # an optimizer step changes parameters in place
    after = sampler(lq)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, euler_sample(model, lq, steps=2), atol=2e-5, rtol=1e-5)


def test_one_fast_unet_is_kept_and_follows_in_place_updates(random_unet, twins):
    """Calls reuse one FastUNet (its cast weights) per dtype; an in-place update of one parameter
    between two calls is still seen, with the fused convs' packed weights too."""
    model = random_unet(**SMALL)
    sampler = ResFlowSampler(model, steps=2, dtype=torch.float32, fast=True, fused_conv="on")
    lq = torch.rand(1, 3, 8, 8) * 2 - 1
    before = sampler(lq)
    (net,) = sampler._nets.values()
    conv = model.down[0].res.conv2
    with torch.no_grad():
        conv.weight.mul_(2.0)  # one tensor of an optimizer step
    after = sampler(lq)
    assert list(sampler._nets.values()) == [net]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, euler_sample(model, lq, steps=2), atol=2e-5, rtol=1e-5)


def test_bad_input(random_unet):
    model = random_unet(**SMALL)
    sampler = ResFlowSampler(model, fast=True)
    with pytest.raises(ValueError, match=r"lq must be \(B, C, H, W\)"):
        sampler(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="the model restores 3-channel images"):
        sampler(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="unknown y_mode"):
        ResFlowSampler(model, y_mode="sde")
    with pytest.raises(TypeError, match="needs a reference UNet"):
        ResFlowSampler(torch.nn.Identity())


# -- on a GPU --------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_bf16_sampler_parity_on_cuda(random_unet):
    """The fast bf16 restore against the fp32 reference sampler: at least 45 dB on [0, 1] images."""
    model = random_unet(**dict(SMALL, channel_mult=(1, 2, 2))).cuda()
    for p in model.parameters():  # a gentler field than random_unet's, closer to a trained one
        p.data.mul_(0.5)
    lq = torch.rand(1, 3, 96, 128, device="cuda") * 2 - 1
    expected = euler_sample(model, lq, seed=0)
    got = ResFlowSampler(model)(lq, seed=0)
    assert psnr(got, expected) >= 45.0


@pytest.mark.cuda
def test_cuda_graphs_replay_matches_eager_and_is_deterministic(random_unet):
    model = random_unet(**dict(SMALL, channel_mult=(1, 2, 2))).cuda()
    lq_a = torch.rand(1, 3, 40, 56, device="cuda") * 2 - 1
    lq_b = torch.rand(1, 3, 40, 56, device="cuda") * 2 - 1
    graphed = ResFlowSampler(model, cuda_graphs=True)
    graphed(lq_a, seed=3)  # captured on (lq_a, seed 3) ...
    first, second = graphed(lq_b, seed=5), graphed(lq_b, seed=5)  # ... replayed on other inputs
    assert torch.equal(first, second)
    torch.testing.assert_close(first, ResFlowSampler(model)(lq_b, seed=5), atol=1e-6, rtol=0)
    assert sum(graphed.graph_memory_bytes().values()) > 0
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)  # an optimizer step: in place, so the captured graph sees it
    torch.testing.assert_close(graphed(lq_b, seed=5), ResFlowSampler(model)(lq_b, seed=5), atol=1e-6, rtol=0)


def test_fast_path_leaves_the_input_alone(random_unet, twins):
    model = random_unet(Schedule("x_only"), **SMALL)
    lq = (torch.rand(1, 3, 8, 8) * 2 - 1).contiguous(memory_format=torch.channels_last)  # no padding needed
    before = lq.clone()
    ResFlowSampler(model, Schedule("x_only"), steps=2, dtype=torch.float32, fast=True)(lq)
    assert torch.equal(lq, before)
