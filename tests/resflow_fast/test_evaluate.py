"""Tests of resflow_fast/evaluate.py (`resflow eval`): the degradations are fixed, the rows and
metrics are what the report says, bad requests are clear errors, and nothing is half-written."""
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from resflow_fast import evaluate as ev
from resflow_fast.cli import main as cli_main
from resflow_fast.reference.train import TrainConfig, train

skimage_metrics = pytest.importorskip("skimage.metrics")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    config = TrainConfig(preset="test", crop=16, batch_size=2, steps=2, out_dir=str(out), checkpoint_every=1000,
                         val_every=1000, val_images=1, degradation="noise:25")
    return str(train(config, progress=False)["checkpoint"])


def _images(size=48):
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([xx, yy, (xx + yy) / 2], axis=-1)
    return [ev.EvalImage(f"img{i}", "synthetic", np.round(255 * np.clip(smooth * (0.5 + 0.5 * i) + 0.05 * rng.random(
        (size, size, 3)), 0, 1)).astype(np.uint8)) for i in range(2)]


# -- degradations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(ev.DEGRADATIONS))
def test_degradations_are_8_bit_fixed_and_seeded_per_image(key):
    deg = ev.DEGRADATIONS[key]
    clean = _images()[1].clean
    first, again, other = deg.apply(clean, "a"), deg.apply(clean, "a"), deg.apply(clean, "b")
    assert first.dtype == np.uint8 and first.shape == clean.shape
    assert np.array_equal(first, again)
    assert not np.array_equal(first, clean)
    if deg.task != "jpeg":  # random per image; JPEG is deterministic
        assert not np.array_equal(first, other)


def test_noise_has_the_named_sigma_and_jpeg_quality_orders():
    flat = np.full((128, 128, 3), 128, np.uint8)  # no clipping, so the noise is all there
    for sigma in (15, 25, 50):
        noisy = ev.DEGRADATIONS[f"noise-{sigma}"].apply(flat, "x").astype(np.float64)
        assert abs(noisy.std() - sigma) < 0.05 * sigma
    clean = _images(64)[1].clean

    def err(q):
        return np.mean((ev.DEGRADATIONS[f"jpeg-{q}"].apply(clean, "x").astype(float) - clean) ** 2)
    assert err(10) > err(20) > err(30)


# -- the run and the report ------------------------------------------------------------------------
def test_evaluate_rows_metrics_and_report(tiny_model):
    images = _images()
    degs = [ev.DEGRADATIONS["noise-25"], ev.DEGRADATIONS["jpeg-10"], ev.DEGRADATIONS["haze"]]
    models = {"noise": tiny_model, "jpeg": tiny_model, "rain": tiny_model, "haze": tiny_model}
    result = ev.evaluate(images, degs, models, steps=(1, 2), baselines=("scikit-image TV", "dark channel prior"),
                         ablations={"control": tiny_model}, device="cpu", progress=False)
    rows = {d: [r["name"] for r in result.rows[d]] for d in result.rows}
    assert rows["noise-25"] == ["degraded input", "scikit-image TV", "ResFlow, 1 step", "ResFlow, 2 steps",
                                "ablation: control, 4 steps"]
    # each classical restorer on its own kind of rows only
    assert rows["jpeg-10"] == ["degraded input", "ResFlow, 1 step", "ResFlow, 2 steps"]
    assert rows["haze"] == ["degraded input", "dark channel prior", "ResFlow, 1 step", "ResFlow, 2 steps"]
    assert len(result.records) == (5 + 3 + 4) * len(images)
    for rec in result.records:
        assert np.isfinite(rec["psnr"]) and 0 < rec["ssim"] <= 1 and rec["seconds"] >= 0
    # the input row's metrics are the degraded image's, as scikit-image computes them
    for image in images:
        lq = degs[0].apply(image.clean, image.name)
        rec = next(r for r in result.records if r["image"] == image.name and r["row"] == "degraded input"
                   and r["degradation"] == "noise-25")
        assert rec["psnr"] == pytest.approx(skimage_metrics.peak_signal_noise_ratio(image.clean, lq), abs=1e-9)
        assert rec["ssim"] == pytest.approx(skimage_metrics.structural_similarity(
            image.clean / 255.0, lq / 255.0, data_range=1, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, channel_axis=2), abs=1e-9)
    summary = ev.summarise(result)
    tv = [r["psnr"] for r in result.records if r["row"] == "scikit-image TV"]
    assert summary["noise-25"]["scikit-image TV"]["psnr"] == pytest.approx(np.mean(tv))

    md = ev.render_markdown(result, "resflow eval --test")
    assert "`resflow eval --test`" in md and "| scikit-image TV |" in md and "## JPEG, quality 10" in md
    assert "| sigma 25: ResFlow (4 steps) beats BM3D in PSNR | not run | not run |" in md  # no 4-step row, no BM3D
    data = json.loads(ev.render_json(result, "cmd"))
    assert len(data["records"]) == len(result.records) and data["summary"] == json.loads(json.dumps(summary))


