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
_UNSIGNED = r"\d+(?:[.,]\d+)?"
_AMOUNT = (
    rf"({_UNSIGNED})\s*(°|º|d)?\s*"
    rf"(?:({_UNSIGNED})\s*['′’]\s*)?(?:({_UNSIGNED})\s*(?:\"|″|''|”)\s*)?"
)
_DMS = (  # hemisphere letters before both coordinates, or after (or none, with degree signs)
    re.compile(rf"^\s*([NSEW])\s*{_AMOUNT}[,;]?\s*([NSEW])\s*{_AMOUNT}$", re.IGNORECASE),
    re.compile(rf"^\s*{_AMOUNT}([NSEW])?\s*[,;]?\s*{_AMOUNT}([NSEW])?\s*$", re.IGNORECASE),
)
_EXAMPLES = "e.g. '51.05, 3.02' or 51°03'N 3°01'E"


def parse_lat_lon(text: str) -> tuple[float, float]:
    """Read ``"lat, lon"`` in decimal degrees, e.g. ``"51.05, 3.02"`` or ``"51.05 3.02"``, or
    in degrees, minutes and seconds with hemispheres, as maps and GPS units give them, e.g.
    ``51°03'N 3°01'E``, ``51°3'20"N, 3°1'5"E`` or ``N 51.05 E 3.02`` (with N/S/E/W letters the
    order may be either).

    Returns:
        ``(lat, lon)``.

    Raises:
        InputError: the text is not two coordinates, or they are out of range.
    """
    match = _LAT_LON.match(text or "")
    if match is not None:
        lat, lon = (float(group.replace(",", ".")) for group in match.groups())
    else:
        lat, lon = _degrees_minutes_seconds(text or "")
    if not -90.0 <= lat <= 90.0:
        raise InputError(
            f"Latitude {lat:g} is out of range (-90 to 90). Type latitude first, then "
            f"longitude, {_EXAMPLES}."
        )
    if not -180.0 <= lon <= 180.0:
        raise InputError(f"Longitude {lon:g} is out of range (-180 to 180).")
    return lat, lon


MAX_CORNERS = 500
"""Most corners a typed field may have (a field walked with a GPS and written down)."""


def parse_corners(text: str) -> list[tuple[float, float]]:
    """Read a field's corners typed one per line (or separated by ``;``), each as
    :func:`parse_lat_lon` reads a point: ``"51.05, 3.02"`` or ``51°03'N 3°01'E``. The first
    corner may be typed again at the end.

    Returns:
        ``[(lat, lon), ...]``, at least three different corners, in the order typed.

    Raises:
        InputError: too few or too many corners, or a corner that cannot be read (named by
            its number and text).
    """
    parts = [part.strip() for part in re.split(r"[;\n]+", text or "") if part.strip()]
    if len(parts) > MAX_CORNERS:
        raise InputError(
            f"{len(parts)} corners typed; at most {MAX_CORNERS}. Upload a file of the outline "
            "instead."
        )
    corners = []
    for number, part in enumerate(parts, start=1):
        try:
            corners.append(parse_lat_lon(part))
        except InputError as exc:
            raise InputError(f"Corner {number} ('{part[:40]}'): {exc}") from None
    if len(corners) > 3 and corners[0] == corners[-1]:
        corners = corners[:-1]  # the ring closed by typing the first corner again
    if len(set(corners)) < 3:
        raise InputError(
            f"A field needs at least 3 different corners; {len(set(corners))} typed. Type one "
            f"corner per line, latitude first, {_EXAMPLES}."
        )
    return corners


def corners_polygon(corners: list[tuple[float, float]]) -> dict[str, object]:
    """The GeoJSON polygon (lon/lat, closed) of :func:`parse_corners`' corners."""
    ring = [[lon, lat] for lat, lon in corners]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _degrees_minutes_seconds(text: str) -> tuple[float, float]:
    """``(lat, lon)`` from two coordinates in degrees [minutes [seconds]] with a hemisphere
    letter before or after each (or a degree sign, then latitude first)."""
    refused = InputError(
        f"Cannot read {text!r} as a location: type latitude and longitude in decimal degrees "
        f"or degrees and minutes, {_EXAMPLES}."
    )
    prefixed, suffixed = (pattern.match(text) for pattern in _DMS)
    if prefixed is not None:
        parts = prefixed.groups()
        pairs = [(parts[0], *parts[1:5]), (parts[5], *parts[6:10])]
    elif suffixed is not None:
        parts = suffixed.groups()
        pairs = [(parts[4], *parts[0:4]), (parts[9], *parts[5:9])]
    else:
        raise refused
    coordinates = []
    for letter, degrees, sign, minutes, seconds in pairs:
        hemisphere = (letter or "").upper()
        if not hemisphere and not sign:  # a bare number: the decimal form's, refused above
            raise refused
        if (minutes or seconds) and "." in degrees.replace(",", "."):
            raise refused  # 51.5°30': which is meant?
        value = sum(
            float(part.replace(",", ".")) / scale
            for part, scale in ((degrees, 1), (minutes, 60), (seconds, 3600))
            if part
        )
        for part, name in ((minutes, "minutes"), (seconds, "seconds")):
            if part and float(part.replace(",", ".")) >= 60:
                raise InputError(f"{text!r}: {name} run from 0 to 59, not {part}.")
        coordinates.append((value * (-1 if hemisphere in ("S", "W") else 1), hemisphere))
    (first, first_side), (second, second_side) = coordinates
    if first_side in ("E", "W") and second_side in ("N", "S", ""):
        return second, first  # longitude written first, said by its letter
    if first_side in ("N", "S", "") and second_side in ("E", "W", ""):
        return first, second
    raise InputError(
        f"{text!r} names {first_side or 'no hemisphere'} and {second_side or 'no hemisphere'}: "
        "give one latitude (N or S) and one "
        f"longitude (E or W), {_EXAMPLES}."
    )


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
