"""Suite-wide setup.

Without a GPU the Triton kernels run under the interpreter on CPU tensors, so CI tests the kernels
themselves; TRITON_INTERPRET must be set before triton is imported. Two markers (pytest.ini) skip
what cannot run here, decided once in :func:`pytest_collection_modifyitems`:

* ``interpreter_only``: needs TRITON_INTERPRET=1 (Triton kernels on CPU tensors);
* ``cuda``: needs a CUDA GPU with the compiled kernels (TRITON_INTERPRET unset).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():  # torch.cuda does not import triton
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    no_interpreter = pytest.mark.skip(reason="runs the Triton kernels on CPU under TRITON_INTERPRET=1")
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU and TRITON_INTERPRET unset (compiled kernels)")
    for item in items:
        if item.get_closest_marker("interpreter_only") and not interpret:
            item.add_marker(no_interpreter)
        if item.get_closest_marker("cuda") and (interpret or not torch.cuda.is_available()):
            item.add_marker(no_cuda)
