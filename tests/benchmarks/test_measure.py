"""Tests of benchmarks/measure.py: statistics, rep counts, the interpreter refusal, CPU timing."""
import pytest
import torch

from resflow_fast.benchmarks import measure


def test_summary_statistics():
    s = measure.summarize([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert s == {"median_ms": 5.5, "p90_ms": 9.0, "reps": 10}
    assert measure.summarize([4.0]) == {"median_ms": 4.0, "p90_ms": 4.0, "reps": 1}


@pytest.mark.parametrize("call_s, expected, why", [
    (0.005, 400, "fills the 2 s energy window"),
    (0.0001, 1000, "never more than max_reps"),
    (0.9, 3, "at least min_reps for a median"),
    (4.0, 2, "at most cap_s (10 s) of calls"),
    (40.0, 1, "always at least one call"),
])
def test_rep_count(call_s, expected, why):
    assert measure.rep_count(call_s, window_s=2.0, min_reps=3, max_reps=1000, cap_s=10.0) == expected, why


def test_refusal_names_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "TRITON_INTERPRET=1" in measure.refusal_to_time()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert measure.refusal_to_time() is None


def test_cpu_timing_without_energy():
    clock, meter = measure.Clock(torch.device("cpu")), measure.EnergyMeter(torch.device("cpu"))
    assert meter.handle is None and meter.read_mj() is None and "CPU" in meter.card_info()["nvml"]
    calls = []
    window = measure.timed_window(lambda: calls.append(1), clock, meter, reps=4)
    assert len(calls) == 4 and window["reps"] == 4 and window["joules_per_call"] is None
    assert 0 <= window["median_ms"] <= window["p90_ms"]
    out, seconds = clock.first_call(lambda: 7)
    assert out == 7 and seconds >= 0
