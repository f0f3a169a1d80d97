"""A 3x3 convolution as an implicit GEMM over channels-last activations, with the ResBlock's
element-wise work fused into its prologue and epilogue.

Implements (architecture.md, "the fusion plan", item 5; resflow-math.md, "Network"):

    a[n, c, h, w]  = SiLU(A[n, c] * x[n, c, h, w] + B[n, c])        (prologue, optional)   (1)
    a[n, c, h, w]  = 0   for (h, w) outside the image                (zero padding AFTER (1))
    y[n, o, i, j]  = sum_{c, kh, kw} W[o, c, kh, kw] a[n, c, s*i - 1 + kh, s*j - 1 + kw]
                     + bias[o]                                                              (2)
                     + residual[n, o, i, j]                          (optional)
                     + sum_c' W_skip[o, c'] x_skip[n, c', i, j] + bias_skip[o]   (optional 1x1 skip)
    mean[n, g], rstd[n, g] = GroupNorm statistics of y over group g  (optional)             (3)
    x <- x - dt y[:, :C],  y_aux <- y_aux - dt y[:, C:],  next <- [x; y_aux]  (output conv)   (4)

with stride s in {1, 2} and padding 1, so H_out = ceil(H / s). (1) is the adaptive GroupNorm of
the ResBlock folded into one affine per (n, c): for ``SiLU(GN(x) * (1 + scale) + shift)`` with
group statistics (m, rstd), ``A = rstd * gamma * (1 + scale)`` and
``B = (beta * (1 + scale) + shift) - A * m``. Padding is applied to ``a``, not to x: a padded tap
contributes 0, never ``silu(B)`` (architecture.md: "Padding is zero *after* the activation").

The GEMM (``_fused_conv3x3_kernel``): M = the output pixels of one sample, N = C_out,
K = 9 taps x C_in (+ C_skip for the skip conv, as extra K steps over the skip input at the output
pixel itself). Each program owns a [BLOCK_M pixels, BLOCK_N channels] output tile and walks K in
steps of BLOCK_K input channels of one tap: it gathers the [BLOCK_M, BLOCK_K] input tile of
that tap (masked where the tap falls in the padding), applies (1) in fp32, casts to x's dtype and
feeds ``tl.dot`` with an fp32 accumulator. The epilogue adds the bias, the residual, casts once and
stores; for (3) it also writes per-(sample, pixel tile, channel) fp32 partials (tile mean and sum
of squared deviations from it, taken from the values *as stored*, so they are exactly the statistics
of the tensor the next GroupNorm reads). ``_group_stats_combine_kernel`` (one program per
(sample, group)) merges the partials in a fixed order with Chan's formula: deterministic, no atomics,
and never ``E[y^2] - E[y]^2``.

(4) is :func:`fused_conv3x3_euler`: the U-Net's output conv computes the velocity v = y of (2)
and its epilogue takes the sampler's Euler step (reference/sampler.py, ``z <- z - dt * v``;
kernels/euler_step.py (2a)-(2c), including the exact-y option) on the fp32 state in place and
writes the next network input, so neither v nor a separate Euler pass ever touches memory.

The TMA variant (``USE_TMA``; ``RESFLOW_CONV_TMA=1``, stride 1, see :func:`tma_eligible`): a
program owns a 2-D box of TILE_H x TILE_W output pixels instead of a run of BLOCK_M consecutive
ones. For tap (kh, kw) its input is the same box shifted by (kh - 1, kw - 1), which one
tensor-descriptor (TMA) load fetches from the NHWC input, the rows and columns outside the image
(the padding) and the channels past C_in arriving as zeros; the weight tile is a second
descriptor load over the weight viewed as (tap, C_in, C_out). The prologue and the epilogue are
the pointer variant's, and the statistics combine takes either tile grid. Off by default: it has
run under the interpreter only, not yet on a Hopper GPU.

Layouts: activations are dense NHWC (``torch.channels_last``); anything else is copied to it by the
launcher (one extra pass, so fast callers keep their activations channels-last). The output is
always channels-last. Weights come in PyTorch layout (C_out, C_in, 3, 3) and are repacked to
(9 * C_in, C_out), row ``(kh * 3 + kw) * C_in + c``, in x's dtype, so a [BLOCK_K, BLOCK_N] weight
tile is contiguous along C_out; :func:`pack_conv3x3_weight` does it once for callers that run the
same weight many times (pass the packed 2-D tensor as ``weight``). The 1x1 skip weight is small and
is repacked per call; its bias is folded into ``bias`` on the host.

Numerics: every product is accumulated in fp32; with fp32 inputs ``tl.dot`` runs in full fp32
("ieee", not TF32). With bf16/fp16 inputs the activation (1) is rounded to x's dtype before the
dot (tensor cores take 16-bit operands), one more rounding than the fp32 twin has.

Sizes (H, W, H_out, W_out, tile counts) are runtime arguments excluded from Triton's integer
specialisation, so a new image size never recompiles; block sizes depend on the channel counts and
dtype only. Inference only: when autograd would record through any input, :func:`fused_conv3x3`
returns the differentiable twin :func:`fused_conv3x3_reference`.

Status: correct under the Triton interpreter (tests/kernels/test_fused_conv3x3.py), both variants
and (4). The fast U-Net calls it per conv where :mod:`resflow_fast.conv_dispatch` says so (default
off: its speed against cuDNN has not been measured on a GPU yet; ``benchmarks/conv_rows.py`` is the
per-layer table, with a column for the TMA variant).
"""
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ._runtime import (
    cdiv,
    check_same_device,
    check_shape,
    check_tensor,
    needs_autograd,
    next_power_of_2,
    on_device_of,
    record_launch,
    tl,
    triton,
    use_triton,
)
from .euler_step import euler_step_reference

