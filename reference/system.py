"""Where the package meets the machine: which device a process runs on, and writing files atomically.

Every layer takes these two rules from here, so a device name means the same thing to the
trainer, ``restore()`` and every command, and no file the package writes (weights, checkpoints,
images, reports, measurements) is ever left half-written by a crash or a full disk.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

__all__ = ["DeviceError", "UnknownDeviceError", "DeviceUnavailableError", "pick_device", "local_gpu_index",
           "native_bf16", "atomic_write_bytes", "atomic_write_files", "atomic_write_dir"]


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------
class DeviceError(ValueError):
    """A device name that cannot be used here. The two kinds are told apart by class, so a caller
    with its own wording (``Restorer``'s ``device: ...`` messages) can rephrase them."""


class UnknownDeviceError(DeviceError):
    """Not a device name at all; ``detail`` is torch's own reason."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


class DeviceUnavailableError(DeviceError):
    """A GPU asked for on a machine without CUDA, or one this machine does not have."""


def local_gpu_index(local_rank: int | None = None) -> int:
    """This process's GPU: its torchrun rank on this machine (``local_rank``, else ``$LOCAL_RANK``,
    else the current CUDA device), wrapped onto the GPUs there are (ranks may share a GPU)."""
    if local_rank is None:
        rank = os.environ.get("LOCAL_RANK")  # current_device() only when needed: it initialises CUDA
        local_rank = int(rank) if rank is not None else torch.cuda.current_device()
    return local_rank % torch.cuda.device_count()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matrix products in hardware, so that bf16 autocast speeds it
    up instead of emulating bf16: a CUDA GPU of compute capability 8.0 or later (Ampere on), or a
    CPU with AMX tiles or AVX-512 BF16 (oneDNN's bf16 kernels). Elsewhere autocast would only add casts."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        # torch's own CPU feature probes; private, so a torch without them counts as "no".
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def pick_device(requested: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """The device a name asks for: ``"auto"`` (or None) is this process's GPU when CUDA is
    available, else the CPU; ``"cpu"``; ``"cuda"`` is this process's GPU (:func:`local_gpu_index`,
    so under torchrun each process takes its own); ``"cuda:N"`` that GPU; a ``torch.device`` is
    checked the same way. A name that is not a device, or a GPU this machine does not have, is a
    :class:`DeviceError` (a ValueError) naming it."""
    if requested in ("auto", None):
        return torch.device("cuda", local_gpu_index(local_rank)) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise UnknownDeviceError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N", str(error)) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {requested!r} requested but CUDA is not available")
        if device.index is None:  # under torchrun each process takes its own GPU
            device = torch.device("cuda", local_gpu_index(local_rank))
        if device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {requested!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


# ----------------------------------------------------------------------------------------------
# atomic writes: a temp file (or folder) beside the target, synced, then renamed over it
# ----------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _stage(path: Path, data: bytes) -> Path:
    """Write ``data`` to a synced temp file beside ``path``, with the permissions a plain
    ``open(path, "wb")`` would give (mkstemp's are 0600); the caller renames or removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, rename."""
    atomic_write_files({path: data})


def atomic_write_files(files: dict[str | os.PathLike, bytes]) -> None:
    """Write several files as a set: every one is staged (written and synced to a temp file beside
    it) before any is renamed into place, so a failure while writing (a full disk, a missing
    permission) leaves all the old files as they were and no temp file behind. Only the renames,
    which do not fail for space, remain between the first file and the last."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            staged.append((_stage(path, data), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for parent in {path.parent for _, path in staged}:
        _fsync_dir(parent)


def atomic_write_dir(path: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Create folder ``path`` atomically: ``fill`` writes into a temp folder that is then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # as mkdir would make it (mkdtemp's are 0700)
        fill(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if path.exists():  # re-saving the same step: replace the old folder only once the new one is complete
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
