"""``python -m resflow_fast.benchmarks``: the side-by-side benchmark table in one process.

On one CUDA card: the card's ceilings (copy GB/s, bf16 matmul TFLOP/s), the fused kernels against
their eager and compiled twins, then the 4-step restore of each preset, image size and batch as
eager fp32 reference, eager bf16 channels-last, torch.compile, the fast path, the fast path as a
CUDA graph and, where the fused conv is accepted, the fast path with the fused conv's "auto"
dispatch (docs/design/performance.md, "How to report"). The run is a time-bounded plan
(``plan.py``): the acceptance rows first, then ``--conv-layers``' per-layer table (``conv_rows.py``:
every 3x3 conv shape of a preset at one size, fused_conv3x3 against cuDNN + the fused norm), then
the rest; it fits ``--budget-s`` (or ``--end-by``) and reports what it skipped and why. The JSON,
the Markdown and (``--write-benchmarks-md``) BENCHMARKS.md are rewritten after every row.
``--device cpu`` is the smoke mode that keeps the harness tested without a GPU (tiny preset,
32x32, the fast path is the reference).

    python -m resflow_fast.benchmarks --out results/ [--write-benchmarks-md]
    python -m resflow_fast.benchmarks --dry-run          # the plan and its time estimates, no timing
    python -m resflow_fast.benchmarks --acceptance-only --out results/
    python -m resflow_fast.benchmarks --device cpu --out runs/bench-smoke
    python -m resflow_fast.benchmarks --only conv --out results/ [--conv-layers paper:2048]
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from . import conv_rows
from . import plan as plans
from .measure import Clock, EnergyMeter, ceilings, environment, refusal_to_time
from .report import Report

PROG = "python -m resflow_fast.benchmarks"

#: Defaults per device: the full matrix on a GPU; on the CPU a smoke run of seconds.
PROFILES = {
    "cuda": dict(presets=plans.DEFAULT_PRESETS, sizes=plans.DEFAULT_SIZES, batch=plans.DEFAULT_BATCHES,
                 compile="subset", window_s=2.0, budget_s=440.0, max_call_s=10.0, cap_s=10.0,
                 threads=None),
    "cpu": dict(presets=("test",), sizes=("32",), batch=(1,), compile="none", window_s=0.0, budget_s=300.0,
                max_call_s=60.0, cap_s=5.0, threads=1),
}


#: What --only may name: the kernels, the restore variants, and the per-layer conv table, which
#: runs only when named here or by --conv-layers (never by default).
ONLY_CHOICES = (*plans.SECTIONS, "conv")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _int_csv(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(item) for item in _csv(text))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def parse_args(argv: list[str], prog: str = PROG) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description="The side-by-side benchmark table, in one process "
                                "(see BENCHMARKS.md).")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (default): the real table; cpu: the smoke mode (wall-clock timing, no NVML, no compile)")
    what = p.add_argument_group("what to run (defaults depend on --device)")
    what.add_argument("--presets", type=_csv, help="comma list of U-Net presets (cuda: bench19m,paper,default; cpu: test)")
    what.add_argument("--sizes", type=_csv, help="comma list of sizes, 1024 or WxH (cuda: 256,1024,2048,3840x2160; "
                                                 "3840x2160 runs for the default preset only; cpu: 32)")
    what.add_argument("--batch", type=_int_csv, help="comma list (cuda: 1,8; cpu: 1)")
    what.add_argument("--only", type=_csv, default=plans.SECTIONS,
                      help=f"comma list out of {','.join(ONLY_CHOICES)} (default: all but conv, which "
                           "only runs when named here or by --conv-layers)")
    what.add_argument("--acceptance-only", action="store_true",
                      help="the kernels and the acceptance rows alone (bench19m and paper at 1024^2, batch 1: "
                           "torch.compile, fast, fast + CUDA graph, fused auto); no conv table, nothing else")
    what.add_argument("--compile", choices=("subset", "all", "none"),
                      help="where torch.compile runs: 1024^2 batch 1 per preset and 2048^2 batch 1 for bench19m "
                           "and paper (cuda default), every cell, nowhere (cpu default)")
    what.add_argument("--max-autotune", action="store_true", help="torch.compile mode max-autotune (its tuning takes minutes)")
    conv = p.add_argument_group("per-layer 3x3 conv table (off unless asked for)")
    conv.add_argument("--conv-layers", nargs="?", const="", metavar="PRESET:SIZE",
                      help="after the acceptance rows, time every 3x3 conv shape of PRESET at SIZE (1024 or WxH) "
                           "as cuDNN + fused norm and as fused_conv3x3 (without a value: "
                           f"{conv_rows.CONV_DEFAULTS['cuda']} on cuda, {conv_rows.CONV_DEFAULTS['cpu']} on cpu)")
    conv.add_argument("--conv-batch", type=_positive_int, default=1, help="batch of those convs (default 1)")
    conv.add_argument("--conv-budget-s", type=_non_negative, default=0.0,
                      help="at most this many seconds for the conv table, within the run's budget "
                           "(default 0: whatever the budget leaves)")
    time_ = p.add_argument_group("time")
    time_.add_argument("--budget-s", type=float, help="rows estimated to end after this many seconds are skipped "
                                                      "(cuda: 440, so the whole command fits 8 minutes)")
    time_.add_argument("--end-by", type=float, metavar="UNIX_SECONDS",
                       help="also skip rows estimated to end after this wall-clock time (seconds since the "
                            "epoch, as `date +%%s` prints): a deadline that counts this process's start-up")
    time_.add_argument("--max-call-s", type=float, help="skip a variant whose single restore is estimated longer (cuda: 10)")
    time_.add_argument("--window-s", type=float, help="timed window per row, also the energy window (cuda: 2)")
    time_.add_argument("--cap-s", type=float, help="at most this many seconds of timed calls per row (cuda: 10)")
    time_.add_argument("--threads", type=int, help="CPU threads while timing (cpu: 1: the smoke mode checks the "
                                                   "harness, and on a shared machine more threads only fight for cores)")
    time_.add_argument("--min-reps", type=int, default=3)
    time_.add_argument("--max-reps", type=int, default=5000)
    out = p.add_argument_group("output")
    out.add_argument("--out", default=os.environ.get("OUT") or "bench-out", help="folder for results.json and results.md")
    out.add_argument("--json", help="JSON path (default OUT/results.json)")
    out.add_argument("--markdown", help="Markdown path (default OUT/results.md)")
    out.add_argument("--write-benchmarks-md", nargs="?", const="BENCHMARKS.md", metavar="PATH",
                     help="also replace this card's section of BENCHMARKS.md (or PATH), after every row")
    out.add_argument("--call", metavar="TEXT", help="the command that ran this benchmark (the device call), "
                                                    "recorded beside this one's own")
    out.add_argument("--cuda-tests", metavar="TEXT", help="the CUDA tests' result in the same call, recorded")
    p.add_argument("--dry-run", action="store_true", help="print the plan with estimated seconds per row; time nothing")
    args = p.parse_args(argv)
    for key, value in PROFILES[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    from resflow_fast.reference.unet import PRESETS

    for flag, given, known in (("--only", args.only, ONLY_CHOICES), ("--presets", args.presets, PRESETS)):
        if set(given) - set(known):
            p.error(f"{flag}: unknown {sorted(set(given) - set(known))}; choose from {','.join(known)}")
    try:
        args.size_list = [plans.parse_size(s) for s in args.sizes]
    except ValueError as e:
        p.error(str(e))
    args.compile_mode = "max-autotune" if args.max_autotune else "default"
    args.conv_spec = None  # (preset, height, width) of the conv table, or None
    if args.conv_layers is None and "conv" in args.only:
        args.conv_layers = ""
    if args.conv_layers is not None and not args.acceptance_only:
        try:
            args.conv_spec = conv_rows.parse_spec(args.conv_layers or conv_rows.CONV_DEFAULTS[args.device])
        except ValueError as e:
            p.error(str(e))
        if args.conv_spec[0] not in PRESETS:
            p.error(f"--conv-layers: unknown preset {args.conv_spec[0]!r}; choose from {','.join(PRESETS)}")
    return args


# -- the plan --------------------------------------------------------------------------------------
def make_plan(args) -> tuple[list[plans.Row], plans.CostModel]:
    """The restore rows in running order, and the cost model that estimates them."""
    policy = plans.RepPolicy(args.window_s, args.min_reps, args.max_reps, args.cap_s)
    cases = plans.build_plan(args.presets, args.size_list, args.batch, args.compile)
    phases = plans.PHASES[:1] if args.acceptance_only else plans.PHASES
    rows = plans.schedule(cases, args.only, args.compile, phases)
    return rows, plans.CostModel(policy, args.compile_mode, cpu=args.device == "cpu")


def make_budget(args, now=time.monotonic, wall=time.time) -> plans.Budget:
    """``--budget-s`` from now, or less where ``--end-by`` comes first."""
    if args.end_by is not None and args.end_by - wall() < args.budget_s:
        left = args.end_by - wall()
        return plans.Budget(left, now, f"the {max(left, 0):.0f} s left before --end-by")
    return plans.Budget(args.budget_s, now)


def execute_plan(args, report: Report, budget: plans.Budget, cost: plans.CostModel, hooks, log) -> None:
    """Everything after the ceilings, in the plan's order: the kernel sections; the acceptance
    restore rows; the per-layer conv table; the other restore rows. Before each row its cost is
    estimated and the budget decides whether it starts; the report records the row about to run
    and then every finished or skipped row as it comes.

    ``hooks`` measures: ``kernel_jobs()``, ``restore_row(case, variant, with_reference)``,
    ``has_reference(case)``, ``conv_measure(groups)`` (None: the real one), ``conv_started(estimate_s)``,
    ``release()``, ``device`` and ``clock``. ``log(label, row, estimate_s, started_at_s)`` reports progress."""
    rows, _ = make_plan(args)
    if "kernels" in args.only:
        for job in hooks.kernel_jobs():
            estimate = cost.kernel_section_s(job.op)
            reason = budget.skip_reason(estimate)
            started = budget.elapsed()
            if reason:
                section = {"op": job.op, "shape": job.label.split(" ", 1)[1], "rows": [], "error": f"skipped: {reason}"}
            else:
                report.start(f"kernel {job.label}", estimate, started)
                section = job.run()
                cost.learn_kernel(job.op, budget.elapsed() - started)
                section["wall_s"] = budget.elapsed() - started
            section["estimate_s"] = estimate
            report.add("kernels", section)
            status = "skipped" if reason else ("error" if section.get("error") else "ok")
            log(f"kernel {job.label}", {"status": status, "wall_s": section.get("wall_s"),
                                        "note": reason or section.get("error", f"{len(section['rows'])} rows")},
                estimate, started)
    cells: dict = {}  # case -> its rows so far (the fast rows are compared with compile's)
    acceptance = [r for r in rows if r.phase == "acceptance"]
    _restore_rows(acceptance, args, report, budget, cost, hooks, log, cells)
    if args.conv_spec:
        hooks.release()  # the restore's inputs: not needed by the conv shapes
        _conv_table(args, report, budget, hooks, log)
    _restore_rows([r for r in rows if r.phase != "acceptance"], args, report, budget, cost, hooks, log, cells)


def _restore_rows(rows, args, report: Report, budget: plans.Budget, cost: plans.CostModel, hooks, log,
                  cells: dict) -> None:
    from .restore_rows import compare_with_compile, restore_cost, skipped_row

    for planned in rows:
        case, variant = planned.case, planned.variant
        flops_one, params = restore_cost(case.preset, case.height, case.width)
        flops = flops_one * case.batch
        report.data["models"].setdefault(case.preset, {"params_m": params / 1e6})
        # a row before its cell's fp32 row: one untimed eager fp32 call gives its PSNR reference,
        # unless that call alone is too slow for this run
        with_reference = (variant != "fp32" and not hooks.has_reference(case)
                          and cost.call_s("fp32", flops) <= args.max_call_s)
        estimate = cost.row_s(variant, flops, case.preset) + (cost.reference_s(flops, case.preset) if with_reference else 0.0)
        reason = planned.reason or plans.row_skip_reason(variant, flops, cost, budget, args.max_call_s, estimate)
        label = planned.label(args.compile_mode)
        started = budget.elapsed()
        if reason:
            row = skipped_row(case, variant, reason, args.compile_mode)
        else:
            report.start(label, estimate, started)
            row = hooks.restore_row(case, variant, with_reference)
            if row.get("status") == "ok":
                cost.learn(variant, flops, row["median_ms"] / 1000, row["first_call_s"], case.preset)
            else:
                cost.mark_paid(variant, case.preset)
            row["wall_s"] = budget.elapsed() - started
        row.update(phase=planned.phase, estimate_s=estimate)
        cell = cells.setdefault(case, [])
        cell.append(row)
        compare_with_compile(cell)  # the fast rows come after compile's
        report.add("restore", row)
        log(label, row, estimate, started)


def _conv_table(args, report: Report, budget: plans.Budget, hooks, log) -> None:
    """The per-layer table into ``report["conv_layers"]``, rewritten after every shape, within
    ``--conv-budget-s`` (when given) and the run's budget."""
    from resflow_fast.reference.unet import preset_config

    preset, height, width = args.conv_spec
    groups = preset_config(preset).num_groups
    try:
        layers, params = conv_rows.conv_layers(preset, height, width, args.conv_batch)
        error = None
    except Exception as e:  # noqa: BLE001 - recorded: the tables before it stay
        layers, params, error = [], 0, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    section = conv_rows.new_section(preset, height, width, args.conv_batch, layers, params, hooks.device, groups)
    if error:
        section["error"] = f"shape enumeration failed: {error}"
    else:
        report.data["models"].setdefault(preset, {"params_m": params / 1e6})
    report.put("conv_layers", section)
    conv_budget = budget.within(args.conv_budget_s, "--conv-budget-s")
    ordered = conv_rows.run_order(layers)
    starts = {}

    def on_start(layer, estimate):
        starts[layer.shape] = budget.elapsed()
        hooks.conv_started(estimate)
        report.start(f"conv {layer.shape.label} x{layer.count}", estimate, starts[layer.shape])

    rows = conv_rows.time_layers(ordered, hooks.device, hooks.clock, conv_budget, groups,
                                 measure=hooks.conv_measure(groups), on_start=on_start)
    for layer, row in zip(ordered, rows):
        conv_rows.add_row(section, row)
        report.data.pop("running", None)
        report.put("conv_layers", section)
        log(f"conv {layer.shape.label} x{layer.count}", row, row.get("estimate_s", 0.0),
            starts.get(layer.shape, budget.elapsed()))


