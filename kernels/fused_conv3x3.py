"""``fused_conv3x3``: a ResBlock's 3x3 convolution with its element-wise neighbours fused in.

The conv reads ``SiLU(A * x + B)`` instead of x (the GroupNorm + modulation + SiLU before it,
folded into one affine per (n, c)), and its epilogue adds the bias, a residual or a 1x1 skip conv
and can produce the next GroupNorm's statistics, so neither the normalised input nor a separate
statistics pass touches memory (docs/design/architecture.md, "The fusion plan", item 5;
docs/design/math.md, "Network"):

    a[n, c, h, w] = SiLU(A[n, c] * x[n, c, h, w] + B[n, c])    (optional; 0 outside the image)   (1)
    y[n, o, i, j] = sum_{c, kh, kw} W[o, c, kh, kw] a[n, c, s*i - 1 + kh, s*j - 1 + kw] + bias[o]  (2)
                    + residual[n, o, i, j]                                          (optional)
                    + sum_c' W_skip[o, c'] x_skip[n, c', i, j] + bias_skip[o]     (optional 1x1 skip)
    mean[n, g], rstd[n, g] = GroupNorm statistics of y over group g             (optional)   (3)

For ``SiLU(GN(x) * (1 + scale) + shift)`` with group statistics (m, rstd),
``A = rstd * gamma * (1 + scale)`` and ``B = (beta * (1 + scale) + shift) - A * m``
(``resflow_fast.reference.unet.group_norm_coefficients``).

The GEMM and its prologue are :mod:`kernels._conv3x3_common`'s; the 1x1 skip conv adds K steps
over the skip input at the output pixel itself. For (3) each program writes per-(sample, pixel
tile, channel) fp32 partials (tile mean and M2) of the values *as stored*, so they are exactly
the statistics of the tensor the next GroupNorm reads, and :mod:`kernels._group_stats` merges them
(deterministic, no atomics). Activations are dense NHWC (others are copied to it, one extra pass);
the output is channels-last. Inference only: when autograd would record through any input,
:func:`fused_conv3x3` returns the differentiable twin :func:`fused_conv3x3_reference`.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..reference.unet import group_norm_statistics
from ._conv3x3_common import (  # noqa: F401 - the TMA switch and checks, configs: public here too
    ENV_TMA,
    TensorDescriptor,
    accumulate_dot,
    as_4d_weight,
    channels_last,
    conv3x3_accumulate,
    conv3x3_fp32,
    conv_tile,
    output_shape,
    pack_conv3x3_weight,
    pick_config,
    plan_launch,
    shares_memory,
    tma_eligible,
    tma_requested,
    unpack_conv3x3_weight,
    validate_conv,
)
from ._group_stats import combine_tile_partials
from ._runtime import (
    check_same_device,
    check_shape,
    check_tensor,
    needs_autograd,
    on_device_of,
    record_launch,
    tl,
    triton,
    use_triton,
)


@triton.jit(do_not_specialize=["H", "W", "H_out", "W_out", "num_m_tiles", "tiles_w"])
def _fused_conv3x3_kernel(
    x_ptr,  # (N, H, W, C_in) dense NHWC, fp32/bf16/fp16
    w_ptr,  # (9 * C_in, C_out) packed weight in x's dtype
    x_desc,  # USE_TMA: tensor descriptor of x as (N, H, W, C_in)
    w_desc,  # USE_TMA: tensor descriptor of the weight as (9, C_in, C_out)
    bias_ptr,  # (C_out,) fp32: bias + skip bias; read if HAS_BIAS
    pro_a_ptr,  # (N, C_in) fp32 contiguous: A of (1); read if HAS_PROLOGUE
    pro_b_ptr,  # (N, C_in) fp32 contiguous: B of (1); read if HAS_PROLOGUE
    res_ptr,  # (N, H_out, W_out, C_out) dense NHWC, any float dtype; read if HAS_RESIDUAL
    skip_x_ptr,  # (N, H_out, W_out, C_skip) dense NHWC, x's dtype; read if HAS_SKIP
    skip_w_ptr,  # (C_skip, C_out) x's dtype; read if HAS_SKIP
    out_ptr,  # (N, H_out, W_out, C_out) dense NHWC, x's dtype; may be res_ptr (in place)
    part_mean_ptr,  # (N, num_m_tiles, C_out) fp32 out: per-tile channel means; if HAS_STATS
    part_m2_ptr,  # (N, num_m_tiles, C_out) fp32 out: per-tile sums of squared deviations
    C_in, C_out, C_skip, H, W, H_out, W_out, num_m_tiles, num_n_tiles, tiles_w,
    STRIDE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_PROLOGUE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    HAS_STATS: tl.constexpr,
    IEEE_FP32: tl.constexpr,  # fp32 operands: full-precision products, not TF32
    UPCAST_BF16: tl.constexpr,  # bf16 under the interpreter: see accumulate_dot
    BLOCK_M: tl.constexpr,  # output pixels per tile
    BLOCK_N: tl.constexpr,  # output channels per tile
    BLOCK_K: tl.constexpr,  # input channels per K step
    USE_TMA: tl.constexpr,  # stride 1: input (without a prologue) and weight tiles by TMA
    HALO: tl.constexpr,  # stride 1 with a prologue: activate the tile's input halo once per K block
    TILED_2D: tl.constexpr,  # pixel tiles are TILE_H x TILE_W boxes (USE_TMA or HALO)
    TILE_H: tl.constexpr,  # 2-D tiles: TILE_H rows x TILE_W columns, TILE_H * TILE_W = BLOCK_M
    TILE_W: tl.constexpr,
    HALO_M: tl.constexpr,  # HALO: (TILE_H + 2) * (TILE_W + 2) rounded up to a power of two
):
    pid = tl.program_id(0)
    n32, m_tile, n_tile, oh_first, ow_first, oh, ow, p, p_mask, co = conv_tile(
        pid, num_m_tiles, num_n_tiles, tiles_w, H_out, W_out, BLOCK_M, BLOCK_N, TILED_2D, TILE_H, TILE_W)
    co_mask = co < C_out
    acc = conv3x3_accumulate(x_ptr, w_ptr, x_desc, w_desc, pro_a_ptr, pro_b_ptr,
                             n32, oh_first, ow_first, oh, ow, p_mask, n_tile, co, co_mask, C_in, C_out, H, W,
                             STRIDE, HAS_PROLOGUE, USE_TMA, HALO, IEEE_FP32, UPCAST_BF16,
                             BLOCK_M, BLOCK_N, BLOCK_K, TILE_H, TILE_W, HALO_M)
    n = n32.to(tl.int64)
    out_row = n * H_out * W_out + p  # pixel row of the NHWC output (and skip input), int64
    if HAS_SKIP:
        # the folded 1x1 skip conv: more K steps, over the skip input at the output pixel itself
        k_range = tl.arange(0, BLOCK_K)
        for k0 in range(0, C_skip, BLOCK_K):
            cs = k0 + k_range
            cs_mask = cs < C_skip
            s = tl.load(skip_x_ptr + out_row[:, None] * C_skip + cs[None, :],
                        mask=p_mask[:, None] & cs_mask[None, :], other=0.0)
            sw = tl.load(skip_w_ptr + cs[:, None] * C_out + co[None, :],
                         mask=cs_mask[:, None] & co_mask[None, :], other=0.0)
            acc = accumulate_dot(acc, s, sw, IEEE_FP32, UPCAST_BF16)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_mask, other=0.0)[None, :]
    out_offsets = out_row[:, None] * C_out + co[None, :]
    out_mask = p_mask[:, None] & co_mask[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(res_ptr + out_offsets, mask=out_mask, other=0.0).to(tl.float32)
    y = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + out_offsets, y, mask=out_mask)

    if HAS_STATS:
        # per-channel (mean, M2) of this tile from the stored values, two passes in registers
        count = tl.sum(p_mask.to(tl.float32), axis=0)  # the pixels of this tile inside the image
        y32 = tl.where(out_mask, y.to(tl.float32), 0.0)
        tile_mean = tl.sum(y32, axis=0) / count
        deviation = tl.where(out_mask, y32 - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(deviation * deviation, axis=0)
        part = (n * num_m_tiles + m_tile) * C_out + co
        tl.store(part_mean_ptr + part, tile_mean, mask=co_mask)
        tl.store(part_m2_ptr + part, tile_m2, mask=co_mask)


def _launch(x, packed_weight, bias, stride, pro_a, pro_b, residual, skip_x, skip_w, out,
            stats_groups, stats_eps, mean, rstd) -> None:
    """Run the conv (and the statistics merge) on validated dense-NHWC tensors."""
    N, C_in, H, W = x.shape
    C_out = packed_weight.shape[1]
    _, _, H_out, W_out = out.shape
    plan = plan_launch(x, packed_weight, stride, H_out, W_out, has_prologue=pro_a is not None)
    has_stats = stats_groups > 0
    if has_stats:
        part_mean = torch.empty((N, plan.num_m_tiles, C_out), dtype=torch.float32, device=x.device)
        part_m2 = torch.empty_like(part_mean)
    else:
        part_mean = part_m2 = out  # never written without HAS_STATS
    _fused_conv3x3_kernel[(plan.programs(N),)](
        x, packed_weight, plan.x_desc, plan.w_desc,
        bias if bias is not None else out,  # dummies when absent: the constexpr flags skip them
        pro_a if pro_a is not None else out, pro_b if pro_b is not None else out,
        residual if residual is not None else out,
        skip_x if skip_x is not None else out, skip_w if skip_w is not None else out,
        out, part_mean, part_m2,
        C_in, C_out, skip_x.shape[1] if skip_x is not None else 0, H, W, H_out, W_out,
        plan.num_m_tiles, plan.num_n_tiles, plan.tiles_w,
        STRIDE=stride, HAS_BIAS=bias is not None, HAS_PROLOGUE=pro_a is not None,
        HAS_RESIDUAL=residual is not None, HAS_SKIP=skip_x is not None, HAS_STATS=has_stats,
        **plan.kernel_flags(x),
    )
    record_launch("fused_conv3x3")
    if plan.use_tma:
        record_launch("fused_conv3x3_tma")
    if has_stats:
        combine_tile_partials(part_mean, part_m2, stats_groups, stats_eps, plan.tile_grid, mean, rstd)


# ------------------------------------------------------------------------------------------------
# The twin's math (fp32 torch ops) and the body shared by both registered ops
# ------------------------------------------------------------------------------------------------
def _reference_fp32(x, weight, bias, stride, pro_a, pro_b, residual, skip_x, skip_weight, skip_bias):
    """Equations (1)-(2) in fp32 through F.silu / F.conv2d; ``weight`` (C_out, C_in, 3, 3),
    ``skip_weight`` (C_out, C_skip, 1, 1)."""
    y = conv3x3_fp32(x, weight, bias, stride, pro_a, pro_b)
    if skip_x is not None:
        y = y + F.conv2d(skip_x.float(), skip_weight.float(), skip_bias.float() if skip_bias is not None else None)
    if residual is not None:
        y = y + residual.float()
    return y


def _group_stats_reference(y: torch.Tensor, num_groups: int, eps: float):
    """Equation (3): (mean, rstd), each (N, G) fp32, of y as stored, as F.group_norm computes them."""
    return group_norm_statistics(y, num_groups, eps)


def _run_into(x, packed_weight, bias, stride, pro_a, pro_b, residual, skip_x, skip_w, out,
              stats_groups, stats_eps, mean, rstd) -> None:
    """Body of both registered ops: the kernels when they can run here, else the twin's math.
    ``skip_w`` is packed (C_skip, C_out); ``bias`` already includes the skip bias."""
    if out.numel() == 0:
        return
    x, residual, skip_x = channels_last(x), channels_last(residual), channels_last(skip_x)
    if use_triton(x, packed_weight, bias, pro_a, pro_b, residual, skip_x, skip_w, out):
        with on_device_of(x):
            _launch(x, packed_weight, bias, stride, pro_a, pro_b, residual, skip_x, skip_w, out,
                    stats_groups, stats_eps, mean, rstd)
        return
    skip_weight = skip_w.t()[:, :, None, None] if skip_w is not None else None
    y = _reference_fp32(x, unpack_conv3x3_weight(packed_weight), bias, stride, pro_a, pro_b,
                        residual, skip_x, skip_weight, None)
    out.copy_(y)
    if stats_groups > 0:
        m, r = _group_stats_reference(out, stats_groups, stats_eps)
        mean.copy_(m)
        rstd.copy_(r)


def _new_outputs(x, packed_weight, stride, stats_groups):
    out = torch.empty(output_shape(x, packed_weight.shape[1], stride), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    stats = [torch.empty((x.shape[0], stats_groups), dtype=torch.float32, device=x.device)
             for _ in range(2 if stats_groups > 0 else 0)]
    return out, stats


# ------------------------------------------------------------------------------------------------
# torch.library registration: opaque to torch.compile, which traces through without a graph break
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("resflow_fast::fused_conv3x3", mutates_args=())
def _fused_conv3x3_op(
    x: torch.Tensor, packed_weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
    prologue_a: Optional[torch.Tensor], prologue_b: Optional[torch.Tensor], residual: Optional[torch.Tensor],
    skip_x: Optional[torch.Tensor], skip_weight: Optional[torch.Tensor], stats_groups: int, stats_eps: float,
) -> list[torch.Tensor]:
    """[out] or [out, mean, rstd] (stats_groups > 0); skip_weight packed (C_skip, C_out)."""
    out, stats = _new_outputs(x, packed_weight, stride, stats_groups)
    _run_into(x, packed_weight, bias, stride, prologue_a, prologue_b, residual, skip_x, skip_weight, out,
              stats_groups, stats_eps, *(stats or (None, None)))
    return [out, *stats]


@_fused_conv3x3_op.register_fake
def _(x, packed_weight, bias, stride, prologue_a, prologue_b, residual, skip_x, skip_weight, stats_groups,
      stats_eps):
    out, stats = _new_outputs(x, packed_weight, stride, stats_groups)
    return [out, *stats]


@torch.library.custom_op("resflow_fast::fused_conv3x3_out", mutates_args=("out", "mean", "rstd"))
def _fused_conv3x3_out_op(
    x: torch.Tensor, packed_weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
    prologue_a: Optional[torch.Tensor], prologue_b: Optional[torch.Tensor], residual: Optional[torch.Tensor],
    skip_x: Optional[torch.Tensor], skip_weight: Optional[torch.Tensor], stats_groups: int, stats_eps: float,
    out: torch.Tensor, mean: Optional[torch.Tensor], rstd: Optional[torch.Tensor],
) -> None:
    """Writes the conv into ``out`` (dense NHWC; may be ``residual``) and, when stats_groups > 0,
    the statistics into ``mean`` and ``rstd`` ((N, stats_groups) fp32)."""
    _run_into(x, packed_weight, bias, stride, prologue_a, prologue_b, residual, skip_x, skip_weight, out,
              stats_groups, stats_eps, mean, rstd)


@_fused_conv3x3_out_op.register_fake
def _(x, packed_weight, bias, stride, prologue_a, prologue_b, residual, skip_x, skip_weight, stats_groups,
      stats_eps, out, mean, rstd):
    return None


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
def _validate(x, weight, bias, stride, prologue, residual, skip_x, skip_weight, skip_bias,
              stats_groups, stats_eps, out):
    """Check every argument at the boundary. Returns (C_out, prologue A, prologue B)."""
    C_out, pro_a, pro_b = validate_conv(x, weight, bias, stride, prologue)
    N = x.shape[0]
    out_shape = output_shape(x, C_out, stride)
    if residual is not None:
        check_tensor("residual", residual, ndim=4)
        check_shape("residual", residual, out_shape)

    if skip_x is None and (skip_weight is not None or skip_bias is not None):
        raise ValueError("skip_weight/skip_bias given without skip_x")
    if skip_x is not None:
        if skip_weight is None:
            raise ValueError("skip_x needs skip_weight (C_out, C_skip, 1, 1)")
        check_tensor("skip_x", skip_x, ndim=4)
        C_skip = skip_x.shape[1]
        if C_skip < 1:
            raise ValueError(f"skip_x must have C >= 1, got shape {tuple(skip_x.shape)}")
        check_shape("skip_x", skip_x, (N, C_skip) + out_shape[2:])
        if skip_x.dtype != x.dtype:
            raise TypeError(f"skip_x must have x's dtype {x.dtype}, got {skip_x.dtype}")
        check_tensor("skip_weight", skip_weight)
        if tuple(skip_weight.shape) not in ((C_out, C_skip, 1, 1), (C_out, C_skip)):
            raise ValueError(f"skip_weight must have shape ({C_out}, {C_skip}, 1, 1) or ({C_out}, {C_skip}), "
                             f"got {tuple(skip_weight.shape)}")
        if skip_bias is not None:
            check_tensor("skip_bias", skip_bias)
            check_shape("skip_bias", skip_bias, (C_out,))

    if stats_groups is not None:
        if isinstance(stats_groups, bool) or not isinstance(stats_groups, int) or stats_groups < 1:
            raise ValueError(f"stats_groups must be a positive int or None, got {stats_groups!r}")
        if C_out % stats_groups != 0:
            raise ValueError(f"C_out={C_out} is not divisible by stats_groups={stats_groups}")
    if isinstance(stats_eps, bool) or not isinstance(stats_eps, (int, float)) or not (
            math.isfinite(stats_eps) and stats_eps > 0):
        raise ValueError(f"stats_eps must be a finite number > 0, got {stats_eps!r}")

    if out is not None:
        check_tensor("out", out, ndim=4)
        check_shape("out", out, out_shape)
        if out.dtype != x.dtype:
            raise TypeError(f"out must have x's dtype {x.dtype}, got {out.dtype}")
        if not out.is_contiguous(memory_format=torch.channels_last):
            raise ValueError(f"out must be channels_last (dense NHWC), got strides {out.stride()} "
                             f"for shape {tuple(out.shape)}")
        for name, t in (("x", x), ("weight", weight), ("skip_x", skip_x)):
            if shares_memory(out, t):  # other programs still read the input tile out would overwrite
                raise ValueError(f"out must not share memory with {name}")
    check_same_device(x=x, weight=weight, bias=bias, prologue_A=pro_a, prologue_B=pro_b, residual=residual,
                      skip_x=skip_x, skip_weight=skip_weight, skip_bias=skip_bias, out=out)
    return C_out, pro_a, pro_b


def fused_conv3x3_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, stride: int = 1,
    prologue: Optional[tuple] = None, residual: Optional[torch.Tensor] = None,
    skip_x: Optional[torch.Tensor] = None, skip_weight: Optional[torch.Tensor] = None,
    skip_bias: Optional[torch.Tensor] = None, stats_groups: Optional[int] = None, stats_eps: float = 1e-5,
    out: Optional[torch.Tensor] = None,
):
    """Pure-torch twin of :func:`fused_conv3x3`: equations (1)-(3) in fp32 with F.silu, F.conv2d
    and torch.var_mean, cast to x's dtype once, channels-last. Differentiable (except the
    statistics, which are data); the CPU path and the test oracle. Same arguments and returns."""
    _, pro_a, pro_b = _validate(x, weight, bias, stride, prologue, residual, skip_x, skip_weight, skip_bias,
                                stats_groups, stats_eps, out)
    if skip_weight is not None and skip_weight.ndim == 2:
        skip_weight = skip_weight[:, :, None, None]
    y = _reference_fp32(x, as_4d_weight(weight), bias, stride, pro_a, pro_b, residual, skip_x, skip_weight,
                        skip_bias)
    y = y.to(x.dtype).contiguous(memory_format=torch.channels_last)
    if out is not None:
        y = out.copy_(y)
    if stats_groups is None:
        return y
    mean, rstd = _group_stats_reference(y.detach(), stats_groups, stats_eps)
    return y, (mean, rstd)


def fused_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, stride: int = 1,
    prologue: Optional[tuple] = None, residual: Optional[torch.Tensor] = None,
    skip_x: Optional[torch.Tensor] = None, skip_weight: Optional[torch.Tensor] = None,
    skip_bias: Optional[torch.Tensor] = None, stats_groups: Optional[int] = None, stats_eps: float = 1e-5,
    out: Optional[torch.Tensor] = None,
):
    """3x3 convolution, padding 1, stride 1 or 2, with the fusions of equations (1)-(3) above.

    Args:
        x: (N, C_in, H, W) fp32, bf16 or fp16. Channels-last (dense NHWC) is read in place;
            any other layout is first copied to channels-last.
        weight: (C_out, C_in, 3, 3) in PyTorch layout (repacked per call, in x's dtype), or the
            (9 * C_in, C_out) result of ``pack_conv3x3_weight(weight, x.dtype)`` (no repack).
        bias: (C_out,) or None, any float dtype.
        stride: 1 (same size) or 2 (downsampling: H_out = ceil(H / 2)).
        prologue: None, or (A, B), each (N, C_in) fp32: the conv reads ``SiLU(A * x + B)``
            instead of x (1), with zero padding applied after the activation.
        residual: (N, C_out, H_out, W_out) tensor of any float dtype added to the result.
        skip_x, skip_weight, skip_bias: a 1x1 skip conv ``skip_weight @ skip_x + skip_bias`` added
            to the result, computed as extra K steps of the same GEMM. skip_x is
            (N, C_skip, H_out, W_out) in x's dtype, skip_weight (C_out, C_skip, 1, 1) or
            (C_out, C_skip), skip_bias (C_out,) or None. May be combined with ``residual``.
        stats_groups: None, or G dividing C_out: also return the GroupNorm statistics (3) of the
            output with G groups, as the next GroupNorm needs them.
        stats_eps: eps of that GroupNorm (in rstd); any finite value > 0.
        out: optional (N, C_out, H_out, W_out) tensor of x's dtype, channels-last, to write into;
            it may be ``residual`` itself (an in-place residual add) but must not overlap x or skip_x.

    Returns:
        ``out`` (a new channels-last tensor of x's dtype if not given) when ``stats_groups`` is
        None, else ``(out, (mean, rstd))`` with mean and rstd (N, G) fp32: the biased group mean of
        the output as stored and ``1 / sqrt(var + stats_eps)``, as F.group_norm uses them.
        Accumulation is fp32; the output is cast once.

    When autograd would record through any input, this returns the twin
    :func:`fused_conv3x3_reference` (differentiable) instead of running the kernels.
    """
    C_out, pro_a, pro_b = _validate(x, weight, bias, stride, prologue, residual, skip_x, skip_weight, skip_bias,
                                    stats_groups, stats_eps, out)
    if needs_autograd(x, weight, bias, pro_a, pro_b, residual, skip_x, skip_weight, skip_bias):
        if out is not None:
            raise RuntimeError("fused_conv3x3(): out= does not support autograd; an input requires grad")
        return fused_conv3x3_reference(x, weight, bias, stride=stride, prologue=prologue, residual=residual,
                                       skip_x=skip_x, skip_weight=skip_weight, skip_bias=skip_bias,
                                       stats_groups=stats_groups, stats_eps=stats_eps)
    x, residual, skip_x = channels_last(x), channels_last(residual), channels_last(skip_x)
    packed = weight if weight.ndim == 2 else pack_conv3x3_weight(weight, x.dtype)
    packed_skip = None
    if skip_x is not None:  # (C_out, C_skip[, 1, 1]) -> (C_skip, C_out), rows contiguous along C_out;
        # no copy when skip_weight is already the transposed view of such a tensor in x's dtype
        packed_skip = skip_weight.reshape(C_out, -1).t().to(x.dtype).contiguous()
    # the skip bias joins the conv bias: one fp32 vector for the epilogue (the caller's own tensor
    # when it already is one)
    biases = [b.float().contiguous() for b in (bias, skip_bias) if b is not None]
    total_bias = biases[0] + biases[1] if len(biases) == 2 else (biases[0] if biases else None)
    if pro_a is not None:
        pro_a, pro_b = pro_a.contiguous(), pro_b.contiguous()
    groups = 0 if stats_groups is None else stats_groups
    args = (x, packed, total_bias, stride, pro_a, pro_b, residual, skip_x, packed_skip, groups, float(stats_eps))
    if out is None:
        out, *stats = torch.ops.resflow_fast.fused_conv3x3(*args)
    else:
        _, stats = _new_outputs(x, packed, stride, groups)
        torch.ops.resflow_fast.fused_conv3x3_out(*args, out, *(stats or (None, None)))
    return out if stats_groups is None else (out, (stats[0], stats[1]))
