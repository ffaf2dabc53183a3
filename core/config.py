"""Settings read from the environment, with defaults that work on a fresh checkout."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PLANETARY_COMPUTER_STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO_ROOT / "assets" / "model.pt"
"""The shipped model checkpoint (made by ``python -m core train``)."""


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity on Linux, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _default_data_dir() -> Path:
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fieldflow"


@dataclass(frozen=True)
class Settings:
    """Process-wide settings. Build with :meth:`from_env`; pass explicitly, never as a global."""

    stac_api_url: str = PLANETARY_COMPUTER_STAC_URL
    """STAC API base URL (``STAC_API_URL``); Planetary Computer by default."""
    data_dir: Path = field(default_factory=_default_data_dir)
    """Folder with the shared real cubes (``FIELDFLOW_DATA_DIR``), used by the demo and training."""
    cache_dir: Path = field(default_factory=_default_cache_dir)
    """Disk cache for fetched cubes (``FIELDFLOW_CACHE_DIR``)."""
    max_area_ha: float = 2500.0
    """Largest field accepted (``FIELDFLOW_MAX_AREA_HA``)."""
    timeout_s: float = 30.0
    """Time-out of every HTTP call (``FIELDFLOW_TIMEOUT_S``)."""
    retries: int = 4
    """Retries with exponential backoff on 429/5xx and connection errors (``FIELDFLOW_RETRIES``)."""
    max_pixel_dates: float = 4.0e7
    """Largest request fetched: the field grid's pixels times its Sentinel-2 acquisition days
    (``FIELDFLOW_MAX_PIXEL_DATES``). A Run's peak memory grows with it, about 380 bytes per
    pixel-date (10.5 GB for a 486 x 486 px field over 118 days, README "Benchmarks"), so the
    default, 40 million (a 2,500 ha field over about a year), keeps a Run near 15 GB."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``); unset keys keep defaults."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}
        if env.get("STAC_API_URL"):
            kwargs["stac_api_url"] = env["STAC_API_URL"].rstrip("/")
        if env.get("FIELDFLOW_DATA_DIR"):
            kwargs["data_dir"] = Path(env["FIELDFLOW_DATA_DIR"])
        if env.get("FIELDFLOW_CACHE_DIR"):
            kwargs["cache_dir"] = Path(env["FIELDFLOW_CACHE_DIR"])
        if env.get("FIELDFLOW_MAX_AREA_HA"):
            kwargs["max_area_ha"] = float(env["FIELDFLOW_MAX_AREA_HA"])
        if env.get("FIELDFLOW_TIMEOUT_S"):
            kwargs["timeout_s"] = float(env["FIELDFLOW_TIMEOUT_S"])
        if env.get("FIELDFLOW_RETRIES"):
            kwargs["retries"] = int(env["FIELDFLOW_RETRIES"])
        if env.get("FIELDFLOW_MAX_PIXEL_DATES"):
            kwargs["max_pixel_dates"] = float(env["FIELDFLOW_MAX_PIXEL_DATES"])
        return cls(**kwargs)

    @property
    def cubes_dir(self) -> Path:
        """Folder of the shared real cubes."""
        return self.data_dir / "cubes"
