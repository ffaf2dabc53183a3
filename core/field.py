"""The field: one farm field's outline in longitude/latitude, read from whatever the user has.

A :class:`Field` is a frozen value object: a valid Polygon or MultiPolygon in EPSG:4326
(x = longitude, y = latitude) and a name, with derived properties (geodesic area, bounds, UTM
zone, a cache key). The ``field_from_*`` functions read GeoJSON (text, bytes or a mapping), a
shape drawn on the map, or a file (GeoJSON, zipped shapefile, KML/KMZ, GeoPackage, shapefile)
and either return a checked :class:`Field` or raise :class:`~core.errors.FieldError` whose
message says what is wrong and what to do. When a source holds several polygons, the
``candidates_from_*`` functions list them so a UI can offer a choice and pass back ``index=``.

Every source goes through the same steps: read the features (reprojected to EPSG:4326 when the
source names another CRS), choose one, then :func:`_checked_field`: polygonal, 2D, coordinates
in range, valid (or repaired within 1 % of its area), area within limits.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sqlite3
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path, PurePosixPath
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from core.errors import FieldError

if TYPE_CHECKING:
    from core.apart import ApartError

MIN_AREA_HA = 0.1
"""Smallest field accepted: below this a 10 m pixel grid holds almost nothing."""
DEFAULT_MAX_AREA_HA = 2500.0
"""Default largest field; the same default as :attr:`core.config.Settings.max_area_ha`."""
MAX_FILE_MB = 20.0
"""Largest outline file (or upload) accepted; a field boundary is normally a few kB."""
MAX_UNZIPPED_MB = 100.0
"""Largest total size of the files inside a zip or KMZ, against zip bombs. A zipped shapefile
may need more than :data:`MAX_FILE_MB` unpacked: its .dbf pads every text to its column's
width, and a shapefile can only be uploaded zipped."""
MAX_UNZIPPED_KML_MB = MAX_FILE_MB
"""Largest total size of the KML documents inside a KMZ: no more than a .kml uploaded as it is
may weigh, so that zipping lets nothing larger through (at 100 MB, a 1.6 MB KMZ unpacked to
22 MB of KML holding 100,000 polygons, and reading it took the app to 2.3 GB: review 12, D7)."""
MAX_FEATURES = 5000
"""Most features a file (or upload) may hold, over the layers read. A farm's file holds tens to
a few hundred parcels, so this leaves ten times a large farm, room for a district's batch
(``python -m core batch``; larger ones are split), while bounding what one upload costs a
shared server: the app drew and checked every feature, and 100,000 small polygons fit under
the size limits (2.3 GB of memory, minutes of a core; review 12, D7). It is counted before the
features are read: from the GeoJSON's list, the KML's placemarks, the GeoPackage's tables, the
shapefile's header."""
REPAIR_TOLERANCE = 0.01
"""A self-crossing outline is repaired only if that changes its area by at most this fraction."""
KEY_GRID_DEG = 1e-7
"""Coordinates are snapped to this grid (about 1 cm) before hashing into :attr:`Field.key`."""
SUPPORTED_SUFFIXES: tuple[str, ...] = (".geojson", ".json", ".kml", ".kmz", ".gpkg", ".zip", ".shp")
"""File types :func:`field_from_file` reads; ``.zip`` is a zipped shapefile."""
LABEL_KEYS: tuple[str, ...] = (
    "name",
    "field",
    "field_name",
    "fieldname",
    "title",
    "label",
    "parcel",
    "id",
)
"""Feature properties (any case) that name a feature, in order of preference."""

_GEOJSON_GEOMETRY_TYPES = frozenset(
    {
        "Point",
        "MultiPoint",
        "LineString",
        "MultiLineString",
        "Polygon",
        "MultiPolygon",
        "GeometryCollection",
    }
)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SHP_MAGIC = b"\x00\x00\x27\x0a"
_LISTED_NAMES = 5
_SQLITE_STEP = 1000
"""SQLite virtual-machine instructions between two calls of the budget's progress handler."""
_SQLITE_MAX_STEPS = 20_000_000
"""Most SQLite instructions a GeoPackage's check may take (0.2 s here); its queries need a
few thousand, whatever the file holds."""
_SQLITE_MAX_LENGTH = 1_000_000
"""Longest text or blob (bytes) SQLite may make while checking a GeoPackage: its names and
types are short, and a generated column could otherwise make a value of a gigabyte."""
_KML_PLACEMARK = re.compile(r"<(?:[A-Za-z_][\w.-]*:)?Placemark[\s/>]")


@dataclass(frozen=True)
class Field:
    """One field outline. Build it with a ``field_from_*`` function, which checks and repairs it."""

    geometry: Polygon | MultiPolygon
    """The outline in EPSG:4326 (x = longitude, y = latitude), 2D and valid; holes are kept."""
    name: str
    """A label for the user: the feature's name, else the file name, else "Field"."""
    repaired: bool = False
    """True when the outline crossed itself and was repaired (its area changed by at most 1 %)."""

    def __post_init__(self) -> None:
        geometry = self.geometry
        if not isinstance(geometry, Polygon | MultiPolygon) or geometry.is_empty:
            kind = type(geometry).__name__
            raise FieldError(f"A Field needs a non-empty Polygon or MultiPolygon, not a {kind}.")
        if not geometry.is_valid:
            raise FieldError(
                f"A Field needs a valid outline ({invalid_reason_in_words(geometry)}); "
                "build it with core.field.field_from_geojson, which repairs what it can."
            )

    @property
    def area_ha(self) -> float:
        """Geodesic area on the WGS 84 ellipsoid in hectares, holes excluded."""
        return _geodesic_area_m2(self.geometry) / 10_000.0

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees."""
        west, south, east, north = self.geometry.bounds
        return float(west), float(south), float(east), float(north)

    @property
    def centroid(self) -> tuple[float, float]:
        """(longitude, latitude) of the centroid, computed in degrees (fine at field scale)."""
        point = self.geometry.centroid
        return float(point.x), float(point.y)

    @property
    def utm_crs(self) -> str:
        """EPSG code of the UTM zone of the centroid: "EPSG:326zz" north, "EPSG:327zz" south."""
        lon, lat = self.centroid
        zone = min(int((lon + 180.0) // 6.0) + 1, 60)
        return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"

    @property
    def key(self) -> str:
        """16 hex digits identifying the outline, for cache keys.

        The geometry is snapped to a 1e-7 degree grid and normalised (ring orientation, start
        vertex, part order), so the same shape drawn from another vertex or the other way round
        gives the same key. The name is not part of it.
        """
        snapped = shapely.normalize(shapely.set_precision(self.geometry, KEY_GRID_DEG))
        wkb = shapely.to_wkb(snapped, output_dimension=2, byte_order=1)
        return hashlib.sha256(wkb).hexdigest()[:16]

    def to_geojson(self) -> dict[str, Any]:
        """A GeoJSON Feature (plain JSON types) with ``name``, ``area_ha`` and ``repaired``."""
        return {
            "type": "Feature",
            "geometry": json.loads(shapely.to_geojson(self.geometry)),
            "properties": {
                "name": self.name,
                "area_ha": round(self.area_ha, 4),
                "repaired": self.repaired,
            },
        }


@dataclass(frozen=True)
class Candidate:
    """One feature of a source that holds several, for a UI to offer as a choice."""

    index: int
    """Position of the feature in the source; pass it back as ``index=``."""
    name: str
    """The feature's name, or "feature <index>" when it has none."""
    geometry_type: str
    """"Polygon", "MultiPolygon", "LineString"...; "None" for a feature without geometry."""
    area_ha: float | None
    """Geodesic area for a polygon with longitude/latitude coordinates, else None."""
    layer: str | None = None
    """The layer (KML folder, GeoPackage table, shapefile) it came from; None for GeoJSON."""
    outline: BaseGeometry | None = dataclass_field(default=None, compare=False)
    """The polygon in longitude/latitude, for a map to show it before the choice; None for
    other geometries and for coordinates that are no longitude/latitude (projected metres
    without their CRS)."""


