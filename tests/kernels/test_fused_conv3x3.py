"""fused_conv3x3: the implicit-GEMM Triton conv against its pure-torch twin (F.silu + F.conv2d).
(The output conv with the Euler epilogue is tested in test_fused_conv3x3_euler.py; the inputs of
both come from the ``conv_inputs`` fixture of conftest.py.)

Under TRITON_INTERPRET=1 (conftest) the kernels run on CPU tensors; fp32 and tiny shapes keep the
interpreter fast (the interpreter config tiles 32 pixels x 16 channels x 16 input channels, so a
7x9 image already has two pixel tiles, the last one partial). CUDA-only tests (bf16/fp16,
determinism, no recompile) skip elsewhere.
"""
import importlib
import logging

import pytest
import torch
import torch.nn.functional as F

from resflow_fast.kernels import _runtime, fused_conv3x3, fused_conv3x3_reference, pack_conv3x3_weight
from resflow_fast.reference.unet import group_norm_statistics

conv_module = importlib.import_module("resflow_fast.kernels.fused_conv3x3")
group_stats_module = importlib.import_module("resflow_fast.kernels._group_stats")
common = importlib.import_module("resflow_fast.kernels._conv3x3_common")

# skipped where they cannot run by the hook in tests/conftest.py
interpreter_only = pytest.mark.interpreter_only
cuda_only = pytest.mark.cuda

OP = "fused_conv3x3"  # its entries in the shared tolerance table (tests/kernels/conftest.py)

# (N, C_in, C_out, H, W) -- and why each is here
SHAPES = [
    pytest.param((1, 1, 8, 1, 1), id="1x1-image-C_in1"),  # every tap but the centre is padding
    pytest.param((2, 3, 8, 3, 5), id="rgb-3x5-batch2"),  # C_in far below one K block
    pytest.param((1, 8, 16, 7, 9), id="odd-7x9"),  # two pixel tiles, the last partial
    pytest.param((2, 16, 8, 8, 8), id="even-8x8-C_in16"),  # a full K block; stride 2 pads bottom/right only
]
OPTIONS = ["plain", "no-bias", "prologue", "residual", "skip", "skip-2d-weight-no-bias", "stats"]


def run_both(x, weight, bias, kwargs, stride, out=None):
    """(kernel result, twin result) with the same arguments; the kernel writes into ``out``."""
    result = fused_conv3x3(x, weight, bias, stride=stride, out=out, **kwargs)
    expected = fused_conv3x3_reference(x, weight, bias, stride=stride, **kwargs)
    return result, expected


def assert_matches(result, expected, close, stats_close=None):
    if isinstance(expected, tuple):
        (y, (mean, rstd)), (y_ref, (mean_ref, rstd_ref)) = result, expected
        torch.testing.assert_close(y, y_ref, **close)
        # the kernel's statistics are those of its own output, as stored (equation (3))
        mean_own, rstd_own = group_norm_statistics(y, mean.shape[1], 1e-5)
        torch.testing.assert_close(mean, mean_own, **(stats_close or close))
        torch.testing.assert_close(rstd, rstd_own, **(stats_close or close))
        torch.testing.assert_close(mean, mean_ref, **close)
        torch.testing.assert_close(rstd, rstd_ref, **close)
    else:
        torch.testing.assert_close(result, expected, **close)
    y = result[0] if isinstance(result, tuple) else result
    assert y.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------
# interpreter: the kernels themselves
# ------------------------------------------------------------------------------------------------
@interpreter_only
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_plain_conv_matches_twin_into_nan_filled_out(shape, stride, op_tol, conv_inputs):
    torch.manual_seed(0)
    n, c_in, c_out, h, w = shape
    x = conv_inputs.activation((n, c_in, h, w))
    weight, bias = conv_inputs.conv_params(c_in, c_out)
    out = conv_inputs.nan_out(conv_inputs.out_shape(n, c_out, h, w, stride))
    before = _runtime.launch_counts["fused_conv3x3"]
    result, expected = run_both(x, weight, bias, {}, stride, out=out)
    assert result is out
    assert _runtime.launch_counts["fused_conv3x3"] == before + 1
    assert_matches(result, expected, op_tol(OP, torch.float32))
    # and the twin is F.conv2d itself
    torch.testing.assert_close(result, F.conv2d(x, weight, bias, stride=stride, padding=1), **op_tol(OP, torch.float32))


