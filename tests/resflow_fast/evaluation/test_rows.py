"""Tests of resflow_fast/evaluation/rows.py: each degradation gets the rows of its kind, and every
record's metrics are what scikit-image computes for the same 8-bit images."""
import numpy as np
import pytest

from resflow_fast.evaluation.degradations import DEGRADATIONS
from resflow_fast.evaluation.report import render_markdown
from resflow_fast.evaluation.rows import DEFAULT_MODEL_ROW, default_task_models, evaluate, image_metrics


def test_each_degradation_gets_the_rows_of_its_kind(small_result):
    images, _, result = small_result
    rows = {d: [r["name"] for r in result.rows[d]] for d in result.rows}
    assert rows["noise-25"] == ["degraded input", "scikit-image TV", "ResFlow, 1 step", "ResFlow, 2 steps",
                                "ablation: control, 4 steps"]
    # each classical restorer on its own kind of rows only
    assert rows["jpeg-10"] == ["degraded input", "ResFlow, 1 step", "ResFlow, 2 steps"]
    assert rows["haze"] == ["degraded input", "dark channel prior", "ResFlow, 1 step", "ResFlow, 2 steps"]
    assert len(result.records) == (5 + 3 + 4) * len(images)
    for rec in result.records:
        assert np.isfinite(rec["psnr"]) and 0 < rec["ssim"] <= 1 and rec["seconds"] >= 0


def test_the_input_rows_metrics_are_scikit_images(small_result):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    images, degs, result = small_result
    for image in images:
        lq = degs[0].apply(image.clean, image.name)
        rec = next(r for r in result.records if r["image"] == image.name and r["row"] == "degraded input"
                   and r["degradation"] == "noise-25")
        assert rec["psnr"] == pytest.approx(skimage_metrics.peak_signal_noise_ratio(image.clean, lq), abs=1e-9)
        assert rec["ssim"] == pytest.approx(skimage_metrics.structural_similarity(
            image.clean / 255.0, lq / 255.0, data_range=1, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, channel_axis=2), abs=1e-9)
        assert image_metrics(lq, image.clean) == (rec["psnr"], rec["ssim"])


def test_a_task_with_its_own_embedded_model_shows_the_default_beside_it(make_images):
    """Noise goes to the embedded `denoise` model; the blind `default` gets a 4-step row of its own
    so the report shows which measures better. A path (or `default` itself) adds no such row."""
    assert default_task_models()["noise"] == "denoise"
    assert all(default_task_models()[task] == "mix" for task in ("rain", "haze", "snow"))
    images = make_images()[:1]
    result = evaluate(images, [DEGRADATIONS["noise-25"], DEGRADATIONS["jpeg-10"]],
                      default_task_models(), steps=(1,), baselines=(), device="cpu", progress=False)
    noise, jpeg = ([r["name"] for r in result.rows[k]] for k in ("noise-25", "jpeg-10"))
    assert noise == ["degraded input", "ResFlow, 1 step", DEFAULT_MODEL_ROW]
    assert jpeg == ["degraded input", "ResFlow, 1 step"]
    assert {r["name"]: r["model"] for r in result.rows["noise-25"]}[DEFAULT_MODEL_ROW] == "default"
    by_row = {r["row"]: r["psnr"] for r in result.records if r["degradation"] == "noise-25"}
    assert by_row["ResFlow, 1 step"] != by_row[DEFAULT_MODEL_ROW]  # two models, two results
    assert result.environment["task_models"]["noise"]["model"] == "denoise"
    assert "ResFlow model: `denoise`" in render_markdown(result, "cmd")
