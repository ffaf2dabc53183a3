"""Places on the map: reading a typed "lat, lon" and choosing a zoom that shows a field.

The app's location box and its "fit the map to the field" both go through here, so the rules
(order latitude first, degree ranges, Web Mercator zoom levels) live in one tested place.
"""

from __future__ import annotations

import math
import re

from core.errors import InputError

MAX_ZOOM = 18
"""Deepest zoom the app asks for (a 10 m pixel is about 17 screen pixels there at 50° N)."""
MIN_ZOOM = 2
_NUMBER = r"[-+]?\d+(?:[.,]\d+)?"
_LAT_LON = re.compile(rf"^\s*({_NUMBER})\s*[,;\s]\s*({_NUMBER})\s*$")


def parse_lat_lon(text: str) -> tuple[float, float]:
    """Read ``"lat, lon"`` in decimal degrees, e.g. ``"51.05, 3.02"`` or ``"51.05 3.02"``.

    Returns:
        ``(lat, lon)``.

    Raises:
        InputError: the text is not two numbers, or they are out of range.
    """
    match = _LAT_LON.match(text or "")
    if match is None:
        raise InputError(
            f"Cannot read {text!r} as a location: type latitude and longitude in decimal "
            "degrees, e.g. '51.05, 3.02'."
        )
    lat, lon = (float(group.replace(",", ".")) for group in match.groups())
    if not -90.0 <= lat <= 90.0:
        raise InputError(
            f"Latitude {lat} is out of range (-90 to 90). Type latitude first, then longitude, "
            "e.g. '51.05, 3.02'."
        )
    if not -180.0 <= lon <= 180.0:
        raise InputError(f"Longitude {lon} is out of range (-180 to 180).")
    return lat, lon


def zoom_for_bounds(
    bounds: tuple[float, float, float, float],
    *,
    width_px: int = 800,
    height_px: int = 480,
    padding: float = 1.5,
) -> int:
    """The deepest Web Mercator zoom at which ``bounds`` fits a map of the given size.

    Args:
        bounds: ``(west, south, east, north)`` in degrees.
        width_px, height_px: the map's size on screen.
        padding: how much room to leave around the bounds (1.5: the bounds fill two thirds).

    Returns:
        An integer zoom between :data:`MIN_ZOOM` and :data:`MAX_ZOOM`.
    """
    west, south, east, north = bounds
    span_x = max(east - west, 1e-9) / 360.0
    span_y = max(_mercator_y(north) - _mercator_y(south), 1e-9)
    zoom_x = math.log2(width_px / (256.0 * span_x * padding))
    zoom_y = math.log2(height_px / (256.0 * span_y * padding))
    return int(max(MIN_ZOOM, min(MAX_ZOOM, math.floor(min(zoom_x, zoom_y)))))


def _mercator_y(lat: float) -> float:
    """Latitude -> Web Mercator y as a fraction of the world's height (0 at the equator)."""
    lat = max(-85.05, min(85.05, lat))
    return math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) / (2 * math.pi)
