"""The pixel grid a field's cube lives on: a UTM zone, 10 m pixels, edges on whole metres.

A :class:`Grid` is a small frozen value object; everything else (affine transform, bounds,
pixel-centre coordinates) is derived from its six fields. :func:`grid_for_field` picks the
field's UTM zone and snaps the field's bounds (plus a margin) outward to multiples of the
resolution. Sentinel-2 tiles have their origin on multiples of 60 m, so a 10 m grid snapped this
way shares S2's native 10 m pixel edges and every 10 m pixel lies inside exactly one 20 m pixel:
loading needs no interpolation, and the shared real cubes (whose edges are multiples of 20 m)
are sub-grids of the grid of any field inside them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyproj
import shapely
import xarray as xr
from affine import Affine
from rasterio import features
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from core.errors import FieldError, InputError

_SNAP_TOLERANCE = 1e-6
"""Fraction of a pixel below which a coordinate counts as already on a pixel edge."""


class HasGeometry(Protocol):
    """Anything with a ``geometry`` in EPSG:4326 (e.g. :class:`core.field.Field`)."""

    @property
    def geometry(self) -> BaseGeometry: ...


FieldLike = HasGeometry | BaseGeometry
"""A field (object with ``.geometry``) or a bare shapely geometry, both in EPSG:4326."""


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid in a projected CRS, with square pixels.

    Pixel ``(row, col)`` covers ``x0 + col * res .. x0 + (col + 1) * res`` in x and
    ``y0 - (row + 1) * res .. y0 - row * res`` in y (rows run southward).
    """

    crs: str
    """CRS as an authority string, e.g. ``"EPSG:32631"``."""
    resolution_m: float
    """Pixel size in metres (both axes)."""
    x0: float
    """x of the grid's left edge (not a pixel centre), in CRS units."""
    y0: float
    """y of the grid's top edge, in CRS units."""
    width: int
    """Number of columns."""
    height: int
    """Number of rows."""

    def __post_init__(self) -> None:
        if not self.resolution_m > 0:
            raise InputError(f"Grid resolution must be positive, not {self.resolution_m} m.")
        if self.width < 1 or self.height < 1:
            raise InputError(f"Grid must have at least one pixel, not {self.width}x{self.height}.")

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``, the order of the ``(y, x)`` array axes."""
        return (self.height, self.width)

    @property
    def transform(self) -> Affine:
        """Affine map from (col, row) pixel-edge coordinates to (x, y) in the CRS."""
        return Affine(self.resolution_m, 0.0, self.x0, 0.0, -self.resolution_m, self.y0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` outer pixel edges in the CRS."""
        return (
            self.x0,
            self.y0 - self.height * self.resolution_m,
            self.x0 + self.width * self.resolution_m,
            self.y0,
        )

    @property
    def x(self) -> np.ndarray:
        """Pixel-centre x coordinates, shape (W,), increasing."""
        return self.x0 + (np.arange(self.width) + 0.5) * self.resolution_m

    @property
    def y(self) -> np.ndarray:
        """Pixel-centre y coordinates, shape (H,), decreasing (north at row 0)."""
        return self.y0 - (np.arange(self.height) + 0.5) * self.resolution_m

    def offset_in(self, outer: Grid) -> tuple[int, int]:
        """``(row, col)`` of this grid's top-left pixel inside ``outer``.

        Raises:
            InputError: the grids differ in CRS or resolution, or are not pixel-aligned.
        """
        if outer.crs != self.crs or not math.isclose(outer.resolution_m, self.resolution_m):
            raise InputError(
                f"Grids differ: {self.crs} at {self.resolution_m} m vs {outer.crs} at "
                f"{outer.resolution_m} m."
            )
        col = (self.x0 - outer.x0) / self.resolution_m
        row = (outer.y0 - self.y0) / self.resolution_m
        if abs(col - round(col)) > _SNAP_TOLERANCE or abs(row - round(row)) > _SNAP_TOLERANCE:
            raise InputError("Grids are not pixel-aligned: their edges differ by part of a pixel.")
        return (round(row), round(col))


