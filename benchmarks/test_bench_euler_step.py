"""pytest-benchmark suite of ``euler_step`` against its pure-torch twin: fp32 out of place (NCHW),
and the sampler's own call (resflow_fast/sampler.py): fp32 x, y updated in place, bf16 v, writing
the next bf16 network input, every tensor channels-last."""
import pytest
import torch

from resflow_fast.kernels import euler_step, euler_step_reference

SHAPES = {"cuda": (1, 6, 2048, 2048),  # the acceptance shape of the GPU run
          "cpu": (1, 6, 37, 53)}  # odd H, W
IMPLEMENTATIONS = {"kernel": euler_step, "twin": euler_step_reference}


def _state(device):
    N, C2, H, W = SHAPES[device.type]
    x, y = torch.randn(N, C2 // 2, H, W, device=device), torch.randn(N, C2 // 2, H, W, device=device)
    return x, y, torch.randn(N, C2, H, W, device=device)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_euler_step(timed, device, impl):
    x, y, v = _state(device)
    new_x, new_y = timed(lambda: IMPLEMENTATIONS[impl](x, y, v, 0.25),
                         bytes_moved=4 * (4 * x.numel() + v.numel()))  # read x, y, v; write x, y (fp32)
    assert torch.equal(new_x, x - 0.25 * v[:, :3])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_euler_step_in_place_writing_next_input(timed, device, impl):
    cl = torch.channels_last
    x, y, v = (t.contiguous(memory_format=cl) for t in _state(device))
    v = v.to(torch.bfloat16)  # .to keeps the channels-last strides
    next_input = torch.empty_like(v)
    timed(lambda: IMPLEMENTATIONS[impl](x, y, v, 0.25, inplace=True, next_input=next_input),
          bytes_moved=4 * 4 * x.numel() + 2 * 2 * v.numel())  # fp32 state read + written; bf16 v read, next written
    assert x.is_contiguous(memory_format=cl) and next_input.is_contiguous(memory_format=cl)
    assert torch.isfinite(next_input.float()).all()
