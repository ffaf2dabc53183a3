"""The yardstick: score reconstruction methods on real cubes with hidden clear pixels.

Protocol (fixed seed, deterministic; every number below is a field of :class:`Protocol`):

1. A cube larger than ``max_size`` pixels on a side is cut to its centre ``max_size`` square
   first; everything after this step sees only the crop.
2. **Targets** are S2 frames with at least 80 % of their *covered* pixels clear (covered = some
   band holds reflectance at that date; frames without coverage are never targets). A frame
   sharing its calendar day with another acquisition is not a target, because the contract's
   ``keep_observed`` would hand the other acquisition's clear pixels back as the answer.
3. **missing**: 25 % of the targets are hidden entirely. **cloud**: another, disjoint 25 % of the
   targets each get the real cloud mask of a randomly drawn cloudy frame of the same cube (clear
   fraction between 10 % and 90 %, not the target itself): that frame's covered, not-clear
   pixels are hidden in the target. Both tasks share one degraded cube, as they would in a real
   series; a method sees neither task's hidden pixels.
4. **gap**: on a separate copy of the cube, every S2 acquisition in one 45-day window is hidden
   (S1 kept). The window starts on an acquisition day, holds at least 2 targets and lies inside
   the series (a target before it and one after it, so no method is asked to extrapolate); it
   is drawn at random among the qualifying ones. Only the targets in the window are scored (the
   cloudier frames in it are hidden but their "clear" pixels are less trustworthy).
5. Hidden pixels are made to *look like cloud*: reflectance 0.8 in every band the cube has,
   ``valid`` 0, SCL 9 (cloud, high probability). A method that trusted reflectance instead of
   the mask would be scored on bright clouds. The contract (:func:`core.reconstruct.observations`)
   masks them, so methods only ever see NaN there.
6. Each method reconstructs the degraded cube with :func:`core.reconstruct.reconstruct` at the
   calendar days of the scored frames (midnight, as a user's query; the acquisitions themselves
   are about 10:30 UTC), ``keep_observed=True`` (hidden pixels are not clear, so they are never
   "kept"). A target may be the first or last acquisition of the series: methods must then
   extrapolate, as they must for a user's query near the ends of a period.
7. Metrics pool every hidden pixel that was clear in the ORIGINAL cube across the task's frames,
   over the bands the cube has: MAE, RMSE, PSNR (data range 1.0 reflectance), SAM (mean per-pixel
   spectral angle in degrees), NDVI MAE (where red and a NIR band exist) and, with K > 1
   samples, the coverage of the p10-p90 band (also per bucket of days to the pixel's nearest
   clear observation in the degraded cube) and the ensemble CRPS. Per scored frame, the mean
   NDVI over its hidden pixels is scored too (what the NDVI curve shows: its MAE, and with
   K > 1 the share of frames inside the curve's band and the band's width).
8. Honest splits: a method is never scored on a cube it was trained or tuned on (see
   :data:`SeenSites`); those rows are reported as skipped.

The random draws of a cube come from ``numpy.random.default_rng([seed, crc32(cube name),
task])``: they do not depend on which other cubes or methods are in the run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import platform
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import xarray as xr

from core.cube import S2_BANDS, bands_present, validate_cube
from core.curve import band_scale, curve_chunks, narrow_band, reconstructed_days
from core.errors import InputError
from core.indices import can_compute_ndvi, ndvi
from core.model.blend import DISTANCE_EDGES_DAYS, days_to_clear, distance_bucket
from core.reconstruct import (
    ReconstructOptions,
    observations,
    pinned,
    reconstruct,
    resolve_method,
)
from core.screening import screen_cube
from core.timeline import calendar_day, regular_dates, to_days

TASKS: tuple[str, ...] = ("missing", "cloud", "gap")
BASELINES: tuple[str, ...] = ("linear", "whittaker")
"""The methods the yardstick compares against; neither is trained or tuned on any cube."""
TARGET_RATIOS: dict[str, float] = {"missing": 0.85, "gap": 0.85, "cloud": 0.90}
"""A method beats the baselines on a task when its MAE / best baseline MAE is at most this."""
POOLED_PIXEL = "pooled (pixel-weighted)"
"""Label of the rows pooled over cubes with every scored value counted once."""
POOLED_CUBE = "pooled (cube mean)"
"""Label of the rows that average the cubes' figures, each cube counting once."""

SeenSites = Mapping[str, Collection[str]] | Callable[[str], Collection[str]]
"""Which cubes each method saw in training or tuning: method name -> cube identifiers (a cube
counts as seen when its name, file name or ``site`` attribute is among them)."""


@dataclass(frozen=True)
class Protocol:
    """Every parameter of the evaluation protocol; saved in the JSON report."""

    seed: int = 0
    """Seed of every random draw (targets, cloud masks, gap window)."""
    max_size: int | None = 128
    """Cubes wider or taller than this are cut to their centre square of this side (None: no
    crop). 128 keeps every shared cube whole except it-bolzano (320 px)."""
    target_clear_fraction: float = 0.8
    """A frame is a target when at least this fraction of its covered pixels is clear."""
    missing_fraction: float = 0.25
    """Fraction of the targets hidden entirely (task "missing")."""
    cloud_fraction: float = 0.25
    """Fraction of the targets, disjoint from "missing", given a real cloud mask ("cloud")."""
    cloudy_clear_min: float = 0.1
    """A frame lends its cloud mask when its clear fraction is at least this..."""
    cloudy_clear_max: float = 0.9
    """...and at most this."""
    gap_days: int = 45
    """Length of the window of the "gap" task, in days."""
    gap_min_targets: int = 2
    """Fewest targets the gap window must hold."""
    hidden_reflectance: float = 0.8
    """Reflectance written into hidden pixels (in every band the cube has): bright, like cloud."""
    hidden_scl: int = 9
    """SCL class written into hidden pixels (9 = cloud, high probability)."""
    psnr_data_range: float = 1.0
    """Data range of the PSNR: reflectance 0 to 1."""
    query_every_days: int | None = None
    """Also query every this many days of the cube's period, as the app's daily NDVI curve
    does (1: daily); only the target frames are scored. None: query the targets only."""
    drop_hidden_frames: bool = False
    """Remove from the cube the frames a task hides entirely (the missing frames, the gap's
    frames; never the first or last acquisition) and query their dates as dates with no
    acquisition, as the app's anytime queries and most days of its daily curve are. False
    keeps them as acquisitions with every pixel cloudy. The baselines, which skip missing
    values, score the same either way."""
    screened_truth: bool = False
    """Score only the hidden pixels that are not themselves haze the scene mask missed
    (:func:`core.screening.screen_cube` of the whole cube, with the pixels around that haze
    too where the options' ``screen_haze_nearby`` takes them from the inputs): the truth
    without the haze labelled clear. The draws are the same either way. False scores every
    hidden pixel the scene mask calls clear."""
    in_chunks: bool = False
    """Reconstruct the query days in the calls an app Run makes for its daily curve
    (:func:`core.curve.curve_chunks`: at most 40 days per call) instead of in one call, so that
    the figures are those of the frames a Run shows."""

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size < 1:
            raise InputError(
                f"--max-size must be a number of pixels (or 0 for none), not {self.max_size}."
            )
        if self.missing_fraction + self.cloud_fraction > 1:
            raise InputError("The missing and cloud fractions together cannot exceed 1.")
        if self.query_every_days is not None and self.query_every_days < 1:
            raise InputError(f"--query-every-days must be 1 or more, not {self.query_every_days}.")