@interpreter_only
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_alone(option, stride, op_tol, conv_inputs):
    torch.manual_seed(1)
    x = conv_inputs.activation((2, 3, 7, 9))
    weight, bias = conv_inputs.conv_params(3, 16)
    kwargs = conv_inputs.option_kwargs(option, x, 16, stride)
    bias = None if option in ("no-bias", "skip-2d-weight-no-bias") else bias
    out = conv_inputs.nan_out(conv_inputs.out_shape(2, 16, 7, 9, stride))
    result, expected = run_both(x, weight, bias, kwargs, stride, out=out)
    assert (result[0] if isinstance(result, tuple) else result) is out
    assert_matches(result, expected, op_tol(OP, torch.float32))


@interpreter_only
@pytest.mark.parametrize("shape, stride, groups", [
    pytest.param((2, 8, 32, 7, 9), 1, 1, id="group-spans-two-channel-tiles"),
    pytest.param((1, 16, 32, 8, 8), 2, 32, id="stride2-one-channel-groups"),
    pytest.param((2, 3, 16, 3, 5), 1, 4, id="one-pixel-tile"),
])
def test_all_options_together(shape, stride, groups, op_tol, conv_inputs):
    """Prologue, bias, residual, 1x1 skip and statistics in one launch, over several pixel and
    channel tiles (C_out = 32 is two channel tiles of the interpreter config)."""
    torch.manual_seed(2)
    n, c_in, c_out, h, w = shape
    x = conv_inputs.activation((n, c_in, h, w))
    weight, bias = conv_inputs.conv_params(c_in, c_out)
    kwargs = {}
    for option in ("prologue", "residual", "skip"):
        kwargs.update(conv_inputs.option_kwargs(option, x, c_out, stride))
    kwargs["stats_groups"] = groups
    before = _runtime.launch_counts["conv3x3_group_stats"]
    result, expected = run_both(x, weight, bias, kwargs, stride, out=conv_inputs.nan_out(conv_inputs.out_shape(n, c_out, h, w, stride)))
    assert _runtime.launch_counts["conv3x3_group_stats"] == before + 1
    assert_matches(result, expected, op_tol(OP, torch.float32))


@interpreter_only
def test_padding_is_zero_after_the_activation():
    """x = 0 everywhere, so every in-image tap reads silu(B) = silu(2): with unit weights a corner
    output sums 4 taps per channel, an edge 6, the centre 9. Padding x before the activation would
    give 9 everywhere."""
    c_in = 3
    x = torch.zeros(1, c_in, 3, 3).contiguous(memory_format=torch.channels_last)
    prologue = (torch.ones(1, c_in), torch.full((1, c_in), 2.0))
    y = fused_conv3x3(x, torch.ones(8, c_in, 3, 3), prologue=prologue)
    taps = torch.tensor([[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]])
    expected = (taps * c_in * F.silu(torch.tensor(2.0))).expand(1, 8, 3, 3)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


@interpreter_only
@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
def test_other_layouts_are_converted_to_channels_last(layout, op_tol, conv_inputs):
    """NCHW and strided inputs (x, residual, skip_x) are copied to channels-last; the output is
    channels-last whatever the input layout."""
    torch.manual_seed(3)
    x = conv_inputs.activation((1, 8, 5, 6), layout=layout)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    weight, bias = conv_inputs.conv_params(8, 8)
    kwargs = dict(residual=conv_inputs.activation((1, 8, 5, 6), layout=layout),
                  skip_x=conv_inputs.activation((1, 4, 5, 6), layout=layout), skip_weight=torch.randn(8, 4, 1, 1))
    result, expected = run_both(x, weight, bias, kwargs, 1)
    assert_matches(result, expected, op_tol(OP, torch.float32))
    torch.testing.assert_close(result, fused_conv3x3(x.contiguous(memory_format=torch.channels_last), weight, bias,
                                                     **kwargs), atol=0, rtol=0)


@interpreter_only
def test_prepacked_weight_gives_the_same_result(op_tol, conv_inputs):
    torch.manual_seed(4)
    x = conv_inputs.activation((1, 8, 4, 5))
    weight, bias = conv_inputs.conv_params(8, 16)
    packed = pack_conv3x3_weight(weight)
    assert packed.shape == (9 * 8, 16) and packed.is_contiguous()
    assert torch.equal(conv_module.unpack_conv3x3_weight(packed), weight)
    torch.testing.assert_close(fused_conv3x3(x, packed, bias, stride=2), fused_conv3x3(x, weight, bias, stride=2),
                               atol=0, rtol=0)
    torch.testing.assert_close(fused_conv3x3_reference(x, packed, bias, stride=2),
                               fused_conv3x3(x, packed, bias, stride=2), **op_tol(OP, torch.float32))