@dataclass(frozen=True)
class FeatureChoice:
    """How the caller lets its user pick one feature of several, as error messages name it:
    keyword arguments for Python callers (:data:`KEYWORD_CHOICE`), options on a command line
    (:data:`OPTION_CHOICE`)."""

    index: str = "index={}"
    """The choice by position, ``{}`` standing for the number."""
    name: str = "name={}"
    """The choice by name, ``{}`` standing for the name."""
    index_hint: str = ""
    """What stands for the number where no number is given yet (``N``)."""
    name_hint: str = ""
    """What stands for the name where no name is given yet (``NAME``)."""

    def by_index(self, value: int | str | None = None) -> str:
        """E.g. ``index=2``, or ``--index N`` when no value is given."""
        return self.index.format(self.index_hint if value is None else value)

    def by_name(self) -> str:
        """E.g. ``name=`` or ``--name NAME``."""
        return self.name.format(self.name_hint)


KEYWORD_CHOICE = FeatureChoice()
"""Messages for Python callers: ``choose one with index= or name=``."""
OPTION_CHOICE = FeatureChoice("--index {}", "--name {}", "N", "NAME")
"""Messages for the command line: ``choose one with --index N or --name NAME``."""


@dataclass(frozen=True)
class _Feature:
    """A feature as read from a source, reprojected to EPSG:4326 but not yet checked."""

    geometry: BaseGeometry | None
    labels: tuple[str, ...]
    layer: str | None = None