@dataclass(frozen=True)
class HiddenSet:
    """What one task hides in a cube, and which frames it scores."""

    task: str
    """"missing", "cloud" or "gap"."""
    frames: tuple[int, ...]
    """Indices into ``time_s2`` of the scored target frames, ascending; empty if not applicable."""
    hidden: np.ndarray | None
    """(T, H, W) bool: pixels hidden in the degraded cube; None if not applicable."""
    reason: str = ""
    """Why the task does not apply to this cube (empty when it does)."""
    cloud_sources: tuple[int, ...] = ()
    """Task "cloud": index of the frame whose mask was pasted, one per entry of ``frames``."""
    window: tuple[np.datetime64, np.datetime64] | None = None
    """Task "gap": first and last calendar day of the hidden window."""

    @property
    def applicable(self) -> bool:
        return self.hidden is not None and len(self.frames) > 0


@dataclass(frozen=True)
class TaskPlan:
    """The targets of one cube and the three tasks drawn from them."""

    targets: tuple[int, ...]
    """Indices into ``time_s2`` of the target frames."""
    missing: HiddenSet
    cloud: HiddenSet
    gap: HiddenSet

    def sets(self) -> tuple[HiddenSet, ...]:
        return (self.missing, self.cloud, self.gap)


@dataclass(frozen=True)
class BandScores:
    """Errors of one band over a task's hidden clear pixels."""

    band: str
    n_values: int
    mae: float
    rmse: float
    psnr_db: float


@dataclass(frozen=True)
class Scores:
    """Figures of one method on one task (one cube, or pooled over cubes)."""

    n_frames: int
    """Frames scored (a task with one frame is noise: read n_pixels too)."""
    n_pixels: int
    """Hidden pixels (frame, y, x) that were clear in the original cube."""
    n_values: int
    """Pixel-band values scored (hidden clear pixels x bands present, minus missing truth)."""
    mae: float
    rmse: float
    psnr_db: float
    """10 log10(range² / MSE) with range 1.0."""
    sam_deg: float | None
    """Mean spectral angle between predicted and true spectra, degrees (None: < 2 bands)."""
    n_sam: int
    """Pixels in the SAM mean (truth and prediction finite in all present bands, non-zero)."""
    ndvi_mae: float | None
    """MAE of NDVI; None where the cube lacks red or NIR."""
    n_ndvi: int
    coverage: float | None
    """Fraction of scored values inside [p10, p90] (K > 1 samples only; nominal 0.8)."""
    crps: float | None
    """Mean ensemble CRPS of the K samples (K > 1 only)."""
    n_unpredicted: int
    """Scored values the method left NaN; they are left out of every figure above."""
    bands: tuple[BandScores, ...] = ()
    coverage_by_distance: tuple[float | None, ...] = ()
    """:attr:`coverage` per bucket of days from the value's date to its pixel's nearest clear
    observation in the degraded cube (:data:`DISTANCE_EDGES_DAYS`: <= 8, 8-20, > 20 days);
    empty without samples. Is the band as honest far from clear data as near it?"""
    n_by_distance: tuple[int, ...] = ()
    """Values behind each entry of :attr:`coverage_by_distance`."""
    field_ndvi_mae: float | None = None
    """MAE of the frame's mean NDVI over its scored pixels (the whole field's clear pixels for
    a missing frame or a gap: what the NDVI curve shows), one error per frame; None without
    red and NIR."""
    field_ndvi_coverage: float | None = None
    """Share of frames whose true mean NDVI lies between the means of the per-pixel NDVI p10
    and p90 over the same pixels (the curve's band; K > 1 only)."""
    field_ndvi_band: float | None = None
    """Mean width of that band, NDVI units."""
    field_ndvi_interval_score: float | None = None
    """Mean interval score of that band over the frames (:func:`interval_score`)."""
    n_field_ndvi: int = 0
    """Frames behind the three figures above."""
    ndvi_coverage: float | None = None
    """Share of scored pixels whose true NDVI lies in [ndvi_p10, ndvi_p90] (K > 1 only)."""
    ndvi_band_width: float | None = None
    """Mean width of the per-pixel NDVI band over those pixels (NDVI units)."""
    ndvi_interval_score: float | None = None
    """Mean interval score of the per-pixel NDVI band (:func:`interval_score`), NDVI units."""
    ndvi_band_misses_estimate: float | None = None
    """Share of those pixels whose estimated NDVI lies outside its own band: a band that does
    not hold the value it stands around reads as contradicting it."""
    band_width: float | None = None
    """Mean width p90 - p10 of the band over the scored values (K > 1 only), reflectance."""
    interval_score: float | None = None
    """Mean interval score of the p10-p90 band (:func:`interval_score`; K > 1 only): its
    width plus 10 x how far the truth falls outside it. A proper score for an 80 % band:
    lower is better, and no band scores better in expectation than the true p10-p90."""


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    cube: str
    """Cube name, or :data:`POOLED_PIXEL` / :data:`POOLED_CUBE`."""
    task: str
    method: str
    status: str
    """"ok", "n/a: <reason>" or "skipped: <reason>"."""
    scores: Scores | None = None
    ratio: float | None = None
    """MAE / the lower MAE of the baselines on the same cube(s) and task."""
    seconds: float | None = None
    """Wall time of the reconstruction call (shared by the tasks of one degraded cube)."""
    n_cubes: int = 1


@dataclass(frozen=True)
class CubeReport:
    """What the protocol drew on one cube (for the JSON report)."""

    name: str
    site: str
    shape: tuple[int, int, int]
    """(T, H, W) after the crop."""
    original_shape: tuple[int, int]
    """(H, W) before the crop."""
    bands: tuple[str, ...]
    targets: tuple[str, ...]
    """Acquisition days of the targets."""
    tasks: dict[str, dict[str, object]]
    """Per task: scored days, cloud-mask source days, gap window or the reason it is n/a."""


@dataclass(frozen=True)
class Evaluation:
    """A complete evaluation run."""

    protocol: Protocol
    methods: tuple[str, ...]
    samples: int
    cubes: tuple[CubeReport, ...]
    rows: tuple[Row, ...]
    """Per cube x task x method."""
    pooled: tuple[Row, ...]
    """Per task x method, pixel-weighted then cube-mean."""
    seen: dict[str, list[str]]
    """Method -> cube identifiers it saw in training or tuning."""
    skipped: dict[str, list[str]]
    """Method -> cubes of this run it was not scored on because it saw them."""
    exclude_seen: bool = True
    seconds: float = 0.0
    software: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- metrics


def mean_absolute_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean |pred - truth| over all elements (both finite)."""
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - truth)))


def psnr_db(mse: float, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio 10 log10(range² / MSE) in dB (inf for a perfect match)."""
    if mse <= 0:
        return math.inf
    return float(10.0 * math.log10(data_range**2 / mse))


