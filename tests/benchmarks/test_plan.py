"""Tests of benchmarks/plan.py: the matrix, its phases and order, the compile subset, the cost
estimates (first calls from what they compile and set up) and the budget."""
import pytest

from resflow_fast.benchmarks import plan


def test_parse_size():
    assert plan.parse_size("1024") == (1024, 1024)
    assert plan.parse_size("3840x2160") == (2160, 3840)  # width x height -> (H, W)
    for bad in ("", "x", "12x", "0", "1x2x3", "abc"):
        with pytest.raises(ValueError, match="1024 or 3840x2160"):
            plan.parse_size(bad)


def test_full_matrix_order_and_compile_subset():
    sizes = [plan.parse_size(s) for s in plan.DEFAULT_SIZES]
    cases = plan.build_plan(plan.DEFAULT_PRESETS, sizes, plan.DEFAULT_BATCHES, "subset")
    # 3 presets x 3 square sizes x 2 batches, plus 3840x2160 for the default model at 2 batches
    assert len(cases) == 20
    assert {c.preset for c in cases if c.image == "3840x2160"} == {"default"}
    # the compile subset first: 1024^2 batch 1 of every preset, 2048^2 batch 1 of the acceptance models
    assert [(c.preset, c.image, c.batch, c.compile) for c in cases[:5]] == [
        ("bench19m", "1024x1024", 1, True), ("paper", "1024x1024", 1, True), ("default", "1024x1024", 1, True),
        ("bench19m", "2048x2048", 1, True), ("paper", "2048x2048", 1, True)]
    assert not any(c.compile for c in cases[5:])
    pixels = [c.pixels for c in cases[5:]]
    assert pixels == sorted(pixels)  # then cheapest first: a budget cut drops the most expensive
    assert cases[-1].label == "default 3840x2160 b8"


def test_schedule_runs_the_acceptance_rows_first():
    sizes = [plan.parse_size(s) for s in plan.DEFAULT_SIZES]
    cases = plan.build_plan(plan.DEFAULT_PRESETS, sizes, plan.DEFAULT_BATCHES, "subset")
    rows = plan.schedule(cases, plan.VARIANTS, "subset")
    got = [(r.phase, r.case.preset, r.case.image, r.variant) for r in rows]
    # torch.compile, fast, fast + graph of each model at 1024^2, then the fused "auto" rows
    assert got[:8] == [("acceptance", p, "1024x1024", v) for p, v in (
        ("bench19m", "compile"), ("bench19m", "fast"), ("bench19m", "graph"),
        ("paper", "compile"), ("paper", "fast"), ("paper", "graph"),
        ("bench19m", "fused"), ("paper", "fused"))]
    assert got[8:16] == [("acceptance-2048", p, "2048x2048", v) for p, v in (
        ("bench19m", "compile"), ("bench19m", "fast"), ("bench19m", "graph"),
        ("paper", "compile"), ("paper", "fast"), ("paper", "graph"),
        ("bench19m", "fused"), ("paper", "fused"))]
    assert {r.phase for r in rows[16:]} == {"matrix"}
    assert got[16:18] == [("matrix", "bench19m", "1024x1024", "fp32"), ("matrix", "bench19m", "1024x1024", "bf16")]
    assert len(rows) == len({(r.case, r.variant) for r in rows})  # every row once
    # --acceptance-only: the first phase alone
    only = plan.schedule(cases, plan.VARIANTS, "subset", phases=("acceptance",))
    assert [(r.case.preset, r.variant) for r in only] == [(p, v) for _, p, _, v in got[:8]]
    # a filter leaves rows out of every phase
    assert [r.variant for r in plan.schedule(cases, {"fast"}, "subset")][:2] == ["fast", "fast"]


def test_compile_modes():
    sizes = [(256, 256), (1024, 1024)]
    assert all(c.compile for c in plan.build_plan(["test"], sizes, [1, 8], "all"))
    assert not any(c.compile for c in plan.build_plan(["test"], sizes, [1, 8], "none"))


def test_variants_for_reports_why_a_variant_is_left_out():
    case = plan.Case("paper", 256, 256, 8, compile=False)
    reasons = dict(plan.variants_for(case, {"fp32", "compile", "fast"}, "subset"))
    assert list(reasons) == ["fp32", "compile", "fast"]  # in the running order; --only leaves out graph
    assert reasons["fp32"] is None and reasons["fast"] is None
    assert "compile subset" in reasons["compile"]
    assert dict(plan.variants_for(case, set(plan.VARIANTS), "none"))["compile"] == "--compile none"


def test_cost_model_steady_calls_from_flops():
    cost = plan.CostModel(plan.RepPolicy(window_s=2.0, min_reps=3, max_reps=1000, cap_s=10.0))
    flops = 1e14  # a 100 TFLOP restore: 4 s a call at the eager prior
    assert cost.call_s("fp32", flops) == pytest.approx(4.0)
    assert cost.call_s("fast", 1e6) == plan.PRIOR_FLOOR_S["fast"]  # tiny: launch-bound floor
    cost.learn("fp32", flops, median_s=2.0, first_call_s=2.5, preset="p")
    assert cost.call_s("fp32", 2 * flops) == pytest.approx(4.0)  # the measured rate, scaled by FLOPs
    cost.learn("fp32", flops / 100, median_s=1.0, first_call_s=1.2, preset="p")  # a smaller row does not recalibrate
    assert cost.call_s("fp32", flops) == pytest.approx(2.0)
    cost.learn("fast", flops, median_s=0.5, first_call_s=30.5, preset="p")
    assert cost.call_s("graph", flops) == cost.call_s("fused", flops) == pytest.approx(0.5)  # the fast path's rate


