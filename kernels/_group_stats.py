"""GroupNorm statistics: the statistics pass over an activation and the merge of per-tile partials.

One owner for how the kernels compute GroupNorm statistics (docs/design/architecture.md, "The
fusion plan", item 1). A kernel that reduces a tile of an activation writes, per (sample, tile,
channel), the tile's mean and M2 (sum of squared deviations from that mean) into an fp32
(N, num_tiles, C) buffer; they are merged in two exact steps, with Chan's formula and never
``E[x^2] - E[x]^2``:

    per channel, over tiles:   mean_c = sum_t n_t mean_t / n,   M2_c = sum_t [M2_t + n_t (mean_t - mean_c)^2]
    per group, over channels:  mean_g = mean of mean_c,         M2_g = sum_c [M2_c + n (mean_c - mean_g)^2]

(every channel of a sample covers the same n pixels, so the second step weighs channels equally).
Sums of means are taken as deviations from one of them, so a large |mean| does not round them away,
and the merge order is fixed: the statistics are deterministic.

Tiles cover a ``rows x cols`` pixel grid in row-major tile order: tile t spans rows
``[tr * tile_rows, ...)`` and columns ``[tc * tile_cols, ...)`` with ``tr, tc = divmod(t, tiles_per_row)``;
edge tiles are short. A run of consecutive pixels is the grid ``(1, H * W)`` with ``tile_rows = 1``.

Two users:

* ``_gn_stats_kernel``, the statistics pass of :mod:`kernels.group_norm_modulate_silu` and
  :mod:`kernels.group_stats`: programs reduce (sample, channel block, chunk of pixels) with the
  shifted-data sums (deviations from one pixel of the chunk), several tiles per loop step. The
  last program of a (sample, channel block) to finish, found with an atomic counter, merges the
  chunks per channel; the last channel block of a sample to finish merges the channels into groups
  and writes the result. One launch, no separate combine pass.
* ``_group_stats_combine_kernel``, launched after :mod:`kernels.fused_conv3x3` when its epilogue
  wrote per-tile partials of its output.
"""
from dataclasses import dataclass

import torch

from ._runtime import cdiv, is_channels_last, next_power_of_2, record_launch, tl, triton


@triton.jit
def tile_pixel_count(t, rows, cols, tile_rows, tile_cols, tiles_per_row):
    """fp32 number of the pixels of tile(s) t inside the ``rows x cols`` grid."""
    tr = t // tiles_per_row
    tc = t - tr * tiles_per_row
    return (tl.minimum(rows - tr * tile_rows, tile_rows) * tl.minimum(cols - tc * tile_cols, tile_cols)).to(tl.float32)


