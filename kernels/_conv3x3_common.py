"""The implicit-GEMM 3x3 convolution shared by :mod:`kernels.fused_conv3x3` and
:mod:`kernels.fused_conv3x3_euler`: tile decoding, the K loop with the activation prologue, the
launch plan, the weight layout and the checks both ops make.

Each op's kernel is ``conv_tile`` + ``conv3x3_accumulate`` + its own epilogue. The GEMM:
M = the output pixels of one sample, N = C_out, K = 9 taps x C_in, with the prologue

    a = SiLU(A[n, c] * x + B[n, c]),   a = 0 for taps outside the image                      (1)
    acc[n, o, i, j] = sum_{c, kh, kw} W[o, c, kh, kw] a[n, c, s*i - 1 + kh, s*j - 1 + kw]          (2)

(stride s in {1, 2}, padding 1, so H_out = ceil(H / s)), fp32 accumulation. Padding is applied to
``a``, not to x: a padded tap contributes 0, never ``silu(B)`` (docs/design/architecture.md,
"Numerics contract"). A program owns a [BLOCK_M pixels, BLOCK_N channels] output tile and walks K
in blocks of BLOCK_K input channels, in one of two ways:

* the halo (stride 1 with a prologue): the pixel tile is a TILE_H x TILE_W box; per channel block
  its (TILE_H + 2) x (TILE_W + 2) input halo is loaded and activated once, and the 9 taps gather
  their shifted windows from it, so each input element is activated once per channel block;
* per tap (stride 2, or no prologue): each (tap, channel block) loads the input tile of that tap,
  masked where it falls in the padding, and activates it when there is a prologue.

The TMA variant (``RESFLOW_CONV_TMA=1``, stride 1, see :func:`tma_eligible`) loads the weight
tiles with a tensor descriptor over the weight viewed as (tap, C_in, C_out); without a prologue it
also loads each tap's input box with one from the NHWC input (out-of-image rows and columns and
channels past C_in arrive as zeros) and hands it to the dot as it arrives, while with a prologue
the input goes through the halo, which the activation needs in registers anyway.

Layouts: activations dense NHWC (``torch.channels_last``); weights repacked once to
(9 * C_in, C_out), row ``(kh * 3 + kw) * C_in + c``, in x's dtype (:func:`pack_conv3x3_weight`).
Numerics: fp32 inputs use full-precision products ("ieee", not TF32); with bf16/fp16 inputs the
activation (1) is rounded to x's dtype before the dot, one more rounding than the fp32 twin has.
Sizes are runtime arguments excluded from Triton's integer specialisation, so a new image size
never recompiles; block sizes depend on the channel counts and dtype only.
"""
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ._runtime import cdiv, check_shape, check_tensor, next_power_of_2, silu, tl, triton

try:  # host-side tensor descriptors (TMA on Hopper; the interpreter emulates them)
    from triton.tools.tensor_descriptor import TensorDescriptor
except Exception:  # noqa: BLE001 - an old Triton, or none: the pointer path only
    TensorDescriptor = None

# Pixel indices inside the kernel are int32 (a 32768^2 image); element offsets are int64.
MAX_PIXELS = 2**30
MAX_PROGRAMS = 2**31 - 1  # CUDA grid axis 0
#: ``RESFLOW_CONV_TMA=1`` runs stride-1 convs through the TMA variant wherever it can (see
#: :func:`tma_eligible`); off by default.
ENV_TMA = "RESFLOW_CONV_TMA"
# tl.dot needs every block dimension >= 16
_MIN_BLOCK = 16


# ------------------------------------------------------------------------------------------------
# Triton helpers (inlined into each op's kernel)
# ------------------------------------------------------------------------------------------------
@triton.jit
def accumulate_dot(acc, a, b, IEEE_FP32: tl.constexpr, UPCAST_BF16: tl.constexpr):
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