@interpreter_only
def test_statistics_survive_a_large_mean(conv_inputs):
    """Outputs 1000 + O(0.01): E[y^2] - E[y]^2 in fp32 would lose the variance entirely. Tile
    partials (mean, M2) merged by Chan's formula keep it; compared with fp64 statistics of the
    same output. The floor is the fp32 output itself (half an ulp of 1000 is 3e-5, 3e-3 std)."""
    torch.manual_seed(5)
    x = conv_inputs.activation((1, 4, 7, 9))
    weight = 0.01 * torch.randn(8, 4, 3, 3) / 6.0
    y, (mean, rstd) = fused_conv3x3(x, weight, torch.full((8,), 1000.0), stats_groups=2, stats_eps=1e-12)
    var, exact_mean = torch.var_mean(y.double().reshape(1, 2, -1), dim=2, unbiased=False)
    assert (mean.double() - exact_mean).abs().max().item() < 1e-3 * var.sqrt().min().item() + 1e-4
    torch.testing.assert_close(rstd.double(), var.rsqrt(), rtol=1e-3, atol=0)


@interpreter_only
def test_statistics_drive_the_next_group_norm(op_tol, conv_inputs):
    """The ResBlock chain the API exists for: conv1 also yields GroupNorm statistics, which fold
    with the norm's affine and (1 + scale), shift into the prologue (A, B) of conv2; compared with
    conv2(SiLU(GroupNorm(h) * (1 + scale) + shift)) in plain torch."""
    torch.manual_seed(6)
    n, c, groups = 2, 16, 4
    x = conv_inputs.activation((n, 8, 5, 7))
    w1, b1 = conv_inputs.conv_params(8, c)
    w2, b2 = conv_inputs.conv_params(c, c)
    gamma, beta = 1.0 + 0.1 * torch.randn(c), 0.1 * torch.randn(c)
    scale, shift = 0.2 * torch.randn(n, c), 0.2 * torch.randn(n, c)
    h, (mean, rstd) = fused_conv3x3(x, w1, b1, stats_groups=groups)
    mean_c = mean.repeat_interleave(c // groups, dim=1)  # (N, C): each channel gets its group's
    rstd_c = rstd.repeat_interleave(c // groups, dim=1)
    a = rstd_c * gamma * (1 + scale)
    b = (beta * (1 + scale) + shift) - a * mean_c
    y = fused_conv3x3(h, w2, b2, prologue=(a, b), residual=x[:, :1].expand(n, c, 5, 7))
    normed = F.silu(F.group_norm(h, groups, gamma, beta, eps=1e-5) * (1 + scale[:, :, None, None])
                    + shift[:, :, None, None])
    expected = F.conv2d(normed, w2, b2, padding=1) + x[:, :1]
    torch.testing.assert_close(y, expected, **op_tol(OP, torch.float32))


@interpreter_only
def test_out_may_be_the_residual_itself(op_tol, conv_inputs):
    torch.manual_seed(7)
    x = conv_inputs.activation((1, 8, 4, 4))
    weight, bias = conv_inputs.conv_params(8, 8)
    residual = conv_inputs.activation((1, 8, 4, 4))
    expected = fused_conv3x3_reference(x, weight, bias, residual=residual)
    assert fused_conv3x3(x, weight, bias, residual=residual, out=residual) is residual
    torch.testing.assert_close(residual, expected, **op_tol(OP, torch.float32))


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_in_interpreter(dtype, op_tol, conv_inputs):
    torch.manual_seed(8)
    x = conv_inputs.activation((1, 8, 5, 7), dtype)
    weight, bias = conv_inputs.conv_params(8, 16, dtype)
    kwargs = dict(conv_inputs.option_kwargs("prologue", x, 16, 1), **conv_inputs.option_kwargs("skip", x, 16, 1, dtype),
                  stats_groups=4)
    y, (mean, rstd) = fused_conv3x3(x, weight, bias, **kwargs)
    assert y.dtype == dtype and mean.dtype == rstd.dtype == torch.float32
    kwargs["skip_x"] = kwargs["skip_x"].float()
    y_ref, _ = fused_conv3x3_reference(x.float(), weight, bias, **kwargs)
    torch.testing.assert_close(y.float(), y_ref, **op_tol(OP, dtype))
    own_mean, own_rstd = group_norm_statistics(y, 4, 1e-5)
    torch.testing.assert_close(mean, own_mean, **op_tol(OP, torch.float32))
    torch.testing.assert_close(rstd, own_rstd, **op_tol(OP, torch.float32))


def test_triton_path_runs_not_the_twin(monkeypatch, kernel_device, conv_inputs):
    """If the kernels silently fell back, the comparisons above would test the twin with itself."""
    def twin_must_not_run(*args, **kwargs):
        raise AssertionError("the pure-torch twin ran instead of the Triton kernels")

    monkeypatch.setattr(conv_module, "_reference_fp32", twin_must_not_run)
    monkeypatch.setattr(conv_module, "_group_stats_reference", twin_must_not_run)
    before = dict(_runtime.launch_counts)
    x = conv_inputs.activation((1, 3, 3, 5), device=kernel_device)
    fused_conv3x3(x, *conv_inputs.conv_params(3, 8, device=kernel_device), stats_groups=2)
    for name in ("fused_conv3x3", "conv3x3_group_stats"):
        assert _runtime.launch_counts[name] == before.get(name, 0) + 1


@pytest.mark.parametrize("variant", ["functional", "out"])
def test_opcheck(variant, kernel_device, conv_inputs):
    x = conv_inputs.activation((1, 3, 3, 4), device=kernel_device)
    weight, bias = conv_inputs.conv_params(3, 8, device=kernel_device)
    packed = pack_conv3x3_weight(weight)
    prologue = conv_inputs.option_kwargs("prologue", x, 8, 1)["prologue"]
    if variant == "functional":
        op = torch.ops.resflow_fast.fused_conv3x3.default
        args = (x, packed, bias, 1, *prologue, None, None, None, 2, 1e-5)
    else:
        op = torch.ops.resflow_fast.fused_conv3x3_out.default
        residual = conv_inputs.activation((1, 8, 2, 2), device=kernel_device)
        stats = [torch.empty(1, 4, device=kernel_device) for _ in range(2)]
        args = (x, packed, None, 2, None, None, residual, None, None, 4, 1e-5,
                conv_inputs.nan_out((1, 8, 2, 2), device=kernel_device), *stats)
    torch.library.opcheck(op, args)


def test_torch_compile_traces_without_graph_break(kernel_device, op_tol, conv_inputs):
    x = conv_inputs.activation((1, 3, 3, 4), device=kernel_device)
    weight, bias = conv_inputs.conv_params(3, 8, device=kernel_device)

    def block(x, weight, bias):
        y, (mean, rstd) = fused_conv3x3(x, weight, bias, stats_groups=2)
        return y * 2.0, mean

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)  # fullgraph: a break raises
    for got, want in zip(compiled(x, weight, bias), block(x, weight, bias)):
        torch.testing.assert_close(got, want, **op_tol(OP, torch.float32))


# ------------------------------------------------------------------------------------------------
# fallbacks, switches, configs and validation (no kernel needed)
# ------------------------------------------------------------------------------------------------
def test_disable_switch_runs_the_twin(monkeypatch, op_tol, conv_inputs):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    torch.manual_seed(9)
    x = conv_inputs.activation((1, 8, 4, 5))
    weight, bias = conv_inputs.conv_params(8, 8)
    kwargs = dict(conv_inputs.option_kwargs("prologue", x, 8, 2), **conv_inputs.option_kwargs("skip", x, 8, 2), stats_groups=2)
    before = _runtime.launch_counts["fused_conv3x3"]
    result, expected = run_both(x, pack_conv3x3_weight(weight), bias, kwargs, 2)
    assert _runtime.launch_counts["fused_conv3x3"] == before
    assert_matches(result, expected, op_tol(OP, torch.float32))


def test_cpu_without_interpreter_falls_back_and_says_so_once(monkeypatch, caplog, conv_inputs):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_runtime, "_fallbacks_logged", set())
    before = _runtime.launch_counts["fused_conv3x3"]
    with caplog.at_level(logging.INFO, logger="resflow_fast"):
        for _ in range(3):
            fused_conv3x3(conv_inputs.activation((1, 3, 3, 5)), *conv_inputs.conv_params(3, 8))
    assert _runtime.launch_counts["fused_conv3x3"] == before
    messages = [r.getMessage() for r in caplog.records if r.name == "resflow_fast"]
    assert len(messages) == 1 and "twin" in messages[0]


