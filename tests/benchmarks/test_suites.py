"""CI's run of the pytest-benchmark suites in benchmarks/ (pytest.ini's testpaths hold tests/
only): each benchmark function once (``--benchmark-disable``), on the CPU, in a subprocess without
TRITON_INTERPRET (tests/conftest.py sets it here, and benchmarks never time the interpreter);
then under the interpreter, where every one of them must skip."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _pytest_benchmarks(*args: str, interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"  # a smoke run: on a shared 2-core machine more threads only contend
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider",
                           "--benchmark-disable", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_benchmark_suites_run_on_the_cpu():
    result = _pytest_benchmarks(interpret=False)
    tail = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and " failed" not in result.stdout, tail


def test_benchmark_suites_skip_under_the_interpreter():
    result = _pytest_benchmarks("-k", "test_euler_step and not in_place", interpret=True)
    tail = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0 and " passed" not in result.stdout, tail
    assert "TRITON_INTERPRET=1" in result.stdout, tail  # the skip reason, shown by -ra
