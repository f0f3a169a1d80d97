"""group_stats: the one-pass GroupNorm statistics kernel against the reference's
group_norm_statistics (torch.var_mean on an fp32 copy). Tiny fp32 shapes under the interpreter."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from resflow_fast.kernels import _runtime, group_stats, group_stats_reference

stats_module = importlib.import_module("resflow_fast.kernels.group_stats")
shared = importlib.import_module("resflow_fast.kernels._group_stats")

# skipped where they cannot run by the hook in tests/conftest.py
interpreter_only = pytest.mark.interpreter_only
cuda_only = pytest.mark.cuda

# (N, C, H, W), num_groups -- and why each is here
SHAPES = [
    pytest.param((1, 4, 3, 5), 2, id="tiny-3x5"),
    pytest.param((2, 6, 37, 53), 3, id="odd-37x53-batch2-several-chunks"),
    pytest.param((2, 8, 1, 1), 4, id="1x1-pixel"),
    pytest.param((1, 96, 3, 5), 32, id="C96-groups-of-3-across-channel-blocks"),
]


def make_input(shape, layout, dtype=torch.float32, device="cpu"):
    x = (torch.randn(shape, device=device) * 2.0 + 0.5).to(dtype)
    if layout == "sliced":  # neither NCHW- nor NHWC-dense
        return torch.cat([x, x], dim=3)[..., ::2]
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@interpreter_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("shape, groups", SHAPES)
def test_matches_the_reference_in_one_launch(shape, groups, layout, tol):
    torch.manual_seed(0)
    x = make_input(shape, layout)
    before = dict(_runtime.launch_counts)
    mean, rstd = group_stats(x, groups, 1e-5)
    assert _runtime.launch_counts["gn_stats"] == before.get("gn_stats", 0) + 1
    assert sum(_runtime.launch_counts.values()) == sum(before.values()) + 1  # no separate merge pass
    want_mean, want_rstd = group_stats_reference(x, groups, 1e-5)
    assert mean.dtype == rstd.dtype == torch.float32 and mean.shape == (shape[0], groups)
    torch.testing.assert_close(mean, want_mean, **tol(torch.float32))
    torch.testing.assert_close(rstd, want_rstd, **tol(torch.float32))


@interpreter_only
def test_many_chunks_and_channel_blocks_leave_the_counters_zero(monkeypatch, tol):
    """Tiny blocks: several chunks and channel blocks, so the merges are done by the last programs
    to arrive. The counters they use are left zero, so one buffer serves the next launch too."""
    counters = torch.zeros(64, dtype=torch.int32)
    monkeypatch.setattr(shared, "_zeroed_counters", lambda device, size: counters)
    cfg = shared.GroupNormConfig(block_p=4, block_c=2, stats_programs=8, tiles_in_flight=2)
    monkeypatch.setattr(stats_module, "pick_config", lambda num_channels, channels_last, on_gpu=True: cfg)
    split = shared.stats_split(2, 6, 9 * 11, cfg)
    assert split.num_chunks > 1 and split.num_c_blocks > 1
    torch.manual_seed(1)
    for _ in range(2):
        x = make_input((2, 6, 9, 11), "contiguous")
        mean, rstd = group_stats(x, 3, 1e-5)
        assert not counters.any()
        want_mean, want_rstd = group_stats_reference(x, 3, 1e-5)
        torch.testing.assert_close(mean, want_mean, **tol(torch.float32))
        torch.testing.assert_close(rstd, want_rstd, **tol(torch.float32))


@interpreter_only
def test_statistics_survive_a_large_mean():
    """x = 1000 + 0.01 * noise: E[x^2] - E[x]^2 in fp32 would lose the variance entirely."""
    torch.manual_seed(2)
    x = 1000.0 + 0.01 * torch.randn(1, 4, 16, 16)
    mean, rstd = group_stats(x, 2, 1e-12)
    var, exact_mean = torch.var_mean(x.double().reshape(1, 2, -1), dim=2, unbiased=False)
    assert (mean.double() - exact_mean).abs().max().item() < 1e-3 * var.sqrt().min().item() + 1e-4
    torch.testing.assert_close(rstd.double(), var.rsqrt(), rtol=1e-3, atol=0)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_gives_fp32_statistics(dtype, tol):
    torch.manual_seed(3)
    x = make_input((1, 8, 5, 7), "channels_last", dtype)
    mean, rstd = group_stats(x, 4, 1e-5)
    want_mean, want_rstd = group_stats_reference(x, 4, 1e-5)  # of the same rounded values
    torch.testing.assert_close(mean, want_mean, **tol(torch.float32))
    torch.testing.assert_close(rstd, want_rstd, **tol(torch.float32))


def test_triton_path_runs_not_the_twin(monkeypatch, kernel_device):
    def twin_must_not_run(*args, **kwargs):
        raise AssertionError("the twin ran instead of the Triton kernel")

    monkeypatch.setattr(stats_module, "group_norm_statistics", twin_must_not_run)
    before = _runtime.launch_counts["gn_stats"]
    group_stats(make_input((1, 4, 3, 5), "contiguous", device=kernel_device), 2)
    assert _runtime.launch_counts["gn_stats"] == before + 1


def test_opcheck(kernel_device):
    x = make_input((1, 4, 3, 5), "channels_last", device=kernel_device)
    torch.library.opcheck(torch.ops.resflow_fast.group_stats.default, (x, 2, 1e-5))


def test_torch_compile_traces_without_graph_break(kernel_device, tol):
    x = make_input((1, 4, 3, 5), "contiguous", device=kernel_device)

    def normalise(x):
        mean, rstd = group_stats(x, 2)
        return (x.reshape(1, 2, -1) - mean[:, :, None]) * rstd[:, :, None]

    compiled = torch.compile(normalise, backend="aot_eager", fullgraph=True)  # fullgraph: a break raises
    torch.testing.assert_close(compiled(x), normalise(x), **tol(torch.float32))
    torch.testing.assert_close(compiled(x).reshape(x.shape), F.group_norm(x, 2), **tol(torch.float32))


def test_disable_switch_and_autograd_run_the_twin(monkeypatch):
    x = make_input((1, 4, 3, 5), "contiguous")
    before = _runtime.launch_counts["gn_stats"]
    with monkeypatch.context() as m:
        m.setenv("RESFLOW_DISABLE_TRITON", "1")
        assert all(torch.equal(a, b) for a, b in zip(group_stats(x, 2), group_stats_reference(x, 2)))
    x.requires_grad_()
    mean, rstd = group_stats(x, 2)
    (mean.sum() + rstd.sum()).backward()
    assert _runtime.launch_counts["gn_stats"] == before and x.grad is not None


def test_empty_batch():
    mean, rstd = group_stats(torch.empty(0, 4, 3, 5), 2)
    assert mean.shape == rstd.shape == (0, 2)


@pytest.mark.parametrize("args, error, match", [
    ((torch.randn(4, 3, 5), 2), ValueError, "x must be a 4-D tensor"),
    ((torch.randn(1, 4, 3, 5).double(), 2), TypeError, "x must have dtype"),
    ((torch.randn(1, 4, 3, 5), 3), ValueError, "not divisible by num_groups=3"),
    ((torch.randn(1, 4, 3, 5), 0), ValueError, "num_groups must be a positive int"),
    ((torch.randn(1, 4, 3, 5), 2, 0.0), ValueError, "eps must be a finite number > 0"),
])
def test_validation_errors_name_the_argument(args, error, match):
    for fn in (group_stats, group_stats_reference):
        with pytest.raises(error, match=match):
            fn(*args)


# ------------------------------------------------------------------------------------------------
# CUDA: compiled kernel
# ------------------------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape, groups", [((2, 64, 37, 53), 32), ((1, 128, 64, 64), 32), ((3, 96, 17, 9), 32),
                                           ((1, 384, 16, 16), 32), ((1, 6, 1, 1), 1)])
def test_cuda_against_the_reference_deterministic(shape, groups, layout, dtype, tol):
    torch.manual_seed(4)
    x = make_input(shape, layout, dtype, "cuda")
    mean, rstd = group_stats(x, groups)
    want_mean, want_rstd = group_stats_reference(x, groups)
    torch.testing.assert_close(mean, want_mean, **tol(torch.float32))
    torch.testing.assert_close(rstd, want_rstd, **tol(torch.float32))
    for _ in range(3):  # the last-to-arrive merges reuse their counters: still the same bits
        again_mean, again_rstd = group_stats(x, groups)
        assert torch.equal(again_mean, mean) and torch.equal(again_rstd, rstd)


@cuda_only
def test_cuda_no_fp32_copy_and_no_recompile_for_new_sizes():
    """A bf16 1x128x512^2 activation (64 MiB) needs no fp32 copy (128 MiB): the peak grows by the
    small partials only. New image sizes reuse the compiled kernel."""
    x = make_input((1, 128, 512, 512), "channels_last", torch.bfloat16, "cuda")
    group_stats(x, 32)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    group_stats(x, 32)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 8 * 2**20
    variants = _runtime.compiled_variants(shared._gn_stats_kernel)
    for h, w in ((37, 53), (255, 257), (1, 1), (512, 384)):
        group_stats(make_input((1, 128, h, w), "channels_last", torch.bfloat16, "cuda"), 32)
    assert _runtime.compiled_variants(shared._gn_stats_kernel) == variants