def hectares(value: float) -> str:
    """An area in hectares for a message: whole hectares from 10 up, else 3 significant digits
    (review 16: a limit of 0.0001 ha read "0 ha")."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"


# --- public constructors ------------------------------------------------------------------------


def field_from_geojson(
    source: str | bytes | Mapping[str, Any],
    *,
    index: int | None = None,
    name: str | None = None,
    max_area_ha: float = DEFAULT_MAX_AREA_HA,
    choice: FeatureChoice = KEYWORD_CHOICE,
) -> Field:
    """Read a field from GeoJSON.

    Args:
        source: GeoJSON text, UTF-8 bytes, or a parsed mapping: a Feature, a FeatureCollection,
            or a bare Polygon/MultiPolygon. An old-style ``crs`` member naming another CRS is
            honoured (the outline is reprojected to EPSG:4326).
        index: which feature of a collection to take (0-based), when it holds several polygons.
        name: which feature to take, matched against its name-like properties (see
            :data:`LABEL_KEYS`), case-insensitively.
        max_area_ha: largest area accepted.
        choice: how messages name the choice of a feature (see :class:`FeatureChoice`).

    Raises:
        FieldError: the GeoJSON is unreadable, holds no usable polygon, or holds several and
            neither ``index`` nor ``name`` picks one.
    """
    features = _geojson_features(source, "GeoJSON")
    return _field_from_features(
        features,
        index=index,
        name=name,
        origin="GeoJSON",
        default_name="Field",
        max_area_ha=max_area_ha,
        choice=choice,
    )


def field_from_drawing(
    drawing: Mapping[str, Any],
    *,
    name: str = "Drawn field",
    max_area_ha: float = DEFAULT_MAX_AREA_HA,
) -> Field:
    """Read a field from what the map's draw tool returns: a GeoJSON Feature or geometry.

    Args:
        drawing: the drawn shape as a GeoJSON mapping (lon/lat).
        name: the label the field gets.
        max_area_ha: largest area accepted.

    Raises:
        FieldError: the drawing is not a usable polygon (e.g. a line, a marker or a circle).
    """
    if not isinstance(drawing, Mapping):
        raise FieldError("The drawing is not a GeoJSON shape; draw the field again as a polygon.")
    features = [
        replace(f, geometry=_wrapped_longitudes(f.geometry))
        for f in _geojson_features(drawing, "drawing")
    ]
    field = _field_from_features(
        features,
        index=None,
        name=None,
        origin="drawing",
        default_name=name,
        max_area_ha=max_area_ha,
    )
    return replace(field, name=name)


def _wrapped_longitudes(geometry: BaseGeometry | None) -> BaseGeometry | None:
    """A drawn shape with its longitudes brought into -180..180.

    A web map that was panned across the 180th meridian reports longitudes beyond +-180
    (e.g. 190 for -170); the whole shape is shifted by the multiple of 360 degrees that brings
    it back. A shape that still spans the meridian is refused: it cannot be one field.
    """
    if geometry is None or geometry.is_empty:
        return geometry
    xy = shapely.get_coordinates(geometry)
    if not np.isfinite(xy).all():
        return geometry  # refused with its own message later
    lon_min, lon_max = float(xy[:, 0].min()), float(xy[:, 0].max())
    turns = math.floor((lon_min + 180.0) / 360.0)
    if turns:
        geometry = shapely.transform(geometry, lambda c: c - np.array([360.0 * turns, 0.0]))
        lon_min, lon_max = lon_min - 360.0 * turns, lon_max - 360.0 * turns
    if lon_max > 180.0 and lon_max - lon_min < 360.0:
        raise FieldError(
            "The drawn field crosses the 180th meridian (the date line), so its outline falls on "
            "both edges of the map. Draw a field that lies on one side of it."
        )
    return geometry


def field_from_file(
    path: str | Path,
    *,
    index: int | None = None,
    name: str | None = None,
    layer: str | None = None,
    max_area_ha: float = DEFAULT_MAX_AREA_HA,
    choice: FeatureChoice = KEYWORD_CHOICE,
) -> Field:
    """Read a field from a file, chosen by its extension (see :data:`SUPPORTED_SUFFIXES`).

    Coordinates are taken as EPSG:4326 unless the file names its CRS (a shapefile's ``.prj``,
    a GeoPackage layer's SRS, a GeoJSON ``crs`` member); then they are reprojected.

    Args:
        path: a .geojson/.json, .kml, .kmz, .gpkg, .zip (zipped shapefile) or .shp file.
        index: which feature to take (0-based, across all layers read), when there are several.
        name: which feature to take, matched against its name-like properties.
        layer: read only this layer (GeoPackage table, KML folder, shapefile name in a zip);
            by default every layer with geometries is read.
        max_area_ha: largest area accepted.
        choice: how messages name the choice of a feature (:data:`OPTION_CHOICE` for a
            command line's ``--index``/``--name``).

    Raises:
        FieldError: the file is missing, too large, of an unknown type, unreadable, unsafe,
            holds more than :data:`MAX_FEATURES` features, or no usable polygon, or several
            without a choice.
    """
    return read_field_file(path, layer=layer).field(
        index=index, name=name, max_area_ha=max_area_ha, choice=choice
    )


@dataclass(frozen=True)
class FieldFile:
    """The features of a file, read once: to list them (:meth:`candidates`) and to take any of
    them as a :class:`Field` (:meth:`field`) without reading the file again. Build it with
    :func:`read_field_file`."""

    path: Path
    """The file read."""
    features: tuple[_Feature, ...]
    """Its features in file order (every layer read), in EPSG:4326, not yet checked."""

    def candidates(self) -> list[Candidate]:
        """Every feature, for the user to pick one (as :func:`candidates_from_file`)."""
        return _candidates(self.features)

    def field(
        self,
        *,
        index: int | None = None,
        name: str | None = None,
        max_area_ha: float = DEFAULT_MAX_AREA_HA,
        choice: FeatureChoice = KEYWORD_CHOICE,
    ) -> Field:
        """The feature chosen as :func:`field_from_file` chooses it, checked.

        Raises:
            FieldError: as :func:`field_from_file`, but for reading the file.
        """
        return _field_from_features(
            self.features,
            index=index,
            name=name,
            origin=_file_origin(self.path),
            default_name=self.path.stem,
            max_area_ha=max_area_ha,
            choice=choice,
        )


def read_field_file(path: str | Path, *, layer: str | None = None) -> FieldFile:
    """Read a file's features (every layer with geometries, or only ``layer``) once, for
    :meth:`FieldFile.field` to check any of them (what :func:`field_from_file` does for one).

    Raises:
        FieldError: the file is missing, too large, of an unknown type, unreadable, unsafe, or
            holds more than :data:`MAX_FEATURES` features.
    """
    p = Path(path)
    return FieldFile(p, tuple(_file_features(p, layer)))


READ_APART_S = 60.0
"""Longest a file's features may take to read in :func:`read_field_file_apart`, the reading
process's start (about a second) included; the 5,000 features of a parcel register take
well under one."""
READ_APART_MB = 2048.0
"""Most memory reading a file's features may take in :func:`read_field_file_apart`."""


def read_field_file_apart(path: str | Path, *, layer: str | None = None) -> FieldFile:
    """:func:`read_field_file` in a process of its own (:func:`core.apart.run_apart`), for
    files from users of a shared server: one that makes the reader crash, loop or take
    gigabytes is refused in words, and the server goes on (before 2026-12-06 the reading ran in
    the app's own process).

    Raises:
        FieldError: as :func:`read_field_file`; also when the reading took longer than
            :data:`READ_APART_S`, more memory than :data:`READ_APART_MB`, or crashed.
    """
    from core.apart import ApartError, run_apart

    p = Path(path)
    try:
        return run_apart(
            read_field_file, p, layer=layer, timeout_s=READ_APART_S, memory_mb=READ_APART_MB
        )
    except ApartError as exc:
        raise FieldError(_given_up(exc, _file_origin(p))) from None


def _given_up(exc: ApartError, origin: str) -> str:
    """What to tell a user whose file's reading was given up (``exc.reason``)."""
    redo = "Export only the fields you need, as GeoJSON or GeoPackage, and load that file instead."
    if exc.reason == "time":
        return f"Reading the {origin} took longer than {READ_APART_S:g} s and was stopped. {redo}"
    if exc.reason == "memory":
        return (
            f"Reading the {origin} needed more than {READ_APART_MB:,.0f} MB of memory and was "
            f"stopped. {redo}"
        )
    return (
        f"The {origin} could not be read: its reader failed ({exc.detail}). The file may be "
        f"damaged. {redo}"
    )


def read_upload(data: bytes, filename: str, *, layer: str | None = None) -> FieldFile:
    """An uploaded file's features, read from its bytes in a process of its own
    (:func:`read_field_file_apart`), for :meth:`FieldFile.candidates` and
    :meth:`FieldFile.field`.

    The bytes are written into a private temporary folder (removed afterwards) under the
    upload's base name, so the extension picks the format and the stem is the default name.

    Raises:
        FieldError: as :func:`read_field_file_apart`; also for a lone ``.shp`` without its
            sidecars.
    """
    with _uploaded(data, filename) as path:
        return read_field_file_apart(path, layer=layer)


def field_from_upload(
    data: bytes,
    filename: str,
    *,
    index: int | None = None,
    name: str | None = None,
    layer: str | None = None,
    max_area_ha: float = DEFAULT_MAX_AREA_HA,
    choice: FeatureChoice = KEYWORD_CHOICE,
) -> Field:
    """Read a field from an uploaded file's bytes, as :func:`field_from_file` would, the
    reading in a process of its own (:func:`read_upload`).

    Raises:
        FieldError: as :func:`field_from_file` and :func:`read_upload`.
    """
    source = read_upload(data, filename, layer=layer)
    return source.field(index=index, name=name, max_area_ha=max_area_ha, choice=choice)


def candidates_from_geojson(source: str | bytes | Mapping[str, Any]) -> list[Candidate]:
    """The features of a GeoJSON source, for a UI to let the user pick one by index."""
    return _candidates(_geojson_features(source, "GeoJSON"))


def candidates_from_file(path: str | Path, *, layer: str | None = None) -> list[Candidate]:
    """The features of a file (every layer, or only ``layer``), for the user to pick one."""
    return read_field_file(path, layer=layer).candidates()


def candidates_from_upload(
    data: bytes, filename: str, *, layer: str | None = None
) -> list[Candidate]:
    """The features of an uploaded file, for the user to pick one (read as
    :func:`read_upload` reads them)."""
    return read_upload(data, filename, layer=layer).candidates()


# --- choosing and checking ----------------------------------------------------------------------


def _field_from_features(
    features: Sequence[_Feature],
    *,
    index: int | None,
    name: str | None,
    origin: str,
    default_name: str,
    max_area_ha: float,
    choice: FeatureChoice = KEYWORD_CHOICE,
) -> Field:
    chosen = _choose(features, index=index, name=name, origin=origin, choice=choice)
    label = chosen.labels[0] if chosen.labels else default_name
    if not chosen.labels and len(features) > 1:  # one of several unnamed: which one, as
        # listed (Candidate.name); review 18: every field fetched from a file of unnamed
        # parcels was called after the file, and their cubes could not be told apart
        position = next(i for i, feature in enumerate(features) if feature is chosen)
        label = f"{default_name} feature {position}"
    return _checked_field(chosen.geometry, label, origin=origin, max_area_ha=max_area_ha)


def _choose(
    features: Sequence[_Feature],
    *,
    index: int | None,
    name: str | None,
    origin: str,
    choice: FeatureChoice = KEYWORD_CHOICE,
) -> _Feature:
    """The feature picked by ``index`` or ``name``, or the only polygon among ``features``;
    messages name the way to choose as ``choice`` says."""
    count = len(features)
    if count == 0:
        raise FieldError(
            f"The {origin} holds no features; draw or upload a polygon outlining the field."
        )
    if index is not None:
        if not 0 <= index < count:
            raise FieldError(
                f"{choice.by_index(index)} is out of range: the {origin} holds "
                f"{_plural(count, 'feature')}, numbered 0 to {count - 1}."
            )
        return features[index]
    candidates = _candidates(features)
    if name is not None:
        wanted = name.strip().casefold()
        hits = [i for i, f in enumerate(features) if wanted in {x.casefold() for x in f.labels}]
        if len(hits) == 1:
            return features[hits[0]]
        if hits:
            raise FieldError(
                f"{len(hits)} features in the {origin} are named '{name}' (indices "
                f"{', '.join(map(str, hits))}); choose one with {choice.by_index()}."
            )
        named = [c for c in candidates if features[c.index].labels]
        found = f"the names found are: {_listing(named)}" if named else "its features have no names"
        raise FieldError(f"No feature in the {origin} is named '{name}'; {found}.")
    if count == 1:
        return features[0]
    polygons = [c for c in candidates if c.geometry_type in ("Polygon", "MultiPolygon")]
    if len(polygons) == 1:
        return features[polygons[0].index]
    if not polygons:
        kinds = Counter(c.geometry_type for c in candidates)
        found = " and ".join(_plural(n, kind) for kind, n in kinds.most_common())
        raise FieldError(
            f"The {origin} holds {found} but no polygon; draw or upload a polygon outlining "
            "the field."
        )
    raise FieldError(
        f"The {origin} holds {len(polygons)} polygons; choose one with {choice.by_index()} or "
        f"{choice.by_name()}: "
        f"{_listing(polygons)}."
    )


def _checked_field(
    geometry: BaseGeometry | None, name: str, *, origin: str, max_area_ha: float
) -> Field:
    """Check (and if need be repair) one geometry in EPSG:4326 and wrap it as a :class:`Field`."""
    if geometry is None or geometry.is_empty:
        raise FieldError(
            f"The {origin} holds an empty geometry: there are no coordinates to outline a "
            "field. Draw or upload a polygon."
        )
    polygonal = _as_polygonal(geometry)
    if polygonal is None:
        raise FieldError(
            f"The {origin} holds a {_describe(geometry)}; draw or upload a polygon outlining "
            "the field."
        )
    polygonal = shapely.force_2d(polygonal)
    _check_lonlat(polygonal, origin)
    lon_min, _, lon_max, _ = polygonal.bounds
    if lon_max - lon_min > 180.0:  # no field spans half the globe: it jumps the date line
        raise FieldError(
            f"The outline in the {origin} runs from longitude {lon_min:g} to {lon_max:g}: it "
            "crosses the 180th meridian (the date line), where one edge's longitudes are "
            "written near -180 and the other's near 180. FieldFlow cannot fetch such a field; "
            "outline the part on one side of the date line."
        )
    polygonal, repaired = _repaired(polygonal, origin)
    area_ha = _geodesic_area_m2(polygonal) / 10_000.0
    if area_ha < MIN_AREA_HA:
        raise FieldError(
            f"The field in the {origin} is {area_ha:.3g} ha, below the smallest accepted, "
            f"{MIN_AREA_HA} ha. Check that the outline is the whole field, or draw a larger one."
        )
    if area_ha > max_area_ha:
        raise FieldError(
            f"The field in the {origin} is {area_ha:,.1f} ha, above the limit of "
            f"{hectares(max_area_ha)} ha. Outline a single field (or raise FIELDFLOW_MAX_AREA_HA)."
        )
    return Field(geometry=polygonal, name=name, repaired=repaired)


def _as_polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon | None:
    """The geometry as a Polygon/MultiPolygon; a collection of polygons is merged; else None."""
    if isinstance(geometry, Polygon | MultiPolygon):
        return geometry
    if isinstance(geometry, shapely.GeometryCollection):
        parts = list(geometry.geoms)
        if parts and all(isinstance(p, Polygon | MultiPolygon) for p in parts):
            return _polygonal_parts(geometry)
    return None


def _polygonal_parts(geometry: BaseGeometry) -> Polygon | MultiPolygon:
    """Only the polygons inside ``geometry`` (e.g. the output of make_valid), possibly empty."""
    polygons = [g for g in shapely.get_parts(shapely.get_parts(geometry)) if isinstance(g, Polygon)]
    if not polygons:
        return Polygon()
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


def _check_lonlat(geometry: BaseGeometry, origin: str) -> None:
    """Refuse coordinates that cannot be longitude/latitude (usually metres without a CRS)."""
    xy = shapely.get_coordinates(geometry)
    if not np.isfinite(xy).all():
        raise FieldError(
            f"The {origin} has coordinates that are not numbers (NaN or infinite); export the "
            "outline again."
        )
    lon_min, lat_min = xy.min(axis=0)
    lon_max, lat_max = xy.max(axis=0)
    if lon_min < -180 or lon_max > 180 or lat_min < -90 or lat_max > 90:
        raise FieldError(
            f"The {origin} has coordinates out of range for longitude/latitude (x {lon_min:.10g} "
            f"to {lon_max:.10g}, y {lat_min:.10g} to {lat_max:.10g}; longitude must be within "
            "-180..180 and latitude within -90..90). These are most likely projected "
            "coordinates (e.g. metres) without a CRS: include the .prj file or the CRS, or "
            "export the outline in EPSG:4326 (WGS 84)."
        )


_GEOS_REASON = re.compile(r"^(?P<what>[A-Za-z -]+)\[(?P<x>[-\d.eE+]+) (?P<y>[-\d.eE+]+)\]$")


def invalid_reason_in_words(geometry: BaseGeometry) -> str:
    """Why an outline is not valid, in words: GEOS's ``Self-intersection[3.0238 50.8159]``
    becomes ``its edges cross near 50.81596, 3.02385 (latitude, longitude)``."""
    reason = str(shapely.is_valid_reason(geometry))
    match = _GEOS_REASON.match(reason)
    if match is None:
        return reason
    what = match["what"].strip().lower()
    where = f"{float(match['y']):.5f}, {float(match['x']):.5f} (latitude, longitude)"
    if "self-intersection" in what:
        return f"its edges cross near {where}"
    if "too few points" in what:
        return f"too few corners, near {where}"
    return f"{what} near {where}"


def _repaired(geometry: Polygon | MultiPolygon, origin: str) -> tuple[Polygon | MultiPolygon, bool]:
    """The valid geometry and whether it had to be repaired; refuse repairs that change area."""
    if geometry.is_valid:
        return geometry, False
    reason = invalid_reason_in_words(geometry)
    fixed = _polygonal_parts(shapely.make_valid(geometry))
    after = 0.0 if fixed.is_empty else _geodesic_area_m2(fixed)
    if after <= 0.0:
        raise FieldError(
            f"The outline in the {origin} encloses no area ({reason}); draw a polygon around "
            "the field."
        )
    change = abs(after - _geodesic_area_m2(geometry)) / after
    if change > REPAIR_TOLERANCE:
        raise FieldError(
            f"The outline in the {origin} crosses itself ({reason}), and no repair keeps the "
            "field it seems to draw, so it was not accepted. Redraw the outline with its "
            "corners in order around the field, so that its edges do not cross."
        )
    return fixed, True


def _geodesic_area_m2(geometry: Polygon | MultiPolygon) -> float:
    """Area on the WGS 84 ellipsoid in m², whatever the ring orientation; holes subtracted.

    For a self-crossing ring this is the absolute signed area (crossing lobes cancel), which is
    what makes a bow-tie differ from its repair.
    """
    geod = Geod(ellps="WGS84")
    total = 0.0
    for polygon in shapely.get_parts(geometry):
        rings = [polygon.exterior, *polygon.interiors]
        areas = [abs(geod.polygon_area_perimeter(*ring.xy)[0]) for ring in rings]
        total += areas[0] - sum(areas[1:])
    return total


def _candidates(features: Sequence[_Feature]) -> list[Candidate]:
    out = []
    for i, feature in enumerate(features):
        geometry = feature.geometry
        kind = "None" if geometry is None else geometry.geom_type
        area_ha = outline = None
        if isinstance(geometry, Polygon | MultiPolygon) and not geometry.is_empty:
            lon, lat = np.abs(shapely.get_coordinates(geometry)).T
            if lon.max() <= 180.0 and lat.max() <= 90.0:  # False for NaN too
                area_ha = _geodesic_area_m2(geometry) / 10_000.0
                outline = geometry
        name = feature.labels[0] if feature.labels else f"feature {i}"
        out.append(Candidate(i, name, kind, area_ha, feature.layer, outline))
    return out


def _listing(candidates: Sequence[Candidate]) -> str:
    """ "0 'North' (12.3 ha), 1 'South' (4.0 ha) and 3 more" for messages."""
    shown = []
    for c in candidates[:_LISTED_NAMES]:
        area = f" ({c.area_ha:,.1f} ha)" if c.area_ha is not None else ""
        shown.append(f"{c.index} '{c.name}'{area}")
    more = len(candidates) - _LISTED_NAMES
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _describe(geometry: BaseGeometry) -> str:
    if isinstance(geometry, shapely.GeometryCollection) and not geometry.is_empty:
        kinds = sorted({g.geom_type for g in geometry.geoms})
        return f"GeometryCollection ({', '.join(kinds)})"
    return geometry.geom_type


def _plural(count: int, noun: str) -> str:
    return f"a {noun}" if count == 1 else f"{count} {noun}s"


# --- GeoJSON ------------------------------------------------------------------------------------


def _geojson_features(source: str | bytes | Mapping[str, Any], origin: str) -> list[_Feature]:
    """The features of a GeoJSON source, each geometry reprojected to EPSG:4326."""
    doc = _parse_json(source, origin)
    kind = doc.get("type")
    crs = _geojson_crs(doc, origin)
    if kind == "FeatureCollection":
        items = doc.get("features")
        if not isinstance(items, list):
            raise FieldError(f"The {origin} FeatureCollection has no 'features' list.")
        _check_feature_count(len(items), origin)
        if not all(isinstance(f, Mapping) for f in items):
            raise FieldError(f"The {origin} FeatureCollection has entries that are not objects.")
        raw = [(f.get("geometry"), _geojson_labels(f)) for f in items]
    elif kind == "Feature":
        raw = [(doc.get("geometry"), _geojson_labels(doc))]
    elif kind in _GEOJSON_GEOMETRY_TYPES:
        raw = [(doc, ())]
    else:
        raise FieldError(
            f"The {origin} is JSON but not GeoJSON: its type is {kind!r}, not a Feature, "
            "FeatureCollection, Polygon or MultiPolygon. (TopoJSON and Esri JSON are not "
            "supported: export GeoJSON.)"
        )
    return [_Feature(_to_lonlat(_geojson_shape(g, origin), crs), labels) for g, labels in raw]


def _parse_json(source: str | bytes | Mapping[str, Any], origin: str) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    if isinstance(source, bytes | bytearray):
        _check_size(len(source), origin)
        text = _decode_utf8(bytes(source), origin)
    elif isinstance(source, str):
        _check_size(len(source.encode("utf-8", "surrogatepass")), origin)
        text = source
    else:
        raise FieldError(
            f"The {origin} must be text, bytes or a mapping, not {type(source).__name__}."
        )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FieldError(
            f"The {origin} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}. Check that it is complete, or export it again."
        ) from None
    except RecursionError:
        raise FieldError(f"The {origin} is nested too deeply to be an outline.") from None
    if not isinstance(doc, dict):
        raise FieldError(
            f"The {origin} is JSON but not GeoJSON: its top level is a {type(doc).__name__}, "
            "not an object with a 'type'."
        )
    return doc


def _geojson_labels(feature: Mapping[str, Any]) -> tuple[str, ...]:
    properties = feature.get("properties")
    props = dict(properties) if isinstance(properties, Mapping) else {}
    if feature.get("id") is not None:
        props.setdefault("id", feature["id"])
    return _labels(props)


def _geojson_shape(geometry: Any, origin: str) -> BaseGeometry | None:
    if geometry is None:
        return None
    if not isinstance(geometry, Mapping):
        raise FieldError(f"The {origin} has a geometry that is not a GeoJSON object.")
    kind = geometry.get("type")
    if kind not in _GEOJSON_GEOMETRY_TYPES:
        raise FieldError(f"The {origin} has a geometry of unknown type {kind!r}.")
    try:
        return shape(geometry)
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        shapely.GEOSException,
    ) as exc:
        raise FieldError(
            f"The {origin} has a malformed {kind} ({exc}); export the outline again."
        ) from None


def _geojson_crs(doc: Mapping[str, Any], origin: str) -> CRS | None:
    """The CRS named by an old-style (2008) GeoJSON ``crs`` member, or None."""
    member = doc.get("crs")
    if member is None:
        return None
    props = member.get("properties") if isinstance(member, Mapping) else None
    if not isinstance(props, Mapping) or member.get("type") not in ("name", "EPSG"):
        raise FieldError(
            f"The {origin} has a 'crs' member FieldFlow cannot read (only named CRSs are); "
            "export the outline in EPSG:4326 (WGS 84) without a 'crs'."
        )
    value = props.get("name") if member.get("type") == "name" else f"EPSG:{props.get('code')}"
    try:
        return CRS.from_user_input(value)
    except CRSError:
        raise FieldError(
            f"The {origin} names its CRS {value!r}, which is not a known coordinate reference "
            "system; export the outline in EPSG:4326 (WGS 84)."
        ) from None


# --- files --------------------------------------------------------------------------------------


def _file_origin(path: Path) -> str:
    return f"file '{path.name}'"


@contextmanager
def outline_sources(path: str | Path) -> Iterator[list[Path]]:
    """The files GDAL reads a fields file's features from: a zipped shapefile's ``.shp`` files
    and a KMZ's ``.kml``, wherever they lie in the archive, extracted for the block (with the
    checks of reading it as a field file); any other file as it is. For a reader of the
    features' attributes to see what the outline reader saw (review 15: GDAL's own ``/vsizip/``
    finds a shapefile only at the archive's root)."""
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix not in (".zip", ".kmz"):
        yield [source]
        return
    wanted = ".shp" if suffix == ".zip" else ".kml"
    with TemporaryDirectory(prefix="fieldflow-zip-") as tmp:
        yield _extract(source, Path(tmp), wanted, _file_origin(source))


def _file_features(path: Path, layer: str | None) -> list[_Feature]:
    """Dispatch on the extension; every reader returns features in EPSG:4326."""
    origin = _file_origin(path)
    suffix = path.suffix.lower()
    if path.is_dir():  # before the extension: a folder named "fields" is no unknown file type
        raise FieldError(
            f"{path} is a folder, not a file: give the outline file itself, one of "
            f"{', '.join(SUPPORTED_SUFFIXES)} (for a shapefile, its .shp or its files zipped)."
        )
    if suffix not in SUPPORTED_SUFFIXES:
        raise FieldError(
            f"Unsupported file type {suffix or '(no extension)'!r} for '{path.name}'. Use one "
            f"of: {', '.join(SUPPORTED_SUFFIXES)} (.zip: a zipped shapefile)."
        )
    if not path.is_file():
        raise FieldError(f"File not found: {path}. Check the path.")
    _check_size(path.stat().st_size, origin)
    if suffix in (".geojson", ".json"):
        if layer is not None:  # review 15: ignored without a word
            raise FieldError(
                f"The {origin} is GeoJSON, which has no layers, so it has no layer '{layer}'; "
                "leave the layer out (layers are those of a GeoPackage, KML/KMZ or zipped "
                "shapefiles)."
            )
        return _geojson_features(path.read_bytes(), origin)
    if suffix in (".zip", ".kmz"):
        wanted = ".shp" if suffix == ".zip" else ".kml"
        with TemporaryDirectory(prefix="fieldflow-zip-") as tmp:
            sources = _extract(path, Path(tmp), wanted, origin)
            return _ogr_features(sources, layer, origin)
    return _ogr_features([path], layer, origin)


def _ogr_features(sources: Sequence[Path], layer: str | None, origin: str) -> list[_Feature]:
    """Read every layer with geometries (or only ``layer``) of the given files with pyogrio,
    once their features are counted and found no more than :data:`MAX_FEATURES`."""
    import geopandas as gpd  # heavy; only file reading needs it
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    available: list[tuple[Path, str]] = []
    rows: dict[Path, dict[str, int]] = {}
    for source in sources:
        _sniff(source, origin)
        if source.suffix.lower() == ".gpkg":  # before GDAL reads anything of it
            rows[source] = _geopackage_rows(source, origin)
        try:
            with warnings.catch_warnings():  # GDAL's warnings reach the user as our message
                warnings.simplefilter("ignore", RuntimeWarning)
                layers = pyogrio.list_layers(source)
        except (DataSourceError, DataLayerError, OSError) as exc:
            raise FieldError(f"Cannot read the {origin}: {_gdal_reason(exc)}") from None
        available += [(source, str(name)) for name, kind in layers if kind is not None]
    chosen = available if layer is None else [a for a in available if a[1] == layer]
    if layer is not None and not chosen:
        names = ", ".join(f"'{n}'" for _, n in available) or "none with geometries"
        raise FieldError(f"The {origin} has no layer '{layer}'; its layers are: {names}.")
    counted = 0
    for source, layer_name in chosen:
        if source in rows:  # GDAL lists a GeoPackage's layers from gpkg_contents, as SQLite did
            if layer_name.casefold() not in rows[source]:
                raise FieldError(
                    f"The {origin} has a layer '{layer_name}' that it does not list in "
                    "gpkg_contents; FieldFlow refuses it for safety. Export the fields again."
                )
            counted += rows[source][layer_name.casefold()]
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                counted += max(0, _ogr_count(source, layer_name))
        except (DataSourceError, DataLayerError, OSError, ValueError) as exc:
            raise FieldError(f"Cannot read the {origin}: {_gdal_reason(exc)}") from None
    _check_feature_count(counted, origin)
    features: list[_Feature] = []
    for source, layer_name in chosen:
        left = MAX_FEATURES - len(features)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                # At most one more than may come: a count a file got wrong reads no further.
                frame = gpd.read_file(
                    source, layer=layer_name, engine="pyogrio", max_features=left + 1
                )
        except (DataSourceError, DataLayerError, OSError, ValueError) as exc:
            raise FieldError(
                f"Cannot read layer '{layer_name}' of the {origin}: {_gdal_reason(exc)}"
            ) from None
        if len(frame) > left:
            _check_feature_count(MAX_FEATURES + 1, origin, more_than=True)
        crs = CRS.from_user_input(frame.crs) if frame.crs is not None else None
        columns = [c for c in frame.columns if c != frame.geometry.name]
        for row, geometry in zip(frame[columns].to_dict("records"), frame.geometry, strict=True):
            features.append(_Feature(_to_lonlat(geometry, crs), _labels(row), layer_name))
    return features


def _ogr_count(source: Path, layer: str) -> int:
    """The features of a layer as GDAL counts them without reading them (a shapefile's header,
    a KML already parsed); -1 where it cannot tell."""
    import pyogrio

    return int(pyogrio.read_info(source, layer=layer)["features"])


def _check_feature_count(count: int, origin: str, *, more_than: bool = False) -> None:
    """Refuse a source of more than :data:`MAX_FEATURES` features, before they are read."""
    if count <= MAX_FEATURES:
        return
    held = f"more than {MAX_FEATURES:,}" if more_than else f"{count:,}"
    raise FieldError(
        f"The {origin} holds {held} features; FieldFlow reads at most {MAX_FEATURES:,} from one "
        "file (a farm's file holds tens to a few hundred fields). Split it into files of at "
        f"most {MAX_FEATURES:,} features, or export only the fields you need."
    )


def _sniff(path: Path, origin: str) -> None:
    """Refuse content that does not match the extension, and unsafe or non-UTF-8 KML.

    GDAL picks its driver from the content, so this keeps e.g. a KML renamed to .gpkg from
    bypassing the KML checks.
    """
    suffix = path.suffix.lower()
    with path.open("rb") as handle:
        head = handle.read(len(_SQLITE_MAGIC))
    if suffix == ".gpkg" and head != _SQLITE_MAGIC:
        raise FieldError(f"The {origin} is not a GeoPackage (it lacks the SQLite header).")
    if suffix != ".gpkg" and head == _SQLITE_MAGIC:  # GDAL would read it as a database
        raise FieldError(
            f"The {origin} is a SQLite database, not a {suffix} file; a GeoPackage must be "
            "named .gpkg."
        )
    if suffix == ".shp" and not head.startswith(_SHP_MAGIC):
        raise FieldError(f"The {origin} is not a shapefile (.shp) (it lacks the file code 9994).")
    if suffix == ".kml":
        text = _decode_utf8(path.read_bytes(), origin)
        if re.search(r"<!\s*(DOCTYPE|ENTITY)", text, flags=re.IGNORECASE):
            raise FieldError(
                f"The {origin} declares a DOCTYPE or XML entities, which FieldFlow refuses for "
                "safety; export the KML again from your mapping tool."
            )
        _check_feature_count(len(_KML_PLACEMARK.findall(text)), origin)


def _geopackage_rows(path: Path, origin: str) -> dict[str, int]:
    """The rows of every layer a GeoPackage lists (by name, case-folded), read with SQLite
    alone and refused unless every one is a plain table, before GDAL reads anything of it.

    GDAL reads a layer as whatever ``gpkg_contents`` names: a view of a recursive query without
    end, in a 98 kB file, kept it busy at 100 % of a core for ever, beyond any stop (review 12,
    D6). A plain table's rows are counted in time bounded by the file's size, and SQLite's own
    work here is bounded too (:func:`_bounded_sqlite`), whatever the file holds.
    """
    try:
        with _bounded_sqlite(path, origin) as database:
            # 'table', 'view', 'virtual' or 'shadow', as SQLite itself parsed the schema
            listed = "SELECT type, name FROM pragma_table_list WHERE schema = 'main'"
            kinds = {str(name).casefold(): str(kind) for kind, name in database.execute(listed)}
            own = sorted(n for n, k in kinds.items() if n.startswith("gpkg") and k != "table")
            if kinds.get("gpkg_contents") is None:
                raise FieldError(
                    f"Cannot read the {origin}: it lacks the table gpkg_contents that lists a "
                    "GeoPackage's layers. Is it complete and really a GeoPackage?"
                )
            if own:
                raise FieldError(
                    f"The {origin} holds its GeoPackage table '{own[0]}' as a "
                    f"{kinds[own[0]]}, which FieldFlow refuses for safety. Export the fields "
                    "again as a GeoPackage from your mapping tool."
                )
            layers = [str(n) for (n,) in database.execute("SELECT table_name FROM gpkg_contents")]
            rows = {}
            for name in layers:
                kind = kinds.get(name.casefold())
                if kind != "table":
                    what = "not in it" if kind is None else f"a {kind}, not a table"
                    raise FieldError(
                        f"The {origin} lists a layer '{name}' that is {what}; FieldFlow reads "
                        "only layers stored as plain tables (a view can make reading run for "
                        "ever). Export the fields again as a GeoPackage from your mapping tool "
                        "(e.g. QGIS: Export > Save Features As)."
                    )
                quoted = '"' + name.replace('"', '""') + '"'
                (count,) = database.execute(f"SELECT COUNT(*) FROM {quoted}").fetchone()
                rows[name.casefold()] = int(count)
    except sqlite3.Error as exc:
        raise FieldError(f"Cannot read the {origin}: {_gdal_reason(exc)}") from None
    return rows


@contextmanager
def _bounded_sqlite(path: Path, origin: str) -> Iterator[sqlite3.Connection]:
    """``path`` opened read-only with SQLite, whose work is then bounded: a query is stopped
    (``sqlite3.OperationalError``, named :class:`~core.errors.FieldError` here) after
    :data:`_SQLITE_MAX_STEPS` instructions, and no value may grow past
    :data:`_SQLITE_MAX_LENGTH` bytes."""
    steps = 0

    def over_budget() -> bool:
        nonlocal steps
        steps += _SQLITE_STEP
        return steps > _SQLITE_MAX_STEPS

    database = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        database.set_progress_handler(over_budget, _SQLITE_STEP)
        database.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _SQLITE_MAX_LENGTH)
        try:
            yield database
        except sqlite3.OperationalError:
            if steps > _SQLITE_MAX_STEPS:
                raise FieldError(
                    f"Reading the {origin} asked for more work than a field file can need, "
                    "so it was stopped and refused for safety. Export the fields again from "
                    "your mapping tool."
                ) from None
            raise
    finally:
        database.close()


