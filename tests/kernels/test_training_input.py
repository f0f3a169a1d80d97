"""training_input: the fused z_t kernel against the reference Schedule."""
import importlib

import pytest
import torch

from resflow_fast.kernels import _runtime, training_input
from resflow_fast.reference.schedule import SCHEDULES, Schedule

ti_module = importlib.import_module("resflow_fast.kernels.training_input")

# skipped where they cannot run by the hook in tests/conftest.py
interpreter_only = pytest.mark.interpreter_only
cuda_only = pytest.mark.cuda

SHAPES = [
    pytest.param((1, 3, 3, 5), id="tiny-3x5-batch1"),
    pytest.param((2, 3, 37, 53), id="odd-37x53-batch2"),  # several blocks per sample
    pytest.param((3, 1, 4, 1), id="grey-4x1-batch3"),
    pytest.param((2, 3, 4, 8), id="aligned-4x8-batch2"),  # C*H*W % 16 == 0: the hinted (16-byte) addressing
]


@pytest.mark.parametrize("name", SCHEDULES)
def test_coefficients_are_the_reference_schedule(name):
    schedule = Schedule(name)
    t = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    path = ti_module.path_coefficients(schedule, t)
    hq, lq = torch.full_like(t, 2.0), torch.full_like(t, 3.0)
    torch.testing.assert_close(path[:, 0] * hq + path[:, 1] * lq, schedule.x_t(hq, lq, t))
    if schedule.has_auxiliary:
        torch.testing.assert_close(path[:, 2], schedule.sigma_y(t) * torch.ones_like(t))


# ------------------------------------------------------------------------------------------------
# interpreter: the kernel
# ------------------------------------------------------------------------------------------------
@interpreter_only
@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("shape", SHAPES)
def test_training_input_is_the_reference_z_t(shape, name, tol, training_images):
    torch.manual_seed(0)
    schedule = Schedule(name)
    hq, lq, eps = training_images.images(shape, with_eps=schedule.has_auxiliary)
    t = torch.rand(shape[0])
    before = _runtime.launch_counts["training_input"]
    z = training_input(hq, lq, eps, t, schedule)
    assert _runtime.launch_counts["training_input"] == before + 1
    torch.testing.assert_close(z, schedule.z_t(hq, lq, eps, t), **tol(torch.float32))


@interpreter_only
@pytest.mark.parametrize("layouts, out_layout", [
    (("channels_last", "contiguous", "channels_last"), "channels_last"),
    (("contiguous", "sliced", "channels_last"), "contiguous"),
    (("channels_last",) * 3, "contiguous"),
])
def test_training_input_layouts_into_nan_filled_out(layouts, out_layout, tol, training_images):
    torch.manual_seed(1)
    schedule = Schedule()
    hq, lq, eps = training_images.images((2, 3, 5, 7), layouts)
    out = training_images.nan_tensor((2, 6, 5, 7), out_layout)
    assert training_input(hq, lq, eps, 0.3, schedule, out=out) is out  # one t for the batch
    torch.testing.assert_close(out, schedule.z_t(hq, lq, eps, 0.3), **tol(torch.float32))


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_input_in_network_dtype(dtype, tol, training_images):
    torch.manual_seed(2)
    schedule = Schedule()
    hq, lq, eps = training_images.images((1, 3, 5, 7), ("channels_last",) * 3)
    t = torch.rand(1)
    z = training_input(hq, lq, eps, t, schedule, out_dtype=dtype)
    assert z.dtype == dtype and z.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(z.float(), schedule.z_t(hq, lq, eps, t), **tol(dtype))


def test_triton_path_runs_not_the_twin(monkeypatch, kernel_device, training_images):
    def twin_must_not_run(*args, **kwargs):
        raise AssertionError("the twin ran instead of the Triton kernel")

    monkeypatch.setattr(ti_module, "_training_input_twin", twin_must_not_run)
    hq, lq, eps = training_images.images((1, 3, 3, 5), device=kernel_device)
    before = _runtime.launch_counts["training_input"]
    training_input(hq, lq, eps, 0.5, Schedule())
    assert _runtime.launch_counts["training_input"] == before + 1


@pytest.mark.parametrize("variant", ["functional", "out"])
def test_opcheck(variant, kernel_device, training_images):
    hq, lq, eps = training_images.images((1, 3, 3, 5), ("channels_last", "contiguous", "contiguous"),
                                         device=kernel_device)
    coefficients = ti_module.path_coefficients(Schedule(), torch.tensor([0.4], device=kernel_device))
    if variant == "functional":
        torch.library.opcheck(torch.ops.resflow_fast.training_input.default, (hq, lq, eps, coefficients, torch.bfloat16))
    else:
        torch.library.opcheck(torch.ops.resflow_fast.training_input_out.default,
                              (hq, lq, eps, coefficients, torch.empty(1, 6, 3, 5, device=kernel_device)))


