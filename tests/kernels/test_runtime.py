"""kernels/_runtime.py: the shared Triton helpers that are math rather than plumbing."""
import pytest
import torch

from resflow_fast.kernels import _runtime
from resflow_fast.kernels._runtime import silu, tl, triton


@triton.jit
def _silu_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + i, silu(tl.load(x_ptr + i, mask=i < n, other=0.0)), mask=i < n)


def _silu_inputs(device):
    return torch.cat([torch.linspace(-120.0, 120.0, 4001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 88.7, -88.7])]).to(device)


def _check_silu(device, rtol):
    x = _silu_inputs(device)
    y = torch.empty_like(x)
    _silu_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    want = torch.nn.functional.silu(x.double())
    # the exponent's argument t * log2(e) is rounded to fp32, a relative error of about |t| * 2^-24
    # in the result (as for any fp32 exp); below about -88 the exp2 overflows and silu gives -0
    # where the exact value is under 1e-36 in magnitude
    torch.testing.assert_close(y.double(), want, rtol=rtol, atol=1e-36)


@pytest.mark.interpreter_only
def test_silu_matches_torch_in_the_interpreter():
    assert _runtime.use_triton(torch.empty(1))
    _check_silu("cpu", rtol=1e-5)


@pytest.mark.cuda
def test_silu_matches_torch_on_the_gpu():
    """The GPU form: exp2 and a division that need not round as IEEE does (a few ulp more)."""
    _check_silu("cuda", rtol=1e-5)


def test_samples_aligned_needs_every_size_a_multiple_of_16():
    assert _runtime.samples_aligned(16, 3 * 64 * 64)
    assert not _runtime.samples_aligned(16, 3 * 37 * 53)
    assert not _runtime.samples_aligned(8)
