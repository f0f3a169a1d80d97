"""group_norm_modulate_silu: the Triton kernels against the pure-torch twin.

Under TRITON_INTERPRET=1 (conftest) the kernels run on CPU tensors; fp32, tiny and odd shapes keep
the interpreter fast. CUDA-only tests (low precision, determinism, no recompile) skip elsewhere.
"""
import importlib
import logging

import pytest
import torch
import torch.nn.functional as F

from resflow_fast.kernels import _runtime, group_norm_modulate_silu, group_norm_modulate_silu_reference

gn_module = importlib.import_module("resflow_fast.kernels.group_norm_modulate_silu")

# skipped where they cannot run by the hook in tests/conftest.py
interpreter_only = pytest.mark.interpreter_only
cuda_only = pytest.mark.cuda

# (N, C, H, W), num_groups -- and why each is here
SHAPES = [
    pytest.param((1, 4, 3, 5), 2, id="tiny-3x5-batch1"),
    pytest.param((2, 6, 37, 53), 3, id="odd-37x53-batch2"),  # last pixel tile partial, several chunks
    pytest.param((1, 5, 4, 4), 1, id="one-group-C5"),  # C not a multiple of any channel block
    pytest.param((2, 8, 1, 1), 4, id="1x1-pixel"),  # a group is two single pixels
    pytest.param((1, 160, 3, 5), 32, id="C160-two-channel-blocks"),  # NHWC splits channels over programs
]
LAYOUTS = ["contiguous", "channels_last", "sliced"]


