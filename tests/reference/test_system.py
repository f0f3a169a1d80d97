"""Tests of reference/system.py: the device rule and atomic writes."""
import os

import pytest
import torch

from resflow_fast.reference import system
from resflow_fast.reference.system import (DeviceUnavailableError, UnknownDeviceError, atomic_write_bytes,
                                           atomic_write_dir, atomic_write_files, local_gpu_index, pick_device)


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def two_gpus(monkeypatch):
    """A machine that reports two CUDA devices (only the device rule looks; nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_a_cpu_has_native_bf16_when_torchs_probes_find_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert system.native_bf16(torch.device("cpu")) is expected


@pytest.mark.parametrize("major, expected", [(7, False), (8, True), (9, True)])
def test_a_gpu_has_native_bf16_from_compute_capability_8(monkeypatch, major, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or (major, 0))
    assert system.native_bf16(torch.device("cuda", 1)) is expected
    assert asked == [torch.device("cuda", 1)]  # that GPU, not whichever is current


def test_a_torch_without_the_cpu_probes_counts_as_no_native_bf16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert system.native_bf16(torch.device("cpu")) is False
    assert system.native_bf16(torch.device("meta")) is False


@pytest.mark.parametrize("requested", ["auto", None])
def test_auto_is_the_cpu_without_cuda(no_gpu, requested):
    assert pick_device(requested) == torch.device("cpu")


@pytest.mark.parametrize("requested", ["cpu", torch.device("cpu")])
def test_cpu_is_the_cpu(requested):
    assert pick_device(requested) == torch.device("cpu")


def test_auto_and_cuda_are_this_ranks_gpu_wrapped_onto_the_gpus_there_are(two_gpus):
    # LOCAL_RANK 3 on two GPUs: GPU 1; an explicit local_rank wins over the environment
    assert pick_device("auto") == pick_device("cuda") == torch.device("cuda", 1)
    assert pick_device("cuda", local_rank=2) == torch.device("cuda", 0)
    assert local_gpu_index() == 1


def test_an_indexed_gpu_is_taken_as_named(two_gpus):
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    assert pick_device(torch.device("cuda", 1)) == torch.device("cuda", 1)


def test_a_gpu_the_machine_lacks_is_an_error(two_gpus):
    with pytest.raises(DeviceUnavailableError, match=r"'cuda:2': this machine has 2 GPU\(s\)"):
        pick_device("cuda:2")


@pytest.mark.parametrize("requested", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_an_error(no_gpu, requested):
    with pytest.raises(DeviceUnavailableError, match=f"device '{requested}' requested but CUDA is not available"):
        pick_device(requested)


@pytest.mark.parametrize("requested", ["gpu", "banana", ""])
def test_a_name_that_is_no_device_is_a_value_error_naming_it(requested):
    with pytest.raises(ValueError, match=f"unknown device '{requested}'; use auto, cpu, cuda or cuda:N") as info:
        pick_device(requested)
    assert isinstance(info.value, UnknownDeviceError) and info.value.detail  # torch's own reason, for callers


# ----------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------
def test_a_failure_while_writing_a_file_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    atomic_write_bytes(tmp_path / "a.bin", b"old")

    def explode(fd):
        raise OSError("fsync failed (injected)")

    monkeypatch.setattr(system.os, "fsync", explode)
    with pytest.raises(OSError, match="injected"):
        atomic_write_bytes(tmp_path / "a.bin", b"new")
    monkeypatch.undo()
    assert (tmp_path / "a.bin").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_a_set_of_files_is_replaced_all_or_none(tmp_path, monkeypatch):
    """The second file's write fails: the first must not have been replaced already."""
    atomic_write_files({tmp_path / "a.md": b"old a", tmp_path / "b.json": b"old b"})
    real_fsync, calls = system.os.fsync, []

    def fail_second_file(fd):
        calls.append(fd)
        if len(calls) == 2:  # the first file's data is synced; the second's is not
            raise OSError("disk full (injected)")
        real_fsync(fd)

    monkeypatch.setattr(system.os, "fsync", fail_second_file)
    with pytest.raises(OSError, match="injected"):
        atomic_write_files({tmp_path / "a.md": b"new a", tmp_path / "b.json": b"new b"})
    monkeypatch.undo()
    assert (tmp_path / "a.md").read_bytes() == b"old a" and (tmp_path / "b.json").read_bytes() == b"old b"
    assert sorted(os.listdir(tmp_path)) == ["a.md", "b.json"], "a temp file was left behind"
    atomic_write_files({tmp_path / "a.md": b"new a", tmp_path / "b.json": b"new b"})
    assert (tmp_path / "a.md").read_bytes() == b"new a" and (tmp_path / "b.json").read_bytes() == b"new b"


def _fill(content):
    def fill(folder):
        (folder / "f.txt").write_text(content)
    return fill


def test_a_folder_appears_whole_and_replaces_an_old_one_only_when_complete(tmp_path):
    atomic_write_dir(tmp_path / "d", _fill("old"))

    def half_then_fail(folder):
        (folder / "f.txt").write_text("half")
        raise OSError("crash while filling (injected)")

    with pytest.raises(OSError, match="injected"):
        atomic_write_dir(tmp_path / "d", half_then_fail)
    assert (tmp_path / "d" / "f.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["d"], "a temp folder was left behind"
    atomic_write_dir(tmp_path / "d", _fill("new"))
    assert (tmp_path / "d" / "f.txt").read_text() == "new" and os.listdir(tmp_path) == ["d"]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_dir(tmp_path / "d", _fill("x"))
    finally:
        os.umask(mask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