def _extract(archive: Path, target: Path, wanted: str, origin: str) -> list[Path]:
    """Check every member name and size, then extract; return the paths ending in ``wanted``.

    Nothing is written unless every member stays inside ``target`` (no zip-slip) and the total
    unpacked size is reasonable.
    """
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FieldError(f"The {origin} is not a readable zip archive ({exc}).") from None
    with bundle:
        members = [m for m in bundle.infolist() if not m.is_dir()]
        for member in members:
            if _escapes(member.filename):
                raise FieldError(
                    f"The {origin} contains a path that leads outside the archive "
                    f"({member.filename!r}); it was refused for safety and nothing was "
                    "extracted. Zip the files themselves, without '..' or absolute paths."
                )
        unpacked_mb = sum(m.file_size for m in members) / 1e6
        if unpacked_mb > MAX_UNZIPPED_MB:
            raise FieldError(
                f"The {origin} unpacks to {unpacked_mb:,.0f} MB, more than the "
                f"{MAX_UNZIPPED_MB:.0f} MB accepted; zip only the field outline."
            )
        members = [m for m in members if not _is_junk(m.filename)]
        outlines = [m for m in members if PurePosixPath(m.filename).suffix.lower() == wanted]
        kml_mb = sum(m.file_size for m in outlines) / 1e6 if wanted == ".kml" else 0.0
        if kml_mb > MAX_UNZIPPED_KML_MB:
            raise FieldError(
                f"The {origin} unpacks to {kml_mb:,.1f} MB of KML, more than the "
                f"{MAX_UNZIPPED_KML_MB:.0f} MB accepted (as for a .kml uploaded as it is); "
                "export only the fields' outlines."
            )
        if not outlines:
            names = ", ".join(m.filename for m in members[:8]) or "nothing"
            if wanted == ".shp":
                hint = "Zip the .shp together with its .shx, .dbf and .prj files."
            else:
                hint = "A KMZ must contain a .kml document."
            raise FieldError(f"The {origin} holds no {wanted} file (it contains: {names}). {hint}")
        if wanted == ".shp":  # GDAL's own message names a temporary path and a config option
            _check_indexes(outlines, members, origin)
        # A shapefile's parts named in another case than its .shp (PARCEL.shp beside
        # parcel.shx, as tools blind to case leave them) are unpacked under the .shp's own
        # name, where GDAL looks for them here.
        own_names = (
            {_shapefile_stem(m).lower(): _shapefile_stem(m) for m in outlines}
            if wanted == ".shp"
            else {}
        )
        try:
            for member in members:
                stem = _shapefile_stem(member)
                own = own_names.get(stem.lower(), stem)
                if own == stem:
                    bundle.extract(member, target)
                    continue
                path = target / (own + PurePosixPath(member.filename).suffix)
                path.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(member) as source, path.open("wb") as copy:
                    shutil.copyfileobj(source, copy)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as exc:
            raise FieldError(
                f"Cannot unpack the {origin} ({exc}); is it damaged or password-protected?"
            ) from None
    return [target / m.filename for m in outlines]


