"""Benchmarks of resflow-fast (installed as ``resflow_fast.benchmarks``). GPU timings never run
under the Triton interpreter."""
