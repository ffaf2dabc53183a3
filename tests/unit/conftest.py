"""Fixtures of the unit tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder``, in which this process can create, rename or delete nothing meanwhile. Root
    ignores permission bits, so for root the folder is made immutable (chattr +i), where the
    file system allows it (else the test skips)."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root on a file system without chattr +i")
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        try:
            yield folder
        finally:
            folder.chmod(0o700)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """An empty folder this process cannot create files in (see :func:`read_only`)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    with read_only(folder):
        yield folder
