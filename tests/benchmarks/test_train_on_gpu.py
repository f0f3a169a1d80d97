"""benchmarks/train_on_gpu.sh, the GPU training call, run on the CPU on a tiny run.

A two-step run is made with the command line, then the script resumes it (DEVICE=cpu, STEPS=4):
the checkpoint it carries in goes on to step 4 inside the output folder, which then holds the
resumable checkpoint, an fp16 weights file that restores, and the log with the samples per
second. Bad arguments are refused before any work.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "train_on_gpu.sh"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET")}
    return {**env, "PYTHON": sys.executable, "PYTHONSAFEPATH": "1", **extra}


def test_the_script_parses_and_passes_shellcheck(check_shell_script):
    check_shell_script(SCRIPT)


@pytest.mark.parametrize("args, message", [
    ([], "usage"),
    (["{tmp}/out", "{tmp}/no-run"], "holds no training checkpoint"),
    (["{tmp}/file/sub"], "cannot write into the output folder"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, args, message):
    (tmp_path / "file").write_text("x")
    args = [a.format(tmp=tmp_path) for a in args]
    result = subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out" / "train.log").exists()


def test_data_the_record_names_must_have_travelled(tmp_path):
    checkpoint = tmp_path / "run" / "step-00000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "record.json").write_text(json.dumps({"step": 1, "train": {"data": "runs/no-such-photos"}}))
    (checkpoint / "weights.safetensors").write_bytes(b"")
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), str(tmp_path / "run")], cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "runs/no-such-photos" in result.stderr and "carry it in" in result.stderr
    assert not (tmp_path / "out" / "train.log").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A two-step run of the test preset made with the command line."""
    folder = tmp_path_factory.mktemp("tiny")
    run = folder / "run"
    first = subprocess.run([sys.executable, "-m", "resflow_fast", "train", "--preset", "test", "--data", "procedural",
                            "--crop", "16", "--batch-size", "2", "--steps", "2", "--checkpoint-every", "2",
                            "--val-every", "1000", "--val-images", "1", "--device", "cpu", "--out-dir", str(run),
                            "--quiet"], cwd=folder, env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    return run


def test_a_slim_checkpoint_starts_a_new_run_from_its_weights_with_its_options(tiny_run, tmp_path):
    import shutil

    slim = tmp_path / "slim" / "step-00000002"
    slim.mkdir(parents=True)
    for name in ("record.json", "weights.safetensors"):  # no train_state.pt: half the size
        shutil.copy(tiny_run / "step-00000002" / name, slim / name)
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPT), str(out), str(slim.parent)], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env=_env(DEVICE="cpu", STEPS="1", BATCH_SIZE="2", DATA_WORKERS="0",
                                                             INSTALL="link", DEADLINE_S="400"))
    log = (out / "train.log").read_text()
    assert result.returncode == 0, log
    assert "fresh optimizer" in log and "trained to step 1" in log
    record = json.loads((out / "run" / "step-00000001" / "record.json").read_text())
    assert record["train"]["init_from"] == str(slim) and record["train"]["crop"] == 16  # the recorded options
    assert (out / "weights-fp16.safetensors").is_file()


def test_it_resumes_the_carried_checkpoint_and_writes_what_comes_back(tiny_run, tmp_path):
    run = tiny_run
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPT), str(out), str(run)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env=_env(DEVICE="cpu", STEPS="4", BATCH_SIZE="2", DATA_WORKERS="0",
                                                  INSTALL="link", DEADLINE_S="400"))
    log = (out / "train.log").read_text()
    assert result.returncode == 0, log
    # --keep-last 1: one checkpoint beside the run's history
    assert sorted(p.name for p in (out / "run").iterdir()) == ["history.json", "step-00000004"]
    record = json.loads((out / "run" / "step-00000004" / "record.json").read_text())
    assert record["train"]["batch_size"] == 2 and record["train"]["steps"] == 4
    assert "trained to step 4" in log and "samples/s" in log
    with safe_open(str(out / "weights-fp16.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {__import__("torch").float16}
    assert (run / "step-00000002").is_dir() and not (run / "step-00000004").exists()  # the carried run is untouched
