"""The GPU call's plan, driven on the CPU with fake rows: the order of its rows, its hard stop at
the budget, and that a run killed midway leaves every row it finished on disk.

No GPU and no timing: the rows are stand-ins that advance a fake clock (or, for the kill, sleep
until killed), and the kill waits for the subprocess to report its rows, however fast it is.
benchmarks/run_on_gpu.sh itself is tested in test_run_on_gpu.py."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from resflow_fast.benchmarks import bench, conv_rows, plan
from resflow_fast.benchmarks.kernel_rows import KernelJob
from resflow_fast.benchmarks.measure import Clock
from resflow_fast.benchmarks.report import Report
from resflow_fast.benchmarks.restore_rows import base_row

# the GPU profile, cut to the cells of the acceptance models (the FLOP counts of other cells would
# only cost the test time): 1024^2 and 2048^2 at batch 1
ARGV = ["--presets", "bench19m,paper", "--sizes", "1024,2048", "--batch", "1", "--conv-layers"]


class FakeRows:
    """Hooks of bench.execute_plan whose rows "take" fixed seconds on a fake clock."""

    def __init__(self, clock: list, kernel_s=10.0, restore_s=20.0, conv_s=3.0):
        self.time, self.kernel_s, self.restore_s, self.conv_s = clock, kernel_s, restore_s, conv_s
        self.device = torch.device("cuda")  # never touched: the rows are fake
        self.clock = Clock(self.device)
        self.ran: list[str] = []
        self.references: list[str] = []  # the rows asked to make their cell's PSNR reference first
        self._referenced = set()

    def kernel_jobs(self):
        def job(op, label):
            def run():
                self.ran.append(f"kernel {label}")
                self.time[0] += self.kernel_s
                return {"op": op, "shape": label, "rows": []}
            return KernelJob(op, f"{op} {label}", run)
        return [job("group_norm_modulate_silu", "a"), job("group_norm_modulate_silu", "b"), job("euler_step", "c")]

    def restore_row(self, case, variant, with_reference):
        self.ran.append(f"{case.label} {variant}")
        self.time[0] += self.restore_s
        if with_reference:
            self.references.append(f"{case.label} {variant}")
        if with_reference or variant == "fp32":
            self._referenced.add(case)
        return {**base_row(case, variant), "status": "ok", "median_ms": 50.0, "p90_ms": 51.0, "reps": 3,
                "first_call_s": 10.0}

    def has_reference(self, case):
        return case in self._referenced

    def conv_measure(self, groups):
        def measure(layer):
            self.ran.append(f"conv {layer.shape.label}")
            self.time[0] += self.conv_s
            return {**conv_rows.base_row(layer), "status": "error", "note": "fake"}
        return measure

    def conv_started(self, estimate_s):
        pass

    def release(self):
        self._referenced.clear()


def _drive(budget_s: float, tmp_path, **row_seconds):
    args = bench.parse_args(ARGV + ["--budget-s", str(budget_s), "--conv-budget-s", "30", "--out", str(tmp_path)])
    clock = [0.0]
    hooks = FakeRows(clock, **row_seconds)
    report = Report(tmp_path / "results.json", tmp_path / "results.md", "fake")
    budget = bench.make_budget(args, now=lambda: clock[0])
    _, cost = bench.make_plan(args)
    logged = []
    bench.execute_plan(args, report, budget, cost, hooks, lambda label, row, est, at: logged.append((label, row, est, at)))
    return hooks, logged, json.loads((tmp_path / "results.json").read_text()), clock[0]


def test_the_plan_runs_the_acceptance_rows_first_then_the_conv_table_then_the_rest(tmp_path):
    hooks, logged, data, end = _drive(10_000.0, tmp_path)
    kernels = ["kernel a", "kernel b", "kernel c"]
    acceptance = [f"{p} 1024x1024 b1 {v}" for p, v in (
        ("bench19m", "compile"), ("bench19m", "fast"), ("bench19m", "graph"),
        ("paper", "compile"), ("paper", "fast"), ("paper", "graph"), ("bench19m", "fused"), ("paper", "fused"))]
    assert hooks.ran[:11] == kernels + acceptance
    assert hooks.ran[11] == "conv 1x128x1024x1024 -> 128 s1 +norm"  # the heaviest shape first
    conv = [r for r in hooks.ran if r.startswith("conv ")]
    # --conv-budget-s 30: the first shape planned at its prior (it compiles), the others at what they took
    assert len(conv) == 10 and hooks.ran[11:21] == conv
    rest = hooks.ran[21:]
    assert rest[:8] == [a.replace("1024x1024", "2048x2048") for a in acceptance]
    assert set(rest[8:]) == {f"{p} {s} b1 {v}" for p in ("bench19m", "paper") for s in ("1024x1024", "2048x2048")
                             for v in ("fp32", "bf16")}
    # everything is in the report, in the order it ran, with its phase and estimate
    assert [f"{r['preset']} {r['image']} b1 {r['variant']}" for r in data["restore"]] == acceptance + rest
    assert [r["phase"] for r in data["restore"]][:8] == ["acceptance"] * 8
    assert all(r["estimate_s"] > 0 and r["wall_s"] == 20.0 for r in data["restore"])
    # the first row of a cell makes its PSNR reference (one eager fp32 call) for the rows before the
    # fp32 row; compile's time is compared with the fast rows of its cell
    assert hooks.references == ["bench19m 1024x1024 b1 compile", "paper 1024x1024 b1 compile",
                                "bench19m 2048x2048 b1 compile", "paper 2048x2048 b1 compile"]
    assert sum(row.get("status") == "skipped" for _, row, *_ in logged) == 30 - 10  # the conv shapes past its cap
    fast = next(r for r in data["restore"] if r["variant"] == "graph")
    assert fast["ratio_to_compile"] == pytest.approx(1.0)
    assert "running" not in data


def test_the_plan_stops_at_the_budget_and_says_why(tmp_path):
    """A 250 s budget on rows that take 20 s (kernels 10 s): a row starts only when its estimate
    ends within the budget, so nothing starts after it; every planned row is reported, run or
    skipped with the reason."""
    hooks, logged, data, end = _drive(250.0, tmp_path)
    ran = [(label, est, at) for label, row, est, at in logged
           if row.get("status") != "skipped" and not str(row.get("note", "")).startswith(("budget", "would end"))]
    assert [label for label, *_ in ran[:3]] == ["kernel group_norm_modulate_silu a",
                                                "kernel group_norm_modulate_silu b", "kernel euler_step c"]
    assert ran[3][0] == "bench19m 1024x1024 b1 torch.compile default, bf16 channels-last"
    assert len(ran) == len(hooks.ran)
    assert all(at + est <= 250.0 for _, est, at in ran)  # each fitted when it started
    assert end <= 250.0 + 20.0  # only a row that outlives its estimate ends past it (the shell's timeout kills it)
    skipped = [row for _, row, _, _ in logged if row.get("status") == "skipped"]
    assert skipped and all("budget" in row["note"] or "compile subset" in row["note"] for row in skipped)
    assert len(data["restore"]) == 16 + 8  # every planned row is in the report, run or skipped
    conv = data["conv_layers"]["rows"]  # the conv table: every shape, those not run skipped with the reason
    assert len(conv) == 30
    assert sum(r["status"] == "skipped" for r in conv) == 30 - len([x for x in hooks.ran if x.startswith("conv ")])


def test_a_spent_budget_runs_nothing(tmp_path):
    hooks, logged, data, end = _drive(0.0, tmp_path)
    assert hooks.ran == [] and end == 0.0
    assert all(k["error"].startswith("skipped: budget spent") for k in data["kernels"])
    assert {r["status"] for r in data["restore"]} == {"skipped"}


KILLED_RUN = textwrap.dedent('''
    """A benchmark whose rows sleep: the first three restore rows briefly, the fourth until killed."""
    import sys, time
    import torch
    from resflow_fast.benchmarks import bench
    from resflow_fast.benchmarks.restore_rows import base_row
    from resflow_fast.benchmarks.report import Report
    from resflow_fast.benchmarks.measure import Clock

    class Sleeping:
        device = torch.device("cuda")
        clock = Clock(device)
        done = 0
        def kernel_jobs(self):
            return []
        def restore_row(self, case, variant, with_reference):
            self.done += 1
            time.sleep(0.05 if self.done <= 3 else 600)
            return {**base_row(case, variant), "status": "ok", "median_ms": 50.0, "p90_ms": 50.0, "reps": 3,
                    "first_call_s": 1.0}
        def has_reference(self, case):
            return True
        def conv_measure(self, groups): return None
        def conv_started(self, estimate_s): pass
        def release(self): pass

    out = sys.argv[1]
    args = bench.parse_args(["--presets", "bench19m,paper", "--sizes", "1024", "--batch", "1", "--out", out,
                             "--budget-s", "100000", "--only", "compile,fast,graph,fused"])
    report = Report(out + "/results.json", out + "/results.md", "killed run",
                    benchmarks_md=out + "/BENCHMARKS.md", call="fake call")
    report.put("environment", {"card": "Fake GPU", "device": "cuda"})
    _, cost = bench.make_plan(args)
    bench.execute_plan(args, report, bench.make_budget(args), cost, Sleeping(), bench.progress)
''')


def test_a_killed_run_leaves_every_finished_row(tmp_path):
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n\nProse that stays.\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 240  # generous: only a stuck subprocess gets near it
        while len([line for line in lines if "| ok |" in line]) < 3:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        # the fourth row sleeps: it was recorded as running before it started
        while not json.loads((tmp_path / "results.json").read_text()).get("running", {}).get(
                "what", "").startswith("paper 1024x1024 b1"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    data = json.loads((tmp_path / "results.json").read_text())
    assert [(r["preset"], r["variant"]) for r in data["restore"]] == [
        ("bench19m", "compile"), ("bench19m", "fast"), ("bench19m", "graph")]
    assert data["running"]["what"] == "paper 1024x1024 b1 torch.compile default, bf16 channels-last"
    assert "elapsed_s" not in data
    md = (tmp_path / "results.md").read_text()
    assert md.count("| bench19m (19.1M) | 1024x1024 | 1 |") == 3 and "**Not finished:** paper 1024x1024 b1" in md
    section = (tmp_path / "BENCHMARKS.md").read_text()
    assert section.startswith("# Benchmarks\n\nProse that stays.\n") and "## Fake GPU" in section
    assert "by `fake call`" in section and section.count("| bench19m (19.1M) | 1024x1024 | 1 |") == 3
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file left behind
