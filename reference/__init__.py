"""The ResFlow specification in plain PyTorch (fp32): schedule, U-Net, sampler, loss, data, trainer.

Installed as ``resflow_fast.reference``. It imports only torch, numpy and small I/O libraries,
never the kernels or the public package: it is the oracle everything else is tested against.
"""
from .schedule import SCHEDULES, Schedule, loss_weight, sigma_y, sigma_y_derivative, time_grid
from .unet import PRESETS, UNet, UNetConfig, build_unet, preset_config
from .sampler import euler_sample
from .losses import velocity_matching_loss, weighted_velocity_loss

__all__ = [
    "SCHEDULES", "Schedule", "loss_weight", "sigma_y", "sigma_y_derivative", "time_grid",
    "PRESETS", "UNet", "UNetConfig", "build_unet", "preset_config",
    "euler_sample", "velocity_matching_loss", "weighted_velocity_loss",
]
