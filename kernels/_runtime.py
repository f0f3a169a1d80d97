"""Whether a Triton kernel runs, or its pure-torch twin.

One decision, made per call and in one place, so that every op in ``kernels/`` behaves alike:

* ``RESFLOW_DISABLE_TRITON=1`` (or any value but ``""``/``"0"``) turns every Triton kernel off;
  the twins run instead. Read at call time, so a test or a user can flip it without re-importing.
* Triton not importable -> twin.
* Tensors on CUDA -> Triton.
* Tensors on CPU -> Triton only under the interpreter (``TRITON_INTERPRET=1``, which must be set
  before triton is first imported); that is how CI on a machine without a GPU tests the kernels
  themselves rather than the twins.
* Anything else (a CPU tensor without the interpreter, another device, mixed devices) -> twin.

Falling back for lack of Triton or of a GPU is normal on a laptop, so it is said once per process
and reason, quietly, at INFO level on the ``resflow_fast`` logger.

``launch_counts`` counts Triton launches per kernel name, so tests can prove the Triton path ran
instead of comparing the twin with itself.
"""
from __future__ import annotations

import contextlib

import collections
import logging
import os

import torch

try:  # Triton is optional: without it every op runs its twin.
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - ImportError, or a broken install failing while importing

    class _MissingTriton:
        """Stands in for ``triton`` so the kernel files still import; their kernels never launch
        because :func:`use_triton` returns False."""

        @staticmethod
        def jit(fn=None, **kwargs):
            return (lambda f: f) if fn is None else fn

    class _MissingTritonLanguage:
        constexpr = None  # only read as an annotation at definition time

    triton = _MissingTriton()
    tl = _MissingTritonLanguage()
    _TRITON_IMPORTED = False
else:
    _TRITON_IMPORTED = True

_LOG = logging.getLogger("resflow_fast")
_ENV_DISABLE = "RESFLOW_DISABLE_TRITON"
_ENV_INTERPRET = "TRITON_INTERPRET"

#: Number of Triton launches per kernel name since import (tests read and reset it).
launch_counts: collections.Counter = collections.Counter()

_fallbacks_logged: set = set()


def triton_disabled() -> bool:
    """True when ``RESFLOW_DISABLE_TRITON`` asks for the twins everywhere."""
    return os.environ.get(_ENV_DISABLE, "").strip() not in ("", "0")


def interpreter_enabled() -> bool:
    """True when the Triton interpreter runs kernels on CPU tensors (``TRITON_INTERPRET=1``)."""
    return os.environ.get(_ENV_INTERPRET, "") == "1"


def triton_available() -> bool:
    """Whether ``triton`` and ``triton.language`` imported on this machine (checked once, at import)."""
    return _TRITON_IMPORTED


def _log_fallback_once(reason: str) -> None:
    if reason not in _fallbacks_logged:
        _fallbacks_logged.add(reason)
        _LOG.info("resflow_fast kernels: %s; using the pure-torch twins", reason)


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Decide whether the Triton kernel should run on these tensors (``None`` entries ignored)."""
    if triton_disabled():
        _log_fallback_once(f"Triton kernels disabled by {_ENV_DISABLE}")
        return False
    if not triton_available():
        _log_fallback_once("Triton is not importable")
        return False
    device_types = {t.device.type for t in tensors if t is not None}
    if device_types == {"cuda"}:
        return True
    if device_types == {"cpu"} and interpreter_enabled():
        return True
    if device_types == {"cpu"}:
        _log_fallback_once(f"no GPU for these tensors (CPU, {_ENV_INTERPRET} is not 1)")
    else:
        _log_fallback_once(f"tensors on unsupported or mixed devices {sorted(device_types)}")
    return False


def record_launch(kernel_name: str) -> None:
    """Count one launch of ``kernel_name`` (see :data:`launch_counts`)."""
    launch_counts[kernel_name] += 1


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """True when autograd would record through these tensors (the forward-only kernels then
    defer to their differentiable twins)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# -- shared validation and layout helpers (used by every launcher) --------------------------------
SUPPORTED_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(name: str, t, *, ndim: int | None = None, dtypes=SUPPORTED_FLOAT_DTYPES) -> None:
    """Raise TypeError/ValueError naming ``name`` when ``t`` is not a tensor of the expected kind."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")


def check_same_device(**tensors) -> None:
    """Raise ValueError naming the first tensor that is not on the first one's device."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             "all tensors must be on one device")


def check_shape(name: str, t: torch.Tensor, expected: tuple) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def is_channels_last(t: torch.Tensor) -> bool:
    """True for a dense NHWC tensor that is not also dense NCHW (NCHW wins ties: C == 1, H*W == 1)."""
    return (not t.is_contiguous()) and t.is_contiguous(memory_format=torch.channels_last)


