"""The demo: one real crop parcel in West Flanders and its 2018 season, online or offline.

The demo field is the largest parcel of the shared ``be-flanders-a`` cube's ``crop_type`` layer
(connected pixels of one crop code, 4-connectivity; ties go to the lower code, then to the
parcel found first), polygonised along pixel edges and reprojected to EPSG:4326. Where the cube
file is absent the same outline comes from :data:`DEMO_OUTLINE_WKT` (a test keeps the two
equal), so the live demo works on any machine.

Where the data comes from (:func:`choose_source`):

* **live**: the STAC API answers (:func:`stac_reachable`), so the demo runs like any field
  (fetch through the disk cache);
* **offline**: the STAC API does not answer, or the user asked for it, and the demo cube file
  exists: the season is read from the cube, no network needed;
* neither: :class:`DemoUnavailableError` says how to get one or the other.

The cube path is ``FIELDFLOW_DEMO_CUBE`` if set, else ``<data_dir>/cubes/`` +
:data:`DEMO_CUBE_NAME` (``data_dir`` is ``FIELDFLOW_DATA_DIR``, default ``../shared/data``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import shapely
import xarray as xr
from pyproj import Transformer
from rasterio import features
from shapely.geometry import Polygon, shape

from core.config import Settings
from core.cube import NETCDF_LOCK
from core.errors import CubeError, FieldFlowError, InputError
from core.field import Field
from core.grid import grid_from_cube
from core.storage import signals_deferred

DEMO_CUBE_NAME = "be-flanders-a_2017-2018.nc"
DEMO_CUBE_ENV = "FIELDFLOW_DEMO_CUBE"
DEMO_START = dt.date(2018, 3, 1)
DEMO_END = dt.date(2018, 10, 31)
DEMO_NAME = "Demo parcel (West Flanders)"
DEMO_CRS = "EPSG:32631"
DEMO_OUTLINE_WKT = (
    "POLYGON ((501780 5629570, 501780 5629560, 501770 5629560, 501770 5629530, 501780 5629530, "
    "501780 5629500, 501790 5629500, 501790 5629470, 501780 5629470, 501780 5629460, "
    "501750 5629460, 501750 5629450, 501740 5629450, 501740 5629470, 501730 5629470, "
    "501730 5629460, 501710 5629460, 501710 5629450, 501690 5629450, 501690 5629440, "
    "501660 5629440, 501660 5629430, 501630 5629430, 501630 5629420, 501600 5629420, "
    "501600 5629410, 501580 5629410, 501580 5629380, 501550 5629380, 501550 5629370, "
    "501530 5629370, 501530 5629360, 501540 5629360, 501540 5629330, 501550 5629330, "
    "501550 5629320, 501570 5629320, 501570 5629330, 501600 5629330, 501600 5629340, "
    "501630 5629340, 501630 5629350, 501660 5629350, 501660 5629360, 501680 5629360, "
    "501680 5629340, 501690 5629340, 501690 5629310, 501700 5629310, 501700 5629280, "
    "501710 5629280, 501710 5629250, 501720 5629250, 501720 5629230, 501730 5629230, "
    "501730 5629240, 501750 5629240, 501750 5629250, 501770 5629250, 501770 5629260, "
    "501790 5629260, 501790 5629270, 501810 5629270, 501810 5629280, 501820 5629280, "
    "501820 5629290, 501840 5629290, 501840 5629300, 501860 5629300, 501860 5629310, "
    "501880 5629310, 501880 5629320, 501890 5629320, 501890 5629330, 501910 5629330, "
    "501910 5629340, 501920 5629340, 501920 5629350, 501930 5629350, 501930 5629360, "
    "501940 5629360, 501940 5629370, 501960 5629370, 501960 5629380, 501980 5629380, "
    "501980 5629390, 501990 5629390, 501990 5629400, 501980 5629400, 501980 5629410, "
    "501970 5629410, 501970 5629420, 501950 5629420, 501950 5629430, 501940 5629430, "
    "501940 5629440, 501930 5629440, 501930 5629450, 501920 5629450, 501920 5629460, "
    "501900 5629460, 501900 5629470, 501890 5629470, 501890 5629480, 501880 5629480, "
    "501880 5629490, 501870 5629490, 501870 5629500, 501860 5629500, 501860 5629490, "
    "501840 5629490, 501840 5629520, 501830 5629520, 501830 5629550, 501820 5629550, "
    "501820 5629560, 501810 5629560, 501810 5629570, 501780 5629570))"
)
"""The demo parcel in :data:`DEMO_CRS` (pixel edges, metres), as derived from the cube."""
PROBE_TIMEOUT_S = 3.0
"""How long :func:`stac_reachable` waits for the STAC API's landing page."""


class DemoUnavailableError(FieldFlowError):
    """Neither the STAC API nor the offline demo cube is available."""


@dataclass(frozen=True)
class DemoPreset:
    """The demo field, its season, and where its offline cube would be."""

    field: Field
    """The parcel outline in EPSG:4326."""
    start: dt.date
    """First day of the demo season."""
    end: dt.date
    """Last day of the demo season."""
    cube_path: Path
    """The offline cube (may not exist; see :attr:`cube_available`)."""

    @property
    def cube_available(self) -> bool:
        """True when the offline cube file exists."""
        return self.cube_path.is_file()