@triton.jit
def merge_tiles_per_channel(mean_ptr, m2_ptr, sample_base, c, c_mask, num_tiles, C,
                            rows, cols, tile_rows, tile_cols, tiles_per_row, BLOCK_T: tl.constexpr):
    """(mean, M2) over all tiles of each channel in ``c`` (a [BLOCK_C] vector), from the partials
    at ``sample_base + t * C + c``. Two sweeps: the weighted mean, then M2 around it.

    Loads bypass L1 (``.cg``), so a caller may also read partials that other programs of the same
    launch wrote (after synchronising with them)."""
    pivot = tl.load(mean_ptr + sample_base + c, mask=c_mask, other=0.0, cache_modifier=".cg")  # tile 0
    total = (rows * 1.0) * (cols * 1.0)  # fp32 (rows may be a literal 1)
    weighted = tl.zeros([BLOCK_T, c.shape[0]], dtype=tl.float32)
    for t0 in range(0, num_tiles, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mask = (t < num_tiles)[:, None] & c_mask[None, :]
        count = tile_pixel_count(t, rows, cols, tile_rows, tile_cols, tiles_per_row)
        offsets = sample_base + t.to(tl.int64)[:, None] * C + c[None, :]
        tile_mean = tl.load(mean_ptr + offsets, mask=mask, other=0.0, cache_modifier=".cg")
        weighted += tl.where(mask, count[:, None] * (tile_mean - pivot[None, :]), 0.0)
    mean = pivot + tl.sum(weighted, axis=0) / total

    m2 = tl.zeros([BLOCK_T, c.shape[0]], dtype=tl.float32)
    for t0 in range(0, num_tiles, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mask = (t < num_tiles)[:, None] & c_mask[None, :]
        count = tile_pixel_count(t, rows, cols, tile_rows, tile_cols, tiles_per_row)
        offsets = sample_base + t.to(tl.int64)[:, None] * C + c[None, :]
        tile_mean = tl.load(mean_ptr + offsets, mask=mask, other=0.0, cache_modifier=".cg")
        tile_m2 = tl.load(m2_ptr + offsets, mask=mask, other=0.0, cache_modifier=".cg")
        deviation = tile_mean - mean[None, :]
        m2 += tl.where(mask, tile_m2 + count[:, None] * deviation * deviation, 0.0)
    return mean, tl.sum(m2, axis=0)


@triton.jit
def merge_channels_per_group(mean_c, m2_c, mask, first, pixels):
    """Group statistics from per-channel ones laid out [groups, channels of a group]: ``mask``
    marks real entries, ``first`` the first channel of each row; every channel counts ``pixels``
    pixels. Returns (mean, biased variance), one per row (rows without entries give 0, 0)."""
    channels = tl.maximum(tl.sum(mask.to(tl.float32), axis=1), 1.0)
    pivot = tl.sum(tl.where(first, mean_c, 0.0), axis=1)
    mean = pivot + tl.sum(tl.where(mask, mean_c - pivot[:, None], 0.0), axis=1) / channels
    deviation = tl.where(mask, mean_c - mean[:, None], 0.0)
    m2 = tl.sum(tl.where(mask, m2_c, 0.0) + pixels * deviation * deviation, axis=1)
    return mean, m2 / (channels * pixels)


@triton.jit(do_not_specialize=["rows", "cols", "tiles_per_row", "num_tiles"])
def _group_stats_combine_kernel(
    part_mean_ptr,  # (N, num_tiles, C) fp32: tile means
    part_m2_ptr,  # (N, num_tiles, C) fp32: tile M2
    mean_ptr,  # (N, num_groups) fp32 out: group mean
    rstd_ptr,  # (N, num_groups) fp32 out: 1 / sqrt(biased variance + eps)
    C, num_groups, group_size, rows, cols, tile_rows, tile_cols, tiles_per_row, num_tiles, eps,
    BLOCK_T: tl.constexpr,  # tiles per loop step
    BLOCK_G: tl.constexpr,  # >= group_size, a power of two
):
    pid = tl.program_id(0)  # one program per (sample, group)
    n = (pid // num_groups).to(tl.int64)
    group = pid % num_groups
    j = tl.arange(0, BLOCK_G)
    c = group * group_size + j
    c_mask = j < group_size
    mean_c, m2_c = merge_tiles_per_channel(part_mean_ptr, part_m2_ptr, n * num_tiles * C, c, c_mask, num_tiles, C,
                                           rows, cols, tile_rows, tile_cols, tiles_per_row, BLOCK_T)
    pixels = (rows * 1.0) * (cols * 1.0)
    mean, var = merge_channels_per_group(mean_c[None, :], m2_c[None, :], c_mask[None, :], (j == 0)[None, :], pixels)
    tl.store(mean_ptr + pid + tl.arange(0, 1), mean)
    tl.store(rstd_ptr + pid + tl.arange(0, 1), 1.0 / tl.sqrt(var + eps))


def combine_blocks(group_size: int) -> tuple[int, int]:
    """(BLOCK_T, BLOCK_G) of the combine: a [BLOCK_T, BLOCK_G] tile of about 2048 values; depends
    on the group size only (not on the tile count, which follows H*W)."""
    block_g = next_power_of_2(group_size)
    return max(1, 2048 // block_g), block_g


def combine_tile_partials(part_mean: torch.Tensor, part_m2: torch.Tensor, num_groups: int, eps: float,
                          tile_grid: tuple, mean: torch.Tensor, rstd: torch.Tensor) -> None:
    """Launch the merge of (N, num_tiles, C) partials into ``mean`` and ``rstd`` ((N, num_groups)
    fp32), one program per (sample, group). ``tile_grid`` = (rows, cols, tile_rows, tile_cols,
    tiles_per_row) as in the module docstring. Inputs are validated by the caller."""
    N, num_tiles, C = part_mean.shape
    group_size = C // num_groups
    block_t, block_g = combine_blocks(group_size)
    _group_stats_combine_kernel[(N * num_groups,)](
        part_mean, part_m2, mean, rstd,
        C, num_groups, group_size, *tile_grid, num_tiles, float(eps),
        BLOCK_T=block_t, BLOCK_G=block_g, num_warps=4,
    )
    record_launch("conv3x3_group_stats")


# ------------------------------------------------------------------------------------------------
# The statistics pass over an activation
# ------------------------------------------------------------------------------------------------
@triton.jit
def _tile_offsets(n, c, p, C, HW, CHANNELS_LAST: tl.constexpr):
    """int64 offsets of a [BLOCK_P, BLOCK_C] tile of pixels p (rows) x channels c (columns) of
    sample n in a dense (N, C, H, W) tensor; 64-bit because N * C * H * W can pass 2**31."""
    n64 = n.to(tl.int64)
    p64 = p.to(tl.int64)[:, None]
    c64 = c.to(tl.int64)[None, :]
    if CHANNELS_LAST:
        offsets = (n64 * HW + p64) * C + c64
    else:
        offsets = (n64 * C + c64) * HW + p64
    return offsets


@triton.jit
def aligned_pixels(HW):
    """HW itself, written as ``(HW // 16) * 16`` so the compiler knows it is a multiple of 16: for
    callers that checked ``H * W % 16 == 0`` on the host. Then NCHW channel rows (and the masks
    that end them) start on 16-element boundaries, and runs of pixels load and store as 16-byte
    vectors. (``tl.multiple_of`` cannot mark a kernel argument itself.)"""
    return (HW // 16) * 16


@triton.jit(do_not_specialize=["HW", "num_tiles", "num_chunks", "tiles_per_chunk", "eps"])
def _gn_stats_kernel(
    x_ptr,  # (N, C, H, W) fp32/bf16/fp16, dense NCHW or NHWC (CHANNELS_LAST)
    part_mean_ptr,  # (N, num_chunks, C) fp32 scratch: chunk means
    part_m2_ptr,  # (N, num_chunks, C) fp32 scratch: chunk M2
    chan_mean_ptr,  # (N, C) fp32 scratch: channel means over the image
    chan_m2_ptr,  # (N, C) fp32 scratch: channel M2
    counter_ptr,  # int32 (N * num_c_blocks + N): zero on entry, zero again on exit
    weight_ptr,  # (C,) any float dtype; read if FOLD
    bias_ptr,  # (C,) any float dtype; read if FOLD
    scale_ptr,  # (N, C) any float dtype, strides (stride_scale_n, stride_scale_c); read if HAS_SCALE
    shift_ptr,  # (N, C) any float dtype, strides (stride_shift_n, stride_shift_c); read if HAS_SHIFT
    out_a_ptr,  # FOLD: (N, C) fp32 A = rstd * weight * (1 + scale); else (N, G) fp32 group mean
    out_b_ptr,  # FOLD: (N, C) fp32 B = bias * (1 + scale) + shift; else (N, G) fp32 rstd
    out_center_ptr,  # FOLD: (N, C) fp32 group mean per channel
    N, C, HW, num_c_blocks, num_tiles, num_chunks, tiles_per_chunk, num_groups, group_size, eps,
    stride_scale_n, stride_scale_c, stride_shift_n, stride_shift_c,
    CHANNELS_LAST: tl.constexpr,
    HW_ALIGNED: tl.constexpr,  # NCHW with H*W % 16 == 0 (checked by the launcher): 16-byte channel rows
    FOLD: tl.constexpr,  # write the GroupNorm's per-channel affine (A, B, center), not (mean, rstd)
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    BLOCK_P: tl.constexpr,  # pixels per tile
    BLOCK_C: tl.constexpr,  # channels per program
    TILES_IN_FLIGHT: tl.constexpr,  # tiles loaded per loop step
    BLOCK_T: tl.constexpr,  # chunks per step of the per-channel merge
    BLOCK_GROUPS: tl.constexpr,  # groups per step of the group merge
    BLOCK_GS: tl.constexpr,  # >= group_size, a power of two
):
    if HW_ALIGNED:
        HW = aligned_pixels(HW)
    # program -> (chunk, channel block, sample); chunks vary fastest so neighbours read neighbours
    pid = tl.program_id(0)
    chunk = pid % num_chunks
    rest = pid // num_chunks
    c_block = rest % num_c_blocks
    n = rest // num_c_blocks

    c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    first_tile = chunk * tiles_per_chunk
    last_tile = tl.minimum(first_tile + tiles_per_chunk, num_tiles)  # every chunk has >= 1 tile

    # Shifted-data sums: accumulate d = x - K and d^2 per register lane, with K the chunk's first
    # pixel per channel. K is a sample of the data, typically a few std from the mean, so
    # sum(d^2) - sum(d)^2 / n does not cancel the way E[x^2] - E[x]^2 does when |mean| >> std.
    # The loop only adds; the one cross-lane reduction happens after it. Each step issues the
    # loads of TILES_IN_FLIGHT tiles, which do not depend on one another.
    first_pixel = first_tile * BLOCK_P + tl.zeros([1], dtype=tl.int32)
    pivot = tl.load(x_ptr + _tile_offsets(n, c, first_pixel, C, HW, CHANNELS_LAST), mask=c_mask[None, :], other=0.0)
    pivot = pivot.to(tl.float32)  # [1, BLOCK_C]: K
    sum_d = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    sum_d2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    end_pixel = tl.minimum(HW, last_tile * BLOCK_P)  # past the chunk or the image
    for step_tile in range(first_tile, last_tile, TILES_IN_FLIGHT):
        for u in tl.static_range(TILES_IN_FLIGHT):
            p = (step_tile + u) * BLOCK_P + tl.arange(0, BLOCK_P)
            mask = (p < end_pixel)[:, None] & c_mask[None, :]
            x = tl.load(x_ptr + _tile_offsets(n, c, p, C, HW, CHANNELS_LAST), mask=mask, other=0.0)
            d = tl.where(mask, x.to(tl.float32) - pivot, 0.0)
            sum_d += d
            sum_d2 += d * d

    count = tl.minimum(HW - first_tile * BLOCK_P, (last_tile - first_tile) * BLOCK_P).to(tl.float32)
    total_d = tl.sum(sum_d, axis=0)
    chunk_mean = tl.sum(pivot, axis=0) + total_d / count
    chunk_m2 = tl.maximum(tl.sum(sum_d2, axis=0) - total_d * total_d / count, 0.0)
    sample_parts = n.to(tl.int64) * num_chunks * C
    tl.store(part_mean_ptr + sample_parts + chunk * C + c, chunk_mean, mask=c_mask)
    tl.store(part_m2_ptr + sample_parts + chunk * C + c, chunk_m2, mask=c_mask)

    # The last chunk of this (sample, channel block) to finish merges them. The barrier orders
    # every thread's stores before the release of the counter update; the other programs'
    # partials are visible after its acquire (and read past L1, see merge_tiles_per_channel).
    tl.debug_barrier()
    block_counter = counter_ptr + n * num_c_blocks + c_block
    if tl.atomic_add(block_counter, 1, sem="acq_rel", scope="gpu") == num_chunks - 1:
        tl.debug_barrier()
        mean_c, m2_c = merge_tiles_per_channel(part_mean_ptr, part_m2_ptr, sample_parts, c, c_mask, num_chunks, C,
                                               1, HW, 1, tiles_per_chunk * BLOCK_P, num_chunks, BLOCK_T)
        tl.store(chan_mean_ptr + n * C + c, mean_c, mask=c_mask)
        tl.store(chan_m2_ptr + n * C + c, m2_c, mask=c_mask)
        tl.store(block_counter, 0)  # every program of this block has counted: ready for the next launch
        tl.debug_barrier()
        sample_counter = counter_ptr + N * num_c_blocks + n
        if tl.atomic_add(sample_counter, 1, sem="acq_rel", scope="gpu") == num_c_blocks - 1:
            tl.debug_barrier()
            _write_group_statistics(chan_mean_ptr, chan_m2_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr,
                                    out_a_ptr, out_b_ptr, out_center_ptr, n, C, HW, num_groups, group_size, eps,
                                    stride_scale_n, stride_scale_c, stride_shift_n, stride_shift_c,
                                    FOLD, HAS_SCALE, HAS_SHIFT, BLOCK_GROUPS, BLOCK_GS)
            tl.store(sample_counter, 0)


@triton.jit
def _write_group_statistics(chan_mean_ptr, chan_m2_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr,
                            out_a_ptr, out_b_ptr, out_center_ptr, n, C, HW, num_groups, group_size, eps,
                            stride_scale_n, stride_scale_c, stride_shift_n, stride_shift_c,
                            FOLD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                            BLOCK_GROUPS: tl.constexpr, BLOCK_GS: tl.constexpr):
    """Merge sample n's channel statistics into groups; write (mean, rstd) per group or, with
    FOLD, the per-channel affine of the modulated GroupNorm (reference ``group_norm_coefficients``)
    and the group mean per channel."""
    j = tl.arange(0, BLOCK_GS)
    for g0 in range(0, num_groups, BLOCK_GROUPS):
        g = g0 + tl.arange(0, BLOCK_GROUPS)
        ch = g[:, None] * group_size + j[None, :]  # [groups, channels of a group]
        mask = (g < num_groups)[:, None] & (j < group_size)[None, :]
        mean_c = tl.load(chan_mean_ptr + n * C + ch, mask=mask, other=0.0, cache_modifier=".cg")
        m2_c = tl.load(chan_m2_ptr + n * C + ch, mask=mask, other=0.0, cache_modifier=".cg")
        mean, var = merge_channels_per_group(mean_c, m2_c, mask, (j == 0)[None, :] & mask, HW * 1.0)
        rstd = 1.0 / tl.sqrt(var + eps)  # biased variance, as torch's GroupNorm
        if FOLD:
            a = rstd[:, None] * tl.load(weight_ptr + ch, mask=mask, other=0.0).to(tl.float32)
            b = tl.load(bias_ptr + ch, mask=mask, other=0.0).to(tl.float32)
            if HAS_SCALE:
                one_plus_scale = 1.0 + tl.load(scale_ptr + n * stride_scale_n + ch * stride_scale_c,
                                               mask=mask, other=0.0).to(tl.float32)
                a = a * one_plus_scale
                b = b * one_plus_scale
            if HAS_SHIFT:
                b = b + tl.load(shift_ptr + n * stride_shift_n + ch * stride_shift_c, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_a_ptr + n * C + ch, a, mask=mask)
            tl.store(out_b_ptr + n * C + ch, b, mask=mask)
            tl.store(out_center_ptr + n * C + ch, mean[:, None] + tl.zeros([1, BLOCK_GS], dtype=tl.float32), mask=mask)
        else:
            g_mask = g < num_groups
            tl.store(out_a_ptr + n * num_groups + g, mean, mask=g_mask)
            tl.store(out_b_ptr + n * num_groups + g, rstd, mask=g_mask)


@dataclass(frozen=True)
class GroupNormConfig:
    """Block sizes and the statistics split. Depends on C, the layout and the device kind, never
    on H or W."""

    block_p: int  # pixels per tile
    block_c: int  # channels per program
    stats_programs: int  # aim for at least this many statistics programs (fills a 132-SM GPU)
    tiles_in_flight: int = 4  # tiles per step of the statistics loop
    num_warps: int = 4  # the apply pass
    stats_num_warps: int = 8


def pick_config(num_channels: int, channels_last: bool, on_gpu: bool = True) -> GroupNormConfig:
    """Tiles of about 4096 elements, contiguous along the layout's fast axis: up to 64 channels of
    a pixel row for NHWC (128 bytes in bf16), long pixel runs of a few channels for NCHW. Four
    tiles per statistics step on a GPU; two under the interpreter, where every masked tile costs."""
    c_pow2 = next_power_of_2(num_channels)
    block_c = min(c_pow2, 64) if channels_last else min(c_pow2, 4)
    return GroupNormConfig(block_p=max(4096 // block_c, 16), block_c=block_c, stats_programs=512,
                           tiles_in_flight=4 if on_gpu else 2)


@dataclass(frozen=True)
class StatsSplit:
    """How the statistics pass covers the (N, C, H*W) activation: programs = N * num_c_blocks *
    num_chunks, each over tiles_per_chunk tiles of cfg.block_p pixels (a multiple of the tiles
    loaded per step, so only the image's last chunk has masked steps)."""

    num_c_blocks: int
    num_tiles: int  # pixel tiles of cfg.block_p per (sample, channel block)
    tiles_per_chunk: int
    num_chunks: int  # every chunk holds at least one tile

    @property
    def programs_per_sample(self) -> int:
        return self.num_c_blocks * self.num_chunks


def stats_split(batch: int, num_channels: int, num_pixels: int, cfg: GroupNormConfig) -> StatsSplit:
    """Split H*W into chunks so that batch * num_c_blocks * num_chunks reaches cfg.stats_programs:
    at batch 1 the statistics pass still fills the GPU."""
    num_c_blocks = cdiv(num_channels, cfg.block_c)
    num_tiles = cdiv(num_pixels, cfg.block_p)
    wanted_chunks = max(1, min(num_tiles, cdiv(cfg.stats_programs, batch * num_c_blocks)))
    tiles_per_chunk = cdiv(cdiv(num_tiles, wanted_chunks), cfg.tiles_in_flight) * cfg.tiles_in_flight
    return StatsSplit(num_c_blocks, num_tiles, tiles_per_chunk, cdiv(num_tiles, tiles_per_chunk))


def merge_blocks(cfg: GroupNormConfig, num_channels: int, num_groups: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_GROUPS, BLOCK_GS) of the merges: the per-channel merge takes all chunks (at
    most about cfg.stats_programs) in one [BLOCK_T, block_c] step when that stays within 8192
    values; the group merge [BLOCK_GROUPS, BLOCK_GS] tiles of about 2048 values."""
    block_gs = next_power_of_2(num_channels // num_groups)
    block_t = max(1, min(next_power_of_2(cfg.stats_programs), 8192 // cfg.block_c))
    return block_t, max(1, min(next_power_of_2(num_groups), 2048 // block_gs)), block_gs


def hw_aligned(*tensors: torch.Tensor) -> bool:
    """The HW_ALIGNED flag of the kernels: some tensor is NCHW and its channel rows have a multiple
    of 16 pixels (see :func:`aligned_pixels`). False when all are NHWC, whose rows are channels
    (Triton specialises C on its divisibility by 16 already), so NHWC sizes never add a variant."""
    x = tensors[0]
    return (x.shape[2] * x.shape[3]) % 16 == 0 and not all(is_channels_last(t) for t in tensors)


_COUNTERS: dict = {}


def _zeroed_counters(device: torch.device, size: int) -> torch.Tensor:
    """int32 counters, all zero, for one launch of the statistics pass. Each launch leaves them
    zero again, so on a GPU one buffer per (device, stream) is reused without a memset; inside a
    CUDA-graph capture (whose memory must belong to the graph) and on the CPU a new one is made."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return torch.zeros(size, dtype=torch.int32, device=device)
    key = (device.index if device.index is not None else torch.cuda.current_device(),
           torch.cuda.current_stream(device).cuda_stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < size:
        buf = _COUNTERS[key] = torch.zeros(max(size, 256), dtype=torch.int32, device=device)
    return buf


def launch_statistics(x: torch.Tensor, num_groups: int, eps: float, cfg: GroupNormConfig, split: StatsSplit,
                      out_a: torch.Tensor, out_b: torch.Tensor, out_center=None, weight=None, bias=None,
                      scale=None, shift=None) -> None:
    """Launch the statistics pass over dense 4-D ``x`` (validated by the caller). With
    ``out_center`` (FOLD): writes A, B and the group mean per channel, (N, C) fp32 each, from the
    affine ``weight``, ``bias`` (C,) and modulation ``scale``, ``shift`` (N, C) or None; else
    ``out_a`` = group mean and ``out_b`` = rstd, (N, num_groups) fp32."""
    N, C, H, W = x.shape
    fold = out_center is not None
    block_t, block_groups, block_gs = merge_blocks(cfg, C, num_groups)
    scratch = torch.empty(2 * N * split.num_chunks * C + 2 * N * C, dtype=torch.float32, device=x.device)
    parts = N * split.num_chunks * C
    part_mean, part_m2 = scratch[:parts], scratch[parts:2 * parts]
    chan_mean, chan_m2 = scratch[2 * parts:2 * parts + N * C], scratch[2 * parts + N * C:]
    counters = _zeroed_counters(x.device, N * split.num_c_blocks + N)
    _gn_stats_kernel[(N * split.programs_per_sample,)](
        x, part_mean, part_m2, chan_mean, chan_m2, counters,
        weight if fold else out_a, bias if fold else out_a,  # dummies when absent: the flags skip them
        scale if scale is not None else out_a, shift if shift is not None else out_a,
        out_a, out_b, out_center if fold else out_a,
        N, C, H * W, split.num_c_blocks, split.num_tiles, split.num_chunks, split.tiles_per_chunk,
        num_groups, C // num_groups, float(eps),
        *(scale.stride() if scale is not None else (0, 0)),
        *(shift.stride() if shift is not None else (0, 0)),
        CHANNELS_LAST=is_channels_last(x), HW_ALIGNED=hw_aligned(x),
        FOLD=fold, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        BLOCK_P=cfg.block_p, BLOCK_C=cfg.block_c, TILES_IN_FLIGHT=cfg.tiles_in_flight,
        BLOCK_T=block_t, BLOCK_GROUPS=block_groups, BLOCK_GS=block_gs, num_warps=cfg.stats_num_warps,
    )
    record_launch("gn_stats")
