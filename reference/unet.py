"""The DDPM-style U-Net with adaptive GroupNorm that ResFlow uses as its velocity field.

Follows the ResBlock of docs/design/math.md, "Network" (the ``use_scale_shift_norm`` block of
guided-diffusion):

    h = conv3x3(SiLU(GN(x)))
    (s, b) = Linear(SiLU(temb))
    h = SiLU(GN(h) * (1 + s) + b)
    h = conv3x3(dropout(h))
    out = skip(x) + h            (skip: 1x1 conv when channels change)

GroupNorm statistics are computed in fp32 whatever the activation dtype. The adaptive GroupNorm is
defined once, in :func:`modulated_group_norm` (with its statistics, :func:`group_norm_statistics`,
and its per-channel affine form, :func:`group_norm_coefficients`); the fused kernels' twins and the
fast U-Net call these. Self-attention blocks
(GN, 1x1 qkv, attention, 1x1 out, residual) sit only at the low resolutions named by
``attention_downsample``; down-sampling is a stride-2 conv, up-sampling nearest x2 then a conv,
and encoder activations are concatenated into the decoder.

The network works at any H x W: :meth:`UNet.forward` reflect-pads to the network's multiple
(:attr:`UNet.multiple`) and crops back.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a ResFlow U-Net. ``attention_downsample`` lists the downsampling factors
    (1 = full resolution, 2 = half, ...) at which self-attention is used; the middle block
    always has one."""

    in_channels: int = 6
    out_channels: int = 6
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_downsample: tuple[int, ...] = (8,)
    middle_attention: bool = True
    head_channels: int = 64
    num_groups: int = 32
    dropout: float = 0.0
    time_scale: float = 1000.0  # sinusoidal features of t * 1000, as in DDPM

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_downsample", tuple(int(a) for a in self.attention_downsample))
        for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks", "head_channels", "num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"UNetConfig.channel_mult must be non-empty positive integers, got {self.channel_mult!r}")
        for m in self.channel_mult:
            ch = self.base_channels * m
            if ch % self.num_groups:
                raise ValueError(
                    f"UNetConfig: {ch} channels (base {self.base_channels} x mult {m}) are not divisible "
                    f"into num_groups={self.num_groups} GroupNorm groups")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this (one halving per level but the last)."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_downsample"] = list(self.attention_downsample)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"UNetConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


#: Presets. ``test`` (no attention) trains a step in well under a second on a 2-core CPU; ``default`` is the
#: compact model the package ships; ``bench19m`` is the 19.1M benchmark model of docs/design/performance.md;
#: ``paper`` is the DDPM-256-sized model of the paper [choice: the paper only names "DDPM U-Net"].
PRESETS: dict[str, dict] = {
    "test": dict(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_downsample=(),
                 middle_attention=False, head_channels=32),
    "default": dict(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_downsample=(8,),
                    head_channels=32),
    "bench19m": dict(base_channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2, attention_downsample=(8,),
                     head_channels=64),
    "paper": dict(base_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                  attention_downsample=(16,), head_channels=64),
}


def preset_config(name: str, image_channels: int = 3, auxiliary: bool = True, **overrides) -> UNetConfig:
    """The :class:`UNetConfig` of a named preset for images of ``image_channels`` channels.

    With ``auxiliary`` the network sees and predicts z = [x; y] (2 x image_channels); without it
    (the x-only control) only x.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; choose one of {', '.join(PRESETS)}")
    state = image_channels * (2 if auxiliary else 1)
    kwargs = dict(PRESETS[name], in_channels=state, out_channels=state)
    kwargs.update(overrides)
    return UNetConfig(**kwargs)


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def modulated_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                         silu: bool = False) -> torch.Tensor:
    """The adaptive GroupNorm of the ResBlock (docs/design/math.md, "Network"):

        GN(x) * (1 + scale) + shift,   then SiLU if ``silu``

    with ``GN(x) = (x - mean_g) * rstd_g * weight + bias`` over groups g of C / num_groups channels
    and all pixels (biased variance, ``rstd = 1 / sqrt(var + eps)``). x is (N, C, H, W); weight,
    bias (C,) or None (1 and 0); scale, shift (N, C) or None (no modulation). The normalisation runs
    in fp32 and is cast back to x's dtype (bf16 statistics lose too much precision); the modulation
    and SiLU run in x's dtype, so fp32 inputs give an fp32 result throughout.
    """
    h = F.group_norm(x.float(), num_groups, weight, bias, eps).to(x.dtype)
    if scale is not None:
        h = h * (1 + scale[:, :, None, None])
    if shift is not None:
        h = h + shift[:, :, None, None]
    return F.silu(h) if silu else h


def group_norm_statistics(x: torch.Tensor, num_groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics :func:`modulated_group_norm` normalises with: ``(mean, rstd)``, each
    (N, num_groups) fp32, from the biased variance, ``rstd = 1 / sqrt(var + eps)``."""
    var, mean = torch.var_mean(x.float().reshape(x.shape[0], num_groups, -1), dim=2, unbiased=False)
    return mean, torch.rsqrt(var + eps)


