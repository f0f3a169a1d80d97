"""Shared pieces of the ``resflow eval`` tests: a tiny trained checkpoint and synthetic images."""
import numpy as np
import pytest

from resflow_fast.evaluation.images import EvalImage
from resflow_fast.reference.train import TrainConfig, train


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A `test`-preset checkpoint after 2 training steps: a real model file, made in a second."""
    out = tmp_path_factory.mktemp("eval") / "run"
    config = TrainConfig(preset="test", crop=16, batch_size=2, steps=2, out_dir=str(out), checkpoint_every=1000,
                         val_every=1000, val_images=1, degradation="noise:25")
    return str(train(config, progress=False)["checkpoint"])


def _synthetic_images(size: int = 48) -> list[EvalImage]:
    """Two smooth RGB gradients with a little texture, as EvalImages."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([xx, yy, (xx + yy) / 2], axis=-1)
    return [EvalImage(f"img{i}", "synthetic", np.round(255 * np.clip(smooth * (0.5 + 0.5 * i) + 0.05 * rng.random(
        (size, size, 3)), 0, 1)).astype(np.uint8)) for i in range(2)]


@pytest.fixture
def make_images():
    """``make_images(size=48)``: :func:`_synthetic_images`."""
    return _synthetic_images


@pytest.fixture(scope="session")
def small_result(tiny_model):
    """One small evaluation, shared by the rows and the report tests: (images, degradations, result).

    Two 48x48 images; noise (with a classical denoiser and an ablation row), JPEG (no classical row)
    and haze (the dehazer); ResFlow at 1 and 2 steps, so the 4-step goals are "not run"."""
    pytest.importorskip("skimage")
    from resflow_fast.evaluation.degradations import DEGRADATIONS
    from resflow_fast.evaluation.rows import evaluate

    images = _synthetic_images()
    degs = [DEGRADATIONS["noise-25"], DEGRADATIONS["jpeg-10"], DEGRADATIONS["haze"]]
    models = {"noise": tiny_model, "jpeg": tiny_model, "rain": tiny_model, "haze": tiny_model}
    result = evaluate(images, degs, models, steps=(1, 2), baselines=("scikit-image TV", "dark channel prior"),
                      ablations={"control": tiny_model}, device="cpu", progress=False)
    return images, degs, result