def test_autograd_goes_through_the_differentiable_twin(conv_inputs):
    x = conv_inputs.activation((1, 3, 3, 5)).requires_grad_()
    weight, bias = conv_inputs.conv_params(3, 8)
    weight.requires_grad_()
    before = _runtime.launch_counts["fused_conv3x3"]
    fused_conv3x3(x, weight, bias, prologue=(torch.ones(1, 3), torch.zeros(1, 3))).square().sum().backward()
    assert _runtime.launch_counts["fused_conv3x3"] == before
    assert x.grad is not None and weight.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(RuntimeError, match="autograd"):
        fused_conv3x3(x, weight, bias, out=conv_inputs.nan_out((1, 8, 3, 5)))


def test_empty_batch_returns_empty_outputs():
    y, (mean, rstd) = fused_conv3x3(torch.empty(0, 3, 4, 4), torch.randn(8, 3, 3, 3), stride=2, stats_groups=2)
    assert y.shape == (0, 8, 2, 2) and mean.shape == rstd.shape == (0, 2)


def test_configs_are_valid_for_tl_dot_and_ignore_the_image_size():
    for on_gpu in (False, True):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for c_in, c_out in ((1, 8), (3, 64), (6, 128), (128, 128), (256, 512), (512, 256)):
                cfg = conv_module.pick_config(c_in, c_out, dtype, on_gpu)
                assert min(cfg.block_m, cfg.block_n, cfg.block_k) >= 16
                for block in (cfg.block_m, cfg.block_n, cfg.block_k, cfg.tile_w):
                    assert block & (block - 1) == 0
                # the TMA tile: whole rows of tile_w pixels, within TMA's 256-element box sides
                assert cfg.block_m % cfg.tile_w == 0 and max(cfg.tile_w, cfg.block_m // cfg.tile_w) <= 256
                if on_gpu:  # pipeline buffers within 48 KiB of shared memory
                    smem = (cfg.block_m + cfg.block_n) * cfg.block_k * dtype.itemsize * cfg.num_stages
                    assert smem <= 48 * 1024
    # the interpreter runs one config
    assert len({conv_module.pick_config(ci, co, torch.float32, False) for ci, co in ((1, 8), (512, 512))}) == 1
    # a 256-channel layer is one channel tile in 16-bit dtypes (its input is activated once per K block)
    for c_out, block_n in ((64, 64), (128, 128), (192, 128), (256, 256), (512, 256)):
        assert conv_module.pick_config(128, c_out, torch.bfloat16, True).block_n == block_n


def test_the_halo_serves_every_stride_1_conv_with_a_prologue(conv_inputs):
    """Stride 1 with a prologue activates each input element once per K block (the halo), on 2-D
    tiles; stride 2 or no prologue keep the per-tap loads."""
    x = conv_inputs.activation((1, 8, 5, 7))
    packed = pack_conv3x3_weight(conv_inputs.conv_params(8, 16)[0])
    plan = common.plan_launch(x, packed, 1, 5, 7, has_prologue=True)
    assert plan.halo and plan.tiled_2d and plan.halo_m >= (plan.tile_h + 2) * (plan.cfg.tile_w + 2)
    assert not common.plan_launch(x, packed, 2, 3, 4, has_prologue=True).halo
    assert not common.plan_launch(x, packed, 1, 5, 7, has_prologue=False).tiled_2d


@pytest.mark.parametrize("mutate, error, match", [
    (lambda a: a.update(x=torch.randn(3, 4, 5)), ValueError, "x must be a 4-D tensor"),
    (lambda a: a.update(x=[1.0]), TypeError, "x must be a torch.Tensor"),
    (lambda a: a.update(x=torch.randn(1, 3, 4, 5).double()), TypeError, "x must have dtype"),
    (lambda a: a.update(x=torch.randn(1, 3, 0, 5)), ValueError, "C, H, W >= 1"),
    (lambda a: a.update(weight=torch.randn(8, 4, 3, 3)), ValueError, r"weight must have shape \(C_out, 3, 3, 3\)"),
    (lambda a: a.update(weight=torch.randn(8, 3, 1, 1)), ValueError, "weight must have shape"),
    (lambda a: a.update(weight=torch.randn(8, 3, 3)), ValueError, "weight must be"),
    (lambda a: a.update(weight=torch.randn(26, 8)), ValueError, r"packed weight must have shape \(9 \* C_in"),
    (lambda a: a.update(weight=torch.randn(27, 8).half()), TypeError, "repack with pack_conv3x3_weight"),
    (lambda a: a.update(weight=torch.randn(8, 27).t()), ValueError, "packed weight must be contiguous"),
    (lambda a: a.update(bias=torch.randn(7)), ValueError, r"bias must have shape \(8,\)"),
    (lambda a: a.update(stride=3), ValueError, "stride must be 1 or 2"),
    (lambda a: a.update(stride=True), ValueError, "stride must be 1 or 2"),
    (lambda a: a.update(prologue=torch.randn(1, 3)), TypeError, "prologue must be a pair"),
    (lambda a: a.update(prologue=(torch.randn(1, 3), torch.randn(1, 4))), ValueError,
     r"prologue B must have shape \(1, 3\)"),
    (lambda a: a.update(prologue=(torch.randn(1, 3).half(), torch.randn(1, 3))), TypeError,
     "prologue A must have dtype in \\(float32\\)"),
    (lambda a: a.update(residual=torch.randn(1, 8, 4, 5)), ValueError, r"residual must have shape \(1, 8, 2, 3\)"),
    (lambda a: a.update(skip_weight=torch.randn(8, 2, 1, 1)), ValueError, "without skip_x"),
    (lambda a: a.update(skip_x=torch.randn(1, 2, 2, 3)), ValueError, "skip_x needs skip_weight"),
    (lambda a: a.update(skip_x=torch.randn(1, 2, 4, 5), skip_weight=torch.randn(8, 2)), ValueError,
     r"skip_x must have shape \(1, 2, 2, 3\)"),
    (lambda a: a.update(skip_x=torch.randn(1, 2, 2, 3).half(), skip_weight=torch.randn(8, 2)), TypeError,
     "skip_x must have x's dtype"),
    (lambda a: a.update(skip_x=torch.randn(1, 2, 2, 3), skip_weight=torch.randn(8, 3)), ValueError,
     r"skip_weight must have shape \(8, 2, 1, 1\)"),
    (lambda a: a.update(skip_x=torch.randn(1, 2, 2, 3), skip_weight=torch.randn(8, 2), skip_bias=torch.randn(2)),
     ValueError, r"skip_bias must have shape \(8,\)"),
    (lambda a: a.update(stats_groups=3), ValueError, "C_out=8 is not divisible by stats_groups=3"),
    (lambda a: a.update(stats_groups=0), ValueError, "stats_groups must be a positive int"),
    (lambda a: a.update(stats_eps=0.0), ValueError, "stats_eps must be a finite number > 0"),
    (lambda a: a.update(out=torch.empty(1, 8, 4, 5).contiguous(memory_format=torch.channels_last)), ValueError,
     r"out must have shape \(1, 8, 2, 3\)"),
    (lambda a: a.update(out=torch.empty(1, 8, 2, 3)), ValueError, "out must be channels_last"),
    (lambda a: a.update(out=torch.empty(1, 8, 2, 3).half().contiguous(memory_format=torch.channels_last)),
     TypeError, "out must have x's dtype"),
    (lambda a: a.update(bias=torch.randn(8, device="meta")), ValueError, "bias is on meta"),
])
def test_validation_errors_name_the_argument(mutate, error, match):
    args = dict(x=torch.randn(1, 3, 4, 5), weight=torch.randn(8, 3, 3, 3), bias=None, stride=2, prologue=None,
                residual=None, skip_x=None, skip_weight=None, skip_bias=None, stats_groups=None, stats_eps=1e-5,
                out=None)
    mutate(args)
    for fn in (fused_conv3x3, fused_conv3x3_reference):  # one boundary for both
        with pytest.raises(error, match=match):
            fn(**args)


def test_out_must_not_overlap_the_input():
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        fused_conv3x3(x, torch.randn(8, 8, 3, 3), out=x)


# ------------------------------------------------------------------------------------------------
# CUDA: compiled kernels
# ------------------------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape, stride", [
    ((2, 64, 64, 37, 53), 1), ((1, 128, 128, 64, 64), 1), ((1, 128, 128, 64, 64), 2), ((2, 6, 64, 17, 9), 1),
    ((1, 256, 256, 16, 16), 1), ((1, 64, 128, 33, 31), 2), ((3, 96, 32, 1, 1), 1),
])
def test_cuda_against_fp32_twin(shape, stride, dtype, op_tol, conv_inputs):
    torch.manual_seed(10)
    n, c_in, c_out, h, w = shape
    x = conv_inputs.activation((n, c_in, h, w), dtype, "cuda")
    weight, bias = conv_inputs.conv_params(c_in, c_out, dtype, "cuda")
    kwargs = {}
    for option in ("prologue", "residual", "skip"):
        kwargs.update(conv_inputs.option_kwargs(option, x, c_out, stride, dtype))
    kwargs["stats_groups"] = 32
    out = conv_inputs.nan_out(conv_inputs.out_shape(n, c_out, h, w, stride), dtype, "cuda")
    y, (mean, rstd) = fused_conv3x3(x, weight, bias, stride=stride, out=out, **kwargs)
    assert y is out
    fp32_kwargs = {k: (v.float() if k in ("residual", "skip_x") else v) for k, v in kwargs.items()}
    y_ref, _ = fused_conv3x3_reference(x.float(), weight, bias, stride=stride, **fp32_kwargs)
    torch.testing.assert_close(y.float(), y_ref, **op_tol(OP, dtype))
    own_mean, own_rstd = group_norm_statistics(y, 32, 1e-5)
    torch.testing.assert_close(mean, own_mean, **op_tol(OP, torch.float32))
    torch.testing.assert_close(rstd, own_rstd, **op_tol(OP, torch.float32))


