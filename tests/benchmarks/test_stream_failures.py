"""benchmarks/stream_failures.py: a failure's report is printed when the test fails, before the
next test runs, not only in the summary at the end (which a run stopped by a time limit never
prints)."""
import subprocess
import sys

TESTS = '''
def test_first():
    print("output of the first test")
    assert 1 + 1 == 3, "the first test's failure"


def test_second():
    pass
'''


def _pytest(tmp_path, *plugin):
    (tmp_path / "test_sample.py").write_text(TESTS)
    result = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *plugin, "test_sample.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout


def test_a_failure_is_printed_before_the_next_test_runs(tmp_path):
    out = _pytest(tmp_path, "-p", "resflow_fast.benchmarks.stream_failures")
    second = out.index("test_sample.py::test_second PASSED")
    streamed = out.index("FAILED (call) test_sample.py::test_first")
    assert streamed < second
    assert out.index("the first test's failure") < second and out.index("output of the first test") < second
    assert out.index("=== FAILURES ===") > second  # pytest's own summary is still there


def test_without_the_plugin_it_comes_only_at_the_end(tmp_path):
    out = _pytest(tmp_path)
    assert out.index("the first test's failure") > out.index("test_sample.py::test_second PASSED")
