"""Tests of resflow_fast/conv_dispatch.py: keys, policies, the "auto" measurement and its disk cache.

The "auto" path measures only CUDA keys; here keys are built by hand with device_type "cuda" and a
fake timer, so the caching logic runs on any machine (no GPU, nothing timed).
"""
import json
import warnings

import pytest
import torch

from resflow_fast import conv_dispatch as cd
from resflow_fast.conv_dispatch import ConvDispatch, ConvKey, resolve_policy, size_bucket


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """No inherited policy; the default cache lands in a temp folder, never in ~/.cache."""
    monkeypatch.delenv(cd.ENV_POLICY, raising=False)
    monkeypatch.setenv(cd.ENV_CACHE, str(tmp_path / "default-cache"))


def gpu_key(c_in=64, c_out=64, hw=256, variant="norm+stats", name="Fake GPU"):
    return ConvKey("cuda", name, "bfloat16", c_in, c_out, 1, size_bucket(hw), variant)


class FakeTimer:
    """Returns preset times: the first call of each measurement times the baseline, the second the
    fused path (ConvDispatch's order); counts calls and checks it is handed callables."""

    def __init__(self, baseline_ms=1.0, fused_ms=0.5):
        self.baseline_ms, self.fused_ms, self.calls = baseline_ms, fused_ms, 0

    def __call__(self, fn):
        assert callable(fn)
        self.calls += 1
        return self.baseline_ms if self.calls % 2 == 1 else self.fused_ms


def never(*_):
    raise AssertionError("must not be called")


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


# -- keys ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pixels, bucket", [(1, 1), (3, 1), (4, 4), (15, 4), (16, 16), (255, 64), (256, 256),
                                            (320, 256), (1023, 256), (1024, 1024), (2048 * 2048, 2048 * 2048)])
def test_size_bucket_is_the_power_of_4_below(pixels, bucket):
    assert size_bucket(pixels) == bucket


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, None])
def test_size_bucket_rejects_non_positive_ints(bad):
    with pytest.raises(ValueError):
        size_bucket(bad)


def test_key_from_a_tensor_buckets_sizes_coarsely():
    x = torch.empty(2, 32, 16, 16, dtype=torch.bfloat16)
    key = ConvKey.for_input(x, 64, 1, "norm+stats")
    assert (key.device_type, key.device_name, key.dtype) == ("cpu", "cpu", "bfloat16")
    assert (key.c_in, key.c_out, key.stride, key.hw_bucket) == (32, 64, 1, 256)
    # 16x20 (320 px) shares 16x16's bucket; 32x32 does not; the batch size is not in the key
    assert ConvKey.for_input(torch.empty(1, 32, 16, 20, dtype=torch.bfloat16), 64, 1, "norm+stats") == key
    assert ConvKey.for_input(torch.empty(2, 32, 32, 32, dtype=torch.bfloat16), 64, 1, "norm+stats") != key
    assert ConvKey.for_input(x.float(), 64, 1, "norm+stats") != key
    assert ConvKey.for_input(x, 64, 1, "modnorm+residual") != key
    s = key.as_string()
    assert "cin=32" in s and "cout=64" in s and "bfloat16" in s and "hw>=256" in s


# -- policies ------------------------------------------------------------------------------------
def test_policy_default_is_off_and_env_overrides_the_default(monkeypatch):
    assert resolve_policy(None) == "off"
    assert not ConvDispatch().enabled
    monkeypatch.setenv(cd.ENV_POLICY, " Auto ")
    assert resolve_policy(None) == "auto"
    assert ConvDispatch().policy == "auto"
    assert ConvDispatch("off").policy == "off"  # an explicit policy wins over the variable
    monkeypatch.setenv(cd.ENV_POLICY, "sometimes")
    with pytest.raises(ValueError, match="RESFLOW_FUSED_CONV"):
        ConvDispatch()
    with pytest.raises(ValueError, match="fused_conv"):
        ConvDispatch("fast")


def test_off_and_on_never_measure(tmp_path):
    path = tmp_path / "c.json"
    for key in (gpu_key(), ConvKey.for_input(torch.empty(1, 8, 4, 4), 8, 1, "norm+stats")):
        assert ConvDispatch("off", path, timer=never).use_fused(key, never, never) is False
        assert ConvDispatch("on", path, timer=never).use_fused(key, never, never) is True
    assert not path.exists()


def test_auto_is_off_on_the_cpu(tmp_path):
    d = ConvDispatch("auto", tmp_path / "c.json", timer=never)
    key = ConvKey.for_input(torch.empty(1, 8, 4, 4), 8, 1, "norm+stats")
    assert d.lookup(key) is False
    assert d.use_fused(key, never, never) is False
    assert d.measurements == 0 and files_in(tmp_path) == []


# -- auto: measure once, cache in memory and on disk ---------------------------------------------
@pytest.mark.parametrize("baseline_ms, fused_ms, expected", [(1.0, 0.5, True), (1.0, 0.99, False), (1.0, 2.0, False)])
def test_auto_measures_once_and_keeps_the_faster(tmp_path, baseline_ms, fused_ms, expected):
    timer = FakeTimer(baseline_ms, fused_ms)
    d = ConvDispatch("auto", tmp_path / "c.json", timer=timer)
    key = gpu_key()
    assert d.lookup(key) is None  # undecided: it would measure
    assert d.use_fused(key, lambda: None, lambda: None) is expected
    assert timer.calls == 2 and d.measurements == 1
    assert d.use_fused(key, never, never) is expected  # in memory now
    assert timer.calls == 2
    entry = json.loads((tmp_path / "c.json").read_text())["entries"][key.as_string()]
    assert entry["fused"] is expected
    assert (entry["baseline_ms"], entry["fused_ms"]) == (baseline_ms, fused_ms)
    assert entry["variant"] == "norm+stats" and "torch" in entry