# -- the real run ----------------------------------------------------------------------------------
class Measuring:
    """The hooks of :func:`execute_plan` that measure on ``device``."""

    def __init__(self, args, device: torch.device, clock: Clock, meter: EnergyMeter, copy_gbs: float,
                 matmul_tflops: float, policy: plans.RepPolicy):
        from .restore_rows import RestoreRunner

        self.args, self.device, self.clock, self.copy_gbs = args, device, clock, copy_gbs
        self.runner = RestoreRunner(device, clock, meter, policy, matmul_tflops, args.compile_mode)

    def kernel_jobs(self):
        from .kernel_rows import kernel_jobs

        return kernel_jobs(self.device, self.clock, self.copy_gbs, compile_twin=self.args.compile != "none")

    def restore_row(self, case, variant, with_reference):
        return self.runner.row(case, variant, with_reference)

    def has_reference(self, case) -> bool:
        return self.runner.has_reference(case)

    def conv_measure(self, groups):
        return None  # conv_rows.measure_layer

    def conv_started(self, estimate_s: float) -> None:
        pass

    def release(self) -> None:
        self.runner.release()
        if self.clock.cuda:
            torch.cuda.empty_cache()


def progress(label: str, row: dict, estimate_s: float, started_at_s: float) -> None:
    """One line per row as it finishes: when it started, its status and its numbers or reason."""
    if row.get("status", "ok") == "ok" and "median_ms" in row:
        detail = (f"median {row['median_ms']:.4g} ms, p90 {row['p90_ms']:.4g} ms, {row['reps']} reps, "
                  f"first call {row['first_call_s']:.3g} s")
    elif row.get("status", "ok") == "ok" and "cudnn_ms" in row:
        detail = (f"cuDNN + norm {row['cudnn_ms']:.4g} ms, fused {row['fused_ms']:.4g} ms "
                  f"({row['speedup']:.2f}x), rel err {row['rel_err']:.2g}")
    else:
        detail = row.get("note", "")
    took = row.get("wall_s") if row.get("wall_s") is not None else row.get("seconds")
    timing = f"est {estimate_s:.0f} s" + (f", took {took:.0f} s" if took is not None else "")
    print(f"[{started_at_s:7.1f} s] {label} | {row.get('status', 'ok')} | {timing} | {detail}", flush=True)


