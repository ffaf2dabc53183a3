"""The field's NDVI curve: one row per day, reconstructed and observed, ready for a CSV.

:func:`ndvi_curve` reconstructs the cube at the requested days (through
:func:`core.reconstruct.reconstruct`, any method) and reduces each frame to field means;
:func:`curve_csv` / :func:`write_curve_csv` format it. The CLI (``python -m core ndvi``) and
the app's download button use these same functions.

Columns of the curve (:data:`CURVE_COLUMNS`):

* ``date``: the query day.
* ``ndvi``: mean reconstructed NDVI over the field's pixels (clear observed pixels are kept as
  observed on acquisition days, per the reconstruction contract).
* ``ndvi_p10``, ``ndvi_p90``: the band of the field-mean NDVI (:func:`field_ndvi_band`):
  the field means of the per-pixel NDVI bands (the samples' 10th/90th percentiles moved onto
  the estimate, :func:`core.reconstruct.samples_band_on`), brought toward
  ``ndvi`` by the factor the model fitted on the field's own hidden frames where it did (the
  band fitted on the field), a factor that grows with the day's distance to clear data
  (:func:`band_days`, :func:`band_scale`) where it fitted one per distance; NaN (an empty CSV
  cell) unless ``samples > 1``.
* ``observed_ndvi``: mean NDVI of the clear field pixels acquired that day (every clear pixel
  of every acquisition that day counts once); NaN on days without an acquisition, and on days
  with less than :data:`OBSERVED_MIN_CLEAR_FRACTION` of the field clear: the "clear" pixels of
  a mostly cloudy scene read low, from the clouds' edges and haze the scene mask misses
  (``benchmarks/partly_clear_bias.txt``, 36 acquisitions of the shared cubes: under a quarter
  clear, a median 0.11-0.25 below the same pixels on the nearest clear day within 10 days; a
  quarter to half clear, 0.02-0.05 below; half clear or more, +0.007), and a spreadsheet
  plotting the column drew dips that were not there. It is the clear part's mean, where
  ``ndvi`` and its band are the whole field's (the clear part and the reconstructed rest), so
  on a partly clear day it can lie outside ``ndvi_p10``..``ndvi_p90``.
* ``clear_fraction``: fraction of field pixels clear in some acquisition of that day; NaN on
  days without an acquisition.
* ``source``: ``"observed"`` when at least :data:`OBSERVED_MIN_CLEAR_FRACTION` of the field was
  seen clear that day (and gave an NDVI), else ``"reconstructed"``.
* ``days_to_clear``: how far that day's value is from real data: the median over the field's
  pixels of the days from that day to the pixel's nearest clear observation, in whole days
  (0 where the pixel was seen clear that day); empty when most of the field is never seen
  clear. The model's errors grow with it (README, "The uncertainty band").
* ``band``: what ``ndvi_p10``..``ndvi_p90`` is (review 24: the file did not say):
  ``"fitted"``, the band fitted on the field's own hidden frames (the app's); ``"unfitted"``,
  the field mean of the pixels' bands as they are, the band of a field whose pixels all err
  together (a field's mean usually errs less: its pixels' errors partly cancel; where the
  fit ran it was mostly narrower); empty where there is no band.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from core.cube import S2_BANDS, bands_present, ndvi_band_problem, validate_cube
from core.errors import InputError
from core.indices import ndvi
from core.model.blend import distance_bucket, nearest_clear_days
from core.progress import portion
from core.reconstruct import (
    FIELD_NDVI_SCALE_ATTR,
    FIELD_NDVI_SCALE_BY_DISTANCE_ATTR,
    FIELD_NDVI_SCALE_DAYS_ATTR,
    PIXELWISE_METHODS,
    ReconstructOptions,
    Reconstructor,
    clear_pixels,
    imaged_pixels,
    pinned,
    reconstruct,
    require_clear_pixels,
    screened,
)
from core.storage import atomic_output
from core.timeline import calendar_day, regular_dates, to_days

CURVE_COLUMNS: tuple[str, ...] = (
    "date",
    "ndvi",
    "ndvi_p10",
    "ndvi_p90",
    "observed_ndvi",
    "clear_fraction",
    "source",
    "days_to_clear",
    "band",
)
OBSERVED_MIN_CLEAR_FRACTION = 0.5
"""A day counts as "observed" when at least this fraction of the field was seen clear."""
CHUNK_BYTES = 3 * 2**30
"""Rough working-memory budget of one chunk of reconstructed dates. It decides the number of
reconstruction calls only on large fields (from about 300 px; smaller ones reach
:data:`CHUNK_MOST_DATES` first), and there each call's fixed work (every tile's context
tokens, input features and the smoother over the whole field) dominates: a 486 px field's
176-day curve took 22 calls of 8 dates and 1,417 s with a budget of 1 GiB (2 cores; see the
README's large-field figures)."""
CHUNK_MOST_DATES = 40
"""Most dates per reconstruction call, whatever the memory allows. On hu-alfold (128 px, K = 8,
the app's model settings; 2 cores) a daily curve of 146 days took 50.5 / 43.1 / 45.8 / 53.6 s
with 146 / 73 / 37 / 16 dates per call: one call holding them all is slower (its samples alone
are 0.8 GB), and below some 30 dates the model's per-call work (the acquisitions' tokens, the
blend's smoother) starts to add up. About 40 also gives a Run's progress bar steps to show."""

ChunkHandler = Callable[[np.ndarray, xr.Dataset], None]
"""``(dates, reconstruction)`` of one chunk of the curve's dates, as it is reconstructed."""
FLOAT_FORMAT = "%.4f"


FIT_ATTR_PREFIXES = ("model_", "blend_")
"""Attributes of a reconstruction that record what a method fitted on the field (the curve keeps
them in its ``attrs["fits"]``, e.g. for :func:`core.season.fit_notes`)."""


FIELD_WINDOW_MARGIN_PX = 2
"""Pixels kept around a field's bounding box when a larger cube is cut to it
(:func:`field_window`): the 20 m margin of the grid a fetch makes for a field
(:func:`core.grid.grid_for_field`), so that a field's curve from a cube of a larger area is
made as the app's Run makes it from the field's own fetch."""


def field_window(
    cube: xr.Dataset, mask: np.ndarray, margin_px: int = FIELD_WINDOW_MARGIN_PX
) -> tuple[xr.Dataset, np.ndarray]:
    """``cube`` and ``mask`` (bool (H, W), the field's pixels) cut to the field's bounding box
    and ``margin_px`` around it; both as given where that is the whole cube, or where the
    window holds no clear pixel (the model then borrows from the clear pixels further away).

    A field's per-field fits and figures (the field blend, the band, its accuracy) are made on
    the pixels reconstructed: on a cube of a larger area they came from the whole cube, and
    every field of a file had the same "measured on this field" figures (review 14)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return cube, mask
    height, width = mask.shape
    r0, r1 = max(int(rows[0]) - margin_px, 0), min(int(rows[-1]) + margin_px + 1, height)
    c0, c1 = max(int(cols[0]) - margin_px, 0), min(int(cols[-1]) + margin_px + 1, width)
    if (r0, r1, c0, c1) == (0, height, 0, width):
        return cube, mask
    window = cube.isel(y=slice(r0, r1), x=slice(c0, c1))
    if not window["valid"].values.any():
        return cube, mask
    return window, mask[r0:r1, c0:c1]


def ndvi_curve(
    cube: xr.Dataset,
    start: str | np.datetime64,
    end: str | np.datetime64,
    *,
    every_days: int = 1,
    method: str = "linear",
    options: ReconstructOptions | None = None,
    field_mask: np.ndarray | None = None,
    reconstructor: Reconstructor = reconstruct,
    on_chunk: ChunkHandler | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """The field's NDVI curve from ``start`` to ``end`` (clipped to the cube's S2 period).

    Dates are reconstructed in chunks sized to :data:`CHUNK_BYTES` (at most
    :data:`CHUNK_MOST_DATES`), each reduced to field means at once, so a long daily curve of a
    large cube never holds all frames in memory.

    Args:
        cube: a cube (see :mod:`core.cube`) with red (B04) and a NIR band (B08 or B8A).
        start, end: the period, calendar days (``YYYY-MM-DD`` or datetime64), inclusive.
        every_days: spacing of the query days, counted from ``start``.
        method: a reconstruction method name (see :func:`core.reconstruct.available_methods`).
        options: reconstruction options (samples, seed, ...).
        field_mask: bool (H, W), the field's pixels; by default every pixel that holds data.
        reconstructor: runs the reconstructions (default in-process; see core.distributed).
        on_chunk: also given each chunk's dates (datetime64[ns]) and full reconstruction, e.g.
            to draw or keep the frames of some of those days from the same reconstruction
            (then a frame and the curve agree on that day, and nothing is reconstructed twice).
        progress: called as ``(dates done, dates in all)`` after each chunk, and within one
            as a method that reports parts of its call (:func:`core.progress.part`: the
            model's tiles) gets through them.

    Returns:
        DataFrame with :data:`CURVE_COLUMNS`, one row per query day; ``date`` is datetime64.
        ``attrs`` holds ``field_pixels``, ``field_clear_observations`` (clear pixel-dates of
        the field in the whole cube), ``method``, ``samples`` and ``screened`` (what the
        screens took out, in words; empty when none ran).

    Raises:
        InputError: no NDVI bands, a period outside the cube, an unusable field mask, no
            clear pixel in the cube, or (a pixel-by-pixel method) none in the field.
    """
    cube = validate_cube(cube)
    # one model for every chunk (a checkpoint replaced meanwhile stops the curve instead)
    options = pinned(options or ReconstructOptions(), method)
    # once for all chunks (marked, so they skip it) and the observed NDVI column
    cube, screening = screened(cube, options)
    present = bands_present(cube)
    if not present.any():
        raise InputError(
            "The cube holds no Sentinel-2 reflectance at all (every acquisition is nodata over "
            "this area), so there is no NDVI to reconstruct; check that the field lies inside "
            "the scenes' footprint, or choose another period."
        )
    problem = ndvi_band_problem(present)
    if problem:
        raise InputError(problem)
    dates = _dates_in_cube(cube, start, end, every_days)
    mask = _checked_mask(cube, field_mask)
    require_clear_pixels(cube)
    field_clear = int(clear_pixels(cube, mask).sum())
    if field_clear == 0 and method in PIXELWISE_METHODS:
        raise InputError(
            f"Not one pixel of the field is clear in any of the cube's "
            f"{cube.sizes['time_s2']} Sentinel-2 acquisitions, and '{method}' fills each pixel "
            "from its own clear observations, so it has nothing to go on. Choose a longer "
            "period, or the model, which borrows from the clear pixels around the field."
        )
    observed_ndvi, clear_fraction = _observed(cube, dates, mask)
    # per day, how far from clear data: the CSV's column, and what picks the band's factor
    days_to_clear, away = _field_distances(cube, dates, mask)

    mean, p10, p90 = (np.full(dates.size, np.nan) for _ in range(3))
    fits: dict[str, object] = {}
    for chunk in curve_chunks(cube, dates.size, options.samples):
        # A method that reports parts of its call (core.progress.part: the model's tiles)
        # moves the progress within the chunk; a large field's chunk takes a minute or more.
        with portion(_within(progress, chunk, dates.size)):
            result = reconstructor(cube, dates[chunk], method, options)
        mean[chunk], p10[chunk], p90[chunk] = field_ndvi_band(result, mask, away[chunk])
        fits = {k: v for k, v in result.attrs.items() if k.startswith(FIT_ATTR_PREFIXES)}
        if on_chunk is not None:
            on_chunk(dates[chunk], result)
        if progress is not None:
            progress(chunk.stop, dates.size)

    seen = (clear_fraction >= OBSERVED_MIN_CLEAR_FRACTION) & np.isfinite(observed_ndvi)
    observed_ndvi = np.where(seen, observed_ndvi, np.nan)  # too little seen to trust
    curve = pd.DataFrame(
        {
            "date": dates,
            "ndvi": mean,
            "ndvi_p10": p10,
            "ndvi_p90": p90,
            "observed_ndvi": observed_ndvi,
            "clear_fraction": clear_fraction,
            "source": np.where(seen, "observed", "reconstructed"),
            "days_to_clear": days_to_clear,
            "band": np.where(np.isfinite(p10) & np.isfinite(p90), band_kind(fits), ""),
        },
        columns=list(CURVE_COLUMNS),
    )
    curve.attrs.update(
        field_pixels=int(mask.sum()),
        field_clear_observations=field_clear,
        field_seen_share=seen_share(cube, mask),
        nir_band="B08" if present[S2_BANDS.index("B08")] else "B8A",  # core.indices.ndvi's
        method=method,
        samples=options.samples,
        fits=fits,
        screened="" if screening is None else screening.summary(),
    )
    if FIELD_NDVI_SCALE_ATTR in fits:
        curve.attrs["ndvi_band_scale"] = float(fits[FIELD_NDVI_SCALE_ATTR])
    if FIELD_NDVI_SCALE_BY_DISTANCE_ATTR in fits:
        for key, attr in (
            ("ndvi_band_scale_by_distance", FIELD_NDVI_SCALE_BY_DISTANCE_ATTR),
            ("ndvi_band_scale_days", FIELD_NDVI_SCALE_DAYS_ATTR),
        ):
            curve.attrs[key] = [float(v) for v in np.atleast_1d(fits.get(attr, []))]
    return curve


def band_kind(fits: Mapping[str, object]) -> str:
    """The curve's ``band`` column where a band exists: ``"fitted"`` where the reconstruction's
    ``fits`` (its attributes) hold a curve band fitted on the field, else ``"unfitted"``."""
    fitted = FIELD_NDVI_SCALE_ATTR in fits or FIELD_NDVI_SCALE_BY_DISTANCE_ATTR in fits
    return "fitted" if fitted else "unfitted"


PARTLY_SEEN_NOTED = 0.99
"""Share of the field seen clear below which a pixel-by-pixel method's curve is said to be the
mean of the pixels seen only."""


def seen_share(cube: xr.Dataset, mask: np.ndarray) -> float:
    """Share of the ``mask`` pixels clear (with data) in at least one acquisition of ``cube``:
    the pixels a pixel-by-pixel method (linear, Whittaker) gives a value; the others stay
    empty, and the field's mean is over the first only."""
    return float(imaged_pixels(cube, clear=True)[mask].mean()) if mask.any() else 0.0


def partly_seen_note(curve: pd.DataFrame) -> str | None:
    """For a pixel-by-pixel method's curve over a field partly never seen clear (under
    :data:`PARTLY_SEEN_NOTED`), a sentence saying its values are the mean of the pixels seen
    (review 6: "ok" from 12 of 169 pixels without a word); None otherwise."""
    share = curve.attrs.get("field_seen_share")
    if curve.attrs.get("method") not in PIXELWISE_METHODS or share is None:
        return None
    if share >= PARTLY_SEEN_NOTED or share <= 0:
        return None
    pixels = int(curve.attrs.get("field_pixels", 0))
    seen = round(share * pixels)
    return (
        f"only {seen} of the field's {pixels} pixels ({share:.0%}) are seen clear in any "
        f"acquisition, and {curve.attrs['method']} fills each pixel from its own clear "
        "observations: the curve is the mean of those pixels alone. The model fills the rest "
        "from their neighbours and Sentinel-1; a longer period sees more of the field."
    )


def field_ndvi_band(
    result: xr.Dataset, mask: np.ndarray, days: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Field-mean NDVI of each frame of a reconstruction and its p10-p90 band, (Q,) each.

    The band's edges are the field means of the per-pixel NDVI p10 and p90: the band of a field
    whose pixels all err together. Where the method fitted how far its field means really err
    (``FIELD_NDVI_SCALE_ATTR``, the model with the band fitted on the field), the distances
    from the mean to the edges are scaled by that factor; by the factor of each frame's
    distance to clear data where it fitted one per distance too
    (``FIELD_NDVI_SCALE_BY_DISTANCE_ATTR``) and ``days`` (Q,) gives the frames' distances
    (:func:`band_days`). NaN band without samples."""
    mean = _field_mean(result["ndvi"].values, mask)
    if "ndvi_p10" not in result:
        nan = np.full(mean.shape, np.nan)
        return mean, nan, nan.copy()
    p10 = _field_mean(result["ndvi_p10"].values, mask)
    p90 = _field_mean(result["ndvi_p90"].values, mask)
    scale = band_scale(result.attrs, days)
    if scale is not None:
        p10, p90 = narrow_band(mean, p10, p90, scale)
    return mean, p10, p90


def band_scale(attrs: Mapping[str, object], days: np.ndarray | None) -> np.ndarray | None:
    """The factor on each frame's curve band that a reconstruction's ``attrs`` fitted (see
    :func:`field_ndvi_band`): per frame by ``days`` (the frames' :func:`band_days`) where it
    fitted factors per distance and ``days`` is given, else the field's one factor; None where
    it fitted none. Per distance, a day's factor is read off the line through the factors at
    the days they stand for (``FIELD_NDVI_SCALE_DAYS_ATTR``; the nearest's before the first
    and past the last), so the band widens smoothly away from clear data instead of in steps;
    without those days, its bucket's factor."""
    by_distance = attrs.get(FIELD_NDVI_SCALE_BY_DISTANCE_ATTR)
    if by_distance is not None and days is not None:
        factors = np.asarray(by_distance, np.float64).ravel()
        days = np.asarray(days, np.float64)
        where = attrs.get(FIELD_NDVI_SCALE_DAYS_ATTR)
        if where is None:
            return factors[distance_bucket(days)]
        far = np.where(np.isnan(days), np.inf, days)  # never seen clear: the farthest
        return np.interp(far, np.asarray(where, np.float64).ravel(), factors)
    scale = attrs.get(FIELD_NDVI_SCALE_ATTR)
    return None if scale is None else np.asarray(float(scale))


def band_days(cube: xr.Dataset, dates: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per query day, how far its reconstructed field pixels lie from data: the median over the
    field's pixels not seen clear that day of their days to the nearest clear observation (as
    the model's per-field fit measures its hidden frames); 0 where the whole field was seen
    clear, inf where no pixel of it ever is. Picks the curve band's factor
    (:func:`band_scale`)."""
    return _field_distances(cube, dates, mask)[1]


def reconstructed_days(away: np.ndarray) -> np.ndarray:
    """(Q,) per row of ``away`` (Q, P), the days from each of P pixels to its nearest clear
    observation: the median over the pixels not seen clear that day (away > 0); 0 where none
    (see :func:`band_days`)."""
    out = np.zeros(away.shape[0])
    for i, row in enumerate(away):
        reconstructed = row[row > 0]
        out[i] = np.median(reconstructed) if reconstructed.size else 0.0
    return out


def narrow_band(
    mean: np.ndarray | float,
    low: np.ndarray | float,
    high: np.ndarray | float,
    scale: float | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The band ``low``..``high`` around ``mean`` with both distances to it scaled by
    ``scale`` (an edge on the wrong side of the mean counts as on it), kept within NDVI's
    range [-1, 1] (but never so far that it leaves out ``mean``)."""
    below = scale * np.maximum(np.subtract(mean, low), 0.0)
    above = scale * np.maximum(np.subtract(high, mean), 0.0)
    return (
        np.maximum(np.subtract(mean, below), np.minimum(mean, -1.0)),
        np.minimum(np.add(mean, above), np.maximum(mean, 1.0)),
    )


def curve_csv(curve: pd.DataFrame) -> str:
    """The curve as CSV text: ISO dates, 4 decimals, empty cells for missing values."""
    missing = [c for c in CURVE_COLUMNS if c not in curve.columns]
    if missing:
        raise InputError(f"Not an NDVI curve: it lacks the column(s) {', '.join(missing)}.")
    table = curve.loc[:, list(CURVE_COLUMNS)].copy()
    table["date"] = pd.to_datetime(table["date"]).dt.strftime("%Y-%m-%d")
    return table.to_csv(index=False, float_format=FLOAT_FORMAT, na_rep="", lineterminator="\n")


def write_curve_csv(curve: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write :func:`curve_csv` to ``path`` atomically; return the path."""
    text = curve_csv(curve)
    target = Path(path)
    with atomic_output(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def _dates_in_cube(
    cube: xr.Dataset, start: str | np.datetime64, end: str | np.datetime64, every_days: int
) -> np.ndarray:
    dates = regular_dates(start, end, every_days)
    first, last = calendar_day(cube["time_s2"].values[[0, -1]])
    days = calendar_day(dates)
    inside = (days >= first) & (days <= last)
    if not inside.any():
        raise InputError(
            f"The period {days[0]} to {days[-1]} does not overlap the cube's period {first} to "
            f"{last}; pick dates inside it or fetch a cube for that period."
        )
    return dates[inside]


def _checked_mask(cube: xr.Dataset, field_mask: np.ndarray | None) -> np.ndarray:
    shape = (cube.sizes["y"], cube.sizes["x"])
    if field_mask is None:
        return np.asarray(np.isfinite(cube["s2"].values).any(axis=(0, 1)))
    mask = np.asarray(field_mask)
    if mask.shape != shape:
        raise InputError(f"The field mask has shape {mask.shape}; the cube's grid is {shape}.")
    mask = mask.astype(bool)
    if not mask.any():
        raise InputError("The field covers no pixel of the cube; check the field and the cube.")
    return mask


def _observed(cube: xr.Dataset, dates: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Observed NDVI and clear fraction of the field per query day (NaN: no acquisition)."""
    acquired = calendar_day(cube["time_s2"].values)
    observed_ndvi = np.full(dates.size, np.nan)
    clear_fraction = np.full(dates.size, np.nan)
    for qi, day in enumerate(calendar_day(dates)):
        frames = np.flatnonzero(acquired == day)
        if frames.size == 0:
            continue
        clear = cube["valid"].values[frames].astype(bool) & mask  # (F, H, W)
        clear_fraction[qi] = clear.any(axis=0).sum() / mask.sum()
        values = ndvi(cube["s2"].values[frames], band_axis=1)[clear]
        values = values[np.isfinite(values)]
        if values.size:
            observed_ndvi[qi] = float(values.astype(np.float64).mean())
    return observed_ndvi, clear_fraction


DAYS_CHUNK = 64
"""Query days per pass of :func:`_field_distances` (it holds one (days, H, W) array at a time)."""


def _field_distances(
    cube: xr.Dataset, dates: np.ndarray, mask: np.ndarray
) -> tuple[pd.Series, np.ndarray]:
    """Per query day, in one pass over the days to each field pixel's nearest clear observation:
    the field's median of them (the CSV's ``days_to_clear``: calendar days, a nullable integer,
    NA where most of the field is never clear) and :func:`band_days`."""
    median = np.full(dates.size, np.nan)
    reconstructed = np.zeros(dates.size)
    for chunk, away in _days_away(cube, dates, mask):
        median[chunk] = np.median(away, axis=1)  # inf (never clear) sorts last
        reconstructed[chunk] = reconstructed_days(away)
    median[~np.isfinite(median)] = np.nan
    return pd.Series(np.round(median), dtype="Int64"), reconstructed


def _days_away(
    cube: xr.Dataset, dates: np.ndarray, mask: np.ndarray
) -> Iterator[tuple[slice, np.ndarray]]:
    """The query days in chunks of :data:`DAYS_CHUNK`, each with its (days, field pixels) days
    to each field pixel's nearest clear observation (calendar days; inf: never clear)."""
    clear = cube["valid"].values.astype(bool) & np.isfinite(cube["s2"].values).any(axis=1)
    days = to_days(calendar_day(cube["time_s2"].values).astype("datetime64[ns]"))
    query = to_days(calendar_day(dates).astype("datetime64[ns]"))
    for chunk in _chunks(dates.size, DAYS_CHUNK):
        yield chunk, nearest_clear_days(clear, days, query[chunk])[:, mask]


def _field_mean(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the mask's pixels of each frame (Q, H, W) -> (Q,), ignoring NaN pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN frame -> NaN
        return np.nanmean(frames[:, mask].astype(np.float64), axis=1)


def _within(
    progress: Callable[[int, int], None] | None, chunk: slice, total: int
) -> Callable[[float], None]:
    """``progress`` in dates done for a fraction done of ``chunk``'s reconstruction."""
    if progress is None:
        return lambda _fraction: None
    size = chunk.stop - chunk.start
    return lambda fraction: progress(chunk.start + int(fraction * size), total)


def curve_chunks(cube: xr.Dataset, n_dates: int, samples: int) -> list[slice]:
    """How :func:`ndvi_curve` splits ``n_dates`` query dates of ``cube`` into reconstruction
    calls with ``samples`` samples. A day reconstructed again within the same chunk of dates
    (:func:`core.season.reconstruct_day`) is exactly the curve's."""
    return _even_chunks(n_dates, _dates_per_chunk(cube, samples))


def _dates_per_chunk(cube: xr.Dataset, samples: int) -> int:
    # Per date the contract holds the mean, the samples and their quantiles (bands x pixels).
    pixels = cube.sizes["band"] * cube.sizes["y"] * cube.sizes["x"]
    bytes_per_date = pixels * 4 * (samples + 6)
    return max(1, min(CHUNK_MOST_DATES, int(CHUNK_BYTES // bytes_per_date)))


def _even_chunks(total: int, most: int) -> list[slice]:
    """``total`` items in as few chunks of at most ``most`` as :func:`_chunks` cuts, but of
    sizes that differ by at most one. A Run's chunks of days then cost about alike: cut 40,
    40, 40, 40, 16, a 176-day curve's last chunk took 0.6 of a full one's time for 0.4 of its
    days (each chunk has its fixed work), and the time left, read off the days done, fell
    short by 40 % in the last chunk."""
    count = -(-total // most) if total > 0 else 0
    edges = [i * total // count for i in range(count + 1)] if count else [0]
    return [slice(lo, hi) for lo, hi in itertools.pairwise(edges)]


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(lo, min(lo + size, total)) for lo in range(0, total, size)]
