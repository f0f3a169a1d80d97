"""Per-layer-shape choice between the fused 3x3 conv and the cuDNN + fused-norm path.

docs/design/architecture.md, "The fusion plan", item 5: :func:`resflow_fast.kernels.fused_conv3x3`
(the norm in its prologue, the next norm's statistics and the residual in its epilogue) is kept
only per layer shape where it measures faster than the cuDNN path, decided by measurement and
cached. :class:`ConvDispatch` is that decision; :class:`resflow_fast.fast_unet.FastUNet` asks it
once per ResBlock conv and forward.
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .reference.system import atomic_write_bytes

POLICIES = ("off", "on", "auto")
#: Environment variable that picks the policy when none is passed explicitly.
ENV_POLICY = "RESFLOW_FUSED_CONV"
#: Environment variable naming the cache folder (shared with resflow_fast.evaluate).
ENV_CACHE = "RESFLOW_CACHE"
CACHE_FILE = "conv_dispatch.json"
CACHE_FORMAT = 1
#: "auto" keeps the fused conv only where it is faster than cuDNN + norm by more than this share:
#: a tie keeps the established path (and a noisy measurement cannot flip it back and forth).
AUTO_MARGIN = 0.03
#: Calls per measured path: warm-up (compilation, cuDNN plan choice, allocator), then timed ones.
WARMUP_CALLS = 3
TIMED_CALLS = 10

_LOG = logging.getLogger("resflow_fast")


def resolve_policy(policy: str | None) -> str:
    """The policy to use: ``policy`` itself if given, else ``$RESFLOW_FUSED_CONV``, else "off".
    Raises ValueError for anything that is not one of :data:`POLICIES`."""
    source = "fused_conv"
    if policy is None:
        policy = os.environ.get(ENV_POLICY, "").strip().lower() or "off"
        source = f"${ENV_POLICY}"
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"{source} must be one of {', '.join(POLICIES)}; got {policy!r}")
    return policy


def default_cache_path() -> Path:
    """``$RESFLOW_CACHE/conv_dispatch.json``, ``$RESFLOW_CACHE`` defaulting to ~/.cache/resflow_fast."""
    folder = os.environ.get(ENV_CACHE)
    if not folder:
        try:
            folder = Path.home() / ".cache" / "resflow_fast"
        except RuntimeError:  # no home directory (some service accounts): a cache in the temp folder
            folder = Path(tempfile.gettempdir()) / "resflow_fast"
    return Path(folder) / CACHE_FILE


def size_bucket(pixels: int) -> int:
    """The power of 4 at or below ``pixels`` (= H * W): 256 for 256..1023, 1024 for 1024..4095.
    A coarse bucket, so every image size does not need its own measurement."""
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
        raise ValueError(f"pixels must be a positive int, got {pixels!r}")
    return 4 ** ((pixels.bit_length() - 1) // 2)


def device_name(device: torch.device) -> str:
    """The card's name for CUDA devices (what the decision depends on), else the device type."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


@dataclass(frozen=True)
class ConvKey:
    """What a fuse-or-not decision is cached under (see :class:`ConvDispatch`)."""

    device_type: str  # "cuda", "cpu", ...: "auto" measures on "cuda" only
    device_name: str  # e.g. "NVIDIA H100 80GB HBM3"
    dtype: str  # "bfloat16", "float16", "float32"
    c_in: int
    c_out: int
    stride: int
    hw_bucket: int  # size_bucket(H * W) of the conv's input
    variant: str  # what the fused call folds in, e.g. "norm+stats", "modnorm+residual"

    @classmethod
    def for_shape(cls, device: torch.device, dtype: torch.dtype, c_in: int, height: int, width: int,
                  c_out: int, stride: int, variant: str) -> "ConvKey":
        """The key of a conv from a (N, c_in, height, width) input of ``dtype`` on ``device``."""
        device = torch.device(device)
        return cls(device.type, device_name(device), str(dtype).replace("torch.", ""), int(c_in), int(c_out),
                   int(stride), size_bucket(int(height) * int(width)), variant)

    @classmethod
    def for_input(cls, x: torch.Tensor, c_out: int, stride: int, variant: str) -> "ConvKey":
        """The key of a conv with ``c_out`` outputs and ``stride`` applied to ``x`` (N, C_in, H, W)."""
        return cls.for_shape(x.device, x.dtype, x.shape[1], x.shape[-2], x.shape[-1], c_out, stride, variant)

    def as_string(self) -> str:
        """The key of the JSON cache (stable, readable)."""
        return (f"{self.device_name}|{self.dtype}|cin={self.c_in}|cout={self.c_out}|stride={self.stride}"
                f"|hw>={self.hw_bucket}|{self.variant}")


