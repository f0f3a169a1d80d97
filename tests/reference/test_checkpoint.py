"""Tests of reference/checkpoint.py: crash-safe saving, pruning, validation of what is loaded."""
import json

import pytest
import torch

from resflow_fast.reference import checkpoint as ckpt
from resflow_fast.reference.checkpoint import (CheckpointError, export_weights, latest_checkpoint, list_checkpoints,
                                               load_model, load_training_checkpoint, load_weights,
                                               save_training_checkpoint, save_weights)
from resflow_fast.reference.schedule import Schedule
from resflow_fast.reference.unet import build_unet, preset_config


def _record(preset="test", step=0):
    return {"unet": preset_config(preset).to_dict(), "schedule": Schedule().to_dict(), "step": step}


def _save(run_dir, step, model=None, keep_last=3):
    model = model or build_unet("test")
    return save_training_checkpoint(run_dir, step, model.state_dict(), model.state_dict(),
                                    {"step": step, "torch_rng": torch.get_rng_state()}, _record(step=step), keep_last)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_weights_round_trip(tmp_path):
    model = build_unet("test")
    save_weights(tmp_path / "m.safetensors", model.state_dict(), _record())
    loaded, schedule, record = load_model(tmp_path / "m.safetensors")
    assert schedule == Schedule() and record["unet"]["base_channels"] == 32
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_training_checkpoint_round_trip_and_pruning(tmp_path):
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030", "step-00000040"]
    assert latest_checkpoint(tmp_path).name == "step-00000040"
    state = load_training_checkpoint(latest_checkpoint(tmp_path))
    assert state["train_state"]["step"] == 40 and state["record"]["step"] == 40
    assert json.loads((latest_checkpoint(tmp_path) / "record.json").read_text())["step"] == 40
    # a run folder resolves to its latest checkpoint's EMA weights
    model, _, record = load_model(tmp_path)
    assert record["step"] == 40
    assert not _leftovers(tmp_path)


def test_failure_in_the_middle_of_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 10)

    def explode(*args, **kwargs):  # the weights file is written by then; the train state is not
        raise OSError("disk full (injected)")

    monkeypatch.setattr(ckpt.torch, "save", explode)
    with pytest.raises(OSError, match="injected"):
        _save(tmp_path, 20)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010"]
    assert load_training_checkpoint(tmp_path / "step-00000010")["train_state"]["step"] == 10
    assert not _leftovers(tmp_path), "a temp folder was left behind"


def test_rewriting_the_same_step_replaces_it(tmp_path):
    _save(tmp_path, 10)
    _save(tmp_path, 10)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010"] and not _leftovers(tmp_path)


def test_export_writes_ema_weights(tmp_path):
    model = build_unet("test")
    ema = build_unet("test")
    save_training_checkpoint(tmp_path, 5, model.state_dict(), ema.state_dict(), {"step": 5}, _record(step=5))
    out = export_weights(tmp_path, tmp_path / "export.safetensors")
    tensors, record = load_weights(out)
    assert record["weights"] == "ema"
    assert all(torch.equal(tensors[k], v) for k, v in ema.state_dict().items())



def test_export_records_the_sampling_settings_it_is_given(tmp_path):
    model = build_unet("test")
    save_training_checkpoint(tmp_path, 5, model.state_dict(), model.state_dict(), {"step": 5}, _record(step=5))
    _, plain = load_weights(export_weights(tmp_path, tmp_path / "plain.safetensors"))
    assert "sampling" not in plain
    _, record = load_weights(export_weights(tmp_path, tmp_path / "s.safetensors", sampling={"steps": 2}))
    assert record["sampling"] == {"steps": 2, "time_power": 1.0, "y_mode": "joint"}  # completed
    with pytest.raises(ValueError, match="unknown y_mode"):
        export_weights(tmp_path, tmp_path / "bad.safetensors", sampling={"y_mode": "sde"})
    assert not (tmp_path / "bad.safetensors").exists()


