"""The location box ("lat, lon") and the zoom that fits a field."""

from __future__ import annotations

import re

import pytest

from core.errors import InputError
from core.location import (
    MAX_CORNERS,
    MAX_ZOOM,
    MIN_ZOOM,
    corners_polygon,
    parse_corners,
    parse_lat_lon,
    zoom_for_bounds,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("51.05, 3.02", (51.05, 3.02)),
        ("  -33.9;18.4 ", (-33.9, 18.4)),
        ("51.05 3.02", (51.05, 3.02)),
        ("51,05, 3,02", (51.05, 3.02)),
        ("+45 -120", (45.0, -120.0)),
        # degrees, minutes, seconds and hemispheres, as maps and GPS units write them
        ("51°03'N 3°43'E", (51.05, 3 + 43 / 60)),
        ("51°3'20\"N, 3°1'5\"E", (51 + 3 / 60 + 20 / 3600, 3 + 1 / 60 + 5 / 3600)),
        ("33°55'S 18°25'E", (-(33 + 55 / 60), 18 + 25 / 60)),
        ("N 51.05 E 3.02", (51.05, 3.02)),
        ("51.05N 3.02W", (51.05, -3.02)),
        ("3°43'E 51°03'N", (51.05, 3 + 43 / 60)),  # longitude first, said by its letter
        ("51,05°N, 3,02°E", (51.05, 3.02)),
    ],
)
def test_parse_lat_lon_reads_common_forms(text: str, expected: tuple[float, float]) -> None:
    assert parse_lat_lon(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Ghent", "decimal degrees"),
        ("", "decimal degrees"),
        ("51.05", "decimal degrees"),
        ("151.05, 3.02", "Latitude 151.05 is out of range"),
        ("51, 200", "Longitude 200 is out of range"),
        ("51°N 3°N", "names N and N: give one latitude"),
        ("51°70'N 3°E", "minutes run from 0 to 59, not 70"),
        ("51.5°30'N 3°E", "or degrees and minutes"),
        ("95°N 3°E", "Latitude 95 is out of range"),
    ],
)
def test_parse_lat_lon_refuses_with_a_hint(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_lat_lon(text)


def test_zoom_for_bounds_fits_a_field_and_the_world() -> None:
    # A 640 m square at 51 deg N. At zoom 16 a screen pixel is 1.5 m there, so 480 px show
    # 720 m: less than 1.5 x 640 m. Zoom 15 fits; a map 4 x larger fits two levels deeper.
    field = (3.0, 51.0, 3.0092, 51.00576)
    assert zoom_for_bounds(field) == 15
    assert zoom_for_bounds(field, width_px=3200, height_px=1920) == 17
    assert zoom_for_bounds((-180.0, -80.0, 180.0, 80.0)) == MIN_ZOOM
    assert zoom_for_bounds((3.0, 51.0, 3.0, 51.0)) == MAX_ZOOM  # a point


def test_parse_corners_reads_one_corner_a_line_and_drops_a_closing_repeat() -> None:
    typed = "51.0501, 3.0201\n51°03'01\"N 3°01'21\"E\n\n51.0489, 3.0226 ; 51.0501, 3.0201"
    corners = parse_corners(typed)
    assert len(corners) == 3
    assert corners[0] == (51.0501, 3.0201)
    assert corners[1] == pytest.approx((51 + 3 / 60 + 1 / 3600, 3 + 1 / 60 + 21 / 3600))
    polygon = corners_polygon(corners)
    ring = polygon["coordinates"][0]
    assert ring[0] == ring[-1] == [3.0201, 51.0501]  # lon, lat, closed
    assert len(ring) == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at least 3 different corners; 0 typed"),
        ("51.05, 3.02\n51.06, 3.03", "at least 3 different corners; 2 typed"),
        ("51.05, 3.02\n51.05, 3.02\n51.05, 3.02\n51.06, 3.03", "2 typed"),
        ("51.05, 3.02\nKortrijk\n51.06, 3.03", "Corner 2 ('Kortrijk'): "),
        ("51.05, 3.02\n95.0, 3.03\n51.06, 3.04", "Corner 2 ('95.0, 3.03'): Latitude 95 is out"),
        ("51.05, 3.02\n" * (MAX_CORNERS + 1), "at most 500"),
    ],
)
def test_parse_corners_refuses_with_a_hint(text: str, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        parse_corners(text)