@cuda_only
@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_deterministic_over_repeated_runs(stride, conv_inputs):
    torch.manual_seed(11)
    x = conv_inputs.activation((1, 128, 96, 80), torch.bfloat16, "cuda")
    weight, bias = conv_inputs.conv_params(128, 128, torch.bfloat16, "cuda")
    packed = pack_conv3x3_weight(weight, torch.bfloat16)
    kwargs = dict(conv_inputs.option_kwargs("prologue", x, 128, stride), stats_groups=32)
    first, (mean, rstd) = fused_conv3x3(x, packed, bias, stride=stride, **kwargs)
    for _ in range(5):
        y, (m, r) = fused_conv3x3(x, packed, bias, stride=stride, **kwargs)
        assert torch.equal(y, first) and torch.equal(m, mean) and torch.equal(r, rstd)


@cuda_only
@pytest.mark.parametrize("tma", [False, True], ids=["pointer", "tma"])
def test_cuda_new_image_size_never_recompiles(tma, monkeypatch, conv_inputs):
    if tma:
        monkeypatch.setenv(conv_module.ENV_TMA, "1")
    kernels = (conv_module._fused_conv3x3_kernel, group_stats_module._group_stats_combine_kernel)
    weight, bias = conv_inputs.conv_params(64, 64, torch.bfloat16, "cuda")
    packed = pack_conv3x3_weight(weight, torch.bfloat16)

    def run(h, w):
        x = conv_inputs.activation((1, 64, h, w), torch.bfloat16, "cuda")
        residual = conv_inputs.activation((1, 64, h, w), torch.bfloat16, "cuda")
        fused_conv3x3(x, packed, bias, residual=residual, stats_groups=32)

    run(64, 64)
    variants = [_runtime.compiled_variants(k) for k in kernels]
    for h, w in ((37, 53), (128, 96), (17, 1), (255, 257), (1, 1), (512, 512), (64, 64)):
        run(h, w)
    assert [_runtime.compiled_variants(k) for k in kernels] == variants


