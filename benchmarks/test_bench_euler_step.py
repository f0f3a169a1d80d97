"""pytest-benchmark suite of ``euler_step`` against its pure-torch twin: fp32 out of place, and
the sampler's own call (bf16 v, in place, writing the next bf16 channels-last network input)."""
import pytest
import torch

from resflow_fast.kernels import euler_step, euler_step_reference

SHAPES = {"cuda": (1, 6, 2048, 2048),  # issue 4's acceptance shape
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
    x, y, v = _state(device)
    v = v.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    next_input = torch.empty_like(v)
    timed(lambda: IMPLEMENTATIONS[impl](x, y, v, 0.25, inplace=True, next_input=next_input),
          bytes_moved=4 * 4 * x.numel() + 2 * 2 * v.numel())  # fp32 state read + written; bf16 v read, next written
    assert torch.isfinite(next_input.float()).all()
