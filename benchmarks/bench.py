"""``python -m resflow_fast.benchmarks``: the side-by-side table of issue 3 in one process.

On one CUDA card: the card's ceilings (copy GB/s, bf16 matmul TFLOP/s), the fused kernels against
their eager and compiled twins, then the 4-step restore of each preset, image size and batch as
eager fp32 reference, eager bf16 channels-last, torch.compile, the fast path and the fast path as
a CUDA graph (anchors.md, "How to report"). The run is a time-bounded plan (see ``plan.py``): it
fits ``--budget-s`` and reports what it skipped and why. ``--device cpu`` is the smoke mode that
keeps the harness tested without a GPU (tiny preset, 32x32, the fast path is the reference).
``--conv-layers`` adds issue 7's per-layer table after the rest (``conv_rows.py``): every 3x3 conv
shape of a preset at one size (default the paper model at 1024^2), ``fused_conv3x3`` against cuDNN
+ the fused norm; ``--only conv`` runs it alone.

    python -m resflow_fast.benchmarks --out results/ [--write-benchmarks-md]
    python -m resflow_fast.benchmarks --dry-run          # the plan and its time estimates, no timing
    python -m resflow_fast.benchmarks --device cpu --out /tmp/smoke
    python -m resflow_fast.benchmarks --only conv --out results/ [--conv-layers paper:2048]
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from . import conv_rows
from . import plan as plans
from .measure import Clock, EnergyMeter, ceilings, environment, refusal_to_time
from .report import Report, write_benchmarks_md

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


def parse_args(argv: list[str], prog: str = PROG) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description="The side-by-side benchmark table of issue 3, in one process "
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
    what.add_argument("--compile", choices=("subset", "all", "none"),
                      help="where torch.compile runs: 1024^2 batch 1 per preset (cuda default), every cell, nowhere (cpu default)")
    what.add_argument("--max-autotune", action="store_true", help="torch.compile mode max-autotune (its tuning takes minutes)")
    conv = p.add_argument_group("per-layer 3x3 conv table (issue 7; off unless asked for)")
    conv.add_argument("--conv-layers", nargs="?", const="", metavar="PRESET:SIZE",
                      help="after the rest, time every 3x3 conv shape of PRESET at SIZE (1024 or WxH) as "
                           "cuDNN + fused norm and as fused_conv3x3 (without a value: "
                           f"{conv_rows.CONV_DEFAULTS['cuda']} on cuda, {conv_rows.CONV_DEFAULTS['cpu']} on cpu)")
    conv.add_argument("--conv-batch", type=_positive_int, default=1, help="batch of those convs (default 1)")
    conv.add_argument("--conv-budget-s", type=_non_negative, default=0.0,
                      help="seconds the conv table may run beyond --budget-s: its shapes must end by "
                           "--budget-s + this, counted from the start of the run (default 0: what the "
                           "rest leaves of --budget-s)")
    time_ = p.add_argument_group("time")
    time_.add_argument("--budget-s", type=float, help="rows estimated to end after this many seconds are skipped "
                                                      "(cuda: 440, so the whole command fits 8 minutes)")
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
                     help="also replace this card's section of BENCHMARKS.md (or PATH)")
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
    if args.conv_layers is not None:
        try:
            args.conv_spec = conv_rows.parse_spec(args.conv_layers or conv_rows.CONV_DEFAULTS[args.device])
        except ValueError as e:
            p.error(str(e))
        if args.conv_spec[0] not in PRESETS:
            p.error(f"--conv-layers: unknown preset {args.conv_spec[0]!r}; choose from {','.join(PRESETS)}")
    return args


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


def make_plan(args) -> tuple[list[plans.Case], plans.CostModel]:
    policy = plans.RepPolicy(args.window_s, args.min_reps, args.max_reps, args.cap_s)
    cases = plans.build_plan(args.presets, args.size_list, args.batch, args.compile)
    return cases, plans.CostModel(policy, args.compile_mode, cpu=args.device == "cpu")


def restore_rows(cases, args, cost: plans.CostModel, budget: plans.Budget):
    """Yield (case, variant, flops of the batch, skip reason or None, estimated seconds), deciding
    each row when it is asked for, so the decision sees the time spent by the rows before it."""
    from .restore_rows import restore_cost

    for case in cases:
        flops = restore_cost(case.preset, case.height, case.width)[0] * case.batch
        for variant, reason in plans.variants_for(case, set(args.only), args.compile):
            estimate = cost.row_s(variant, flops)
            reason = reason or plans.row_skip_reason(variant, flops, cost, budget, args.max_call_s)
            yield case, variant, flops, reason, estimate


def dry_run(args) -> str:
    """The plan as a table: each row's estimated seconds from the priors (no calibration) and
    whether the budget would let it start. Estimates, not measurements."""
    cases, cost = make_plan(args)
    clock = [0.0]
    budget = plans.Budget(args.budget_s, now=lambda: clock[0])
    conv_budget = plans.Budget(args.budget_s + args.conv_budget_s, now=lambda: clock[0])
    lines = [f"plan for --budget-s {args.budget_s:g} (estimates from priors, not measurements):",
             f"{'start s':>8}  {'est s':>6}  row"]
    if "kernels" in args.only:
        lines.append(f"{0.0:8.0f}  {plans.KERNEL_SECTION_S:6.0f}  kernels")
        clock[0] += plans.KERNEL_SECTION_S
    for case, variant, _flops, reason, estimate in restore_rows(cases, args, cost, budget):
        label = f"{case.label} {plans.VARIANTS[variant].format(mode=args.compile_mode)}"
        if reason:
            lines.append(f"{'-':>8}  {estimate:6.0f}  {label}: skipped, {reason}")
            continue
        lines.append(f"{clock[0]:8.0f}  {estimate:6.0f}  {label}")
        clock[0] += estimate
    if args.conv_spec:
        layers, _ = conv_rows.conv_layers(*args.conv_spec, args.conv_batch)
        estimate = conv_rows.ROW_PRIOR_S[args.device]
        for layer in conv_rows.run_order(layers):
            label = f"conv {layer.shape.label} x{layer.count}"
            reason = conv_budget.skip_reason(estimate)
            if reason:
                lines.append(f"{'-':>8}  {estimate:6.0f}  {label}: skipped, {reason}{_conv_budget_note(args)}")
                continue
            lines.append(f"{clock[0]:8.0f}  {estimate:6.0f}  {label}")
            clock[0] += estimate
    lines.append(f"estimated end: {clock[0]:.0f} s")
    return "\n".join(lines)


def progress(elapsed: float, what: str, row: dict) -> None:
    if row.get("status") == "ok":
        detail = (f"median {row['median_ms']:.4g} ms, p90 {row['p90_ms']:.4g} ms, {row['reps']} reps, "
                  f"first call {row['first_call_s']:.3g} s")
    else:
        detail = row.get("note", "")
    print(f"[{elapsed:7.1f} s] {what} | {row.get('status', 'ok')} | {detail}", flush=True)


def run(args, command: str) -> Report:
    from .kernel_rows import kernel_sections
    from .restore_rows import RestoreRunner, compare_with_compile, restore_cost, skipped_row

    device = torch.device(args.device)
    out = Path(args.out)
    report = Report(Path(args.json or out / "results.json"), Path(args.markdown or out / "results.md"), command)
    budget = plans.Budget(args.budget_s)
    conv_budget = plans.Budget(args.budget_s + args.conv_budget_s)  # from the same start
    clock, meter = Clock(device), EnergyMeter(device)
    report.put("environment", environment(device, meter))
    report.put("ceilings", ceilings(device, clock))
    report.put("settings", {k: v for k, v in vars(args).items() if k != "size_list"})
    copy_gbs, matmul_tflops = report.data["ceilings"]["copy_gbs"], report.data["ceilings"]["matmul_tflops"]

    if "kernels" in args.only:
        reason = budget.skip_reason(plans.KERNEL_SECTION_S if clock.cuda else 0.0)
        sections = [] if reason else kernel_sections(device, clock, copy_gbs, compile_twin=args.compile != "none")
        for section in sections:
            report.add("kernels", section)
            print(f"[{budget.elapsed():7.1f} s] kernel {section['op']} {section['shape']}: "
                  f"{len(section['rows'])} rows {section.get('error', '')}", flush=True)
        if reason:
            report.add("kernels", {"op": "kernels", "shape": "", "rows": [], "error": f"skipped: {reason}"})

    cases, cost = make_plan(args)
    runner = RestoreRunner(device, clock, meter, cost.policy, matmul_tflops, args.compile_mode)
    current, case_rows, inputs = None, [], None
    for case, variant, flops, reason, _estimate in restore_rows(cases, args, cost, budget):
        if case != current:  # a new cell: free the last one's inputs
            current, case_rows, inputs = case, [], None
            params = restore_cost(case.preset, case.height, case.width)[1]
            report.data["models"].setdefault(case.preset, {"params_m": params / 1e6})
        if reason:
            row = skipped_row(case, variant, reason, args.compile_mode)
        else:
            if inputs is None:  # made by the cell's first row that runs: a fully skipped cell costs nothing
                inputs = runner.inputs(case, flops / case.batch)
            row = runner.row(case, variant, inputs)
            if row["status"] == "ok":
                cost.learn(variant, flops, row["median_ms"] / 1000, row["first_call_s"])
        case_rows.append(row)
        compare_with_compile(case_rows)  # the fast rows come after compile's
        report.add("restore", row)
        progress(budget.elapsed(), f"{case.label} {row['label']}", row)
    if args.conv_spec:
        runner = inputs = None  # the restore's models and images: not needed by the conv shapes
        if clock.cuda:
            torch.cuda.empty_cache()
        conv_table(args, report, device, clock, conv_budget, budget)
    report.put("elapsed_s", budget.elapsed())
    return report


def _conv_budget_note(args) -> str:
    """Said after a conv shape's budget skip when its budget is --budget-s + --conv-budget-s."""
    return f" (= --budget-s {args.budget_s:g} + --conv-budget-s {args.conv_budget_s:g})" if args.conv_budget_s else ""


