"""Shared setup for the kernel tests.

``TRITON_INTERPRET=1`` must be in the environment before anything imports triton, so on a machine
without a GPU ``tests/conftest.py`` sets it for the whole suite, unless the caller chose a value.
Under the interpreter the Triton kernels run on CPU tensors: that is what CI without a GPU tests,
and the CUDA tests skip. On a GPU machine the compiled
kernels are tested and the interpreter-only tests skip; ``TRITON_INTERPRET=1 pytest tests/kernels``
runs the interpreter tests there too.
"""
import os

import pytest
import torch

# One table of tolerances per dtype, for a kernel's output against its fp32 twin fed the same
# (already rounded) inputs. fp32: reduction order only. bf16 / fp16: one rounding of the output
# (8 / 11 significant bits) plus fp32 reduction-order noise.
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=1e-3),
    # fused_conv3x3 (keyed by op and dtype): outputs of O(1) from weights scaled by 1/sqrt(fan-in).
    # fp32: fp32 accumulation over K = 9 * C_in (+ C_skip) terms in another order than F.conv2d's.
    # bf16 / fp16: the output rounding above, plus one rounding of every activation to the
    # dtype before the tensor-core dot, which the fp32 twin does not do (~2^-9 / 2^-12 of |y|).
    ("fused_conv3x3", torch.float32): dict(atol=1e-4, rtol=1e-4),
    ("fused_conv3x3", torch.bfloat16): dict(atol=3e-2, rtol=1.6e-2),
    ("fused_conv3x3", torch.float16): dict(atol=4e-3, rtol=2e-3),
}


@pytest.fixture
def tol():
    """``tol(dtype)`` -> kwargs for ``torch.testing.assert_close``."""
    return lambda dtype: dict(TOLERANCES[dtype])


@pytest.fixture
def op_tol():
    """``op_tol(op, dtype)`` -> kwargs for ``torch.testing.assert_close``, for ops with their own
    entries in :data:`TOLERANCES` (keyed ``(op, dtype)``)."""
    return lambda op, dtype: dict(TOLERANCES[(op, dtype)])


@pytest.fixture(autouse=True)
def _triton_enabled(monkeypatch):
    """Kernel tests test kernels: ignore a RESFLOW_DISABLE_TRITON inherited from the shell."""
    monkeypatch.delenv("RESFLOW_DISABLE_TRITON", raising=False)


@pytest.fixture
def kernel_device():
    """Where the Triton kernels run in this session: "cpu" under the interpreter, else "cuda"
    (tests that only need *a* kernel path, such as opcheck and torch.compile, use it)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("no Triton kernel path here: no GPU and TRITON_INTERPRET is not 1")