def _shapefile_stem(member: zipfile.ZipInfo) -> str:
    """A member's path without its suffix (``export/PARCEL`` for ``export/PARCEL.shp``)."""
    return PurePosixPath(member.filename).with_suffix("").as_posix()


def _check_indexes(
    outlines: Sequence[zipfile.ZipInfo], members: Sequence[zipfile.ZipInfo], origin: str
) -> None:
    """Refuse a zipped .shp whose .shx (the index GDAL cannot read it without) is missing."""

    def stem(member: zipfile.ZipInfo) -> str:  # in any case: see _extract's renaming
        return _shapefile_stem(member).lower()

    indexes = {stem(m) for m in members if PurePosixPath(m.filename).suffix.lower() == ".shx"}
    for outline in outlines:
        if stem(outline) not in indexes:
            base = PurePosixPath(outline.filename).stem
            raise FieldError(
                f"The {origin} holds {base}.shp but not its index file {base}.shx, without "
                "which the shapes cannot be read. Zip the .shp together with its .shx, .dbf and "
                ".prj files."
            )


def _escapes(member_name: str) -> bool:
    """True for an absolute member path or one with a '..' part (zip-slip)."""
    parts = re.split(r"[\\/]", member_name)
    absolute = member_name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member_name)
    return bool(absolute) or ".." in parts


