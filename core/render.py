"""Pictures of a field's frames: true colour, NDVI, uncertainty, radar, outlines, map overlays.

Every picture is made from the reconstruction's arrays with fixed scales, so two dates can be
compared by eye (no per-image stretch): reflectance 0 to :data:`RGB_WHITE_REFLECTANCE` is dark
to white, NDVI :data:`NDVI_RANGE` runs cream-tan-green (light to dark), the uncertainty
(NDVI p90 - p10) runs dark blue to yellow over :data:`UNCERTAINTY_RANGE`, and Sentinel-1 VV
over :data:`VV_DB_RANGE` dB is dark to light grey. Pixels without data are drawn in
:data:`NO_DATA_RGB`.

Small grids are enlarged by whole-pixel repetition (:func:`display_scale`), so a 10 m pixel
stays a crisp square; the field outline (cyan) and the cloud-mask outline (magenta) are drawn on
the enlarged picture, one or two screen pixels wide, along pixel edges.

For the map, :class:`LonLatWarp` resamples a frame from its UTM grid onto a longitude/latitude
grid (nearest neighbour, transparent outside the frame): Leaflet's ``ImageOverlay`` stretches an
image between two lon/lat corners and cannot rotate it into the UTM grid's orientation.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pyproj import Transformer

from core.cube import S2_BANDS
from core.errors import InputError
from core.grid import Grid

RGB_BANDS: tuple[str, ...] = ("B04", "B03", "B02")
"""Red, green, blue."""
RGB_WHITE_REFLECTANCE = 0.3
"""Reflectance drawn as full brightness (clouds above it saturate)."""
RGB_GAMMA = 1.3
"""Brightens the dark vegetation a little: value ** (1 / gamma)."""
NDVI_RANGE: tuple[float, float] = (-0.2, 1.0)
UNCERTAINTY_RANGE: tuple[float, float] = (0.0, 0.3)
"""NDVI p90 - p10 spread mapped onto the colour ramp."""
VV_DB_RANGE: tuple[float, float] = (-25.0, 0.0)
NO_DATA_RGB: tuple[int, int, int] = (64, 64, 64)
FIELD_RGB: tuple[int, int, int] = (0, 229, 255)
"""Colour of the field outline (cyan)."""
FIELD_HALO_RGB: tuple[int, int, int] = (25, 25, 25)
"""Colour of the line just outside the field outline: with it the outline shows on light and
dark pictures alike (review 26: on the NDVI ramp's cream, bare soil, cyan read at 1.4:1)."""
CLOUD_RGB: tuple[int, int, int] = (255, 0, 255)
"""Colour of the cloud-mask outline (magenta)."""
DISPLAY_PX = 320
"""Target length of a picture's long side on screen."""
MAX_SCALE = 16

NDVI_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (252, 248, 232)),
    (0.25, (236, 216, 160)),
    (0.4, (217, 210, 100)),
    (0.55, (166, 200, 90)),
    (0.7, (90, 170, 80)),
    (0.85, (30, 120, 60)),
    (1.0, (0, 68, 27)),
)
"""Cream-tan-yellow-green ramp, positions as fractions of :data:`NDVI_RANGE`, its lightness
falling all the way (CIELAB L* 97 / 87 / 83 / 76 / 63 / 44 / 24): bare soil light, a dense
crop dark, in every colour vision. The red-yellow-green ramp before it (ColorBrewer RdYlGn,
until 2026-12-06) gave both ends the same lightness, so under red-green colour blindness
(about 1 man in 12) bare soil and a dense crop were the same dark olive (review 25)."""
UNCERTAINTY_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (68, 1, 84)),
    (0.25, (59, 82, 139)),
    (0.5, (33, 145, 140)),
    (0.75, (94, 201, 98)),
    (1.0, (253, 231, 37)),
)
"""Viridis-like ramp, positions as fractions of :data:`UNCERTAINTY_RANGE`."""
GREY_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (0, 0, 0)),
    (1.0, (255, 255, 255)),
)


# --- colours ------------------------------------------------------------------------------


def true_colour(s2: np.ndarray) -> np.ndarray:
    """True-colour picture of one frame.

    Args:
        s2: reflectance (10, H, W) in :data:`core.cube.S2_BANDS` order.

    Returns:
        uint8 (H, W, 3); pixels with a NaN in red, green or blue get :data:`NO_DATA_RGB`.
    """
    index = [S2_BANDS.index(band) for band in RGB_BANDS]
    rgb = np.moveaxis(np.asarray(s2, dtype=np.float32)[index], 0, -1)  # (H, W, 3)
    missing = ~np.isfinite(rgb).all(axis=-1)
    with np.errstate(invalid="ignore"):
        scaled = np.clip(np.nan_to_num(rgb) / RGB_WHITE_REFLECTANCE, 0.0, 1.0) ** (1 / RGB_GAMMA)
    out = np.round(scaled * 255).astype(np.uint8)
    out[missing] = NO_DATA_RGB
    return out


