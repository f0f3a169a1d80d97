"""Benchmarks of resflow-fast (installed as ``resflow_fast.benchmarks``).

``python -m resflow_fast.benchmarks`` (``bench.py``) prints issue 3's side-by-side table;
``benchmarks/run_on_gpu.sh`` is the one device call; ``test_bench_*.py`` are pytest-benchmark
suites. Nothing here times the Triton interpreter. See BENCHMARKS.md.
"""