def test_first_calls_are_planned_from_what_they_compile_and_set_up():
    cost = plan.CostModel(plan.RepPolicy(window_s=2.0, min_reps=3, max_reps=1000, cap_s=10.0))
    eager, compiled, fast, fused = (plan.FIRST_CALL_PRIOR_S[k] for k in ("eager", "compile", "fast", "fused"))
    flops = 1e14  # 1 s a call at the fast path's prior
    # first, a warm-up, 3 reps; the first call adds the Triton compiles of the fast path
    assert cost.row_s("fast", flops, "a") == pytest.approx(1.0 * 5 + fast[0])
    # a CUDA graph: the same compiles, and the capture's two warm-ups and recording
    assert cost.first_call_extra_s("graph", 1.0, preset="a") == pytest.approx(fast[0] + 3.0)
    # "auto": the fast path's and the fused conv's compiles, the capture and both paths timed per shape
    assert cost.first_call_extra_s("fused", 1.0, preset="a") == pytest.approx(fast[0] + fused[0] + 3.0 + 6.5)
    # eager fp32 at 4 s a call: first call (with cuDNN's set-up), no warm-up, 2 reps (cap_s = 10 s)
    assert cost.row_s("fp32", flops, "a") == pytest.approx(4.0 + eager[0] + 2 * 4.0)
    assert cost.first_call_extra_s("compile", 1.0, preset="a") == compiled[0]
    cost.learn("fast", flops, median_s=1.0, first_call_s=1.0 + fast[0] / 2, preset="a")  # compiled in half the prior
    assert cost.part_s("fast", "a") == pytest.approx(fast[2] / 2)  # the same model again: little to compile
    assert cost.part_s("fast", "b") == pytest.approx(fast[1] / 2)  # another model: its new specialisations
    assert cost.first_call_extra_s("graph", 1.0, preset="a") == pytest.approx(fast[2] / 2 + 3.0)
    cost.learn("compile", flops, median_s=0.1, first_call_s=33.1, preset="a")
    assert cost.first_call_extra_s("compile", 0.1, preset="b") == pytest.approx(33.0)  # every shape compiles anew
    cost.mark_paid("fused", "b")  # a row that failed still compiled
    assert cost.part_s("fused", "a") == pytest.approx(fused[1])
    assert cost.reference_s(flops, "c") == pytest.approx(4.0 + eager[0])  # one untimed eager fp32 call
    assert plan.CostModel(plan.RepPolicy(), compile_mode="max-autotune").part_s("compile") == \
        plan.FIRST_CALL_PRIOR_S["compile-max-autotune"][0]
    assert plan.CostModel(plan.RepPolicy(), cpu=True).row_s("fused", 1e14) == 0.0  # no priors on the CPU smoke


def test_kernel_sections_are_planned_per_op():
    cost = plan.CostModel(plan.RepPolicy())
    first, later = plan.KERNEL_PRIOR_S["group_norm_modulate_silu"]
    assert cost.kernel_section_s("group_norm_modulate_silu") == first
    cost.learn_kernel("group_norm_modulate_silu", 40.0)  # the first compiled the op's kernels
    assert cost.kernel_section_s("group_norm_modulate_silu") == later
    cost.learn_kernel("group_norm_modulate_silu", 9.0)
    assert cost.kernel_section_s("group_norm_modulate_silu") == 9.0
    assert cost.kernel_section_s("euler_step") == plan.KERNEL_PRIOR_S["euler_step"][0]


def test_budget_and_max_call_skips():
    now = [0.0]
    budget = plan.Budget(100.0, now=lambda: now[0])
    assert budget.skip_reason(100.0) is None
    assert "would end after the budget" in budget.skip_reason(100.5)
    now[0] = 100.0
    assert "budget spent" in budget.skip_reason(0.0)
    cost = plan.CostModel(plan.RepPolicy())
    now[0] = 0.0
    assert "--max-call-s 10" in plan.row_skip_reason("fp32", 1e15, cost, budget, max_call_s=10.0)
    assert plan.row_skip_reason("fast", 1e9, cost, budget, max_call_s=10.0, estimate_s=50.0) is None
    assert "would end after" in plan.row_skip_reason("fast", 1e9, cost, budget, max_call_s=10.0, estimate_s=101.0)


def test_a_budget_within_a_budget_ends_with_it():
    now = [0.0]
    budget = plan.Budget(100.0, now=lambda: now[0])
    now[0] = 70.0
    part = budget.within(20.0, "--conv-budget-s")
    assert part.seconds == 20.0 and part.label == "--conv-budget-s 20, from 70 s"
    assert budget.within(50.0, "--conv-budget-s").seconds == pytest.approx(30.0)  # what is left
    assert budget.within(0.0, "--conv-budget-s").seconds == pytest.approx(30.0)  # 0: no cap of its own
    now[0] = 85.0
    assert part.remaining() == pytest.approx(5.0) and "would end after" in part.skip_reason(6.0)
    now[0] = 120.0
    assert budget.within(10.0, "x").seconds == 0.0


def test_the_fused_conv_variant_runs_only_in_its_acceptance_cells():
    inside = [plan.Case(p, s, s, 1, False) for p in ("bench19m", "paper") for s in (1024, 2048)]
    outside = [plan.Case("default", 1024, 1024, 1, False), plan.Case("paper", 256, 256, 1, False),
               plan.Case("paper", 1024, 1024, 8, False), plan.Case("bench19m", 2160, 3840, 1, False)]
    for case in inside:
        assert dict(plan.variants_for(case, set(plan.VARIANTS), "subset"))["fused"] is None
    for case in outside:  # no row at all, not a skipped one
        assert "fused" not in dict(plan.variants_for(case, set(plan.VARIANTS), "subset"))
