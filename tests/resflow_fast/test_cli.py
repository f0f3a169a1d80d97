"""Tests of resflow_fast/cli.py: the commands work, and bad input is one clear line, no traceback."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from resflow_fast.cli import main
from resflow_fast.reference.checkpoint import load_weights

#: Only a guard against a hung child process: far above what a loaded 2-core machine needs.
HANG_S = 1800

TINY_TRAIN = ["train", "--preset", "test", "--crop", "16", "--batch-size", "2", "--steps", "2",
              "--val-images", "1", "--quiet", "--degradation", "noise:25"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(TINY_TRAIN + ["--out-dir", str(out)]) == 0
    return out


def test_train_writes_a_checkpoint(run_dir, capsys):
    import json

    from resflow_fast.reference.checkpoint import load_model

    _, _, record = load_model(run_dir / "step-00000002")
    assert record["step"] == 2 and record["train"]["preset"] == "test"
    assert json.loads((run_dir / "history.json").read_text())[-1]["step"] == 2


def test_resume_continues_with_the_recorded_options(run_dir, tmp_path, capsys):
    import json
    import shutil

    run = shutil.copytree(run_dir, tmp_path / "run")  # the module's run stays as it was for other tests
    # only the step budget is given: preset, crop, batch size and degradation come from the checkpoint
    assert main(["train", "--out-dir", str(run), "--resume", "--steps", "3", "--quiet"]) == 0
    assert "trained to step 3" in capsys.readouterr().out
    record = json.loads((run / "step-00000003" / "record.json").read_text())
    assert record["train"]["preset"] == "test" and record["train"]["crop"] == 16
    assert record["train"]["batch_size"] == 2 and record["train"]["degradation"] == "noise:25"


def test_resume_with_new_flat_options_overrides_the_record_and_says_so(run_dir, tmp_path, capsys):
    import json
    import shutil

    run = shutil.copytree(run_dir, tmp_path / "run")
    with pytest.warns(UserWarning, match=r"flat_grey_share: 0.0 -> 0.5"):
        assert main(["train", "--out-dir", str(run), "--resume", "--steps", "3", "--quiet",
                     "--flat-fraction", "0.2", "--flat-grey-share", "0.5"]) == 0
    record = json.loads((run / "step-00000003" / "record.json").read_text())
    assert record["train"]["flat_fraction"] == 0.2 and record["train"]["flat_grey_share"] == 0.5
    assert record["train"]["crop"] == 16  # the options not given still come from the checkpoint


def test_resume_leaves_the_machines_options_behind_and_goes_on_where_the_checkpoint_is(run_dir, tmp_path,
                                                                                       monkeypatch, capsys):
    import json
    import shutil

    run = shutil.copytree(run_dir, tmp_path / "run")
    record_file = run / "step-00000002" / "record.json"
    record = json.loads(record_file.read_text())
    record["train"].update(max_minutes=0.0001, keep_last=1, data_workers=3, device="cuda", amp=False)  # a GPU run's
    record_file.write_text(json.dumps(record))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # by path, from another folder, without --out-dir: the run goes on beside its checkpoint
    assert main(["train", "--resume", str(run / "step-00000002"), "--steps", "3", "--amp", "--quiet"]) == 0
    assert not list(elsewhere.iterdir())
    train = json.loads((run / "step-00000003" / "record.json").read_text())["train"]
    assert train["max_minutes"] is None and train["keep_last"] == 3 and train["data_workers"] == 0
    assert train["device"] == "auto" and train["amp"] is True and train["crop"] == 16  # the run's own: kept
    assert main(["train", "--resume", str(run), "--steps", "4", "--quiet"]) == 0  # a run folder: its latest
    assert (run / "step-00000004").is_dir()


def test_a_time_limit_must_be_positive(tmp_path, capsys):
    assert main(TINY_TRAIN + ["--out-dir", str(tmp_path / "run"), "--max-minutes", "-1"]) == 2
    assert "max_minutes must be positive" in capsys.readouterr().err


def test_a_new_run_takes_its_options_from_another_runs_record(run_dir, tmp_path, capsys):
    import json

    new = tmp_path / "new"
    assert main(["train", "--out-dir", str(new), "--options-from", str(run_dir), "--init-from",
                 str(run_dir / "step-00000002"), "--steps", "1", "--quiet"]) == 0
    record = json.loads((new / "step-00000001" / "record.json").read_text())
    assert record["step"] == 1  # a new run: it counts from 0
    assert record["train"]["preset"] == "test" and record["train"]["crop"] == 16
    assert record["train"]["batch_size"] == 2 and record["train"]["degradation"] == "noise:25"
    assert record["train"]["init_from"] == str(run_dir / "step-00000002")
    assert main(["train", "--out-dir", str(new), "--resume", "--options-from", str(run_dir), "--quiet"]) == 2
    assert "give one" in capsys.readouterr().err
    assert main(["train", "--out-dir", str(tmp_path / "x"), "--options-from", str(tmp_path), "--quiet"]) == 2
    assert "no training record" in capsys.readouterr().err


def test_restore_and_export(run_dir, tmp_path, capsys):
    Image.fromarray((np.random.default_rng(0).random((13, 17, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    assert main(["restore", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model", str(run_dir)]) == 0
    assert Image.open(tmp_path / "out.png").size == (17, 13)
    assert main(["export", str(run_dir), str(tmp_path / "m.safetensors"), "--steps", "1", "--margin", "3",
                 "--tile", "64"]) == 0
    assert load_weights(tmp_path / "m.safetensors")[1]["margin"] == 3
    assert load_weights(tmp_path / "m.safetensors")[1]["tile"] == 64
    for option, value, message in (("--tile", "8", "--tile: must be a side of at least 16 pixels, got 8"),
                                   ("--margin", "-1", "--margin: must be a non-negative number of pixels")):
        assert main(["export", str(run_dir), str(tmp_path / "new" / "m.safetensors"), option, value]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # refused before any folder is made
    assert main(["restore", str(tmp_path / "in.png"), "-o", str(tmp_path / "out2.png"),
                 "--model", str(tmp_path / "m.safetensors")]) == 0


def test_one_bad_file_does_not_stop_the_others(run_dir, tmp_path, capsys):
    Image.new("RGB", (9, 9)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "out").mkdir()
    code = main(["restore", str(tmp_path / "bad.png"), str(tmp_path / "good.png"), "-o", str(tmp_path / "out"),
                 "--model", str(run_dir)])
    assert code == 1
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "bad.png").exists()
    assert "bad.png" in capsys.readouterr().err


def test_export_never_overwrites_unasked_nor_writes_into_its_checkpoint(run_dir, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's file")
    assert main(["export", str(run_dir), str(precious)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and precious.read_text() == "the user's file"
    inside = run_dir / "step-00000002" / "weights.safetensors"
    before = inside.read_bytes()
    for target in (inside, run_dir / "m.safetensors"):
        assert main(["export", str(run_dir), str(target), "--overwrite"]) == 2
        assert "lies inside the checkpoint being exported" in capsys.readouterr().err
    assert inside.read_bytes() == before and not (run_dir / "m.safetensors").exists()
    (tmp_path / "folder").mkdir()
    assert main(["export", str(run_dir), str(tmp_path / "folder")]) == 2
    assert "is a folder; give the weights file's name" in capsys.readouterr().err
    assert main(["export", str(run_dir), str(precious), "--overwrite"]) == 0  # asked: replaced
    assert load_weights(precious)[1]["weights"] == "ema"
    assert main(["export", str(run_dir), str(tmp_path / "new" / "sub" / "m.safetensors")]) == 0  # folders made


@pytest.mark.parametrize("make_args, message", [
    (lambda p: ["restore", str(p / "x.png"), "-o", str(p / "o.png"), "--model", str(p / "garbage.safetensors")],
     "not a resflow-fast weights file"),
    (lambda p: ["restore", str(p / "x.png"), "-o", str(p / "o.png"), "--model", "no-such-model"],
     "unknown model 'no-such-model'"),
    (lambda p: ["train", "--data", str(p / "empty"), "--out-dir", str(p / "run"), "--quiet"], "empty"),
    (lambda p: ["train", "--degradation", "noise:999", "--out-dir", str(p / "run"), "--quiet"], "noise:999"),
    (lambda p: ["train", "--out-dir", str(p / "run"), "--resume", "--quiet"], "no checkpoint found"),
    (lambda p: ["train", "--flat-grey-share", "0.5", "--out-dir", str(p / "run"), "--quiet"],
     "needs flat_fraction > 0"),
    (lambda p: ["export", str(p / "nothing"), str(p / "m.safetensors")], "checkpoint not found"),
])
def test_bad_input_is_one_clear_line(tmp_path, make_args, message):
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "resflow_fast", *make_args(tmp_path)], capture_output=True, text=True,
                          timeout=HANG_S)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.startswith("resflow: error:")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "m.safetensors").exists()


def test_unknown_preset_is_refused_by_the_parser(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "resflow_fast", "train", "--preset", "huge"], capture_output=True,
                          text=True, timeout=HANG_S)
    assert proc.returncode == 2 and "invalid choice: 'huge'" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_hands_its_arguments_to_the_benchmark(capsys):
    assert main(["bench", "--device", "cpu", "--dry-run"]) == 0
    assert "estimated end" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["train", "--quiet"], ["demo", "--quiet"]])
def test_an_unknown_device_is_one_clear_line(tmp_path, command):
    proc = subprocess.run([sys.executable, "-m", "resflow_fast", *command, "--device", "gpu"], capture_output=True,
                          text=True, timeout=HANG_S, cwd=tmp_path)
    assert proc.returncode == 2 and "unknown device 'gpu'" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # a refused command leaves no folder behind


def test_a_second_demo_into_the_same_folder_trains_a_run_of_its_own(tmp_path, capsys):
    for _ in range(2):
        assert main(["demo", "--out", str(tmp_path / "demo"), "--minutes", "0.005", "--device", "cpu", "--quiet"]) == 0
    assert {p.name for p in (tmp_path / "demo").iterdir()} >= {"run", "run-2", "clean.png", "noisy.png", "restored.png"}
