"""euler_step: the fused Triton step against the pure-torch twin and the reference schedule."""
import importlib

import pytest
import torch

from resflow_fast.kernels import _runtime, euler_step, euler_step_reference
from resflow_fast.reference.schedule import Schedule

euler_module = importlib.import_module("resflow_fast.kernels.euler_step")

# skipped where they cannot run by the hook in tests/conftest.py
interpreter_only = pytest.mark.interpreter_only
cuda_only = pytest.mark.cuda

SHAPES = [
    pytest.param((1, 3, 3, 5), id="tiny-3x5-batch1"),
    pytest.param((2, 3, 37, 53), id="odd-37x53-batch2"),  # several blocks per sample, partial last block
    pytest.param((2, 5, 1, 1), id="1x1-C5"),
    pytest.param((2, 3, 4, 8), id="aligned-4x8-batch2"),  # C*H*W % 16 == 0: the hinted (16-byte) addressing
]
# (x and y, v, next_input) layouts; "sliced" is a strided view that must be copied
LAYOUTS = [
    pytest.param(("contiguous", "contiguous", "contiguous"), id="all-nchw"),
    pytest.param(("channels_last", "channels_last", "channels_last"), id="all-nhwc"),
    pytest.param(("contiguous", "channels_last", "channels_last"), id="fp32-state-nchw-network-nhwc"),
    pytest.param(("channels_last", "contiguous", "contiguous"), id="state-nhwc-network-nchw"),
    pytest.param(("contiguous", "sliced", "contiguous"), id="v-sliced"),
]


def make(shape, layout, dtype=torch.float32, device="cpu"):
    n, c, h, w = shape
    if layout == "sliced":
        return torch.randn(n, c + 2, h, w + 1, device=device)[:, 1:-1, :, :w].to(dtype)
    t = torch.randn(shape, device=device).to(dtype)
    return t.to(memory_format=torch.channels_last) if layout == "channels_last" else t


def nan_tensor(shape, layout, dtype=torch.float32, device="cpu"):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return torch.full(shape, float("nan"), dtype=dtype, device=device).contiguous(memory_format=fmt)


def state(shape, layouts, v_dtype=torch.float32, device="cpu", with_y=True):
    state_layout, v_layout, _ = layouts
    n, c, h, w = shape
    x = make(shape, state_layout, device=device)
    y = make(shape, state_layout, device=device) if with_y else None
    v = make((n, 2 * c if with_y else c, h, w), v_layout, dtype=v_dtype, device=device)
    return x, y, v


