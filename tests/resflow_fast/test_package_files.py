"""Tests for resflow_fast/package_files.py, with stand-ins for apt-get and dpkg-deb (no network)."""
from __future__ import annotations

import hashlib
import os
import stat

import pytest

from resflow_fast.package_files import PackageFileError, checked_copy, debian_package_root, sha256_of


def _script(folder, name, body):
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_debian(tmp_path, monkeypatch):
    """apt-get writes PACKAGE.deb (failing for a package named 'missing'); dpkg-deb -x makes root/usr/a.txt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir, "apt-get", 'case "$2" in missing=*) echo "E: Unable to locate package" >&2; exit 100;; esac\n'
                                'echo deb > "${2%%=*}.deb"\n')
    _script(bin_dir, "dpkg-deb", 'mkdir -p "$3/usr" && echo "from $2" > "$3/usr/a.txt"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "work"


def test_debian_package_root_unpacks_the_package(fake_debian):
    root = debian_package_root("some-wallpapers", "1.0-1", fake_debian)
    assert (root / "usr" / "a.txt").read_text() == "from some-wallpapers.deb\n"


def test_a_failed_download_names_the_package_and_the_reason(fake_debian):
    with pytest.raises(PackageFileError, match=r"missing=2\.0 failed: E: Unable to locate package"):
        debian_package_root("missing", "2.0", fake_debian)


def test_checked_copy_copies_only_the_expected_bytes(tmp_path):
    source = tmp_path / "photo.jpg"
    source.write_bytes(b"pixels")
    good = hashlib.sha256(b"pixels").hexdigest()
    assert sha256_of(source) == good
    copy = checked_copy(source, tmp_path / "out" / "photo.jpg", good, "photo")
    assert copy.read_bytes() == b"pixels"
    with pytest.raises(PackageFileError, match="photo: .* has SHA-256 .*, expected 0{64}"):
        checked_copy(source, tmp_path / "out" / "other.jpg", "0" * 64, "photo")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo.jpg"]  # nothing else, no partial file
    with pytest.raises(PackageFileError, match="is not there"):
        checked_copy(tmp_path / "absent.jpg", tmp_path / "out" / "x.jpg", good, "absent")
