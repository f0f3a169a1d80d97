"""The import path the README gave the training hooks before they moved to
:mod:`resflow_fast.training_hooks`; kept so that training scripts written against it still run."""
from .training_hooks import fast_sample, fused_velocity_matching_loss, trainer_hooks

__all__ = ["fast_sample", "fused_velocity_matching_loss", "trainer_hooks"]