# ------------------------------------------------------------------------------------------------
# the TMA variant (RESFLOW_CONV_TMA=1): 2-D pixel tiles, input and weight tiles by tensor descriptor
# ------------------------------------------------------------------------------------------------
TMA_CASES = [  # (N, C_in, C_out, H, W): the interpreter's TMA tile is 4 rows x 8 columns, K step 16
    pytest.param((1, 8, 16, 4, 8), id="one-whole-tile"),
    pytest.param((2, 20, 12, 7, 11), id="partial-tiles-K-and-N-tails-batch2"),
    pytest.param((1, 16, 32, 1, 1), id="1x1-image-all-padding"),
    pytest.param((1, 4, 8, 13, 3), id="tall-narrow"),
]


@interpreter_only
@pytest.mark.parametrize("options", [("plain",), ("prologue", "stats"), ("prologue", "residual", "stats"),
                                     ("prologue", "skip", "stats")], ids="+".join)
@pytest.mark.parametrize("shape", TMA_CASES)
def test_tma_variant_matches_twin(shape, options, monkeypatch, op_tol, conv_inputs):
    monkeypatch.setenv(conv_module.ENV_TMA, "1")
    torch.manual_seed(30)
    n, c_in, c_out, h, w = shape
    x = conv_inputs.activation((n, c_in, h, w))
    weight, bias = conv_inputs.conv_params(c_in, c_out)
    kwargs = {}
    for option in options:
        kwargs.update(conv_inputs.option_kwargs(option, x, c_out, 1))
    assert conv_module.tma_eligible(x, pack_conv3x3_weight(weight), 1)
    before = _runtime.launch_counts["fused_conv3x3_tma"]
    result, expected = run_both(x, weight, bias, kwargs, 1, out=conv_inputs.nan_out(conv_inputs.out_shape(n, c_out, h, w, 1)))
    assert _runtime.launch_counts["fused_conv3x3_tma"] == before + 1
    assert_matches(result, expected, op_tol(OP, torch.float32))


