"""How the benchmarks measure: clocks, rep counts, energy, the card and its ceilings.

Everything here works on a CUDA device and on the CPU (the smoke mode that keeps the harness from
rotting): on CUDA a call is timed with CUDA events, on the CPU with ``time.perf_counter``.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time

import torch

MiB = 1 << 20


def refusal_to_time() -> str | None:
    """Why nothing may be timed in this process, or None. The Triton interpreter runs kernels
    as Python on the CPU: a timing of it says nothing about the kernels, so nothing here times it."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return ("refusing to time under TRITON_INTERPRET=1: the Triton interpreter runs kernels as "
                "Python, its timings mean nothing; unset TRITON_INTERPRET and run again")
    return None


class Clock:
    """Times single calls on one device: CUDA events on CUDA (the GPU time of what the call
    enqueued), ``time.perf_counter`` around the call on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def call_ms(self, fn) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return 1000.0 * (time.perf_counter() - t0)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def times_ms(self, fn, reps: int, warmup: int = 0) -> list[float]:
        for _ in range(warmup):
            fn()
        self.sync()
        return [self.call_ms(fn) for _ in range(reps)]

    def first_call(self, fn):
        """(result, seconds) of one call, host wall-clock through completion: what a user waits
        for on the first call (compilation, autotuning, graph capture, allocator growth)."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - t0


def summarize(times_ms: list[float]) -> dict:
    """Median, p90 (nearest rank) and count of per-call times."""
    times = sorted(times_ms)
    p90 = times[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)]
    return {"median_ms": statistics.median(times), "p90_ms": p90, "reps": len(times)}


def rep_count(call_s: float, window_s: float, min_reps: int, max_reps: int, cap_s: float) -> int:
    """Timed calls for one row.

    Enough calls to fill ``window_s`` (the energy window must be at least 2 s long), and at least
    ``min_reps`` for a median; but never more than ``max_reps``, nor more than ``cap_s`` seconds
    of calls, so one slow variant (eager fp32 at 2048^2 takes seconds a call) cannot eat the run.
    Always at least one.
    """
    call_s = max(call_s, 1e-6)
    reps = max(min_reps, math.ceil(window_s / call_s))
    return max(1, min(reps, max_reps, int(cap_s // call_s)))


def kernel_time_ms(fn, clock: Clock) -> tuple[float, float]:
    """(median, p90) ms of a memory-bound op. On CUDA via triton's ``do_bench``, which flushes L2
    between calls so a small tensor is not timed from cache; on the CPU, 20 wall-clock calls."""
    if clock.cuda:
        import triton.testing

        q = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.9])
        return float(q[0]), float(q[1])
    s = summarize(clock.times_ms(fn, reps=20, warmup=2))
    return s["median_ms"], s["p90_ms"]


class EnergyMeter:
    """Joules from NVML's total-energy counter (millijoules since the driver loaded).

    Unavailable (``handle`` None, ``error`` saying why) on the CPU, without nvidia-ml-py, or on a
    card without the counter: energy is then reported as missing, never as zero.
    """

    MIN_WINDOW_S = 2.0  # the counter updates every ~20-100 ms: shorter windows are mostly noise

    def __init__(self, device: torch.device):
        self.handle, self.pynvml, self.error = None, None, None
        if device.type != "cuda":
            self.error = "not measured on the CPU"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index if device.index is not None
                                                       else torch.cuda.current_device())
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises where the card has no counter
            self.handle, self.pynvml = handle, pynvml
        except Exception as e:  # noqa: BLE001 - any NVML failure means "no energy", not a failed run
            self.error = f"{type(e).__name__}: {e}"

    def read_mj(self) -> int | None:
        return None if self.handle is None else self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def card_info(self) -> dict:
        """Power limit, clocks and driver, each 'n/a (...)' where NVML does not say."""
        if self.handle is None:
            return {"nvml": self.error}
        p, h = self.pynvml, self.handle
        queries = {
            "power_limit_w": lambda: p.nvmlDeviceGetPowerManagementLimit(h) / 1000,
            "sm_clock_max_mhz": lambda: p.nvmlDeviceGetMaxClockInfo(h, p.NVML_CLOCK_SM),
            "mem_clock_max_mhz": lambda: p.nvmlDeviceGetMaxClockInfo(h, p.NVML_CLOCK_MEM),
            "sm_clock_now_mhz": lambda: p.nvmlDeviceGetClockInfo(h, p.NVML_CLOCK_SM),
            "mem_clock_now_mhz": lambda: p.nvmlDeviceGetClockInfo(h, p.NVML_CLOCK_MEM),
            "driver": lambda: p.nvmlSystemGetDriverVersion(),
        }
        info = {}
        for key, query in queries.items():
            try:
                value = query()
                info[key] = value.decode() if isinstance(value, bytes) else value
            except Exception as e:  # noqa: BLE001 - one missing field must not hide the others
                info[key] = f"n/a ({type(e).__name__})"
        return info


def timed_window(fn, clock: Clock, meter: EnergyMeter, reps: int) -> dict:
    """Time ``reps`` calls one by one and read the energy counter around all of them.

    The energy per call is reported only when the window lasted at least
    :attr:`EnergyMeter.MIN_WINDOW_S`; the rep count (:func:`rep_count`) is chosen to make it so.
    """
    clock.sync()
    e0, t0 = meter.read_mj(), time.perf_counter()
    times = [clock.call_ms(fn) for _ in range(reps)]
    clock.sync()
    window_s = time.perf_counter() - t0
    result = {**summarize(times), "window_s": window_s, "joules_per_call": None}
    if e0 is not None and window_s >= EnergyMeter.MIN_WINDOW_S:
        result["joules_per_call"] = (meter.read_mj() - e0) / 1000.0 / reps
    return result


def environment(device: torch.device, meter: EnergyMeter) -> dict:
    """What the numbers were measured on: card, versions, clocks, power limit."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - the CPU smoke runs without triton
        triton_version = None
    env = {"device": device.type, "torch": torch.__version__, "triton": triton_version,
           "python": platform.python_version(), "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        # eager "fp32" convs run in TF32 unless these say otherwise: part of what the fp32 rows mean
        env.update(card=torch.cuda.get_device_name(device), sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        env.update(card=f"CPU {platform.machine()} ({os.cpu_count()} cores, smoke mode)",
                   threads=torch.get_num_threads())
    return {**env, **meter.card_info()}


def ceilings(device: torch.device, clock: Clock) -> dict:
    """The card's ceilings, measured in this run so every row's share of them is like for like:
    device-to-device copy bandwidth (bytes read + written) and a large matmul (bf16 8192^3 on
    CUDA; fp32 1024^3 on the CPU, whose bf16 matmul is not what its convs use)."""
    cuda = device.type == "cuda"
    nbytes = (1 << 30) if cuda else (64 * MiB)
    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    copy_ms = statistics.median(clock.times_ms(lambda: b.copy_(a), reps=20 if cuda else 5, warmup=2))
    del a, b
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    m = torch.randn(n, n, device=device, dtype=dtype)
    mm_ms = statistics.median(clock.times_ms(lambda: m @ m, reps=20 if cuda else 5, warmup=2))
    return {"copy_gbs": 2 * nbytes / copy_ms / 1e6, "matmul_tflops": 2 * n**3 / mm_ms / 1e9,
            "matmul": f"{str(dtype).replace('torch.', '')} {n}^3", "copy_mib": nbytes // MiB,
            "copy_ms": copy_ms, "matmul_ms": mm_ms}
