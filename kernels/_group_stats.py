"""GroupNorm statistics from per-tile partials: the one merge every kernel here uses.

A kernel that reduces a tile of an activation writes, per (sample, tile, channel), the tile's
mean and M2 (sum of squared deviations from that mean), into an fp32 (N, num_tiles, C) buffer.
This module merges them into group statistics in two exact steps, with Chan's formula and never
``E[x^2] - E[x]^2``:

    per channel, over tiles:   mean_c = sum_t n_t mean_t / n,   M2_c = sum_t [M2_t + n_t (mean_t - mean_c)^2]
    per group, over channels:  mean_g = mean of mean_c,         M2_g = sum_c [M2_c + n (mean_c - mean_g)^2]

(every channel of a sample covers the same n = rows * cols pixels, so the second step weighs
channels equally). Sums of means are taken as deviations from one of them, so a large |mean|
does not round them away. The merge order is fixed: the statistics are deterministic.

Tiles cover a ``rows x cols`` pixel grid in row-major tile order: tile t spans rows
``[tr * tile_rows, ...)`` and columns ``[tc * tile_cols, ...)`` with ``tr, tc = divmod(t, tiles_per_row)``;
edge tiles are short. A run of consecutive pixels is the grid ``(1, H * W)`` with
``tile_rows = 1``.
"""
import torch

from ._runtime import next_power_of_2, record_launch, tl, triton


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
