"""What one benchmark run measures, in which order, and whether the next row still fits the time.

The whole matrix of issue 3 (presets x image sizes x batch sizes x five variants) costs far more
than the 8 minutes one GPU command may take when every row runs to completion (torch.compile alone
takes 25-60 s per model and shape, and eager fp32 of the paper preset at 2048^2 several seconds a
call). So a run is a plan, not a loop:

* rows run cheapest first (compile subset, then by pixels per call), so a budget cut loses the
  rows least likely to fit anyway, and the rows issue 4 is accepted on come first of all;
* torch.compile runs only on a declared subset (1024^2, batch 1, per preset) unless asked;
* each row's rep count is bounded in time (:func:`measure.rep_count`);
* before a row starts, its cost is estimated from its FLOPs and the rate that variant reached on
  the largest row measured so far in this run (priors before that); a row that would end after
  ``--budget-s``, or whose single call would take longer than ``--max-call-s``, is reported as
  skipped, with the estimate, instead of run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .measure import rep_count

#: The variants of one restore row, in the order they run (the fp32 reference first: the others'
#: PSNR is taken against its output).
VARIANTS: dict[str, str] = {
    "fp32": "eager fp32 reference",
    "bf16": "eager bf16 autocast, channels-last",
    "compile": "torch.compile {mode}, bf16 channels-last",
    "fast": "resflow_fast",
    "graph": "resflow_fast + CUDA graph",
    "fused": "resflow_fast + fused conv (auto) + CUDA graph",
}
#: Where the fused-conv variant runs: issue 7's acceptance cells (batch 1, 1024^2 and 2048^2, the
#: two models of anchors.md). Elsewhere it would only spend the time budget.
FUSED_CELLS = {"presets": ("bench19m", "paper"), "sizes": ((1024, 1024), (2048, 2048)), "batch": 1}
SECTIONS = ("kernels", *VARIANTS)  # what --only may name

DEFAULT_PRESETS = ("bench19m", "paper", "default")  # anchors.md's two models, and the shipped one
DEFAULT_SIZES = ("256", "1024", "2048", "3840x2160")
DEFAULT_BATCHES = (1, 8)
UHD = (2160, 3840)  # (H, W) of 3840x2160: measured for the default model only (issue 3)
COMPILE_SUBSET = {"size": (1024, 1024), "batch": 1}

# Priors for the cost estimates, used only until this run has measured the variant: deliberately
# slower than anchors.md's measurements (eager ~30-40 TFLOP/s, torch.compile 213-262 TFLOP/s at
# 1024^2), so an unknown row is over- rather than under-estimated. Floors: a small model at 256^2
# is bound by kernel launches, not FLOPs. Seconds per 4-step restore at batch 1.
PRIOR_TFLOPS = {"fp32": 25.0, "bf16": 25.0, "compile": 150.0, "fast": 100.0, "graph": 100.0, "fused": 100.0}
PRIOR_FLOOR_S = {"fp32": 0.010, "bf16": 0.015, "compile": 0.005, "fast": 0.008, "graph": 0.002, "fused": 0.002}
PRIOR_COMPILE_S = {"default": 60.0, "max-autotune": 300.0}  # anchors.md: 25-58 s; max-autotune > 4 min
KERNEL_SECTION_S = 45.0  # three torch.compiles of the norm formula and ~15 do_bench calls


@dataclass(frozen=True)
class Case:
    """One (model, image size, batch) cell of the matrix."""

    preset: str
    height: int
    width: int
    batch: int
    compile: bool  # whether its torch.compile variant runs

    @property
    def image(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.batch * self.height * self.width

    @property
    def label(self) -> str:
        return f"{self.preset} {self.image} b{self.batch}"


def parse_size(text: str) -> tuple[int, int]:
    """'1024' -> (1024, 1024); '3840x2160' (width x height, as images are named) -> (2160, 3840)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"image size must look like 1024 or 3840x2160, got {text!r}")
    width, height = values if len(values) == 2 else values * 2
    return height, width


def size_applies(preset: str, size: tuple[int, int]) -> bool:
    """3840x2160 is in the matrix for the default model only (issue 3); the others would need
    minutes of eager fp32 per call."""
    return size != UHD or preset == "default"


def build_plan(presets, sizes, batches, compile_mode: str) -> list[Case]:
    """The cells to run, cheapest first: the compile subset, then ascending pixels per call
    (a budget cut then drops the most expensive cells); ties keep the order of ``presets``."""
    cases = []
    for rank, preset in enumerate(presets):
        for size in sizes:
            if not size_applies(preset, size):
                continue
            for batch in batches:
                in_subset = size == COMPILE_SUBSET["size"] and batch == COMPILE_SUBSET["batch"]
                compiled = compile_mode == "all" or (compile_mode == "subset" and in_subset)
                cases.append((not in_subset, size[0] * size[1] * batch, rank,
                              Case(preset, size[0], size[1], batch, compiled)))
    return [c for *_, c in sorted(cases, key=lambda item: item[:3])]


