"""What one benchmark run measures, in which order, and whether the next row still fits the time.

The whole matrix (presets x image sizes x batch sizes x the restore variants, the kernels, the
per-layer conv table) costs far more than one GPU command may take when every row runs to
completion: torch.compile alone takes 25-60 s per model and shape, and eager fp32 of the paper
preset at 2048^2 seconds a call. So a run is a plan, not a loop:

* rows run in phases (:data:`PHASES`): first the acceptance rows (the kernels, then the
  bench19m and paper U-Nets at 1024^2, batch 1, as torch.compile, the fast path, the fast path as
  a CUDA graph and the fused-conv "auto" path), then the per-layer conv table (``bench.py``), then
  the same four variants at 2048^2, then the rest of the matrix, cheapest cell first; a run cut
  short loses the rows that matter least;
* torch.compile runs only on a declared subset (:func:`in_compile_subset`) unless asked;
* each row's rep count is bounded in time (:func:`measure.rep_count`);
* before a row starts, :class:`CostModel` estimates what it costs: its first call (the
  compilation and set-up that call really pays: torch.compile, the Triton kernels' JIT, the
  "auto" conv dispatch timing both paths, CUDA-graph capture), a warm-up call and the timed
  calls. A row that would end after the budget, or whose single call would take longer than
  ``--max-call-s``, is reported as skipped, with the reason and the estimate, instead of run.
  The estimates start from priors and are recalibrated by every row this run measures.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .measure import rep_count

#: The variants of one restore row, in the order they run within a cell (the fp32 reference
#: first: the others' PSNR is taken against its output when it has run).
VARIANTS: dict[str, str] = {
    "fp32": "eager fp32 reference",
    "bf16": "eager bf16 autocast, channels-last",
    "compile": "torch.compile {mode}, bf16 channels-last",
    "fast": "resflow_fast",
    "graph": "resflow_fast + CUDA graph",
    "fused": "resflow_fast + fused conv (auto) + CUDA graph",
}
#: Where the fused-conv variant runs: the cells the fused conv is accepted on (batch 1, 1024^2 and
#: 2048^2, the two models of docs/design/performance.md). Elsewhere it would only spend the time.
FUSED_CELLS = {"presets": ("bench19m", "paper"), "sizes": ((1024, 1024), (2048, 2048)), "batch": 1}
SECTIONS = ("kernels", *VARIANTS)  # what --only may name

DEFAULT_PRESETS = ("bench19m", "paper", "default")  # the two models of the baselines, and the shipped one
DEFAULT_SIZES = ("256", "1024", "2048", "3840x2160")
DEFAULT_BATCHES = (1, 8)
UHD = (2160, 3840)  # (H, W) of 3840x2160: measured for the default model only

#: The rows the fast path is accepted on (docs/design/performance.md, "Baselines"): these two
#: models, batch 1, these variants against torch.compile, at 1024^2 first and then at 2048^2.
ACCEPTANCE_PRESETS = ("bench19m", "paper")
ACCEPTANCE_VARIANTS = ("compile", "fast", "graph", "fused")
#: The phases of the restore rows, in running order; ``--acceptance-only`` runs the first alone
#: (the kernels run before it, the per-layer conv table between it and the next).
PHASES = ("acceptance", "acceptance-2048", "matrix")
PHASE_SIZES = {"acceptance": (1024, 1024), "acceptance-2048": (2048, 2048)}

# Steady-call priors, used only until this run has measured the variant: slower than the
# baselines of docs/design/performance.md (eager ~30-40 TFLOP/s, torch.compile 213-262 TFLOP/s at
# 1024^2), so an unknown row is over- rather than under-estimated. Floors: a small model at 256^2
# is bound by kernel launches, not FLOPs. Seconds per 4-step restore at batch 1.
PRIOR_TFLOPS = {"fp32": 25.0, "bf16": 25.0, "compile": 150.0, "fast": 100.0, "graph": 100.0, "fused": 100.0}
PRIOR_FLOOR_S = {"fp32": 0.010, "bf16": 0.015, "compile": 0.005, "fast": 0.008, "graph": 0.002, "fused": 0.002}

#: What a first call compiles or sets up that a steady call does not, in seconds, before this run
#: has measured any: (the first time in the process, the first time for another model, the same
#: model again at another size or batch). torch.compile compiles every model and shape anew
#: (docs/design/performance.md: 25-58 s at 1024^2); Triton compiles a kernel once per
#: specialisation, and sizes are runtime arguments, so another model compiles only what its channel
#: counts add and another size nothing; cuDNN picks a plan for each new conv shape.
FIRST_CALL_PRIOR_S = {
    "eager": (3.0, 1.0, 0.5),  # cuDNN / cuBLAS handles, the plan choice for each new conv shape
    "compile": (60.0, 60.0, 60.0),  # dynamo + inductor, per model and shape ("default" mode)
    "compile-max-autotune": (300.0, 300.0, 300.0),  # its tuning alone took more than 4 minutes
    "fast": (30.0, 10.0, 1.0),  # the fast U-Net's Triton kernels: norms, statistics, Euler step
    "fused": (90.0, 45.0, 2.0),  # the fused conv's Triton variants (prologue, statistics, residual, Euler)
}
#: Which of those a variant's first call pays: a CUDA graph runs the fast path's kernels, the
#: fused path those and the fused conv's.
FIRST_CALL_PARTS = {"fp32": ("eager",), "bf16": ("eager",), "compile": ("compile",), "fast": ("fast",),
                    "graph": ("fast",), "fused": ("fast", "fused")}
#: Whole restores a first call runs besides its own: CUDA-graph capture warms up twice on a side
#: stream and then records a third; "auto" first times both conv paths on every distinct conv
#: shape, WARMUP_CALLS + TIMED_CALLS (resflow_fast/conv_dispatch.py: 3 + 10) calls each, which is
#: at most 2 x 13 forwards of the network, i.e. 6.5 four-step restores.
EXTRA_RESTORES = {"fp32": 0.0, "bf16": 0.0, "compile": 0.0, "fast": 0.0, "graph": 3.0, "fused": 3.0 + 6.5}
#: A kernel section's seconds before one of its op has been measured: (first, later). The norm's
#: first section compiles its Triton kernels; every section compiles torch.compile's twin anew for
#: its shape and makes four do_bench calls, plus the recompile check.
KERNEL_PRIOR_S = {"group_norm_modulate_silu": (30.0, 15.0), "euler_step": (8.0, 8.0)}


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


@dataclass(frozen=True)
class Row:
    """One planned restore row: its cell, variant and phase, and why it cannot run at all (outside
    the compile subset, say) or None."""

    case: Case
    variant: str
    phase: str
    reason: str | None = None

    def label(self, compile_mode: str = "default") -> str:
        return f"{self.case.label} {VARIANTS[self.variant].format(mode=compile_mode)}"


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
    """3840x2160 is in the matrix for the default model only; the others would need minutes of
    eager fp32 per call."""
    return size != UHD or preset == "default"


def in_compile_subset(preset: str, size: tuple[int, int], batch: int) -> bool:
    """Where torch.compile runs under ``--compile subset``: 1024^2, batch 1, for every preset, and
    2048^2, batch 1, for the acceptance models (the fast path is accepted there too)."""
    return batch == 1 and (size == (1024, 1024) or (size == (2048, 2048) and preset in ACCEPTANCE_PRESETS))


def build_plan(presets, sizes, batches, compile_mode: str) -> list[Case]:
    """The cells to run, cheapest first: the compile subset, then ascending pixels per call
    (a budget cut then drops the most expensive cells); ties keep the order of ``presets``."""
    cases = []
    for rank, preset in enumerate(presets):
        for size in sizes:
            if not size_applies(preset, size):
                continue
            for batch in batches:
                in_subset = in_compile_subset(preset, size, batch)
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
                      "outside the compile subset (1024^2 batch 1, and 2048^2 batch 1 for bench19m and paper; "
                      "--compile all runs it)")
        if variant == "fused" and not (case.preset in FUSED_CELLS["presets"] and case.batch == FUSED_CELLS["batch"]
                                       and (case.height, case.width) in FUSED_CELLS["sizes"]):
            continue  # not a skipped row: outside FUSED_CELLS the variant is simply not part of the matrix
        rows.append((variant, reason))
    return rows


def phase_of(case: Case, variant: str) -> str:
    """The phase a restore row runs in (:data:`PHASES`)."""
    if case.preset in ACCEPTANCE_PRESETS and case.batch == 1 and variant in ACCEPTANCE_VARIANTS:
        for phase, size in PHASE_SIZES.items():
            if (case.height, case.width) == size:
                return phase
    return "matrix"


def schedule(cases: list[Case], only, compile_mode: str, phases=PHASES) -> list[Row]:
    """Every restore row of ``cases`` (from :func:`build_plan`) in running order, phase by phase.
    Within an acceptance phase: torch.compile, the fast path and its CUDA graph of each model (in
    the order of ``--presets``), then the fused "auto" rows, whose first calls cost the most and
    are the least known; in the matrix, the cells' order and, within a cell, :data:`VARIANTS`'.
    Rows of phases not in ``phases`` are left out."""
    rank = {phase: i for i, phase in enumerate(PHASES)}
    rows = [Row(case, variant, phase_of(case, variant), reason) for case in cases
            for variant, reason in variants_for(case, set(only), compile_mode)]

    def key(row: Row):
        return rank[row.phase], row.phase != "matrix" and row.variant == "fused"

    return sorted((r for r in rows if r.phase in phases), key=key)  # stable: the cells' order within


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
    """Estimated seconds of a row before it runs, recalibrated by what this run has measured.

    A row costs its first call, a warm-up call and its timed calls (:meth:`row_s`). A steady call
    is the restore's FLOPs over the rate this variant reached on the largest row measured so far
    (priors before that). A first call adds what it compiles and sets up (:data:`FIRST_CALL_PRIOR_S`,
    the parts :data:`FIRST_CALL_PARTS` names: the first time in the process or later) and the
    extra restores it runs (:data:`EXTRA_RESTORES`); once a row has run, its measured first-call
    overhead over the estimated one rescales the priors of the parts it paid.
    Seconds of one first-call part: the first time in the process, for a new model, or again.
    """

    policy: RepPolicy
    compile_mode: str = "default"
    cpu: bool = False
    rates: dict = field(default_factory=dict)  # variant -> (flops of the largest row measured, FLOP/s)
    paid: set = field(default_factory=set)  # first-call parts paid in this process: part, (part, preset)
    scale: dict = field(default_factory=dict)  # part -> measured / estimated first-call overhead
    kernel_s: dict = field(default_factory=dict)  # kernel op -> seconds of each of its sections so far

    # -- steady calls ------------------------------------------------------------------------------
    def call_s(self, variant: str, flops: float) -> float:
        measured = self.rates.get(variant) or (self.rates.get("fast") if variant in ("graph", "fused") else None)
        if measured:
            return flops / measured[1]
        if self.cpu:  # no priors for a CPU: the smoke runs tiny shapes under a generous budget
            return 0.0
        return max(PRIOR_FLOOR_S[variant], flops / (PRIOR_TFLOPS[variant] * 1e12))

    # -- first calls -------------------------------------------------------------------------------
    def _prior(self, part: str) -> tuple[float, float, float]:
        name = "compile-max-autotune" if part == "compile" and self.compile_mode == "max-autotune" else part
        return FIRST_CALL_PRIOR_S[name]

    def part_s(self, part: str, preset: str | None = None) -> float:
        """Seconds of one first-call part for a row of ``preset`` now: its prior (the first time in
        the process, for a new model, or for a model already seen), rescaled."""
        if self.cpu:
            return 0.0
        first, new_model, same_model = self._prior(part)
        prior = first if part not in self.paid else new_model if (part, preset) not in self.paid else same_model
        return prior * self.scale.get(part, 1.0)

    def first_call_extra_s(self, variant: str, call_s: float | None = None, flops: float = 0.0,
                           preset: str | None = None) -> float:
        """What a first call costs beyond one steady call: compilation and set-up, and the extra
        restores of a graph capture or of the "auto" dispatch's timings."""
        call = self.call_s(variant, flops) if call_s is None else call_s
        return sum(self.part_s(p, preset) for p in FIRST_CALL_PARTS[variant]) + EXTRA_RESTORES[variant] * call

    def reference_s(self, flops: float, preset: str | None = None) -> float:
        """One untimed eager fp32 call for the PSNR reference of a cell whose fp32 row has not run."""
        return self.call_s("fp32", flops) + self.part_s("eager", preset)

    def row_s(self, variant: str, flops: float, preset: str | None = None) -> float:
        """First call, a warm-up call (none after an eager first call of seconds), the timed reps."""
        call = self.call_s(variant, flops)
        first = call + self.first_call_extra_s(variant, call, preset=preset)
        warmup = 0.0 if variant in ("fp32", "bf16") and call >= self.policy.window_s else call
        return first + warmup + call * self.policy.reps(call)

    def learn(self, variant: str, flops: float, median_s: float, first_call_s: float,
              preset: str | None = None) -> None:
        """After a row ran: keep the rate of the largest row (small rows are launch-bound and would
        make every larger row look slower than it is), and rescale the first-call parts it paid by
        how its measured overhead compares with their estimate (made before marking them paid)."""
        if median_s > 0 and (variant not in self.rates or flops >= self.rates[variant][0]):
            self.rates[variant] = (flops, flops / median_s)
        parts = FIRST_CALL_PARTS[variant]
        estimated = sum(self.part_s(p, preset) for p in parts)
        measured = first_call_s - (1.0 + EXTRA_RESTORES[variant]) * median_s
        if estimated > 0 and median_s > 0:
            ratio = min(10.0, max(0.05, measured / estimated))
            for part in parts:
                self.scale[part] = self.scale.get(part, 1.0) * ratio
        self.mark_paid(variant, preset)

    def mark_paid(self, variant: str, preset: str | None = None) -> None:
        """The first-call parts of ``variant`` are paid (for ``preset``): a row that failed still
        compiled what it reached."""
        for part in FIRST_CALL_PARTS[variant]:
            self.paid.update((part, (part, preset)))

    # -- kernel sections ---------------------------------------------------------------------------
    def kernel_section_s(self, op: str) -> float:
        """A kernel section's seconds: its prior before one of its op ran; after the first (which
        compiled the op's kernels) the later prior unless it measured less; then the latest."""
        if self.cpu:
            return 0.0
        first, later = KERNEL_PRIOR_S.get(op, (30.0, 15.0))
        seen = self.kernel_s.get(op, [])
        if not seen:
            return first
        return min(seen[0], later) if len(seen) == 1 else seen[-1]

    def learn_kernel(self, op: str, seconds: float) -> None:
        self.kernel_s.setdefault(op, []).append(seconds)