def run(args, command: str) -> Report:
    device = torch.device(args.device)
    out = Path(args.out)
    report = Report(Path(args.json or out / "results.json"), Path(args.markdown or out / "results.md"), command,
                    benchmarks_md=args.write_benchmarks_md, call=args.call, cuda_tests=args.cuda_tests)
    budget = make_budget(args)
    clock, meter = Clock(device), EnergyMeter(device)
    report.put("environment", environment(device, meter))
    report.put("ceilings", ceilings(device, clock))
    report.put("settings", {k: v for k, v in vars(args).items() if k != "size_list"})
    _, cost = make_plan(args)
    hooks = Measuring(args, device, clock, meter, report.data["ceilings"]["copy_gbs"],
                      report.data["ceilings"]["matmul_tflops"], cost.policy)
    execute_plan(args, report, budget, cost, hooks, progress)
    report.put("elapsed_s", budget.elapsed())
    return report


# -- the dry run -----------------------------------------------------------------------------------
class Planning:
    """The hooks of :func:`execute_plan` for a dry run: nothing is measured; each row "takes" its
    estimate on a simulated clock and reports the steady call the cost model expects, so the plan
    and its skips are exactly those of a run whose estimates all came true."""

    def __init__(self, args, clock: list[float], cost: plans.CostModel):
        self.args, self.time, self.cost = args, clock, cost
        self.device = torch.device(args.device)
        self.clock = Clock(self.device)  # only read for .cuda: nothing is timed
        self.estimate = 0.0
        self._cell = None  # (case, has a reference)

    def kernel_jobs(self):
        from .kernel_rows import EULER_SHAPES, GROUP_NORM_SHAPES, KernelJob

        kind = self.device.type
        ops = [("group_norm_modulate_silu", s) for s in GROUP_NORM_SHAPES[kind]]
        ops += [("euler_step", s) for s in EULER_SHAPES[kind]]
        return [KernelJob(op, f"{op} {'x'.join(map(str, s))}", self._kernel(op)) for op, s in ops]

    def _kernel(self, op):
        def run():
            self.time[0] += self.cost.kernel_section_s(op)
            return {"op": op, "shape": "", "rows": []}
        return run

    def restore_row(self, case, variant, with_reference):
        from .restore_rows import base_row, restore_cost

        flops = restore_cost(case.preset, case.height, case.width)[0] * case.batch
        call = self.cost.call_s(variant, flops)
        self.time[0] += (self.cost.row_s(variant, flops, case.preset)
                         + (self.cost.reference_s(flops, case.preset) if with_reference else 0.0))
        if self._cell is None or self._cell[0] != case:
            self._cell = (case, False)
        self._cell = (case, self._cell[1] or variant == "fp32" or with_reference)
        return {**base_row(case, variant, self.args.compile_mode), "status": "ok", "median_ms": 1000 * call,
                "p90_ms": 1000 * call, "reps": self.cost.policy.reps(call),
                "first_call_s": call + self.cost.first_call_extra_s(variant, call, preset=case.preset)}

    def has_reference(self, case) -> bool:
        return self._cell is not None and self._cell[0] == case and self._cell[1]

    def conv_measure(self, groups):
        def measure(layer):
            self.time[0] += self.estimate
            return {**conv_rows.base_row(layer), "status": "planned"}
        return measure

    def conv_started(self, estimate_s: float) -> None:
        self.estimate = estimate_s  # what the next conv shape "takes"

    def release(self) -> None:
        self._cell = None


