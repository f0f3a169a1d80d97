"""pytest-benchmark suite of ``group_norm_modulate_silu`` against its pure-torch twin.

CUDA: the acceptance shapes of the GPU run in bf16 channels-last. CPU: small odd shapes (there the "kernel" is the
twin, so the two rows should match: the suite checks the harness, not the CPU)."""
import pytest
import torch

from resflow_fast.kernels import group_norm_modulate_silu, group_norm_modulate_silu_reference

# per purpose, the CUDA shape and a small CPU analogue
SHAPES = {
    "acceptance": {"cuda": (1, 128, 512, 512), "cpu": (1, 32, 16, 16)},  # the acceptance shape; one channel a group on CPU
    "large": {"cuda": (1, 64, 2048, 2048), "cpu": (1, 64, 37, 53)},  # far beyond L2; odd H, W on CPU
    "batched": {"cuda": (4, 256, 256, 256), "cpu": (3, 128, 8, 8)},  # batch > 1, many channels
}
IMPLEMENTATIONS = {"kernel": group_norm_modulate_silu, "twin": group_norm_modulate_silu_reference}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("purpose", SHAPES)
def test_group_norm_modulate_silu(timed, device, impl, purpose):
    N, C, H, W = shape = SHAPES[purpose][device.type]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(C, device=device), torch.randn(C, device=device)
    scale, shift = 0.1 * torch.randn(N, C, device=device), 0.1 * torch.randn(N, C, device=device)
    out = timed(lambda: IMPLEMENTATIONS[impl](x, 32, weight, bias, scale, shift),
                bytes_moved=2 * x.numel() * x.element_size())  # the floor: one read, one write
    assert out.shape == x.shape and torch.isfinite(out).all()
