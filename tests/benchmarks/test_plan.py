"""Tests of benchmarks/plan.py: the matrix, its order, the compile subset, the cost estimates and
the budget."""
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
    # issue 4's cells (1024^2, batch 1, compiled) first, in the presets' order
    assert [(c.preset, c.image, c.batch, c.compile) for c in cases[:3]] == [
        ("bench19m", "1024x1024", 1, True), ("paper", "1024x1024", 1, True), ("default", "1024x1024", 1, True)]
    assert not any(c.compile for c in cases[3:])
    pixels = [c.pixels for c in cases[3:]]
    assert pixels == sorted(pixels)  # then cheapest first: a budget cut drops the most expensive
    assert cases[-1].label == "default 3840x2160 b8"


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


def test_cost_model_priors_then_calibration():
    cost = plan.CostModel(plan.RepPolicy(window_s=2.0, min_reps=3, max_reps=1000, cap_s=10.0))
    flops = 1e14  # a 100 TFLOP restore: 4 s a call at the eager prior
    assert cost.call_s("fp32", flops) == pytest.approx(4.0)
    assert cost.call_s("fast", 1e6) == plan.PRIOR_FLOOR_S["fast"]  # tiny: launch-bound floor
    assert cost.first_call_extra_s("compile") == plan.PRIOR_COMPILE_S["default"]
    # first call, no warm-up (an eager first call of seconds is one), 2 timed reps (cap_s = 10 s)
    assert cost.row_s("fp32", flops) == pytest.approx(4.0 * 3)
    # fast at 1 s a call: first, warm-up, 3 reps
    assert cost.row_s("fast", 1e14) == pytest.approx(1.0 * 5)
    cost.learn("fp32", flops, median_s=2.0, first_call_s=2.5)
    assert cost.call_s("fp32", 2 * flops) == pytest.approx(4.0)  # the measured rate, scaled by FLOPs
    cost.learn("fp32", flops / 100, median_s=1.0, first_call_s=1.2)  # a smaller row does not recalibrate
    assert cost.call_s("fp32", flops) == pytest.approx(2.0)
    cost.learn("compile", flops, median_s=0.1, first_call_s=33.0)
    assert cost.first_call_extra_s("compile") == 33.0


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
    assert plan.row_skip_reason("fast", 1e9, cost, budget, max_call_s=10.0) is None


def test_the_fused_conv_variant_runs_only_in_issue_7s_cells():
    inside = [plan.Case(p, s, s, 1, False) for p in ("bench19m", "paper") for s in (1024, 2048)]
    outside = [plan.Case("default", 1024, 1024, 1, False), plan.Case("paper", 256, 256, 1, False),
               plan.Case("paper", 1024, 1024, 8, False), plan.Case("bench19m", 2160, 3840, 1, False)]
    for case in inside:
        assert dict(plan.variants_for(case, set(plan.VARIANTS), "subset"))["fused"] is None
    for case in outside:  # no row at all, not a skipped one
        assert "fused" not in dict(plan.variants_for(case, set(plan.VARIANTS), "subset"))
