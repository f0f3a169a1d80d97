"""resflow-fast: ResFlow image restoration (Reversing Flow for Image Restoration, CVPR 2025).

Layers, one direction of dependency: ``resflow_fast.reference`` (the plain-PyTorch spec) ->
``resflow_fast.kernels`` (Triton) -> ``resflow_fast`` (public API, CLI).
"""
import importlib.metadata as _metadata

try:
    __version__ = _metadata.version("resflow-fast")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .imageio import DeepImage, ResflowInputError
from .restorer import MemoryBudgetError, Restorer, RestoreError, restore

__all__ = ["__version__", "restore", "Restorer", "RestoreError", "MemoryBudgetError", "ResflowInputError", "DeepImage"]
