"""A reconstruction's frame stack as one Cloud-Optimized GeoTIFF (COG).

**Layout: one band per (date, layer), date-major.** Each date contributes the layers of a
single-date download (:func:`core.export.frame_band_names`: the ten Sentinel-2 reflectances in
:data:`core.cube.S2_BANDS` order, then NDVI, then NDVI p10 and p90 when the reconstruction was
sampled), so band ``k`` (1-based) holds date ``(k - 1) // L`` and layer ``(k - 1) % L`` for
``L`` layers per date. Every band is named in its description (``"2019-05-03 B04"``) and tagged
``DATE``, ``NAME`` and ``OBSERVED_FRACTION`` (share of the field's pixels, or of the grid's
when no field is given, that are kept clear observations on that day: with the field it is the
NDVI CSV's ``clear_fraction``; where the writer knows the acquisition days, as ``batch`` does,
also ``ACQUIRED`` "yes" or "no", and a day with no acquisition has no ``OBSERVED_FRACTION``,
as the CSV's is empty); the file's tags list ``DATES``, ``LAYERS``,
``LAYERS_PER_DATE`` and ``OBSERVED_FRACTION_OF`` ("field" or "grid"), plus the method, site,
source and licence of the reconstruction. One file
per field keeps a batch folder small and opens as a time stack in QGIS, GDAL or rioxarray;
:func:`read_frame_stack` turns it back into the reconstruction's arrays.

**Values**: float32 reflectance (0-1) and NDVI (-1..1), NaN as no data, the grid's CRS and
transform unchanged (no resampling). DEFLATE with the floating-point predictor; overviews by
averaging when the grid is larger than one tile.

**Tiles.** GDAL's COG driver takes tiles of 128 to 512 pixels. Before GDAL 3.11 it writes
pixel-interleaved tiles only, so one tile holds every band of its pixels and reading one date
decompresses the whole tile; :func:`stack_blocksize` therefore keeps a tile within
:data:`MAX_TILE_MB` of uncompressed data where it can (never below 128 pixels: a season of
~90 dates x 11 layers is about 60 MB per 128-pixel tile). With GDAL 3.11 or later the bands
are written band-interleaved (``INTERLEAVE=BAND``) and a reader of one date reads only it.

The file is written through :func:`core.storage.atomic_output`: a reader sees the old file or
the complete new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr

from core.cube import S2_BANDS
from core.errors import CubeError, InputError, OutputError
from core.export import frame_band_names
from core.grid import Grid, grid_from_cube
from core.storage import FULL_DISK_MARGIN_BYTES, atomic_output

MAX_TILE_MB = 16.0
"""Largest uncompressed tile (all bands of ``blocksize`` x ``blocksize`` pixels)."""
MIN_BLOCKSIZE = 128
"""GDAL's COG driver refuses smaller tiles."""
MAX_BLOCKSIZE = 512
OVERVIEW_RESAMPLING = "AVERAGE"
_EXTRA_LAYERS = {"NDVI": "ndvi", "NDVI_p10": "ndvi_p10", "NDVI_p90": "ndvi_p90"}
"""Layer name -> reconstruction variable (time, y, x), for the layers after the S2 bands."""


