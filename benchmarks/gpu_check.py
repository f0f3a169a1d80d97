"""The acceptance rows of the benchmark, under their old name.

    python -m resflow_fast.benchmarks.gpu_check --out results/   [--quick] [--budget-s 420]

The ceilings, the fused kernels (with their correctness checks), and the 4-step restore at
1024^2, batch 1, of the bench19m and paper presets as torch.compile, the fast path, the fast path
as a CUDA graph and the fused-conv "auto" path: the rows the GPU run is accepted on. It is
:mod:`resflow_fast.benchmarks.bench` with ``--acceptance-only`` (``--quick``: bench19m only,
shorter timing windows); the full table is ``python -m resflow_fast.benchmarks``.
"""
from __future__ import annotations

import argparse
import os
import sys

from .bench import main as bench_main

PROG = "python -m resflow_fast.benchmarks.gpu_check"


def bench_argv(out: str, quick: bool, budget_s: float) -> list[str]:
    """The benchmark's arguments for the acceptance rows."""
    argv = ["--out", out, "--budget-s", str(budget_s), "--acceptance-only", "--sizes", "1024", "--batch", "1",
            "--presets", "bench19m" if quick else "bench19m,paper"]
    return argv + (["--window-s", "1", "--max-reps", "50"] if quick else [])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check")
    parser.add_argument("--quick", action="store_true", help="19.1M preset only, 1 s timing windows")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip rows estimated to end after this")
    args = parser.parse_args(argv)
    # recorded as the equivalent `python -m resflow_fast.benchmarks ...` command, which reruns it
    return bench_main(bench_argv(args.out, args.quick, args.budget_s))


if __name__ == "__main__":
    sys.exit(main())
