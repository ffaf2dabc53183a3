"""The land grid behind the swapped-coordinates hint (core.land)."""

from __future__ import annotations

import pytest

from core import land


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (51.05, 3.02),  # Ghent
        (52.45, 5.60),  # Flevoland, a polder below sea level
        (46.85, 17.75),  # by Lake Balaton (lakes count as land)
        (-3.37, 36.68),  # Arusha
        (37.95, -121.29),  # California's Central Valley
        (-34.60, -58.38),  # Buenos Aires
    ],
)
def test_farmland_is_land(lat: float, lon: float) -> None:
    assert land.is_land(lat, lon) is True
    assert land.swapped_hint(lat, lon) is None


@pytest.mark.parametrize(("lat", "lon"), [(3.02, 51.05), (0.0, -30.0), (-40.0, 90.0)])
def test_open_sea_is_not_land(lat: float, lon: float) -> None:
    assert land.is_land(lat, lon) is False


def test_the_hint_needs_sea_one_way_and_land_the_other() -> None:
    assert land.swapped_hint(3.02, 51.05) == (
        "3.02° N, 51.05° E is in the sea; swapped, it would be 51.05° N, 3.02° E, on land"
    )
    assert land.swapped_hint(0.0, -30.0) is None  # at sea either way: nothing to suggest
    said = land.field_swapped_hint((51.05, 3.02))  # a field's centroid is (lon, lat)
    assert said is not None and said.startswith("The field's centre, 3.02° N, 51.05° E is in")
    assert land.field_swapped_hint((3.02, 51.05)) is None
    # Out of range or not finite: unknown, never a hint.
    assert land.is_land(91.0, 0.0) is None and land.is_land(float("nan"), 3.0) is None
    assert land.is_land(-90.0, 180.0) is not None  # the grid's last cells are reached


def test_without_the_grid_there_is_no_hint(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(land, "LAND_MASK", tmp_path / "gone.npz")
    land._land.cache_clear()
    try:
        assert land.is_land(51.05, 3.02) is None and land.swapped_hint(3.02, 51.05) is None
        (tmp_path / "gone.npz").write_bytes(b"not a grid")
        land._land.cache_clear()
        assert land.swapped_hint(3.02, 51.05) is None
    finally:
        land._land.cache_clear()