# ------------------------------------------------------------------------------------------------
# interpreter: the kernel itself
# ------------------------------------------------------------------------------------------------
@interpreter_only
@pytest.mark.parametrize("layouts", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_twin_and_writes_next_input(shape, layouts, tol):
    torch.manual_seed(0)
    x, y, v = state(shape, layouts)
    n, c, h, w = shape
    next_input = nan_tensor((n, 2 * c, h, w), layouts[2])
    before = _runtime.launch_counts["euler_step"]
    x_new, y_new = euler_step(x, y, v, 0.25, next_input=next_input)
    assert _runtime.launch_counts["euler_step"] == before + 1
    x_ref, y_ref = euler_step_reference(x, y, v, 0.25)
    torch.testing.assert_close(x_new, x_ref, **tol(torch.float32))
    torch.testing.assert_close(y_new, y_ref, **tol(torch.float32))
    torch.testing.assert_close(next_input, torch.cat([x_ref, y_ref], dim=1), **tol(torch.float32))
    fmt = torch.channels_last if layouts[0] == "channels_last" else torch.contiguous_format
    assert x_new.is_contiguous(memory_format=fmt) and y_new.is_contiguous(memory_format=fmt)  # layouts kept


@interpreter_only
@pytest.mark.parametrize("layouts", LAYOUTS[:3])
def test_inplace_updates_the_state_objects(layouts, tol):
    torch.manual_seed(1)
    x, y, v = state((2, 3, 5, 7), layouts)
    x_ref, y_ref = euler_step_reference(x, y, v, 0.5)
    x_new, y_new = euler_step(x, y, v, 0.5, inplace=True)
    assert x_new is x and y_new is y
    torch.testing.assert_close(x, x_ref, **tol(torch.float32))
    torch.testing.assert_close(y, y_ref, **tol(torch.float32))


@interpreter_only
@pytest.mark.parametrize("schedule_name", ["entropy_preserving", "constant"])
def test_exact_y_option_follows_the_schedule(schedule_name, tol):
    """y <- y * sigma_y(t_next) / sigma_y(t): equal to the reference Schedule.y_exact_step, and v's
    y half (NaN here) is never read."""
    torch.manual_seed(2)
    schedule = Schedule(schedule_name)
    x, y, v = state((1, 3, 6, 5), LAYOUTS[2].values[0])
    v[:, 3:] = float("nan")
    next_input = nan_tensor((1, 6, 6, 5), "channels_last")
    scale = schedule.y_exact_scale(0.75, 0.5)
    x_new, y_new = euler_step(x, y, v, 0.25, y_scale=scale, next_input=next_input)
    torch.testing.assert_close(y_new, schedule.y_exact_step(y, 0.75, 0.5), **tol(torch.float32))
    torch.testing.assert_close(x_new, x - 0.25 * v[:, :3], **tol(torch.float32))
    assert torch.isfinite(next_input).all()


@interpreter_only
@pytest.mark.parametrize("layouts", LAYOUTS[:3])
def test_x_only_state(layouts, tol):
    torch.manual_seed(3)
    x, _, v = state((2, 3, 5, 7), layouts, with_y=False)
    next_input = nan_tensor((2, 3, 5, 7), layouts[2])
    x_new, y_new = euler_step(x, None, v, 0.25, next_input=next_input)
    assert y_new is None
    torch.testing.assert_close(x_new, x - 0.25 * v, **tol(torch.float32))
    torch.testing.assert_close(next_input, x_new, **tol(torch.float32))


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_network_tensors_in_interpreter(dtype, tol):
    """fp32 state, network-dtype v and next input: the state stays fp32, the next input is one
    rounding of the fp32 result."""
    torch.manual_seed(4)
    x, y, v = state((1, 3, 5, 7), LAYOUTS[2].values[0], v_dtype=dtype)
    next_input = nan_tensor((1, 6, 5, 7), "channels_last", dtype=dtype)
    x_new, y_new = euler_step(x, y, v, 0.25, next_input=next_input)
    x_ref, y_ref = euler_step_reference(x, y, v, 0.25)
    assert x_new.dtype == torch.float32 and next_input.dtype == dtype
    torch.testing.assert_close(x_new, x_ref, **tol(torch.float32))
    torch.testing.assert_close(next_input.float(), torch.cat([x_ref, y_ref], 1), **tol(dtype))


def test_triton_path_runs_not_the_twin(monkeypatch, kernel_device):
    def twin_must_not_run(*args, **kwargs):
        raise AssertionError("the pure-torch twin ran instead of the Triton kernel")

    monkeypatch.setattr(euler_module, "euler_update", twin_must_not_run)
    x, y, v = state((1, 3, 3, 5), LAYOUTS[0].values[0], device=kernel_device)
    before = _runtime.launch_counts["euler_step"]
    euler_step(x, y, v, 0.25)
    euler_step(x, y, v, 0.25, inplace=True, next_input=torch.empty(1, 6, 3, 5, device=kernel_device))
    assert _runtime.launch_counts["euler_step"] == before + 2


@pytest.mark.parametrize("variant", ["functional", "out-inplace", "out-x-only"])
def test_opcheck(variant, kernel_device):
    x, y, v = state((1, 3, 3, 5), LAYOUTS[2].values[0], device=kernel_device)
    if variant == "functional":
        torch.library.opcheck(torch.ops.resflow_fast.euler_step.default, (x, y, v, 0.25, None))
    elif variant == "out-inplace":
        torch.library.opcheck(torch.ops.resflow_fast.euler_step_out.default,
                              (x, y, v, 0.25, 0.9, x, y, torch.empty(1, 6, 3, 5, dtype=torch.bfloat16, device=kernel_device)))
    else:
        torch.library.opcheck(torch.ops.resflow_fast.euler_step_out.default,
                              (x, None, v[:, :3].contiguous(), 0.25, None, torch.empty_like(x), None, None))


def test_torch_compile_traces_a_sampler_loop_without_graph_break(tol, kernel_device):
    schedule = Schedule()
    x, y, v = state((1, 3, 3, 5), LAYOUTS[0].values[0], device=kernel_device)
    next_input = torch.empty(1, 6, 3, 5, device=kernel_device)

    def two_steps(x, y, v, next_input):
        x, y = euler_step(x, y, v, 0.25, next_input=next_input)
        return euler_step(x, y, next_input, 0.25, inplace=True, y_scale=schedule.y_exact_scale(0.75, 0.5))

    compiled = torch.compile(two_steps, backend="aot_eager", fullgraph=True)
    expected = two_steps(x.clone(), y.clone(), v, next_input.clone())
    got = compiled(x.clone(), y.clone(), v, next_input)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **tol(torch.float32))


# ------------------------------------------------------------------------------------------------
# switches and validation
# ------------------------------------------------------------------------------------------------
def test_disable_switch_runs_the_twin(monkeypatch, tol):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    before = _runtime.launch_counts["euler_step"]
    x, y, v = state((1, 3, 3, 5), LAYOUTS[2].values[0])
    next_input = nan_tensor((1, 6, 3, 5), "channels_last")
    x_new, y_new = euler_step(x, y, v, 0.25, next_input=next_input)
    assert _runtime.launch_counts["euler_step"] == before
    x_ref, y_ref = euler_step_reference(x, y, v, 0.25)
    torch.testing.assert_close(x_new, x_ref, **tol(torch.float32))
    torch.testing.assert_close(next_input, torch.cat([x_ref, y_ref], 1), **tol(torch.float32))


