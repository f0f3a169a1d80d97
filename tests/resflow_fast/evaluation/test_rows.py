"""Tests of resflow_fast/evaluation/rows.py: each degradation gets the rows of its kind, and every
record's metrics are what scikit-image computes for the same 8-bit images."""
import numpy as np
import pytest

from resflow_fast.evaluation.degradations import DEGRADATIONS
from resflow_fast.evaluation.report import render_markdown
from resflow_fast.evaluation.rows import DEFAULT_MODEL_ROW, default_task_models, evaluate, image_metrics

SHIPPED = "ResFlow at its settings (4 steps)"


def test_each_degradation_gets_the_rows_of_its_kind(small_result):
    images, _, result = small_result
    rows = {d: [r["name"] for r in result.rows[d]] for d in result.rows}
    # the model at the settings its file records (none here: the package's default, 4 steps) comes
    # first, then the paper's grid at each step count asked for
    resflow = [SHIPPED, "ResFlow, 1 step", "ResFlow, 2 steps"]
    variants = ["ResFlow, 8 steps", "ResFlow, 2 steps, grid power 2", "ResFlow, 4 steps, grid power 2", "ResFlow, 4 steps, exact y"]
    assert rows["noise-25"] == ["degraded input", "scikit-image TV", *resflow, *variants, "ablation: control, 4 steps"]
    # each classical restorer on its own kind of rows only; the sampler variants at sigma 25 and
    # JPEG quality 10 only
    assert rows["jpeg-10"] == ["degraded input", *resflow, *variants]
    assert rows["haze"] == ["degraded input", "dark channel prior", *resflow]
    assert [r["group"] for r in result.rows["haze"]] == ["input", "classical", "shipped", "resflow", "resflow"]
    assert len(result.records) == (10 + 8 + 5) * len(images)
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
    """Haze goes to the embedded `haze-snow` model; the blind `default` gets a row of its own, at its
    recorded settings, so the report shows which measures better. Noise, JPEG and the clean
    photograph go to `default`, the model a user gets, and `default` itself (or the retired name
    `denoise`, which loads it) adds no such row."""
    assert all(default_task_models()[task] == "default" for task in ("noise", "jpeg", "clean"))
    assert all(default_task_models()[task] == "haze-snow" for task in ("haze", "snow"))
    assert default_task_models()["rain"] == "rain"
    images = make_images()[:1]
    result = evaluate(images, [DEGRADATIONS["noise-15"], DEGRADATIONS["haze"]],
                      default_task_models(), steps=(1,), baselines=(), device="cpu", progress=False)
    noise, haze = ([r["name"] for r in result.rows[k]] for k in ("noise-15", "haze"))
    assert haze[:2] == ["degraded input", haze[1]] and haze[1].startswith("ResFlow at its settings (")
    assert haze[2:] == ["ResFlow, 1 step", DEFAULT_MODEL_ROW]
    assert noise[0] == "degraded input" and noise[1].startswith("ResFlow at its settings (")
    assert noise[2:] == ["ResFlow, 1 step"]
    assert {r["name"]: r["model"] for r in result.rows["haze"]}[DEFAULT_MODEL_ROW] == "default"
    by_row = {r["row"]: r["psnr"] for r in result.records if r["degradation"] == "haze"}
    assert by_row["ResFlow, 1 step"] != by_row[DEFAULT_MODEL_ROW]  # two models, two results
    assert result.environment["task_models"]["haze"]["model"] == "haze-snow"
    assert "ResFlow model: `haze-snow`" in render_markdown(result, "cmd")
    retired = evaluate(images, [DEGRADATIONS["noise-15"]], {"noise": "denoise"}, steps=(1,), baselines=(),
                       device="cpu", progress=False)
    assert [r["name"] for r in retired.rows["noise-15"]][2:] == ["ResFlow, 1 step"]
    assert (retired.environment["task_models"]["noise"]["sha256_16"]
            == result.environment["task_models"]["noise"]["sha256_16"])  # the same file as `default`
    assert ({r["row"]: r["psnr"] for r in retired.records}["ResFlow, 1 step"]
            == {r["row"]: r["psnr"] for r in result.records if r["degradation"] == "noise-15"}["ResFlow, 1 step"])


def test_grey_and_clean_rows_are_measured_against_their_own_targets(tiny_model, make_images):
    """The grey row is restored and scored as a one-channel image against the grey photograph; the
    clean row's input is the photograph itself (infinite PSNR is no number: the input row is
    capped by the metric, so only the restorer's is checked to be finite)."""
    images = make_images()[:1]
    result = evaluate(images, [DEGRADATIONS["grey-noise-25"], DEGRADATIONS["clean"]],
                      {"noise": tiny_model, "clean": tiny_model}, steps=(1,), baselines=("scikit-image TV",),
                      device="cpu", progress=False)
    grey = {r["row"]: r for r in result.records if r["degradation"] == "grey-noise-25"}
    target = DEGRADATIONS["grey-noise-25"].target(images[0].clean)
    lq = DEGRADATIONS["grey-noise-25"].apply(images[0].clean, images[0].name)
    assert grey["degraded input"]["psnr"] == pytest.approx(image_metrics(lq, target)[0])
    assert "scikit-image TV" in grey and grey["scikit-image TV"]["psnr"] > grey["degraded input"]["psnr"]
    clean = {r["row"]: r for r in result.records if r["degradation"] == "clean"}
    assert set(clean) == {"degraded input", SHIPPED, "ResFlow, 1 step"}
    assert np.isfinite(clean[SHIPPED]["psnr"])


def test_resflow_rows_are_what_restore_gives_at_its_defaults(tiny_model, make_images):
    """A 256-px crop becomes 288 px with the 16-px margin, which the default tiling cuts into 2x2
    tiles: the shipped row must score that output, not a one-piece restore of the crop."""
    from resflow_fast import restore

    image = make_images(256)[0]
    result = evaluate([image], [DEGRADATIONS["noise-25"]], {"noise": tiny_model}, steps=(1,), baselines=(),
                      device="cpu", progress=False)
    lq = DEGRADATIONS["noise-25"].apply(image.clean, image.name)
    shipped = {r["row"]: r["psnr"] for r in result.records}[SHIPPED]
    assert shipped == image_metrics(restore(lq, model=tiny_model, seed=0), image.clean)[0]
    assert shipped != image_metrics(restore(lq, model=tiny_model, seed=0, tile=None), image.clean)[0]


def test_a_rows_model_is_recorded_without_the_machines_own_paths(tmp_path):
    from resflow_fast.evaluation.rows import ABLATION_DIR, _model_label

    assert _model_label("mix") == "mix" and _model_label(None) is None  # a classical row has none
    assert _model_label(str(ABLATION_DIR / "linear.safetensors")) == "docs/ablation-models/linear.safetensors"
    assert _model_label(str(tmp_path / "m.safetensors")) == str(tmp_path / "m.safetensors")  # outside: as given