def spectral_angle_deg(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Angle between predicted and true spectra, per pixel.

    Args:
        pred, truth: (N, B) spectra.

    Returns:
        (N,) angles in degrees; NaN where a spectrum has zero length or a non-finite value.
    """
    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    norm_p = np.linalg.norm(pred, axis=1, keepdims=True)
    norm_t = np.linalg.norm(truth, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = pred / norm_p, truth / norm_t
        # 2 atan2(|u - v|, |u + v|): accurate near 0 and 180 degrees, unlike arccos of the dot
        angle = 2.0 * np.arctan2(np.linalg.norm(u - v, axis=1), np.linalg.norm(u + v, axis=1))
    zero = (norm_p[:, 0] == 0) | (norm_t[:, 0] == 0)
    return np.where(zero, np.nan, np.degrees(angle))


def crps_ensemble(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Continuous ranked probability score of an ensemble, per value (lower is better).

    The standard ensemble estimator ``mean_i |x_i - y| - 1/(2K²) sum_ij |x_i - x_j|`` (the
    empirical CDF of the K samples scored against y). A degenerate ensemble (all samples equal)
    scores exactly |x - y|, i.e. its CRPS is its MAE.

    Args:
        samples: (K, N) ensemble members.
        truth: (N,) observed values.

    Returns:
        (N,) CRPS values.
    """
    x = np.sort(np.asarray(samples, np.float64), axis=0)
    k = x.shape[0]
    skill = np.mean(np.abs(x - np.asarray(truth, np.float64)[None]), axis=0)
    weights = (2.0 * np.arange(1, k + 1) - k - 1)[:, None]
    spread = np.sum(weights * x, axis=0) / k**2
    return skill - spread


BAND_ALPHA = 0.2
"""The p10-p90 band is a central interval of nominal coverage 1 - alpha."""


def interval_score(
    low: np.ndarray, high: np.ndarray, truth: np.ndarray, alpha: float = BAND_ALPHA
) -> np.ndarray:
    """Interval score of central (1 - ``alpha``) intervals, per value (lower is better):
    ``(high - low) + 2/alpha * (low - y)+ + 2/alpha * (y - high)+`` (Gneiting and Raftery 2007,
    eq. 43). It rewards a narrow band and charges every miss by its distance, so a band that
    reaches its coverage by being wide where errors are small scores worse than one whose
    width follows the error."""
    low, high, y = (np.asarray(a, np.float64) for a in (low, high, truth))
    below = np.maximum(low - y, 0.0)
    above = np.maximum(y - high, 0.0)
    return (high - low) + (2.0 / alpha) * (below + above)


def interval_coverage(low: np.ndarray, high: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of ``truth`` values inside [low, high] (all arrays the same shape)."""
    return float(np.mean((truth >= low) & (truth <= high)))


def score_values(
    truth: np.ndarray,
    pred: np.ndarray,
    present: np.ndarray,
    *,
    n_frames: int,
    low: np.ndarray | None = None,
    high: np.ndarray | None = None,
    samples: np.ndarray | None = None,
    data_range: float = 1.0,
    distance: np.ndarray | None = None,
    ndvi_low: np.ndarray | None = None,
    ndvi_high: np.ndarray | None = None,
) -> Scores:
    """Every figure of one method on one task from the pooled hidden clear pixels.

    Args:
        truth: original reflectance (N, 10) of the N hidden clear pixels, :data:`S2_BANDS` order.
        pred: the method's reflectance (N, 10) at the same pixels.
        present: (10,) bool, the bands the cube has; the others are ignored.
        n_frames: frames the N pixels come from (reported only).
        low, high: p10 and p90 (N, 10) for K > 1 samples.
        samples: (K, N, 10) samples for the CRPS.
        data_range: PSNR data range.
        distance: (N,) days from each pixel's date to its nearest clear observation, for the
            coverage by distance (with ``low`` and ``high``).
        ndvi_low, ndvi_high: (N,) the method's per-pixel NDVI p10 and p90, for the NDVI band's
            figures.
    """
    present = np.asarray(present, bool)
    t = np.asarray(truth, np.float64)[:, present]
    p = np.asarray(pred, np.float64)[:, present]
    has_truth = np.isfinite(t)
    ok = has_truth & np.isfinite(p)
    err = np.where(ok, p - t, 0.0)
    n_ok = int(ok.sum())
    mse = float(np.sum(err**2) / n_ok) if n_ok else math.nan
    band_scores = []
    for column, band in enumerate(np.asarray(S2_BANDS)[present]):
        n_band = int(ok[:, column].sum())
        if n_band == 0:
            continue
        band_err = err[ok[:, column], column]
        band_mse = float(np.mean(band_err**2))
        band_scores.append(
            BandScores(
                band=str(band),
                n_values=n_band,
                mae=float(np.mean(np.abs(band_err))),
                rmse=math.sqrt(band_mse),
                psnr_db=psnr_db(band_mse, data_range),
            )
        )

    sam_deg, n_sam = None, 0
    if present.sum() >= 2:
        angles = spectral_angle_deg(p, t)
        good = np.isfinite(angles) & ok.all(axis=1)
        n_sam = int(good.sum())
        sam_deg = float(np.mean(angles[good])) if n_sam else None

    ndvi_mae, n_ndvi = None, 0
    ndvi_band: dict[str, float] = {}
    if can_compute_ndvi(present):
        ndvi_t, ndvi_p = ndvi(truth, band_axis=1), ndvi(pred, band_axis=1)
        both = np.isfinite(ndvi_t) & np.isfinite(ndvi_p)
        n_ndvi = int(both.sum())
        ndvi_mae = mean_absolute_error(ndvi_p[both], ndvi_t[both]) if n_ndvi else None
        if ndvi_low is not None and ndvi_high is not None:
            nlo, nhi = (np.asarray(a, np.float64) for a in (ndvi_low, ndvi_high))
            banded = both & np.isfinite(nlo) & np.isfinite(nhi)
            if banded.any():
                lo, hi, y = nlo[banded], nhi[banded], ndvi_t[banded]
                ndvi_band = {
                    "ndvi_coverage": interval_coverage(lo, hi, y),
                    "ndvi_band_width": float(np.mean(hi - lo)),
                    "ndvi_interval_score": float(np.mean(interval_score(lo, hi, y))),
                    # (widened by a float32 rounding, which is not a miss)
                    "ndvi_band_misses_estimate": 1.0
                    - interval_coverage(lo - 1e-6, hi + 1e-6, ndvi_p[banded]),
                }

    coverage = width = score = None
    by_distance: tuple[float | None, ...] = ()
    n_by_distance: tuple[int, ...] = ()
    if low is not None and high is not None:
        lo = np.asarray(low, np.float64)[:, present][ok]
        hi = np.asarray(high, np.float64)[:, present][ok]
        if n_ok:
            coverage = interval_coverage(lo, hi, t[ok])
            width = float(np.mean(hi - lo))
            score = float(np.mean(interval_score(lo, hi, t[ok])))
        if distance is not None:
            inside = (t[ok] >= lo) & (t[ok] <= hi)
            bucket = np.broadcast_to(distance_bucket(np.asarray(distance))[:, None], ok.shape)[ok]
            n_by_distance = tuple(
                int(n) for n in np.bincount(bucket, minlength=len(DISTANCE_EDGES_DAYS) + 1)
            )
            by_distance = tuple(
                float(inside[bucket == k].mean()) if n else None
                for k, n in enumerate(n_by_distance)
            )
    crps = None
    if samples is not None and n_ok:
        members = np.asarray(samples, np.float64)[:, :, present][:, ok]
        finite = np.all(np.isfinite(members), axis=0)
        crps = float(np.mean(crps_ensemble(members[:, finite], t[ok][finite])))

    return Scores(
        n_frames=n_frames,
        n_pixels=int(has_truth.any(axis=1).sum()),
        n_values=int(has_truth.sum()),
        mae=float(np.sum(np.abs(err)) / n_ok) if n_ok else math.nan,
        rmse=math.sqrt(mse) if n_ok else math.nan,
        psnr_db=psnr_db(mse, data_range) if n_ok else math.nan,
        sam_deg=sam_deg,
        n_sam=n_sam,
        ndvi_mae=ndvi_mae,
        n_ndvi=n_ndvi,
        coverage=coverage,
        crps=crps,
        n_unpredicted=int((has_truth & ~np.isfinite(p)).sum()),
        bands=tuple(band_scores),
        coverage_by_distance=by_distance,
        n_by_distance=n_by_distance,
        band_width=width,
        interval_score=score,
        **ndvi_band,
    )


# --------------------------------------------------------------------------- protocol


def centre_crop(cube: xr.Dataset, max_size: int | None) -> xr.Dataset:
    """The centre ``max_size`` x ``max_size`` window of ``cube`` (whole axes that are smaller)."""
    if max_size is None:
        return cube
    windows = {}
    for dim in ("y", "x"):
        size = cube.sizes[dim]
        start = max(0, (size - max_size) // 2)
        windows[dim] = slice(start, start + min(size, max_size))
    return cube.isel(windows)


def covered_pixels(cube: xr.Dataset) -> np.ndarray:
    """(T, H, W) bool: the pixel holds reflectance in some band at that date."""
    return np.isfinite(cube["s2"].values).any(axis=1)


def clear_fraction(cube: xr.Dataset) -> np.ndarray:
    """(T,) clear pixels / covered pixels of each frame; NaN for a frame without coverage."""
    covered = covered_pixels(cube)
    clear = cube["valid"].values.astype(bool) & covered
    n_covered = covered.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_covered > 0, clear.sum(axis=(1, 2)) / n_covered, np.nan)


def select_targets(cube: xr.Dataset, protocol: Protocol) -> np.ndarray:
    """Indices of the frames that can be hidden and scored (see the module docstring, step 2)."""
    fraction = clear_fraction(cube)
    days = calendar_day(cube["time_s2"].values)
    _, first, counts = np.unique(days, return_index=True, return_counts=True)
    alone = np.zeros(days.size, bool)
    alone[first[counts == 1]] = True
    good = np.isfinite(fraction) & (fraction >= protocol.target_clear_fraction) & alone
    return np.flatnonzero(good)


def cube_rng(seed: int, name: str, task: str) -> np.random.Generator:
    """The random stream of one task of one cube (stable across runs and cube orders)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), TASKS.index(task)])


