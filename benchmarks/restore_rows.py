"""Rows of the 4-step restore: one per (model, image, batch, variant), all from one process.

The variants (docs/design/performance.md, "How to report"): the eager fp32 reference sampler, the
same under bf16 autocast with channels-last weights and input, that model under ``torch.compile``,
the fast path (:class:`resflow_fast.sampler.ResFlowSampler`), the fast path replayed as a CUDA graph,
and that with the fused conv's "auto" dispatch. On the CPU, the harness's smoke mode, the "fast
path" is ``ResFlowSampler`` on CPU tensors, which is the reference sampler, and there is no CUDA graph.

Every variant restores the same image with the same auxiliary noise, so each one's PSNR against
the fp32 reference's output measures only its numerics. Rows of one cell may run in different
phases of the plan (``plan.py``); a row that runs before its cell's fp32 row gets its reference
from one untimed eager fp32 call.
"""
from __future__ import annotations

import copy
import functools
import math
import traceback
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .measure import MiB, Clock, EnergyMeter, timed_window
from .plan import VARIANTS, Case, RepPolicy

STEPS = 4


def make_model(preset: str, device: torch.device):
    """A reference U-Net of ``preset`` whose zero-initialised output convs get small random weights,
    so the velocity (and any precision error in it) is not trivially zero."""
    from resflow_fast.reference.unet import build_unet

    torch.manual_seed(0)
    model = build_unet(preset)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
                m.reset_parameters()
                m.weight.mul_(0.2)
    return model.to(device).eval()


@functools.lru_cache(maxsize=None)
def restore_cost(preset: str, height: int, width: int) -> tuple[float, int]:
    """(FLOPs of one 4-step restore of one image, 2 per multiply-add; parameters of the model),
    counted on the meta device: no memory and no compute, so even 3840x2160 takes milliseconds."""
    from torch.utils.flop_counter import FlopCounterMode

    from resflow_fast.reference.unet import build_unet

    with torch.device("meta"):
        model = build_unet(preset)
        z = torch.empty(1, model.config.in_channels, height, width)
        t = torch.full((1,), 0.5)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(z, t)
    return STEPS * float(counter.get_total_flops()), sum(p.numel() for p in model.parameters())


def degraded_image(height: int, width: int, batch: int, device: torch.device) -> torch.Tensor:
    """A noisy (sigma 25/255) dead-leaves image in [-1, 1], (batch, 3, H, W), the same image in
    every slot: content does not change the timing, and drawing leaves at 4K takes seconds on a
    CPU, so the leaves are drawn at most 512 px a side and resized before the noise is added."""
    import numpy as np

    from resflow_fast.reference.data import to_model_range
    from resflow_fast.reference.degradations import dead_leaves

    rng = np.random.default_rng(0)
    clean = to_model_range(dead_leaves(min(height, 512), min(width, 512), rng))[None].to(device)
    clean = F.interpolate(clean, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)).to(device)
    return (clean + 2 * 25 / 255 * noise).clamp(-1, 1).expand(batch, -1, -1, -1).contiguous()


@dataclass
class CaseInputs:
    """What every variant of one case restores: the image and its (pre-drawn) auxiliary noise.
    The noise is drawn once, outside the timing: the samplers would draw it on the CPU every call
    (for device-independent seeds), which at 2048^2 batch 8 alone takes longer than a fast restore."""

    lq: torch.Tensor
    eps: torch.Tensor
    flops: float  # of the whole batch
    reference: torch.Tensor | None = None  # the fp32 reference's output, once it has run