def is_dense_4d(t: torch.Tensor) -> bool:
    """Dense NCHW or dense NHWC: the two layouts the kernels address by (n, c, pixel)."""
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def as_dense_4d(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is dense NCHW/NHWC, else a contiguous (NCHW) copy."""
    return t if is_dense_4d(t) else t.contiguous()


def empty_like_layout(t: torch.Tensor, dtype: torch.dtype | None = None, channels: int | None = None) -> torch.Tensor:
    """A new (N, channels, H, W) tensor in ``t``'s layout (NHWC if ``t`` is NHWC, else NCHW)."""
    n, c, h, w = t.shape
    fmt = torch.channels_last if is_channels_last(t) else torch.contiguous_format
    return torch.empty((n, c if channels is None else channels, h, w), dtype=dtype or t.dtype,
                       device=t.device, memory_format=fmt)


def on_device_of(t: torch.Tensor):
    """Triton launches on the *current* CUDA device, not on its tensors' device: make the
    tensor's device current for the launch (a no-op context on the CPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


#: Elements the launchers require a per-sample size to be a multiple of before they tell a kernel
#: its sample bases are aligned (``tl.multiple_of``): 16 covers 16-byte vectors of every dtype here.
ALIGN_ELEMENTS = 16


def samples_aligned(*sizes: int) -> bool:
    """Whether every per-sample element count in ``sizes`` is a multiple of :data:`ALIGN_ELEMENTS`,
    so that sample bases (and the y halves at C * H * W) start on 16-byte boundaries of 16-byte
    aligned tensors. The kernels take this as a flag and fall back to unhinted addressing without it."""
    return all(size % ALIGN_ELEMENTS == 0 for size in sizes)


def cdiv(a: int, b: int) -> int:
    """Ceiling division for launch grids (no Triton needed, so configs can be tested anywhere)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def compiled_variants(kernel) -> int:
    """How many compiled variants a ``@triton.jit`` kernel holds, over all devices.

    ``device_caches[device][0]`` is the kernel cache in Triton 3.x (3.2 through 3.9 at least);
    the interpreter keeps none, so this is 0 there. Tests use it to prove a new H or W does not
    recompile.
    """
    caches = getattr(kernel, "device_caches", None)
    if caches is None:
        return 0
    return sum(len(entry[0]) for entry in caches.values())


# -- addressing shared by the element-wise kernels -------------------------------------------------
# The kernels address a dense 4-D tensor by (sample n, channel c, pixel p = h * W + w) and a layout
# flag, never by strides: dense NCHW and NHWC strides are functions of (C, H*W), and passing them
# would specialise the kernel on H*W (Triton keys integer arguments on divisibility by 16).
@triton.jit
def dense_offset(c, p, channels, HW, CHANNELS_LAST: tl.constexpr):
    """Offset of (channel c, pixel p) inside one dense sample with ``channels`` channels and HW
    pixels: ``p * channels + c`` for NHWC, ``c * HW + p`` for NCHW."""
    if CHANNELS_LAST:
        offset = p * channels + c
    else:
        offset = c * HW + p
    return offset


@triton.jit
def walk_offset(i, c, p, channels, first, first_elements, HW, CL: tl.constexpr, WALK_CL: tl.constexpr):
    """Offset of (channel ``first`` + c, pixel p) inside one dense sample with ``channels``
    channels and layout CL, for the element at index i of a (C, HW) sample walked in layout
    WALK_CL (``first_elements`` = first * HW). When both layouts are NCHW that is
    ``first_elements + i``, which the compiler sees as contiguous (16-byte accesses); otherwise it
    is computed from (c, p)."""
    if (not CL) and (not WALK_CL):
        offset = first_elements + i
    else:
        offset = dense_offset(c + first, p, channels, HW, CL)
    return offset


@triton.jit
def decode_index(i, C, HW, CHANNELS_LAST: tl.constexpr):
    """(channel, pixel) of the element at in-sample index ``i`` of a dense (C, HW) sample, for
    kernels that walk memory in the order of their main tensor's layout."""
    if CHANNELS_LAST:
        p = i // C
        c = i - p * C
    else:
        c = i // HW
        p = i - c * HW
    return c, p


@triton.jit
def silu(t):
    """``t * sigmoid(t)`` in fp32 as ``t / (1 + 2^(-t * log2(e)))``: one exp2 and one division
    that need not round as IEEE does (``ieee_rounding=False``), instead of sigmoid's exp, IEEE
    division and extra product. Like any fp32 exp, rounding ``t * log2(e)`` leaves a relative error
    of about |t| * 2^-24; below t of about -88 the exp2 overflows and the result is -0 where the
    exact value is under 1e-36 in magnitude."""
    return tl.fdiv(t, 1.0 + tl.exp2(-1.4426950408889634 * t), ieee_rounding=False)