def conv_table(args, report: Report, device: torch.device, clock: Clock, conv_budget: plans.Budget,
               budget: plans.Budget) -> None:
    """Issue 7's per-layer table into ``report["conv_layers"]``, rewritten after every shape."""
    from resflow_fast.reference.unet import preset_config

    preset, height, width = args.conv_spec
    groups = preset_config(preset).num_groups
    try:
        layers, params = conv_rows.conv_layers(preset, height, width, args.conv_batch)
        error = None
    except Exception as e:  # noqa: BLE001 - recorded: the tables before it stay
        layers, params, error = [], 0, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    section = conv_rows.new_section(preset, height, width, args.conv_batch, layers, params, device, groups)
    if error:
        section["error"] = f"shape enumeration failed: {error}"
    else:
        report.data["models"].setdefault(preset, {"params_m": params / 1e6})
    report.put("conv_layers", section)
    ordered = conv_rows.run_order(layers)
    rows = conv_rows.time_layers(ordered, device, clock, conv_budget, groups, _conv_budget_note(args))
    for layer, row in zip(ordered, rows):
        conv_rows.add_row(section, row)
        report.put("conv_layers", section)
        if row["status"] == "ok":
            detail = (f"cuDNN + norm {row['cudnn_ms']:.4g} ms, fused {row['fused_ms']:.4g} ms "
                      f"({row['speedup']:.2f}x), rel err {row['rel_err']:.2g}")
        else:
            detail = row.get("note", "")
        print(f"[{budget.elapsed():7.1f} s] conv {layer.shape.label} x{layer.count} | {row['status']} | {detail}",
              flush=True)


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
        write_benchmarks_md(Path(args.write_benchmarks_md), report.data)
        print(f"updated {args.write_benchmarks_md}", flush=True)
    return 0