def test_a_task_with_its_own_embedded_model_shows_the_default_beside_it():
    """Noise goes to the embedded `denoise` model; the blind `default` gets a 4-step row of its own
    so the report shows which measures better. A path (or `default` itself) adds no such row."""
    assert ev.default_task_models()["noise"] == "denoise"
    assert all(ev.default_task_models()[task] == "mix" for task in ("rain", "haze", "snow"))
    images = _images()[:1]
    result = ev.evaluate(images, [ev.DEGRADATIONS["noise-25"], ev.DEGRADATIONS["jpeg-10"]],
                         ev.default_task_models(), steps=(1,), baselines=(), device="cpu", progress=False)
    noise, jpeg = ([r["name"] for r in result.rows[k]] for k in ("noise-25", "jpeg-10"))
    assert noise == ["degraded input", "ResFlow, 1 step", ev.DEFAULT_MODEL_ROW]
    assert jpeg == ["degraded input", "ResFlow, 1 step"]
    assert {r["name"]: r["model"] for r in result.rows["noise-25"]}[ev.DEFAULT_MODEL_ROW] == "default"
    by_row = {r["row"]: r["psnr"] for r in result.records if r["degradation"] == "noise-25"}
    assert by_row["ResFlow, 1 step"] != by_row[ev.DEFAULT_MODEL_ROW]  # two models, two results
    assert "ResFlow model: `denoise`" in ev.render_markdown(result, "cmd")


def test_figure_shows_input_output_and_clean(tiny_model):
    images = _images()
    result = ev.evaluate(images, [ev.DEGRADATIONS["noise-15"], ev.DEGRADATIONS["haze"]], {
        "noise": tiny_model, "haze": tiny_model}, steps=(4,), baselines=(), device="cpu", progress=False)
    png = Image.open(io.BytesIO(ev.render_figure(result)))
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
def test_goals_are_judged_as_issue_6_states_them(summary, met):
    assert [g[2] for g in ev.goals(summary)] == met


# -- the command -----------------------------------------------------------------------------------
def test_eval_command_writes_all_three_files(tiny_model, tmp_path, capsys):
    args = ["eval", "--images", "skimage", "--limit", "1", "--degradations", "noise-15", "--steps", "1",
            "--no-baselines", "--no-ablations", "--model", f"noise={tiny_model}", "--out-dir", str(tmp_path), "--quiet"]
    assert cli_main(args) == 0
    # the figure shows the 4-step output, so with --steps 1 there is none
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EVAL.md", "eval.json"]
    md = (tmp_path / "EVAL.md").read_text()
    assert "astronaut" in md and "--degradations noise-15" in md
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--degradations", "noise-30"], "unknown 'noise-30'"),
    (["--model", "deblur=x"], "TASK=MODEL"),
    (["--steps", "4,0"], "positive integers"),
    (["--steps", "four"], "comma-separated integers"),
    (["--images", "div2k"], "unknown image set 'div2k'"),
    (["--images", "skimage,div2k"], "unknown image set 'div2k'"),
    (["--steps", "4,4"], "given twice"),
    (["--degradations", "noise-15,noise-15"], "named twice"),
    (["--limit", "0"], "positive number of images"),
    (["--model", "noise=/no/such/model.safetensors"], "not found"),
])
def test_bad_requests_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    args = ["eval", "--images", "skimage", "--degradations", "noise-15", "--steps", "1", "--no-baselines",
            "--no-ablations", "--out-dir", str(tmp_path / "out"), "--quiet"]
    assert cli_main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # checked for writing, perhaps, but nothing written


# -- the Kodak images ------------------------------------------------------------------------------
def test_kodak_folder_checks_files_and_hashes(tmp_path, monkeypatch):
    monkeypatch.setenv("RESFLOW_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ev.EvalError, match="I03.bmp is missing"):
        ev.kodak_dir(tmp_path)
    for name in ev.KODAK_FILES:
        (tmp_path / name).write_bytes(b"not a bmp")
    with pytest.raises(ev.EvalError, match="SHA-256 differs"):
        ev.kodak_dir(tmp_path)
    with pytest.raises(ev.EvalError, match="pass --kodak PATH"):
        ev.kodak_dir(None, download=False)


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RESFLOW_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "pyiqa-0.1.16-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in ev.KODAK_FILES:
            z.writestr(ev.KODAK_MEMBER + name, b"x")
    with pytest.raises(ev.EvalError, match="not the pyiqa 0.1.16 wheel"):
        ev.kodak_dir(wheel)
    assert not (tmp_path / "cache" / "kodak").exists()


def test_partial_runs_need_an_out_dir_so_docs_is_never_overwritten_by_one(capsys):
    assert cli_main(["eval", "--images", "skimage", "--limit", "1", "--quiet"]) == 2
    assert "needs --out-dir" in capsys.readouterr().err


def test_an_unwritable_out_dir_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["eval", "--images", "skimage", "--out-dir", str(blocker / "sub"), "--no-baselines",
                     "--no-ablations", "--quiet"]) == 2
    assert "cannot write there" in capsys.readouterr().err