def _count(fraction: float, n: int) -> int:
    return math.floor(fraction * n + 0.5)


def plan_tasks(cube: xr.Dataset, name: str, protocol: Protocol) -> TaskPlan:
    """Draw the targets and the three tasks of one (already cropped) cube."""
    targets = select_targets(cube, protocol)
    covered = covered_pixels(cube)
    valid = cube["valid"].values.astype(bool)
    n_t = covered.shape[0]

    order = cube_rng(protocol.seed, name, "missing").permutation(targets)
    n_missing = min(_count(protocol.missing_fraction, targets.size), targets.size)
    n_cloud = min(_count(protocol.cloud_fraction, targets.size), targets.size - n_missing)
    missing_frames = np.sort(order[:n_missing])
    cloud_frames = np.sort(order[n_missing : n_missing + n_cloud])

    if missing_frames.size:
        hidden = np.zeros_like(covered)
        hidden[missing_frames] = covered[missing_frames]
        missing = HiddenSet("missing", tuple(int(i) for i in missing_frames), hidden)
    else:
        missing = HiddenSet("missing", (), None, reason="no target frames")

    fraction = clear_fraction(cube)
    cloudy = np.flatnonzero(
        np.isfinite(fraction)
        & (fraction >= protocol.cloudy_clear_min)
        & (fraction <= protocol.cloudy_clear_max)
    )
    cloud_rng = cube_rng(protocol.seed, name, "cloud")
    if cloud_frames.size == 0:
        cloud = HiddenSet("cloud", (), None, reason="too few target frames")
    elif cloudy.size == 0 or (cloudy.size == 1 and cloudy[0] in cloud_frames):
        cloud = HiddenSet(
            "cloud",
            (),
            None,
            reason=(
                f"no cloudy frame (clear fraction {protocol.cloudy_clear_min:.0%}-"
                f"{protocol.cloudy_clear_max:.0%}) to lend a real cloud mask"
            ),
        )
    else:
        hidden = np.zeros_like(covered)
        sources = []
        for frame in cloud_frames:
            source = int(cloud_rng.choice(cloudy[cloudy != frame]))
            sources.append(source)
            hidden[frame] = covered[source] & ~valid[source] & covered[frame]
        cloud = HiddenSet(
            "cloud",
            tuple(int(i) for i in cloud_frames),
            hidden,
            cloud_sources=tuple(sources),
        )

    gap = _plan_gap(cube, name, targets, covered, protocol, n_t)
    return TaskPlan(tuple(int(i) for i in targets), missing, cloud, gap)


def _plan_gap(
    cube: xr.Dataset,
    name: str,
    targets: np.ndarray,
    covered: np.ndarray,
    protocol: Protocol,
    n_frames: int,
) -> HiddenSet:
    days = calendar_day(cube["time_s2"].values)
    target_days = days[targets]
    length = np.timedelta64(protocol.gap_days, "D")
    starts = []
    for start in np.unique(days):
        end = start + length  # exclusive
        inside = (target_days >= start) & (target_days < end)
        before, after = np.any(target_days < start), np.any(target_days >= end)
        if inside.sum() >= protocol.gap_min_targets and before and after:
            starts.append(start)
    if not starts:
        return HiddenSet(
            "gap",
            (),
            None,
            reason=(
                f"no {protocol.gap_days}-day window inside the series holds "
                f"{protocol.gap_min_targets} targets"
            ),
        )
    start = starts[int(cube_rng(protocol.seed, name, "gap").integers(len(starts)))]
    in_window = (days >= start) & (days < start + length)
    hidden = np.zeros_like(covered)
    hidden[in_window] = covered[in_window]
    scored = tuple(int(i) for i in targets if in_window[i])
    last = start + length - np.timedelta64(1, "D")
    return HiddenSet("gap", scored, hidden, window=(start, last))


def hide(cube: xr.Dataset, hidden: np.ndarray, protocol: Protocol) -> xr.Dataset:
    """A copy of ``cube`` whose ``hidden`` pixels (T, H, W) look like cloud.

    Reflectance is set to ``protocol.hidden_reflectance`` in every band the cube has, ``valid``
    to 0 and ``scl`` (when present) to ``protocol.hidden_scl``; S1 is untouched.
    """
    present = bands_present(cube)
    out = cube.copy(deep=True)
    bright = hidden[:, None, :, :] & present[None, :, None, None]
    out["s2"].values[bright] = np.float32(protocol.hidden_reflectance)
    out["valid"].values[hidden] = 0
    if "scl" in out:
        out["scl"].values[hidden] = protocol.hidden_scl
    return out


def drop_hidden_frames(
    degraded: xr.Dataset, original: xr.Dataset, hidden: np.ndarray
) -> xr.Dataset:
    """``degraded`` without the acquisitions whose every clear pixel ``hidden`` hid (T, H, W),
    but for the first and the last (which hold the period)."""
    had = original["valid"].values.astype(bool)
    gone = had.any(axis=(1, 2)) & ~(had & ~hidden).any(axis=(1, 2))
    gone[[0, -1]] = False
    return degraded.isel(time_s2=np.flatnonzero(~gone)) if gone.any() else degraded