def make_input(shape, layout, dtype=torch.float32, device="cpu", offset=0.5, spread=2.0):
    n, c, h, w = shape
    if layout == "sliced":  # a strided view, neither NCHW- nor NHWC-dense
        big = torch.randn(n, c, h + 2, w + 3, device=device) * spread + offset
        return big[:, :, 1:-1, 2:-1].to(dtype)
    x = (torch.randn(shape, device=device) * spread + offset).to(dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def make_params(n, c, device="cpu", modulated=True):
    weight, bias = torch.randn(c, device=device), torch.randn(c, device=device)
    if not modulated:
        return weight, bias, None, None
    return weight, bias, 0.5 * torch.randn(n, c, device=device), torch.randn(n, c, device=device)


def nan_like(x, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device).contiguous(memory_format=fmt)


# ------------------------------------------------------------------------------------------------
# interpreter: the kernels themselves
# ------------------------------------------------------------------------------------------------
@interpreter_only
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, groups", SHAPES)
def test_matches_twin_into_nan_filled_out(shape, groups, layout, tol):
    torch.manual_seed(0)
    x = make_input(shape, layout)
    params = make_params(shape[0], shape[1])
    out = nan_like(x, channels_last=layout == "channels_last")
    before = _runtime.launch_counts["gn_apply"]
    result = group_norm_modulate_silu(x, groups, *params, out=out)
    assert result is out
    assert _runtime.launch_counts["gn_apply"] == before + 1
    torch.testing.assert_close(out, group_norm_modulate_silu_reference(x, groups, *params), **tol(torch.float32))


@interpreter_only
@pytest.mark.parametrize("apply_silu", [True, False])
@pytest.mark.parametrize("modulated", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_flags_and_output_layout(layout, modulated, apply_silu, tol):
    torch.manual_seed(1)
    x = make_input((2, 6, 5, 7), layout)
    params = make_params(2, 6, modulated=modulated)
    y = group_norm_modulate_silu(x, 3, *params, apply_silu=apply_silu)
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    expected = group_norm_modulate_silu_reference(x, 3, *params, apply_silu=apply_silu)
    torch.testing.assert_close(y, expected, **tol(torch.float32))


@interpreter_only
def test_scale_or_shift_alone_and_strided_modulation(tol):
    """scale and shift are independent; a (N, 2C) Linear output split in two gives strided views."""
    torch.manual_seed(2)
    x = make_input((2, 8, 3, 5), "channels_last")
    weight, bias = torch.randn(8), torch.randn(8)
    scale, shift = torch.randn(2, 16).chunk(2, dim=1)  # non-contiguous (N, C) views
    for s, b in ((scale, None), (None, shift), (scale, shift)):
        torch.testing.assert_close(group_norm_modulate_silu(x, 4, weight, bias, s, b),
                                   group_norm_modulate_silu_reference(x, 4, weight, bias, s, b), **tol(torch.float32))


@interpreter_only
def test_affine_none_is_plain_group_norm(tol):
    x = make_input((1, 6, 4, 5), "contiguous")
    y = group_norm_modulate_silu(x, 2, None, None, apply_silu=False)
    torch.testing.assert_close(y, F.group_norm(x, 2, eps=1e-5), **tol(torch.float32))


@interpreter_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_many_tiles_per_chunk_and_many_chunks(layout, monkeypatch, tol):
    """Tiny blocks make the statistics pass loop over several steps of several tiles per chunk,
    and merge chunks of unequal size (the last one short) over several channel blocks."""
    cfg = gn_module.GroupNormConfig(block_p=4, block_c=2, stats_programs=4, tiles_in_flight=2)
    monkeypatch.setattr(gn_module, "pick_config", lambda num_channels, channels_last, on_gpu=True: cfg)
    split = gn_module.stats_split(1, 6, 9 * 11, cfg)
    assert split.tiles_per_chunk > cfg.tiles_in_flight and split.num_chunks > 1 and split.num_c_blocks > 1
    assert (9 * 11) % cfg.block_p != 0  # partial last tile
    torch.manual_seed(3)
    x = make_input((1, 6, 9, 11), layout)
    params = make_params(1, 6)
    torch.testing.assert_close(group_norm_modulate_silu(x, 3, *params),
                               group_norm_modulate_silu_reference(x, 3, *params), **tol(torch.float32))


@interpreter_only
@pytest.mark.parametrize("small_blocks", [False, True])
def test_statistics_survive_a_large_mean(small_blocks, monkeypatch):
    """x = 1000 + 0.01 * noise: one-pass E[x^2] - E[x]^2 in fp32 loses the variance entirely
    (fp32 resolves 1e6 to 0.06, the variance is 1e-4), and a plain fp32 sum rounds the mean by a
    few percent of a std. Compared with an fp64 oracle on the same fp32 input. The floor is the
    fp32 mean itself: half an ulp of 1000 is 3e-3 std."""
    if small_blocks:
        cfg = gn_module.GroupNormConfig(block_p=8, block_c=2, stats_programs=6)
        monkeypatch.setattr(gn_module, "pick_config", lambda num_channels, channels_last, on_gpu=True: cfg)
    torch.manual_seed(4)
    x = 1000.0 + 0.01 * torch.randn(1, 4, 16, 16)
    y = group_norm_modulate_silu(x, 2, None, None, apply_silu=False)
    exact = F.group_norm(x.double(), 2, eps=1e-5)
    assert (y.double() - exact).abs().max().item() < 4e-3


@interpreter_only
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # numpy's sigmoid(-large)
def test_constant_group_has_zero_variance_not_nan():
    """A constant group: var = 0, rstd = 1/sqrt(eps), y = silu(bias * (1 + scale) + shift)."""
    x = torch.full((2, 8, 3, 1), 3.0)
    weight, bias, scale, shift = make_params(2, 8)
    y = group_norm_modulate_silu(x, 8, weight, bias, scale, shift)
    expected = F.silu(bias * (1 + scale) + shift)[:, :, None, None].expand(2, 8, 3, 1)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-6)


def test_triton_path_runs_not_the_twin(monkeypatch, kernel_device):
    """If the kernels silently fell back, the comparisons above would test the twin with itself."""
    def twin_must_not_run(*args, **kwargs):
        raise AssertionError("the pure-torch twin ran instead of the Triton kernels")

    monkeypatch.setattr(gn_module, "_reference_fp32", twin_must_not_run)
    before = dict(_runtime.launch_counts)
    group_norm_modulate_silu(make_input((1, 4, 3, 5), "contiguous", device=kernel_device), 2,
                             *make_params(1, 4, device=kernel_device))
    for name in ("gn_stats", "gn_apply"):  # two launches: statistics (merged in its last programs), apply
        assert _runtime.launch_counts[name] == before.get(name, 0) + 1


@interpreter_only
def test_out_may_be_x_itself(tol):
    torch.manual_seed(5)
    x = make_input((2, 6, 5, 7), "channels_last")
    params = make_params(2, 6)
    expected = group_norm_modulate_silu_reference(x, 3, *params)
    assert group_norm_modulate_silu(x, 3, *params, out=x) is x
    torch.testing.assert_close(x, expected, **tol(torch.float32))


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_in_interpreter(dtype, tol):
    torch.manual_seed(6)
    x = make_input((1, 8, 5, 7), "channels_last", dtype=dtype)
    weight, bias, scale, shift = make_params(1, 8)
    y = group_norm_modulate_silu(x, 4, weight, bias, scale.to(dtype), shift.to(dtype))
    assert y.dtype == dtype
    expected = group_norm_modulate_silu_reference(x.float(), 4, weight, bias, scale.to(dtype), shift.to(dtype))
    torch.testing.assert_close(y.float(), expected, **tol(dtype))


@pytest.mark.parametrize("variant", ["functional", "out"])
def test_opcheck(variant, kernel_device):
    x = make_input((1, 4, 3, 5), "channels_last", device=kernel_device)
    weight, bias, scale, shift = make_params(1, 4, device=kernel_device)
    if variant == "functional":
        op, args = torch.ops.resflow_fast.group_norm_modulate_silu.default, (x, 2, weight, bias, scale, shift, 1e-5, True)
    else:
        op = torch.ops.resflow_fast.group_norm_modulate_silu_out.default
        args = (x, 2, weight, bias, None, shift, 1e-5, False, torch.empty_like(x))
    torch.library.opcheck(op, args)


def test_torch_compile_traces_without_graph_break(tol, kernel_device):
    x = make_input((1, 4, 3, 5), "channels_last", device=kernel_device)
    params = make_params(1, 4, device=kernel_device)

    def block(x, weight, bias, scale, shift):
        return group_norm_modulate_silu(x, 2, weight, bias, scale, shift) * 2.0

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)  # fullgraph: a break raises
    torch.testing.assert_close(compiled(x, *params), block(x, *params), **tol(torch.float32))