class RestoreRunner:
    """Builds each variant's restore function and measures one row at a time. Models are built
    once per preset and kept (the largest, paper, is 0.5 GB in fp32); the inputs (and reference
    output) of the last :data:`CELLS_KEPT` cells, since the acceptance rows alternate between two."""

    CELLS_KEPT = 2

    def __init__(self, device: torch.device, clock: Clock, meter: EnergyMeter, policy: RepPolicy,
                 matmul_tflops: float, compile_mode: str = "default"):
        self.device, self.clock, self.meter, self.policy = device, clock, meter, policy
        self.matmul_tflops = matmul_tflops
        self.compile_mode = compile_mode
        self._models: dict[str, torch.nn.Module] = {}
        self._channels_last: dict[str, torch.nn.Module] = {}
        self._compiled: dict[str, torch.nn.Module] = {}
        self._cells: dict[Case, CaseInputs] = {}  # oldest first

    def cell(self, case: Case) -> CaseInputs:
        """The inputs of ``case``, made when they are not kept (dropping the oldest kept cell's)."""
        if case not in self._cells:
            while len(self._cells) >= self.CELLS_KEPT:
                del self._cells[next(iter(self._cells))]  # free before making the next
            self._cells[case] = self.inputs(case, restore_cost(case.preset, case.height, case.width)[0])
        return self._cells[case]

    def has_reference(self, case: Case) -> bool:
        """Whether the inputs of ``case`` are kept with their fp32 reference output."""
        return case in self._cells and self._cells[case].reference is not None

    def release(self) -> None:
        self._cells.clear()

    # -- inputs and models -----------------------------------------------------------------------
    def inputs(self, case: Case, flops_per_image: float) -> CaseInputs:
        from resflow_fast.reference.sampler import auxiliary_noise

        lq = degraded_image(case.height, case.width, case.batch, self.device)
        eps = auxiliary_noise(tuple(lq.shape), seed=0).to(self.device)
        return CaseInputs(lq, eps, flops_per_image * case.batch)

    def model(self, preset: str):
        if preset not in self._models:
            self._models[preset] = make_model(preset, self.device)
        return self._models[preset]

    def channels_last_model(self, preset: str):
        """A channels-last copy of the model for the bf16 and compiled variants (a copy, so the
        fast path still sees the reference's own NCHW parameters)."""
        if preset not in self._channels_last:
            self._channels_last[preset] = copy.deepcopy(self.model(preset)).to(memory_format=torch.channels_last)
        return self._channels_last[preset]

    def compiled_model(self, preset: str):
        """One torch.compile per preset; it specialises per input shape (``dynamic=False``: a
        dynamic-shape graph would be slower than what a user compiling for one size gets)."""
        if preset not in self._compiled:
            import torch._dynamo.config as dynamo_config

            # every (size, batch) is a recompile of the same forward: allow all of the matrix's
            # (the setting was called cache_size_limit before torch 2.6)
            limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 64))
            self._compiled[preset] = torch.compile(self.channels_last_model(preset), mode=self.compile_mode,
                                                   dynamic=False)
        return self._compiled[preset]

    # -- the variants ----------------------------------------------------------------------------
    def restore_fn(self, variant: str, case: Case, inputs: CaseInputs):
        """(fn, sampler or None): a no-argument function doing one whole 4-step restore."""
        from resflow_fast.reference.sampler import euler_sample
        from resflow_fast.sampler import ResFlowSampler

        lq, eps = inputs.lq, inputs.eps
        if variant == "fp32":
            model = self.model(case.preset)
            return (lambda: euler_sample(model, lq, steps=STEPS, eps=eps)), None
        if variant in ("bf16", "compile"):
            model = self.channels_last_model(case.preset) if variant == "bf16" else self.compiled_model(case.preset)
            lq_cl = lq.contiguous(memory_format=torch.channels_last)

            def autocast_restore():
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    return euler_sample(model, lq_cl, steps=STEPS, eps=eps)

            return autocast_restore, None
        if variant in ("graph", "fused") and not self.clock.cuda:
            raise _Skip("CUDA graphs need a CUDA device")
        # "fused": each ResBlock conv fused where conv_dispatch measured it faster on this card
        # (measured during the first call and the warm-up, before the graph is captured)
        sampler = ResFlowSampler(self.model(case.preset), steps=STEPS, cuda_graphs=variant in ("graph", "fused"),
                                 fused_conv="auto" if variant == "fused" else "off")
        return (lambda: sampler(lq, eps=eps)), sampler

    # -- one row ---------------------------------------------------------------------------------
    def row(self, case: Case, variant: str, with_reference: bool = False) -> dict:
        """Measure one row; ``with_reference``: first make the cell's fp32 reference output with
        one untimed eager call when it has none (for this row's PSNR)."""
        row = base_row(case, variant, self.compile_mode)
        try:
            inputs = self.cell(case)
            if with_reference and variant != "fp32" and inputs.reference is None:
                ref_fn, _ = self.restore_fn("fp32", case, inputs)
                out, row["reference_call_s"] = self.clock.first_call(ref_fn)
                inputs.reference = out.float()
                del out
            fn, sampler = self.restore_fn(variant, case, inputs)
            baseline = self._fresh_memory_stats()
            out, first_s = self.clock.first_call(fn)
            if variant in ("fp32", "bf16") and first_s >= self.policy.window_s:
                probe_s = first_s  # an eager call of seconds was its own warm-up: save a call of seconds
            else:  # a warm-up call (a compiled or captured first call says nothing of the steady time)
                probe_s = self.clock.call_ms(fn) / 1000
            window = timed_window(fn, self.clock, self.meter, self.policy.reps(probe_s))
            row.update(self._metrics(case, inputs, window, first_s))
            row.update(self._peak_memory(case, inputs, baseline))
            row["psnr_vs_ref"] = self._psnr(variant, out, inputs)
            row["max_abs_err_vs_ref"] = self._max_abs_error(variant, out, inputs)
            if sampler is not None and sampler.cuda_graphs:
                row["graph_pool_mib"] = sum(sampler.graph_memory_bytes().values()) / MiB
                sampler.clear_graphs()
        except _Skip as why:
            row.update(status="skipped", note=str(why))
        except Exception as e:  # noqa: BLE001 - recorded in the row (out of memory, say); the others still run
            traceback.print_exc()
            row.update(status="error", note=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
            if self.clock.cuda:
                torch.cuda.empty_cache()  # an out-of-memory must not take the next rows with it
        return row

    def _metrics(self, case: Case, inputs: CaseInputs, window: dict, first_s: float) -> dict:
        median_s = window["median_ms"] / 1000
        tflops = inputs.flops / median_s / 1e12
        joules = window["joules_per_call"]
        return {
            "status": "ok", "median_ms": window["median_ms"], "p90_ms": window["p90_ms"], "reps": window["reps"],
            "window_s": window["window_s"], "first_call_s": first_s, "images_per_s": case.batch / median_s,
            "tflops": tflops, "pct_matmul": 100 * tflops / self.matmul_tflops,
            "joules_per_image": None if joules is None else joules / case.batch,
        }

    def _peak_memory(self, case: Case, inputs: CaseInputs, baseline: tuple[int, int] | None) -> dict:
        """The row's peak as if it were alone on the card: the peak over the row, less all that was
        resident before it (every preset's models, the cell's inputs), plus what this restore
        itself needs resident (its model's weights and its input and noise)."""
        if baseline is None:
            return {}
        own = sum(p.numel() * p.element_size() for p in self.model(case.preset).parameters())
        own += inputs.lq.nbytes + inputs.eps.nbytes
        allocated, reserved = baseline
        return {"peak_alloc_mib": (torch.cuda.max_memory_allocated(self.device) - allocated + own) / MiB,
                "peak_reserved_mib": (torch.cuda.max_memory_reserved(self.device) - reserved + own) / MiB}

    def _psnr(self, variant: str, out: torch.Tensor, inputs: CaseInputs) -> float | None:
        from resflow_fast.reference.metrics import psnr

        if variant == "fp32":  # the reference: kept for the other rows, not compared with itself
            inputs.reference = out.float()
            return None
        if inputs.reference is None:
            return None
        value = psnr(out.float(), inputs.reference)
        return value if math.isfinite(value) else None

    @staticmethod
    def _max_abs_error(variant: str, out: torch.Tensor, inputs: CaseInputs) -> float | None:
        """Largest |out - fp32 reference|; None for the reference itself or where none was made.
        Beside the PSNR, which cannot tell identical outputs (infinite PSNR) from a missing reference."""
        if variant == "fp32" or inputs.reference is None:
            return None
        return float((out.float() - inputs.reference).abs().max())

    def _fresh_memory_stats(self) -> tuple[int, int] | None:
        """Empty the caching allocator and reset its peaks; (allocated, reserved) bytes now, or
        None on the CPU. (No gc.collect: nothing here holds tensors in reference cycles, and it
        costs 0.1-0.3 s a row.)"""
        if not self.clock.cuda:
            return None
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device)


class _Skip(Exception):
    """A variant that cannot run here (not an error: reported as skipped, with the reason)."""


def base_row(case: Case, variant: str, compile_mode: str = "default") -> dict:
    """The identifying columns every restore row has, whatever its status."""
    return {"preset": case.preset, "image": case.image, "batch": case.batch, "variant": variant,
            "label": VARIANTS[variant].format(mode=compile_mode)}


def skipped_row(case: Case, variant: str, reason: str, compile_mode: str = "default") -> dict:
    return {**base_row(case, variant, compile_mode), "status": "skipped", "note": reason}


def compare_with_compile(rows: list[dict]) -> None:
    """Note each fast-path row's time as a multiple of torch.compile's in the same case
    (the fast path is accepted at <= 0.75x: docs/design/performance.md)."""
    compiled = next((r for r in rows if r["variant"] == "compile" and r.get("status") == "ok"), None)
    if compiled is None:
        return
    for r in rows:
        if r["variant"] in ("fast", "graph", "fused") and r.get("status") == "ok":
            r["ratio_to_compile"] = r["median_ms"] / compiled["median_ms"]