# --------------------------------------------------------------------------- running methods


def default_seen_sites(options: ReconstructOptions) -> Callable[[str], frozenset[str]]:
    """Where the cubes a method saw are recorded: nowhere for the baselines; for a learned
    method, the training record of its checkpoint (``core.model.checkpoint.training_sites``).

    Raises (when called for a learned method without a readable record):
        InputError: telling the user to pass the seen cubes or to turn the check off.
    """

    def seen(method: str) -> frozenset[str]:
        if method in BASELINES:
            return frozenset()
        try:
            module = importlib.import_module("core.model.checkpoint")
            training_sites = module.training_sites
        except (ImportError, AttributeError) as exc:
            raise InputError(
                f"Cannot tell which cubes method '{method}' was trained on (no training record "
                "reader core.model.checkpoint.training_sites); pass --seen "
                f"{method}=CUBE,CUBE or --no-exclude-seen."
            ) from exc
        return frozenset(str(s) for s in training_sites(options.checkpoint))

    return seen


def _seen_lookup(
    seen_sites: SeenSites | None, options: ReconstructOptions
) -> Callable[[str], frozenset[str]]:
    if seen_sites is None:
        return default_seen_sites(options)
    if callable(seen_sites):
        return lambda method: frozenset(str(s) for s in seen_sites(method))
    fallback = default_seen_sites(options)
    return lambda method: (
        frozenset(str(s) for s in seen_sites[method]) if method in seen_sites else fallback(method)
    )


def _training_places(
    methods: Sequence[str], seen_sites: SeenSites | None, options: ReconstructOptions
) -> dict[str, Callable[[xr.Dataset], bool]]:
    """For each learned method whose cubes are read from its record (no ``seen_sites`` given
    for it), a test of whether it was trained on where a cube lies: its checkpoint's record
    says where its training cubes lie (``core.model.checkpoint.trained_inside``)."""
    if callable(seen_sites):
        return {}
    places = getattr(importlib.import_module("core.model.checkpoint"), "trained_inside", None)
    if places is None:
        return {}
    return {
        m: places(options.checkpoint)
        for m in methods
        if m not in BASELINES and (seen_sites is None or m not in seen_sites)
    }


def _placed_by_record(
    places: Mapping[str, Callable[[xr.Dataset], bool]], options: ReconstructOptions
) -> dict[str, Callable[[xr.Dataset], bool]]:
    """For each method of ``places``: whether its record judges a cube by place
    (``core.model.checkpoint.placed_by_record``), so that its name alone does not skip it."""
    test = getattr(importlib.import_module("core.model.checkpoint"), "placed_by_record", None)
    if test is None or not places:
        return {}
    judged = test(options.checkpoint)
    return {m: judged for m in places}


def cube_identifiers(name: str, cube: xr.Dataset) -> set[str]:
    """Names a training record may use for this cube: its name, file stem and site."""
    ids = {name, name.removesuffix(".nc")}
    if cube.attrs.get("site"):
        ids.add(str(cube.attrs["site"]))
    return ids


def _gather(
    array: np.ndarray, frames: Sequence[int], rows: Sequence[int], masks: np.ndarray
) -> np.ndarray:
    """Stack ``array[row, :, mask]`` for each scored frame -> (N, B) (leading axes kept)."""
    parts = [
        np.moveaxis(array[..., r, :, :, :], -3, -1)[..., masks[f], :]
        for f, r in zip(frames, rows, strict=True)
    ]
    return np.concatenate(parts, axis=-2)


def _score_task(
    original: xr.Dataset,
    result: xr.Dataset,
    task: HiddenSet,
    samples: np.ndarray | None,
    protocol: Protocol,
    distance: np.ndarray | None = None,
) -> Scores:
    """``distance`` (T, H, W): days from each S2 frame's calendar day to each pixel's nearest
    clear observation in the degraded cube (see :func:`clear_distance`)."""
    frames = list(task.frames)
    scored = task.hidden & original["valid"].values.astype(bool)
    result_days = calendar_day(result["time"].values)
    rows = [
        int(np.searchsorted(result_days, d))
        for d in calendar_day(original["time_s2"].values[frames])
    ]
    truth = _gather(original["s2"].values, frames, frames, scored)
    pred = _gather(result["s2"].values, frames, rows, scored)
    low = high = ndvi_low = ndvi_high = None
    if "s2_p10" in result:
        low = _gather(result["s2_p10"].values, frames, rows, scored)
        high = _gather(result["s2_p90"].values, frames, rows, scored)
    if "ndvi_p10" in result:
        ndvi_low, ndvi_high = (
            np.concatenate(
                [result[name].values[r][scored[f]] for f, r in zip(frames, rows, strict=True)]
            )
            for name in ("ndvi_p10", "ndvi_p90")
        )
    members = _gather(samples, frames, rows, scored) if samples is not None else None
    days_away = None
    if distance is not None:
        days_away = np.concatenate([distance[f][scored[f]] for f in frames])
    frame_days = None
    if distance is not None:  # as the curve picks its band's factor (core.curve.band_days)
        frame_days = reconstructed_days(np.stack([distance[f].ravel() for f in frames]))
    field = field_ndvi_scores(original, result, frames, rows, scored, frame_days)
    scores = score_values(
        truth,
        pred,
        bands_present(original),
        n_frames=len(frames),
        low=low,
        high=high,
        samples=members,
        data_range=protocol.psnr_data_range,
        distance=days_away,
        ndvi_low=ndvi_low,
        ndvi_high=ndvi_high,
    )
    return replace(scores, **field)


def field_ndvi_scores(
    original: xr.Dataset,
    result: xr.Dataset,
    frames: Sequence[int],
    rows: Sequence[int],
    scored: np.ndarray,
    frame_days: np.ndarray | None = None,
) -> dict[str, object]:
    """The field-mean NDVI figures of :class:`Scores`: per scored frame, the mean NDVI over its
    scored pixels (where truth and prediction both have one), true and reconstructed, and the
    means of the per-pixel NDVI p10 and p90 over the same pixels, narrowed as the curve does
    where the method fitted a field-mean band (``FIELD_NDVI_SCALE_ATTR``; per frame by its
    distance to clear data, ``frame_days`` (len(frames),), where it fitted one factor per
    distance: :func:`core.curve.band_scale`)."""
    if not can_compute_ndvi(bands_present(original)):
        return {}
    truth_ndvi = ndvi(original["s2"].values, band_axis=1)
    errors, inside, widths, scores = [], [], [], []
    has_band = "ndvi_p10" in result
    scales = band_scale(result.attrs, frame_days)
    for i, (f, r) in enumerate(zip(frames, rows, strict=True)):
        pred = result["ndvi"].values[r]
        ok = scored[f] & np.isfinite(truth_ndvi[f]) & np.isfinite(pred)
        if not ok.any():
            continue
        true_mean, pred_mean = float(truth_ndvi[f][ok].mean()), float(pred[ok].mean())
        errors.append(abs(pred_mean - true_mean))
        if has_band:
            low = float(np.nanmean(result["ndvi_p10"].values[r][ok]))
            high = float(np.nanmean(result["ndvi_p90"].values[r][ok]))
            if scales is not None:  # as the curve narrows it (core.curve.field_ndvi_band)
                scale = scales[i] if scales.ndim else scales
                low, high = (float(v) for v in narrow_band(pred_mean, low, high, scale))
            inside.append(low <= true_mean <= high)
            widths.append(high - low)
            scores.append(float(interval_score(low, high, true_mean)))
    if not errors:
        return {}
    return {
        "field_ndvi_mae": float(np.mean(errors)),
        "field_ndvi_coverage": float(np.mean(inside)) if inside else None,
        "field_ndvi_band": float(np.mean(widths)) if widths else None,
        "field_ndvi_interval_score": float(np.mean(scores)) if scores else None,
        "n_field_ndvi": len(errors),
    }