def grid_from_cube(cube: xr.Dataset) -> Grid:
    """The grid of a cube, from its ``x``/``y`` pixel centres and ``crs``/``resolution_m`` attrs.

    Raises:
        InputError: the coordinates are not a regular north-up grid at ``resolution_m``.
    """
    res = float(cube.attrs["resolution_m"])
    x = np.asarray(cube["x"].values, dtype=np.float64)
    y = np.asarray(cube["y"].values, dtype=np.float64)
    regular = (x.size < 2 or np.allclose(np.diff(x), res)) and (
        y.size < 2 or np.allclose(np.diff(y), -res)
    )
    if not regular:
        crs = str(cube.attrs["crs"])
        if _is_geographic(crs):
            raise InputError(
                f"The cube is on a longitude/latitude grid ({crs}); this needs one in metres, "
                "as 'python -m core fetch' writes (a UTM zone)."
            )
        raise InputError(
            f"Cube coordinates are not a regular north-up {res} m grid; cannot derive its grid."
        )
    return Grid(
        crs=str(cube.attrs["crs"]),
        resolution_m=res,
        x0=float(x[0] - res / 2),
        y0=float(y[0] + res / 2),
        width=int(x.size),
        height=int(y.size),
    )


def utm_crs_for(lon: float, lat: float) -> str:
    """The standard UTM zone CRS (WGS 84) containing a point, e.g. ``"EPSG:32631"``.

    Southern-hemisphere points get the 327xx codes (false northing 10,000 km), like
    Sentinel-2's own tiles. Zone exceptions (Norway, Svalbard) are not applied.
    """
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise FieldError(
            f"The point ({lon}, {lat}) is not a longitude/latitude; is the field in EPSG:4326?"
        )
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


def _geometry_of(field: FieldLike) -> BaseGeometry:
    geometry = field if isinstance(field, BaseGeometry) else getattr(field, "geometry", None)
    if not isinstance(geometry, BaseGeometry) or geometry.is_empty:
        raise FieldError("The field has no usable geometry (expected a polygon in EPSG:4326).")
    return geometry


def _utm_crs_of(field: FieldLike) -> str:
    declared = getattr(field, "utm_crs", None)
    if isinstance(declared, str) and declared:
        return declared
    centroid = _geometry_of(field).centroid
    return utm_crs_for(centroid.x, centroid.y)


def project_geometry(geometry: BaseGeometry, crs: str) -> BaseGeometry:
    """Reproject a shapely geometry from EPSG:4326 (lon, lat) to ``crs``."""
    transformer = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shapely.transform(geometry, lambda xy: np.column_stack(transformer.transform(*xy.T)))


def grid_for_field(field: FieldLike, *, resolution_m: float = 10.0, margin_m: float = 20.0) -> Grid:
    """The grid that covers a field plus a margin, in its UTM zone, snapped to the resolution.

    The field's projected bounds are widened by ``margin_m`` on every side, then each edge is
    moved outward to the next multiple of ``resolution_m``, so pixel edges fall on
    ``k * resolution_m`` like Sentinel-2's own 10 m pixels.

    Args:
        field: a :class:`core.field.Field` (its ``utm_crs`` is used when present) or a shapely
            geometry in EPSG:4326.
        resolution_m: pixel size in metres.
        margin_m: extra ground kept around the field's bounds, in metres (>= 0).

    Returns:
        The field's :class:`Grid`.

    Raises:
        FieldError: the field has no usable geometry.
        InputError: a negative margin or non-positive resolution.
    """
    if margin_m < 0:
        raise InputError(f"The margin around the field must be >= 0 m, not {margin_m}.")
    if not resolution_m > 0:
        raise InputError(f"Grid resolution must be positive, not {resolution_m} m.")
    crs = _utm_crs_of(field)
    left, bottom, right, top = project_geometry(_geometry_of(field), crs).bounds

    def snap_down(value: float) -> float:
        return math.floor(value / resolution_m + _SNAP_TOLERANCE) * resolution_m

    def snap_up(value: float) -> float:
        return math.ceil(value / resolution_m - _SNAP_TOLERANCE) * resolution_m

    x0, x1 = snap_down(left - margin_m), snap_up(right + margin_m)
    y1, y0 = snap_down(bottom - margin_m), snap_up(top + margin_m)
    return Grid(
        crs=crs,
        resolution_m=float(resolution_m),
        x0=float(x0),
        y0=float(y0),
        width=max(1, round((x1 - x0) / resolution_m)),
        height=max(1, round((y0 - y1) / resolution_m)),
    )


