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
    assert "| sigma 25: ResFlow (4 steps) beats BM3D in PSNR | not run | not run |" in md  # no 4-step row, no BM3D
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


@pytest.mark.parametrize("summary, met", [
    ({"noise-25": {"ResFlow, 4 steps": {"psnr": 31.0}, "BM3D (CBM3D)": {"psnr": 30.9}}}, [True, None, None]),
    ({"noise-25": {"ResFlow, 4 steps": {"psnr": 30.0}, "BM3D (CBM3D)": {"psnr": 30.9}},
      "jpeg-10": {"ResFlow, 4 steps": {"psnr": 27.6}, "degraded input": {"psnr": 26.0},
                  "ResFlow, 8 steps": {"psnr": 27.75}}}, [False, True, False]),
    ({"jpeg-10": {"ResFlow, 4 steps": {"psnr": 27.4}, "degraded input": {"psnr": 26.0},
                  "ResFlow, 8 steps": {"psnr": 27.45}}}, [None, False, True]),
])
def test_goals_are_judged_as_stated(summary, met):
    assert [g[2] for g in goals(summary)] == met
