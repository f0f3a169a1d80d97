"""Fused Triton kernels for ResFlow (``resflow_fast.kernels``).

Each op lives in one file named after it, with its kernel, a validating launcher, a
``torch.library`` registration (``torch.ops.resflow_fast.*``, so ``torch.compile`` traces through
without a graph break) and a pure-torch ``*_reference`` twin that is the CPU path and the test
oracle; the twins call the math of ``reference/``. What several ops share sits in private modules:
``_runtime`` (when Triton runs, validation, layouts), ``_group_stats`` (GroupNorm statistics),
``_conv3x3_common`` (the implicit-GEMM conv) and ``_training_common`` (training pairs). The twins run
instead of the kernels when Triton is missing, the tensors are on CPU without
``TRITON_INTERPRET=1``, or ``RESFLOW_DISABLE_TRITON=1`` is set (see ``_runtime.py``).
"""
from ._runtime import triton_available, use_triton
from .euler_step import euler_step, euler_step_reference
from .fused_conv3x3 import fused_conv3x3, fused_conv3x3_reference, pack_conv3x3_weight
from .fused_conv3x3_euler import fused_conv3x3_euler, fused_conv3x3_euler_reference
from .group_norm_modulate_silu import group_norm_modulate_silu, group_norm_modulate_silu_reference
from .group_stats import group_stats, group_stats_reference
from .training_input import training_input, training_input_reference
from .weighted_velocity_loss import weighted_velocity_loss, weighted_velocity_loss_reference

__all__ = [
    "group_norm_modulate_silu",
    "group_norm_modulate_silu_reference",
    "group_stats",
    "group_stats_reference",
    "euler_step",
    "euler_step_reference",
    "training_input",
    "training_input_reference",
    "weighted_velocity_loss",
    "weighted_velocity_loss_reference",
    "triton_available",
    "use_triton",
    "fused_conv3x3",
    "fused_conv3x3_reference",
    "fused_conv3x3_euler",
    "fused_conv3x3_euler_reference",
    "pack_conv3x3_weight",
]
