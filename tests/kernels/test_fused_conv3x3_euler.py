"""fused_conv3x3_euler: the output conv with the Euler step in its epilogue, against the unfused
composition (the conv's fp32 twin, then euler_step's twin) and the reference sampler's update.
Inputs come from the ``conv_inputs`` fixture of conftest.py; tiny fp32 shapes under the interpreter.
"""
import importlib

import pytest
import torch
import torch.nn.functional as F

from resflow_fast.kernels import (
    _runtime,
    euler_step,
    euler_step_reference,
    fused_conv3x3,
    fused_conv3x3_euler,
    pack_conv3x3_weight,
)

common = importlib.import_module("resflow_fast.kernels._conv3x3_common")
euler_module = importlib.import_module("resflow_fast.kernels.fused_conv3x3_euler")

# skipped where they cannot run by the hook in tests/conftest.py
interpreter_only = pytest.mark.interpreter_only
cuda_only = pytest.mark.cuda

OP = "fused_conv3x3"  # the conv's entries in the shared tolerance table (tests/kernels/conftest.py)


def euler_oracle(hidden, weight, bias, prologue, x, y, dt, y_scale):
    """The unfused composition: the conv twin in fp32, then the Euler step's twin."""
    v = common.conv3x3_fp32(hidden.float(), weight, bias, 1, *(prologue or (None, None)))
    x_new, y_new = euler_step_reference(x.clone(), None if y is None else y.clone(), v, dt, y_scale=y_scale)
    return x_new, y_new


EULER_CASES = [  # (N, C_in, C, H, W, with y, exact y, with prologue)
    pytest.param((1, 8, 3, 5, 7, True, False, True), id="rgb-joint-y-odd"),
    pytest.param((1, 16, 12, 5, 7, True, False, True), id="x-y-split-across-channel-tiles"),  # C_out 24 > 16
    pytest.param((1, 16, 12, 4, 6, True, True, False), id="exact-y-across-channel-tiles"),
    pytest.param((2, 3, 3, 6, 6, True, True, False), id="exact-y-batch2"),
    pytest.param((1, 16, 3, 7, 9, False, False, True), id="x-only-two-tiles"),
    pytest.param((1, 4, 1, 1, 1, True, False, True), id="1x1-gray"),
]


@interpreter_only
@pytest.mark.parametrize("tma", [False, True], ids=["pointer", "tma"])
@pytest.mark.parametrize("case", EULER_CASES)
def test_euler_epilogue_matches_conv_then_euler_step(case, tma, op_tol, monkeypatch, conv_inputs):
    n, c_in, c, h, w, with_y, exact, with_prologue = case
    if tma:
        monkeypatch.setenv(common.ENV_TMA, "1")
    torch.manual_seed(20)
    hidden = conv_inputs.activation((n, c_in, h, w))
    c_out = 2 * c if with_y else c
    weight, bias = conv_inputs.conv_params(c_in, c_out)
    prologue = conv_inputs.option_kwargs("prologue", hidden, c_out, 1)["prologue"] if with_prologue else None
    x, y, next_input = conv_inputs.euler_state(n, c, h, w, with_y)
    y_scale = 0.8125 if exact else None
    want_x, want_y = euler_oracle(hidden, weight, bias, prologue, x, y, 0.25, y_scale)
    x_ptr = x.data_ptr()
    packed = pack_conv3x3_weight(weight)
    uses_tma = tma and common.tma_eligible(hidden, packed, 1)
    if tma and c_out * 4 % 16 == 0 and c_in * 4 % 16 == 0:
        assert uses_tma  # the cases with 16-byte rows do run the TMA variant
    before = dict(_runtime.launch_counts)
    got_x, got_y = fused_conv3x3_euler(hidden, packed, bias, prologue=prologue, x=x, y=y,
                                       dt=0.25, y_scale=y_scale, next_input=next_input)
    assert _runtime.launch_counts["fused_conv3x3_euler"] == before.get("fused_conv3x3_euler", 0) + 1
    assert _runtime.launch_counts["fused_conv3x3_tma"] == before.get("fused_conv3x3_tma", 0) + int(uses_tma)
    assert got_x is x and x.data_ptr() == x_ptr and got_y is y  # in place
    close = op_tol(OP, torch.float32)
    torch.testing.assert_close(x, want_x, **close)
    if with_y:
        torch.testing.assert_close(y, want_y, **close)
    # every element of the next input is written: [x; y] as they now are
    torch.testing.assert_close(next_input, x if y is None else torch.cat([x, y], dim=1), atol=0, rtol=0)