def clear_distance(degraded: xr.Dataset) -> np.ndarray:
    """(T, H, W) days from each S2 frame's calendar day (a user's query) to each pixel's nearest
    clear observation that a method sees in ``degraded``: hidden pixels are not clear."""
    times = degraded["time_s2"].values
    query = calendar_day(times).astype("datetime64[ns]")
    return days_to_clear(observations(degraded)["s2"].values, to_days(times), to_days(query))


def _reconstruct_query(
    degraded: xr.Dataset,
    query: np.ndarray,
    method: str,
    options: ReconstructOptions,
    in_chunks: bool,
) -> xr.Dataset:
    """All of ``query`` reconstructed in one call, or in a Run's chunks joined along time."""
    if not in_chunks:
        return reconstruct(degraded, query, method, options)
    query = np.unique(np.asarray(query, dtype="datetime64[ns]"))
    parts = [
        reconstruct(degraded, query[chunk], method, options)
        for chunk in curve_chunks(degraded, query.size, options.samples)
    ]
    if len(parts) == 1:
        return parts[0]
    return xr.concat(
        parts,
        dim="time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        combine_attrs="override",
    )


def _samples_of(result: xr.Dataset, options: ReconstructOptions) -> np.ndarray | None:
    """(K, Q, 10, H, W) samples for the CRPS, or None for K = 1."""
    if options.samples <= 1:
        return None
    return result["s2_samples"].values


def evaluate_cube(
    name: str,
    cube: xr.Dataset,
    methods: Sequence[str],
    protocol: Protocol,
    options: ReconstructOptions,
    skip: Collection[str] = (),
) -> tuple[CubeReport, list[Row]]:
    """Run the protocol on one cube for each method (methods in ``skip`` are reported only).

    Returns:
        What was drawn on the cube, and one row per task x method.
    """
    original_hw = (cube.sizes["y"], cube.sizes["x"])
    cube = centre_crop(validate_cube(cube), protocol.max_size)
    plan = plan_tasks(cube, name, protocol)
    options = replace(
        options, keep_observed=True, seed=protocol.seed, keep_samples=options.samples > 1
    )
    runs = []
    shared = [s for s in (plan.missing, plan.cloud) if s.applicable]
    if shared:
        runs.append(shared)
    if plan.gap.applicable:
        runs.append([plan.gap])

    # The truth leaves out the haze, and its surroundings where the inputs' screen takes them.
    nearby = options.screen_haze_nearby
    truth = screen_cube(cube, nearby=nearby)[0] if protocol.screened_truth else cube
    rows: dict[tuple[str, str], Row] = {}
    for task_sets in runs:
        hidden = np.logical_or.reduce([s.hidden for s in task_sets])
        degraded = hide(cube, hidden, protocol)
        inputs = (
            drop_hidden_frames(degraded, cube, hidden) if protocol.drop_hidden_frames else degraded
        )
        distance = None
        frames = sorted({f for s in task_sets for f in s.frames})
        query = calendar_day(cube["time_s2"].values[frames]).astype("datetime64[ns]")
        if protocol.query_every_days is not None:
            first, last = calendar_day(cube["time_s2"].values[[0, -1]])
            query = np.union1d(query, regular_dates(first, last, protocol.query_every_days))
        for method in methods:
            if method in skip:
                continue
            start = time.perf_counter()
            result = _reconstruct_query(inputs, query, method, options, protocol.in_chunks)
            seconds = time.perf_counter() - start
            samples = _samples_of(result, options)
            if samples is not None and distance is None:
                distance = clear_distance(degraded)
            for task in task_sets:
                scores = _score_task(truth, result, task, samples, protocol, distance)
                rows[(task.task, method)] = Row(
                    name, task.task, method, "ok", scores, seconds=round(seconds, 3)
                )
    out = []
    for task in plan.sets():
        for method in methods:
            if method in skip:
                status = "skipped: method saw this cube in training or tuning"
                out.append(Row(name, task.task, method, status))
            elif not task.applicable:
                out.append(Row(name, task.task, method, f"n/a: {task.reason}"))
            else:
                out.append(rows[(task.task, method)])
    return _cube_report(name, cube, original_hw, plan), _with_ratios(out)


def _cube_report(
    name: str, cube: xr.Dataset, original_hw: tuple[int, int], plan: TaskPlan
) -> CubeReport:
    days = [str(d) for d in calendar_day(cube["time_s2"].values)]
    tasks: dict[str, dict[str, object]] = {}
    for s in plan.sets():
        if not s.applicable:
            tasks[s.task] = {"applicable": False, "reason": s.reason}
            continue
        entry: dict[str, object] = {
            "applicable": True,
            "frames": [days[i] for i in s.frames],
            "hidden_pixels": int(s.hidden.sum()),
        }
        if s.cloud_sources:
            entry["cloud_mask_from"] = [days[i] for i in s.cloud_sources]
        if s.window is not None:
            entry["window"] = [str(s.window[0]), str(s.window[1])]
            entry["hidden_acquisitions"] = int(s.hidden.any(axis=(1, 2)).sum())
        tasks[s.task] = entry
    return CubeReport(
        name=name,
        site=str(cube.attrs.get("site", name)),
        shape=(cube.sizes["time_s2"], cube.sizes["y"], cube.sizes["x"]),
        original_shape=original_hw,
        bands=tuple(b for b, p in zip(S2_BANDS, bands_present(cube), strict=True) if p),
        targets=tuple(days[i] for i in plan.targets),
        tasks=tasks,
    )


# --------------------------------------------------------------------------- summary


def _with_ratios(rows: list[Row]) -> list[Row]:
    """Rows with ``ratio`` = MAE / the lower baseline MAE of the same cube and task."""
    best: dict[tuple[str, str], float] = {}
    for row in rows:
        if row.method in BASELINES and row.scores is not None and math.isfinite(row.scores.mae):
            key = (row.cube, row.task)
            best[key] = min(best.get(key, math.inf), row.scores.mae)
    out = []
    for row in rows:
        base = best.get((row.cube, row.task))
        if row.scores is not None and base and math.isfinite(base) and base > 0:
            row = replace(row, ratio=row.scores.mae / base)
        out.append(row)
    return out