def colour_ramp(
    values: np.ndarray,
    value_range: tuple[float, float],
    stops: tuple[tuple[float, tuple[int, int, int]], ...],
) -> np.ndarray:
    """Map values (H, W) onto a colour ramp; NaN -> :data:`NO_DATA_RGB`.

    Args:
        values: any float array.
        value_range: values mapped to the ramp's ends (clipped beyond).
        stops: ``(position 0..1, (r, g, b))`` in increasing position.

    Returns:
        uint8 (..., 3).
    """
    values = np.asarray(values, dtype=np.float64)
    low, high = value_range
    position = np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0.0, 1.0)
    where = np.array([p for p, _ in stops])
    colours = np.array([c for _, c in stops], dtype=np.float64)
    out = np.stack([np.interp(position, where, colours[:, k]) for k in range(3)], axis=-1)
    out = np.round(out).astype(np.uint8)
    out[~np.isfinite(values)] = NO_DATA_RGB
    return out


def ndvi_colours(ndvi: np.ndarray) -> np.ndarray:
    """NDVI (H, W) -> uint8 (H, W, 3) on the cream-tan-green ramp (:data:`NDVI_STOPS`)."""
    return colour_ramp(ndvi, NDVI_RANGE, NDVI_STOPS)


def uncertainty_colours(spread: np.ndarray) -> np.ndarray:
    """NDVI p90 - p10 (H, W) -> uint8 (H, W, 3) on the viridis-like ramp."""
    return colour_ramp(spread, UNCERTAINTY_RANGE, UNCERTAINTY_STOPS)


def radar_grey(vv_db: np.ndarray) -> np.ndarray:
    """Sentinel-1 VV backscatter in dB (H, W) -> uint8 (H, W, 3) grey."""
    return colour_ramp(vv_db, VV_DB_RANGE, GREY_STOPS)


# --- enlarging and outlines ---------------------------------------------------------------


def display_scale(shape: tuple[int, int], target_px: int = DISPLAY_PX) -> int:
    """Whole-pixel enlargement that brings the long side of ``shape`` near ``target_px``."""
    longest = max(1, *shape)
    return int(max(1, min(MAX_SCALE, round(target_px / longest))))


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """Repeat every pixel ``scale`` x ``scale`` times (the first two axes)."""
    if scale == 1:
        return image
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def outline(mask: np.ndarray, scale: int, width: int = 1) -> np.ndarray:
    """The inner border of ``mask`` (H, W) on the enlarged grid, ``width`` pixels wide.

    Returns:
        bool (H * scale, W * scale): True on enlarged pixels of the mask that lie within
        ``width`` pixels of a pixel outside it (the picture's edge does not count as outside).
    """
    big = enlarge(np.asarray(mask, dtype=bool), scale)
    inner = big.copy()
    for _ in range(max(1, width)):
        padded = np.pad(inner, 1, mode="edge")
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return big & ~inner


def draw_outlines(
    image: np.ndarray, scale: int, outlines: list[tuple[np.ndarray, tuple[int, int, int]]]
) -> np.ndarray:
    """Enlarge an RGB picture (H, W, 3) and draw mask outlines on it, in order.

    Args:
        image: uint8 (H, W, 3).
        scale: whole-pixel enlargement.
        outlines: ``(mask (H, W), colour)`` pairs; later ones are drawn on top.

    Returns:
        uint8 (H * scale, W * scale, 3).
    """
    big = enlarge(image, scale).copy()
    width = 2 if scale >= 6 else 1
    for mask, colour in outlines:
        if mask is not None and np.any(mask):
            big[outline(mask, scale, width)] = colour
    return big


