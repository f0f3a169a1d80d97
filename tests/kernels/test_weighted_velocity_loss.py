"""weighted_velocity_loss: the fused loss and gradient kernel against autograd through the
reference Schedule (target velocity, lambda) and the reference loss."""
import importlib

import pytest
import torch

from resflow_fast.kernels import _runtime, training_input, weighted_velocity_loss, weighted_velocity_loss_reference
from resflow_fast.reference.schedule import SCHEDULES, Schedule

loss_module = importlib.import_module("resflow_fast.kernels.weighted_velocity_loss")

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
    target = loss_module.target_coefficients(schedule, t)
    torch.testing.assert_close(target[:, 3], schedule.loss_weight(t))
    if schedule.has_auxiliary:
        torch.testing.assert_close(target[:, 2], schedule.sigma_y_derivative(t) * torch.ones_like(t))
    torch.testing.assert_close(target[:, :2], torch.tensor([[-1.0, 1.0]]).expand(5, 2))  # dz/dt = LQ - HQ


# ------------------------------------------------------------------------------------------------
# interpreter: the loss and its gradient
# ------------------------------------------------------------------------------------------------
def loss_and_grad(fn, v, *args):
    v = v.detach().clone().requires_grad_()
    loss = fn(v, *args)
    loss.backward()
    return loss.detach(), v.grad


@interpreter_only
@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_and_grad_match_autograd_through_the_reference(shape, name, tol, training_images):
    torch.manual_seed(3)
    schedule = Schedule(name)
    hq, lq, eps = training_images.images(shape, with_eps=schedule.has_auxiliary)
    v = torch.randn(shape[0], schedule.state_channels(shape[1]), *shape[2:])
    t = torch.rand(shape[0])
    before = _runtime.launch_counts["velocity_loss"]
    loss, grad = loss_and_grad(weighted_velocity_loss, v, hq, lq, eps, t, schedule)
    assert _runtime.launch_counts["velocity_loss"] == before + 1
    ref_loss, ref_grad = loss_and_grad(weighted_velocity_loss_reference, v, hq, lq, eps, t, schedule)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(loss, ref_loss, **tol(torch.float32))
    torch.testing.assert_close(grad, ref_grad, atol=1e-8, rtol=1e-5)  # grads are O(1 / numel)


@interpreter_only
@pytest.mark.parametrize("layouts, v_layout", [
    (("channels_last", "contiguous", "channels_last"), "channels_last"),
    (("contiguous", "sliced", "contiguous"), "sliced"),
])
def test_loss_layouts_and_upstream_gradient(layouts, v_layout, tol, training_images):
    torch.manual_seed(4)
    schedule = Schedule()
    hq, lq, eps = training_images.images((2, 3, 5, 7), layouts)
    (v,) = training_images.images((2, 6, 5, 7), (v_layout,), with_eps=False)[:1]
    t = 0.6
    scaled = lambda fn: (lambda v, *a: 3.0 * fn(v, *a))  # noqa: E731 - backward gets grad_output = 3
    loss, grad = loss_and_grad(scaled(weighted_velocity_loss), v, hq, lq, eps, t, schedule)
    ref_loss, ref_grad = loss_and_grad(scaled(weighted_velocity_loss_reference), v, hq, lq, eps, t, schedule)
    torch.testing.assert_close(loss, ref_loss, **tol(torch.float32))
    torch.testing.assert_close(grad, ref_grad, atol=1e-8, rtol=1e-5)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_v_gets_a_gradient_in_its_dtype(dtype, tol, training_images):
    torch.manual_seed(5)
    schedule = Schedule()
    hq, lq, eps = training_images.images((2, 3, 5, 7))
    v = torch.randn(2, 6, 5, 7).to(dtype)
    t = torch.tensor([0.3, 0.9])
    loss, grad = loss_and_grad(weighted_velocity_loss, v, hq, lq, eps, t, schedule)
    ref_loss, ref_grad = loss_and_grad(weighted_velocity_loss_reference, v, hq, lq, eps, t, schedule)
    assert grad.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, **tol(torch.float32))
    torch.testing.assert_close(grad.float(), ref_grad.float(), atol=1e-6, **{"rtol": tol(dtype)["rtol"]})