@interpreter_only
def test_euler_epilogue_equals_the_unfused_kernels(op_tol, conv_inputs):
    """The fused kernel against the two kernels it replaces: fused_conv3x3 (fp32 out) then euler_step."""
    torch.manual_seed(21)
    hidden = conv_inputs.activation((2, 8, 6, 5))
    weight, bias = conv_inputs.conv_params(8, 6)
    prologue = conv_inputs.option_kwargs("prologue", hidden, 6, 1)["prologue"]
    x, y, next_input = conv_inputs.euler_state(2, 3, 6, 5)
    x2, y2, next2 = x.clone(memory_format=torch.channels_last), y.clone(memory_format=torch.channels_last), next_input.clone()
    v = fused_conv3x3(hidden, weight, bias, prologue=prologue)
    euler_step(x2, y2, v, 0.5, inplace=True, next_input=next2)
    fused_conv3x3_euler(hidden, weight, bias, prologue=prologue, x=x, y=y, dt=0.5, next_input=next_input)
    for got, want in ((x, x2), (y, y2), (next_input, next2)):
        torch.testing.assert_close(got, want, **op_tol(OP, torch.float32))


@pytest.mark.parametrize("with_y", [True, False])
def test_euler_twin_matches_the_reference_sampler_step(with_y, monkeypatch, conv_inputs):
    """The twin (RESFLOW_DISABLE_TRITON) is the reference sampler's z <- z - dt * v."""
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    torch.manual_seed(22)
    hidden = conv_inputs.activation((1, 4, 5, 6))
    c_out = 6 if with_y else 3
    weight, bias = conv_inputs.conv_params(4, c_out)
    x, y, next_input = conv_inputs.euler_state(1, 3, 5, 6, with_y)
    z = x.clone() if y is None else torch.cat([x, y], dim=1)
    v = F.conv2d(hidden, weight, bias, padding=1)
    fused_conv3x3_euler(hidden, weight, bias, x=x, y=y, dt=0.25, next_input=next_input)
    z_new = z - 0.25 * v
    torch.testing.assert_close(next_input, z_new, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x, z_new[:, :3], atol=1e-6, rtol=1e-6)


def test_euler_opcheck(kernel_device, conv_inputs):
    hidden = conv_inputs.activation((1, 4, 3, 4), device=kernel_device)
    weight, bias = conv_inputs.conv_params(4, 6, device=kernel_device)
    prologue = conv_inputs.option_kwargs("prologue", hidden, 6, 1)["prologue"]
    x, y, next_input = conv_inputs.euler_state(1, 3, 3, 4, device=kernel_device)
    torch.library.opcheck(torch.ops.resflow_fast.fused_conv3x3_euler.default,
                          (hidden, pack_conv3x3_weight(weight), bias, *prologue, x, y, next_input, 0.25, None))


def _euler_args(conv_inputs):
    hidden = conv_inputs.activation((1, 4, 3, 4))
    weight, bias = conv_inputs.conv_params(4, 6)
    x, y, next_input = conv_inputs.euler_state(1, 3, 3, 4)
    return dict(h=hidden, weight=weight, bias=bias, x=x, y=y, dt=0.25, next_input=next_input)


