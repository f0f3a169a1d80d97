"""A pytest plugin that prints each failure's report the moment the test fails.

pytest keeps tracebacks for its summary at the end of the session, which a run stopped by a
time limit never reaches. The GPU call (benchmarks/run_on_gpu.sh) loads this plugin
(``-p resflow_fast.benchmarks.stream_failures``) so that every failure is in its log, as it
happens, whenever the run is stopped.
"""
from __future__ import annotations

import pytest

_reporter = None


@pytest.hookimpl(trylast=True)
def pytest_configure(config) -> None:
    global _reporter
    _reporter = config.pluginmanager.get_plugin("terminalreporter")


def pytest_runtest_logreport(report) -> None:
    """A failed setup, call or teardown: its full report now (the summary repeats it later)."""
    if not report.failed or _reporter is None:
        return
    _reporter.ensure_newline()
    _reporter.write_sep("_", f"FAILED ({report.when}) {report.nodeid}", red=True, bold=True)
    _reporter.write_line(report.longreprtext)
    for title, content in report.sections:  # captured output, as pytest's summary shows it
        if content.strip():
            _reporter.write_sep("-", title)
            _reporter.write_line(content.rstrip())
    _reporter.write_sep("_", f"end of {report.nodeid}")
    if hasattr(_reporter, "flush"):  # older pytest: its writer flushes each line
        _reporter.flush()