# ------------------------------------------------------------------------------------------------
# fallbacks, switches and validation (no kernel needed)
# ------------------------------------------------------------------------------------------------
def test_disable_switch_runs_the_twin(monkeypatch, tol):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    before = _runtime.launch_counts["gn_apply"]
    x = make_input((1, 4, 3, 5), "channels_last")
    params = make_params(1, 4)
    y = group_norm_modulate_silu(x, 2, *params)
    assert _runtime.launch_counts["gn_apply"] == before
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, group_norm_modulate_silu_reference(x, 2, *params), **tol(torch.float32))


def test_cpu_without_interpreter_falls_back_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_runtime, "_fallbacks_logged", set())
    before = _runtime.launch_counts["gn_apply"]
    with caplog.at_level(logging.INFO, logger="resflow_fast"):
        for _ in range(3):
            group_norm_modulate_silu(make_input((1, 4, 3, 5), "contiguous"), 2, *make_params(1, 4))
    assert _runtime.launch_counts["gn_apply"] == before
    messages = [r.getMessage() for r in caplog.records if r.name == "resflow_fast"]
    assert len(messages) == 1 and "twin" in messages[0]


def test_autograd_goes_through_the_differentiable_twin():
    x = make_input((1, 4, 3, 5), "contiguous").requires_grad_()
    weight, bias, scale, shift = make_params(1, 4)
    scale.requires_grad_()
    before = _runtime.launch_counts["gn_apply"]
    group_norm_modulate_silu(x, 2, weight, bias, scale, shift).square().sum().backward()
    assert _runtime.launch_counts["gn_apply"] == before
    assert x.grad is not None and scale.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(RuntimeError, match="autograd"):
        group_norm_modulate_silu(x, 2, weight, bias, scale, shift, out=torch.empty(x.shape))


def test_batch_one_still_launches_many_statistics_programs():
    """1x128x512^2 NHWC (a benchmark shape) must spread over a 132-SM GPU, several programs each."""
    cfg = gn_module.pick_config(128, channels_last=True)
    split = gn_module.stats_split(1, 128, 512 * 512, cfg)
    assert split.programs_per_sample >= 2 * 132
    # and the split (a runtime value) is what changes with the image size, not the block sizes
    assert gn_module.pick_config(128, channels_last=True) == cfg