def pool_scores(scores: Sequence[Scores], weighting: str) -> Scores:
    """Pool one method's task scores over cubes.

    Args:
        scores: per-cube scores.
        weighting: "pixel" (every scored value counts once: means weighted by their counts,
            RMSE and PSNR from the pooled MSE) or "cube" (plain mean of each cube's figure).
    """
    if weighting not in ("pixel", "cube"):
        raise ValueError(f"weighting must be 'pixel' or 'cube', not {weighting!r}")
    by_pixel = weighting == "pixel"

    def mean(values: Sequence[float | None], weights: Sequence[int]) -> float | None:
        pairs = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None and w > 0]
        pairs = [(v, w) for v, w in pairs if math.isfinite(v)]
        if not pairs:
            return None
        if not by_pixel:
            return float(np.mean([v for v, _ in pairs]))
        return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs))

    n_ok = [s.n_values - s.n_unpredicted for s in scores]
    if by_pixel:
        mse = mean([s.rmse**2 for s in scores], n_ok)
        rmse = math.sqrt(mse) if mse is not None else math.nan
        psnr = psnr_db(mse, 1.0) if mse is not None else math.nan
    else:
        rmse = _nan(mean([s.rmse for s in scores], n_ok))
        psnr = _nan(mean([s.psnr_db for s in scores], n_ok))
    bands = []
    for band in S2_BANDS:
        per = [b for s in scores for b in s.bands if b.band == band]
        if not per:
            continue
        weights = [b.n_values for b in per]
        if by_pixel:
            band_mse = _nan(mean([b.rmse**2 for b in per], weights))
            band_rmse, band_psnr = math.sqrt(band_mse), psnr_db(band_mse, 1.0)
        else:
            band_rmse = _nan(mean([b.rmse for b in per], weights))
            band_psnr = _nan(mean([b.psnr_db for b in per], weights))
        band_mae = _nan(mean([b.mae for b in per], weights))
        bands.append(BandScores(band, sum(weights), band_mae, band_rmse, band_psnr))
    with_distance = [s for s in scores if s.n_by_distance]
    n_buckets = len(with_distance[0].n_by_distance) if with_distance else 0
    return Scores(
        n_frames=sum(s.n_frames for s in scores),
        n_pixels=sum(s.n_pixels for s in scores),
        n_values=sum(s.n_values for s in scores),
        mae=_nan(mean([s.mae for s in scores], n_ok)),
        rmse=rmse,
        psnr_db=psnr,
        sam_deg=mean([s.sam_deg for s in scores], [s.n_sam for s in scores]),
        n_sam=sum(s.n_sam for s in scores),
        ndvi_mae=mean([s.ndvi_mae for s in scores], [s.n_ndvi for s in scores]),
        n_ndvi=sum(s.n_ndvi for s in scores),
        coverage=mean([s.coverage for s in scores], n_ok),
        crps=mean([s.crps for s in scores], n_ok),
        n_unpredicted=sum(s.n_unpredicted for s in scores),
        bands=tuple(bands),
        coverage_by_distance=tuple(
            mean(
                [s.coverage_by_distance[k] for s in with_distance],
                [s.n_by_distance[k] for s in with_distance],
            )
            for k in range(n_buckets)
        ),
        n_by_distance=tuple(
            sum(s.n_by_distance[k] for s in with_distance) for k in range(n_buckets)
        ),
        field_ndvi_mae=mean([s.field_ndvi_mae for s in scores], [s.n_field_ndvi for s in scores]),
        field_ndvi_coverage=mean(
            [s.field_ndvi_coverage for s in scores], [s.n_field_ndvi for s in scores]
        ),
        field_ndvi_band=mean([s.field_ndvi_band for s in scores], [s.n_field_ndvi for s in scores]),
        field_ndvi_interval_score=mean(
            [s.field_ndvi_interval_score for s in scores], [s.n_field_ndvi for s in scores]
        ),
        n_field_ndvi=sum(s.n_field_ndvi for s in scores),
        ndvi_coverage=mean([s.ndvi_coverage for s in scores], [s.n_ndvi for s in scores]),
        ndvi_band_width=mean([s.ndvi_band_width for s in scores], [s.n_ndvi for s in scores]),
        ndvi_interval_score=mean(
            [s.ndvi_interval_score for s in scores], [s.n_ndvi for s in scores]
        ),
        ndvi_band_misses_estimate=mean(
            [s.ndvi_band_misses_estimate for s in scores], [s.n_ndvi for s in scores]
        ),
        band_width=mean([s.band_width for s in scores], n_ok),
        interval_score=mean([s.interval_score for s in scores], n_ok),
    )


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def summarize(rows: Sequence[Row]) -> list[Row]:
    """Pooled rows per task x method, pixel-weighted then cube-mean.

    A method's pooled ratio compares it with each baseline pooled over the same cubes (those the
    method was scored on), and takes the lower baseline MAE: the best baseline is chosen per
    aggregate, after the fact, which favours the baselines.
    """
    scored = [r for r in rows if r.scores is not None]
    methods = list(dict.fromkeys(r.method for r in rows))
    out = []
    for label, weighting in ((POOLED_PIXEL, "pixel"), (POOLED_CUBE, "cube")):
        for task in TASKS:
            for method in methods:
                mine = [r for r in scored if r.task == task and r.method == method]
                if not mine:
                    continue
                cubes = {r.cube for r in mine}
                pooled = pool_scores([r.scores for r in mine], weighting)
                baseline_maes = []
                for base in BASELINES:
                    theirs = [
                        r.scores
                        for r in scored
                        if r.task == task and r.method == base and r.cube in cubes
                    ]
                    if len(theirs) == len(cubes):
                        baseline_maes.append(pool_scores(theirs, weighting).mae)
                best = min(baseline_maes) if baseline_maes else None
                ratio = pooled.mae / best if best and math.isfinite(best) else None
                out.append(Row(label, task, method, "ok", pooled, ratio=ratio, n_cubes=len(cubes)))
    return out


