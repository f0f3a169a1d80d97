"""Benchmarks of resflow-fast (installed as ``resflow_fast.benchmarks``).

``python -m resflow_fast.benchmarks`` (``bench.py``) prints the side-by-side table, planned by
``plan.py``; ``benchmarks/run_on_gpu.sh`` is the GPU call (the CUDA tests, with
``stream_failures.py`` printing each failure as it happens, then the table); ``test_bench_*.py``
are pytest-benchmark suites. Nothing here times the Triton interpreter. See BENCHMARKS.md.
"""