class Budget:
    """Wall-clock seconds for (part of) a run, counted from construction, on the clock ``now``."""

    def __init__(self, seconds: float, now=time.monotonic, label: str | None = None):
        self.seconds, self.now = seconds, now
        self.label = label or f"--budget-s {seconds:.0f}"
        self.start = now()

    def elapsed(self) -> float:
        return self.now() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def within(self, seconds: float, label: str) -> "Budget":
        """A budget from now that ends ``seconds`` from now or when this one ends, whichever is
        first (``seconds`` <= 0: when this one ends)."""
        left, at = self.remaining(), self.elapsed()
        if 0 < seconds < left:
            return Budget(seconds, self.now, f"{label} {seconds:.0f}, from {at:.0f} s")
        return Budget(max(0.0, left), self.now, f"what remains of {self.label}, from {at:.0f} s")

    def skip_reason(self, estimate_s: float) -> str | None:
        """Why a row estimated at ``estimate_s`` must not start, or None."""
        elapsed = self.elapsed()
        if elapsed >= self.seconds:
            return f"budget spent ({elapsed:.0f} s of {self.label})"
        if elapsed + estimate_s > self.seconds:
            return (f"would end after the budget (at {elapsed:.0f} s, estimated {estimate_s:.0f} s more; "
                    f"{self.label})")
        return None


def row_skip_reason(variant: str, flops: float, cost: CostModel, budget: Budget, max_call_s: float,
                    estimate_s: float | None = None) -> str | None:
    """Why a restore row must not start: one call alone is too slow for this run, or the row
    (``estimate_s``, default :meth:`CostModel.row_s`) would end after the budget. None when it may run."""
    call_s = cost.call_s(variant, flops)
    if call_s > max_call_s:
        return f"one call would take ~{call_s:.0f} s (> --max-call-s {max_call_s:g})"
    return budget.skip_reason(cost.row_s(variant, flops) if estimate_s is None else estimate_s)