def test_autograd_goes_through_the_twin():
    x, y, v = state((1, 3, 3, 5), LAYOUTS[0].values[0])
    v.requires_grad_()
    before = _runtime.launch_counts["euler_step"]
    x_new, y_new = euler_step(x, y, v, 0.25)
    (x_new.sum() + y_new.sum()).backward()
    assert _runtime.launch_counts["euler_step"] == before
    torch.testing.assert_close(v.grad, torch.full_like(v, -0.25))


@pytest.mark.parametrize("mutate, error, match", [
    (lambda a: a.update(x=a["x"].double()), TypeError, "x must have dtype in \\(float32\\)"),
    (lambda a: a.update(y=torch.randn(1, 3, 3, 4)), ValueError, r"y must have shape \(1, 3, 3, 5\)"),
    (lambda a: a.update(v=torch.randn(1, 3, 3, 5)), ValueError, "v must have shape .*2C channels"),
    (lambda a: a.update(y=None), ValueError, "v must have shape .*x-only"),
    (lambda a: a.update(v=torch.randn(1, 6, 3, 5).long()), TypeError, "v must have dtype"),
    (lambda a: a.update(dt=torch.tensor(0.25)), TypeError, "dt must be a Python float"),
    (lambda a: a.update(dt=float("inf")), ValueError, "dt must be a finite number"),
    (lambda a: a.update(y_scale=float("nan")), ValueError, "y_scale must be a finite number"),
    (lambda a: a.update(y=None, v=torch.randn(1, 3, 3, 5), y_scale=0.9), ValueError, "y is None"),
    (lambda a: a.update(inplace=1), TypeError, "inplace must be a bool"),
    (lambda a: a.update(inplace=True, x=torch.randn(1, 3, 3, 10)[..., ::2]), ValueError, "inplace=True needs x"),
    (lambda a: a.update(next_input=torch.empty(1, 3, 3, 5)), ValueError, r"next_input must have shape \(1, 6, 3, 5\)"),
    (lambda a: a.update(next_input=torch.empty(1, 6, 3, 10)[..., ::2]), ValueError, "next_input must be contiguous"),
    (lambda a: a.update(v=torch.randn(1, 6, 3, 5, device="meta")), ValueError, "v is on meta"),
])
def test_validation_errors_name_the_argument(mutate, error, match):
    args = dict(x=torch.randn(1, 3, 3, 5), y=torch.randn(1, 3, 3, 5), v=torch.randn(1, 6, 3, 5), dt=0.25,
                inplace=False, next_input=None, y_scale=None)
    mutate(args)
    with pytest.raises(error, match=match):
        euler_step(args.pop("x"), args.pop("y"), args.pop("v"), args.pop("dt"), **args)


# ------------------------------------------------------------------------------------------------
# CUDA: compiled kernel
# ------------------------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layouts", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 3, 255, 257), (2, 3, 64, 64), (3, 8, 17, 9)])
def test_cuda_against_twin(shape, layouts, dtype, tol):
    torch.manual_seed(5)
    x, y, v = state(shape, layouts, v_dtype=dtype, device="cuda")
    n, c, h, w = shape
    next_input = nan_tensor((n, 2 * c, h, w), layouts[2], dtype=dtype, device="cuda")
    x_new, y_new = euler_step(x, y, v, 0.25, next_input=next_input)
    x_ref, y_ref = euler_step_reference(x, y, v, 0.25)
    torch.testing.assert_close(x_new, x_ref, **tol(torch.float32))
    torch.testing.assert_close(y_new, y_ref, **tol(torch.float32))
    torch.testing.assert_close(next_input.float(), torch.cat([x_ref, y_ref], 1), **tol(dtype))


@cuda_only
def test_cuda_deterministic_and_no_recompile_for_new_sizes_or_dt():
    kernel = euler_module._euler_step_kernel
    layouts = LAYOUTS[2].values[0]

    def run(h, w, dt):
        x, y, v = state((1, 3, h, w), layouts, v_dtype=torch.bfloat16, device="cuda")
        next_input = torch.empty(1, 6, h, w, dtype=torch.bfloat16, device="cuda").to(memory_format=torch.channels_last)
        return euler_step(x, y, v, dt, next_input=next_input), (x, y, v, next_input)

    torch.manual_seed(6)
    first, (x, y, v, next_input) = run(64, 64, 0.25)
    first_next = next_input.clone()
    for _ in range(3):
        again = euler_step(x, y, v, 0.25, next_input=next_input)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
        assert torch.equal(next_input, first_next)
    run(1, 1, 0.5)  # a 1x1 image is NCHW- and NHWC-dense at once and takes the NCHW variant: warm it too
    run(37, 53, 0.5)  # C*H*W not a multiple of 16: the variant without alignment hints, the only other one
    variants = _runtime.compiled_variants(kernel)
    for h, w, dt in ((37, 53, 0.1), (255, 257, 0.25), (1, 1, 1.0), (512, 384, 1 / 3), (17, 1, 0.2)):
        run(h, w, dt)
    assert _runtime.compiled_variants(kernel) == variants