@interpreter_only
def test_tma_variant_equals_the_pointer_variant(monkeypatch, op_tol, conv_inputs):
    """Same inputs, both variants: the same outputs and statistics (2-D tiles change only the
    summation order of the statistics)."""
    torch.manual_seed(31)
    x = conv_inputs.activation((2, 16, 9, 10))
    weight, bias = conv_inputs.conv_params(16, 16)
    kwargs = dict(conv_inputs.option_kwargs("prologue", x, 16, 1), stats_groups=4)
    before = _runtime.launch_counts["fused_conv3x3_tma"]
    pointer = fused_conv3x3(x, weight, bias, **kwargs)
    assert _runtime.launch_counts["fused_conv3x3_tma"] == before
    monkeypatch.setenv(conv_module.ENV_TMA, "1")
    tma = fused_conv3x3(x, weight, bias, **kwargs)
    assert _runtime.launch_counts["fused_conv3x3_tma"] == before + 1
    torch.testing.assert_close(tma[0], pointer[0], **op_tol(OP, torch.float32))
    torch.testing.assert_close(tma[1], pointer[1], **op_tol(OP, torch.float32))


def test_tma_eligibility(conv_inputs):
    x = conv_inputs.activation((1, 8, 5, 5))
    packed = pack_conv3x3_weight(conv_inputs.conv_params(8, 16)[0])
    assert conv_module.tma_eligible(x, packed, 1) == (conv_module.TensorDescriptor is not None)
    assert not conv_module.tma_eligible(x, packed, 2)  # a stride-2 tap is not a box
    assert not conv_module.tma_eligible(conv_inputs.activation((1, 3, 5, 5)), pack_conv3x3_weight(conv_inputs.conv_params(3, 16)[0]), 1)
    assert not conv_module.tma_eligible(x, pack_conv3x3_weight(conv_inputs.conv_params(8, 6)[0]), 1)  # 24-byte rows
    shifted = torch.empty(1 + 8 * 25).as_strided((1, 8, 5, 5), (200, 1, 40, 8), 1)  # base 4 bytes off
    assert not conv_module.tma_eligible(shifted, packed, 1)


