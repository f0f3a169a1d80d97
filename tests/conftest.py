"""Suite-wide setup.

Without a GPU the Triton kernels run under the interpreter on CPU tensors, so CI tests the kernels
themselves; TRITON_INTERPRET must be set before triton is imported. Two markers (pytest.ini) skip
what cannot run here, decided once in :func:`pytest_collection_modifyitems`:

* ``interpreter_only``: needs TRITON_INTERPRET=1 (Triton kernels on CPU tensors);
* ``cuda``: needs a CUDA GPU with the compiled kernels (TRITON_INTERPRET unset).
"""
import os

import numpy as np
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


# ------------------------------------------------------------------------------------------------
# helpers shared by the test files, as fixtures that hand out the function (under
# --import-mode=importlib a test file cannot import this conftest)
# ------------------------------------------------------------------------------------------------
def make_random_unet(schedule=None, *, std=0.05, seed=0, **overrides):
    """The "test"-preset reference U-Net (``overrides``: UNetConfig fields), in eval mode, with
    every weight drawn from N(0, std^2) after ``torch.manual_seed(seed)``. The reference
    zero-initialises its output convs (v = 0 from any input), which would hide the network from
    any comparison; small random weights give a velocity field that really moves the image."""
    from resflow_fast.reference.schedule import Schedule
    from resflow_fast.reference.unet import UNet, preset_config

    schedule = schedule or Schedule()
    torch.manual_seed(seed)
    model = UNet(preset_config("test", auxiliary=schedule.has_auxiliary, **overrides))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=std)
    return model.eval()


def psnr_01(a, b) -> float:
    """PSNR in dB of two images with values in [0, 1] (numpy arrays or tensors, any layout: the
    error is averaged over every value), by the package's own metric ``reference.metrics.psnr``,
    which takes model-range [-1, 1] images."""
    from resflow_fast.reference.metrics import psnr

    def model_range(x):
        t = torch.as_tensor(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64))
        return (t * 2 - 1).reshape(1, 1, -1, 1)  # one image: the MSE over all its values

    return psnr(model_range(a), model_range(b))


@pytest.fixture(scope="session")
def random_unet():
    return make_random_unet


@pytest.fixture(scope="session")
def psnr01():
    return psnr_01