def stack_blocksize(
    bands: int, size_px: int, *, band_interleaved: bool = False, max_tile_mb: float = MAX_TILE_MB
) -> int:
    """Tile side in pixels for ``bands`` float32 bands of an image ``size_px`` wide or high.

    No larger than the image needs (rounded up to 16), 128 to 512; pixel-interleaved, also the
    largest side whose tile of all bands stays within ``max_tile_mb`` where 128 allows it.
    """
    if bands < 1 or size_px < 1:
        raise InputError(f"A frame stack needs bands and pixels, not {bands} and {size_px}.")
    side = min(-(-size_px // 16) * 16, MAX_BLOCKSIZE)
    if not band_interleaved:
        fits = int(np.sqrt(max_tile_mb * 2**20 / (4.0 * bands)))
        side = min(side, fits - fits % 16)
    return int(max(MIN_BLOCKSIZE, side))


def band_interleave_supported() -> bool:
    """Whether the GDAL in use writes band-interleaved COGs (3.11 and later)."""
    from rasterio.env import GDALVersion

    return GDALVersion.runtime() >= GDALVersion(3, 11)


def stack_layer_names(result: xr.Dataset) -> list[str]:
    """The layers written per date for ``result`` (see the module docstring)."""
    return frame_band_names(result)


def write_frame_stack(
    result: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    grid: Grid | None = None,
    tags: dict[str, str] | None = None,
    blocksize: int | None = None,
    field_mask: np.ndarray | None = None,
    acquired_days: Collection[np.datetime64] | None = None,
) -> Path:
    """Write a reconstruction's frames as one COG (layout in the module docstring).

    Args:
        result: a reconstruction (:func:`core.reconstruct.reconstruct`): ``s2`` (T, 10, H, W),
            ``ndvi`` (T, H, W), optionally ``ndvi_p10``/``ndvi_p90`` and ``observed``.
        path: the ``.tif`` to write (atomically).
        grid: the grid of ``result``; derived from its coordinates and ``crs`` attribute by
            default.
        tags: extra file-level tags (e.g. the field's name).
        blocksize: tile side (a multiple of 16, 128 to 512); :func:`stack_blocksize` by
            default.
        field_mask: (H, W) bool, the field's pixels on the grid: ``OBSERVED_FRACTION`` is
            then the share of them kept clear, as the NDVI CSV's ``clear_fraction``; None:
            the share of the grid's pixels.
        acquired_days: the calendar days with a Sentinel-2 acquisition in the reconstructed
            cube: each band is then tagged ``ACQUIRED`` ("yes" or "no"), and a date with no
            acquisition has no ``OBSERVED_FRACTION`` (as the CSV's ``clear_fraction`` is
            empty there; it read 0.0000, as an acquisition all cloud does, review 22).

    Returns:
        The path written.

    Raises:
        InputError: ``result`` lacks ``s2``/``ndvi`` or holds no dates, or the grid differs.
    """
    for name in ("s2", "ndvi"):
        if name not in result.data_vars:
            raise InputError(f"Not a reconstruction: it has no '{name}' variable.")
    if result.sizes.get("time", 0) < 1:
        raise InputError("The reconstruction holds no dates; there is nothing to write.")
    grid = grid or grid_from_cube(result)
    if (result.sizes["y"], result.sizes["x"]) != grid.shape:
        raise InputError(
            f"The frames are {result.sizes['y']}x{result.sizes['x']} pixels but the grid is "
            f"{grid.height}x{grid.width}."
        )
    if blocksize is not None and not (
        MIN_BLOCKSIZE <= blocksize <= MAX_BLOCKSIZE and blocksize % 16 == 0
    ):
        raise InputError(
            f"The tile size must be a multiple of 16 from {MIN_BLOCKSIZE} to {MAX_BLOCKSIZE}, "
            f"not {blocksize}."
        )
    layers = stack_layer_names(result)
    dates = [str(d) for d in np.asarray(result["time"].values).astype("datetime64[D]")]
    count = len(dates) * len(layers)
    band_interleaved = band_interleave_supported()
    side = blocksize or stack_blocksize(
        count, max(grid.width, grid.height), band_interleaved=band_interleaved
    )
    observed = _observed_fractions(result, field_mask)
    acquired = (
        None if acquired_days is None else {str(np.datetime64(d, "D")) for d in acquired_days}
    )
    told: list[dict[str, str]] = []  # each date's band tags
    for ti, date in enumerate(dates):
        fraction = {"OBSERVED_FRACTION": f"{observed[ti]:.4f}"}
        if acquired is None:
            told.append(fraction)
        else:
            told.append({"ACQUIRED": "yes", **fraction} if date in acquired else {"ACQUIRED": "no"})

    meta = {
        "DATES": ",".join(dates),
        "LAYERS": ",".join(layers),
        "LAYERS_PER_DATE": str(len(layers)),
        "BAND_ORDER": "band k (1-based) = date (k-1) // LAYERS_PER_DATE, "
        "layer (k-1) % LAYERS_PER_DATE",
        "UNITS": "reflectance (0-1); NDVI (-1..1)",
        "OBSERVED_FRACTION_OF": "grid" if field_mask is None else "field",
    }
    for key in ("method", "samples", "site", "source", "license"):
        if key in result.attrs:
            meta[key.upper()] = str(result.attrs[key])
    meta.update(tags or {})

    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": "float32",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": float("nan"),
        "tiled": True,
        "blockxsize": side,
        "blockysize": side,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # An uncompressed tiled GeoTIFF in a scratch folder, copied into the COG layout, so the
    # frames are never held twice in memory.
    with tempfile.TemporaryDirectory(prefix="fieldflow-cog-") as scratch:
        staging = Path(scratch) / "stack.tif"
        # GDAL only logs a block it could not write (a full temporary folder): the COG copy
        # then read those blocks as nodata, and all-NaN frames were written as a success
        # (review 13). Such a failure is raised here.
        temporary = Path(scratch).parent  # the folder a full disk is told of
        with gdal_write_failures(temporary), rasterio.open(staging, "w", **profile) as dst:
            band = 0
            for ti, date in enumerate(dates):
                for name in layers:
                    band += 1
                    dst.write(_layer(result, name, ti), band)
                    dst.set_band_description(band, f"{date} {name}")
                    dst.update_tags(band, DATE=date, NAME=name, **told[ti])
            dst.update_tags(**meta)
        options = {
            "COMPRESS": "DEFLATE",
            "PREDICTOR": "YES",
            "BLOCKSIZE": side,
            "OVERVIEWS": "AUTO",
            "RESAMPLING": OVERVIEW_RESAMPLING,
            "BIGTIFF": "IF_SAFER",
        }
        if band_interleaved:
            options["INTERLEAVE"] = "BAND"
        with rasterio.open(staging) as src, atomic_output(target) as tmp:
            rasterio.shutil.copy(src, tmp, driver="COG", **options)
    return target


_LIBTIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
"""libtiff's ``TIFFErrorHandler``: ``(module, fmt, va_list)``; the va_list is passed as a
pointer on x86-64 and arm64 alike, and is not read here."""
_libtiff_quieted: list[object] = []
"""The handler given to libtiff, kept alive for as long as libtiff may call it."""


def _log_libtiff_error(module: bytes | None, fmt: bytes | None, _args: int | None) -> None:
    logging.getLogger(__name__).debug(
        "libtiff: %s: %s",
        (module or b"").decode(errors="replace"),
        (fmt or b"").decode(errors="replace"),
    )


def quiet_libtiff_stderr() -> bool:
    """Route the errors libtiff prints on its own to this module's log (DEBUG), once.

    GDAL reports a failed write twice: through its own error handler, which rasterio turns
    into an exception or a log line (what :func:`gdal_write_failures` reads), and through the
    libtiff that GDAL links, whose process-wide default handler prints ``_tiffWriteProc: No
    space left on device.`` on standard error, a line per block, beside the one clear line a
    full disk gets (review 13). The first report carries everything; the second is sent to
    the log. Best effort: where the libraries cannot be found (not Linux, GDAL built without a
    shared libtiff) nothing changes. Returns whether the handler is in place.
    """
    if _libtiff_quieted:
        return True
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    gdal = sorted({line.split()[-1] for line in maps.splitlines() if "/libgdal" in line})
    for path in gdal:
        try:
            setter = ctypes.CDLL(path).TIFFSetErrorHandler  # resolved in GDAL's own libtiff
        except (OSError, AttributeError):
            continue
        setter.restype = ctypes.c_void_p
        setter.argtypes = [_LIBTIFF_HANDLER]
        callback = _LIBTIFF_HANDLER(_log_libtiff_error)
        setter(callback)
        _libtiff_quieted.append(callback)
        return True
    return False


GDAL_ERROR_LOGGER = "rasterio._env"
"""Where rasterio logs the errors GDAL signals without failing the call ("GDAL signalled an
error: err_no=1, msg='TIFFAppendToStrip:Write error at scanline 0'")."""


class _Signalled(logging.Handler):
    """Keeps the GDAL errors signalled in the threads that are writing a file here."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.guard = threading.Lock()
        self.writing: dict[int, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        with self.guard:
            kept = self.writing.get(record.thread)
        text = record.getMessage()
        if kept is not None and text.startswith("GDAL signalled an error"):
            kept.append(text)


_SIGNALLED = _Signalled()


@contextlib.contextmanager
def gdal_write_failures(folder: Path) -> Iterator[None]:
    """Raise, once the block has ended, an error GDAL signalled in this thread while writing
    in ``folder`` but did not raise (a block it could not write is only logged, and the file
    then reads as nodata there).

    Raises:
        OutputError: naming the folder and its cause (the disk full, when it is).
    """
    quiet_libtiff_stderr()
    logger = logging.getLogger(GDAL_ERROR_LOGGER)
    thread = threading.get_ident()
    with _SIGNALLED.guard:
        if _SIGNALLED not in logger.handlers:
            logger.addHandler(_SIGNALLED)
            if logger.getEffectiveLevel() > logging.INFO:  # rasterio logs them at INFO
                logger.setLevel(logging.INFO)
        messages = _SIGNALLED.writing[thread] = []
    try:
        yield
    finally:
        with _SIGNALLED.guard:
            del _SIGNALLED.writing[thread]
    if messages:
        full = shutil.disk_usage(folder).free < FULL_DISK_MARGIN_BYTES
        cause = "no space left on device" if full else messages[0]
        raise OutputError(
            f"Could not write the frames' working copy in {folder} ({cause}); nothing was "
            "written. Free some space there, or set TMPDIR to a folder on a larger disk, and "
            "run again."
        )


def read_frame_stack(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a file of :func:`write_frame_stack` back as a reconstruction-like dataset.

    Returns:
        ``s2`` (time, band, y, x) and the extra layers (``ndvi``, ...) as (time, y, x), float32
        with NaN as no data, pixel-centre ``x``/``y`` and attributes ``crs``,
        ``resolution_m`` and the file's tags.

    Raises:
        CubeError: the file is missing or was not written by :func:`write_frame_stack`.
    """
    source = Path(path)
    if not source.is_file():
        raise CubeError(f"No frame stack at {source}.")
    with rasterio.open(source) as src:
        tags = src.tags()
        try:
            dates = tags["DATES"].split(",")
            layers = tags["LAYERS"].split(",")
        except KeyError:
            raise CubeError(
                f"{source} is not a FieldFlow frame stack (no DATES/LAYERS tags)."
            ) from None
        if src.count != len(dates) * len(layers):
            raise CubeError(
                f"{source} has {src.count} bands, not {len(dates)} dates x {len(layers)} layers."
            )
        data = src.read().reshape(len(dates), len(layers), src.height, src.width)
        transform, crs = src.transform, src.crs
        width, height = src.width, src.height
    x = transform.c + (np.arange(width) + 0.5) * transform.a
    y = transform.f + (np.arange(height) + 0.5) * transform.e
    s2_index = [layers.index(b) for b in S2_BANDS]
    data_vars: dict[str, tuple] = {"s2": (("time", "band", "y", "x"), data[:, s2_index])}
    for name, variable in _EXTRA_LAYERS.items():
        if name in layers:
            data_vars[variable] = (("time", "y", "x"), data[:, layers.index(name)])
    attrs = {**tags, "crs": crs.to_string(), "resolution_m": float(transform.a)}
    coords = {
        "time": np.array(dates, dtype="datetime64[ns]"),
        "band": list(S2_BANDS),
        "y": y,
        "x": x,
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _layer(result: xr.Dataset, name: str, time_index: int) -> np.ndarray:
    if name in S2_BANDS:
        values = result["s2"].isel(time=time_index).sel(band=name).values
    else:
        values = result[_EXTRA_LAYERS[name]].isel(time=time_index).values
    return np.asarray(values, dtype=np.float32)


def _observed_fractions(result: xr.Dataset, field_mask: np.ndarray | None) -> np.ndarray:
    """Share of the field's pixels (``field_mask``; None: the grid's) kept as clear
    observations, per date (0 without ``observed``)."""
    if "observed" not in result.data_vars:
        return np.zeros(result.sizes["time"])
    kept = np.asarray(result["observed"].values, dtype=bool)
    if field_mask is None:
        return kept.reshape(kept.shape[0], -1).mean(axis=1)
    mask = np.asarray(field_mask, dtype=bool)
    if mask.shape != kept.shape[1:]:
        raise ValueError(f"field mask {mask.shape} does not match the frames {kept.shape[1:]}")
    return kept[:, mask].sum(axis=1) / max(int(mask.sum()), 1)