@interpreter_only
def test_tma_is_off_by_default_and_skips_ineligible_convs(monkeypatch, conv_inputs):
    monkeypatch.delenv(conv_module.ENV_TMA, raising=False)
    before = _runtime.launch_counts["fused_conv3x3_tma"]
    fused_conv3x3(conv_inputs.activation((1, 8, 4, 8)), *conv_inputs.conv_params(8, 16))
    assert _runtime.launch_counts["fused_conv3x3_tma"] == before
    monkeypatch.setenv(conv_module.ENV_TMA, "1")
    fused_conv3x3(conv_inputs.activation((1, 8, 4, 8)), *conv_inputs.conv_params(8, 16), stride=2)  # ineligible: pointer path
    assert _runtime.launch_counts["fused_conv3x3_tma"] == before


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape, prologue", [
    ((2, 64, 64, 37, 53), True), ((1, 128, 128, 64, 64), True), ((1, 256, 256, 16, 16), True),
    ((1, 192, 64, 33, 31), True),
    # no prologue: the hardware's zero fill alone must give the padding; C_in 40 and C_out 96 leave
    # tails in the K steps (32) and the channel tiles (128)
    ((1, 40, 96, 37, 53), False), ((2, 64, 32, 7, 5), False),
], ids=str)
def test_cuda_tma_variant_against_fp32_twin_and_pointer_variant(shape, prologue, dtype, monkeypatch, op_tol, conv_inputs):
    """Where the GPU has TMA (Hopper+): parity with the fp32 twin, equality with the pointer
    variant within the dtype's tolerance, and bitwise repeatability."""
    torch.manual_seed(32)
    n, c_in, c_out, h, w = shape
    x = conv_inputs.activation((n, c_in, h, w), dtype, "cuda")
    weight, bias = conv_inputs.conv_params(c_in, c_out, dtype, "cuda")
    packed = pack_conv3x3_weight(weight, dtype)
    if torch.cuda.get_device_capability()[0] < 9:
        assert not conv_module.tma_eligible(x, packed, 1)
        pytest.skip("TMA needs a Hopper or newer GPU")
    assert conv_module.tma_eligible(x, packed, 1)
    kwargs = dict(conv_inputs.option_kwargs("residual", x, c_out, 1, dtype), stats_groups=32 if c_out % 32 == 0 else 8)
    if prologue:
        kwargs.update(conv_inputs.option_kwargs("prologue", x, c_out, 1))
    pointer, (pointer_mean, _) = fused_conv3x3(x, packed, bias, **kwargs)
    monkeypatch.setenv(conv_module.ENV_TMA, "1")
    before = _runtime.launch_counts["fused_conv3x3_tma"]
    y, (mean, rstd) = fused_conv3x3(x, packed, bias, **kwargs)
    assert _runtime.launch_counts["fused_conv3x3_tma"] == before + 1
    fp32_kwargs = {k: (v.float() if k == "residual" else v) for k, v in kwargs.items()}
    y_ref, _ = fused_conv3x3_reference(x.float(), weight, bias, **fp32_kwargs)
    torch.testing.assert_close(y.float(), y_ref, **op_tol(OP, dtype))
    torch.testing.assert_close(y.float(), pointer.float(), **op_tol(OP, dtype))
    torch.testing.assert_close(mean, pointer_mean, **op_tol(OP, torch.float32))
    again, (mean2, rstd2) = fused_conv3x3(x, packed, bias, **kwargs)
    assert torch.equal(again, y) and torch.equal(mean2, mean) and torch.equal(rstd2, rstd)
