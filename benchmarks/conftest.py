"""Fixtures of the pytest-benchmark suites (``python -m pytest benchmarks``).

Every suite runs on the CPU (tiny shapes; without ``TRITON_INTERPRET`` the kernels run their
pure-torch twins, which is what a CPU user gets) and, where there is one, on a CUDA GPU (the
acceptance shapes of the GPU run). Nothing is timed under the Triton interpreter: every test skips there.
CI runs these with ``--benchmark-disable`` (each function once) so they cannot rot
(tests/benchmarks/test_suites.py).
"""
import pytest
import torch

from resflow_fast.benchmarks.measure import Clock, ceilings, refusal_to_time


@pytest.fixture(autouse=True)
def _never_time_the_interpreter():
    reason = refusal_to_time()
    if reason:
        pytest.skip(reason)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def device(request) -> torch.device:
    return torch.device(request.param)


_ceilings: dict = {}


def device_ceilings(device: torch.device) -> dict:
    """The copy and matmul ceilings of ``device``, measured once per session (only when timing)."""
    if device.type not in _ceilings:
        _ceilings[device.type] = ceilings(device, Clock(device))
    return _ceilings[device.type]


@pytest.fixture
def timed(benchmark, device):
    """``timed(fn, bytes_moved=..., flops=..., rounds=...)``: benchmark ``fn`` waiting for the GPU
    after every call, and record the achieved GB/s or TFLOP/s and their share of this device's
    ceilings in the saved JSON's ``extra_info``. ``rounds`` switches to a fixed number of rounds
    (for calls of a second or more)."""

    def run(fn, *, bytes_moved=None, flops=None, rounds=None):
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def call():
            out = fn()
            sync()
            return out

        result = benchmark.pedantic(call, rounds=rounds, warmup_rounds=1) if rounds else benchmark(call)
        if benchmark.enabled and benchmark.stats is not None:
            median_s = benchmark.stats.stats.median
            ceil = device_ceilings(device)
            if bytes_moved:
                gbs = bytes_moved / median_s / 1e9
                benchmark.extra_info.update(gbs=gbs, pct_copy=100 * gbs / ceil["copy_gbs"])
            if flops:
                tflops = flops / median_s / 1e12
                benchmark.extra_info.update(tflops=tflops, pct_matmul=100 * tflops / ceil["matmul_tflops"])
        return result

    return run
