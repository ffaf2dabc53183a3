"""Fetching a field's Sentinel-2 (and Sentinel-1) time series from a STAC API into a cube.

Only the field's window is read: the field's :class:`~core.grid.Grid` becomes an odc-geo
``GeoBox`` and ``odc.stac.load`` reads the overlapping part of each COG, in parallel threads.

Choices worth knowing:

* **Resampling: nearest for every band.** The grid's pixel edges are multiples of 10 m, like
  Sentinel-2's own 10 m pixels, so 10 m bands are copied without resampling and each 10 m pixel
  lies inside exactly one 20 m pixel: nearest neighbour replicates 20 m bands (and SCL, a class
  map that must never be interpolated) 2x2, exactly as the shared real cubes were made.
  Bilinear would blur 20 m bands across their pixel edges and invent values a sensor never saw.
* **Harmonisation per item.** L2A products of processing baseline 04.00 and later carry a
  +1000 DN offset: reflectance = (DN - 1000) / 10000, else DN / 10000, decided by each item's
  ``s2:processing_baseline`` (reprocessed old scenes carry the offset too), never by date.
  Items of one solar day may mix baselines (tile overlaps, reprocessing), so odc-stac groups by
  *(solar day, has offset)*: pixels are fused in DN only among items of one baseline, then
  harmonised, then the groups of one day are fused as reflectance. Fusion is "first valid
  wins" per band (DN 0 is no data), in time order; at equal time the tile in the grid's own
  CRS first, then the newest processing (``s2:processing_baseline``, then
  ``s2:generation_time``: ESA's reprocessed products replace the old ones, which fill only
  pixels the new one lacks), then id.
* **Every S2 acquisition is kept**, cloudy ones too (``valid`` marks clear pixels); only frames
  with no data at all over the grid are dropped.
* **Sentinel-1** (``sentinel-1-rtc``, linear gamma0 float32, nodata -32768) is grouped by
  (solar day, orbit direction) and converted to dB; values <= 0 become NaN. Refusal (401/403),
  no scenes or unreadable S1 never fail the fetch: the result carries S2 alone and says why.
* **GDAL settings** for HTTP COG reads live in a ``rasterio.Env`` around each load (odc-stac
  hands the active environment to its reader threads), never set at import time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import planetary_computer
import pyproj
import pystac
import rasterio
import rasterio.errors
import requests
import xarray as xr
from shapely.geometry import mapping

from core.config import Settings
from core.cube import S2_BANDS, build_cube
from core.errors import AccessDeniedError, FieldError, InputError, NetworkError, NoScenesError
from core.field import hectares
from core.grid import Grid, field_mask, grid_for_field
from core.indices import NIR, NIR_NARROW, RED
from core.land import field_swapped_hint
from core.stac import (
    S1_COLLECTION,
    S2_COLLECTION,
    Signer,
    StacClient,
    item_datetime,
    open_client,
    read_signer,
    renew_tokens,
    search_scenes,
)
from core.timeline import parse_date, require_acquisitions_around

if TYPE_CHECKING:
    from odc.geo.geobox import GeoBox

    from core.field import Field

S2_ASSETS: tuple[str, ...] = (*S2_BANDS, "SCL")
"""Assets read from each ``sentinel-2-l2a`` item: the ten cube bands and the class map."""
S1_ASSETS: tuple[str, ...] = ("vv", "vh")
"""Assets read from each ``sentinel-1-rtc`` item, in cube polarization order (VV, VH)."""
OFFSET_BASELINE: tuple[int, int] = (4, 0)
"""First processing baseline whose DN carry :data:`BOA_ADD_OFFSET`."""
BOA_ADD_OFFSET = 1000
QUANTIFICATION = 10000.0
S1_NODATA = -32768.0
OFFSET_START = dt.datetime(2022, 1, 25)
"""Baseline 04.00 went live on this day; used only for items without a baseline property."""

ProgressCallback = Callable[[str, int, int], None]
"""``(stage, done, total)``: e.g. ``("loading 12 Sentinel-2 scenes", 40, 132)``."""

# odc-stac resamples in memory (MEM -> MEM rasterio.warp.reproject), which warns "Dataset has
# no geotransform" although both sides are georeferenced (odc-geo issue #131): spurious here.
warnings.filterwarnings(
    "ignore", category=rasterio.errors.NotGeoreferencedWarning, module=r"rasterio\.warp"
)


@dataclass(frozen=True)
class FetchResult:
    """A fetched cube and what happened on the way."""

    cube: xr.Dataset
    """The cube (see :mod:`core.cube`), on :attr:`grid`."""
    grid: Grid
    """The field's grid the cube was loaded onto."""
    scenes_found: dict[str, int]
    """Items the search found per collection, e.g. ``{"sentinel-2-l2a": 70}``."""
    frames_loaded: dict[str, int]
    """Frames in the cube after same-day merging: ``{"s2": 41, "s1": 30}``."""
    s1_status: str
    """``"loaded"``, ``"skipped"`` (not asked for), ``"none"`` (no scenes/data),
    ``"denied"`` (access refused) or ``"failed"`` (search or read failed)."""
    s1_message: str
    """One sentence for the user about Sentinel-1, e.g. why it is missing."""
    skipped_scenes: tuple[str, ...] = ()
    """Scenes left out because the server has no file for them (``"<item id> (HTTP 404)"``);
    a result with any is not cached (the server may have them next time)."""
    incomplete_scenes: tuple[str, ...] = ()
    """Sentinel-2 scenes whose item lacks an asset FieldFlow needs (``"<item id> (no SCL)"``,
    ``"(no red)"``, ``"(no near infrared)"``), read as they are (see :func:`incomplete_scene`)."""
    from_cache: bool = False
    """True when the cube was served from the disk cache (see :mod:`core.cache`)."""
    elapsed_s: float = 0.0
    """Wall time of the fetch (0 for a cache hit)."""

    @property
    def skipped_note(self) -> str:
        """A sentence naming the scenes left out and one naming the scenes read incomplete, or
        ``""``."""
        said = []
        if self.skipped_scenes:
            said.append(
                f"Left out {len(self.skipped_scenes)} scene(s) the server has no file for: "
                f"{', '.join(self.skipped_scenes)} (the catalogue links to files it does not "
                "serve; asked again later, they are tried again)."
            )
        if self.incomplete_scenes:
            said.append(
                f"{len(self.incomplete_scenes)} scene(s) lack a layer in the catalogue: "
                f"{', '.join(self.incomplete_scenes)}. Without SCL a scene's pixels are taken "
                "as cloudy; without red or near infrared it gives no NDVI of its own."
            )
        return " ".join(said)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (everything except the cube)."""
        return {
            "grid": {
                "crs": self.grid.crs,
                "resolution_m": self.grid.resolution_m,
                "x0": self.grid.x0,
                "y0": self.grid.y0,
                "width": self.grid.width,
                "height": self.grid.height,
            },
            "scenes_found": dict(self.scenes_found),
            "frames_loaded": dict(self.frames_loaded),
            "s1_status": self.s1_status,
            "s1_message": self.s1_message,
            "incomplete_scenes": list(self.incomplete_scenes),
            "elapsed_s": round(float(self.elapsed_s), 3),
        }


# --- pure pieces -------------------------------------------------------------------------------


def parse_baseline(text: object) -> tuple[int, int] | None:
    """``"04.00"`` -> ``(4, 0)``; ``None`` for a missing or unreadable value."""
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(text)) if text is not None else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def processing_recency(item: pystac.Item) -> tuple[int, int, float]:
    """How recent an S2 L2A item's processing is, higher newer: ``(baseline major, minor,
    generation time as POSIX seconds)``, from ``s2:processing_baseline`` and
    ``s2:generation_time`` (else an L2A id's last ``YYYYMMDDTHHMMSS``); ``-1`` / ``0.0`` for
    what the item does not say.

    PC holds some acquisitions twice, as first processed and as ESA reprocessed them (e.g.
    02.12 and 05.00, same time and tile); the old pixels won by their id's order (review 11).
    """
    props = item.properties
    major, minor = parse_baseline(props.get("s2:processing_baseline")) or (-1, -1)
    made = 0.0
    text = props.get("s2:generation_time")
    with contextlib.suppress(TypeError, ValueError):
        stamp = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        made = (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()
    if not made and (match := re.fullmatch(r"S2\w_MSIL2A_.*_(\d{8}T\d{6})", item.id)):
        stamp = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
        made = stamp.timestamp()
    return major, minor, made


def _newest_first(recency: tuple[int, int, float]) -> tuple[int, int, float]:
    return -recency[0], -recency[1], -recency[2]


def has_boa_offset(properties: dict[str, Any], when: dt.datetime | None = None) -> bool:
    """Whether an S2 L2A item's DN carry the +1000 offset, from ``s2:processing_baseline``.

    Decided by the property alone when present: a scene of 2019 reprocessed with baseline
    05.00 has the offset. Only an item without the property falls back to its date.
    """
    baseline = parse_baseline(properties.get("s2:processing_baseline"))
    if baseline is not None:
        return baseline >= OFFSET_BASELINE
    return when is not None and when >= OFFSET_START


def harmonise_s2(dn: np.ndarray, *, offset: bool) -> np.ndarray:
    """L2A digital numbers to surface reflectance.

    Args:
        dn: uint16 DN, any shape; 0 means no data.
        offset: the product carries the +1000 offset (baseline >= 04.00).

    Returns:
        float32 reflectance of the same shape, NaN where DN is 0. Not clipped: DN below the
        offset give small negative reflectance, as delivered.
    """
    values = np.asarray(dn)
    out = values.astype(np.float32)
    if offset:
        out -= BOA_ADD_OFFSET
    out /= QUANTIFICATION
    out[values == 0] = np.nan
    return out


def linear_to_db(linear: np.ndarray, nodata: float = S1_NODATA) -> np.ndarray:
    """Linear backscatter (gamma0/sigma0) to decibels; nodata, <= 0 and non-finite -> NaN.

    Args:
        linear: float array, any shape.
        nodata: the source's no-data value.

    Returns:
        float32 array of the same shape: ``10 * log10(linear)``.
    """
    values = np.asarray(linear, dtype=np.float64)
    usable = np.isfinite(values) & (values > 0) & (values != nodata)
    out = np.full(values.shape, np.nan, dtype=np.float32)
    out[usable] = (10.0 * np.log10(values[usable])).astype(np.float32)
    return out


def solar_day(when: dt.datetime, lon: float) -> dt.date:
    """Local solar calendar day of a UTC time at a longitude (odc-stac's whole-hour rule)."""
    return (when + dt.timedelta(hours=int(lon / 15.0))).date()


def fuse_first_valid(
    stack: np.ndarray, keys: Sequence[Hashable], *, missing: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, list[Hashable], list[int]]:
    """Merge frames that share a key: per element, the first frame with data wins.

    Args:
        stack: frames along axis 0, shape (N, ...).
        keys: one key per frame (N,); frames with equal keys are merged in stack order.
        missing: marks elements without data, e.g. ``np.isnan``.

    Returns:
        ``(merged, unique_keys, first_index)``: merged frames (K, ...) in order of each key's
        first appearance, those keys, and for each the index of its first frame.
    """
    order: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        order.setdefault(key, []).append(index)
    merged = np.empty((len(order), *stack.shape[1:]), dtype=stack.dtype)
    for out_index, members in enumerate(order.values()):
        frame = stack[members[0]].copy()
        for other in members[1:]:
            holes = missing(frame)
            frame[holes] = stack[other][holes]
        merged[out_index] = frame
    return merged, list(order), [members[0] for members in order.values()]


def clear_fraction(cube: xr.Dataset, mask: np.ndarray | None = None) -> np.ndarray:
    """Fraction of clear pixels per S2 frame, over ``mask`` (H, W) or the whole grid.

    Returns:
        float64 (T2,).
    """
    valid = np.asarray(cube["valid"].values, dtype=bool)
    if mask is None:
        return valid.reshape(valid.shape[0], -1).mean(axis=1)
    if not mask.any():
        return np.zeros(valid.shape[0])
    return valid[:, mask].mean(axis=1)


def parse_period(start: str | dt.date, end: str | dt.date) -> tuple[dt.date, dt.date]:
    """Validate a period given as ``YYYY-MM-DD`` strings or dates; return it as dates.

    Raises:
        InputError: a date cannot be read, or the period ends before it starts.
    """
    first = start if isinstance(start, dt.date) else _to_date(start)
    last = end if isinstance(end, dt.date) else _to_date(end)
    if isinstance(first, dt.datetime):
        first = first.date()
    if isinstance(last, dt.datetime):
        last = last.date()
    if last < first:
        raise InputError(
            f"The period ends ({last}) before it starts ({first}); give --start before --end."
        )
    return first, last


def _to_date(text: str) -> dt.date:
    return dt.date.fromisoformat(str(np.datetime64(parse_date(text), "D")))


# --- loading -----------------------------------------------------------------------------------


def gdal_options(settings: Settings) -> dict[str, str]:
    """GDAL configuration for reading COGs over HTTP with retries and time-outs."""
    timeout = max(1, math.ceil(settings.timeout_s))
    return {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MAX_RETRY": str(max(0, settings.retries)),
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "GDAL_HTTP_TIMEOUT": str(timeout),
        "GDAL_HTTP_CONNECTTIMEOUT": str(min(timeout, 10)),
        "GDAL_HTTP_MULTIRANGE": "YES",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    }


def _geobox(grid: Grid) -> GeoBox:
    from odc.geo.geobox import GeoBox

    return GeoBox(grid.shape, grid.transform, grid.crs)


def _grid_lon(grid: Grid) -> float:
    left, bottom, right, top = grid.bounds
    to_lonlat = pyproj.Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    lon, _ = to_lonlat.transform((left + right) / 2, (bottom + top) / 2)
    return float(lon)


def _odc_progress(
    progress: ProgressCallback | None,
    stage: str,
    items_before: int,
    items_here: int,
    items_total: int,
) -> Callable[[Any], Iterator[Any]] | None:
    """Adapt odc-stac's ``progress=`` (wraps its task iterable) to a ``(stage, done, total)``
    callback counting items, across several partial loads."""
    if progress is None:
        return None

    def wrap(work: Any) -> Iterator[Any]:
        tasks = max(1, len(work))
        progress(stage, items_before, items_total)

        def counted() -> Iterator[Any]:
            for done, task in enumerate(work, start=1):
                progress(stage, items_before + (done * items_here) // tasks, items_total)
                yield task

        return counted()

    return wrap


_HTTP_CODE = re.compile(r"HTTP response code:\s*(\d{3})")


SENTINEL2_FIRST_DAY = dt.date(2015, 6, 23)
"""Launch of Sentinel-2A: no L2A scene is older."""


def _catalogue_name(url: str) -> str:
    """How a file's ``source`` names the STAC API: Planetary Computer only when it is."""
    return "Planetary Computer STAC" if "planetarycomputer" in url.lower() else "STAC API"


COLLECTION_WORDS = {S2_COLLECTION: "Sentinel-2", S1_COLLECTION: "Sentinel-1"}
"""Collections as a user's messages name them."""


def _pixel_dates(n: float) -> str:
    return f"{n / 1e6:,.1f} million" if n >= 1e6 else f"{n:,.0f}"


def _no_scenes_advice(
    first: dt.date, last: dt.date, max_cloud_cover: float | None, field: Field | None = None
) -> str:
    """What to change when a search found nothing, fitted to the request: a field in the sea
    that swapped coordinates would put on land is told so first."""
    swapped = field_swapped_hint(field.centroid) if field is not None else None
    if swapped is not None:
        return swapped
    if last < SENTINEL2_FIRST_DAY:
        return f"Sentinel-2 images begin on {SENTINEL2_FIRST_DAY}: choose a later period."
    if first > dt.date.today():
        return "The period lies after today: there are no images of it yet."
    limited = max_cloud_cover is not None and max_cloud_cover < 100
    return (
        f"Try a wider period{' or a higher cloud limit' if limited else ''}; if the field "
        "should have images, check that its outline is where you meant (GeoJSON coordinates "
        "are longitude, latitude)."
    )


def clear_gdal_http_cache() -> bool:
    """Clear GDAL's per-process memory of ``/vsicurl/`` URLs (``VSICurlClearCache``).

    GDAL remembers which URLs failed and answers later reads of them from that memory without
    asking the server: after one refused or failed read, every later fetch of those scenes in
    the process (the app's, for every user; a Dask worker's) failed the same way until a
    restart. rasterio does not expose the call, so it is made on every libgdal the process
    has loaded (pyogrio's wheel brings a second one; clearing only the first one found missed
    rasterio's once the app had read an upload). Returns whether any call was made.
    """
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libgdal" in line})
    except OSError:  # not Linux
        return False
    cleared = False
    for path in paths:
        try:
            ctypes.CDLL(path).VSICurlClearCache()
            cleared = True
        except (OSError, AttributeError):  # a GDAL without the call
            continue
    return cleared


def _odc_load(items: list[pystac.Item], **kwargs: Any) -> xr.Dataset:
    """``odc.stac.load``, with odc-geo's assertion on a file read without georeferencing (its
    header cut short in transfer: review 13 saw it in 2 fetches of 22 with a third of the
    connections cut) raised as the read error it is, so that it is retried like the others."""
    import odc.stac

    try:
        return odc.stac.load(items, **kwargs)
    except AssertionError as exc:
        raise rasterio.errors.RasterioIOError(
            "a scene's file was read without its georeferencing (a transfer cut short?)"
        ) from exc


def _status_of(exc: Exception) -> int | None:
    """The HTTP status a GDAL read error or a signer's request error carries, if any."""
    response = getattr(exc, "response", None)
    match = _HTTP_CODE.search(str(exc))
    return getattr(response, "status_code", None) or (int(match.group(1)) if match else None)


_GENERIC_READ_ERROR = re.compile(r"(Read failed\.\s*)?See previous exception for details\.?", re.I)
"""rasterio's outer words on a failed read, which point at an exception the user never sees."""


def error_detail(exc: BaseException, limit: int = 300) -> str:
    """What a read error says, for a message: the first meaningful words of its chain of causes
    (GDAL's, naming the file) and the last (the root cause, e.g. "got 3333 bytes, expected
    7247"), without rasterio's "See previous exception for details" and without a final
    period. The outer error alone said only that (review 11)."""
    said: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = _GENERIC_READ_ERROR.sub(" ", " ".join(str(current).split())).strip()
        if text and text not in said:
            said.append(text)
        current = current.__cause__ or current.__context__
    kept = said[:1] + said[-1:] if len(said) > 1 and said[-1] not in said[0] else said[:1]
    return "; ".join(text.rstrip(". ") for text in kept)[:limit] or type(exc).__name__


def _read_error(
    exc: Exception,
    what: str,
    *,
    skipped: Sequence[str] | None = None,
    scene: str | None = None,
) -> NetworkError:
    """A GDAL read error, or a signer's token request error, as a :mod:`core.errors` error;
    ``scene``: the id of the item whose file failed, where known."""
    status = _status_of(exc)
    if status in (401, 403):
        return AccessDeniedError(
            f"Access to the {what} imagery was refused (HTTP {status}). If the catalogue needs "
            "a key, set PC_SDK_SUBSCRIPTION_KEY."
        )
    detail = error_detail(exc)
    if status in _GONE_CODES:
        many = (
            f" {len(skipped)} scene(s) were already left out for the same reason "
            f"({', '.join(skipped)})."
            if skipped
            else ""
        )
        return NetworkError(
            f"Could not read the {what} imagery: the server has no file for a scene ({detail})."
            f"{many} The catalogue links to files it does not serve; try again later, or a "
            "shorter period that avoids those dates."
        )
    where = f" (scene {scene})" if scene else ""
    return NetworkError(
        f"Could not read the {what} imagery after retries{where}: {detail}. Check your "
        "connection, or try again later."
    )


MAX_SKIPPED_SCENES = 3
"""Most scenes a fetch leaves out as unreadable (a broken asset link) before it gives up: more
than a few says the catalogue or the connection is at fault, not a scene."""
_GONE_CODES = frozenset({404, 410})
"""HTTP codes for which a scene is left out instead of the fetch failing: the file is not there."""


@contextlib.contextmanager
def _read_failures() -> Iterator[list[str]]:
    """The URLs odc-stac says it failed to read while in the block (its log records; they
    are kept off the console, where they came before FieldFlow's own one line)."""
    import logging

    failed: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.args and isinstance(record.args, tuple):
                failed.append(str(record.args[0]))

    logger = logging.getLogger("odc.loader._rio")
    handler = Collect(level=logging.ERROR)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield failed
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _url_path(url: str) -> str:
    """A URL without its query (a signed URL's token) and GDAL's ``/vsicurl/`` prefix."""
    return url.removeprefix("/vsicurl/").split("?", 1)[0]


def _culprit(
    items: Sequence[pystac.Item], members: Sequence[int], failed: Sequence[str]
) -> int | None:
    """The member whose asset is among the ``failed`` URLs, if one is."""
    gone = {_url_path(url) for url in failed}
    for index in members:
        if any(_url_path(asset.href) in gone for asset in items[index].assets.values()):
            return index
    return None


def item_crs(item: pystac.Item) -> str | None:
    """The CRS an item's rasters are in, as ``"EPSG:n"``: its ``proj:code`` or ``proj:epsg``
    (the item's, else its first asset's that has one); None where it says neither."""
    for fields in (item.properties, *(asset.extra_fields for asset in item.assets.values())):
        code = fields.get("proj:code")
        if isinstance(code, str) and code:
            return code.upper()
        epsg = fields.get("proj:epsg")
        if isinstance(epsg, int) and not isinstance(epsg, bool):
            return f"EPSG:{epsg}"
    return None


def read_order(
    items: Sequence[pystac.Item], members: Sequence[int], keys: Sequence[Hashable], crs: str
) -> list[int]:
    """``members`` in the order their pixels are fused within a key (first valid wins): by
    time, then the items already in the grid's ``crs`` first, then the newest processing
    (:func:`processing_recency`), then by id.

    Two MGRS tiles of one datatake share its time. Near a UTM zone's edge the field's grid is
    in one zone and the tile of the zone next to it covers the field too (the easternmost
    tiles reach some 100 km into the next zone); by time and id alone the lower zone's tile
    won, and its pixels, resampled a second time onto the grid, took the place of the grid's
    own tile's (review 11: 28 % of the values changed, the 20 m bands no longer replicated)."""
    want = crs.upper()
    return sorted(
        members,
        key=lambda i: (
            keys[i],
            item_datetime(items[i]),
            item_crs(items[i]) != want,
            _newest_first(processing_recency(items[i])),
            items[i].id,
        ),
    )


def only_assets(item: pystac.Item, names: Sequence[str]) -> pystac.Item:
    """A copy of ``item`` with only the assets ``names``: odc-stac places an item by the grids
    of all its assets, so an asset FieldFlow never reads (``visual``, ``AOT``) whose projection
    metadata is wrong made it miss the field and drop the scene without a word (review 11)."""
    out = item.clone()
    out.assets = {name: asset for name, asset in out.assets.items() if name in names}
    return out


def _load_partition(
    items: Sequence[pystac.Item],
    members: list[int],
    available: tuple[str, ...],
    grid: Grid,
    *,
    keys: Sequence[tuple[Any, ...]],
    dtype: str,
    nodata: float,
    settings: Settings,
    signer: Signer | None,
    threads: int,
    progress: Callable[[Any], Iterator[Any]] | None,
    what: str,
    failed: list[str],
    skipped: list[str] | None,
) -> tuple[xr.Dataset | None, list[int]]:
    """One odc-stac load of the ``members`` sharing the assets ``available``, with the
    retries and skips of :func:`_load`; returns the dataset (None when every member was
    skipped) and the members it holds."""

    members = read_order(items, members, keys, grid.crs)
    attempt = 0
    renewed = False  # the tokens asked anew after a refusal
    while members:
        part_keys = [keys[i] for i in members]
        failed.clear()
        if signer is not None:
            renew_tokens()  # the load signs every href now, and may take minutes
        try:
            ds = _odc_load(
                [only_assets(items[i], available) for i in members],
                bands=list(available),
                geobox=_geobox(grid),
                groupby=lambda _item, _parsed, index, part_keys=part_keys: part_keys[index],
                preserve_original_order=True,  # read_order's, within each key
                dtype=dtype,
                nodata=nodata,
                resampling="nearest",
                patch_url=read_signer(signer),
                pool=max(1, threads),
                progress=progress if attempt == 0 else None,
                fail_on_error=True,
            )
        except (rasterio.errors.RasterioError, requests.RequestException) as exc:
            clear_gdal_http_cache()  # so that the next try asks the server again
            status = _status_of(exc)
            culprit = _culprit(items, members, failed)
            if status in _GONE_CODES and culprit is not None and skipped is not None:
                if len(skipped) >= MAX_SKIPPED_SCENES:
                    raise _read_error(exc, what, skipped=skipped) from exc
                skipped.append(f"{items[culprit].id} (HTTP {status})")
                members.remove(culprit)
                continue
            if status in (401, 403) and signer is not None and not renewed:
                # An expired token is refused like a missing key: ask for new tokens once.
                renew_tokens(math.inf)
                renewed = True
                continue
            if status in (401, 403) or status in _GONE_CODES or attempt >= settings.retries:
                scene = None if culprit is None else items[culprit].id
                raise _read_error(exc, what, skipped=skipped, scene=scene) from exc
            attempt += 1
            time.sleep(min(0.5 * 2**attempt, 8.0))
            continue
        except ValueError as exc:  # odc-geo on an item whose footprint and grid disagree
            detail = " ".join(str(exc).split())[:160]
            raise NetworkError(
                f"Could not read the {what} imagery: the catalogue describes a scene's grid in "
                f"a way that does not hold together ({detail}). Its items' projection metadata "
                "(proj:epsg, proj:bbox, proj:transform) disagree; check STAC_API_URL, or report "
                "it to the catalogue."
            ) from exc
        return ds, members
    return None, members


@dataclass(frozen=True)
class _Frame:
    """One odc-stac output plane: the fused items of one group key."""

    key: tuple[Any, ...]
    time: dt.datetime
    bands: dict[str, np.ndarray]
    recency: tuple[int, int, float] = (-1, -1, 0.0)
    """The newest :func:`processing_recency` among its items."""


def _load(
    items: Sequence[pystac.Item],
    grid: Grid,
    *,
    bands: Sequence[str],
    keys: Sequence[tuple[Any, ...]],
    dtype: str,
    nodata: float,
    settings: Settings,
    signer: Signer | None,
    threads: int,
    progress: ProgressCallback | None,
    stage: str,
    what: str,
    skipped: list[str] | None = None,
) -> list[_Frame]:
    """odc-stac load of ``items`` onto ``grid``, fusing items of equal key (first valid wins).

    A read that fails for a passing reason (a dropped connection, a time-out, a 5xx that
    GDAL's own retries did not get past) is tried again, up to ``settings.retries`` times with
    a growing pause. A scene whose file the server refuses for good (404, 410: catalogues
    hold items with broken asset links) is left out and named in ``skipped`` (when given),
    up to :data:`MAX_SKIPPED_SCENES` of them; without ``skipped``, or past that, the read fails.

    odc-stac takes the band list from the first item, so items are loaded in partitions of
    equal available assets (e.g. single-polarisation S1 scenes apart); a band an item lacks
    is filled with ``nodata``. Items with none of ``bands`` are skipped.

    Returns:
        Frames (each band (H, W)) sorted by earliest item time, then newest processing (an
        acquisition reprocessed with another baseline is a frame of its own), then key.
    """
    partitions: dict[tuple[str, ...], list[int]] = {}
    for index, item in enumerate(items):
        available = tuple(band for band in bands if band in item.assets)
        if available:
            partitions.setdefault(available, []).append(index)
    total = sum(len(members) for members in partitions.values())
    frames: list[_Frame] = []
    done = 0
    with rasterio.Env(**gdal_options(settings)), _read_failures() as failed:
        for available, members in partitions.items():
            asked = len(members)
            ds, members = _load_partition(
                items,
                members,
                available,
                grid,
                keys=keys,
                dtype=dtype,
                nodata=nodata,
                settings=settings,
                signer=signer,
                threads=threads,
                progress=_odc_progress(progress, stage, done, asked, total),
                what=what,
                failed=failed,
                skipped=skipped,
            )
            done += asked  # skipped scenes count as done for the progress
            if ds is None:  # every scene of the partition skipped
                continue
            part_keys = [keys[i] for i in members]
            unique = sorted(set(part_keys))
            if ds.sizes["time"] != len(unique):
                raise RuntimeError(
                    f"odc-stac made {ds.sizes['time']} frames for {len(unique)} groups."
                )
            for plane, key in enumerate(unique):
                own = [i for i, k in zip(members, part_keys, strict=True) if k == key]
                first = min(item_datetime(items[i]) for i in own)
                data = {
                    band: (
                        np.asarray(ds[band].values[plane])
                        if band in available
                        else np.full(grid.shape, nodata, dtype=dtype)
                    )
                    for band in bands
                }
                recency = max(processing_recency(items[i]) for i in own)
                frames.append(_Frame(key=key, time=first, bands=data, recency=recency))
    return sorted(frames, key=lambda f: (f.time, _newest_first(f.recency), f.key))


def load_s2(
    items: Sequence[pystac.Item],
    grid: Grid,
    *,
    settings: Settings,
    signer: Signer | None = None,
    threads: int = 8,
    progress: ProgressCallback | None = None,
    skipped: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read S2 L2A items onto a grid, harmonised and merged per solar day.

    Returns:
        ``(times (T,), s2 (T, 10, H, W) float32 reflectance, scl (T, H, W) uint8)``; times
        are each day's earliest item time (datetime64[ns], UTC). Frames without any data over
        the grid are dropped.

    Scenes whose files the server does not have are left out and named in ``skipped``, when
    given (see :func:`_load`).

    Raises:
        NetworkError / AccessDeniedError: a COG cannot be read.
    """
    lon = _grid_lon(grid)
    keys = [
        (solar_day(item_datetime(item), lon), has_boa_offset(item.properties, item_datetime(item)))
        for item in items
    ]
    frames = _load(
        items,
        grid,
        bands=S2_ASSETS,
        keys=keys,
        dtype="uint16",
        nodata=0,
        settings=settings,
        signer=signer,
        threads=threads,
        progress=progress,
        stage=f"loading {len(items)} Sentinel-2 scenes",
        what="Sentinel-2",
        skipped=skipped,
    )
    if not frames:
        return (
            np.array([], "datetime64[ns]"),
            np.empty((0, len(S2_BANDS), *grid.shape), np.float32),
            np.empty((0, *grid.shape), np.uint8),
        )
    # Harmonise each (day, baseline) frame, then fuse a day's frames in _load's order.
    reflectance = np.stack(
        [
            harmonise_s2(np.stack([frame.bands[band] for band in S2_BANDS]), offset=frame.key[1])
            for frame in frames
        ]
    )
    scl = np.stack([frame.bands["SCL"] for frame in frames]).astype(np.uint8)
    days = [frame.key[0] for frame in frames]
    s2, _, first = fuse_first_valid(reflectance, days, missing=np.isnan)
    scl, _, _ = fuse_first_valid(scl, days, missing=lambda a: a == 0)
    times = np.array([np.datetime64(frames[i].time, "ns") for i in first], "datetime64[ns]")
    keep = np.isfinite(s2).any(axis=(1, 2, 3)) | (scl > 0).any(axis=(1, 2))
    return times[keep], s2[keep], scl[keep]


def load_s1(
    items: Sequence[pystac.Item],
    grid: Grid,
    *,
    settings: Settings,
    signer: Signer | None = None,
    threads: int = 8,
    progress: ProgressCallback | None = None,
    skipped: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read S1 RTC items onto a grid in dB, merged per (solar day, orbit direction).

    Returns:
        ``(times (T,), s1 (T, 2, H, W) float32 dB VV/VH, orbit_state (T,) str)``; times are
        each group's earliest item time. Frames without any data over the grid are dropped.

    Raises:
        NetworkError / AccessDeniedError: a COG cannot be read.
    """
    lon = _grid_lon(grid)
    keys = [
        (
            solar_day(item_datetime(item), lon),
            str(item.properties.get("sat:orbit_state", "unknown")),
        )
        for item in items
    ]
    frames = _load(
        items,
        grid,
        bands=S1_ASSETS,
        keys=keys,
        dtype="float32",
        nodata=S1_NODATA,
        settings=settings,
        signer=signer,
        threads=threads,
        progress=progress,
        stage=f"loading {len(items)} Sentinel-1 scenes",
        what="Sentinel-1",
        skipped=skipped,
    )
    if not frames:
        return (
            np.array([], "datetime64[ns]"),
            np.empty((0, len(S1_ASSETS), *grid.shape), np.float32),
            np.array([], str),
        )
    decibels = np.stack(
        [np.stack([linear_to_db(frame.bands[band]) for band in S1_ASSETS]) for frame in frames]
    )
    s1, groups, first = fuse_first_valid(
        decibels, [frame.key for frame in frames], missing=np.isnan
    )
    times = np.array([np.datetime64(frames[i].time, "ns") for i in first], "datetime64[ns]")
    orbit = np.array([key[1] for key in groups], dtype=str)
    keep = np.isfinite(s1).any(axis=(1, 2, 3))
    return times[keep], s1[keep], orbit[keep]


# --- the fetch ---------------------------------------------------------------------------------


def _license(years: Sequence[int], with_s1: bool) -> str:
    span = f"{min(years)}" if min(years) == max(years) else f"{min(years)}-{max(years)}"
    text = f"Contains modified Copernicus Sentinel data {span}"
    if with_s1:
        text += "; Sentinel-1 RTC from Microsoft Planetary Computer (CC BY 4.0)"
    return text


def _search(
    client: StacClient,
    collection: str,
    geometry: Any,
    start: dt.date,
    end: dt.date,
    max_cloud_cover: float | None,
    progress: ProgressCallback | None,
) -> list[pystac.Item]:
    stage = f"searching {COLLECTION_WORDS.get(collection, collection)}"
    if progress:
        progress(stage, 0, 1)
    items = search_scenes(client, collection, geometry, start, end, max_cloud_cover=max_cloud_cover)
    if progress:
        progress(stage, 1, 1)
    return items


PERIOD_MARGIN_DAYS = 30
"""Days fetched on either side of the period asked for: the period's first and last days are
then reconstructed from data on both sides, not held flat from the last acquisition inside
(review 6: a June 1-15 curve read 0.36 on June 15 where the season's read 0.58, the clear
acquisition of June 23 0.73). Frames, the curve and field figures stay within the period."""


def searched_period(first: dt.date, last: dt.date, margin_days: int) -> tuple[dt.date, dt.date]:
    """The days searched for a period: ``margin_days`` on either side, never past today."""
    margin = dt.timedelta(days=max(int(margin_days), 0))
    return first - margin, max(min(last + margin, dt.date.today()), last)


BYTES_PER_PIXEL_DATE = 380
"""A Run's peak memory per pixel-date of its cube, measured (README, "Benchmarks": 10.5 GB for
486 x 486 px over 118 days); used only to say what a refused request would have needed."""


def check_request_size(
    grid: Grid,
    s2_items: Sequence[pystac.Item],
    first: dt.date,
    last: dt.date,
    most: float,
    margin_days: int = 0,
) -> None:
    """Refuse, before anything is loaded, a request whose cube would hold more than ``most``
    pixel-dates (the grid's pixels times the S2 items' distinct days, found from ``first``
    to ``last``, the period and ``margin_days`` on either side).

    Raises:
        InputError: saying how big the request is and what would fit.
    """
    days = {item.datetime.date() for item in s2_items if item.datetime is not None}
    pixels = grid.width * grid.height
    if not days or pixels * len(days) <= most:
        return
    span = max((last - first).days + 1, 1)
    fitting = int(span * most / (pixels * len(days))) - 2 * max(margin_days, 0)
    need = pixels * len(days) * BYTES_PER_PIXEL_DATE / 1e9
    shorter = (
        f"Choose a shorter period (about {fitting} days fit for this field) or a smaller field"
        if fitting >= 2
        else "Not even a short period of this field fits: choose a smaller field"
    )
    raise InputError(
        f"This request is too large to run: {grid.height} x {grid.width} px over "
        f"{len(days)} Sentinel-2 acquisition days is {_pixel_dates(pixels * len(days))} "
        f"pixel-dates, more than the {_pixel_dates(most)} allowed (a Run would need about "
        f"{need:.2g} GB of memory). {shorter}, or raise FIELDFLOW_MAX_PIXEL_DATES on a larger "
        "machine."
    )


def fetch_cube(
    field: Field,
    start: str | dt.date,
    end: str | dt.date,
    *,
    settings: Settings,
    client: StacClient | None = None,
    signer: Signer | None = planetary_computer.sign_inplace,
    progress: ProgressCallback | None = None,
    include_s1: bool = True,
    max_cloud_cover: float | None = None,
    grid: Grid | None = None,
    threads: int = 8,
    margin_days: int = PERIOD_MARGIN_DAYS,
) -> FetchResult:
    """Search and load a field's S2 (and S1) time series onto its grid, over the period and
    ``margin_days`` on either side (:data:`PERIOD_MARGIN_DAYS`).

    Args:
        field: the field (EPSG:4326 outline, name, GeoJSON).
        start, end: first and last day, ``YYYY-MM-DD`` or dates.
        settings: STAC URL, retries, time-outs, area limit.
        client: an opened client; opened from ``settings`` with ``signer`` when ``None``.
        signer: signs asset hrefs (items in place, or href strings); PC's by default.
        progress: called as ``(stage, done, total)`` while searching and loading.
        include_s1: also fetch Sentinel-1 RTC.
        max_cloud_cover: keep only S2 scenes with at most this cloud cover (percent).
        grid: the grid to load onto; :func:`core.grid.grid_for_field` by default.
        threads: parallel COG reads.
        margin_days: days loaded on either side of the period (never past today), so that
            its ends are reconstructed from data on both sides; the cube's ``start_date`` and
            ``end_date`` are the period's, ``margin_days`` the margin's.

    Returns:
        A :class:`FetchResult` whose cube holds ``s2`` (T2, 10, H, W), ``valid``, ``scl`` and,
        when available, ``s1`` (T1, 2, H, W) with ``orbit_state``.

    Raises:
        InputError: bad dates; FieldError: field too large, or covering no pixel centre.
        NoScenesError: no S2 scene (with data) for the field and period.
        NetworkError / AccessDeniedError: the STAC API or S2 imagery cannot be reached.
    """
    started = time.monotonic()
    first, last = parse_period(start, end)
    area_ha = getattr(field, "area_ha", None)
    if area_ha is not None and area_ha > settings.max_area_ha:
        raise FieldError(
            f"The field covers {hectares(area_ha)} ha, more than the "
            f"{hectares(settings.max_area_ha)} ha "
            "limit (FIELDFLOW_MAX_AREA_HA); draw a smaller field."
        )
    grid = grid or grid_for_field(field)
    if not field_mask(field, grid).any():  # before any request: nothing could be measured
        name = str(getattr(field, "name", "") or "field")
        raise FieldError(
            f"The field '{name}' covers no pixel centre of its {grid.resolution_m:g} m grid "
            "(a sliver thinner than a pixel); outline a larger field."
        )
    client = client or open_client(settings, signer=signer)
    geometry = field.geometry
    cloud_text = "" if max_cloud_cover is None else f" with at most {max_cloud_cover:g}% clouds"

    before, after = searched_period(first, last, margin_days)
    s2_items = _search(client, S2_COLLECTION, geometry, before, after, max_cloud_cover, progress)
    if not s2_items:
        raise NoScenesError(
            f"No Sentinel-2 scenes{cloud_text} cover the field between {first} and {last}. "
            + _no_scenes_advice(first, last, max_cloud_cover, field)
        )
    searched = f"of the field (searched from {before} to {after})"
    require_acquisitions_around(
        [item.datetime.date() for item in s2_items if item.datetime is not None],
        np.datetime64(first),
        np.datetime64(last),
        searched,
    )  # before any read: a period past the imagery's end was fetched, then refused
    check_request_size(grid, s2_items, before, after, settings.max_pixel_dates, margin_days)
    scenes = {S2_COLLECTION: len(s2_items)}
    skipped: list[str] = []
    times, s2, scl = load_s2(
        s2_items,
        grid,
        settings=settings,
        signer=signer,
        threads=threads,
        progress=progress,
        skipped=skipped,
    )
    if times.size == 0:
        raise NoScenesError(
            f"{len(s2_items)} Sentinel-2 scenes were found between {before} and {after}, but "
            "none has data over the field. Try a wider period."
        )
    require_acquisitions_around(
        times.astype("datetime64[D]"), np.datetime64(first), np.datetime64(last), searched
    )  # those with data over the field

    s1_times = s1 = orbit = None
    if not include_s1:
        s1_status, s1_message = "skipped", "Sentinel-1 not requested."
    else:
        try:
            s1_items = _search(client, S1_COLLECTION, geometry, before, after, None, progress)
            scenes[S1_COLLECTION] = len(s1_items)
            if s1_items:
                s1_times, s1, orbit = load_s1(
                    s1_items,
                    grid,
                    settings=settings,
                    signer=signer,
                    threads=threads,
                    progress=progress,
                    skipped=skipped,
                )
        except AccessDeniedError as exc:
            s1_status = "denied"
            s1_message = (
                f"Sentinel-1 unavailable (access refused): continuing with Sentinel-2 only. {exc}"
            )
        except NetworkError as exc:
            s1_status = "failed"
            s1_message = f"Sentinel-1 unavailable ({exc}): continuing with Sentinel-2 only."
        else:
            if s1_times is not None and s1_times.size:
                s1_status = "loaded"
                s1_message = f"Sentinel-1: {s1_times.size} frames."
            else:
                s1_status, s1_times, s1, orbit = "none", None, None, None
                s1_message = (
                    "Sentinel-1 unavailable (no scenes with data for this field and "
                    "period): continuing with Sentinel-2 only."
                )

    years = sorted({int(str(t)[:4]) for t in times})
    attrs: dict[str, Any] = {
        "crs": grid.crs,
        "resolution_m": float(grid.resolution_m),
        "site": str(getattr(field, "name", "") or "field"),
        "source": (
            f"{_catalogue_name(client.url)} {client.url}: {S2_COLLECTION}"
            + (f" and {S1_COLLECTION}" if s1 is not None else "")
            + "; 20 m bands and SCL resampled to 10 m by nearest neighbour (pixel replication)"
        ),
        "license": _license(years, s1 is not None),
        "field_geojson": _geojson_text(field),
        "start_date": first.isoformat(),
        "end_date": last.isoformat(),
        "margin_days": int(max(margin_days, 0)),
        "s1_status": s1_status,
    }
    if max_cloud_cover is not None:
        attrs["max_cloud_cover"] = float(max_cloud_cover)
    cube = build_cube(
        s2, times, grid.y, grid.x, attrs, scl=scl, s1=s1, time_s1=s1_times, orbit_state=orbit
    )
    frames = {"s2": int(times.size), "s1": int(0 if s1_times is None else s1_times.size)}
    return FetchResult(
        cube=cube,
        grid=grid,
        scenes_found=scenes,
        frames_loaded=frames,
        s1_status=s1_status,
        s1_message=s1_message,
        skipped_scenes=tuple(skipped),
        incomplete_scenes=tuple(
            said for item in s2_items if (said := incomplete_scene(item)) is not None
        ),
        elapsed_s=time.monotonic() - started,
    )


def incomplete_scene(item: pystac.Item) -> str | None:
    """``"<id> (no SCL)"`` and the like for a Sentinel-2 item that lacks an asset FieldFlow
    needs, else None. Read as it is, such a scene was all cloudy (no SCL) or "clear" without
    an NDVI (no red or near infrared), and nothing said so (review 11); PC's items have them
    all, other catalogues' may not."""
    lacking = [
        what
        for what, names in (
            ("SCL", ("SCL",)),
            ("red", (S2_BANDS[RED],)),
            ("near infrared", (S2_BANDS[NIR], S2_BANDS[NIR_NARROW])),  # NDVI's, core.indices
        )
        if not any(name in item.assets for name in names)
    ]
    return f"{item.id} (no {', no '.join(lacking)})" if lacking else None


def _geojson_text(field: Any) -> str:
    to_geojson = getattr(field, "to_geojson", None)
    if callable(to_geojson):
        text = to_geojson()
        return text if isinstance(text, str) else json.dumps(text)
    return json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(field.geometry)})