# ------------------------------------------------------------------------------------------------
# the plain formula (CPU path of the trainer), switches and validation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["entropy_preserving", "x_only"])
def test_disabled_triton_gives_the_reference_z_t(name, monkeypatch, tol, training_images):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    torch.manual_seed(6)
    schedule = Schedule(name)
    hq, lq, eps = training_images.images((2, 3, 5, 4), ("channels_last", "contiguous", "contiguous"),
                                         with_eps=schedule.has_auxiliary)
    t = torch.tensor([0.1, 0.8])
    before = dict(_runtime.launch_counts)
    out = training_images.nan_tensor((2, schedule.state_channels(3), 5, 4), "channels_last")
    training_input(hq, lq, eps, t, schedule, out=out)
    torch.testing.assert_close(out, schedule.z_t(hq, lq, eps, t), **tol(torch.float32))
    assert dict(_runtime.launch_counts) == before


@pytest.mark.parametrize("call, error, match", [
    (lambda a: training_input(a["hq"], a["lq"], a["eps"], 0.5, "entropy_preserving"), TypeError, "schedule must be"),
    (lambda a: training_input(a["hq"], a["lq"][:, :2], a["eps"], 0.5, Schedule()), ValueError, "lq must have shape"),
    (lambda a: training_input(a["hq"], a["lq"], None, 0.5, Schedule()), ValueError, "eps is required"),
    (lambda a: training_input(a["hq"][0], a["lq"], a["eps"], 0.5, Schedule()), ValueError, "hq must be a 4-D"),
    (lambda a: training_input(a["hq"], a["lq"], a["eps"], torch.rand(3), Schedule()), ValueError, r"t must be .*shape \(2,\)"),
    (lambda a: training_input(a["hq"], a["lq"], a["eps"], torch.tensor([0, 1]), Schedule()), TypeError, "floating-point"),
    (lambda a: training_input(a["hq"], a["lq"], a["eps"], float("nan"), Schedule()), ValueError, "t must be finite"),
    (lambda a: training_input(a["hq"], a["lq"], a["eps"], 0.5, Schedule(), out_dtype=torch.int8), TypeError, "out_dtype"),
    (lambda a: training_input(a["hq"], a["lq"], a["eps"], 0.5, Schedule(), out=torch.empty(2, 3, 4, 5)),
     ValueError, r"out must have shape \(2, 6, 4, 5\)"),
    (lambda a: training_input(a["hq"], a["lq"], a["eps"], 0.5, Schedule(), out=torch.empty(2, 6, 4, 10)[..., ::2]),
     ValueError, "out must be contiguous"),
])
def test_validation_errors_name_the_argument(call, error, match):
    args = dict(hq=torch.randn(2, 3, 4, 5), lq=torch.randn(2, 3, 4, 5), eps=torch.randn(2, 3, 4, 5))
    with pytest.raises(error, match=match):
        call(args)


# ------------------------------------------------------------------------------------------------
# CUDA: compiled kernel
# ------------------------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["entropy_preserving", "x_only"])
def test_cuda_against_the_reference(name, dtype, tol, training_images):
    torch.manual_seed(7)
    schedule = Schedule(name)
    shape = (4, 3, 129, 67)
    hq, lq, eps = training_images.images(shape, ("channels_last", "channels_last", "contiguous"), device="cuda",
                                         with_eps=schedule.has_auxiliary)
    t = torch.rand(4, device="cuda")
    z = training_input(hq, lq, eps, t, schedule, out_dtype=dtype)
    torch.testing.assert_close(z.float(), schedule.z_t(hq, lq, eps, t), **tol(dtype))


@cuda_only
def test_cuda_deterministic_and_sizes_do_not_recompile(training_images):
    schedule = Schedule()
    kernel = ti_module._training_input_kernel

    def run(h, w):
        hq, lq, eps = training_images.images((2, 3, h, w), ("channels_last",) * 3, device="cuda")
        t = torch.rand(2, device="cuda")
        return training_input(hq, lq, eps, t, schedule, out_dtype=torch.bfloat16), (hq, lq, eps, t)

    torch.manual_seed(8)
    z, args = run(256, 256)
    assert torch.equal(training_input(*args, schedule, out_dtype=torch.bfloat16), z)
    run(1, 1)  # a 1x1 image is NCHW- and NHWC-dense at once and takes the NCHW variant: warm it too
    run(37, 53)  # C*H*W not a multiple of 16: the variant without alignment hints, the only other one
    variants = _runtime.compiled_variants(kernel)
    for h, w in ((37, 53), (255, 257), (1, 1), (512, 384), (17, 1)):
        run(h, w)
    assert _runtime.compiled_variants(kernel) == variants