@pytest.mark.parametrize("mutate, error, match", [
    (lambda a: a.update(weight=torch.randn(5, 4, 3, 3), bias=None), ValueError, "C_out=5"),
    (lambda a: a.update(y=None), ValueError, "C_out=6"),
    (lambda a: a.update(x=a["x"].contiguous()), ValueError, "x must be channels_last"),
    (lambda a: a.update(x=a["x"].double()), TypeError, "x must have dtype"),
    (lambda a: a.update(y=a["y"][:, :, :2]), ValueError, "y must have shape"),
    (lambda a: a.update(next_input=a["next_input"][:, :5]), ValueError, "next_input must have shape"),
    (lambda a: a.update(dt=float("nan")), ValueError, "dt must be a finite"),
    (lambda a: a.update(y=None, weight=torch.randn(3, 4, 3, 3), bias=None, next_input=None, y_scale=0.5),
     ValueError, "y_scale moves y exactly"),
])
def test_euler_validation_errors_name_the_argument(mutate, error, match, conv_inputs):
    args = _euler_args(conv_inputs)
    mutate(args)
    h, weight, bias = args.pop("h"), args.pop("weight"), args.pop("bias")
    x_before = args["x"].clone()
    with pytest.raises(error, match=match):
        fused_conv3x3_euler(h, weight, bias, **args)
    assert torch.equal(args["x"], x_before)  # nothing written on a refused call


@pytest.mark.parametrize("alias, match", [
    ("y=x", "x must not share memory with y"),
    ("h=next_input", "next_input must not share memory with h"),
])
def test_euler_written_tensors_may_not_alias(alias, match, conv_inputs):
    args = _euler_args(conv_inputs)
    if alias == "y=x":
        args["y"] = args["x"]
    else:  # the conv would read activations the epilogue of another program already overwrote
        args["h"] = args["next_input"][:, :4]
    with pytest.raises(ValueError, match=match):
        fused_conv3x3_euler(args.pop("h"), args.pop("weight"), args.pop("bias"), **args)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("exact", [False, True])
def test_cuda_euler_against_fp32_twin_and_deterministic(dtype, exact, op_tol, conv_inputs):
    torch.manual_seed(23)
    hidden = conv_inputs.activation((2, 64, 37, 53), dtype, "cuda")
    weight, bias = conv_inputs.conv_params(64, 6, dtype, "cuda")
    prologue = conv_inputs.option_kwargs("prologue", hidden, 6, 1)["prologue"]
    x0, y0, _ = conv_inputs.euler_state(2, 3, 37, 53, device="cuda")
    y_scale = 0.75 if exact else None
    want_x, want_y = euler_oracle(hidden, weight, bias, prologue, x0, y0, 0.25, y_scale)
    results = []
    for _ in range(3):
        x, y = x0.clone(memory_format=torch.channels_last), y0.clone(memory_format=torch.channels_last)
        next_input = conv_inputs.nan_out((2, 6, 37, 53), dtype, "cuda")
        fused_conv3x3_euler(hidden, weight, bias, prologue=prologue, x=x, y=y, dt=0.25, y_scale=y_scale,
                            next_input=next_input)
        results.append((x, y, next_input))
    # dt * v: the conv's tolerance scaled by dt
    close = {k: v * 0.25 for k, v in op_tol(OP, dtype).items()}
    torch.testing.assert_close(results[0][0], want_x, **close)
    torch.testing.assert_close(results[0][1], want_y, **close)
    torch.testing.assert_close(results[0][2], torch.cat(results[0][:2], dim=1).to(dtype), atol=0, rtol=0)
    for x, y, nxt in results[1:]:
        assert torch.equal(x, results[0][0]) and torch.equal(y, results[0][1]) and torch.equal(nxt, results[0][2])




@cuda_only
def test_cuda_euler_new_image_size_never_recompiles(conv_inputs):
    kernel = euler_module._fused_conv3x3_euler_kernel
    weight, bias = conv_inputs.conv_params(64, 6, torch.bfloat16, "cuda")
    packed = pack_conv3x3_weight(weight, torch.bfloat16)

    def run(h, w):
        hidden = conv_inputs.activation((1, 64, h, w), torch.bfloat16, "cuda")
        x, y, next_input = conv_inputs.euler_state(1, 3, h, w, device="cuda", next_dtype=torch.bfloat16)
        fused_conv3x3_euler(hidden, packed, bias, x=x, y=y, dt=0.25, next_input=next_input)

    run(64, 64)
    variants = _runtime.compiled_variants(kernel)
    for h, w in ((37, 53), (128, 96), (17, 1), (255, 257), (1, 1), (64, 64)):
        run(h, w)
    assert _runtime.compiled_variants(kernel) == variants