try:  # host-side tensor descriptors (TMA on Hopper; the interpreter emulates them)
    from triton.tools.tensor_descriptor import TensorDescriptor
except Exception:  # noqa: BLE001 - an old Triton, or none: the pointer path only
    TensorDescriptor = None

# Pixel indices inside the kernel are int32 (a 32768^2 image); element offsets are int64.
MAX_PIXELS = 2**30
MAX_PROGRAMS = 2**31 - 1  # CUDA grid axis 0
#: ``RESFLOW_CONV_TMA=1`` runs stride-1 convs through the TMA variant wherever it can (see
#: :func:`tma_eligible`). Off by default until a Hopper run has measured it against the pointer path.
ENV_TMA = "RESFLOW_CONV_TMA"


# ------------------------------------------------------------------------------------------------
# Triton kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _accumulate_dot(acc, a, b, IEEE_FP32: tl.constexpr, UPCAST_BF16: tl.constexpr):
    """``acc + a @ b`` for [M, K] x [K, N] tiles of one dtype, into the fp32 accumulator."""
    if UPCAST_BF16:
        # Triton's interpreter (3.9) multiplies bf16 tiles as their raw uint16 bits. fp32
        # operands give the GPU's result: a bf16 x bf16 product is exact in fp32.
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif IEEE_FP32:
        # fp32 activations were asked for: TF32 (the GPU default) would keep only 10 mantissa bits
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)  # bf16 / fp16 tensor cores, fp32 accumulation
    return acc