# --- encoding ------------------------------------------------------------------------------


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 (H, W, 3) RGB or (H, W, 4) RGBA picture as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    """``data:image/png;base64,...`` for an image that must travel inside HTML (map overlays)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def picture(
    colours: np.ndarray,
    *,
    scale: int,
    field_mask: np.ndarray | None = None,
    cloud_mask: np.ndarray | None = None,
) -> bytes:
    """An enlarged PNG of a coloured frame with the cloud (magenta) and field (cyan, a dark line
    just outside it) outlines.

    Args:
        colours: uint8 (H, W, 3), e.g. from :func:`true_colour`.
        scale: whole-pixel enlargement (:func:`display_scale`).
        field_mask: bool (H, W), the field's pixels.
        cloud_mask: bool (H, W), pixels that were not clear (clouds, shadows, no data).
    """
    outlines: list[tuple[np.ndarray, tuple[int, int, int]]] = []
    if cloud_mask is not None:
        outlines.append((cloud_mask, CLOUD_RGB))
    if field_mask is not None:
        outlines.append((field_mask, FIELD_RGB))
    big = draw_outlines(colours, scale, outlines)
    if field_mask is not None and np.any(field_mask):
        big[outline(~np.asarray(field_mask, dtype=bool), scale, 1)] = FIELD_HALO_RGB
    return png_bytes(big)


# --- map overlays ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LonLatWarp:
    """Nearest-neighbour resampling of a UTM grid's pictures onto a lon/lat grid.

    The index maps are computed once per grid; :meth:`apply` is then one fancy-indexing step
    per frame.
    """

    rows: np.ndarray
    """int (h, w): source row of each lon/lat pixel, -1 outside the source grid."""
    cols: np.ndarray
    """int (h, w): source column of each lon/lat pixel, -1 outside."""
    bounds: tuple[float, float, float, float]
    """``(west, south, east, north)`` of the lon/lat picture, in degrees."""

    @classmethod
    def for_grid(cls, grid: Grid, *, oversample: int = 2, max_px: int = 1024) -> LonLatWarp:
        """The warp of ``grid`` (any projected CRS) to EPSG:4326.

        Args:
            grid: the source grid.
            oversample: lon/lat pixels per source pixel along each axis (keeps pixel edges
                sharp after the slight rotation).
            max_px: longest side of the lon/lat picture.
        """
        to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
        left, bottom, right, top = grid.bounds
        edge = np.linspace(0.0, 1.0, 33)
        xs = np.concatenate(
            [
                left + edge * (right - left),
                np.full(33, right),
                right - edge * (right - left),
                np.full(33, left),
            ]
        )
        ys = np.concatenate(
            [
                np.full(33, top),
                top - edge * (top - bottom),
                np.full(33, bottom),
                bottom + edge * (top - bottom),
            ]
        )
        lons, lats = to_lonlat.transform(xs, ys)
        west, east = float(np.min(lons)), float(np.max(lons))
        south, north = float(np.min(lats)), float(np.max(lats))
        factor = max(1, oversample)
        width = grid.width * factor
        height = grid.height * factor
        longest = max(width, height)
        if longest > max_px:
            width = max(1, round(width * max_px / longest))
            height = max(1, round(height * max_px / longest))
        lon = west + (np.arange(width) + 0.5) * (east - west) / width
        lat = north - (np.arange(height) + 0.5) * (north - south) / height
        lon_grid, lat_grid = np.meshgrid(lon, lat)
        to_grid = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
        x, y = to_grid.transform(lon_grid, lat_grid)
        cols = np.floor((np.asarray(x) - grid.x0) / grid.resolution_m).astype(np.int64)
        rows = np.floor((grid.y0 - np.asarray(y)) / grid.resolution_m).astype(np.int64)
        outside = (cols < 0) | (cols >= grid.width) | (rows < 0) | (rows >= grid.height)
        cols[outside] = -1
        rows[outside] = -1
        return cls(rows=rows, cols=cols, bounds=(west, south, east, north))

    @property
    def folium_bounds(self) -> list[list[float]]:
        """``[[south, west], [north, east]]``, the corner order Leaflet wants."""
        west, south, east, north = self.bounds
        return [[south, west], [north, east]]

    def apply(self, image: np.ndarray, *, valid: np.ndarray | None = None) -> np.ndarray:
        """Resample a picture (H, W, 3) of the source grid to RGBA on the lon/lat grid.

        Args:
            image: uint8 (H, W, 3).
            valid: bool (H, W); False pixels become transparent (like pixels outside).

        Returns:
            uint8 (h, w, 4).
        """
        inside = self.rows >= 0
        out = np.zeros((*self.rows.shape, 4), dtype=np.uint8)
        rows, cols = self.rows[inside], self.cols[inside]
        out[inside, :3] = image[rows, cols]
        alpha = np.full(rows.shape, 255, dtype=np.uint8)
        if valid is not None:
            alpha[~np.asarray(valid, dtype=bool)[rows, cols]] = 0
        out[inside, 3] = alpha
        return out


def colour_bar(kind: str, width_px: int = 240, height_px: int = 10) -> bytes:
    """A horizontal legend bar (PNG) of ``"ndvi"``, ``"uncertainty"`` or ``"radar"``, from the
    low end of its range (left) to the high end (right)."""
    ramps = {
        "ndvi": (NDVI_RANGE, NDVI_STOPS),
        "uncertainty": (UNCERTAINTY_RANGE, UNCERTAINTY_STOPS),
        "radar": (VV_DB_RANGE, GREY_STOPS),
    }
    if kind not in ramps:
        raise InputError(f"Unknown legend {kind!r}; choose one of {', '.join(ramps)}.")
    value_range, stops = ramps[kind]
    values = np.linspace(value_range[0], value_range[1], width_px)
    row = colour_ramp(values[None, :], value_range, stops)
    return png_bytes(np.repeat(row, height_px, axis=0))
