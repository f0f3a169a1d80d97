"""Tests of resflow_fast/fast_unet.py: the fused forward against the reference U-Net."""
import pytest
import torch

from resflow_fast.fast_unet import FastUNet
from resflow_fast.kernels import _runtime
from resflow_fast.reference.unet import UNet, preset_config


def small_attention_unet(seed=0):
    """Two levels, attention at 1/2 and in the middle, random weights everywhere (the reference
    zero-initialises output convs, which would hide most of the network from the comparison)."""
    torch.manual_seed(seed)
    model = UNet(preset_config("test", channel_mult=(1, 2), attention_downsample=(2,), middle_attention=True))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def fast_forward(model, z, t):
    net = FastUNet(model, torch.float32)
    cond = net.prepare(torch.tensor([t]), z.shape[0])
    return net(z, cond[0])


def test_matches_reference_with_pure_torch_twins(monkeypatch):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = small_attention_unet()
    z = torch.randn(2, 6, 10, 14)
    with torch.no_grad():
        expected = model(z, torch.full((2,), 0.7))
    got = fast_forward(model, z, 0.7)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_matches_reference_with_triton_kernels(monkeypatch):
    if not (_runtime.triton_available() and _runtime.interpreter_enabled()):
        pytest.skip("needs Triton with TRITON_INTERPRET=1 to run the kernels on CPU tensors")
    monkeypatch.delenv("RESFLOW_DISABLE_TRITON", raising=False)
    model = small_attention_unet(1)
    z = torch.randn(1, 6, 6, 10)
    before = sum(_runtime.launch_counts.values())
    got = fast_forward(model, z, 0.3)
    assert sum(_runtime.launch_counts.values()) > before, "the Triton kernels did not run"
    with torch.no_grad():
        torch.testing.assert_close(got, model(z, torch.tensor([0.3])), atol=1e-5, rtol=1e-5)


def test_refuses_unpadded_input(monkeypatch):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = small_attention_unet()
    with pytest.raises(ValueError, match="not padded to a multiple of 2"):
        fast_forward(model, torch.randn(1, 6, 5, 6), 0.5)


def test_refuses_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be"):
        FastUNet(small_attention_unet(), torch.int8)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_forward_on_cuda(dtype):
    model = small_attention_unet().cuda()
    z = torch.randn(2, 6, 64, 96, device="cuda")
    with torch.no_grad():
        expected = model(z, torch.full((2,), 0.5, device="cuda"))
    net = FastUNet(model, dtype)
    got = net(z, net.prepare(torch.tensor([0.5], device="cuda"), 2)[0]).float()
    rel = (got - expected).norm() / expected.norm()
    assert rel < 2e-2, f"relative error {rel:.3g} in {dtype}"