@triton.jit(do_not_specialize=["H", "W", "H_out", "W_out", "num_m_tiles", "tiles_w", "dt", "y_scale"])
def _fused_conv3x3_kernel(
    x_ptr,  # (N, H, W, C_in) dense NHWC, fp32/bf16/fp16
    w_ptr,  # (9 * C_in, C_out) packed weight in x's dtype, row (kh * 3 + kw) * C_in + c
    x_desc,  # USE_TMA: tensor descriptor of x as (N, H, W, C_in), block [1, TILE_H, TILE_W, BLOCK_K]
    w_desc,  # USE_TMA: tensor descriptor of the weight as (9, C_in, C_out), block [1, BLOCK_K, BLOCK_N]
    bias_ptr,  # (C_out,) fp32: bias + skip bias; read if HAS_BIAS
    pro_a_ptr,  # (N, C_in) fp32 contiguous: A of (1); read if HAS_PROLOGUE
    pro_b_ptr,  # (N, C_in) fp32 contiguous: B of (1); read if HAS_PROLOGUE
    res_ptr,  # (N, H_out, W_out, C_out) dense NHWC, any float dtype; read if HAS_RESIDUAL
    skip_x_ptr,  # (N, H_out, W_out, C_skip) dense NHWC, x's dtype; read if HAS_SKIP
    skip_w_ptr,  # (C_skip, C_out) x's dtype; read if HAS_SKIP
    out_ptr,  # (N, H_out, W_out, C_out) dense NHWC, x's dtype; may be res_ptr (in place)
    part_mean_ptr,  # (N, num_m_tiles, C_out) fp32 out: per-tile channel means; if HAS_STATS
    part_m2_ptr,  # (N, num_m_tiles, C_out) fp32 out: per-tile sums of squared deviations
    state_x_ptr,  # (N, H_out, W_out, C_state) fp32 dense NHWC state x, updated in place; if HAS_EULER
    state_y_ptr,  # (N, H_out, W_out, C_state) fp32 dense NHWC state y, updated in place; if EULER_Y
    next_ptr,  # (N, H_out, W_out, C_out) dense NHWC, any float dtype: the next [x; y]; if WRITE_NEXT
    C_in, C_out, C_skip, H, W, H_out, W_out, num_m_tiles, num_n_tiles, tiles_w, C_state, dt, y_scale,
    STRIDE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_PROLOGUE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    HAS_STATS: tl.constexpr,
    HAS_EULER: tl.constexpr,  # (4): the output is the velocity; update the state instead of storing it
    EULER_Y: tl.constexpr,  # the state has y (channels C_state.. of the output are v_y)
    EXACT_Y: tl.constexpr,  # y <- y * y_scale instead of y - dt * v_y
    WRITE_NEXT: tl.constexpr,  # also write the new [x; y] to next_ptr
    IEEE_FP32: tl.constexpr,  # fp32 operands: full-precision products, not TF32
    UPCAST_BF16: tl.constexpr,  # bf16 under the interpreter: see _accumulate_dot
    BLOCK_M: tl.constexpr,  # output pixels per tile
    BLOCK_N: tl.constexpr,  # output channels per tile
    BLOCK_K: tl.constexpr,  # input channels per K step
    USE_TMA: tl.constexpr,  # stride 1: 2-D pixel tiles, input and weight tiles by TMA (tensor descriptors)
    TILE_H: tl.constexpr,  # USE_TMA: a pixel tile is TILE_H rows x TILE_W columns, TILE_H * TILE_W = BLOCK_M
    TILE_W: tl.constexpr,
):
    # 1-D grid (a 2048^2 image has more tiles than the 65535 allowed on grid axes 1 and 2); the
    # channel tiles of one pixel tile are neighbours, so they share its input rows in L2.
    pid = tl.program_id(0)
    n_tile = pid % num_n_tiles
    rest = pid // num_n_tiles
    m_tile = rest % num_m_tiles
    n32 = rest // num_m_tiles
    n = n32.to(tl.int64)  # int64: N * H * W * C can pass 2**31

    HW_out = H_out * W_out
    if USE_TMA:
        # a (TILE_H, TILE_W) box of output pixels: for each tap, its input is the same box shifted
        # by (kh - 1, kw - 1), one TMA load (out-of-image rows and columns arrive as zeros)
        tile_row = m_tile // tiles_w
        oh_first = tile_row * TILE_H
        ow_first = (m_tile - tile_row * tiles_w) * TILE_W
        r = tl.arange(0, BLOCK_M)
        oh = oh_first + r // TILE_W
        ow = ow_first + r % TILE_W
        p_mask = (oh < H_out) & (ow < W_out)
        p = oh * W_out + ow
    else:
        p = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixel within the sample
        p_mask = p < HW_out
        oh = p // W_out
        ow = p - oh * W_out
    ih0 = oh * STRIDE - 1  # input row of tap kh = 0 (padding 1)
    iw0 = ow * STRIDE - 1
    co = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    co_mask = co < C_out
    k_range = tl.arange(0, BLOCK_K)
    x_sample = x_ptr + n * H * W * C_in

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # One flat loop over (tap, channel block) rather than two nested ones: a single loop is what
    # the compiler software-pipelines (num_stages) on the GPU.
    num_k_blocks = tl.cdiv(C_in, BLOCK_K)
    for step in range(0, 9 * num_k_blocks):
        tap = step // num_k_blocks
        k_first = (step - tap * num_k_blocks) * BLOCK_K
        ci = k_first + k_range
        ci_mask = ci < C_in
        kh = tap // 3
        kw = tap - kh * 3
        ih = ih0 + kh
        iw = iw0 + kw
        inside = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_mask = inside[:, None] & ci_mask[None, :]
        if USE_TMA:
            a = x_desc.load([n32, oh_first + kh - 1, ow_first + kw - 1, k_first]).reshape(BLOCK_M, BLOCK_K)
        else:
            pixel = (ih * W + iw).to(tl.int64)  # negative in the padding: masked, never dereferenced
            a = tl.load(x_sample + pixel[:, None] * C_in + ci[None, :], mask=a_mask, other=0.0)
        if HAS_PROLOGUE:
            scale = tl.load(pro_a_ptr + n * C_in + ci, mask=ci_mask, other=0.0)
            offset = tl.load(pro_b_ptr + n * C_in + ci, mask=ci_mask, other=0.0)
            t = a.to(tl.float32) * scale[None, :] + offset[None, :]
            t = t * tl.sigmoid(t)
            # zero padding after the activation: a padded tap contributes 0, not silu(B)
            a = tl.where(a_mask, t, 0.0).to(x_ptr.dtype.element_ty)
        if USE_TMA:
            w = w_desc.load([tap, k_first, n_tile * BLOCK_N]).reshape(BLOCK_K, BLOCK_N)
        else:
            w = tl.load(w_ptr + (tap * C_in + ci)[:, None] * C_out + co[None, :],
                        mask=ci_mask[:, None] & co_mask[None, :], other=0.0)
        acc = _accumulate_dot(acc, a, w, IEEE_FP32, UPCAST_BF16)

    out_row = (n * HW_out + p).to(tl.int64)  # pixel row of the NHWC output (and skip input)
    if HAS_SKIP:
        # the folded 1x1 skip conv: more K steps, over the skip input at the output pixel itself
        for k0 in range(0, C_skip, BLOCK_K):
            cs = k0 + k_range
            cs_mask = cs < C_skip
            s = tl.load(skip_x_ptr + out_row[:, None] * C_skip + cs[None, :],
                        mask=p_mask[:, None] & cs_mask[None, :], other=0.0)
            sw = tl.load(skip_w_ptr + cs[:, None] * C_out + co[None, :],
                         mask=cs_mask[:, None] & co_mask[None, :], other=0.0)
            acc = _accumulate_dot(acc, s, sw, IEEE_FP32, UPCAST_BF16)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_mask, other=0.0)[None, :]
    out_offsets = out_row[:, None] * C_out + co[None, :]
    out_mask = p_mask[:, None] & co_mask[None, :]
    if HAS_EULER:
        # (4): acc is the velocity v = [v_x; v_y], in fp32 (never rounded to the activation dtype).
        # Output channel o < C_state moves x[o], the others y[o - C_state]; each state element is
        # read and written by the program that owns its velocity element, so in place is safe.
        is_x = co < C_state
        state_offsets = out_row[:, None] * C_state + co[None, :]
        x_mask = out_mask & is_x[None, :]
        x_new = tl.load(state_x_ptr + state_offsets, mask=x_mask, other=0.0) - dt * acc
        tl.store(state_x_ptr + state_offsets, x_new, mask=x_mask)
        z_new = x_new
        if EULER_Y:
            y_mask = out_mask & (co >= C_state)[None, :]
            y_offsets = state_offsets - C_state  # negative for x channels: masked, never dereferenced
            y_old = tl.load(state_y_ptr + y_offsets, mask=y_mask, other=0.0)
            if EXACT_Y:
                y_new = y_old * y_scale
            else:
                y_new = y_old - dt * acc
            tl.store(state_y_ptr + y_offsets, y_new, mask=y_mask)
            z_new = tl.where(is_x[None, :], x_new, y_new)
        if WRITE_NEXT:
            tl.store(next_ptr + out_offsets, z_new.to(next_ptr.dtype.element_ty), mask=out_mask)
    else:
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


