"""pytest-benchmark suite of the whole 4-step restore: the fp32 reference sampler, the fast path
and (CUDA) the fast path as a CUDA graph. CUDA: the 19.1M model of docs/design/performance.md at
1024^2; CPU: the test preset at 32x32, where the fast path is the reference (ResFlowSampler falls
back to it).
The side-by-side table with every model, size and variant is ``python -m resflow_fast.benchmarks``."""
import pytest

from resflow_fast.benchmarks.restore_rows import degraded_image, make_model, restore_cost
from resflow_fast.reference.sampler import auxiliary_noise, euler_sample
from resflow_fast.sampler import ResFlowSampler

CASES = {"cuda": ("bench19m", 1024), "cpu": ("test", 32)}


@pytest.mark.parametrize("impl", ["reference", "fast", "fast_cuda_graph"])
def test_restore(timed, device, impl):
    if impl == "fast_cuda_graph" and device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    preset, size = CASES[device.type]
    model = make_model(preset, device)
    lq = degraded_image(size, size, 1, device)
    eps = auxiliary_noise(tuple(lq.shape), seed=0).to(device)  # drawn once, outside the timing
    if impl == "reference":
        fn = lambda: euler_sample(model, lq, steps=4, eps=eps)  # noqa: E731
    else:
        sampler = ResFlowSampler(model, steps=4, cuda_graphs=impl == "fast_cuda_graph")
        fn = lambda: sampler(lq, eps=eps)  # noqa: E731
    out = timed(fn, flops=restore_cost(preset, size, size)[0], rounds=10 if device.type == "cuda" else 3)
    assert out.shape == lq.shape and out.abs().max() <= 1
