"""Tests of benchmarks/gpu_check.py: it is the benchmark restricted to the rows the GPU run is
accepted on (the benchmark itself, refusals included, is tested in test_bench.py)."""
from resflow_fast.benchmarks import gpu_check


def test_asks_for_the_acceptance_rows():
    argv = gpu_check.bench_argv("out", quick=False, budget_s=300.0)
    assert "--acceptance-only" in argv
    assert argv[argv.index("--presets") + 1] == "bench19m,paper"
    assert argv[argv.index("--sizes") + 1] == "1024" and argv[argv.index("--batch") + 1] == "1"
    assert argv[argv.index("--budget-s") + 1] == "300.0"
    quick = gpu_check.bench_argv("out", quick=True, budget_s=300.0)
    assert quick[quick.index("--presets") + 1] == "bench19m"


def test_main_passes_its_subset_to_the_benchmark(monkeypatch):
    seen = []
    monkeypatch.setattr(gpu_check, "bench_main", lambda argv: seen.append(argv) or 0)
    assert gpu_check.main(["--out", "d", "--quick", "--budget-s", "100"]) == 0
    assert seen == [gpu_check.bench_argv("d", True, 100.0)]