@triton.jit
def _tile_pixels(t, rows, cols, tile_rows, tile_cols, tiles_per_row):
    """fp32 count of the pixels of tile(s) t inside the image (edge tiles are short)."""
    tr = t // tiles_per_row
    tc = t - tr * tiles_per_row
    return (tl.minimum(rows - tr * tile_rows, tile_rows) * tl.minimum(cols - tc * tile_cols, tile_cols)).to(tl.float32)


@triton.jit(do_not_specialize=["rows", "cols", "tiles_per_row", "num_m_tiles"])
def _group_stats_combine_kernel(
    part_mean_ptr,  # (N, num_m_tiles, C_out) fp32: tile means from _fused_conv3x3_kernel
    part_m2_ptr,  # (N, num_m_tiles, C_out) fp32: tile M2
    mean_ptr,  # (N, num_groups) fp32 out: group mean
    rstd_ptr,  # (N, num_groups) fp32 out: 1 / sqrt(biased variance + eps)
    C_out, num_groups, group_size, rows, cols, tile_rows, tile_cols, tiles_per_row, num_m_tiles, eps,
    BLOCK_T: tl.constexpr,  # tiles per loop step
    BLOCK_G: tl.constexpr,  # >= group_size, a power of two
):
    pid = tl.program_id(0)  # one program per (sample, group)
    n = (pid // num_groups).to(tl.int64)
    group = pid % num_groups
    j = tl.arange(0, BLOCK_G)
    c = group * group_size + j
    c_mask = j < group_size
    sample = n * num_m_tiles * C_out

    # k-way Chan merge, two sweeps in a fixed order (deterministic):
    #   mean = sum_t n_t mean_t / n,   M2 = sum_t [ M2_t + n_t (mean_t - mean)^2 ].
    # The first sums deviations from one tile's mean, so a large |mean| does not round the sum.
    # tile t covers rows [tr * tile_rows, ...) and columns [tc * tile_cols, ...) of a rows x cols
    # pixel grid: the conv's (H_out, W_out) for 2-D tiles, (1, H_out * W_out) for 1-D ones
    total = rows.to(tl.float32) * cols.to(tl.float32) * group_size
    pivot = tl.load(part_mean_ptr + sample + group * group_size)
    weighted_sum = tl.zeros([BLOCK_T, BLOCK_G], dtype=tl.float32)
    for t0 in range(0, num_m_tiles, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mask = (t < num_m_tiles)[:, None] & c_mask[None, :]
        tile_count = _tile_pixels(t, rows, cols, tile_rows, tile_cols, tiles_per_row)
        tile_mean = tl.load(part_mean_ptr + sample + t[:, None] * C_out + c[None, :], mask=mask, other=0.0)
        weighted_sum += tl.where(mask, tile_count[:, None] * (tile_mean - pivot), 0.0)
    mean = pivot + tl.sum(tl.sum(weighted_sum, axis=1), axis=0) / total

    m2_acc = tl.zeros([BLOCK_T, BLOCK_G], dtype=tl.float32)
    for t0 in range(0, num_m_tiles, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mask = (t < num_m_tiles)[:, None] & c_mask[None, :]
        tile_count = _tile_pixels(t, rows, cols, tile_rows, tile_cols, tiles_per_row)
        offsets = sample + t[:, None] * C_out + c[None, :]
        tile_mean = tl.load(part_mean_ptr + offsets, mask=mask, other=0.0)
        tile_m2 = tl.load(part_m2_ptr + offsets, mask=mask, other=0.0)
        deviation = tile_mean - mean
        m2_acc += tl.where(mask, tile_m2 + tile_count[:, None] * deviation * deviation, 0.0)
    var = tl.sum(tl.sum(m2_acc, axis=1), axis=0) / total  # biased, as torch's GroupNorm
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, 1.0 / tl.sqrt(var + eps))


# ------------------------------------------------------------------------------------------------
# Launch configuration
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conv3x3Config:
    """Tile sizes of the GEMM. Depends on the channel counts and dtype, never on H or W."""

    block_m: int  # output pixels per tile
    block_n: int  # output channels per tile
    block_k: int  # input channels per K step
    num_warps: int = 4
    num_stages: int = 2
    tile_w: int = 16  # the TMA variant's tile: (block_m // tile_w) rows x tile_w columns


# tl.dot needs every block dimension >= 16
_MIN_BLOCK = 16


def pick_config(c_in: int, c_out: int, dtype: torch.dtype, on_gpu: bool) -> Conv3x3Config:
    """One small config under the interpreter (numpy cost grows with the tile); on a GPU 128-pixel
    tiles as wide as C_out allows (up to 128) and K steps of up to 32 channels, with 3 pipeline
    stages: (128*32 + 32*128) * 2 B * 3 = 48 KiB of shared memory, within every GPU Triton supports.
    fp32 ("ieee" dot, no tensor cores) uses half-size tiles to stay within the same budget.
    A heuristic, not autotuning: autotune's timing runs would repeat an in-place residual add.
    """
    if not on_gpu:
        return Conv3x3Config(block_m=32, block_n=16, block_k=16, num_warps=4, num_stages=1, tile_w=8)
    block_n = min(max(next_power_of_2(c_out), _MIN_BLOCK), 128)
    block_k = min(max(next_power_of_2(c_in), _MIN_BLOCK), 32)
    if dtype == torch.float32:
        return Conv3x3Config(block_m=64, block_n=min(block_n, 64), block_k=block_k, num_warps=4, num_stages=2)
    num_warps = 8 if block_n >= 128 else 4
    return Conv3x3Config(block_m=128, block_n=block_n, block_k=block_k, num_warps=num_warps, num_stages=3)


def tma_requested() -> bool:
    """Whether ``$RESFLOW_CONV_TMA`` asks for the TMA variant (read per call, like the other switches)."""
    return os.environ.get(ENV_TMA, "").strip() not in ("", "0")


def tma_eligible(x: torch.Tensor, packed_weight: torch.Tensor, stride: int) -> bool:
    """Whether the TMA variant can run this conv: stride 1 (a shifted box per tap), Triton's host
    tensor descriptors, rows of x and of the packed weight in whole 16-byte units and 16-byte
    aligned bases (TMA's rules), and a Hopper-or-newer GPU, or the interpreter on the CPU."""
    if stride != 1 or TensorDescriptor is None:
        return False
    size = x.element_size()
    if (x.shape[1] * size) % 16 or (packed_weight.shape[1] * size) % 16:
        return False
    if x.data_ptr() % 16 or packed_weight.data_ptr() % 16:
        return False
    if x.is_cuda:
        return torch.cuda.get_device_capability(x.device)[0] >= 9
    return True


def combine_blocks(group_size: int) -> tuple[int, int]:
    """(BLOCK_T, BLOCK_G) of the statistics combine: a [BLOCK_T, BLOCK_G] tile of about 2048
    values; depends on the group size only (not on the tile count, which follows H*W)."""
    block_g = next_power_of_2(group_size)
    return max(1, 2048 // block_g), block_g


def pack_conv3x3_weight(weight: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Repack a PyTorch conv weight (C_out, C_in, 3, 3) to the kernel's (9 * C_in, C_out) layout,
    row ``(kh * 3 + kw) * C_in + c``, contiguous, in ``dtype`` (default: the weight's). Do it once
    per weight and pass the result as ``weight`` to :func:`fused_conv3x3` (dtype = x's dtype)."""
    check_tensor("weight", weight, ndim=4)
    if tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"weight must have shape (C_out, C_in, 3, 3), got {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    return weight.detach().permute(2, 3, 1, 0).reshape(9 * c_in, c_out).to(dtype or weight.dtype).contiguous()


def unpack_conv3x3_weight(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_conv3x3_weight`: the (C_out, C_in, 3, 3) view of a packed weight."""
    c_out = packed.shape[1]
    return packed.reshape(3, 3, packed.shape[0] // 9, c_out).permute(3, 2, 0, 1)


def _channels_last(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` itself when its memory is dense NHWC, else a channels-last copy (the only layout the
    kernel addresses; a size-1 H*W or C makes NCHW and NHWC the same memory, and that is fine)."""
    if t is None or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous(memory_format=torch.channels_last)


def _output_shape(x: torch.Tensor, c_out: int, stride: int) -> tuple:
    N, _, H, W = x.shape
    return (N, c_out, (H - 1) // stride + 1, (W - 1) // stride + 1)  # kernel 3, padding 1


@dataclass(frozen=True)
class _EulerEpilogue:
    """The Euler update (4) of :func:`fused_conv3x3_euler`: dense-NHWC fp32 state tensors updated
    in place, the optional next network input, the step and the exact-y factor (or None)."""

    x: torch.Tensor
    y: Optional[torch.Tensor]
    next_input: Optional[torch.Tensor]
    dt: float
    y_scale: Optional[float]


def _launch(x, packed_weight, bias, stride, pro_a, pro_b, residual, skip_x, skip_w, out,
            stats_groups, stats_eps, mean, rstd, euler: Optional[_EulerEpilogue] = None) -> None:
    """Run the conv (and the statistics combine) on validated dense-NHWC tensors. With ``euler``,
    ``out`` is None: the velocity is consumed by the update, never stored."""
    N, C_in, H, W = x.shape
    C_out = packed_weight.shape[1]
    _, _, H_out, W_out = (out if out is not None else euler.x).shape
    dummy = out if out is not None else euler.x  # stands in for absent pointers (flags skip them)
    HW_out = H_out * W_out
    C_skip = skip_x.shape[1] if skip_x is not None else 0
    cfg = pick_config(C_in, C_out, x.dtype, on_gpu=x.is_cuda)
    use_tma = tma_requested() and tma_eligible(x, packed_weight, stride)
    if use_tma:
        tile_h = cfg.block_m // cfg.tile_w
        tiles_w = cdiv(W_out, cfg.tile_w)
        num_m_tiles = cdiv(H_out, tile_h) * tiles_w
        # TMA boxes: the NHWC input (N, H, W, C_in) and the weight as (tap, C_in, C_out); boxes that
        # reach past an edge (the padding, the K and C_out tails) are filled with zeros
        # strides from the shape, not x.stride(): a size-1 H or W may carry any stride in torch
        x_desc = TensorDescriptor(x, [N, H, W, C_in], [H * W * C_in, W * C_in, C_in, 1],
                                  [1, tile_h, cfg.tile_w, cfg.block_k])
        w_desc = TensorDescriptor(packed_weight, [9, C_in, C_out], [C_in * C_out, C_out, 1],
                                  [1, cfg.block_k, cfg.block_n])
        tile_grid = (H_out, W_out, tile_h, cfg.tile_w, tiles_w)  # (rows, cols, tile rows, tile cols, per row)
    else:
        tiles_w = 1
        num_m_tiles = cdiv(HW_out, cfg.block_m)
        x_desc, w_desc = x, packed_weight  # unused without USE_TMA
        tile_grid = (1, HW_out, 1, cfg.block_m, num_m_tiles)  # 1-D tiles along the pixel row
    num_n_tiles = cdiv(C_out, cfg.block_n)
    grid = N * num_m_tiles * num_n_tiles
    if grid > MAX_PROGRAMS:
        raise ValueError(f"fused_conv3x3 would launch {grid} programs; at most {MAX_PROGRAMS}")
    has_stats = stats_groups > 0
    if has_stats:
        part_mean = torch.empty((N, num_m_tiles, C_out), dtype=torch.float32, device=x.device)
        part_m2 = torch.empty_like(part_mean)
    else:
        part_mean = part_m2 = dummy  # never written without HAS_STATS
    _fused_conv3x3_kernel[(grid,)](
        x, packed_weight, x_desc, w_desc,
        bias if bias is not None else dummy,  # dummies when absent: the constexpr flags skip them
        pro_a if pro_a is not None else dummy, pro_b if pro_b is not None else dummy,
        residual if residual is not None else dummy,
        skip_x if skip_x is not None else dummy, skip_w if skip_w is not None else dummy,
        dummy, part_mean, part_m2,
        euler.x if euler else dummy, euler.y if euler and euler.y is not None else dummy,
        euler.next_input if euler and euler.next_input is not None else dummy,
        C_in, C_out, C_skip, H, W, H_out, W_out, num_m_tiles, num_n_tiles, tiles_w,
        euler.x.shape[1] if euler else 0, float(euler.dt) if euler else 0.0,
        float(euler.y_scale) if euler and euler.y_scale is not None else 1.0,
        STRIDE=stride, HAS_BIAS=bias is not None, HAS_PROLOGUE=pro_a is not None,
        HAS_RESIDUAL=residual is not None, HAS_SKIP=skip_x is not None, HAS_STATS=has_stats,
        HAS_EULER=euler is not None, EULER_Y=euler is not None and euler.y is not None,
        EXACT_Y=euler is not None and euler.y_scale is not None,
        WRITE_NEXT=euler is not None and euler.next_input is not None,
        IEEE_FP32=x.dtype == torch.float32, UPCAST_BF16=x.dtype == torch.bfloat16 and not x.is_cuda,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, USE_TMA=use_tma,
        TILE_H=cfg.block_m // cfg.tile_w, TILE_W=cfg.tile_w,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    record_launch("fused_conv3x3_euler" if euler else "fused_conv3x3")
    if use_tma:
        record_launch("fused_conv3x3_tma")
    if has_stats:
        group_size = C_out // stats_groups
        block_t, block_g = combine_blocks(group_size)
        _group_stats_combine_kernel[(N * stats_groups,)](
            part_mean, part_m2, mean, rstd,
            C_out, stats_groups, group_size, *tile_grid, num_m_tiles, float(stats_eps),
            BLOCK_T=block_t, BLOCK_G=block_g, num_warps=4,
        )
        record_launch("conv3x3_group_stats")


# ------------------------------------------------------------------------------------------------
# The twin's math (fp32 torch ops) and the body shared by both registered ops
# ------------------------------------------------------------------------------------------------
def _reference_fp32(x, weight, bias, stride, pro_a, pro_b, residual, skip_x, skip_weight, skip_bias):
    """Equations (1)-(2) in fp32 through F.silu / F.conv2d; ``weight`` (C_out, C_in, 3, 3),
    ``skip_weight`` (C_out, C_skip, 1, 1). F.conv2d pads the activation, i.e. after (1)."""
    a = x.float()
    if pro_a is not None:
        a = F.silu(pro_a.float()[:, :, None, None] * a + pro_b.float()[:, :, None, None])
    y = F.conv2d(a, weight.float(), bias.float() if bias is not None else None, stride=stride, padding=1)
    if skip_x is not None:
        y = y + F.conv2d(skip_x.float(), skip_weight.float(), skip_bias.float() if skip_bias is not None else None)
    if residual is not None:
        y = y + residual.float()
    return y


def _group_stats_reference(y: torch.Tensor, num_groups: int, eps: float):
    """Equation (3): (mean, rstd), each (N, G) fp32, of y as stored, as F.group_norm computes them."""
    var, mean = torch.var_mean(y.float().reshape(y.shape[0], num_groups, -1), dim=2, unbiased=False)
    return mean, torch.rsqrt(var + eps)


def _run_into(x, packed_weight, bias, stride, pro_a, pro_b, residual, skip_x, skip_w, out,
              stats_groups, stats_eps, mean, rstd) -> None:
    """Body of both registered ops: the kernels when they can run here, else the twin's math.
    ``skip_w`` is packed (C_skip, C_out); ``bias`` already includes the skip bias."""
    if out.numel() == 0:
        return
    x, residual, skip_x = _channels_last(x), _channels_last(residual), _channels_last(skip_x)
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
    out = torch.empty(_output_shape(x, packed_weight.shape[1], stride), dtype=x.dtype, device=x.device,
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
def _shares_memory(a: torch.Tensor, b: Optional[torch.Tensor]) -> bool:
    return b is not None and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _validate(x, weight, bias, stride, prologue, residual, skip_x, skip_weight, skip_bias,
              stats_groups, stats_eps, out):
    """Check every argument at the boundary. Returns (C_out, prologue A, prologue B)."""
    check_tensor("x", x, ndim=4)
    N, C_in, H, W = x.shape
    if C_in < 1 or H < 1 or W < 1:
        raise ValueError(f"x must have C, H, W >= 1, got shape {tuple(x.shape)}")
    if H * W > MAX_PIXELS:
        raise ValueError(f"x has H*W={H * W} pixels per channel; at most {MAX_PIXELS} are supported")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.ndim == 4:
        check_tensor("weight", weight)
        C_out = weight.shape[0]
        if tuple(weight.shape[1:]) != (C_in, 3, 3):
            raise ValueError(f"weight must have shape (C_out, {C_in}, 3, 3) for x with C_in={C_in}, "
                             f"got {tuple(weight.shape)}")
    elif weight.ndim == 2:  # pre-packed by pack_conv3x3_weight
        C_out = weight.shape[1]
        if weight.shape[0] != 9 * C_in:
            raise ValueError(f"a packed weight must have shape (9 * C_in, C_out) = ({9 * C_in}, C_out) "
                             f"for x with C_in={C_in}, got {tuple(weight.shape)}")
        if weight.dtype != x.dtype:
            raise TypeError(f"a packed weight must have x's dtype {x.dtype}, got {weight.dtype}; "
                            "repack with pack_conv3x3_weight(weight, x.dtype)")
        if not weight.is_contiguous():
            raise ValueError("a packed weight must be contiguous (use pack_conv3x3_weight)")
    else:
        raise ValueError("weight must be (C_out, C_in, 3, 3) or packed (9 * C_in, C_out), "
                         f"got shape {tuple(weight.shape)}")
    if C_out < 1:
        raise ValueError(f"weight must have C_out >= 1, got shape {tuple(weight.shape)}")
    if isinstance(stride, bool) or stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    out_shape = _output_shape(x, C_out, stride)
    if bias is not None:
        check_tensor("bias", bias)
        check_shape("bias", bias, (C_out,))

    pro_a = pro_b = None
    if prologue is not None:
        if not isinstance(prologue, (tuple, list)) or len(prologue) != 2:
            raise TypeError("prologue must be a pair (A, B) of (N, C_in) fp32 tensors, "
                            f"got {type(prologue).__name__}")
        pro_a, pro_b = prologue
        for name, t in (("prologue A", pro_a), ("prologue B", pro_b)):
            check_tensor(name, t, dtypes=(torch.float32,))
            check_shape(name, t, (N, C_in))

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
            if _shares_memory(out, t):  # other programs still read the input tile out would overwrite
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
    weight4d = unpack_conv3x3_weight(weight) if weight.ndim == 2 else weight
    if skip_weight is not None and skip_weight.ndim == 2:
        skip_weight = skip_weight[:, :, None, None]
    y = _reference_fp32(x, weight4d, bias, stride, pro_a, pro_b, residual, skip_x, skip_weight, skip_bias)
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
    x, residual, skip_x = _channels_last(x), _channels_last(residual), _channels_last(skip_x)
    packed = weight if weight.ndim == 2 else pack_conv3x3_weight(weight, x.dtype)
    packed_skip = None
    if skip_x is not None:  # (C_out, C_skip[, 1, 1]) -> (C_skip, C_out), rows contiguous along C_out
        packed_skip = skip_weight.reshape(C_out, -1).t().to(x.dtype).contiguous()
    # the skip bias joins the conv bias: one fp32 vector for the epilogue
    if bias is not None or skip_bias is not None:
        total_bias = torch.zeros(C_out, dtype=torch.float32, device=x.device)
        for b in (bias, skip_bias):
            if b is not None:
                total_bias += b.float()
    else:
        total_bias = None
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


# ------------------------------------------------------------------------------------------------
# The output conv with the Euler step in its epilogue, equation (4)
# ------------------------------------------------------------------------------------------------
def _euler_run_into(h, packed_weight, bias, pro_a, pro_b, x, y, next_input, dt, y_scale) -> None:
    """Body of the registered Euler op: the kernel when it can run here, else the twin's math."""
    if x.numel() == 0:
        return
    h = _channels_last(h)
    if use_triton(h, packed_weight, bias, pro_a, pro_b, x, y, next_input):
        with on_device_of(h):
            _launch(h, packed_weight, bias, 1, pro_a, pro_b, None, None, None, None, 0, 1e-5, None, None,
                    euler=_EulerEpilogue(x, y, next_input, dt, y_scale))
        return
    v = _reference_fp32(h, unpack_conv3x3_weight(packed_weight), bias, 1, pro_a, pro_b, None, None, None, None)
    euler_step_reference(x, y, v, dt, inplace=True, next_input=next_input, y_scale=y_scale)


@torch.library.custom_op("resflow_fast::fused_conv3x3_euler", mutates_args=("x", "y", "next_input"))
def _fused_conv3x3_euler_op(
    h: torch.Tensor, packed_weight: torch.Tensor, bias: Optional[torch.Tensor],
    prologue_a: Optional[torch.Tensor], prologue_b: Optional[torch.Tensor],
    x: torch.Tensor, y: Optional[torch.Tensor], next_input: Optional[torch.Tensor], dt: float,
    y_scale: Optional[float],
) -> None:
    """Updates the fp32 state x (and y) in place from the conv's velocity, and writes next_input."""
    _euler_run_into(h, packed_weight, bias, prologue_a, prologue_b, x, y, next_input, dt, y_scale)


@_fused_conv3x3_euler_op.register_fake
def _(h, packed_weight, bias, prologue_a, prologue_b, x, y, next_input, dt, y_scale):
    return None


def _validate_euler(h, weight, bias, prologue, x, y, dt, y_scale, next_input):
    """The conv checks of :func:`fused_conv3x3` (stride 1, nothing added to v) plus the state's."""
    C_out, pro_a, pro_b = _validate(h, weight, bias, 1, prologue, None, None, None, None, None, 1e-5, None)
    N, _, H, W = h.shape
    check_tensor("x", x, ndim=4, dtypes=(torch.float32,))
    C_state = x.shape[1]
    expected_c_out = 2 * C_state if y is not None else C_state
    if C_out != expected_c_out:
        what = "2C for the state [x; y]" if y is not None else "C for an x-only state"
        raise ValueError(f"the conv has C_out={C_out} outputs but the velocity of a state with x of "
                         f"{C_state} channels{' and y' if y is not None else ''} has {expected_c_out} ({what})")
    check_shape("x", x, (N, C_state, H, W))
    if y is not None:
        check_tensor("y", y, ndim=4, dtypes=(torch.float32,))
        check_shape("y", y, tuple(x.shape))
    elif y_scale is not None:
        raise ValueError("y_scale moves y exactly along the schedule, but y is None (x-only state)")
    if next_input is not None:
        check_tensor("next_input", next_input, ndim=4)
        check_shape("next_input", next_input, (N, C_out, H, W))
    # updated in place through NHWC addressing: the state and next_input must be dense NHWC
    for name, t in (("x", x), ("y", y), ("next_input", next_input)):
        if t is not None and not t.is_contiguous(memory_format=torch.channels_last):
            raise ValueError(f"{name} must be channels_last (dense NHWC) to be updated in place, "
                             f"got strides {t.stride()} for shape {tuple(t.shape)}")
    written = [("x", x), ("y", y), ("next_input", next_input)]
    for i, (name, t) in enumerate(written):
        if t is None:
            continue
        for other_name, other in [("h", h), ("weight", weight)] + written[i + 1:]:
            if _shares_memory(t, other):
                raise ValueError(f"{name} must not share memory with {other_name}")
    for name, value in (("dt", dt), ("y_scale", y_scale)):
        if value is None and name == "y_scale":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite Python number, got {value!r}")
    check_same_device(h=h, weight=weight, bias=bias, prologue_A=pro_a, prologue_B=pro_b, x=x, y=y,
                      next_input=next_input)
    return pro_a, pro_b


def fused_conv3x3_euler_reference(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
    prologue: Optional[tuple] = None, x: torch.Tensor, y: Optional[torch.Tensor] = None, dt: float,
    y_scale: Optional[float] = None, next_input: Optional[torch.Tensor] = None,
):
    """Pure-torch twin of :func:`fused_conv3x3_euler`: the conv (1)-(2) in fp32, then
    :func:`euler_step_reference` with that fp32 velocity. Same arguments and returns."""
    pro_a, pro_b = _validate_euler(h, weight, bias, prologue, x, y, dt, y_scale, next_input)
    weight4d = unpack_conv3x3_weight(weight) if weight.ndim == 2 else weight
    v = _reference_fp32(h, weight4d, bias, 1, pro_a, pro_b, None, None, None, None)
    return euler_step_reference(x, y, v, float(dt), inplace=True, next_input=next_input,
                                y_scale=None if y_scale is None else float(y_scale))


def fused_conv3x3_euler(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
    prologue: Optional[tuple] = None, x: torch.Tensor, y: Optional[torch.Tensor] = None, dt: float,
    y_scale: Optional[float] = None, next_input: Optional[torch.Tensor] = None,
):
    """The U-Net's output conv and the sampler's Euler step as one kernel, equation (4):

        v = conv3x3(SiLU(A * h + B)) + bias            (1)-(2), stride 1, v kept in fp32
        x <- x - dt * v[:, :C]                         (reference/sampler.py: z <- z - dt * v)
        y <- y - dt * v[:, C:]   or  y <- y * y_scale  (the exact-y option, kernels/euler_step.py (2c))
        next_input <- [x; y]                           (cast to next_input's dtype)

    so the velocity never touches memory and the separate :func:`euler_step` pass disappears.

    Args:
        h: (N, C_in, H, W) activation entering the output norm, as for :func:`fused_conv3x3`.
        weight, bias, prologue: as for :func:`fused_conv3x3`; C_out = 2C (C without y).
        x: (N, C, H, W) fp32 state, channels-last; updated in place.
        y: (N, C, H, W) fp32 auxiliary state, channels-last, updated in place; None for x-only.
        dt: the step t_k - t_{k+1} (a runtime float, never recompiles).
        y_scale: sigma_y(t_next) / sigma_y(t) (:func:`exact_y_scale`) to move y exactly instead.
        next_input: optional (N, C_out, H, W) channels-last tensor of any float dtype that receives
            the new [x; y]: the next network input. h may not share memory with it or the state.

    Returns:
        (x, y): the updated state tensors themselves (y None without y).

    The velocity is not rounded to the activation dtype before the update (the unfused path rounds
    it once, to the dtype of the conv's output). When autograd would record through any input,
    this runs the twin :func:`fused_conv3x3_euler_reference`.
    """
    pro_a, pro_b = _validate_euler(h, weight, bias, prologue, x, y, dt, y_scale, next_input)
    if needs_autograd(h, weight, bias, pro_a, pro_b, x, y):
        return fused_conv3x3_euler_reference(h, weight, bias, prologue=prologue, x=x, y=y, dt=dt,
                                             y_scale=y_scale, next_input=next_input)
    h = _channels_last(h)
    packed = weight if weight.ndim == 2 else pack_conv3x3_weight(weight, h.dtype)
    total_bias = bias.float().contiguous() if bias is not None else None
    if pro_a is not None:
        pro_a, pro_b = pro_a.contiguous(), pro_b.contiguous()
    torch.ops.resflow_fast.fused_conv3x3_euler(h, packed, total_bias, pro_a, pro_b, x, y, next_input, float(dt),
                                               None if y_scale is None else float(y_scale))
    return x, y
