"""Publish a real cube as Planetary-Computer-like STAC items and COGs, for offline client tests.

:func:`publish_cube` turns a shared UTM cube (be-flanders-a, be-flanders-c, tz-arusha, es-field,
it-bolzano) into what a client finds on PC: ``sentinel-2-l2a`` and ``sentinel-1-rtc`` items made
from real PC item JSON (structure, properties and asset keys kept; ids, times, geometry,
projection, processing baseline, cloud cover and hrefs rewritten) and COGs on disk that a
:class:`~tests.support.cog_server.CogServer` serves. A client that reads them back correctly
gets the cube again:

* S2 ``B02 B03 B04 B08`` at 10 m; ``B05 B06 B07 B8A B11 B12`` and ``SCL`` at 20 m, as on PC.
  uint16 DN = round(reflectance x 10000), plus 1000 when the item's ``s2:processing_baseline``
  is >= "04.00"; NaN -> 0 (nodata). SCL uint8, 0 = no data. A band the cube lacks is published
  as an all-nodata COG.
* S1 ``vv``, ``vh`` at 10 m: float32 linear gamma0 = 10 ** (dB / 10); NaN -> -32768 (nodata).
* Everything in the cube's UTM CRS on its exact grid: pixel edges are the cube's x/y centres
  +- 5 m.

**The 20 m grid.** Real 20 m pixels start on multiples of 20 m (tile corners are multiples of
60 m). The publication grid is the cube grid padded (with nodata) so that its corner lies on a
multiple of 20 m and its size is even: one 20 m pixel then covers exactly 2 x 2 cube pixels. A
cube whose corner is 10 m off (it-bolzano, es-field) gets one extra nodata column/row on that
side. A 20 m asset is written by taking each 2 x 2 block's value, which is exact only where the
cube replicated 20 m pixels on that grid; this is checked per asset over all published dates,
and an asset whose blocks are not constant (es-field's SCL) is published at 10 m instead (its
``gsd`` and ``proj:*`` say so) rather than silently losing data.

**Processing baseline.** By acquisition date, roughly ESA's history: "02.12" (PC's archive)
before 2021-06-30, "03.00", "03.01" from 2021-11-23, "04.00" from 2022-01-25, "05.09" from
2022-12-06, "05.10" from 2023-12-13. ``PublishOptions.reprocessed`` makes chosen acquisitions
claim ``REPROCESSED_BASELINE`` ("05.00", ESA's reprocessed collection) and carry the +1000
offset whatever their date: a client must decide by the property, not by the date.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import Polygon, box, mapping
from shapely.geometry.polygon import orient

from core.cube import S2_BANDS
from tests.support.templates import (
    S1_COLLECTION,
    S2_COLLECTION,
    default_stac_dir,
    item_template,
    rebase_urls,
)

S2_10M: tuple[str, ...] = ("B02", "B03", "B04", "B08")
S2_20M: tuple[str, ...] = ("B05", "B06", "B07", "B8A", "B11", "B12")
SCL_ASSET = "SCL"
S1_ASSETS: tuple[str, ...] = ("vv", "vh")
"""S1 asset keys, in the cube's polarization order (VV, VH)."""
BOA_OFFSET_DN = 1000
OFFSET_BASELINE = "04.00"
"""From this processing baseline on, DN carry the +1000 offset."""
REPROCESSED_BASELINE = "05.00"
"""What a reprocessed old acquisition claims (ESA's Collection-1 reprocessing)."""
S1_NODATA = -32768.0
_BASELINE_HISTORY: tuple[tuple[date, str], ...] = (
    (date(2021, 6, 30), "03.00"),
    (date(2021, 11, 23), "03.01"),
    (date(2022, 1, 25), "04.00"),
    (date(2022, 12, 6), "05.09"),
    (date(2023, 12, 13), "05.10"),
)
_FIRST_BASELINE = "02.12"
_SCL_PERCENTAGES = {
    "s2:saturated_defective_pixel_percentage": (1,),
    "s2:dark_features_percentage": (2,),
    "s2:cloud_shadow_percentage": (3,),
    "s2:vegetation_percentage": (4,),
    "s2:not_vegetated_percentage": (5,),
    "s2:water_percentage": (6,),
    "s2:unclassified_percentage": (7,),
    "s2:medium_proba_clouds_percentage": (8,),
    "s2:high_proba_clouds_percentage": (9,),
    "s2:thin_cirrus_percentage": (10,),
    "s2:snow_ice_percentage": (11,),
}