@triton.jit
def conv_tile(pid, num_m_tiles, num_n_tiles, tiles_w, H_out, W_out,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILED_2D: tl.constexpr,
              TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """The output tile of program ``pid``: (sample, pixel tile, channel tile, first row and column
    of a 2-D tile, rows oh, columns ow and in-sample indices p of its pixels, which of them lie
    inside the image, its output channels).

    A 1-D grid (a 2048^2 image has more tiles than the 65535 allowed on grid axes 1 and 2); the
    channel tiles of one pixel tile are neighbours, so they share its input rows in L2."""
    n_tile = pid % num_n_tiles
    rest = pid // num_n_tiles
    m_tile = rest % num_m_tiles
    n32 = rest // num_m_tiles
    if TILED_2D:
        tile_row = m_tile // tiles_w
        oh_first = tile_row * TILE_H
        ow_first = (m_tile - tile_row * tiles_w) * TILE_W
        r = tl.arange(0, BLOCK_M)
        oh = oh_first + r // TILE_W
        ow = ow_first + r % TILE_W
        p_mask = (oh < H_out) & (ow < W_out)
        p = oh * W_out + ow
    else:
        p = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
        p_mask = p < H_out * W_out
        oh = p // W_out
        ow = p - oh * W_out
        oh_first = 0
        ow_first = 0
    co = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    return n32, m_tile, n_tile, oh_first, ow_first, oh, ow, p, p_mask, co


@triton.jit
def conv3x3_accumulate(x_ptr, w_ptr, x_desc, w_desc, pro_a_ptr, pro_b_ptr,
                       n32, oh_first, ow_first, oh, ow, p_mask, n_tile, co, co_mask,
                       C_in, C_out, H, W,
                       STRIDE: tl.constexpr, HAS_PROLOGUE: tl.constexpr, USE_TMA: tl.constexpr,
                       HALO: tl.constexpr, IEEE_FP32: tl.constexpr, UPCAST_BF16: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       TILE_H: tl.constexpr, TILE_W: tl.constexpr, HALO_M: tl.constexpr):
    """The fp32 [BLOCK_M, BLOCK_N] accumulator of (2) for one output tile, prologue (1) applied."""
    if HALO:
        acc = _accumulate_from_halo(x_ptr, w_ptr, w_desc, pro_a_ptr, pro_b_ptr, n32, oh_first, ow_first,
                                    n_tile, co, co_mask, C_in, C_out, H, W, USE_TMA, IEEE_FP32, UPCAST_BF16,
                                    BLOCK_M, BLOCK_N, BLOCK_K, TILE_H, TILE_W, HALO_M)
    else:
        acc = _accumulate_per_tap(x_ptr, w_ptr, x_desc, w_desc, pro_a_ptr, pro_b_ptr, n32, oh_first, ow_first,
                                  oh, ow, p_mask, n_tile, co, co_mask, C_in, C_out, H, W, STRIDE, HAS_PROLOGUE,
                                  USE_TMA, IEEE_FP32, UPCAST_BF16, BLOCK_M, BLOCK_N, BLOCK_K)
    return acc


@triton.jit
def _weight_tile(w_ptr, w_desc, tap, k_first, ci, ci_mask, n_tile, co, co_mask, C_in, C_out,
                 USE_TMA: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The [BLOCK_K, BLOCK_N] weight tile of one tap and channel block (zeros past C_in, C_out)."""
    if USE_TMA:
        w = w_desc.load([tap, k_first, n_tile * BLOCK_N]).reshape(BLOCK_K, BLOCK_N)
    else:
        w = tl.load(w_ptr + (tap * C_in + ci)[:, None] * C_out + co[None, :],
                    mask=ci_mask[:, None] & co_mask[None, :], other=0.0)
    return w


@triton.jit
def _accumulate_per_tap(x_ptr, w_ptr, x_desc, w_desc, pro_a_ptr, pro_b_ptr,
                        n32, oh_first, ow_first, oh, ow, p_mask, n_tile, co, co_mask, C_in, C_out, H, W,
                        STRIDE: tl.constexpr, HAS_PROLOGUE: tl.constexpr, USE_TMA: tl.constexpr,
                        IEEE_FP32: tl.constexpr, UPCAST_BF16: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(2) tap by tap: each (tap, channel block) loads the input tile that tap reads (and activates
    it when there is a prologue). Without a prologue the TMA variant hands the descriptor load to
    the dot as it arrives; with one (stride 2 only: stride 1 goes through the halo), the tile must
    pass through registers for the activation."""
    n = n32.to(tl.int64)  # int64: N * H * W * C can pass 2**31
    ih0 = oh * STRIDE - 1  # input row of tap kh = 0 (padding 1)
    iw0 = ow * STRIDE - 1
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
        if USE_TMA:
            # out-of-image rows and columns and channels past C_in arrive as zeros
            a = x_desc.load([n32, oh_first + kh - 1, ow_first + kw - 1, k_first]).reshape(BLOCK_M, BLOCK_K)
        else:
            ih = ih0 + kh
            iw = iw0 + kw
            a_mask = (p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & ci_mask[None, :]
            pixel = (ih * W + iw).to(tl.int64)  # negative in the padding: masked, never dereferenced
            a = tl.load(x_sample + pixel[:, None] * C_in + ci[None, :], mask=a_mask, other=0.0)
        if HAS_PROLOGUE:  # never with USE_TMA (stride 1 with a prologue takes the halo path)
            scale = tl.load(pro_a_ptr + n * C_in + ci, mask=ci_mask, other=0.0)
            offset = tl.load(pro_b_ptr + n * C_in + ci, mask=ci_mask, other=0.0)
            t = silu(a.to(tl.float32) * scale[None, :] + offset[None, :])
            # zero padding after the activation: a padded tap contributes 0, not silu(B)
            a = tl.where(a_mask, t, 0.0).to(x_ptr.dtype.element_ty)
        w = _weight_tile(w_ptr, w_desc, tap, k_first, ci, ci_mask, n_tile, co, co_mask, C_in, C_out,
                         USE_TMA, BLOCK_N, BLOCK_K)
        acc = accumulate_dot(acc, a, w, IEEE_FP32, UPCAST_BF16)
    return acc


@triton.jit
def _accumulate_from_halo(x_ptr, w_ptr, w_desc, pro_a_ptr, pro_b_ptr, n32, oh_first, ow_first,
                          n_tile, co, co_mask, C_in, C_out, H, W,
                          USE_TMA: tl.constexpr, IEEE_FP32: tl.constexpr, UPCAST_BF16: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          TILE_H: tl.constexpr, TILE_W: tl.constexpr, HALO_M: tl.constexpr):
    """(1)-(2) for a stride-1 TILE_H x TILE_W pixel tile with a prologue, activating each input
    element once per channel block: the (TILE_H + 2) x (TILE_W + 2) input halo of the tile is loaded
    and activated once (padding zeroed after the activation), and each of the 9 taps gathers its
    shifted [BLOCK_M, BLOCK_K] window from it. HALO_M >= (TILE_H + 2) * (TILE_W + 2), a power of two."""
    HALO_W: tl.constexpr = TILE_W + 2
    n = n32.to(tl.int64)
    x_sample = x_ptr + n * H * W * C_in
    k_range = tl.arange(0, BLOCK_K)
    h = tl.arange(0, HALO_M)  # halo row-major: row h // HALO_W, column h % HALO_W
    ih = oh_first - 1 + h // HALO_W
    iw = ow_first - 1 + h % HALO_W
    h_inside = (h < (TILE_H + 2) * HALO_W) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    pixel = (ih * W + iw).to(tl.int64)  # negative in the padding: masked, never dereferenced
    r = tl.arange(0, BLOCK_M)
    tap0 = (r // TILE_W) * HALO_W + r % TILE_W  # halo element under tap (0, 0) of output pixel r
    broadcast_k = tl.zeros([1, BLOCK_K], dtype=tl.int32)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_first in range(0, C_in, BLOCK_K):
        ci = k_first + k_range
        ci_mask = ci < C_in
        h_mask = h_inside[:, None] & ci_mask[None, :]
        raw = tl.load(x_sample + pixel[:, None] * C_in + ci[None, :], mask=h_mask, other=0.0)
        scale = tl.load(pro_a_ptr + n * C_in + ci, mask=ci_mask, other=0.0)
        offset = tl.load(pro_b_ptr + n * C_in + ci, mask=ci_mask, other=0.0)
        t = silu(raw.to(tl.float32) * scale[None, :] + offset[None, :])
        halo = tl.where(h_mask, t, 0.0).to(x_ptr.dtype.element_ty)  # zero padding after the activation
        # a runtime loop (not unrolled): the compiler pipelines its weight loads with a few buffers
        # rather than holding all nine taps' weight tiles per stage
        for tap in range(9):
            a = tl.gather(halo, (tap0 + (tap // 3) * HALO_W + tap % 3)[:, None] + broadcast_k, axis=0)
            w = _weight_tile(w_ptr, w_desc, tap, k_first, ci, ci_mask, n_tile, co, co_mask, C_in, C_out,
                             USE_TMA, BLOCK_N, BLOCK_K)
            acc = accumulate_dot(acc, a, w, IEEE_FP32, UPCAST_BF16)
    return acc


# ------------------------------------------------------------------------------------------------
# Launch configuration and plan
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conv3x3Config:
    """Tile sizes of the GEMM. Depends on the channel counts and dtype, never on H or W."""

    block_m: int  # output pixels per tile
    block_n: int  # output channels per tile
    block_k: int  # input channels per K step
    num_warps: int = 4
    num_stages: int = 2
    tile_w: int = 16  # 2-D tiles: (block_m // tile_w) rows x tile_w columns


def pick_config(c_in: int, c_out: int, dtype: torch.dtype, on_gpu: bool) -> Conv3x3Config:
    """One small config under the interpreter (numpy cost grows with the tile); on a GPU 128-pixel
    tiles (8 x 16 as boxes) as wide as C_out allows, up to 128 channels, or 256 where C_out >= 256
    (then one tile covers a 256-channel layer, so its input is activated once, not once per
    channel tile), and K steps of up to 32 channels, with 3 pipeline stages, 2 for 256-wide tiles:
    at most 48 KiB of shared memory for the pipelined tiles, within every GPU Triton supports.
    fp32 ("ieee" dot, no tensor cores) uses half-size tiles to stay within the same budget.
    A heuristic, not autotuning: autotune's timing runs would repeat an in-place residual add.
    """
    if not on_gpu:
        return Conv3x3Config(block_m=32, block_n=16, block_k=16, num_warps=4, num_stages=1, tile_w=8)
    block_n = min(max(next_power_of_2(c_out), _MIN_BLOCK), 256 if c_out >= 256 else 128)
    block_k = min(max(next_power_of_2(c_in), _MIN_BLOCK), 32)
    if dtype == torch.float32:
        return Conv3x3Config(block_m=64, block_n=min(block_n, 64), block_k=block_k, num_warps=4, num_stages=2)
    num_warps = 8 if block_n >= 128 else 4
    return Conv3x3Config(block_m=128, block_n=block_n, block_k=block_k, num_warps=num_warps,
                         num_stages=2 if block_n > 128 else 3)


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


@dataclass(frozen=True)
class ConvPlan:
    """How one launch covers the output: the config, the pixel tiling, the grid, and (TMA) the
    tensor descriptors. ``tile_grid`` describes the pixel tiles for the statistics merge
    (:mod:`kernels._group_stats`)."""

    cfg: Conv3x3Config
    use_tma: bool
    halo: bool  # stride 1 with a prologue: activate each input element once per channel block
    num_m_tiles: int
    num_n_tiles: int
    tiles_w: int
    tile_grid: tuple  # (rows, cols, tile rows, tile cols, tiles per row)
    x_desc: object
    w_desc: object

    @property
    def tiled_2d(self) -> bool:
        """Pixel tiles are TILE_H x TILE_W boxes (the TMA variant and the halo need them)."""
        return self.use_tma or self.halo

    @property
    def tile_h(self) -> int:
        return self.cfg.block_m // self.cfg.tile_w

    @property
    def halo_m(self) -> int:
        """Elements of the tile's input halo, rounded up to a power of two (a Triton block size)."""
        return next_power_of_2((self.tile_h + 2) * (self.cfg.tile_w + 2))

    def programs(self, batch: int) -> int:
        return batch * self.num_m_tiles * self.num_n_tiles

    def kernel_flags(self, x: torch.Tensor) -> dict:
        """The compile-time arguments every conv kernel takes from the plan."""
        cfg = self.cfg
        return dict(IEEE_FP32=x.dtype == torch.float32, UPCAST_BF16=x.dtype == torch.bfloat16 and not x.is_cuda,
                    BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, USE_TMA=self.use_tma,
                    HALO=self.halo, TILED_2D=self.tiled_2d, TILE_H=self.tile_h, TILE_W=cfg.tile_w,
                    HALO_M=self.halo_m, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def plan_launch(x: torch.Tensor, packed_weight: torch.Tensor, stride: int, H_out: int, W_out: int,
                has_prologue: bool) -> ConvPlan:
    """The launch plan for dense-NHWC ``x`` and a packed weight; raises ValueError when the grid
    would pass CUDA's limit."""
    N, C_in, H, W = x.shape
    C_out = packed_weight.shape[1]
    cfg = pick_config(C_in, C_out, x.dtype, on_gpu=x.is_cuda)
    use_tma = tma_requested() and tma_eligible(x, packed_weight, stride)
    halo = stride == 1 and has_prologue
    tile_h = cfg.block_m // cfg.tile_w
    if use_tma or halo:
        tiles_w = cdiv(W_out, cfg.tile_w)
        num_m_tiles = cdiv(H_out, tile_h) * tiles_w
        tile_grid = (H_out, W_out, tile_h, cfg.tile_w, tiles_w)
    else:
        tiles_w = 1
        num_m_tiles = cdiv(H_out * W_out, cfg.block_m)
        tile_grid = (1, H_out * W_out, 1, cfg.block_m, num_m_tiles)  # 1-D tiles along the pixel row
    if use_tma:
        # TMA boxes: the NHWC input (N, H, W, C_in) and the weight as (tap, C_in, C_out); boxes that
        # reach past an edge (the padding, the K and C_out tails) are filled with zeros.
        # Strides from the shape, not x.stride(): a size-1 H or W may carry any stride in torch.
        x_desc = TensorDescriptor(x, [N, H, W, C_in], [H * W * C_in, W * C_in, C_in, 1],
                                  [1, tile_h, cfg.tile_w, cfg.block_k])
        w_desc = TensorDescriptor(packed_weight, [9, C_in, C_out], [C_in * C_out, C_out, 1],
                                  [1, cfg.block_k, cfg.block_n])
    else:
        x_desc, w_desc = x, packed_weight  # unused without USE_TMA
    plan = ConvPlan(cfg, use_tma, halo, num_m_tiles, cdiv(C_out, cfg.block_n), tiles_w, tile_grid, x_desc, w_desc)
    if plan.programs(N) > MAX_PROGRAMS:
        raise ValueError(f"fused_conv3x3 would launch {plan.programs(N)} programs; at most {MAX_PROGRAMS}")
    return plan


# ------------------------------------------------------------------------------------------------
# Weights, layouts, checks and the twins' conv
# ------------------------------------------------------------------------------------------------
def pack_conv3x3_weight(weight: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Repack a PyTorch conv weight (C_out, C_in, 3, 3) to the kernel's (9 * C_in, C_out) layout,
    row ``(kh * 3 + kw) * C_in + c``, contiguous, in ``dtype`` (default: the weight's). Do it once
    per weight and pass the result as ``weight`` to the conv ops (dtype = x's dtype)."""
    check_tensor("weight", weight, ndim=4)
    if tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"weight must have shape (C_out, C_in, 3, 3), got {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    return weight.detach().permute(2, 3, 1, 0).reshape(9 * c_in, c_out).to(dtype or weight.dtype).contiguous()


def unpack_conv3x3_weight(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_conv3x3_weight`: the (C_out, C_in, 3, 3) view of a packed weight."""
    c_out = packed.shape[1]
    return packed.reshape(3, 3, packed.shape[0] // 9, c_out).permute(3, 2, 0, 1)


def channels_last(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` itself when its memory is dense NHWC, else a channels-last copy (the only layout the
    kernels address; a size-1 H*W or C makes NCHW and NHWC the same memory, and that is fine)."""
    if t is None or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous(memory_format=torch.channels_last)


def output_shape(x: torch.Tensor, c_out: int, stride: int) -> tuple:
    N, _, H, W = x.shape
    return (N, c_out, (H - 1) // stride + 1, (W - 1) // stride + 1)  # kernel 3, padding 1


def shares_memory(a: torch.Tensor, b: Optional[torch.Tensor]) -> bool:
    return b is not None and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def validate_conv(x, weight, bias, stride, prologue):
    """The checks of the conv itself, (1)-(2), shared by both ops. Returns (C_out, A, B)."""
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
    return C_out, pro_a, pro_b


def check_finite_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite Python number, got {value!r}")


def conv3x3_fp32(x, weight, bias, stride, pro_a, pro_b) -> torch.Tensor:
    """The twins' (1)-(2) in fp32 through F.silu / F.conv2d, bias included; ``weight`` is
    (C_out, C_in, 3, 3). F.conv2d pads the activation, i.e. after (1)."""
    a = x.float()
    if pro_a is not None:
        a = F.silu(pro_a.float()[:, :, None, None] * a + pro_b.float()[:, :, None, None])
    return F.conv2d(a, weight.float(), bias.float() if bias is not None else None, stride=stride, padding=1)


def as_4d_weight(weight: torch.Tensor) -> torch.Tensor:
    """A (C_out, C_in, 3, 3) weight, from either accepted form."""
    return unpack_conv3x3_weight(weight) if weight.ndim == 2 else weight