@interpreter_only
def test_without_grad_only_the_loss_is_computed(tol, training_images):
    schedule = Schedule()
    hq, lq, eps = training_images.images((1, 3, 4, 5))
    v = torch.randn(1, 6, 4, 5, requires_grad=True)
    with torch.no_grad():
        loss = weighted_velocity_loss(v, hq, lq, eps, 0.5, schedule)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, weighted_velocity_loss_reference(v, hq, lq, eps, 0.5, schedule).detach(),
                               **tol(torch.float32))


def test_triton_path_runs_not_the_twin(monkeypatch, kernel_device, training_images):
    def twin_must_not_run(*args, **kwargs):
        raise AssertionError("the twin ran instead of the Triton kernel")

    monkeypatch.setattr(loss_module, "_velocity_loss_twin", twin_must_not_run)
    hq, lq, eps = training_images.images((1, 3, 3, 5), device=kernel_device)
    before = _runtime.launch_counts["velocity_loss"]
    with torch.no_grad():
        weighted_velocity_loss(torch.randn(1, 6, 3, 5, device=kernel_device), hq, lq, eps, 0.5, Schedule())
    assert _runtime.launch_counts["velocity_loss"] == before + 1


@pytest.mark.parametrize("x_only", [False, True], ids=["with-y", "x-only"])
def test_opcheck(x_only, kernel_device, training_images):
    hq, lq, eps = training_images.images((1, 3, 3, 5), ("channels_last", "contiguous", "contiguous"),
                                         device=kernel_device)
    schedule = Schedule("x_only" if x_only else "entropy_preserving")
    coefficients = loss_module.target_coefficients(schedule, torch.tensor([0.4], device=kernel_device))
    v = torch.randn(1, 3 if x_only else 6, 3, 5, device=kernel_device)
    torch.library.opcheck(torch.ops.resflow_fast.weighted_velocity_loss_fwd.default,
                          (v, hq, lq, None if x_only else eps, coefficients, True))


def test_torch_compile_traces_a_training_step_without_graph_break(tol, kernel_device, training_images):
    schedule = Schedule()
    hq, lq, eps = training_images.images((2, 3, 3, 5), device=kernel_device)
    t = torch.tensor([0.2, 0.7], device=kernel_device)
    weight = torch.randn(6, 6, device=kernel_device, requires_grad=True)

    def step(weight):
        z = training_input(hq, lq, eps, t, schedule)
        v = torch.einsum("oc,nchw->nohw", weight, z)  # a stand-in network
        return weighted_velocity_loss(v, hq, lq, eps, t, schedule)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(weight)
    (grad,) = torch.autograd.grad(loss, weight)
    ref_loss = step(weight)
    (ref_grad,) = torch.autograd.grad(ref_loss, weight)
    torch.testing.assert_close(loss, ref_loss, **tol(torch.float32))
    torch.testing.assert_close(grad, ref_grad, **tol(torch.float32))


# ------------------------------------------------------------------------------------------------
# the plain formula (CPU path of the trainer), switches and validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["entropy_preserving", "x_only"])
def test_disabled_triton_gives_the_same_loss_and_grad(name, monkeypatch, tol, training_images):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    torch.manual_seed(6)
    schedule = Schedule(name)
    hq, lq, eps = training_images.images((2, 3, 5, 4), ("channels_last", "contiguous", "contiguous"), with_eps=schedule.has_auxiliary)
    v = torch.randn(2, schedule.state_channels(3), 5, 4)
    t = torch.tensor([0.1, 0.8])
    before = dict(_runtime.launch_counts)
    loss, grad = loss_and_grad(weighted_velocity_loss, v, hq, lq, eps, t, schedule)
    ref_loss, ref_grad = loss_and_grad(weighted_velocity_loss_reference, v, hq, lq, eps, t, schedule)
    torch.testing.assert_close(loss, ref_loss, **tol(torch.float32))
    torch.testing.assert_close(grad, ref_grad, atol=1e-8, rtol=1e-5)
    assert dict(_runtime.launch_counts) == before


def test_data_requiring_grad_uses_the_differentiable_twin(training_images):
    schedule = Schedule()
    hq, lq, eps = training_images.images((1, 3, 3, 5))
    hq.requires_grad_()
    before = _runtime.launch_counts["velocity_loss"]
    weighted_velocity_loss(torch.randn(1, 6, 3, 5), hq, lq, eps, 0.5, schedule).backward()
    assert _runtime.launch_counts["velocity_loss"] == before and hq.grad is not None