def dry_run(args) -> str:
    """The plan as a table: each row's estimated start and seconds, as if every estimate came true
    (the cost model learns from those as it would from measurements), and what the budget skips.
    Estimates, not measurements."""
    clock = [0.0]
    budget = make_budget(args, now=lambda: clock[0])
    _, cost = make_plan(args)
    hooks = Planning(args, clock, cost)
    report = Report(None, None, "dry run")  # kept in memory only
    lines = [f"plan for {budget.label} (estimates from priors, not measurements):",
             f"{'start s':>8}  {'est s':>6}  row"]

    def log(label, row, estimate, started):
        if row.get("status") == "skipped" or str(row.get("error", "")).startswith("skipped"):
            lines.append(f"{'-':>8}  {estimate:6.0f}  {label}: skipped, {row.get('note', '')}")
        else:
            lines.append(f"{started:8.0f}  {estimate:6.0f}  {label}")

    execute_plan(args, report, budget, cost, hooks, log)
    lines.append(f"estimated end: {clock[0]:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Entry point of ``python -m resflow_fast.benchmarks`` (and ``resflow bench``); returns the
    exit status: 0 when the run finished (rows that failed are in the report), 2 when it refused."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    if args.dry_run:
        print(dry_run(args))
        return 0
    refusal = refusal_to_time()
    if refusal is None and args.device == "cuda" and not torch.cuda.is_available():
        refusal = "no CUDA GPU here; --device cpu runs the CPU smoke mode"
    if refusal:
        print(f"{prog}: {refusal}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        report = run(args, shlex.join([*prog.split(), *argv]))
    finally:
        torch.set_num_threads(threads)
    print(f"wrote {report.json_path} and {report.markdown_path}", flush=True)
    if args.write_benchmarks_md:
        print(f"updated {args.write_benchmarks_md}", flush=True)
    return 0
