"""The fast U-Net forward: a reference :class:`UNet`'s own parameters run through the fused kernels.

Nothing is copied out of the reference module: every call reads its current parameters, so a
model being trained can be sampled mid-training with the weights it has now. What changes is how
the forward runs (architecture.md, "the fast U-Net"):

* activations in ``dtype`` (bf16 by default) and channels-last, where cuDNN's convs are fastest;
* every GroupNorm (+ time modulation + SiLU) is one call of the Triton
  :func:`group_norm_modulate_silu` instead of five eager passes;
* attention goes through ``scaled_dot_product_attention`` on (B, heads, HW, d) views of the
  channels-last activation (flash attention on GPUs);
* all time-dependent work (the time embedding, every ResBlock's (scale, shift)) is computed for
  all sampler steps at once by :meth:`FastUNet.prepare`, outside the per-step forward.

The math is the reference's (resflow-math.md, "Network"); this file only reorders memory traffic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kernels import group_norm_modulate_silu
from .reference.unet import AttentionBlock, Downsample, GroupNorm32, ResBlock, Stage, UNet, Upsample


@dataclass
class StepConditioning:
    """Per-step, per-ResBlock (scale, shift) in fp32: ``modulation[id(block)] = (s, b)``, each (B, C)."""

    modulation: dict[int, tuple[torch.Tensor, torch.Tensor]]


class FastUNet:
    """Runs ``unet`` (a reference :class:`UNet`) with fused kernels in ``dtype`` and channels-last.

    ``prepare(times, batch)`` precomputes the conditioning of every step; ``forward(z, cond)``
    evaluates the network for one step. ``z`` must already be padded to ``unet.multiple``.
    """

    def __init__(self, unet: UNet, dtype: torch.dtype = torch.bfloat16):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"FastUNet dtype must be float32, bfloat16 or float16, got {dtype}")
        self.unet = unet
        self.dtype = dtype
        self.config = unet.config
        self._weights: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._res_blocks = [m for m in unet.modules() if isinstance(m, ResBlock)]

    @property
    def multiple(self) -> int:
        return self.unet.multiple

    # -- once per sampler call -------------------------------------------------------------------
    @torch.no_grad()
    def refresh_weights(self) -> None:
        """Cast every conv/linear weight once per sampler call (not per step) to ``dtype``.

        Conv weights go channels-last so cuDNN picks its NHWC kernels without a transpose.
        """
        self._weights.clear()
        for m in self.unet.modules():
            if isinstance(m, torch.nn.Conv2d):
                w = m.weight.detach().to(self.dtype).contiguous(memory_format=torch.channels_last)
                b = m.bias.detach().to(self.dtype) if m.bias is not None else None
                self._weights[id(m)] = (w, b)

    @torch.no_grad()
    def prepare(self, times: torch.Tensor, batch: int) -> list[StepConditioning]:
        """The conditioning of every step: temb for all steps in one batch, then each ResBlock's
        ``(s, b) = Linear(SiLU(temb))`` for all steps in one matmul per block.

        ``times`` is an (S,) fp32 tensor already on the device (so this runs inside a CUDA-graph
        capture, where host-to-device copies are not allowed)."""
        self.refresh_weights()
        t = times.float().repeat_interleave(batch)  # (S*B,)
        emb = self.unet.time_embedding(t).float()  # (S*B, E), fp32: it is tiny
        steps = times.shape[0]
        per_block = {}
        for block in self._res_blocks:
            s, b = block.scale_shift(emb)  # (S*B, C) each
            per_block[id(block)] = (s.float().view(steps, batch, -1), b.float().view(steps, batch, -1))
        return [StepConditioning({k: (s[i], b[i]) for k, (s, b) in per_block.items()}) for i in range(steps)]

    # -- building blocks -------------------------------------------------------------------------
    def _conv(self, conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        w, b = self._weights[id(conv)]
        return F.conv2d(x, w, b, stride=conv.stride, padding=conv.padding)

    def _norm(self, norm: GroupNorm32, x: torch.Tensor, scale=None, shift=None, silu: bool = True) -> torch.Tensor:
        return group_norm_modulate_silu(x, norm.num_groups, norm.weight, norm.bias, scale, shift,
                                        eps=norm.eps, apply_silu=silu)

    def _res_block(self, block: ResBlock, x: torch.Tensor, cond: StepConditioning) -> torch.Tensor:
        s, b = cond.modulation[id(block)]
        h = self._conv(block.conv1, self._norm(block.norm1, x))
        h = self._conv(block.conv2, self._norm(block.norm2, h, s, b))  # dropout is the identity at inference
        skip = x if isinstance(block.skip, torch.nn.Identity) else self._conv(block.skip, x)
        return skip.add_(h) if skip is not x else h.add_(skip)

    def _attention(self, attn: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        heads = attn.num_heads
        qkv = self._conv(attn.qkv, self._norm(attn.norm, x, silu=False))  # (B, 3C, H, W) channels-last
        # channels-last memory is (B, HW, 3C); the reference splits channels as (3, heads, d)
        qkv = qkv.permute(0, 2, 3, 1).reshape(B, H * W, 3, heads, C // heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, heads, HW, d) views
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        h = h.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)
        return x + self._conv(attn.proj, h)

    def _stage(self, stage: Stage, x: torch.Tensor, cond: StepConditioning) -> torch.Tensor:
        if stage.res is not None:
            x = self._res_block(stage.res, x, cond)
        if stage.attn is not None:
            x = self._attention(stage.attn, x)
        if isinstance(stage.resample, Downsample):  # stride-2 conv
            x = self._conv(stage.resample.conv, x)
        elif isinstance(stage.resample, Upsample):  # nearest x2, then a conv
            x = self._conv(stage.resample.conv, F.interpolate(x, scale_factor=2, mode="nearest"))
        return x

    # -- one step --------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, z: torch.Tensor, cond: StepConditioning) -> torch.Tensor:
        """v = U-Net(z, t) for the step ``cond`` was prepared for; (B, in, H, W) -> (B, out, H, W)
        in ``dtype``, channels-last. H and W must be multiples of :attr:`multiple`."""
        u = self.unet
        if z.shape[-2] % self.multiple or z.shape[-1] % self.multiple:
            raise ValueError(f"FastUNet: input {tuple(z.shape)} is not padded to a multiple of {self.multiple}")
        z = z.to(self.dtype).contiguous(memory_format=torch.channels_last)
        h = self._conv(u.input_conv, z)
        skips = [h]
        for stage in u.down:
            h = self._stage(stage, h, cond)
            skips.append(h)
        for stage in u.middle:
            h = self._stage(stage, h, cond)
        for stage in u.up:
            h = self._stage(stage, torch.cat([h, skips.pop()], dim=1), cond)
        return self._conv(u.out_conv, self._norm(u.out_norm, h))

    __call__ = forward
