"""benchmarks/run_on_gpu.sh, the GPU call, on the CPU.

With a stand-in interpreter (PYTHON=) whose tests and benchmark hang, on a short deadline: the
stages run in order, each is stopped by its own timeout, the whole call ends by its deadline, and
what the stages printed or wrote before they were stopped is in the output folder. With the real
interpreter but no installed package and a failing pip: the linked layout imports, and the tests
and the benchmark's entry point run through it. The deadlines are short and the margins generous:
nothing depends on how fast this machine is.
"""
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "run_on_gpu.sh"

# Stands in for python3: records its arguments; pip and the import check succeed; pytest prints a
# failure and, with FAKE_HANG=1, then hangs, as does the benchmark after writing one row.
FAKE_PYTHON = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >> "$FAKE_ARGV"
case "$1 $2" in
    "-m pip") exit 0 ;;
    "-m pytest")
        echo "tests/kernels/test_k.py::test_parity FAILED"
        echo "______ FAILED (call) tests/kernels/test_k.py::test_parity ______"
        echo "AssertionError: streamed before the stop"
        [ "$FAKE_HANG" = 1 ] && exec sleep 300
        echo "========== 1 passed in 0.01s =========="
        exit 0 ;;
    "-m resflow_fast.benchmarks")
        while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
        echo '{"restore": [{"label": "finished row"}]}' > "$out/results.json"
        echo "# fake results" > "$out/results.md"
        echo "row 1 done"
        [ "$FAKE_HANG" = 1 ] && exec sleep 300
        exit 0 ;;
    "-c "*) echo "imports fake"; exit 0 ;;