def group_norm_coefficients(rstd: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                            scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                            channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`modulated_group_norm` before its SiLU as one affine per (n, c) around the group mean:

        GN(x) * (1 + scale) + shift = A * (x - mean_g(c)) + B,
        A = rstd_g(c) * weight * (1 + scale),    B = bias * (1 + scale) + shift

    with g(c) = c // (C / G). ``rstd`` is (N, G) (from :func:`group_norm_statistics`); ``channels``
    is C when neither weight nor scale tells it. Returns (A, B), fp32; B may be an expanded view.
    """
    N, G = rstd.shape
    C = weight.shape[0] if weight is not None else (scale.shape[1] if scale is not None else channels)
    if C is None or C % G:
        raise ValueError(f"group_norm_coefficients: cannot tell C from weight/scale/channels, or C={C} "
                         f"is not a multiple of G={G}")
    a = rstd.float().repeat_interleave(C // G, dim=1)
    if weight is not None:
        a = a * weight.float()
    b = (bias.float() if bias is not None else torch.zeros(C, device=rstd.device)).expand(N, C)
    if scale is not None:
        one_plus = 1.0 + scale.float()
        a = a * one_plus
        b = b * one_plus
    if shift is not None:
        b = b + shift.float()
    return a, b


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and cast back (:func:`modulated_group_norm` without modulation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return modulated_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def timestep_embedding(t: torch.Tensor, dim: int, time_scale: float = 1000.0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of ``t * time_scale`` (Vaswani et al. / DDPM): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * time_scale)[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    """Adaptive-GroupNorm residual block (docs/design/math.md, "Network")."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, num_groups: int, dropout: float):
        super().__init__()
        self.in_channels, self.out_channels = in_ch, out_ch
        self.norm1 = GroupNorm32(num_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_ch, 2 * out_ch)  # -> (scale, shift)
        self.norm2 = GroupNorm32(num_groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (DDPM)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def scale_shift(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, b) = Linear(SiLU(temb))``, each (B, out_ch)."""
        s, b = self.emb_proj(F.silu(emb)).chunk(2, dim=1)
        return s, b

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        s, b = self.scale_shift(emb)
        norm2 = self.norm2
        h = modulated_group_norm(h, norm2.num_groups, norm2.weight, norm2.bias, norm2.eps, s, b, silu=True)
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels: GN, 1x1 qkv, softmax(QK^T / sqrt(d)) V, 1x1 out, residual."""

    def __init__(self, channels: int, head_channels: int, num_groups: int):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"attention: {channels} channels not divisible by head_channels={head_channels}")
        self.num_heads = channels // head_channels
        self.norm = GroupNorm32(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # each (B, heads, HW, d)
        # scaled_dot_product_attention is exactly softmax(q k^T / sqrt(d)) v; it avoids holding
        # the (HW x HW) matrix, which matters at 2048^2 inputs.
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Stage(nn.Module):
    """One U-Net stage: a ResBlock, optionally followed by attention; or a resampler."""

    def __init__(self, res: ResBlock | None = None, attn: AttentionBlock | None = None,
                 resample: nn.Module | None = None):
        super().__init__()
        self.res, self.attn, self.resample = res, attn, resample

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.res is not None:
            x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.resample is not None:
            x = self.resample(x)
        return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the bottom and right of (B, C, H, W) to multiples of ``multiple``.

    Reflection needs the pad to be smaller than the side; for tiny images it is applied
    repeatedly (a mirrored tiling), and a side of 1 pixel is replicated.
    Returns the padded tensor and the original (H, W) for :func:`crop_to`.
    """
    H, W = x.shape[-2:]
    target_h, target_w = -(-H // multiple) * multiple, -(-W // multiple) * multiple
    while x.shape[-2] < target_h or x.shape[-1] < target_w:
        h, w = x.shape[-2:]
        ph, pw = min(target_h - h, h - 1), min(target_w - w, w - 1)
        if ph == 0 and pw == 0:  # a 1-pixel side cannot be reflected
            x = F.pad(x, (0, target_w - w, 0, target_h - h), mode="replicate")
            break
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x, (H, W)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]


class UNet(nn.Module):
    """The ResFlow velocity network ``v_theta(z_t, t)``: (B, in, H, W), (B,) -> (B, out, H, W).

    ``fp32_ends`` (off unless set; the trainer sets it when it trains under autocast) keeps the
    first and last convolution in fp32 under autocast: see :meth:`forward`."""

    fp32_ends: bool = False

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.base_channels
        emb_ch = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.input_conv = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_ch, cfg.num_groups, cfg.dropout)

        def attn(c: int, ds: int) -> AttentionBlock | None:
            return AttentionBlock(c, cfg.head_channels, cfg.num_groups) if ds in cfg.attention_downsample else None

        # Encoder: record the channel count of every activation that is saved for a skip.
        self.down = nn.ModuleList()
        skip_channels = [ch]
        cur, ds = ch, 1
        for level, mult in enumerate(cfg.channel_mult):
            out = ch * mult
            for _ in range(cfg.num_res_blocks):
                self.down.append(Stage(res(cur, out), attn(out, ds)))
                cur = out
                skip_channels.append(cur)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(Stage(resample=Downsample(cur)))
                skip_channels.append(cur)
                ds *= 2

        self.middle = nn.ModuleList([
            Stage(res(cur, cur), AttentionBlock(cur, cfg.head_channels, cfg.num_groups) if cfg.middle_attention else None),
            Stage(res(cur, cur)),
        ])

        # Decoder: num_res_blocks + 1 ResBlocks per level, each eating one saved skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            out = ch * mult
            for i in range(cfg.num_res_blocks + 1):
                stage = Stage(res(cur + skip_channels.pop(), out), attn(out, ds))
                cur = out
                if level and i == cfg.num_res_blocks:
                    stage.resample = Upsample(cur)
                    ds //= 2
                self.up.append(stage)

        self.out_norm = GroupNorm32(cfg.num_groups, cur)
        self.out_conv = nn.Conv2d(cur, cfg.out_channels, 3, padding=1)

    @property
    def multiple(self) -> int:
        return self.config.multiple

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """temb = MLP(sinusoidal(t * 1000)): (B,) -> (B, 4 * base)."""
        return self.time_mlp(timestep_embedding(t, self.config.base_channels, self.config.time_scale))

    def forward(self, z: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.config.in_channels:
            raise ValueError(f"UNet expects (B, {self.config.in_channels}, H, W) input, got {tuple(z.shape)}")
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(float(t), device=z.device)
        t = t.to(z.device, torch.float32).expand(z.shape[0]) if t.ndim == 0 else t.to(z.device, torch.float32)
        z, size = pad_to_multiple(z, self.multiple)
        emb = self.time_embedding(t)

        # With fp32_ends the image in and the velocity out stay fp32 under autocast. bf16 keeps 8
        # significant bits, half an 8-bit level near the top of the range: the faint noise and fine
        # detail the network has to tell apart, and the small residual the training loss measures,
        # would be rounded away. The two convolutions have 3-6 channels on one side, a small share
        # of the work. Off by default, so inference under autocast is the plain autocast model
        # (the benchmarks' baselines, which the fast path's bf16 network is measured against).
        with _autocast_off(z.device, self.fp32_ends):
            h = self.input_conv(z.to(self.input_conv.weight.dtype) if self.fp32_ends else z)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        for stage in self.middle:
            h = stage(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        with _autocast_off(z.device, self.fp32_ends):
            h = self.out_conv(F.silu(self.out_norm(h.to(self.out_conv.weight.dtype) if self.fp32_ends else h)))
        return crop_to(h, size)


def _autocast_off(device: torch.device, off: bool = True):
    """Autocast switched off on ``device`` inside the block when ``off``; a no-op where it is not on
    (and on device types autocast does not know, such as ``meta``)."""
    kind = device.type
    if off and kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def build_unet(preset: str = "default", image_channels: int = 3, auxiliary: bool = True, **overrides) -> UNet:
    """A U-Net from a named preset (see :data:`PRESETS`)."""
    return UNet(preset_config(preset, image_channels, auxiliary, **overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