def _is_junk(member_name: str) -> bool:
    """macOS resource forks (``__MACOSX/``, ``._name``) that zips made on a Mac carry."""
    parts = re.split(r"[\\/]", member_name)
    return parts[0] == "__MACOSX" or parts[-1].startswith("._")


# --- shared helpers -----------------------------------------------------------------------------


@contextmanager
def _uploaded(data: bytes, filename: str) -> Iterator[Path]:
    """Write an upload into a private temporary folder under its (sanitised) base name."""
    base = PurePosixPath(str(filename).replace("\\", "/")).name
    base = "".join(ch for ch in base if ch.isprintable())[-120:]
    if base in ("", ".", ".."):
        base = "upload"
    origin = _file_origin(Path(base))
    _check_size(len(data), origin)
    if Path(base).suffix.lower() == ".shp":
        raise FieldError(
            f"A .shp file alone cannot be read ('{base}'): zip it together with its .shx, "
            ".dbf and .prj files and upload the .zip."
        )
    with TemporaryDirectory(prefix="fieldflow-upload-") as tmp:
        path = Path(tmp) / base
        path.write_bytes(data)
        yield path


def _check_size(size_bytes: int, origin: str) -> None:
    if size_bytes > MAX_FILE_MB * 1e6:
        raise FieldError(
            f"The {origin} is {size_bytes / 1e6:,.1f} MB; at most {MAX_FILE_MB:.0f} MB is "
            "accepted for a field outline (a boundary is normally a few kB). Export only the "
            "field's boundary."
        )