class PublishError(ValueError):
    """The cube cannot be published as PC-like tiles (wrong CRS, grid or options)."""


TimeKey = int | str
"""Names an S2/S1 acquisition: an index into the source cube's times, or a UTC date
"YYYY-MM-DD" (every acquisition on that date)."""


@dataclass(frozen=True)
class PublishOptions:
    """What to publish and how. Hashable, so fixtures can cache one site per options."""

    start: str | None = None
    """First date to publish, "YYYY-MM-DD" inclusive (None: from the cube's first)."""
    end: str | None = None
    """Last date to publish, "YYYY-MM-DD" inclusive (None: to the cube's last)."""
    max_dates: int | None = None
    """Publish only the first N S2 and the first N S1 acquisitions in [start, end]."""
    include_s1: bool = True
    """Publish ``sentinel-1-rtc`` items when the cube has S1."""
    pad_px: int = 0
    """Nodata border around the cube, in 10 m pixels, so windows near the edge behave like
    windows inside a real tile (rounded up to keep the 20 m grid aligned)."""
    split: tuple[TimeKey, ...] = ()
    """S2 acquisitions published as two items (two MGRS tiles, west and east halves that
    overlap) with the same datetime, so the client must merge a solar day."""
    split_overlap_px: int = 8
    """Columns the two halves of a split acquisition share (rounded up to a multiple of 4)."""
    reprocessed: tuple[TimeKey, ...] = ()
    """S2 acquisitions that claim :data:`REPROCESSED_BASELINE` (and so the DN offset)
    whatever their date."""
    orbit_state: str = "ascending"
    """``sat:orbit_state`` of S1 items when the cube has no ``orbit_state`` coordinate."""
    blocksize: int = 256
    """COG tile size in pixels."""

    def __post_init__(self) -> None:
        for name in ("split", "reprocessed"):
            value = getattr(self, name)
            if isinstance(value, int | str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        if self.pad_px < 0 or self.split_overlap_px < 0:
            raise PublishError("pad_px and split_overlap_px must be >= 0.")
        if self.max_dates is not None and self.max_dates < 1:
            raise PublishError(f"max_dates must be >= 1, got {self.max_dates}.")
        if self.orbit_state not in ("ascending", "descending"):
            raise PublishError(
                f"orbit_state must be ascending or descending, got {self.orbit_state!r}."
            )


# --- small pure rules ---------------------------------------------------------------------


def baseline_for(when: datetime) -> str:
    """The processing baseline a PC item acquired at ``when`` plausibly carries."""
    baseline = _FIRST_BASELINE
    for since, name in _BASELINE_HISTORY:
        if when.date() >= since:
            baseline = name
    return baseline


def has_offset(baseline: str) -> bool:
    """True when DN of this processing baseline carry the +1000 offset."""
    return baseline >= OFFSET_BASELINE


def reflectance_to_dn(reflectance: np.ndarray, baseline: str) -> np.ndarray:
    """uint16 DN of ``reflectance`` as an item of ``baseline`` stores it; NaN -> 0.

    Finite values are clipped to [1, 65535] so that data never reads as nodata.
    """
    refl = np.asarray(reflectance, dtype=np.float64)
    dn = np.rint(refl * 10000.0) + (BOA_OFFSET_DN if has_offset(baseline) else 0)
    finite = np.isfinite(refl)
    return np.where(finite, np.clip(np.where(finite, dn, 0), 1, 65535), 0).astype(np.uint16)


def db_to_linear(db: np.ndarray) -> np.ndarray:
    """float32 linear backscatter of dB values; NaN -> :data:`S1_NODATA`."""
    db = np.asarray(db, dtype=np.float64)
    linear = np.power(10.0, db / 10.0)
    return np.where(np.isfinite(db), linear, S1_NODATA).astype(np.float32)


_MGRS_ROWS = "ABCDEFGHJKLMNPQRSTUV"
_MGRS_COLUMNS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWXX"


def mgrs_tile(epsg: int, easting: float, northing: float) -> str:
    """MGRS 100 km square (the S2 tile name, e.g. "31UES") of a UTM point (WGS 84 zones)."""
    if 32601 <= epsg <= 32660:
        zone = epsg - 32600
    elif 32701 <= epsg <= 32760:
        zone = epsg - 32700
    else:
        raise PublishError(f"EPSG:{epsg} is not a WGS 84 UTM zone.")
    _, lat = _to_lonlat(epsg).transform(easting, northing)
    band = _LAT_BANDS[min(20, max(0, int((lat + 80) // 8)))]
    column = _MGRS_COLUMNS[(zone - 1) % 3][(int(easting // 100_000) - 1) % 8]
    row = _MGRS_ROWS[(int(northing // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone:02d}{band}{column}{row}"


def _utc(t: np.datetime64) -> datetime:
    value = np.datetime64(t, "us").item()
    return value.replace(tzinfo=UTC)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%S")


def _rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the grid -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicationGrid:
    """The 10 m grid the COGs are written on: the cube's, padded so 20 m pixels align."""

    epsg: int
    """UTM EPSG code of the cube."""
    left: float
    """West edge of the padded grid, a multiple of 20 m."""
    top: float
    """North edge of the padded grid, a multiple of 20 m."""
    width: int
    """Columns (10 m), even."""
    height: int
    """Rows (10 m), even."""
    col0: int
    """Column of the cube's first column in this grid."""
    row0: int
    """Row of the cube's first row in this grid."""
    cube_width: int
    cube_height: int

    @classmethod
    def for_cube(cls, cube: xr.Dataset, pad_px: int = 0) -> PublicationGrid:
        """The grid for ``cube`` with at least ``pad_px`` nodata pixels around it.

        Raises:
            PublishError: not a 10 m cube in a WGS 84 UTM CRS with edges on a 10 m lattice.
        """
        crs_text = str(cube.attrs.get("crs", ""))
        epsg = CRS.from_user_input(crs_text).to_epsg() if crs_text else None
        if epsg is None or not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
            raise PublishError(
                f"Cube {cube.attrs.get('site', '')!r} is in {crs_text or 'no CRS'}; PC serves "
                "Sentinel tiles in WGS 84 UTM zones only, so only UTM cubes (be-flanders-a, "
                "be-flanders-c, tz-arusha, es-field, it-bolzano) can be published. EPSG:4326 "
                "cubes (pt-santarem, hu-alfold) cannot."
            )
        x, y = cube["x"].values, cube["y"].values
        if not (np.allclose(np.diff(x), 10.0) and np.allclose(np.diff(y), -10.0)):
            raise PublishError("Cube pixels must be 10 m, x increasing and y decreasing.")
        left, top = float(x[0]) - 5.0, float(y[0]) + 5.0
        if left % 10 or top % 10:
            raise PublishError(
                f"Cube edges ({left}, {top}) are not on the 10 m lattice of S2 tiles."
            )
        pub_left = math.floor((left - 10 * pad_px) / 20) * 20
        pub_top = math.ceil((top + 10 * pad_px) / 20) * 20
        col0, row0 = round((left - pub_left) / 10), round((pub_top - top) / 10)
        width, height = col0 + len(x) + pad_px, row0 + len(y) + pad_px
        return cls(
            epsg,
            float(pub_left),
            float(pub_top),
            width + width % 2,
            height + height % 2,
            col0,
            row0,
            len(x),
            len(y),
        )

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def transform(self, resolution_m: float = 10.0, col: int = 0) -> Affine:
        """Geotransform at ``resolution_m`` of the grid from 10 m column ``col`` eastwards."""
        return Affine(resolution_m, 0.0, self.left + 10 * col, 0.0, -resolution_m, self.top)

    def inside(self) -> np.ndarray:
        """bool (height, width): True on the cube's pixels, False on padding."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        mask[self.row0 : self.row0 + self.cube_height, self.col0 : self.col0 + self.cube_width] = (
            True
        )
        return mask

    def pad(self, array: np.ndarray, fill: float) -> np.ndarray:
        """``array`` (..., H, W) on the cube grid placed into (..., height, width) of ``fill``."""
        out = np.full((*array.shape[:-2], self.height, self.width), fill, dtype=array.dtype)
        out[
            ..., self.row0 : self.row0 + self.cube_height, self.col0 : self.col0 + self.cube_width
        ] = array
        return out


def blocks_constant(values: np.ndarray, inside: np.ndarray) -> bool:
    """True if, in every 2 x 2 block, all cube pixels hold the same value.

    Args:
        values: (T, H, W) on the publication grid (H, W even).
        inside: (H, W) True on cube pixels (padding may differ from its block).
    """
    t, h, w = values.shape
    v = values.astype(np.float64).reshape(t, h // 2, 2, w // 2, 2)
    m = np.broadcast_to(inside.reshape(1, h // 2, 2, w // 2, 2), v.shape)
    hi = np.where(m, v, -np.inf).max(axis=(2, 4))
    lo = np.where(m, v, np.inf).min(axis=(2, 4))
    return bool(np.all((hi == lo) | np.isinf(hi)))


def to_20m(values: np.ndarray) -> np.ndarray:
    """(..., H, W) at 10 m -> (..., H/2, W/2): each 2 x 2 block's largest value.

    With nodata 0 and constant blocks (see :func:`blocks_constant`) that is the block's value,
    also where padding shares a block with cube pixels.
    """
    *lead, h, w = values.shape
    return values.reshape(*lead, h // 2, 2, w // 2, 2).max(axis=(-3, -1))


# --- selection ----------------------------------------------------------------------------


def _resolve(times: np.ndarray, keys: Iterable[TimeKey]) -> set[np.datetime64]:
    chosen: set[np.datetime64] = set()
    for key in keys:
        if isinstance(key, int):
            if not -len(times) <= key < len(times):
                raise PublishError(f"Time index {key} is outside the cube's {len(times)} times.")
            chosen.add(times[key])
        else:
            day = np.datetime64(key, "D")
            chosen.update(t for t in times if t.astype("datetime64[D]") == day)
    return chosen


def _window(times: np.ndarray, options: PublishOptions) -> np.ndarray:
    keep = np.ones(len(times), dtype=bool)
    days = times.astype("datetime64[D]")
    if options.start:
        keep &= days >= np.datetime64(options.start, "D")
    if options.end:
        keep &= days <= np.datetime64(options.end, "D")
    index = np.flatnonzero(keep)
    return index if options.max_dates is None else index[: options.max_dates]


def select_dates(cube: xr.Dataset, options: PublishOptions) -> xr.Dataset:
    """The part of ``cube`` that :func:`publish_cube` publishes with ``options``."""
    out = cube.isel(time_s2=_window(cube["time_s2"].values, options))
    if "time_s1" in cube.dims:
        s1 = _window(cube["time_s1"].values, options) if options.include_s1 else []
        out = out.isel(time_s1=s1)
    if out.sizes["time_s2"] == 0:
        raise PublishError(f"No S2 acquisition of the cube lies in {options.start}..{options.end}.")
    return out


# --- publishing ---------------------------------------------------------------------------


@dataclass
class _Writes:
    """COGs to write: (path, array, transform, nodata)."""

    crs: str
    blocksize: int
    jobs: list[tuple[Path, np.ndarray, Affine, float]] = field(default_factory=list)

    def add(self, path: Path, array: np.ndarray, transform: Affine, nodata: float) -> None:
        self.jobs.append((path, array, transform, nodata))

    def run(self) -> None:
        # about 5 ms a file; threads do not help (rasterio holds the GIL while writing)
        for job in self.jobs:
            self._write(*job)

    def _write(self, path: Path, array: np.ndarray, transform: Affine, nodata: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        profile = {
            "driver": "COG",
            "width": array.shape[1],
            "height": array.shape[0],
            "count": 1,
            "dtype": array.dtype.name,
            "crs": self.crs,
            "transform": transform,
            "nodata": nodata,
            "compress": "DEFLATE",
            "predictor": "YES",
            "blocksize": self.blocksize,
            "overview_resampling": "nearest",
        }
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array, 1)


def _proj(transform: Affine, height: int, width: int, *, nine: bool = False) -> dict:
    """``proj:bbox``, ``proj:shape`` and ``proj:transform`` of a raster."""
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * width, top + transform.e * height
    coeffs = [transform.a, transform.b, left, transform.d, transform.e, top]
    return {
        "proj:bbox": [left, bottom, right, top],
        "proj:shape": [height, width],
        "proj:transform": [*coeffs, 0.0, 0.0, 1.0] if nine else coeffs,
    }


def _footprint(epsg: int, left: float, bottom: float, right: float, top: float) -> dict:
    """The rectangle as a lon/lat GeoJSON polygon (edges densified, 7 decimals)."""
    ring = box(left, bottom, right, top).segmentize(max(right - left, top - bottom) / 4)
    xs, ys = _to_lonlat(epsg).transform(*np.asarray(ring.exterior.coords).T)
    polygon = orient(Polygon(np.round(np.c_[xs, ys], 7)))
    return json.loads(json.dumps(mapping(polygon)))  # tuples -> lists


@functools.cache
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


def _from_template(template: dict, new_id: str, stac_base_url: str) -> dict:
    """A copy of ``template`` renamed to ``new_id`` everywhere (links, preview and tile URLs;
    the S1 GRD id in ``derived_from``) with PC API URLs under ``stac_base_url``."""
    old_grd, new_grd = template["id"].removesuffix("_rtc"), new_id.removesuffix("_rtc")
    text = json.dumps(template).replace(template["id"], new_id).replace(old_grd, new_grd)
    item = rebase_urls(json.loads(text), stac_base_url)
    assert isinstance(item, dict)
    return item


def _bbox(geometry: dict) -> list[float]:
    ring = np.asarray(geometry["coordinates"][0])
    return [*ring.min(axis=0).tolist(), *ring.max(axis=0).tolist()]


@dataclass(frozen=True)
class _Stats:
    """Per-pixel layers on the publication grid (T, H, W) from which item properties come."""

    scl: np.ndarray
    present: np.ndarray
    """Some band holds data (False on padding)."""
    clear: np.ndarray
    """The cube's ``valid`` (False on padding)."""

    def properties(self, i: int, part: _Part) -> dict[str, float]:
        """``eo:cloud_cover`` (100 x non-clear share of pixels with data), nodata and SCL class
        percentages of acquisition ``i`` within ``part``."""
        cols = slice(part.col_start, part.col_stop)
        present, clear = self.present[i, :, cols], self.clear[i, :, cols]
        n_data = int(present.sum())
        props = {
            "eo:cloud_cover": round(100 * (1 - (clear & present).sum() / n_data), 6)
            if n_data
            else 100.0,
            "s2:nodata_pixel_percentage": round(100 * (1 - n_data / present.size), 6),
        }
        classes = self.scl[i, :, cols][present]
        for key, codes in _SCL_PERCENTAGES.items():
            share = float(np.isin(classes, codes).mean()) if classes.size else 0.0
            props[key] = round(100 * share, 6)
        return props


@dataclass(frozen=True)
class _Part:
    """One S2 item's share of the publication grid: a tile name and a column range."""

    tile: str
    col_start: int
    col_stop: int


def _parts(grid: PublicationGrid, split: bool, overlap_px: int) -> list[_Part]:
    tile = mgrs_tile(grid.epsg, grid.left + 10 * grid.col0, grid.top - 10 * grid.row0)
    if not split:
        return [_Part(tile, 0, grid.width)]
    east = mgrs_tile(grid.epsg, grid.left + 10 * grid.col0 + 100_000, grid.top - 10 * grid.row0)
    half = max(2, math.ceil(overlap_px / 4) * 2)
    mid = (grid.width // 4) * 2
    return [
        _Part(tile, 0, min(grid.width, mid + half)),
        _Part(east, max(0, mid - half), grid.width),
    ]


class _Publisher:
    """Builds items and COG jobs for one cube; see :func:`publish_cube`."""

    def __init__(
        self,
        cube: xr.Dataset,
        folder: Path,
        cog_base_url: str,
        stac_base_url: str,
        options: PublishOptions,
        stac_dir: Path,
    ) -> None:
        self.source = cube
        self.cube = select_dates(cube, options)
        self.folder = Path(folder)
        self.cog_base = cog_base_url.rstrip("/")
        self.stac_base = stac_base_url.rstrip("/")
        self.options = options
        self.grid = PublicationGrid.for_cube(cube, options.pad_px)
        self.inside = self.grid.inside()
        self.writes = _Writes(self.grid.crs, options.blocksize)
        self.s2_template = item_template(stac_dir, S2_COLLECTION)
        self.s1_template = item_template(stac_dir, S1_COLLECTION)
        self.site = str(cube.attrs.get("site", "site"))
        self.notes: list[str] = []

    def href(self, path: Path) -> str:
        return f"{self.cog_base}/{path.relative_to(self.folder).as_posix()}"

    # S2 -----------------------------------------------------------------------------------

    def s2_items(self) -> list[dict]:
        cube, grid = self.cube, self.grid
        times = cube["time_s2"].values
        split = _resolve(self.source["time_s2"].values, self.options.split)
        reprocessed = _resolve(self.source["time_s2"].values, self.options.reprocessed)
        baselines = [
            REPROCESSED_BASELINE if t in reprocessed else baseline_for(_utc(t)) for t in times
        ]
        s2 = cube["s2"].values  # (T, 10, H, W)
        dn = grid.pad(np.stack([reflectance_to_dn(s2[i], b) for i, b in enumerate(baselines)]), 0)
        scl = (
            cube["scl"].values.astype(np.uint8)
            if "scl" in cube
            else self._scl_from_valid(s2, cube["valid"].values)
        )
        stats = _Stats(
            scl=grid.pad(scl, 0),
            present=grid.pad(np.isfinite(s2).any(axis=1), False),
            clear=grid.pad(cube["valid"].values.astype(bool), False),
        )
        layers: dict[str, tuple[np.ndarray, float]] = {}
        for b, name in enumerate(S2_BANDS):
            layers[name] = self._layer(name, dn[:, b], name in S2_20M)
        layers[SCL_ASSET] = self._layer(SCL_ASSET, stats.scl, True)
        items = []
        for i, t in enumerate(times):
            for part in _parts(grid, t in split, self.options.split_overlap_px):
                item = self._s2_item(_utc(t), baselines[i], part)
                self._s2_assets(item, i, part, layers)
                item["properties"].update(stats.properties(i, part))
                items.append(item)
        return items

    def _layer(self, name: str, values: np.ndarray, is_20m: bool) -> tuple[np.ndarray, float]:
        """The asset's (T, h, w) array at its published resolution, and that resolution."""
        if not is_20m:
            return values, 10.0
        if blocks_constant(values, self.inside):
            return to_20m(values), 20.0
        self.notes.append(
            f"{name}: 2x2 blocks of the cube are not constant on the 20 m grid; published at 10 m."
        )
        return values, 10.0

    @staticmethod
    def _scl_from_valid(s2: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """A stand-in SCL for cubes without one: clear -> 4, other data -> 9, no data -> 0."""
        present = np.isfinite(s2).any(axis=1)
        return np.where(valid == 1, 4, np.where(present, 9, 0)).astype(np.uint8)

    def _s2_item(self, when: datetime, baseline: str, part: _Part) -> dict:
        """The item (without its asset hrefs and pixel statistics) of one acquisition part."""
        grid, template = self.grid, self.s2_template
        platform = "A"
        if when >= datetime(2017, 7, 1, tzinfo=UTC) and (when.toordinal() // 5) % 2:
            platform = "B"
        launch = (
            datetime(2015, 6, 23, tzinfo=UTC)
            if platform == "A"
            else datetime(2017, 3, 7, tzinfo=UTC)
        )
        orbit = int((when - launch).total_seconds() / 86400 * 14.3)
        rel_orbit = 1 + zlib.crc32(f"{self.site}{when.hour}{when.minute // 10}".encode()) % 143
        reprocessed = baseline == REPROCESSED_BASELINE and baseline_for(when) != baseline
        generated = (
            datetime(2023, 5, 1, tzinfo=UTC) + timedelta(minutes=when.toordinal() % 9973)
            if reprocessed
            else when + timedelta(hours=2, minutes=31, seconds=7)
        )
        n = baseline.replace(".", "")
        tail = f"R{rel_orbit:03d}_T{part.tile}_{_stamp(generated)}"
        product = f"S2{platform}_MSIL2A_{_stamp(when)}_N{n}_{tail}"
        item_id = f"S2{platform}_MSIL2A_{_stamp(when)}_{tail}"
        # the footprint is the cube's own pixels in this part, not the padding
        d0, d1 = max(part.col_start, grid.col0), min(part.col_stop, grid.col0 + grid.cube_width)
        geometry = _footprint(
            grid.epsg,
            grid.left + 10 * d0,
            grid.top - 10 * (grid.row0 + grid.cube_height),
            grid.left + 10 * d1,
            grid.top - 10 * grid.row0,
        )
        item = _from_template(template, item_id, self.stac_base)
        item.update({"collection": S2_COLLECTION, "geometry": geometry, "bbox": _bbox(geometry)})
        props = item["properties"]
        props.update(
            {
                "datetime": _rfc3339(when),
                "platform": f"Sentinel-2{platform}",
                "proj:epsg": grid.epsg,
                "s2:mgrs_tile": part.tile,
                "s2:processing_baseline": baseline,
                "s2:product_uri": f"{product}.SAFE",
                "s2:generation_time": _rfc3339(generated),
                "s2:datatake_id": f"GS2{platform}_{_stamp(when)}_{orbit:06d}_N{baseline}",
                "s2:granule_id": f"S2{platform}_OPER_MSI_L2A_TL_MSFT_{_stamp(generated)}_"
                f"A{orbit:06d}_T{part.tile}_N{baseline}",
                "s2:datastrip_id": f"S2{platform}_OPER_MSI_L2A_DS_MSFT_{_stamp(generated)}_"
                f"S{_stamp(when)}_N{baseline}",
                "sat:relative_orbit": rel_orbit,
                "sat:orbit_state": "descending",
            }
        )
        if "proj:code" in props:
            props["proj:code"] = grid.crs
        return item

    def _s2_assets(
        self, item: dict, i: int, part: _Part, layers: dict[str, tuple[np.ndarray, float]]
    ) -> None:
        """Queue the part's COGs and point the item's assets at them."""
        grid, c0, c1 = self.grid, part.col_start, part.col_stop
        props = item["properties"]
        when = datetime.strptime(props["datetime"], "%Y-%m-%dT%H:%M:%S.%fZ")
        tile = part.tile
        folder = (
            self.folder
            / "sentinel2-l2"
            / tile[:2]
            / tile[2]
            / tile[3:]
            / f"{when:%Y/%m/%d}"
            / props["s2:product_uri"]
            / "IMG_DATA"
        )
        for key, asset in item["assets"].items():
            if key in layers:
                values, res = layers[key]
                array = values[i][:, c0:c1] if res == 10 else values[i][:, c0 // 2 : c1 // 2]
                path = folder / f"R{res:.0f}m" / f"T{tile}_{_stamp(when)}_{key}_{res:.0f}m.tif"
                transform = grid.transform(res, c0)
                self.writes.add(path, np.ascontiguousarray(array), transform, 0)
                asset.update(
                    {"href": self.href(path), "gsd": res, **_proj(transform, *array.shape)}
                )
            else:  # kept for the structure; nothing behind it (404)
                name = asset["href"].rsplit("/", 1)[-1].split("?")[0]
                asset["href"] = self.href(folder / "not-published" / name)
                if "proj:shape" in asset:
                    gsd = float(asset.get("gsd") or 10.0)
                    shape = (math.ceil(grid.height * 10 / gsd), math.ceil((c1 - c0) * 10 / gsd))
                    asset.update(_proj(grid.transform(gsd, c0), *shape))

    # S1 -----------------------------------------------------------------------------------

    def s1_items(self) -> list[dict]:
        cube, grid = self.cube, self.grid
        if "s1" not in cube or cube.sizes.get("time_s1", 0) == 0:
            return []
        s1 = grid.pad(db_to_linear(cube["s1"].values), S1_NODATA)  # (T, 2, H, W)
        states = (
            cube["orbit_state"].values
            if "orbit_state" in cube.coords
            else [self.options.orbit_state] * cube.sizes["time_s1"]
        )
        return [
            self._s1_item(_utc(t), s1[i], str(states[i]))
            for i, t in enumerate(cube["time_s1"].values)
        ]

    def _s1_item(self, when: datetime, linear: np.ndarray, orbit_state: str) -> dict:
        grid, template = self.grid, self.s1_template
        platform = (
            "B"
            if (
                datetime(2016, 9, 1, tzinfo=UTC) <= when < datetime(2021, 12, 23, tzinfo=UTC)
                and (when.toordinal() // 6) % 2
            )
            else "A"
        )
        launch = (
            datetime(2014, 4, 3, tzinfo=UTC)
            if platform == "A"
            else datetime(2016, 4, 25, tzinfo=UTC)
        )
        orbit = int((when - launch).total_seconds() / 86400 * 175 / 12) + 1
        rel_orbit = (orbit - (73 if platform == "A" else 27)) % 175 + 1
        datatake = zlib.crc32(f"{platform}{orbit}".encode()) & 0xFFFFFF
        start, stop = when - timedelta(seconds=6.1), when + timedelta(seconds=6.1)
        grd_id = (
            f"S1{platform}_IW_GRDH_1SDV_{_stamp(start)}_{_stamp(stop)}_{orbit:06d}_{datatake:06X}"
        )
        item_id = f"{grd_id}_rtc"
        folder = (
            self.folder
            / "sentinel1-grd-rtc"
            / "GRD"
            / f"{when.year}/{when.month}/{when.day}"
            / "IW"
            / "DV"
            / f"{grd_id}_{zlib.crc32(grd_id.encode()) & 0xFFFF:04X}"
            / "measurement"
        )
        transform = grid.transform(10.0)
        geometry = _footprint(
            grid.epsg,
            grid.left + 10 * grid.col0,
            grid.top - 10 * (grid.row0 + grid.cube_height),
            grid.left + 10 * (grid.col0 + grid.cube_width),
            grid.top - 10 * grid.row0,
        )
        item = _from_template(template, item_id, self.stac_base)
        item.update({"collection": S1_COLLECTION, "geometry": geometry, "bbox": _bbox(geometry)})
        for p, key in enumerate(S1_ASSETS):
            path = folder / f"iw-{key}.rtc.tiff"
            self.writes.add(path, np.ascontiguousarray(linear[p]), transform, S1_NODATA)
            item["assets"][key]["href"] = self.href(path)
        props = item["properties"]
        props.update(
            {
                "datetime": _rfc3339(when),
                "start_datetime": start.isoformat(sep=" ", timespec="microseconds"),
                "end_datetime": stop.isoformat(sep=" ", timespec="microseconds"),
                "platform": f"SENTINEL-1{platform}",
                "proj:epsg": grid.epsg,
                "s1:shape": [grid.width, grid.height],
                "sat:orbit_state": orbit_state,
                "sat:absolute_orbit": orbit,
                "sat:relative_orbit": rel_orbit,
                "s1:datatake_id": str(datatake),
                "s1:product_timeliness": "Fast-24h",
                "sat:platform_international_designator": "2014-016A"
                if platform == "A"
                else "2016-025A",
                **_proj(transform, grid.height, grid.width, nine=True),
            }
        )
        if "proj:code" in props:
            props["proj:code"] = grid.crs
        return item

    def finish(self, items: dict[str, list[dict]]) -> None:
        """Write the COGs, then fill in S1 file sizes and checksums."""
        self.writes.run()
        for item in items.get(S1_COLLECTION, []):
            for key in S1_ASSETS:
                asset = item["assets"][key]
                path = self.folder / asset["href"][len(self.cog_base) + 1 :]
                data = path.read_bytes()
                asset["file:size"] = len(data)
                asset["file:checksum"] = hashlib.md5(data).hexdigest()
        summary = {
            "grid": self.grid.__dict__,
            "notes": self.notes,
            "items": {c: len(v) for c, v in items.items()},
        }
        (self.folder / "publication.json").write_text(json.dumps(summary, indent=1))


def publish_cube(
    cube: xr.Dataset,
    folder: Path,
    cog_base_url: str,
    stac_base_url: str,
    options: PublishOptions | None = None,
    *,
    stac_dir: Path | None = None,
) -> dict[str, list[dict]]:
    """Write PC-like COGs of ``cube`` under ``folder`` and return their STAC items.

    Args:
        cube: a real shared cube in a UTM CRS (see the module docstring).
        folder: where the COGs go (created); serve it with ``CogServer(folder)``.
        cog_base_url: the URL at which ``folder`` is served; asset hrefs start with it.
        stac_base_url: the STAC API root; item links (self, parent, collection, root) use it.
        options: dates, padding, split and reprocessed acquisitions (defaults: everything).
        stac_dir: the shared ``stac/`` folder with the PC templates (default from settings).

    Returns:
        ``{"sentinel-2-l2a": [item, ...], "sentinel-1-rtc": [item, ...]}``, items as JSON
        dicts in time order (S1 empty when the cube has none or ``include_s1`` is off).
        ``folder/publication.json`` records the grid and any asset published at 10 m.

    Raises:
        PublishError: the cube is not a 10 m UTM cube, or no date is selected.
    """
    options = options or PublishOptions()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    publisher = _Publisher(
        cube, folder, cog_base_url, stac_base_url, options, stac_dir or default_stac_dir()
    )
    items = {S2_COLLECTION: publisher.s2_items(), S1_COLLECTION: publisher.s1_items()}
    publisher.finish(items)
    return items


def dn_to_reflectance(dn: np.ndarray, baseline: str) -> np.ndarray:
    """Inverse of :func:`reflectance_to_dn` (0 -> NaN), for tests that check a read."""
    dn = np.asarray(dn, dtype=np.float64)
    refl = (dn - (BOA_OFFSET_DN if has_offset(baseline) else 0)) / 10000.0
    return np.where(dn == 0, np.nan, refl)