def field_mask(field: FieldLike, grid: Grid | xr.Dataset) -> np.ndarray:
    """Which pixels of a grid (or cube) belong to the field.

    A pixel belongs to the field when its centre lies inside the outline (``all_touched=False``),
    so field means are not diluted by edge pixels that are mostly outside.

    Args:
        field: a :class:`core.field.Field` or shapely geometry in EPSG:4326.
        grid: a :class:`Grid`, or a cube whose pixels are read with :func:`cube_raster`
            (projected or lon/lat).

    Returns:
        bool array of shape (H, W); all False if the field misses the grid.
    """
    if isinstance(grid, xr.Dataset):
        crs, transform, shape = cube_raster(grid)
    else:
        crs, transform, shape = grid.crs, grid.transform, grid.shape
    projected = project_geometry(_geometry_of(field), crs)
    mask = features.rasterize(
        [(projected, 1)],
        out_shape=shape,
        transform=transform,
        fill=0,
        all_touched=False,
        dtype="uint8",
    )
    return mask.astype(bool)


def share_outside(field: FieldLike, cube: xr.Dataset) -> float:
    """The share (0 to 1) of the field's area that lies beyond the cube's outer pixel edges.

    Measured on the outlines in the cube's CRS (in degrees for a lon/lat cube: fine at a
    field's size), so a field wholly inside gives 0 whatever its pixel count; no pixel is read.
    Where the field misses the cube it is 1.

    Raises:
        InputError: the cube's coordinates are not a regular north-up grid.
    """
    crs, transform, (height, width) = cube_raster(cube)
    projected = project_geometry(_geometry_of(field), crs)
    if projected.area <= 0:
        return 0.0
    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    footprint = shapely.box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    inside = projected.intersection(footprint).area / projected.area
    return float(min(max(1.0 - inside, 0.0), 1.0))


