"""Tests of resflow_fast/fast_unet.py: the fused forward against the reference U-Net."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from resflow_fast import fast_unet as fast_unet_module
from resflow_fast.conv_dispatch import ConvDispatch
from resflow_fast.fast_unet import FastUNet, fold_group_norm, group_stats
from resflow_fast.kernels import _runtime
from resflow_fast.reference.sampler import euler_sample
from resflow_fast.reference.schedule import Schedule
from resflow_fast.reference.unet import GroupNorm32, ResBlock, UNet, crop_to, pad_to_multiple, preset_config
from resflow_fast.sampler import ResFlowSampler

#: Two levels, attention at 1/2 and in the middle: every kind of block, in a small network.
SMALL = dict(channel_mult=(1, 2), attention_downsample=(2,), middle_attention=True)


def fast_forward(model, z, t):
    net = FastUNet(model, torch.float32)
    cond = net.prepare(torch.tensor([t]), z.shape[0])
    return net(z, cond[0])


def test_matches_reference_with_pure_torch_twins(random_unet, monkeypatch):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = random_unet(**SMALL)
    z = torch.randn(2, 6, 10, 14)
    with torch.no_grad():
        expected = model(z, torch.full((2,), 0.7))
    got = fast_forward(model, z, 0.7)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_matches_reference_with_triton_kernels(random_unet, monkeypatch):
    if not (_runtime.triton_available() and _runtime.interpreter_enabled()):
        pytest.skip("needs Triton with TRITON_INTERPRET=1 to run the kernels on CPU tensors")
    monkeypatch.delenv("RESFLOW_DISABLE_TRITON", raising=False)
    model = random_unet(seed=1, **SMALL)
    z = torch.randn(1, 6, 6, 10)
    before = sum(_runtime.launch_counts.values())
    got = fast_forward(model, z, 0.3)
    assert sum(_runtime.launch_counts.values()) > before, "the Triton kernels did not run"
    with torch.no_grad():
        torch.testing.assert_close(got, model(z, torch.tensor([0.3])), atol=1e-5, rtol=1e-5)


def test_refuses_unpadded_input(random_unet, monkeypatch):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = random_unet(**SMALL)
    with pytest.raises(ValueError, match="not padded to a multiple of 2"):
        fast_forward(model, torch.randn(1, 6, 5, 6), 0.5)


def test_refuses_unknown_dtype(random_unet):
    with pytest.raises(ValueError, match="dtype must be"):
        FastUNet(random_unet(**SMALL), torch.int8)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_forward_on_cuda(random_unet, dtype):
    model = random_unet(**SMALL).cuda()
    z = torch.randn(2, 6, 64, 96, device="cuda")
    with torch.no_grad():
        expected = model(z, torch.full((2,), 0.5, device="cuda"))
    net = FastUNet(model, dtype)
    got = net(z, net.prepare(torch.tensor([0.5], device="cuda"), 2)[0]).float()
    rel = (got - expected).norm() / expected.norm()
    assert rel < 2e-2, f"relative error {rel:.3g} in {dtype}"


# -- the fused ResBlock path (fused_conv, resflow_fast/conv_dispatch.py) ---------------------------
SIZES = [(16, 16), (12, 20)]  # 12x20 is reflect-padded to 16x24 (the test preset's multiple is 8)


@pytest.fixture
def no_policy_env(monkeypatch):
    monkeypatch.delenv("RESFLOW_FUSED_CONV", raising=False)


def scaled_unet(seed=0, **overrides):
    """The test preset with O(1) activations everywhere: conv weights ~ 1/sqrt(fan-in) (the
    reference zero-initialises conv2 and the output conv), GroupNorm affine near (1, 0), and a
    non-trivial time modulation, so every fold term shows in the output."""
    torch.manual_seed(seed)
    model = UNet(preset_config("test", **overrides))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 1 / math.sqrt(m.weight[0].numel()))
                m.bias.normal_(0, 0.1)
            elif isinstance(m, GroupNorm32):
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.5 / math.sqrt(m.weight.shape[1]))
                m.bias.normal_(0, 0.2)
    return model.eval()


def padded_forward(model, z, t, fused_conv, dtype=torch.float32):
    """FastUNet on z padded to the network multiple, cropped back (what the sampler does)."""
    net = FastUNet(model, dtype, fused_conv=fused_conv)
    zp, size = pad_to_multiple(z, model.multiple)
    cond = net.prepare(torch.tensor([t], device=z.device), z.shape[0])
    return crop_to(net(zp, cond[0]), size)


def spy_on(monkeypatch, name):
    """Records the keyword arguments of every call the fast U-Net makes to ``name`` (whatever runs
    inside: kernel or twin), and passes the call through."""
    calls = []
    real = getattr(fast_unet_module, name)

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_unet_module, name, spy)
    return calls


@pytest.fixture
def fused_calls(monkeypatch):
    return spy_on(monkeypatch, "fused_conv3x3")


def n_res_blocks(model):
    return sum(isinstance(m, ResBlock) for m in model.modules())


def ends_with_res_block(stage):
    return stage.res is not None and stage.attn is None and stage.resample is None


def n_chained(model, into_out_norm=False):
    """How many fused conv2s also return the next norm's statistics: a stage ending with its
    ResBlock whose output is the next ResBlock's input as is (down path and middle), and, in the
    sampler's step, the last up stage into the output norm."""
    chain = list(model.down) + list(model.middle)
    n = sum(ends_with_res_block(a) and b.res is not None for a, b in zip(chain, chain[1:]))
    return n + int(into_out_norm and ends_with_res_block(model.up[-1]))


