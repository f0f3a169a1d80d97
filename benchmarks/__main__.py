"""``python -m resflow_fast.benchmarks``: see :mod:`resflow_fast.benchmarks.bench`."""
import sys

from .bench import main

sys.exit(main())