def cube_raster(cube: xr.Dataset) -> tuple[str, Affine, tuple[int, int]]:
    """CRS, affine transform and ``(height, width)`` of a cube's pixels, from its coordinates.

    A cube in a projected CRS is read as its :class:`Grid` (square pixels of ``resolution_m``).
    A cube in a geographic CRS (e.g. EPSG:4326, as two of the shared cubes are) has pixels of
    some 1e-4 degrees, not square in degrees, which a :class:`Grid` cannot describe; its
    transform is taken from the regular spacing of its coordinates instead.

    Raises:
        InputError: the coordinates are not a regular north-up grid.
    """
    crs = str(cube.attrs["crs"])
    if not _is_geographic(crs):
        grid = grid_from_cube(cube)
        return grid.crs, grid.transform, grid.shape
    x = np.asarray(cube["x"].values, dtype=np.float64)
    y = np.asarray(cube["y"].values, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        raise InputError(
            f"The cube is {y.size} x {x.size} pixels in {crs}: with a single row or column its "
            "pixel size in degrees is unknown. Use a cube of at least 2 x 2 pixels."
        )
    dx, dy = float(np.median(np.diff(x))), float(np.median(np.diff(y)))
    steady = np.allclose(np.diff(x), dx, rtol=1e-4, atol=0) and np.allclose(
        np.diff(y), dy, rtol=1e-4, atol=0
    )
    if not (dx > 0 and dy < 0 and steady):
        raise InputError(
            f"The cube's {crs} coordinates are not a regular north-up grid (x rising, y falling "
            "by equal steps); cannot place a field outline on it. Write the cube with "
            "core.cube, or fetch it with 'python -m core fetch'."
        )
    transform = Affine(dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2)
    return crs, transform, (int(y.size), int(x.size))


def _is_geographic(crs: str) -> bool:
    try:
        return bool(pyproj.CRS.from_user_input(crs).is_geographic)
    except pyproj.exceptions.CRSError as exc:
        raise InputError(f"The cube's CRS '{crs}' is not one pyproj knows ({exc}).") from exc


LonLatBounds = tuple[float, float, float, float]
"""``(west, south, east, north)`` in degrees (EPSG:4326)."""


def cube_lonlat_bounds(cube: xr.Dataset) -> LonLatBounds | None:
    """The outer pixel edges of a cube in degrees; None where its ``crs`` attribute or its
    ``x``/``y`` coordinates cannot place it (a cube written without them)."""
    try:
        crs, transform, (height, width) = cube_raster(cube)
    except (InputError, KeyError):
        return None
    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    if _is_geographic(crs):
        return (float(left), float(bottom), float(right), float(top))
    try:
        to_degrees = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        west, south, east, north = to_degrees.transform_bounds(left, bottom, right, top)
    except pyproj.exceptions.PyprojError:  # a CRS pyproj reads but cannot take to degrees
        return None
    bounds = (float(west), float(south), float(east), float(north))
    return bounds if all(math.isfinite(v) for v in bounds) else None


def bounds_latitude(bounds: LonLatBounds | None) -> float | None:
    """The latitude of the middle of ``bounds`` in degrees; None for None."""
    return None if bounds is None else (bounds[1] + bounds[3]) / 2


def cube_latitude(cube: xr.Dataset) -> float | None:
    """The latitude of a cube's centre in degrees; None where it cannot be placed."""
    return bounds_latitude(cube_lonlat_bounds(cube))


def cube_outline(cube: xr.Dataset) -> BaseGeometry | None:
    """The field a cube was fetched for (its ``field_geojson`` attribute, EPSG:4326), or the
    cube's whole footprint where it has no readable outline; None where neither is known."""
    text = cube.attrs.get("field_geojson")
    if text:
        try:
            data = text if isinstance(text, dict) else json.loads(str(text))
            if data.get("type") == "FeatureCollection":
                parts = [shape(f["geometry"]) for f in data["features"]]
                geometry = shapely.union_all(parts) if parts else None
            else:
                geometry = shape(data["geometry"] if data.get("type") == "Feature" else data)
        except (ValueError, KeyError, TypeError, AttributeError, shapely.errors.GEOSException):
            geometry = None  # an outline nobody can read: the cube's footprint stands in
        if geometry is not None and not geometry.is_valid:  # e.g. a self-crossing ring
            geometry = shapely.make_valid(geometry)
        if geometry is not None and not geometry.is_empty and geometry.area > 0:
            return geometry
    bounds = cube_lonlat_bounds(cube)
    return shapely.box(*bounds) if bounds is not None else None


def share_inside(
    geometry: BaseGeometry, footprints: Sequence[tuple[str, LonLatBounds]]
) -> tuple[float, str | None]:
    """The share of ``geometry``'s area (degrees, EPSG:4326; fine at a field's size) that lies
    inside any of the named ``footprints``, and the name of the one holding most of it (None
    where none overlaps)."""
    if geometry.is_empty or geometry.area <= 0 or not footprints:
        return 0.0, None
    parts = [(name, geometry.intersection(shapely.box(*bounds))) for name, bounds in footprints]
    share = float(shapely.union_all([p for _, p in parts]).area / geometry.area)
    if share <= 0:
        return 0.0, None
    return min(share, 1.0), max(parts, key=lambda item: item[1].area)[0]


def distance_km(geometry: BaseGeometry, bounds: LonLatBounds) -> float:
    """Roughly how far ``geometry`` (EPSG:4326) lies from a footprint, in km: 0 where they
    touch; the gap between their bounding boxes otherwise (degrees scaled at their latitude;
    good to a few per cent at the distances where it matters, not across the antimeridian)."""
    west, south, east, north = geometry.bounds
    dx = max(0.0, bounds[0] - east, west - bounds[2])
    dy = max(0.0, bounds[1] - north, south - bounds[3])
    latitude = math.radians((south + north + bounds[1] + bounds[3]) / 4)
    return float(math.hypot(dx * 111.32 * math.cos(latitude), dy * 110.57))
