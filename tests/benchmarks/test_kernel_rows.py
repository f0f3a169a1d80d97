"""Tests of benchmarks/kernel_rows.py that need no GPU (the CPU rows themselves are exercised by
test_bench.py's smoke run)."""
from resflow_fast.benchmarks import kernel_rows


def test_the_recompile_check_sees_the_norms_kernels():
    # the statistics and apply passes; an empty list would make "no recompile" vacuous
    kernels = kernel_rows.norm_kernels()
    assert [k.__name__ for k in kernels] == ["_gn_apply_kernel", "_gn_stats_kernel"]
