"""Shared fixtures: where the real data lives, and quick access to the real cubes."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.cube import read_cube


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def data_dir(settings: Settings) -> Path:
    """The shared real data (``../shared/data`` or ``FIELDFLOW_DATA_DIR``); fails if absent."""
    if not (settings.data_dir / "cubes").is_dir():
        pytest.fail(f"Shared data not found at {settings.data_dir}; set FIELDFLOW_DATA_DIR.")
    return settings.data_dir


@pytest.fixture(scope="session")
def cubes_dir(data_dir: Path) -> Path:
    return data_dir / "cubes"


@pytest.fixture(scope="session")
def stac_dir(data_dir: Path) -> Path:
    return data_dir / "stac"


@pytest.fixture(scope="session")
def flanders_cube(cubes_dir: Path):
    """The Flanders-A cube (all ten bands, S1, crop parcels), read once per session."""
    return read_cube(cubes_dir / "be-flanders-a_2017-2018.nc")