def cuda_time_ms(fn: Callable[[], object], warmup: int = WARMUP_CALLS, reps: int = TIMED_CALLS) -> float:
    """Median GPU time of ``fn()`` in ms: ``warmup`` untimed calls, then ``reps`` calls each between
    two CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def is_capturing() -> bool:
    """True inside a CUDA graph capture, where nothing may be timed or synchronised."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _versions() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - informational only
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version}


class ConvDispatch:
    """Decides, per :class:`ConvKey`, whether a conv runs fused.

    Policies (``FastUNet(..., fused_conv=...)``, ``ResFlowSampler(..., fused_conv=...)``):

    * ``"off"``: never fuse; the fast U-Net runs its convs through cuDNN only. The built-in default.
    * ``"on"``: always fuse (every ResBlock conv), on any device: for tests and forced experiments.
      On CPU tensors the kernel runs under the Triton interpreter or as its pure-torch twin.
    * ``"auto"``: on CUDA, the first time a :class:`ConvKey` is seen, both paths are timed on the
      actual shape (CUDA events, a few warm-up and timed calls, medians) and the fused one is kept
      only if it is faster by more than :data:`AUTO_MARGIN`; the decision is cached in memory and in
      a JSON file (below), so later processes do not measure again. On the CPU ``"auto"`` is ``"off"``
      (the interpreter's timings mean nothing, and the twins are not faster than torch).

    Where no policy is given (``fused_conv=None``), ``$RESFLOW_FUSED_CONV`` (``off``, ``on`` or
    ``auto``) picks it, else ``"off"``; an explicit argument always wins over the variable.

    The key (:class:`ConvKey`): device name, activation dtype, C_in, C_out, stride, a coarse bucket of
    H * W (powers of 4: 256 <= H*W < 1024 is one bucket), and the fused variant (what the fused call
    folds in besides the conv: the input norm and output statistics of a ResBlock's conv1, the
    modulated norm and identity residual or 1x1 skip of its conv2), because the same shape with a
    different epilogue is a different comparison. The batch size is not in the key; like the size
    bucket, it moves both paths alike.

    The disk cache: ``$RESFLOW_CACHE/conv_dispatch.json`` (``$RESFLOW_CACHE`` defaults to
    ``~/.cache/resflow_fast``, the folder :mod:`resflow_fast.evaluate` uses), or the ``cache_path``
    given. It is read once per :class:`ConvDispatch` (on the first "auto" miss) and rewritten
    atomically (``reference.system.atomic_write_bytes``) after each new measurement, merged with
    what is on disk then, so concurrent processes lose at most each other's newest entries. A cache
    that cannot be read or parsed is ignored with a warning, and one that cannot be written only
    costs a warning: the dispatcher never fails a forward over its cache. A measurement that raises
    (a kernel that does not compile for a shape, say) decides "not fused" for that key, with a warning.

    Entries record the torch and Triton versions they were measured with; they are not invalidated by
    a version change (delete the file to re-measure after upgrading either, or the kernel).

    Args:
        policy: "off", "on", "auto", or None for ``$RESFLOW_FUSED_CONV`` (default "off").
        cache_path: the JSON file of "auto" decisions; None for :func:`default_cache_path`
            (resolved when first needed, so ``$RESFLOW_CACHE`` may be set after construction).
        timer: ``timer(fn) -> ms`` used by "auto" (default :func:`cuda_time_ms`); tests inject one.

    One instance is meant to live as long as its user (a sampler holds one for all its calls), so
    the disk cache is read once and measurements are not repeated.
    """

    def __init__(self, policy: str | None = None, cache_path: str | os.PathLike | None = None,
                 timer: Callable[[Callable[[], object]], float] | None = None):
        self.policy = resolve_policy(policy)
        self._cache_path = Path(cache_path) if cache_path is not None else None
        self._timer = timer or cuda_time_ms
        self._decisions: dict[str, bool] = {}
        self._disk_loaded = False
        self.measurements = 0  # how many keys this instance has timed

    @property
    def enabled(self) -> bool:
        """False when no conv can ever be fused ("off"): callers skip building keys at all."""
        return self.policy != "off"

    @property
    def cache_path(self) -> Path:
        return self._cache_path if self._cache_path is not None else default_cache_path()

    # -- the decision ----------------------------------------------------------------------------
    def lookup(self, key: ConvKey) -> bool | None:
        """The decision for ``key`` without measuring: True/False, or None when "auto" has not
        decided it yet (it would measure)."""
        if self.policy == "off":
            return False
        if self.policy == "on":
            return True
        if key.device_type != "cuda":
            return False  # "auto" on the CPU is "off"
        name = key.as_string()
        if name not in self._decisions and not self._disk_loaded:
            self._load_disk()
        return self._decisions.get(name)

    def use_fused(self, key: ConvKey, fused: Callable[[], object] | None = None,
                  baseline: Callable[[], object] | None = None) -> bool:
        """Whether to run the conv of ``key`` fused. Under "auto", an undecided key is decided
        by timing ``fused()`` against ``baseline()`` (zero-argument calls that run the two paths
        on the actual tensors without side effects); without them, or inside a CUDA graph
        capture, an undecided key is not fused and stays undecided."""
        decision = self.lookup(key)
        if decision is not None:
            return decision
        if fused is None or baseline is None or is_capturing():
            return False
        return self._measure(key, fused, baseline)

    def _measure(self, key: ConvKey, fused, baseline) -> bool:
        name = key.as_string()
        entry = {"variant": key.variant, **_versions()}
        try:
            baseline_ms = float(self._timer(baseline))
            fused_ms = float(self._timer(fused))
            if not (math.isfinite(baseline_ms) and math.isfinite(fused_ms)):
                raise ValueError(f"non-finite time: fused {fused_ms} ms, baseline {baseline_ms} ms")
            decision = fused_ms < baseline_ms * (1.0 - AUTO_MARGIN)
            entry.update(fused=decision, fused_ms=fused_ms, baseline_ms=baseline_ms)
        except Exception as e:  # noqa: BLE001 - a shape the fused kernel cannot run stays on cuDNN
            warnings.warn(f"conv dispatch: timing the fused conv for {name} failed ({type(e).__name__}: {e}); "
                          "using cuDNN for this shape", RuntimeWarning, stacklevel=3)
            decision = False
            entry.update(fused=False, error=f"{type(e).__name__}: {str(e)[:300]}")
        self.measurements += 1
        self._decisions[name] = decision
        _LOG.info("conv dispatch: %s -> %s (%s)", name, "fused" if decision else "cuDNN + norm", entry)
        if "error" not in entry:  # a failure may be transient (out of memory): remembered by this process only
            self._store_disk(name, entry)
        return decision

    # -- the disk cache --------------------------------------------------------------------------
    def _read_entries(self) -> dict[str, dict]:
        """The entries of the cache file; {} (with a warning) when it is missing-but-fine,
        unreadable, not JSON, or not this format."""
        path = self.cache_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            warnings.warn(f"conv dispatch: cannot read the cache {path} ({e}); ignoring it",
                          RuntimeWarning, stacklevel=4)
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
                raise ValueError(f"not a format-{CACHE_FORMAT} conv dispatch cache")
            entries = data.get("entries")
            if not isinstance(entries, dict):
                raise ValueError("no 'entries' object")
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            warnings.warn(f"conv dispatch: ignoring the corrupt cache {path} ({e})", RuntimeWarning, stacklevel=4)
            return {}
        # keep only well-formed entries: one bad entry does not cost the others
        return {k: v for k, v in entries.items()
                if isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("fused"), bool)}

    def _load_disk(self) -> None:
        self._disk_loaded = True
        for name, entry in self._read_entries().items():
            self._decisions.setdefault(name, entry["fused"])

    def _store_disk(self, name: str, entry: dict) -> None:
        path = self.cache_path
        entries = self._read_entries()  # merge with what other processes wrote meanwhile
        entries[name] = entry
        data = json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1, sort_keys=True)
        try:
            atomic_write_bytes(path, (data + "\n").encode("utf-8"))
        except OSError as e:
            warnings.warn(f"conv dispatch: cannot write the cache {path} ({e}); the decision is kept "
                          "in memory only", RuntimeWarning, stacklevel=4)
