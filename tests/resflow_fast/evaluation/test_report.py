"""Tests of resflow_fast/evaluation/report.py: the summary is the mean of the records, the goals
are judged as stated, and EVAL.md, eval.json and the figure show what was measured."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from resflow_fast.evaluation.degradations import DEGRADATIONS
from resflow_fast.evaluation.report import (REGENERATE_COMMAND, goals, render_figure, render_json, render_markdown,
                                            summarise)
from resflow_fast.evaluation.rows import evaluate


def test_summary_markdown_and_json_show_the_records(small_result):
    _, _, result = small_result
    summary = summarise(result)
    tv = [r["psnr"] for r in result.records if r["row"] == "scikit-image TV"]
    assert summary["noise-25"]["scikit-image TV"]["psnr"] == pytest.approx(np.mean(tv))

    md = render_markdown(result, "resflow eval --test")
    assert "`resflow eval --test`" in md and "| scikit-image TV |" in md and "## JPEG, quality 10" in md
    assert f"`{REGENERATE_COMMAND}`" in md  # the header says how the repository's copy is regenerated
    assert "| Gaussian noise, sigma 25: at least BM3D's PSNR | not run | not run |" in md  # no BM3D row
    assert "| Gaussian noise, sigma 50: at least BM3D's PSNR | not run | not run |" in md  # no sigma 50 at all
    tv_line = next(line for line in md.splitlines() if line.startswith("| scikit-image TV |"))
    assert f"| {summary['noise-25']['scikit-image TV']['psnr']:.2f} |" in tv_line
    data = json.loads(render_json(result, "cmd"))
    assert data["command"] == "cmd"
    assert len(data["records"]) == len(result.records) and data["summary"] == json.loads(json.dumps(summary))


def test_figure_shows_input_output_and_clean(tiny_model, make_images):
    images = make_images()
    result = evaluate(images, [DEGRADATIONS["noise-15"], DEGRADATIONS["haze"]], {
        "noise": tiny_model, "haze": tiny_model}, steps=(4,), baselines=(), device="cpu", progress=False)
    png = Image.open(io.BytesIO(render_figure(result)))
    side = images[0].clean.shape[0]
    assert png.size[0] == 3 * side + 2 * 4 and png.size[1] > 2 * side
    # the clean column holds the first image itself
    clean_tile = np.asarray(png.convert("RGB"))[14:14 + side, 2 * (side + 4):2 * (side + 4) + side]
    assert np.array_equal(clean_tile, images[0].clean)


def _goal_rows(*degradations):
    """The rows a run would have recorded: each degradation's shipped-settings row first."""
    return {d: [{"name": "ResFlow at its settings (2 steps)", "group": "shipped"}] for d in degradations}


def _met(summary):
    return {goal: met for goal, _, met in goals(summary, _goal_rows(*summary))}


SHIPPED = "ResFlow at its settings (2 steps)"


def test_goals_are_judged_on_the_shipped_row_against_the_stated_bars():
    met = _met({
        "noise-25": {SHIPPED: {"psnr": 31.0}, "BM3D": {"psnr": 30.9}, "ResFlow, 8 steps": {"psnr": 20.0},
                     "degraded input": {"psnr": 20.2}},
        "noise-50": {SHIPPED: {"psnr": 27.0}, "BM3D": {"psnr": 27.3}, "degraded input": {"psnr": 14.2}},
        "jpeg-10": {SHIPPED: {"psnr": 27.5}, "degraded input": {"psnr": 26.0}},   # +1.5: met exactly
        "jpeg-20": {SHIPPED: {"psnr": 28.9}, "degraded input": {"psnr": 28.0}},   # +0.9 < +1.0
        "grey-noise-25": {SHIPPED: {"psnr": 27.3}, "degraded input": {"psnr": 20.2}},  # +7.1
        "haze": {SHIPPED: {"psnr": 18.0}, "dark channel prior": {"psnr": 18.5}, "degraded input": {"psnr": 15.0}},
        "clean": {SHIPPED: {"psnr": 41.0}},
    })
    assert met["Gaussian noise, sigma 25: at least BM3D's PSNR"] is True  # the 8-step row is not judged
    assert met["Gaussian noise, sigma 50: at least BM3D's PSNR"] is False
    assert met["Gaussian noise, sigma 15: at least BM3D's PSNR"] is None   # not run
    assert met["JPEG, quality 10: at least +1.5 dB over the input"] is True
    assert met["JPEG, quality 20: at least +1.0 dB over the input"] is False
    assert met["greyscale photograph, Gaussian noise sigma 25: at least +7.0 dB over the input"] is True
    assert met["haze: at least the dark channel prior's PSNR"] is False
    assert met["do no harm: no degradation's restoration below its degraded input"] is True
    assert met["a clean photograph comes back at 40 dB or more"] is True


def test_do_no_harm_names_the_worst_row_and_clean_below_40_db_fails():
    summary = {"noise-5": {SHIPPED: {"psnr": 33.9}, "degraded input": {"psnr": 34.2}},
               "jpeg-30": {SHIPPED: {"psnr": 31.0}, "degraded input": {"psnr": 30.0}},
               "clean": {SHIPPED: {"psnr": 38.0}}}
    found = {goal: (measured, met) for goal, measured, met in goals(summary, _goal_rows(*summary))}
    measured, met = found["do no harm: no degradation's restoration below its degraded input"]
    assert met is False and "noise-5 -0.30 dB" in measured
    assert found["a clean photograph comes back at 40 dB or more"] == ("38.00 dB", False)


def test_without_a_shipped_row_no_goal_is_judged():
    summary = {"noise-25": {"ResFlow, 4 steps": {"psnr": 35.0}, "BM3D": {"psnr": 30.9}}}
    assert all(met is None for _, _, met in goals(summary, {"noise-25": [{"name": "ResFlow, 4 steps",
                                                                             "group": "resflow"}]}))
