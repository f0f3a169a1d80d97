"""The fast U-Net forward: a reference :class:`UNet`'s own parameters run through the fused kernels,
in bf16 and channels-last (docs/design/architecture.md, "The fast U-Net").

The math is the reference's (docs/design/math.md, "Network"); this module only reorders memory
traffic: fused norms, attention through ``scaled_dot_product_attention``, the time conditioning of
all steps at once and, per conv where the dispatch says so, convs with their norm and epilogue
fused in (see :class:`FastUNet`).
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .conv_dispatch import ConvDispatch, ConvKey, is_capturing
from .kernels import (
    euler_step,
    fused_conv3x3,
    fused_conv3x3_euler,
    group_norm_modulate_silu,
    group_stats,
    pack_conv3x3_weight,
)
from .reference.unet import (
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    Stage,
    UNet,
    Upsample,
    group_norm_coefficients,
)


_LOG = logging.getLogger("resflow_fast")


def fold_group_norm(mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None,
                    bias: torch.Tensor | None, scale: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a (modulated) GroupNorm into the per-(n, c) affine of :func:`fused_conv3x3`'s prologue.

    With group statistics ``mean``, ``rstd`` (N, G) of x, GroupNorm affine ``weight`` = gamma,
    ``bias`` = beta (C,) and modulation ``scale``, ``shift`` (N, C), equation (1) of
    kernels/fused_conv3x3.py (the ResBlock norm of docs/design/math.md, "Network"; the affine form
    is the reference's ``group_norm_coefficients``):

        SiLU(GN(x) * (1 + scale) + shift) = SiLU(A * x + B),
        A[n, c] = rstd[n, g(c)] * gamma[c] * (1 + scale[n, c])
        B[n, c] = beta[c] * (1 + scale[n, c]) + shift[n, c] - A[n, c] * mean[n, g(c)]

    with g(c) = c // (C / G). ``scale``/``shift`` None: no modulation (conv1's norm);
    ``weight``/``bias`` None: 1 and 0. Returns (A, B), contiguous fp32 (N, C).

    Folding the mean into B cancels two terms of size ``|A * mean|`` (fp32 error about
    2^-24 |mean| / std, see kernels/group_norm_modulate_silu.py): harmless for U-Net activations,
    whose group means are within a few std of 0, but why the standalone norm centres instead.
    """
    a, b = group_norm_coefficients(rstd, weight, bias, scale, shift)
    m = mean.float().repeat_interleave(a.shape[1] // mean.shape[1], dim=1)
    return a.contiguous(), (b - a * m).contiguous()


@dataclass(eq=False)
class ConvWeights:
    """What the fast path runs one conv with, derived from the conv's parameters for one dtype:
    the weight (channels-last, for cuDNN) and bias cast once, and, made on first use, the fused
    convs' packed weight and fp32 bias. Valid while the parameters are the same tensors, unchanged:
    same objects, storage (``data_ptr``) and in-place version (``_version``, which every in-place
    update through autograd-visible ops such as an optimizer step or ``load_state_dict`` bumps)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    signature: tuple
    derived: dict = field(default_factory=dict)

    @staticmethod
    def signature_of(conv: torch.nn.Conv2d) -> tuple:
        return tuple((weakref.ref(p), p.data_ptr(), p._version) for p in (conv.weight, conv.bias) if p is not None)

    @classmethod
    def make(cls, conv: torch.nn.Conv2d, dtype: torch.dtype) -> ConvWeights:
        weight = conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last)
        bias = conv.bias.detach().to(dtype) if conv.bias is not None else None
        return cls(weight, bias, cls.signature_of(conv))

    def matches(self, conv: torch.nn.Conv2d) -> bool:
        params = [p for p in (conv.weight, conv.bias) if p is not None]
        return len(params) == len(self.signature) and all(
            ref() is p and ptr == p.data_ptr() and version == p._version
            for (ref, ptr, version), p in zip(self.signature, params))

    def get(self, name: str, make):
        """The derived tensor ``name``, made by ``make()`` the first time it is asked for."""
        value = self.derived.get(name)
        if value is None:
            value = self.derived[name] = make()
        return value


@dataclass
class StepConditioning:
    """Per-step, per-ResBlock (scale, shift) in fp32: ``modulation[id(block)] = (s, b)``, each (B, C)."""

    modulation: dict[int, tuple[torch.Tensor, torch.Tensor]]


class FastUNet:
    """Runs ``unet`` (a reference :class:`UNet`) with fused kernels in ``dtype`` and channels-last:

    * activations in ``dtype`` (bf16 by default) and channels-last, which cuDNN's NHWC convs read
      without a transpose;
    * every GroupNorm (+ time modulation + SiLU) is one call of the Triton
      :func:`group_norm_modulate_silu` instead of five eager passes;
    * attention goes through ``scaled_dot_product_attention`` on (B, heads, HW, d) views of the
      channels-last activation (flash attention on GPUs);
    * all time-dependent work (the time embedding, every ResBlock's (scale, shift)) is computed for
      all sampler steps at once by :meth:`FastUNet.prepare`, outside the per-step forward;
    * optionally (``fused_conv``, default off), a ResBlock's convs run as :func:`fused_conv3x3`
      with the GroupNorm (+ modulation) + SiLU in the conv's prologue, per conv where
      :class:`conv_dispatch.ConvDispatch` says so (docs/design/architecture.md, "The fusion plan",
      item 5):

          conv1:  (m1, r1) = group stats of x (fp32, one Triton pass: :func:`group_stats`)
                  (A1, B1) = fold(m1, r1, GN1 affine)                        [fold_group_norm]
                  h, (m2, r2) = fused_conv3x3(x, W1, b1, prologue=(A1, B1), stats of h for GN2)
          conv2:  (A2, B2) = fold(m2, r2, GN2 affine, 1 + s, shift b)        [fold_group_norm]
                  out = fused_conv3x3(h, W2, b2, prologue=(A2, B2), residual=x | 1x1 skip of x)

      so the normalised tensors never exist in memory. Where a ResBlock's output is the next norm's
      input as is (a ResBlock followed by another in the down path and the middle, and the last one
      into the output norm), conv2 also returns that norm's statistics, and the next conv skips
      :func:`group_stats`;
    * in :meth:`FastUNet.step` (the sampler's per-step call), the output conv with the output norm in
      its prologue and the Euler update of the fp32 state in its epilogue (:func:`fused_conv3x3_euler`),
      so the velocity never exists in memory either.

      Inference only: a block in training mode with dropout > 0 runs the unfused path (which treats
      dropout as the identity). With ``fused_conv="off"`` the forward is exactly the unfused one.

    The parameters are read from the reference module, never copied out for good: the casts and
    packings the kernels need are made once and kept per conv while its parameters are unchanged
    (:class:`ConvWeights`), and made again for a conv whose parameters an optimizer step or
    ``load_state_dict`` updated, so a model in training is sampled with the weights it has now.

    ``prepare(times, batch)`` precomputes the conditioning of every step; ``forward(z, cond)``
    evaluates the network for one step. ``z`` must already be padded to ``unet.multiple``.

    ``fused_conv``: "off", "on", "auto" (see :mod:`resflow_fast.conv_dispatch`), a
    :class:`ConvDispatch` to share (its "auto" decisions persist across FastUNets), or None for
    ``$RESFLOW_FUSED_CONV`` (default "off").
    """

    def __init__(self, unet: UNet, dtype: torch.dtype = torch.bfloat16,
                 fused_conv: str | ConvDispatch | None = None):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"FastUNet dtype must be float32, bfloat16 or float16, got {dtype}")
        self.unet = unet
        self.dtype = dtype
        self.config = unet.config
        self.dispatch = fused_conv if isinstance(fused_conv, ConvDispatch) else ConvDispatch(fused_conv)
        self._cached: dict[int, ConvWeights] = {}  # kept across calls while the parameters are unchanged
        self._weights: dict[int, ConvWeights] = {}  # what this call's forwards use
        self._dropout_logged = False

    @property
    def multiple(self) -> int:
        return self.unet.multiple

    # -- once per sampler call -------------------------------------------------------------------
    @torch.no_grad()
    def refresh_weights(self) -> None:
        """Bring every conv's :class:`ConvWeights` up to date, once per sampler call (not per step).

        A conv whose parameters are unchanged since the last call keeps its cast and packed
        weights; one whose parameters were updated (in place, or replaced) is cast again. Inside a
        CUDA-graph capture everything is cast afresh and not kept: the casts become part of the
        graph, so each replay reads the parameters as they are then.
        """
        capturing = is_capturing()
        weights = {}
        for m in self.unet.modules():
            if isinstance(m, torch.nn.Conv2d):
                entry = None if capturing else self._cached.get(id(m))
                if entry is None or not entry.matches(m):
                    entry = ConvWeights.make(m, self.dtype)
                weights[id(m)] = entry
        self._weights = weights
        if not capturing:  # convs no longer in the network drop out
            self._cached = dict(weights)

    def clear_weight_cache(self) -> None:
        """Forget the cast weights: the next call casts every conv again. Needed only after
        changing parameters in a way their version does not record (writing through ``.data``)."""
        self._cached.clear()

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
        for block in (m for m in self.unet.modules() if isinstance(m, ResBlock)):
            s, b = block.scale_shift(emb)  # (S*B, C) each
            per_block[id(block)] = (s.float().view(steps, batch, -1), b.float().view(steps, batch, -1))
        return [StepConditioning({k: (s[i], b[i]) for k, (s, b) in per_block.items()}) for i in range(steps)]

    # -- building blocks -------------------------------------------------------------------------
    def _conv(self, conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        w = self._weights[id(conv)]
        return F.conv2d(x, w.weight, w.bias, stride=conv.stride, padding=conv.padding)

    def _norm(self, norm: GroupNorm32, x: torch.Tensor, scale=None, shift=None, silu: bool = True) -> torch.Tensor:
        return group_norm_modulate_silu(x, norm.num_groups, norm.weight, norm.bias, scale, shift,
                                        eps=norm.eps, apply_silu=silu)

    def _res_block(self, block: ResBlock, x: torch.Tensor, cond: StepConditioning, x_stats=None,
                   next_norm: GroupNorm32 | None = None):
        """-> (out, stats): ``stats`` = (mean, rstd) of out for ``next_norm`` when a fused conv2's
        epilogue produced them, else None. ``x_stats``: norm1's statistics of x, if known."""
        if self.dispatch.enabled and self._may_fuse(block):
            return self._res_block_dispatched(block, x, cond, x_stats, next_norm)
        s, b = cond.modulation[id(block)]
        h = self._conv(block.conv1, self._norm(block.norm1, x))
        h = self._conv(block.conv2, self._norm(block.norm2, h, s, b))  # dropout is the identity at inference
        skip = x if isinstance(block.skip, torch.nn.Identity) else self._conv(block.skip, x)
        return (skip.add_(h) if skip is not x else h.add_(skip)), None

    # -- the fused ResBlock path (conv_dispatch) ----------------------------------------------------
    def _may_fuse(self, block: ResBlock) -> bool:
        """The fused path is inference-only: a block in training mode with dropout > 0 (where
        dropout would sit between norm2 and conv2) runs the unfused path."""
        if block.training and block.dropout.p > 0:
            if not self._dropout_logged:
                self._dropout_logged = True
                _LOG.info("FastUNet: fused convs skipped for ResBlocks in training mode with dropout > 0")
            return False
        return True

    def _packed_weight(self, conv: torch.nn.Conv2d) -> torch.Tensor:
        """The fused convs' (9 * C_in, C_out) weight in ``dtype``."""
        return self._weights[id(conv)].get("packed", lambda: pack_conv3x3_weight(conv.weight.detach(), self.dtype))

    def _fp32_bias(self, conv: torch.nn.Conv2d) -> torch.Tensor | None:
        """The conv's bias in fp32, as the fused epilogues add it (None without a bias)."""
        if conv.bias is None:
            return None
        return self._weights[id(conv)].get("bias_fp32", lambda: conv.bias.detach().float().contiguous())

    def _skip_operands(self, block: ResBlock) -> dict:
        """conv2's keyword arguments for the block's 1x1 skip conv: its weight packed to
        (C_skip, C_out) in ``dtype`` (passed as the (C_out, C_skip) view fused_conv3x3 takes
        without copying) and conv2's and the skip's biases summed in fp32 (passed as the bias)."""
        conv2, skip = self._weights[id(block.conv2)], self._weights[id(block.skip)]
        packed = skip.get("packed_1x1", lambda: block.skip.weight.detach().reshape(block.out_channels, -1)
                          .t().to(self.dtype).contiguous())
        # the sum depends on both convs: kept with the skip's entry, valid while conv2's entry is
        # the one it was summed with
        summed = skip.derived.get("bias_with_conv2")
        if summed is None or summed[0] is not conv2:
            summed = skip.derived["bias_with_conv2"] = (conv2, self._summed_bias(block.conv2, block.skip))
        return dict(skip_x_weight=packed.t(), bias=summed[1])

    @staticmethod
    def _summed_bias(*convs: torch.nn.Conv2d) -> torch.Tensor | None:
        biases = [c.bias.detach().float() for c in convs if c.bias is not None]
        if not biases:
            return None
        total = biases[0].clone()
        for b in biases[1:]:
            total += b
        return total

    def _conv1_fused(self, block: ResBlock, x: torch.Tensor, want_stats: bool, x_stats=None):
        """conv1(SiLU(GN1(x))) as one fused_conv3x3 -> (h, (mean, rstd) of h for GN2, or None).
        ``x_stats``: GN1's statistics of x from the previous conv's epilogue, else computed here."""
        norm1, norm2 = block.norm1, block.norm2
        if x_stats is None:
            x_stats = group_stats(x, norm1.num_groups, norm1.eps)
        a, b = fold_group_norm(*x_stats, norm1.weight, norm1.bias)
        bias = self._fp32_bias(block.conv1)
        if not want_stats:
            return fused_conv3x3(x, self._packed_weight(block.conv1), bias, prologue=(a, b)), None
        return fused_conv3x3(x, self._packed_weight(block.conv1), bias, prologue=(a, b),
                             stats_groups=norm2.num_groups, stats_eps=norm2.eps)

    def _conv2_fused(self, block: ResBlock, x: torch.Tensor, h: torch.Tensor, stats, s, b,
                     next_norm: GroupNorm32 | None = None):
        """skip(x) + conv2(SiLU(GN2(h) * (1 + s) + b)) as one fused_conv3x3 -> (out, stats of out
        for ``next_norm`` from the epilogue, or None without it); ``stats`` = GN2's statistics of h
        from conv1's epilogue, or None to compute them here."""
        norm2 = block.norm2
        if stats is None:
            stats = group_stats(h, norm2.num_groups, norm2.eps)
        pa, pb = fold_group_norm(*stats, norm2.weight, norm2.bias, s, b)
        packed = self._packed_weight(block.conv2)
        if isinstance(block.skip, torch.nn.Identity):
            bias, extra = self._fp32_bias(block.conv2), dict(residual=x)
        else:
            operands = self._skip_operands(block)
            bias, extra = operands["bias"], dict(skip_x=x, skip_weight=operands["skip_x_weight"])
        if next_norm is None:
            return fused_conv3x3(h, packed, bias, prologue=(pa, pb), **extra), None
        return fused_conv3x3(h, packed, bias, prologue=(pa, pb), stats_groups=next_norm.num_groups,
                             stats_eps=next_norm.eps, **extra)

    @staticmethod
    def _conv2_key(block: ResBlock, x: torch.Tensor, with_stats: bool) -> ConvKey:
        """conv2's key from the block input x: its input h has x's size and out_channels channels."""
        variant = ("modnorm+residual" if isinstance(block.skip, torch.nn.Identity)
                   else f"modnorm+skip{block.in_channels}")
        return ConvKey.for_shape(x.device, x.dtype, block.out_channels, x.shape[-2], x.shape[-1],
                                 block.out_channels, 1, variant + ("+stats" if with_stats else ""))

    def _res_block_dispatched(self, block: ResBlock, x: torch.Tensor, cond: StepConditioning, x_stats=None,
                              next_norm: GroupNorm32 | None = None):
        """The ResBlock with each conv fused or not, as :attr:`dispatch` decides per conv shape.
        Returns (out, stats of out for ``next_norm`` or None), as :meth:`_res_block`.

        Under "auto" an undecided conv is timed here, on these very tensors, against the unfused
        path it replaces: conv1 as GN1 + conv (fused: x's statistics unless ``x_stats`` came from
        the previous conv's epilogue, the fold and the fused conv with h's statistics), conv2 as
        modulated GN2 + conv + skip/residual add (fused: the fold and the fused conv, with the
        next norm's statistics of out when ``next_norm`` is given). A fused conv1 writes h's
        statistics whenever conv2 may fuse."""
        s, b = cond.modulation[id(block)]
        dispatch = self.dispatch
        key1 = ConvKey.for_input(x, block.out_channels, 1, "norm+stats" if x_stats is None else "stats+stats")
        key2 = self._conv2_key(block, x, next_norm is not None)
        fuse2_known = dispatch.lookup(key2)
        want_stats = fuse2_known is not False
        fuse1 = dispatch.use_fused(key1, fused=lambda: self._conv1_fused(block, x, want_stats, x_stats),
                                   baseline=lambda: self._conv(block.conv1, self._norm(block.norm1, x)))
        if fuse1:
            h, stats = self._conv1_fused(block, x, want_stats, x_stats)
        else:
            h, stats = self._conv(block.conv1, self._norm(block.norm1, x)), None

        def unfused2() -> torch.Tensor:
            out = self._conv(block.conv2, self._norm(block.norm2, h, s, b))
            skip = x if isinstance(block.skip, torch.nn.Identity) else self._conv(block.skip, x)
            return skip.add_(out) if skip is not x else out.add_(skip)

        fuse2 = fuse2_known if fuse2_known is not None else dispatch.use_fused(
            key2, fused=lambda: self._conv2_fused(block, x, h, stats, s, b, next_norm), baseline=unfused2)
        if fuse2:
            return self._conv2_fused(block, x, h, stats, s, b, next_norm)
        return unfused2(), None

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

    def _stage(self, stage: Stage, x: torch.Tensor, cond: StepConditioning, x_stats=None,
               next_norm: GroupNorm32 | None = None):
        """-> (out, stats of out for ``next_norm`` or None). Statistics pass from a fused conv2's
        epilogue only where the stage ends with its ResBlock (no attention or resampler after it)."""
        stats = None
        if stage.res is not None:
            ends_here = stage.attn is None and stage.resample is None
            x, stats = self._res_block(stage.res, x, cond, x_stats, next_norm if ends_here else None)
        if stage.attn is not None:
            x = self._attention(stage.attn, x)
        if isinstance(stage.resample, Downsample):  # stride-2 conv
            x = self._conv(stage.resample.conv, x)
        elif isinstance(stage.resample, Upsample):  # nearest x2, then a conv
            x = self._conv(stage.resample.conv, F.interpolate(x, scale_factor=2, mode="nearest"))
        return x, stats

    @staticmethod
    def _first_norm(stage: Stage) -> GroupNorm32 | None:
        """The norm that reads a stage's input directly (its ResBlock's norm1), if any."""
        return stage.res.norm1 if stage.res is not None else None

    def _features(self, z: torch.Tensor, cond: StepConditioning, out_norm_stats: bool = False):
        """Everything before the output norm -> (h, out_norm's statistics of h or None).

        Where a stage's output is the next stage's input as is (down path, middle, and, when
        ``out_norm_stats``, the last up stage into the output norm; not across a skip
        concatenation), a fused conv2 also returns the statistics that the next norm needs, so
        no separate pass computes them."""
        u = self.unet
        if z.shape[-2] % self.multiple or z.shape[-1] % self.multiple:
            raise ValueError(f"FastUNet: input {tuple(z.shape)} is not padded to a multiple of {self.multiple}")
        z = z.to(self.dtype).contiguous(memory_format=torch.channels_last)
        h = self._conv(u.input_conv, z)
        skips = [h]
        chain = list(u.down) + list(u.middle)
        stats = None
        for i, stage in enumerate(chain):
            next_norm = self._first_norm(chain[i + 1]) if i + 1 < len(chain) else None
            h, stats = self._stage(stage, h, cond, stats, next_norm)
            if i < len(u.down):
                skips.append(h)
        for i, stage in enumerate(u.up):
            next_norm = u.out_norm if (out_norm_stats and i == len(u.up) - 1) else None
            h, stats = self._stage(stage, torch.cat([h, skips.pop()], dim=1), cond, None, next_norm)
        return h, stats

    # -- one step --------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, z: torch.Tensor, cond: StepConditioning) -> torch.Tensor:
        """v = U-Net(z, t) for the step ``cond`` was prepared for; (B, in, H, W) -> (B, out, H, W)
        in ``dtype``, channels-last. H and W must be multiples of :attr:`multiple`."""
        h, _ = self._features(z, cond)
        return self._conv(self.unet.out_conv, self._norm(self.unet.out_norm, h))

    __call__ = forward

    @torch.no_grad()
    def step(self, z: torch.Tensor, cond: StepConditioning, x: torch.Tensor, y: torch.Tensor | None,
             dt: float, y_scale: float | None = None) -> None:
        """One Euler step of the sampler: v = U-Net(z, t), then ``x <- x - dt v_x``, ``y <- y - dt v_y``
        (or ``y * y_scale``) in place, and the new [x; y] written into ``z`` (the next network input:
        ``dtype``, channels-last, as the sampler keeps it). x, y: fp32 channels-last state.

        The output conv (its norm in the prologue) runs with the update in its epilogue,
        :func:`fused_conv3x3_euler`, where :attr:`dispatch` says so (variant "norm+euler"), else
        the conv and then :func:`euler_step`."""
        u = self.unet
        if not self.dispatch.enabled:
            h, _ = self._features(z, cond)
            v = self._conv(u.out_conv, self._norm(u.out_norm, h))
            euler_step(x, y, v, dt, inplace=True, next_input=z, y_scale=y_scale)
            return
        key = ConvKey.for_shape(z.device, self.dtype, u.out_conv.in_channels, z.shape[-2], z.shape[-1],
                                u.out_conv.out_channels, 1, "norm+euler")
        decision = self.dispatch.lookup(key)
        h, stats = self._features(z, cond, out_norm_stats=decision is not False)

        def fused(x=x, y=y, z=z):
            self._out_conv_euler(h, stats, x, y, dt, y_scale, z)

        def unfused(x=x, y=y, z=z):
            v = self._conv(u.out_conv, self._norm(u.out_norm, h))
            euler_step(x, y, v, dt, inplace=True, next_input=z, y_scale=y_scale)

        # "auto", undecided: time both on scratch copies (the real state moves once), never
        # inside a CUDA graph capture, where the copies would join the graph
        if decision is None and not is_capturing():
            scratch = dict(x=x.clone(), y=None if y is None else y.clone(), z=z.clone())
            decision = self.dispatch.use_fused(key, fused=lambda: fused(**scratch),
                                               baseline=lambda: unfused(**scratch))
        if decision:  # None (undecided inside a CUDA graph capture): unfused, like use_fused()
            fused()
        else:
            unfused()

    def _out_conv_euler(self, h, stats, x, y, dt, y_scale, z) -> None:
        norm = self.unet.out_norm
        if stats is None:
            stats = group_stats(h, norm.num_groups, norm.eps)
        a, b = fold_group_norm(*stats, norm.weight, norm.bias)
        conv = self.unet.out_conv
        fused_conv3x3_euler(h, self._packed_weight(conv), self._fp32_bias(conv), prologue=(a, b), x=x, y=y, dt=dt,
                            y_scale=y_scale, next_input=z)