@pytest.mark.parametrize("call, error, match", [
    (lambda a: weighted_velocity_loss(torch.randn(2, 6, 4, 5), a["hq"], a["lq"], a["eps"], 0.5, "x"), TypeError,
     "schedule must be"),
    (lambda a: weighted_velocity_loss(torch.randn(2, 3, 4, 5), a["hq"], a["lq"], a["eps"], 0.5, Schedule()),
     ValueError, r"v must have shape \(2, 6, 4, 5\)"),
    (lambda a: weighted_velocity_loss(torch.randn(2, 6, 4, 5), a["hq"], a["lq"], None, 0.5, Schedule("x_only")),
     ValueError, r"v must have shape \(2, 3, 4, 5\)"),
    (lambda a: weighted_velocity_loss(torch.randn(2, 6, 4, 5), a["hq"], a["lq"], None, 0.5, Schedule()),
     ValueError, "eps is required"),
])
def test_validation_errors_name_the_argument(call, error, match):
    args = dict(hq=torch.randn(2, 3, 4, 5), lq=torch.randn(2, 3, 4, 5), eps=torch.randn(2, 3, 4, 5))
    with pytest.raises(error, match=match):
        call(args)


# ------------------------------------------------------------------------------------------------
# CUDA: compiled kernels
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
    v = torch.randn(4, schedule.state_channels(3), 129, 67, device="cuda").to(dtype).to(memory_format=torch.channels_last)
    loss, grad = loss_and_grad(weighted_velocity_loss, v, hq, lq, eps, t, schedule)
    ref_loss, ref_grad = loss_and_grad(weighted_velocity_loss_reference, v, hq, lq, eps, t, schedule)
    assert grad.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, **tol(torch.float32))
    scale = ref_grad.float().abs().max()
    torch.testing.assert_close(grad.float() / scale, ref_grad.float() / scale, **tol(dtype))


@cuda_only
def test_cuda_loss_is_deterministic_and_sizes_do_not_recompile(training_images):
    schedule = Schedule()
    kernels = (loss_module._velocity_loss_kernel,)

    def run(h, w):
        hq, lq, eps = training_images.images((2, 3, h, w), ("channels_last",) * 3, device="cuda")
        t = torch.rand(2, device="cuda")
        v = training_input(hq, lq, eps, t, schedule, out_dtype=torch.bfloat16).requires_grad_()
        loss = weighted_velocity_loss(v, hq, lq, eps, t, schedule)
        loss.backward()
        return loss.detach(), v.grad, (v, hq, lq, eps, t)

    torch.manual_seed(8)
    loss, grad, args = run(256, 256)
    for _ in range(3):
        again, again_grad = loss_and_grad(weighted_velocity_loss, args[0].detach(), *args[1:], schedule)
        assert torch.equal(again, loss) and torch.equal(again_grad, grad)
    run(1, 1)  # a 1x1 image is NCHW- and NHWC-dense at once and takes the NCHW variant: warm it too
    run(37, 53)  # C*H*W not a multiple of 16: the variant without alignment hints, the only other one
    variants = [_runtime.compiled_variants(k) for k in kernels]
    for h, w in ((37, 53), (255, 257), (1, 1), (512, 384), (17, 1)):
        run(h, w)
    assert [_runtime.compiled_variants(k) for k in kernels] == variants


def test_fp16_gradient_survives_a_loss_scale(monkeypatch):
    """dL/dv is ~2/numel small: stored in fp16 before scaling it would flush to zero. The fused
    loss keeps it fp32 until backward has applied grad_loss (a GradScaler's 2**16 here)."""
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")  # the buffer logic is the launcher's, not the kernel's
    schedule = Schedule()
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 256, 256)
    hq = torch.rand(shape, generator=g)
    lq = hq + 0.01 * torch.randn(shape, generator=g)
    eps = torch.randn(shape, generator=g)
    t = torch.tensor([0.999, 0.999])
    target = schedule.target_velocity(hq, lq, eps, t)
    v = (target + 0.01 * torch.randn(target.shape, generator=g)).half().requires_grad_()
    (weighted_velocity_loss(v, hq, lq, eps, t, schedule) * 2.0**16).backward()
    v32 = v.detach().float().requires_grad_()
    (weighted_velocity_loss_reference(v32, hq, lq, eps, t, schedule) * 2.0**16).backward()
    assert v.grad.dtype == torch.float16
    assert (v.grad != 0).float().mean() > 0.99, "the fp16 gradient flushed to zero"
    torch.testing.assert_close(v.grad.float(), v32.grad, atol=1e-5, rtol=1e-2)
