"""Tests of reference/unet.py: shapes at odd sizes, presets, padding, validation."""
import pytest
import torch

from resflow_fast.reference.unet import (PRESETS, UNet, UNetConfig, build_unet, count_parameters, crop_to,
                                         pad_to_multiple, preset_config)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_unet("test").eval()


@pytest.mark.parametrize("shape", [
    (1, 6, 37, 53),   # odd, non-square: needs padding on both sides
    (3, 6, 16, 16),   # batch > 1 at an exact multiple
    (2, 6, 1, 9),     # a one-pixel side: replicate, not reflect
    (1, 6, 7, 9),     # smaller than the padding multiple of larger presets
])
def test_output_shape_matches_input(tiny, shape):
    with torch.no_grad():
        out = tiny(torch.randn(shape), torch.rand(shape[0]))
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_scalar_time_broadcasts(tiny):
    z = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        assert torch.equal(tiny(z, 0.5), tiny(z, torch.full((2,), 0.5)))


def test_time_changes_the_output(random_unet):
    model = random_unet()  # random output convs: zero-initialised ones would hide the time dependence
    z = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(model(z, 0.1), model(z, 0.9))


def test_batch_elements_are_independent(tiny):
    z, t = torch.randn(3, 6, 8, 8), torch.rand(3)
    with torch.no_grad():
        whole = tiny(z, t)
        single = torch.cat([tiny(z[i:i + 1], t[i:i + 1]) for i in range(3)])
    assert torch.allclose(whole, single, atol=1e-5)


@pytest.mark.parametrize("name, millions", [("bench19m", 19.1), ("paper", 118.8)])
def test_preset_sizes_match_the_benchmark_baselines(name, millions):
    """The two models docs/design/performance.md times must be the presets of the same names."""
    model = build_unet(name)
    assert count_parameters(model) / 1e6 == pytest.approx(millions, abs=0.05)


def test_paper_preset_layout():
    cfg = preset_config("paper")
    assert (cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attention_downsample) == (128, (1, 1, 2, 2, 4, 4), 2, (16,))
    assert cfg.multiple == 32 and cfg.in_channels == 6 and cfg.out_channels == 6


def test_x_only_control_has_three_channels():
    cfg = preset_config("test", auxiliary=False)
    assert cfg.in_channels == cfg.out_channels == 3


def test_every_preset_builds():
    for name in PRESETS:
        assert isinstance(build_unet(name), UNet)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown U-Net preset 'huge'; choose one of test"):
        build_unet("huge")


@pytest.mark.parametrize("kwargs, match", [
    (dict(base_channels=30), "not divisible into num_groups=32"),
    (dict(channel_mult=()), "channel_mult must be non-empty"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(num_res_blocks=0), "num_res_blocks must be a positive integer"),
])
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_wrong_input_channels_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"expects \(B, 6, H, W\)"):
        tiny(torch.randn(1, 3, 8, 8), 0.5)


def test_config_round_trip():
    cfg = preset_config("paper")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("hw", [(37, 53), (1, 1), (2, 3), (7, 9), (32, 32)])
def test_pad_to_multiple_then_crop(hw):
    x = torch.randn(1, 2, *hw)
    padded, size = pad_to_multiple(x, 32)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert torch.equal(crop_to(padded, size), x)


def test_pad_reflects():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 2, 4)
    padded, _ = pad_to_multiple(x, 4)  # H 2 -> 4 needs 2 rows; reflection gives 1 at a time
    assert padded.shape == (1, 1, 4, 4)
    x = torch.arange(3.0).view(1, 1, 1, 3).repeat(1, 1, 3, 1)
    padded, _ = pad_to_multiple(x, 4)
    assert padded[0, 0, 0].tolist() == [0.0, 1.0, 2.0, 1.0]


def test_attention_preset_at_odd_size():
    # "default" has attention at 1/8 and in the middle block, unlike the test preset
    torch.manual_seed(0)
    model = build_unet("default").eval()
    assert any(s.attn is not None for s in model.down) and model.middle[0].attn is not None
    with torch.no_grad():
        out = model(torch.randn(2, 6, 37, 53), torch.rand(2))
    assert out.shape == (2, 6, 37, 53) and torch.isfinite(out).all()


@pytest.mark.parametrize("modulated", [False, True])
def test_modulated_group_norm_is_the_formula_and_its_affine_form(modulated):
    """SiLU(GN(x) * (1 + s) + b) written out by hand, and the per-channel affine form the fused
    kernels use: A * (x - group mean) + B from group_norm_statistics and group_norm_coefficients."""
    from resflow_fast.reference.unet import group_norm_coefficients, group_norm_statistics, modulated_group_norm

    torch.manual_seed(0)
    n, c, groups = 2, 12, 3
    x = torch.randn(n, c, 5, 7) * 2.0 + 0.5
    weight, bias = torch.randn(c), torch.randn(c)
    scale, shift = (0.3 * torch.randn(n, c), torch.randn(n, c)) if modulated else (None, None)
    got = modulated_group_norm(x, groups, weight, bias, 1e-5, scale, shift, silu=True)
    grouped = x.reshape(n, groups, -1)
    mean, var = grouped.mean(dim=2, keepdim=True), grouped.var(dim=2, unbiased=False, keepdim=True)
    normed = ((grouped - mean) / torch.sqrt(var + 1e-5)).reshape_as(x) * weight[:, None, None] + bias[:, None, None]
    if modulated:
        normed = normed * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    want = normed * torch.sigmoid(normed)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    group_mean, rstd = group_norm_statistics(x, groups, 1e-5)
    a, b = group_norm_coefficients(rstd, weight, bias, scale, shift)
    center = group_mean.repeat_interleave(c // groups, dim=1)[:, :, None, None]
    affine = a[:, :, None, None] * (x - center) + b[:, :, None, None]
    torch.testing.assert_close(torch.nn.functional.silu(affine), got, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fp32_ends", [True, False])
def test_fp32_ends_keep_the_first_and_last_conv_in_fp32_under_autocast(random_unet, fp32_ends):
    """Autocast lowers the inner layers; with ``fp32_ends`` (the trainer's setting under autocast)
    input_conv and out_conv compute in fp32, without it (the default, inference) they are lowered
    too (unet.py, UNet.forward). Either result stays near the fp32 one."""
    model = random_unet()  # random output convs: zero-initialised ones give v = 0 in any precision
    model.fp32_ends = fp32_ends
    z = torch.randn(1, model.config.in_channels, 24, 24)
    computed = {}
    for name in ("input_conv", "out_conv"):
        getattr(model, name).register_forward_hook(
            lambda module, args, output, name=name: computed.update({name: output.dtype}))  # None: output unchanged
    with torch.no_grad():
        exact = model(z, 0.4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lowered = model(z, 0.4)
    ends = torch.float32 if fp32_ends else torch.bfloat16
    assert computed == {"input_conv": ends, "out_conv": ends}
    assert ((lowered.float() - exact).norm() / exact.norm()).item() < 2e-2  # bf16 keeps 8 significant bits