def test_group_stats_and_fold_reproduce_the_modulated_group_norm():
    torch.manual_seed(0)
    N, C, G = 2, 16, 4
    x = (3 * torch.randn(N, C, 5, 7) + 1).contiguous(memory_format=torch.channels_last)
    gamma, beta = 1 + 0.2 * torch.randn(C), 0.2 * torch.randn(C)
    scale, shift = 0.3 * torch.randn(N, C), 0.3 * torch.randn(N, C)
    mean, rstd = group_stats(x, G, 1e-5)
    var_ref, mean_ref = torch.var_mean(x.reshape(N, G, -1), dim=2, unbiased=False)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(rstd, torch.rsqrt(var_ref + 1e-5))
    a, b = fold_group_norm(mean, rstd, gamma, beta, scale, shift)
    assert a.shape == b.shape == (N, C) and a.dtype == b.dtype == torch.float32
    expected = F.group_norm(x, G, gamma, beta, 1e-5) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    torch.testing.assert_close(a[:, :, None, None] * x + b[:, :, None, None], expected, atol=1e-5, rtol=1e-5)
    a, b = fold_group_norm(mean, rstd, gamma, beta)  # conv1's norm: no modulation
    torch.testing.assert_close(a[:, :, None, None] * x + b[:, :, None, None], F.group_norm(x, G, gamma, beta, 1e-5),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fused_conv_on_matches_reference_and_off_with_twins(monkeypatch, no_policy_env, fused_calls, size):
    """The fold and plumbing of the fused ResBlock path, with fused_conv3x3's pure-torch twin."""
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = scaled_unet()
    z = torch.randn(2, 6, *size)
    with torch.no_grad():
        expected = model(z, torch.full((2,), 0.6))
    off = padded_forward(model, z, 0.6, "off")
    assert fused_calls == []
    on = padded_forward(model, z, 0.6, "on")
    assert len(fused_calls) == 2 * n_res_blocks(model)
    # every conv1 gives GN2's statistics; conv2s chained to the next norm give its statistics
    assert n_chained(model) > 0
    assert sum(c.get("stats_groups") is not None for c in fused_calls) == n_res_blocks(model) + n_chained(model)
    assert sum(c.get("skip_x") is not None for c in fused_calls) > 0  # some blocks change channels
    assert sum(c.get("residual") is not None for c in fused_calls) > 0  # some keep them
    assert expected.abs().max() > 0.5  # the comparison sees the whole network
    torch.testing.assert_close(on, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(on, off, atol=1e-4, rtol=1e-4)


@pytest.mark.interpreter_only
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fused_conv_on_matches_reference_under_interpreter(monkeypatch, no_policy_env, size):
    """The Triton kernel itself inside the network (fp32, "ieee" dots). The test preset at half
    width (16 base channels, 8 groups: group size 2 at every level) keeps the interpreter to
    ~10 s per size; the twin test above runs the full-width preset."""
    monkeypatch.delenv("RESFLOW_DISABLE_TRITON", raising=False)
    model = scaled_unet(1, base_channels=16, num_groups=8)
    z = torch.randn(1, 6, *size)
    with torch.no_grad():
        expected = model(z, torch.tensor([0.3]))
    before = dict(_runtime.launch_counts)
    on = padded_forward(model, z, 0.3, "on")
    launched = {k: _runtime.launch_counts[k] - before.get(k, 0) for k in ("fused_conv3x3", "conv3x3_group_stats")}
    assert launched == {"fused_conv3x3": 2 * n_res_blocks(model),
                        "conv3x3_group_stats": n_res_blocks(model) + n_chained(model)}
    torch.testing.assert_close(on, expected, atol=1e-4, rtol=1e-4)
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")  # "off" through the twins: its kernels are tested above
    torch.testing.assert_close(on, padded_forward(model, z, 0.3, "off"), atol=1e-4, rtol=1e-4)


class _SplitDispatch(ConvDispatch):
    """Fuses only the convs whose key variant starts with ``prefix``: one conv of each block."""

    def __init__(self, prefix):
        super().__init__("on")
        self.prefix = prefix

    def lookup(self, key):
        return key.variant.startswith(self.prefix)


@pytest.mark.parametrize("prefix", ["norm+", "modnorm+"], ids=["conv1-only", "conv2-only"])
def test_one_fused_conv_per_block_matches_reference(monkeypatch, fused_calls, prefix):
    """Mixed decisions ("auto" can keep either conv alone): conv1 fused without a fused conv2
    writes no statistics; conv2 fused after an unfused conv1 computes h's statistics itself (and
    still hands the next norm its statistics, which an unfused conv1 there does not use)."""
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = scaled_unet(2)
    z = torch.randn(1, 6, 8, 16)
    with torch.no_grad():
        expected = model(z, torch.tensor([0.5]))
    got = padded_forward(model, z, 0.5, _SplitDispatch(prefix))
    assert len(fused_calls) == n_res_blocks(model)
    with_stats = sum(c.get("stats_groups") is not None for c in fused_calls)
    assert with_stats == (0 if prefix == "norm+" else n_chained(model))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_chained_statistics_replace_group_stats(monkeypatch, no_policy_env):
    """Where conv2's epilogue hands the next conv1 its input statistics, group_stats is not run
    for it: one call per ResBlock conv1 fewer than without chaining."""
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = scaled_unet(5)
    calls = []
    real = fast_unet_module.group_stats
    monkeypatch.setattr(fast_unet_module, "group_stats", lambda *a: calls.append(a[0].shape) or real(*a))
    padded_forward(model, torch.randn(1, 6, 8, 8), 0.5, "on")
    assert len(calls) == n_res_blocks(model) - n_chained(model)


def test_chained_statistics_use_the_next_norms_groups_and_eps(monkeypatch, no_policy_env):
    """Norms with their own group count and eps where statistics chain into them (the middle's
    second ResBlock, the output norm): the fused network still equals the reference, so each
    epilogue computed its statistics for the norm that reads them."""
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = scaled_unet(9)
    chained_into = model.middle[1].res.norm1
    assert ends_with_res_block(model.middle[0]) and ends_with_res_block(model.up[-1])
    chained_into.eps, chained_into.num_groups = 0.5, 4
    model.out_norm.eps, model.out_norm.num_groups = 0.25, 2
    lq = torch.rand(1, 3, 8, 8) * 2 - 1
    got = ResFlowSampler(model, steps=2, fast=True, dtype=torch.float32, fused_conv="on")(lq, seed=3)
    torch.testing.assert_close(got, euler_sample(model, lq, steps=2, seed=3), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("policy", [None, "off", "auto"])
def test_off_and_cpu_auto_never_fuse_and_are_bit_identical(random_unet, monkeypatch, no_policy_env, fused_calls, policy):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = random_unet(**SMALL)
    z = torch.randn(1, 6, 8, 12)
    net = FastUNet(model, torch.float32, fused_conv=policy)
    cond = net.prepare(torch.tensor([0.4]), 1)
    baseline = FastUNet(model, torch.float32)
    assert torch.equal(net(z, cond[0]), baseline(z, baseline.prepare(torch.tensor([0.4]), 1)[0]))
    assert fused_calls == [] and net.dispatch.measurements == 0


def test_env_picks_the_policy_and_an_argument_wins(random_unet, monkeypatch):
    monkeypatch.setenv("RESFLOW_FUSED_CONV", "on")
    model = random_unet(**SMALL)
    assert FastUNet(model, torch.float32).dispatch.policy == "on"
    assert FastUNet(model, torch.float32, fused_conv="off").dispatch.policy == "off"
    assert ResFlowSampler(model, fast=True).conv_dispatch.policy == "on"
    with pytest.raises(ValueError, match="fused_conv"):
        FastUNet(model, torch.float32, fused_conv="always")


def test_dropout_in_training_mode_falls_back_to_the_unfused_path(monkeypatch, no_policy_env, fused_calls):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = scaled_unet(dropout=0.1).train()
    z = torch.randn(1, 6, 8, 8)
    got = padded_forward(model, z, 0.5, "on")
    assert fused_calls == []
    torch.testing.assert_close(got, padded_forward(model, z, 0.5, "off"), atol=0, rtol=0)
    model.eval()  # inference: dropout is the identity, the fused path runs
    padded_forward(model, z, 0.5, "on")
    assert len(fused_calls) == 2 * n_res_blocks(model)


def test_sampler_passes_the_policy_through(monkeypatch, no_policy_env, fused_calls):
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = scaled_unet(3)
    lq = torch.rand(1, 3, 8, 8) * 2 - 1
    off = ResFlowSampler(model, steps=2, fast=True, dtype=torch.float32)(lq, seed=1)
    assert fused_calls == []
    sampler = ResFlowSampler(model, steps=2, fast=True, dtype=torch.float32, fused_conv="on")
    on = sampler(lq, seed=1)
    assert len(fused_calls) == 2 * 2 * n_res_blocks(model)
    torch.testing.assert_close(on, off, atol=1e-4, rtol=1e-4)


@pytest.fixture
def euler_calls(monkeypatch):
    return spy_on(monkeypatch, "fused_conv3x3_euler")


@pytest.mark.parametrize("y_mode", ["joint", "exact"])
@pytest.mark.parametrize("schedule", ["entropy_preserving", "x_only"])
def test_step_fused_output_conv_matches_forward_then_euler_step(monkeypatch, no_policy_env, euler_calls,
                                                                y_mode, schedule):
    """FastUNet.step with "on": the output conv takes the Euler step in its epilogue (statistics of
    its input from the last ResBlock's epilogue); the state and the next input equal those of
    forward() followed by euler_step, and of the reference sampler."""
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    sched = Schedule(schedule)
    model = scaled_unet(6, auxiliary=sched.has_auxiliary)
    lq = torch.rand(2, 3, 12, 8) * 2 - 1
    reference = euler_sample(model, lq, steps=3, seed=4, schedule=sched, y_mode=y_mode)
    on = ResFlowSampler(model, sched, steps=3, fast=True, dtype=torch.float32, y_mode=y_mode, fused_conv="on")
    got = on(lq, seed=4)
    assert len(euler_calls) == 3
    assert all(c["prologue"] is not None and (c["y"] is None) == (schedule == "x_only") for c in euler_calls)
    assert all((c["y_scale"] is not None) == (y_mode == "exact" and schedule != "x_only") for c in euler_calls)
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)
    euler_calls.clear()
    off = ResFlowSampler(model, sched, steps=3, fast=True, dtype=torch.float32, y_mode=y_mode)(lq, seed=4)
    assert euler_calls == []
    torch.testing.assert_close(got, off, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fused_wins", [True, False], ids=["fused-wins", "baseline-wins"])
def test_step_under_auto_times_scratch_copies_and_moves_the_state_once(monkeypatch, no_policy_env, tmp_path,
                                                                       euler_calls, fused_wins):
    """ "auto" measures the output conv on copies: whatever it decides, the real state takes
    exactly one Euler step. (The timer is injected, so this runs on the CPU; the ConvKey is
    made to look like a CUDA one so "auto" measures.)"""
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = scaled_unet(7)
    # (baseline, fused) ms for every measured conv: all fuse, or none does
    timings = iter(([2.0, 1.0] if fused_wins else [1.0, 2.0]) * 64)
    dispatch = ConvDispatch("auto", cache_path=tmp_path / "cache.json", timer=lambda fn: (fn(), next(timings))[1])
    real_lookup = ConvDispatch.lookup
    monkeypatch.setattr(ConvDispatch, "lookup", lambda self, key: real_lookup(
        self, dataclasses.replace(key, device_type="cuda")))
    net = FastUNet(model, torch.float32, fused_conv=dispatch)
    ref_net = FastUNet(model, torch.float32)
    cl = torch.channels_last
    z = torch.randn(1, 6, 8, 8).contiguous(memory_format=cl)
    x, y = z[:, :3].contiguous(memory_format=cl), z[:, 3:].contiguous(memory_format=cl)
    times = torch.tensor([1.0])
    expected_x, expected_y, expected_z = x.clone(), y.clone(), z.clone()
    ref_net.step(expected_z, ref_net.prepare(times, 1)[0], expected_x, expected_y, 0.25)
    net.step(z, net.prepare(times, 1)[0], x, y, 0.25)
    assert dispatch.measurements > 0
    if fused_wins:
        assert len(euler_calls) == 2  # once timed (on the copies), once for real
        assert euler_calls[0]["x"] is not x and euler_calls[1]["x"] is x
    else:
        assert len(euler_calls) == 1 and euler_calls[0]["x"] is not x  # timed only
    torch.testing.assert_close(x, expected_x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y, expected_y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(z, expected_z, atol=1e-4, rtol=1e-4)


@pytest.mark.interpreter_only
def test_sampler_with_fused_convs_matches_reference_under_interpreter(monkeypatch, no_policy_env):
    """The Triton kernels themselves through a whole 2-step restore: ResBlock convs with chained
    statistics and the output conv with the Euler epilogue."""
    monkeypatch.delenv("RESFLOW_DISABLE_TRITON", raising=False)
    model = scaled_unet(8, base_channels=16, num_groups=8)
    lq = torch.rand(1, 3, 8, 8) * 2 - 1
    before = dict(_runtime.launch_counts)
    got = ResFlowSampler(model, steps=2, fast=True, dtype=torch.float32, fused_conv="on")(lq, seed=2)
    launched = {k: _runtime.launch_counts[k] - before.get(k, 0)
                for k in ("fused_conv3x3", "fused_conv3x3_euler", "conv3x3_group_stats")}
    assert launched == {"fused_conv3x3": 2 * 2 * n_res_blocks(model), "fused_conv3x3_euler": 2,
                        "conv3x3_group_stats": 2 * (n_res_blocks(model) + n_chained(model, into_out_norm=True))}
    torch.testing.assert_close(got, euler_sample(model, lq, steps=2, seed=2), atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_fused_conv_bf16_parity_and_determinism_on_cuda(tmp_path, monkeypatch, no_policy_env):
    """bf16 on the GPU: "on" as close to the fp32 reference as "off" is, and bitwise repeatable
    (the kernel's statistics combine in a fixed order, no atomics). Then "auto" measures every
    ResBlock conv shape once into its cache, and a second forward measures nothing."""
    monkeypatch.setenv("RESFLOW_CACHE", str(tmp_path))
    model = scaled_unet(4).cuda()
    z = torch.randn(2, 6, 60, 92, device="cuda")  # padded to 64x96
    with torch.no_grad():
        expected = model(z, torch.full((2,), 0.5, device="cuda"))

    def rel(got):
        return ((got.float() - expected).norm() / expected.norm()).item()

    off = padded_forward(model, z, 0.5, "off", torch.bfloat16)
    on = padded_forward(model, z, 0.5, "on", torch.bfloat16)
    assert rel(on) < 2e-2 and rel(on) < 2 * rel(off) + 2e-3, (rel(on), rel(off))
    assert torch.equal(on, padded_forward(model, z, 0.5, "on", torch.bfloat16))
    dispatch = ConvDispatch("auto")
    auto = padded_forward(model, z, 0.5, dispatch, torch.bfloat16)
    assert rel(auto) < 2e-2 and dispatch.measurements > 0
    assert (tmp_path / "conv_dispatch.json").is_file()
    measured = dispatch.measurements
    padded_forward(model, z, 0.5, dispatch, torch.bfloat16)
    assert dispatch.measurements == measured


def test_weights_are_cast_once_and_again_only_where_they_change(random_unet, monkeypatch, no_policy_env):
    """FastUNet keeps each conv's cast and packed weights and fp32 biases across calls while its
    parameters are unchanged, and makes them again for a conv whose parameters were updated in
    place (as an optimizer step does) or replaced: the output always follows the live weights."""
    monkeypatch.setenv("RESFLOW_DISABLE_TRITON", "1")
    model = random_unet(**SMALL)
    block = next(m for m in model.modules() if isinstance(m, ResBlock) and not isinstance(m.skip, torch.nn.Identity))
    net = FastUNet(model, torch.float32, fused_conv="on")
    z = torch.randn(1, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    times = torch.tensor([0.7])

    def run(net):
        return net(z, net.prepare(times, 1)[0])

    def fresh():
        return run(FastUNet(model, torch.float32, fused_conv="on"))

    first = run(net)
    entries = dict(net._weights)
    derived = {k: dict(v.derived) for k, v in entries.items()}
    assert derived[id(block.conv2)] and derived[id(block.skip)]  # packed weights, fp32 and summed biases
    assert torch.equal(run(net), first)
    assert all(net._weights[k] is entry and entry.derived == derived[k] for k, entry in entries.items())

    with torch.no_grad():
        block.conv1.weight.add_(0.05)  # in place: the version counter moves
    changed = run(net)
    recast = [k for k, entry in entries.items() if net._weights[k] is not entry]
    assert recast == [id(block.conv1)]
    assert not torch.allclose(changed, first)
    torch.testing.assert_close(changed, fresh(), atol=0, rtol=0)

    with torch.no_grad():
        block.skip.bias.add_(0.5)  # conv2's epilogue adds conv2's and the skip's bias, summed once
    torch.testing.assert_close(run(net), fresh(), atol=0, rtol=0)

    block.conv2.weight.data = block.conv2.weight.data * 2  # replaced storage, same Parameter
    torch.testing.assert_close(run(net), fresh(), atol=0, rtol=0)