def evaluate(
    cubes: Iterable[tuple[str, xr.Dataset]],
    methods: Sequence[str],
    protocol: Protocol | None = None,
    options: ReconstructOptions | None = None,
    *,
    seen_sites: SeenSites | None = None,
    exclude_seen: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Score ``methods`` on ``cubes`` with the protocol; see the module docstring.

    Args:
        cubes: (name, cube) pairs, e.g. a generator that reads one file at a time.
        methods: method names of the reconstruction contract.
        protocol: protocol parameters (defaults: :class:`Protocol`).
        options: reconstruction options (``samples``, ``steps``, ``device``...);
            ``keep_observed`` is forced on and ``seed`` set to the protocol's.
        seen_sites: which cubes each method saw; None reads them from where they are recorded
            (:func:`default_seen_sites`). A mapping without a method falls back to the same.
        exclude_seen: skip a method on cubes it saw (the default); False scores it anyway, and
            the report still lists what it saw.
        progress: called with a line of text per cube (e.g. ``print``).
    """
    protocol = protocol or Protocol()
    options = options or ReconstructOptions()
    methods = tuple(dict.fromkeys(methods))
    if not methods:
        raise InputError("No methods given: pass e.g. --methods linear,whittaker.")
    for method in methods:
        resolve_method(method)
    if "model" in methods:  # every cube and task scored with one model, however long it takes
        options = pinned(options, "model")
    lookup = _seen_lookup(seen_sites, options)
    seen: dict[str, list[str]] = {}
    for method in methods:
        try:
            seen[method] = sorted(lookup(method))
        except InputError:
            if exclude_seen:
                raise
            seen[method] = ["unknown"]
    skipped: dict[str, list[str]] = {m: [] for m in methods}
    places = _training_places(methods, seen_sites, options) if exclude_seen else {}
    reports, rows = [], []
    start = time.perf_counter()
    placed = _placed_by_record(places, options)
    for name, cube in cubes:
        ids = cube_identifiers(name, cube)
        # by name, unless the record says where that name's cubes lie and this one's place is
        # known (fields fetched under one name are not one place: the place decides below)
        skip = {
            m
            for m in methods
            if exclude_seen and ids & set(seen[m]) and not (m in placed and placed[m](cube))
        }
        # a cube fetched inside a training cube, under a name of its own
        skip |= {m for m, inside in places.items() if m not in skip and inside(cube)}
        for method in sorted(skip):
            skipped[method].append(name)
        cube_start = time.perf_counter()
        report, cube_rows = evaluate_cube(name, cube, methods, protocol, options, skip)
        reports.append(report)
        rows.extend(cube_rows)
        if progress is not None:
            progress(f"{name}: {time.perf_counter() - cube_start:.1f} s")
    if not reports:
        raise InputError("No cubes to evaluate: pass --cube FILE or --cubes-dir DIR.")
    return Evaluation(
        protocol=protocol,
        methods=methods,
        samples=options.samples,
        cubes=tuple(reports),
        rows=tuple(rows),
        pooled=tuple(summarize(rows)),
        seen=seen,
        skipped=skipped,
        exclude_seen=exclude_seen,
        seconds=round(time.perf_counter() - start, 2),
        software=software_versions(),
    )


# --------------------------------------------------------------------------- output


def software_versions() -> dict[str, str]:
    """Versions of FieldFlow, Python and the numeric stack (for reports)."""
    versions = {"python": platform.python_version()}
    for package in ("fieldflow", "numpy", "scipy", "xarray", "pandas", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            if package == "fieldflow":
                versions[package] = _project_version()
    return versions


def _project_version() -> str:
    import tomllib

    from core.config import REPO_ROOT

    try:
        with open(REPO_ROOT / "pyproject.toml", "rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _finite_or_none(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def evaluation_to_dict(evaluation: Evaluation) -> dict[str, object]:
    """Plain JSON-ready dict of every figure (non-finite numbers become null)."""
    data = {
        "protocol": asdict(evaluation.protocol),
        "psnr_note": "PSNR = 10 log10(1.0² / MSE): data range 1.0 reflectance",
        "target_ratios": TARGET_RATIOS,
        "methods": list(evaluation.methods),
        "baselines": list(BASELINES),
        "samples": evaluation.samples,
        "exclude_seen": evaluation.exclude_seen,
        "seen_cubes": evaluation.seen,
        "skipped_cubes": evaluation.skipped,
        "software": evaluation.software,
        "seconds": evaluation.seconds,
        "cubes": [asdict(c) for c in evaluation.cubes],
        "rows": [asdict(r) for r in evaluation.rows],
        "pooled": [asdict(r) for r in evaluation.pooled],
    }
    return _finite_or_none(data)


def _fmt(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _field_band(s: Scores) -> str:
    """The field-mean NDVI band: its coverage and mean width ("0.75/0.123"), or "-"."""
    if s.field_ndvi_coverage is None:
        return "-"
    return f"{s.field_ndvi_coverage:.2f}/{_fmt(s.field_ndvi_band, 3)}"


def _ndvi_band(s: Scores) -> str:
    """The per-pixel NDVI band: its coverage and interval score ("0.80/0.123"), or "-"."""
    if s.ndvi_coverage is None:
        return "-"
    return f"{s.ndvi_coverage:.2f}/{_fmt(s.ndvi_interval_score, 3)}"


FEW_PIXELS = 100
"""Under this many scored pixels (or :data:`FEW_FRAMES` frames) a row's ratio is not judged
against the targets: a cube of a few pixels was "ok" on 4 of them (review 18)."""
FEW_FRAMES = 2


def format_table(evaluation: Evaluation) -> str:
    """The results as a fixed-width text table, per cube then pooled."""
    header = (
        f"{'cube':<26} {'task':<7} {'method':<9} {'n_fr':>4} {'n_px':>7} {'MAE':>7} {'RMSE':>7} "
        f"{'PSNR':>6} {'SAM':>6} {'NDVI':>6} {'nband':>10} {'fNDVI':>6} {'fband':>10} "
        f"{'cov':>5} {'width':>6} {'IS':>6} {'CRPS':>7} {'ratio':>6}       {'cov by distance'}"
    )
    lines = [header, "-" * len(header)]
    previous = None
    few = False
    for row in (*evaluation.rows, *evaluation.pooled):
        if previous is not None and row.cube != previous:
            lines.append("")
        previous = row.cube
        cube = (
            row.cube
            if row.cube not in (POOLED_PIXEL, POOLED_CUBE)
            else (f"{row.cube} x{row.n_cubes}")
        )
        start = f"{cube[:26]:<26} {row.task:<7} {row.method:<9}"
        s = row.scores
        if s is None:
            lines.append(f"{start} {row.status}")
            continue
        flag = ""
        if row.method not in BASELINES and row.ratio is not None:
            flag = " ok" if row.ratio <= TARGET_RATIOS[row.task] else " miss"
            if s.n_pixels < FEW_PIXELS or s.n_frames < FEW_FRAMES:  # review 18: "0.735 ok"
                flag = " few"  # on 4 pixels of one frame
                few = True
        lines.append(
            f"{start} {s.n_frames:>4} {s.n_pixels:>7} {_fmt(s.mae, 4):>7} {_fmt(s.rmse, 4):>7} "
            f"{_fmt(s.psnr_db, 2):>6} {_fmt(s.sam_deg, 2):>6} {_fmt(s.ndvi_mae, 3):>6} "
            f"{_ndvi_band(s):>10} "
            f"{_fmt(s.field_ndvi_mae, 3):>6} {_field_band(s):>10} "
            f"{_fmt(s.coverage, 2):>5} {_fmt(s.band_width, 4):>6} {_fmt(s.interval_score, 4):>6} "
            f"{_fmt(s.crps, 4):>7} {_fmt(row.ratio, 3):>6}"
            f"{flag:<5} {'/'.join(_fmt(c, 2) for c in s.coverage_by_distance)}".rstrip()
        )
    p = evaluation.protocol
    if few:
        lines += [
            "",
            f"few: under {FEW_PIXELS} scored pixels or {FEW_FRAMES} frames; the ratio is noise "
            "there and no target is judged on it. A pooled row over cubes (the cube mean "
            "above all) still counts such a cube: read it with that in mind.",
        ]
    lines += [
        "",
        f"MAE/RMSE: reflectance; PSNR dB with data range 1.0; SAM degrees; NDVI: NDVI MAE; "
        "nband: share of pixels whose true NDVI is in the per-pixel NDVI p10-p90, and that "
        "band's interval score; "
        "fNDVI: MAE of each frame's mean NDVI over its scored pixels (the curve's figure); "
        "fband: share of frames whose true mean NDVI is inside the curve's band, and its mean "
        "width; "
        f"cov: share of values in p10-p90 (by distance: <= {DISTANCE_EDGES_DAYS[0]:g}, "
        f"{DISTANCE_EDGES_DAYS[0]:g}-{DISTANCE_EDGES_DAYS[1]:g}, > {DISTANCE_EDGES_DAYS[1]:g} "
        "days to the pixel's nearest clear observation); width: mean p90 - p10; IS: interval "
        "score of that band (width + 10 x the misses' distances, lower is better); "
        "ratio: MAE / best baseline MAE (targets: "
        f"missing/gap <= {TARGET_RATIOS['missing']}, cloud <= {TARGET_RATIOS['cloud']}).",
        f"seed {p.seed}, crop {p.max_size or 'none'}, targets >= {p.target_clear_fraction:.0%} "
        f"clear, missing {p.missing_fraction:.0%} + cloud {p.cloud_fraction:.0%} of targets, "
        f"gap {p.gap_days} days; {evaluation.seconds:.1f} s.",
    ]
    for method, names in evaluation.skipped.items():
        if names:
            lines.append(f"{method}: skipped on {', '.join(names)} (seen in training).")
    return "\n".join(lines)