@pytest.mark.parametrize("mutate, error, match", [
    (lambda a: a.update(x=torch.randn(4, 3, 5)), ValueError, "x must be a 4-D tensor"),
    (lambda a: a.update(x=torch.randn(1, 4, 3, 5).double()), TypeError, "x must have dtype"),
    (lambda a: a.update(x=[1.0]), TypeError, "x must be a torch.Tensor"),
    (lambda a: a.update(num_groups=3), ValueError, "not divisible by num_groups=3"),
    (lambda a: a.update(num_groups=0), ValueError, "num_groups must be a positive int"),
    (lambda a: a.update(weight=torch.randn(5)), ValueError, r"weight must have shape \(4,\)"),
    (lambda a: a.update(bias=torch.randn(1, 4)), ValueError, r"bias must have shape \(4,\)"),
    (lambda a: a.update(scale=torch.randn(4)), ValueError, r"scale must have shape \(1, 4\)"),
    (lambda a: a.update(shift=torch.randn(2, 4)), ValueError, r"shift must have shape \(1, 4\)"),
    (lambda a: a.update(eps=0.0), ValueError, "eps must be a finite number > 0"),
    (lambda a: a.update(eps=float("nan")), ValueError, "eps must be a finite number > 0"),
    (lambda a: a.update(apply_silu=1), TypeError, "apply_silu must be a bool"),
    (lambda a: a.update(out=torch.empty(1, 4, 3, 5, dtype=torch.float16)), TypeError, "out must have x's dtype"),
    (lambda a: a.update(out=torch.empty(1, 4, 3, 6)), ValueError, r"out must have shape \(1, 4, 3, 5\)"),
    (lambda a: a.update(out=torch.empty(1, 4, 3, 10)[..., ::2]), ValueError, "out must be contiguous or channels_last"),
    (lambda a: a.update(weight=torch.randn(4, device="meta")), ValueError, "weight is on meta"),
])
def test_validation_errors_name_the_argument(mutate, error, match):
    args = dict(x=torch.randn(1, 4, 3, 5), num_groups=2, weight=torch.randn(4), bias=torch.randn(4),
                scale=None, shift=None, eps=1e-5, apply_silu=True, out=None)
    mutate(args)
    with pytest.raises(error, match=match):
        group_norm_modulate_silu(**args)


# ------------------------------------------------------------------------------------------------
# CUDA: compiled kernels
# ------------------------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape, groups", [((2, 64, 37, 53), 32), ((1, 128, 64, 64), 32), ((3, 96, 17, 9), 32),
                                           ((1, 512, 16, 16), 32), ((1, 6, 1, 1), 1)])
def test_cuda_against_fp32_twin(shape, groups, layout, dtype, tol):
    torch.manual_seed(7)
    x = make_input(shape, layout, dtype=dtype, device="cuda")
    weight, bias, scale, shift = make_params(shape[0], shape[1], device="cuda")
    before = _runtime.launch_counts["gn_apply"]
    out = nan_like(x, channels_last=layout == "channels_last")
    group_norm_modulate_silu(x, groups, weight, bias, scale, shift, out=out)
    assert _runtime.launch_counts["gn_apply"] == before + 1
    expected = group_norm_modulate_silu_reference(x.float(), groups, weight, bias, scale, shift)
    torch.testing.assert_close(out.float(), expected, **tol(dtype))


@cuda_only
def test_cuda_deterministic_over_repeated_runs():
    torch.manual_seed(8)
    x = make_input((1, 128, 96, 80), "channels_last", dtype=torch.bfloat16, device="cuda")
    params = make_params(1, 128, device="cuda")
    first = group_norm_modulate_silu(x, 32, *params)
    for _ in range(5):
        assert torch.equal(group_norm_modulate_silu(x, 32, *params), first)


@cuda_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_new_image_size_never_recompiles(layout):
    kernels = (gn_module._gn_stats_kernel, gn_module._gn_apply_kernel)
    params = make_params(1, 64, device="cuda")

    def run(h, w, eps=1e-5):
        x = make_input((1, 64, h, w), layout, dtype=torch.bfloat16, device="cuda")
        group_norm_modulate_silu(x, 32, *params, eps=eps)

    run(64, 64)
    run(1, 1)  # a 1x1 image is NCHW- and NHWC-dense at once and takes the NCHW variant: warm it too
    variants = [_runtime.compiled_variants(k) for k in kernels]
    for h, w in ((37, 53), (128, 96), (17, 1), (255, 257), (512, 512), (1, 1), (64, 64)):
        run(h, w, eps=1e-6 if h % 2 else 1e-5)
    assert [_runtime.compiled_variants(k) for k in kernels] == variants
