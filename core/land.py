"""Land or sea, on a 0.1 degree grid: the hint that a place's latitude and longitude may be
swapped, the commonest GPS and GIS slip ("3.02, 51.05" typed for Ghent lands in the Indian
Ocean; a file's outline read with its axes swapped likewise).

The grid (``assets/land_mask.npz``, 51 kB) comes from the GLOBE 1 km land/ocean mask (NOAA,
public domain) as packaged by ``global-land-mask`` (MIT); ``scripts/make_land_mask.py`` made
it. A cell is land where any of its 1 km pixels is, so a real field always lies in a land
cell: near coasts the hint errs towards silence, never towards a false alarm.
"""

from __future__ import annotations

import functools
import math
import zipfile

import numpy as np

from core.config import REPO_ROOT

LAND_MASK = REPO_ROOT / "assets" / "land_mask.npz"


@functools.lru_cache(maxsize=1)
def _land() -> tuple[np.ndarray, int] | None:
    """(rows north to south, columns west to east) bool grid and its cells per degree; None
    where the file is missing or unreadable (the hint is then never given)."""
    try:
        with np.load(LAND_MASK) as stored:
            rows, cols = (int(n) for n in stored["shape"])
            land = np.unpackbits(stored["land"], axis=1, count=cols).astype(bool)
            per_degree = int(stored["cells_per_degree"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if land.shape != (rows, cols) or rows != 180 * per_degree or cols != 360 * per_degree:
        return None
    return land, per_degree


def is_land(lat: float, lon: float) -> bool | None:
    """Whether the 0.1 degree cell of (``lat``, ``lon``) holds land; None where unknown (out
    of range, not finite, or no grid)."""
    grid = _land()
    if grid is None or not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    land, per_degree = grid
    row = min(int((90.0 - lat) * per_degree), land.shape[0] - 1)
    col = min(int((lon + 180.0) * per_degree), land.shape[1] - 1)
    return bool(land[row, col])


def degrees_in_words(lat: float, lon: float) -> str:
    """``51.05° N, 3.02° E``."""
    return f"{abs(lat):.2f}° {'N' if lat >= 0 else 'S'}, {abs(lon):.2f}° {'E' if lon >= 0 else 'W'}"


def swapped_hint(lat: float, lon: float) -> str | None:
    """A clause for a place at sea that would be on land with latitude and longitude swapped,
    e.g. "3.02° N, 51.05° E is in the sea; swapped, it would be 51.05° N, 3.02° E, on land";
    None otherwise (on land, at sea either way, or unknown). Callers add what to check."""
    if is_land(lat, lon) is not False or is_land(lon, lat) is not True:
        return None
    return (
        f"{degrees_in_words(lat, lon)} is in the sea; swapped, it would be "
        f"{degrees_in_words(lon, lat)}, on land"
    )


def field_swapped_hint(centroid: tuple[float, float]) -> str | None:
    """:func:`swapped_hint` for a field's ``(lon, lat)`` centroid, as a sentence telling to
    check its coordinates' order (GeoJSON's is longitude, latitude); None where no hint."""
    lon, lat = centroid
    hint = swapped_hint(lat, lon)
    if hint is None:
        return None
    return (
        f"The field's centre, {hint}: check the order of its coordinates (GeoJSON gives "
        "longitude first, then latitude)."
    )