def _decode_utf8(data: bytes, origin: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FieldError(
            f"The {origin} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at "
            f"position {exc.start}). GeoJSON and KML must be UTF-8: save or export it again "
            "as UTF-8."
        ) from None


def _labels(properties: Mapping[str, Any]) -> tuple[str, ...]:
    """The non-empty name-like property values, in :data:`LABEL_KEYS` order."""
    by_key: dict[str, Any] = {}
    for key, value in properties.items():
        by_key.setdefault(str(key).casefold(), value)
    labels = []
    for key in LABEL_KEYS:
        value = by_key.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        text = str(value).strip()
        if text and text not in labels:
            labels.append(text)
    return tuple(labels)


def _to_lonlat(geometry: BaseGeometry | None, crs: CRS | None) -> BaseGeometry | None:
    """Reproject from ``crs`` to EPSG:4326 (lon, lat); None means already there."""
    if geometry is None or crs is None or crs.equals("EPSG:4326", ignore_axis_order=True):
        return geometry
    transformer = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.transform(geometry, transformer.transform, interleaved=False)


def _gdal_reason(exc: BaseException) -> str:
    """GDAL's reason in the user's words: no SQL, no temporary paths, and what to do."""
    reason = _first_line(exc)
    if "malformed" in reason or "not a database" in reason:
        return (
            "the file is damaged (its database is malformed), perhaps cut short by an "
            "interrupted download or copy. Export the field again."
        )
    if "SHAPE_RESTORE_SHX" in reason:
        return (
            "the shapefile's index file (.shx) is not beside it, and the shapes cannot be read "
            "without it. Keep the .shp with its .shx, .dbf and .prj files (or zip them together)."
        )
    reason = re.sub(r"sqlite3_\w+\(.*\) failed: ", "", reason)
    reason = re.sub(r"\S*fieldflow-(?:zip|upload)-[^/\s]+/", "", reason).rstrip(". ")
    return f"{reason}. Is it complete and really the format its extension says?"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