def test_auto_without_callables_does_not_decide(tmp_path):
    d = ConvDispatch("auto", tmp_path / "c.json", timer=never)
    assert d.use_fused(gpu_key()) is False
    assert d.lookup(gpu_key()) is None and not (tmp_path / "c.json").exists()


def test_disk_cache_round_trip(tmp_path):
    path = tmp_path / "sub" / "c.json"  # the folder is created
    first = ConvDispatch("auto", path, timer=FakeTimer(1.0, 0.5))
    slow = gpu_key(c_in=32)
    assert first.use_fused(gpu_key(), lambda: None, lambda: None) is True
    first._timer = FakeTimer(1.0, 3.0)
    assert first.use_fused(slow, lambda: None, lambda: None) is False
    second = ConvDispatch("auto", path, timer=never)  # a new process, in effect
    assert second.lookup(gpu_key()) is True and second.lookup(slow) is False
    assert second.use_fused(gpu_key(), never, never) is True and second.measurements == 0
    assert second.lookup(gpu_key(name="Other GPU")) is None  # another card is measured anew


def test_concurrent_writers_merge(tmp_path):
    path = tmp_path / "c.json"
    a = ConvDispatch("auto", path, timer=FakeTimer(1.0, 0.5))
    b = ConvDispatch("auto", path, timer=FakeTimer(1.0, 3.0))
    assert a.lookup(gpu_key(c_in=8)) is None and b.lookup(gpu_key(c_in=16)) is None  # both read the empty cache
    a.use_fused(gpu_key(c_in=8), lambda: None, lambda: None)
    b.use_fused(gpu_key(c_in=16), lambda: None, lambda: None)
    entries = json.loads(path.read_text())["entries"]
    assert entries[gpu_key(c_in=8).as_string()]["fused"] is True
    assert entries[gpu_key(c_in=16).as_string()]["fused"] is False


def test_default_cache_path_follows_resflow_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cd.ENV_CACHE, str(tmp_path / "rc"))
    assert cd.default_cache_path() == tmp_path / "rc" / "conv_dispatch.json"
    ConvDispatch("auto", timer=FakeTimer()).use_fused(gpu_key(), lambda: None, lambda: None)
    assert (tmp_path / "rc" / "conv_dispatch.json").is_file()
    monkeypatch.delenv(cd.ENV_CACHE)
    assert cd.default_cache_path().parts[-3:] == (".cache", "resflow_fast", "conv_dispatch.json")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"format": 99, "entries": {}}',
                                     b'{"format": 1, "entries": []}', b""])
def test_corrupt_cache_is_ignored_with_a_warning_and_replaced(tmp_path, content):
    path = tmp_path / "c.json"
    path.write_bytes(content)
    timer = FakeTimer(1.0, 0.5)
    d = ConvDispatch("auto", path, timer=timer)
    with pytest.warns(RuntimeWarning, match="corrupt cache"):
        assert d.use_fused(gpu_key(), lambda: None, lambda: None) is True
    assert timer.calls == 2
    assert json.loads(path.read_text())["entries"][gpu_key().as_string()]["fused"] is True


def test_malformed_entries_are_dropped_and_good_ones_kept(tmp_path):
    path = tmp_path / "c.json"
    good, bad = gpu_key(c_in=8), gpu_key(c_in=16)
    path.write_text(json.dumps({"format": 1, "entries": {good.as_string(): {"fused": True},
                                                         bad.as_string(): {"fused": "yes"}, "x": 3}}))
    d = ConvDispatch("auto", path, timer=never)
    assert d.lookup(good) is True and d.lookup(bad) is None


def test_unreadable_and_unwritable_cache_only_warn(tmp_path):
    path = tmp_path / "c.json"
    path.mkdir()  # reading and replacing a folder both fail with OSError
    d = ConvDispatch("auto", path, timer=FakeTimer(1.0, 0.5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert d.use_fused(gpu_key(), lambda: None, lambda: None) is True
    messages = " ".join(str(w.message) for w in caught)
    assert "cannot read the cache" in messages and "cannot write the cache" in messages
    assert d.use_fused(gpu_key(), never, never) is True  # kept in memory
    assert files_in(tmp_path) == ["c.json"] and list(path.iterdir()) == []  # no temp file left behind


def test_atomic_writes_leave_no_temp_files(tmp_path):
    path = tmp_path / "c.json"
    d = ConvDispatch("auto", path, timer=FakeTimer(1.0, 0.5))
    for c_in in (8, 16, 32, 64):
        d.use_fused(gpu_key(c_in=c_in), lambda: None, lambda: None)
    assert files_in(tmp_path) == ["c.json"]
    assert len(json.loads(path.read_text())["entries"]) == 4


def test_a_failing_measurement_decides_unfused_with_a_warning(tmp_path):
    def broken(fn):
        raise RuntimeError("does not compile")

    d = ConvDispatch("auto", tmp_path / "c.json", timer=broken)
    with pytest.warns(RuntimeWarning, match="does not compile"):
        assert d.use_fused(gpu_key(), lambda: None, lambda: None) is False
    # a failure may be transient (out of memory), so it is never written to the disk cache...
    assert not (tmp_path / "c.json").exists()
    # ...but this process does not retry it
    assert d.use_fused(gpu_key(), never, never) is False


def test_no_home_directory_falls_back_to_the_temp_folder(monkeypatch):
    from resflow_fast import conv_dispatch

    monkeypatch.delenv(conv_dispatch.ENV_CACHE, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(conv_dispatch.Path, "home", staticmethod(no_home))
    path = conv_dispatch.default_cache_path()
    assert path.name == conv_dispatch.CACHE_FILE and path.parent.name == "resflow_fast"
