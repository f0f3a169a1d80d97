"""Shared setup for the kernel tests.

``TRITON_INTERPRET=1`` must be in the environment before anything imports triton, so on a machine
without a GPU ``tests/conftest.py`` sets it for the whole suite, unless the caller chose a value.
Under the interpreter the Triton kernels run on CPU tensors: that is what CI without a GPU tests,
and the CUDA tests skip. On a GPU machine the compiled
kernels are tested and the interpreter-only tests skip; ``TRITON_INTERPRET=1 pytest tests/kernels``
runs the interpreter tests there too.
"""
import math
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
    """Where the Triton kernels run in this test run: "cpu" under the interpreter, else "cuda"
    (tests that only need *a* kernel path, such as opcheck and torch.compile, use it)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("no Triton kernel path here: no GPU and TRITON_INTERPRET is not 1")


class ConvInputs:
    """Inputs of the 3x3 conv ops' tests (fused_conv3x3, fused_conv3x3_euler), through the
    ``conv_inputs`` fixture."""

    @staticmethod
    def out_shape(n, c_out, h, w, stride):
        return (n, c_out, (h - 1) // stride + 1, (w - 1) // stride + 1)

    @staticmethod
    def activation(shape, dtype=torch.float32, device="cpu", layout="channels_last"):
        """Values exactly representable in ``dtype`` (so kernel and fp32 twin see the same input)."""
        if layout == "sliced":  # neither NCHW- nor NHWC-dense
            n, c, h, w = shape
            return torch.randn(n, c + 1, h, w + 2, device=device)[:, 1:, :, 1:-1].to(dtype)
        t = torch.randn(shape, device=device).to(dtype)
        return t.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)

    @staticmethod
    def conv_params(c_in, c_out, dtype=torch.float32, device="cpu"):
        """Weight scaled by 1/sqrt(fan-in) (O(1) outputs) and rounded to ``dtype`` like the kernel's
        packed copy, kept fp32 so the twin computes in fp32 from the same values."""
        weight = (torch.randn(c_out, c_in, 3, 3, device=device) / math.sqrt(9 * c_in)).to(dtype).float()
        return weight, torch.randn(c_out, device=device)

    @staticmethod
    def option_kwargs(option, x, c_out, stride, dtype=torch.float32):
        """Keyword arguments that switch on one fused option (on x's device)."""
        n, c_in, h, w = x.shape
        device = x.device
        oshape = ConvInputs.out_shape(n, c_out, h, w, stride)
        if option in ("plain", "no-bias"):
            return {}
        if option == "prologue":  # SiLU(A x + B) with A > 0 and B of either sign
            return dict(prologue=(1.0 + 0.5 * torch.rand(n, c_in, device=device), torch.randn(n, c_in, device=device)))
        if option == "residual":
            return dict(residual=ConvInputs.activation(oshape, dtype, device))
        if option in ("skip", "skip-2d-weight-no-bias"):
            c_skip = 5
            skip_x = ConvInputs.activation((n, c_skip) + oshape[2:], dtype, device)
            skip_weight = (torch.randn(c_out, c_skip, 1, 1, device=device) / math.sqrt(c_skip)).to(dtype).float()
            if option == "skip":
                return dict(skip_x=skip_x, skip_weight=skip_weight, skip_bias=torch.randn(c_out, device=device))
            return dict(skip_x=skip_x, skip_weight=skip_weight[:, :, 0, 0])
        if option == "stats":
            return dict(stats_groups=4)
        raise AssertionError(option)

    @staticmethod
    def nan_out(shape, dtype=torch.float32, device="cpu"):
        return torch.full(shape, float("nan"), dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def euler_state(n, c, h, w, with_y=True, device="cpu", next_dtype=torch.float32):
        """A channels-last fp32 state (x, y or None) and a NaN-filled next_input (catches unwritten
        elements)."""
        cl = torch.channels_last
        x = torch.randn(n, c, h, w, device=device).contiguous(memory_format=cl)
        y = torch.randn(n, c, h, w, device=device).contiguous(memory_format=cl) if with_y else None
        c_out = 2 * c if with_y else c
        return x, y, ConvInputs.nan_out((n, c_out, h, w), next_dtype, device)


@pytest.fixture
def conv_inputs():
    """The :class:`ConvInputs` helpers (activations, weights, fused options, NaN-filled outputs)."""
    return ConvInputs


class TrainingImages:
    """Training pairs (HQ, LQ, eps) in chosen layouts and NaN-filled outputs, for the tests of
    training_input and weighted_velocity_loss, through the ``training_images`` fixture."""

    @staticmethod
    def images(shape, layouts=("contiguous",) * 3, dtype=torch.float32, device="cpu", with_eps=True):
        out = []
        for layout in layouts[: 3 if with_eps else 2]:
            if layout == "sliced":
                n, c, h, w = shape
                t = torch.randn(n, c, h + 1, w + 2, device=device)[:, :, 1:, 1:-1]
            else:
                t = torch.randn(shape, device=device)
                if layout == "channels_last":
                    t = t.to(memory_format=torch.channels_last)
            out.append(t.to(dtype))
        return out if with_eps else out + [None]

    @staticmethod
    def nan_tensor(shape, layout, dtype=torch.float32):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        return torch.full(shape, float("nan"), dtype=dtype).contiguous(memory_format=fmt)


@pytest.fixture
def training_images():
    """The :class:`TrainingImages` helpers."""
    return TrainingImages
