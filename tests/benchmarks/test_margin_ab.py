"""Tests of benchmarks/margin_ab.py: the margin A/B measures what it says on real restores."""
import numpy as np
import pytest

from resflow_fast.benchmarks.margin_ab import FLAT_LEVELS, _psnr, main, measure, render
from resflow_fast.evaluation.images import EvalImage


def test_psnr_of_the_frame_counts_only_the_outer_pixels():
    target = np.zeros((40, 40, 3), np.uint8)
    restored = target.copy()
    restored[10:30, 10:30] = 255  # wrong inside only
    assert _psnr(restored, target, frame=8) > 100 and _psnr(restored, target) < 10


def test_measure_restores_at_each_margin_and_tabulates_them(random_unet):
    rng = np.random.default_rng(3)
    images = [EvalImage(f"img{i}", "synthetic", (rng.random((40, 40, 3)) * 255).astype(np.uint8)) for i in range(2)]
    unet = random_unet(std=0.08)
    table = measure(unet, [0, 8], ["noise-25", "clean"], images, frame=8, steps=1)
    assert set(table) == {"noise-25", "clean", "flat"}
    assert set(table["noise-25"]) == {0, 8} and len(table["flat"][0]) == len(FLAT_LEVELS)
    assert table["noise-25"][0] != table["noise-25"][8]  # the margin reaches the restore
    assert all(np.isfinite(v) for row in ("noise-25", "clean") for pair in table[row].values() for v in pair)
    text = render(table, [0, 8], 8)
    assert "| noise-25 |" in text and "margin 8" in text and "outer 8 pixels" in text


@pytest.mark.parametrize("argv, message", [(["--margins", "0,-4"], "non-negative"),
                                           (["--margins", "a"], "comma-separated"),
                                           (["--degradations", "blur"], "unknown blur")])
def test_bad_arguments_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
