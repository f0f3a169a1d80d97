"""Suite-wide setup. Without a GPU the Triton kernels run under the interpreter on CPU tensors,
so CI tests the kernels themselves; TRITON_INTERPRET must be set before triton is imported."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