def variants_for(case: Case, only: set[str], compile_mode: str) -> list[tuple[str, str | None]]:
    """(variant, reason it is skipped or None) for every restore variant of ``case`` in ``only``;
    ``compile_mode`` is --compile's value (subset, all or none)."""
    rows = []
    for variant in (v for v in VARIANTS if v in only):  # left out by --only: no row at all
        reason = None
        if variant == "compile" and not case.compile:
            reason = ("--compile none" if compile_mode == "none" else
                      "outside the compile subset (1024^2, batch 1; --compile all runs it)")
        if variant == "fused" and not (case.preset in FUSED_CELLS["presets"] and case.batch == FUSED_CELLS["batch"]
                                       and (case.height, case.width) in FUSED_CELLS["sizes"]):
            continue  # not a skipped row: outside FUSED_CELLS the variant is simply not part of the matrix
        rows.append((variant, reason))
    return rows


@dataclass
class RepPolicy:
    """How long one row may run (see :func:`measure.rep_count`)."""

    window_s: float = 2.0
    min_reps: int = 3
    max_reps: int = 5000
    cap_s: float = 10.0

    def reps(self, call_s: float) -> int:
        return rep_count(call_s, self.window_s, self.min_reps, self.max_reps, self.cap_s)


@dataclass
class CostModel:
    """Estimated seconds of a row before it runs, calibrated by what this run has measured."""

    policy: RepPolicy
    compile_mode: str = "default"
    cpu: bool = False
    rates: dict = field(default_factory=dict)  # variant -> (flops of the largest row measured, FLOP/s)
    compile_s: float | None = None  # longest torch.compile first call measured so far

    def call_s(self, variant: str, flops: float) -> float:
        measured = self.rates.get(variant)
        if measured:
            return flops / measured[1]
        if self.cpu:  # no priors for a CPU: the smoke runs tiny shapes under a generous budget
            return 0.0
        return max(PRIOR_FLOOR_S[variant], flops / (PRIOR_TFLOPS[variant] * 1e12))

    def first_call_extra_s(self, variant: str) -> float:
        """What a first call costs beyond a steady one: compilation (CUDA-graph capture runs the
        restore about three times, which :meth:`row_s` counts)."""
        if variant != "compile" or self.cpu:
            return 0.0
        return self.compile_s if self.compile_s is not None else PRIOR_COMPILE_S[self.compile_mode]

    def row_s(self, variant: str, flops: float) -> float:
        """First call, a warm-up call (none after an eager first call of seconds), the timed reps."""
        call = self.call_s(variant, flops)
        first = call * (3 if variant == "graph" else 1) + self.first_call_extra_s(variant)
        warmup = 0.0 if variant in ("fp32", "bf16") and call >= self.policy.window_s else call
        return first + warmup + call * self.policy.reps(call)

    def learn(self, variant: str, flops: float, median_s: float, first_call_s: float) -> None:
        """Keep the rate of the largest row (small rows are launch-bound and would make every
        larger row look slower than it is) and the longest compile."""
        if median_s > 0 and (variant not in self.rates or flops >= self.rates[variant][0]):
            self.rates[variant] = (flops, flops / median_s)
        if variant == "compile":
            self.compile_s = max(self.compile_s or 0.0, first_call_s)


class Budget:
    """Wall-clock seconds for the whole run, counted from construction."""

    def __init__(self, seconds: float, now=time.monotonic):
        self.seconds, self.now = seconds, now
        self.start = now()

    def elapsed(self) -> float:
        return self.now() - self.start

    def skip_reason(self, estimate_s: float) -> str | None:
        """Why a row estimated at ``estimate_s`` must not start, or None."""
        elapsed = self.elapsed()
        if elapsed >= self.seconds:
            return f"budget spent ({elapsed:.0f} s of --budget-s {self.seconds:.0f})"
        if elapsed + estimate_s > self.seconds:
            return (f"would end after the budget (at {elapsed:.0f} s, estimated {estimate_s:.0f} s more; "
                    f"--budget-s {self.seconds:.0f})")
        return None


def row_skip_reason(variant: str, flops: float, cost: CostModel, budget: Budget, max_call_s: float) -> str | None:
    """Why a restore row must not start: one call alone is too slow for this run, or the row
    would end after the budget. None when it may run."""
    call_s = cost.call_s(variant, flops)
    if call_s > max_call_s:
        return f"one call would take ~{call_s:.0f} s (> --max-call-s {max_call_s:g})"
    return budget.skip_reason(cost.row_s(variant, flops))