esac
echo "fake python: unexpected arguments: $*" >&2
exit 99
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _run(out, *args, env=None, timeout=120):
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "OUT"}
    start = time.monotonic()
    result = subprocess.run(["bash", str(SCRIPT), *([str(out)] if out else []), *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - start


@pytest.fixture
def fake(tmp_path):
    python = _executable(tmp_path / "python3", FAKE_PYTHON)
    argv = tmp_path / "argv.txt"
    return {"PYTHON": str(python), "FAKE_ARGV": str(argv)}, argv


def test_the_script_parses_and_passes_shellcheck(check_shell_script):
    check_shell_script(SCRIPT)


def test_it_says_so_when_there_is_nowhere_to_write(tmp_path):
    result, _ = _run(None)
    assert result.returncode == 2 and "no output folder: give one, or set OUT" in result.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result, _ = _run(blocker / "out")
    assert result.returncode == 2 and "cannot write into the output folder" in result.stderr
    result, _ = _run(tmp_path / "out", "--slow")
    assert result.returncode == 2 and "unknown option '--slow'" in result.stderr


def test_a_hanging_call_still_ends_by_its_deadline_with_what_it_did(tmp_path, fake):
    env, argv = fake
    out = tmp_path / "out"
    deadline = 16
    start_epoch = time.time()
    result, seconds = _run(out, env={**env, "FAKE_HANG": "1", "DEADLINE_S": str(deadline), "TESTS_S": "4",
                                     "MIN_BENCH_S": "2", "MIN_STAGE_S": "2", "END_MARGIN_S": "3",
                                     "BENCH_MARGIN_S": "1"})
    assert seconds < deadline + 5, result.stdout  # timeout's grace after a stage's limit is inside the margin
    assert result.returncode == 1
    # stage 1: streamed into its log before it was stopped
    tests_log = (out / "cuda-tests.log").read_text()
    assert "test_parity FAILED" in tests_log and "streamed before the stop" in tests_log
    # stage 2: the row it wrote before it was killed is there
    assert json.loads((out / "results.json").read_text()) == {"restore": [{"label": "finished row"}]}
    assert "row 1 done" in (out / "bench.log").read_text()
    assert (out / "BENCHMARKS.md").read_text() == (REPO / "BENCHMARKS.md").read_text()  # the copy it updates
    # the stages in order, each stopped at its limit and saying so
    log = (out / "call.log").read_text()
    marks = ["setup done: resflow_fast imports through pip install -e .", "stage 1: pytest -m cuda tests/kernels",
             "stage 1 done", "stopped at the 4 s limit", "stage 2: python -m resflow_fast.benchmarks",
             "stage 2 done", "benchmark: stopped at the", "s; in "]
    positions = [log.find(mark) for mark in marks]
    assert -1 not in positions and positions == sorted(positions), log
    assert result.stdout.rstrip().splitlines()[-1].startswith("[")  # the outcome lines come last
    assert "# fake results" in result.stdout
    # the failures again at the end, from the streamed report (pytest was stopped before its summary)
    assert result.stdout.index("FAILED tests/kernels/test_k.py::test_parity") > result.stdout.index("# fake results")
    # what each stage was asked to do
    calls = argv.read_text().splitlines()
    assert calls[0].startswith("-m pip install --no-index --no-build-isolation --no-deps -q -e .")
    pytest_args = next(c for c in calls if c.startswith("-m pytest")).split()
    assert pytest_args[:4] == ["-m", "pytest", "-m", "cuda"] and "resflow_fast.benchmarks.stream_failures" in pytest_args
    paths = [a for a in pytest_args if a.startswith("tests")]
    assert paths[0] == "tests/kernels" and "tests/resflow_fast" in paths  # kernel parity first
    bench = next(c for c in calls if c.startswith("-m resflow_fast.benchmarks"))
    assert '--call bash benchmarks/run_on_gpu.sh "$OUT"' in bench and "--conv-layers" in bench
    assert "--acceptance-only" not in bench and f"--write-benchmarks-md {out}/BENCHMARKS.md" in bench
    assert "--cuda-tests stopped at the 4 s limit" in bench
    end_by = int(bench.split("--end-by ")[1].split()[0])
    assert end_by <= start_epoch + deadline + 1


def test_the_quick_call_asks_for_the_acceptance_rows_only(tmp_path, fake):
    env, argv = fake
    result, _ = _run(tmp_path / "out", "--quick", env={**env, "FAKE_HANG": "0"})
    assert result.returncode == 0, result.stdout + result.stderr  # tests passed, the benchmark finished
    bench = next(c for c in argv.read_text().splitlines() if c.startswith("-m resflow_fast.benchmarks"))
    assert "--acceptance-only" in bench and "--conv-layers" not in bench
    assert '--call bash benchmarks/run_on_gpu.sh "$OUT" --quick' in bench
    assert "over within 240 s" in result.stdout and "at most 75 s" in result.stdout
    assert "--cuda-tests 1 passed in 0.01s" in bench


def test_without_an_install_the_linked_layout_imports(tmp_path):
    """pip fails and nothing is installed (the interpreter runs without site, so the editable
    install of this checkout is not seen): the script's linked layout must carry the import check,
    pytest with the streaming plugin, and the benchmark's entry point."""
    sites = os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))
    wrapper = _executable(tmp_path / "python3", f"""#!/usr/bin/env bash
if [ "$1 $2" = "-m pip" ]; then echo "pip: simulated failure" >&2; exit 1; fi
PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{sites}" exec "{sys.executable}" -S "$@"
""")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    # without the linked layout nothing imports: from the repository, `python -m` finds its
    # resflow_fast/ first, which has no reference/ (the failure the layout fixes)
    broken = subprocess.run([str(wrapper), "-m", "resflow_fast.benchmarks", "--dry-run"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert broken.returncode != 0 and "No module named 'resflow_fast.reference'" in broken.stderr
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**env, "PYTHON": str(wrapper), "TEST_PATHS": "tests/benchmarks/test_measure.py"})
    log = (out / "call.log").read_text()
    assert "pip install failed or does not import" in log and "imports through the linked layout" in log, log
    assert "imports resflow_fast.benchmarks.bench from" in log and "/src/resflow_fast/benchmarks/bench.py" in log
    tests_log = (out / "cuda-tests.log").read_text()
    assert "deselected" in tests_log and "Error" not in tests_log  # pytest and the plugin loaded; no CUDA tests here
    assert "no CUDA GPU here" in (out / "bench.log").read_text()  # the entry point ran, and refused the CPU
    assert result.returncode == 1