@dataclass(frozen=True)
class DemoSource:
    """Where the demo's data will come from, and a sentence saying so."""

    mode: str
    """``"live"`` (fetch from the STAC API) or ``"offline"`` (read :attr:`cube_path`)."""
    cube_path: Path | None
    """The cube to read when offline, else None."""
    message: str
    """One sentence for the user."""


def demo_cube_path(settings: Settings, environ: Mapping[str, str] | None = None) -> Path:
    """The offline demo cube: ``FIELDFLOW_DEMO_CUBE`` or ``<data_dir>/cubes/`` + name."""
    env = os.environ if environ is None else environ
    override = env.get(DEMO_CUBE_ENV)
    return Path(override) if override else settings.cubes_dir / DEMO_CUBE_NAME


def parcel_polygon(cube: xr.Dataset) -> Polygon:
    """The largest crop parcel of a cube, in the cube's CRS, along pixel edges.

    Args:
        cube: a cube (or a dataset with ``x``, ``y``, the ``crs``/``resolution_m`` attributes)
            holding ``crop_type`` (y, x), 0 = no crop.

    Raises:
        CubeError: the cube has no ``crop_type`` or no parcel.
    """
    if "crop_type" not in cube:
        raise CubeError("The demo cube has no 'crop_type' layer, so no parcel can be chosen.")
    codes = np.asarray(cube["crop_type"].values).astype(np.int32)
    grid = grid_from_cube(cube)
    found = [
        (shape(geometry), int(code))
        for geometry, code in features.shapes(
            codes, mask=codes != 0, transform=grid.transform, connectivity=4
        )
    ]
    if not found:
        raise CubeError("The demo cube's 'crop_type' layer holds no parcel.")
    # Largest area first; ties to the lower crop code, then to the first found (stable sort).
    polygon, _ = sorted(found, key=lambda item: (-round(item[0].area), item[1]))[0]
    return shapely.simplify(polygon, 0.0)


def to_lonlat(polygon: Polygon, crs: str) -> Polygon:
    """Reproject a polygon from ``crs`` to EPSG:4326 (x = longitude)."""
    transformer = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.transform(polygon, transformer.transform, interleaved=False)


def demo_field(cube_path: Path | None = None) -> Field:
    """The demo parcel as a :class:`~core.field.Field`.

    Derived from the cube's ``crop_type`` when ``cube_path`` exists, else from
    :data:`DEMO_OUTLINE_WKT` (the same outline).

    Raises:
        CubeError: ``cube_path`` is not readable NetCDF, holds no ``crop_type`` parcel (e.g.
            ``FIELDFLOW_DEMO_CUBE`` names another cube) or its grid is not a regular projected
            one; the message says which file and what to do.
    """
    if cube_path is not None and cube_path.is_file():
        fix = (
            f"The demo reads {DEMO_CUBE_NAME} of the shared data: point {DEMO_CUBE_ENV} at that "
            "file (or a copy of it), or unset it."
        )
        try:
            with signals_deferred(), NETCDF_LOCK, xr.open_dataset(cube_path) as ds:
                parcel = ds[["crop_type"]].load() if "crop_type" in ds else ds[[]]
        except (OSError, ValueError):  # not NetCDF, truncated
            raise CubeError(
                f"The demo cube {cube_path} is not a readable NetCDF cube. {fix}"
            ) from None
        try:
            polygon = parcel_polygon(parcel)
        except (CubeError, InputError) as exc:  # no crop_type or no parcel; a lon/lat grid
            raise CubeError(f"{cube_path}: {exc} {fix}") from None
        return Field(to_lonlat(polygon, str(parcel.attrs.get("crs", DEMO_CRS))), DEMO_NAME)
    return Field(to_lonlat(shapely.from_wkt(DEMO_OUTLINE_WKT), DEMO_CRS), DEMO_NAME)


def demo_preset(cube_path: Path) -> DemoPreset:
    """The demo field, season and offline cube (``cube_path``, see :func:`demo_cube_path`)."""
    return DemoPreset(
        field=demo_field(cube_path), start=DEMO_START, end=DEMO_END, cube_path=cube_path
    )


def stac_reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when ``url`` answers like a STAC API landing page within ``timeout_s``.

    One GET, no retries: this only decides whether the demo can go live.
    """
    try:
        response = requests.get(url, timeout=timeout_s, headers={"Accept": "application/json"})
        return response.status_code == 200 and "links" in response.json()
    except (requests.RequestException, ValueError):
        return False


def choose_source(
    preset: DemoPreset, *, stac_url: str, stac_available: bool, prefer_offline: bool
) -> DemoSource:
    """Decide where the demo's data comes from (see the module docstring).

    Raises:
        DemoUnavailableError: no STAC API and no offline cube.
    """
    cube = preset.cube_path
    if preset.cube_available and (prefer_offline or not stac_available):
        why = "as asked" if prefer_offline else f"the STAC API at {stac_url} does not answer"
        return DemoSource(
            "offline", cube, f"Demo data: the offline cube {cube.name} ({why}); no network used."
        )
    if stac_available:
        return DemoSource("live", None, f"Demo data: fetched live from {stac_url}.")
    raise DemoUnavailableError(
        f"The demo needs either the STAC API ({stac_url} does not answer: check the "
        f"connection or STAC_API_URL) or the offline demo cube, which is not at {cube} (set "
        "FIELDFLOW_DATA_DIR to the shared data folder, or FIELDFLOW_DEMO_CUBE to the cube file)."
    )