def test_export_records_the_margin_it_is_given(tmp_path):
    model = build_unet("test")
    save_training_checkpoint(tmp_path, 5, model.state_dict(), model.state_dict(), {"step": 5}, _record(step=5))
    assert "margin" not in load_weights(export_weights(tmp_path, tmp_path / "plain.safetensors"))[1]
    assert load_weights(export_weights(tmp_path, tmp_path / "m.safetensors", margin=0))[1]["margin"] == 0
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="margin: must be a non-negative number of pixels"):
            export_weights(tmp_path, tmp_path / "bad.safetensors", margin=bad)
    assert not (tmp_path / "bad.safetensors").exists()


def test_export_records_the_tile_side_it_is_given(tmp_path):
    model = build_unet("test")
    save_training_checkpoint(tmp_path, 5, model.state_dict(), model.state_dict(), {"step": 5}, _record(step=5))
    assert "tile" not in load_weights(export_weights(tmp_path, tmp_path / "plain.safetensors"))[1]
    assert load_weights(export_weights(tmp_path, tmp_path / "t.safetensors", tile=96))[1]["tile"] == 96
    assert load_weights(export_weights(tmp_path, tmp_path / "t16.safetensors", tile=16))[1]["tile"] == 16  # the least
    for bad in (15, 0, -96, 96.0, True):
        with pytest.raises(ValueError, match="tile: must be a side of at least 16 pixels"):
            export_weights(tmp_path, tmp_path / "bad.safetensors", tile=bad)
    assert not (tmp_path / "bad.safetensors").exists()


def test_half_export_is_fp16_and_loads_into_the_fp32_model(tmp_path):
    model, ema = build_unet("test"), build_unet("test")
    save_training_checkpoint(tmp_path, 5, model.state_dict(), ema.state_dict(), {"step": 5}, _record(step=5))
    out = export_weights(tmp_path, tmp_path / "half.safetensors", half=True)
    tensors, record = load_weights(out)
    assert record["stored_dtype"] == "float16"
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    loaded, _, _ = load_model(out)
    for k, v in ema.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == v.dtype and torch.equal(got, v.half().to(v.dtype))

# -- what loading refuses ------------------------------------------------------------------------
def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="holds no resflow-fast checkpoint"):
        load_model(tmp_path)


@pytest.mark.parametrize("content, match", [
    (b"", "not a resflow-fast weights file"),
    (b"\x00" * 3, "not a resflow-fast weights file"),
    (b"hello world, this is not a safetensors file", "bad safetensors header"),
])
def test_garbage_is_refused(tmp_path, content, match):
    (tmp_path / "bad.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path / "bad.safetensors")


def test_truncated_file_is_refused(tmp_path):
    save_weights(tmp_path / "m.safetensors", build_unet("test").state_dict(), _record())
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_model(tmp_path / "m.safetensors")


def test_other_formats_and_versions_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="format 'pt', expected 'resflow-fast'"):
        load_model(tmp_path / "foreign.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "future.safetensors",
              metadata={"format": "resflow-fast", "format_version": "99", "record": "{}"})
    with pytest.raises(CheckpointError, match="format version '99'"):
        load_model(tmp_path / "future.safetensors")


def test_weights_of_another_architecture_are_refused(tmp_path):
    # the record says "test" but the tensors are the default preset's
    save_weights(tmp_path / "m.safetensors", build_unet("default").state_dict(), _record("test"))
    with pytest.raises(CheckpointError, match="weights do not fit this architecture"):
        load_model(tmp_path / "m.safetensors")
    save_weights(tmp_path / "ok.safetensors", build_unet("test").state_dict(), _record("test"))
    with pytest.raises(CheckpointError, match="checkpoint is for architecture"):
        load_model(tmp_path / "ok.safetensors", expected=preset_config("default"))


def test_record_without_a_model_is_refused(tmp_path):
    save_weights(tmp_path / "m.safetensors", build_unet("test").state_dict(), {"step": 1})
    with pytest.raises(CheckpointError, match="does not describe a resflow-fast model"):
        load_model(tmp_path / "m.safetensors")


def test_corrupt_train_state_is_refused(tmp_path):
    path = _save(tmp_path, 1)
    (path / "train_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt training state"):
        load_training_checkpoint(path)
