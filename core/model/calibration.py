"""Fitting the uncertainty band on hidden clear observations.

The band of a reconstruction is the p10-p90 of its samples, ``mean + s * draws``: a spread factor
``s`` times the flow head's residual draws. These functions fit ``s`` so that the band holds a
share (80 %) of values whose truth was hidden: on a checkpoint's calibration site, or on the
user's own field (per-field calibration, :func:`core.model.inference.field_checkpoint`), once
for all values or once per bucket of distance to clear data. The error band
(:func:`fit_error_band`) does without the samples: its half widths are quantiles of the
estimate's own errors on the field. The NDVI curve's band, a band of
field means, gets its own factor. All of them are the smallest factor whose band covers the
share (:func:`smallest_scale`): coverage only grows with the factor.

Inputs are the 1-D arrays of :func:`core.model.training.episode_predictions`: one entry per
hidden clear value (frame, band, pixel) of a set of episodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from core.indices import ndvi
from core.model.blend import DISTANCE_EDGES_DAYS, MIN_NDVI_FRAMES, NdviScores, distance_bucket
from core.model.config import BAND_TARGET, MIN_BUCKET_NDVI_FRAMES
from core.reconstruct import band_around, samples_band_on

if TYPE_CHECKING:
    from core.model.training import Episode


def smallest_scale(
    covered: Callable[[float], float], target_coverage: float = BAND_TARGET
) -> float:
    """The scale in [0.01, 50] at which ``covered(scale)``, a coverage that grows with the
    scale, reaches ``target_coverage`` (bisection on a log scale, 40 steps)."""
    low, high = 0.01, 50.0
    for _ in range(40):
        mid = math.sqrt(low * high)
        if covered(mid) < target_coverage:
            low = mid
        else:
            high = mid
    return math.sqrt(low * high)


def coverage(mean: np.ndarray, draws: np.ndarray, truth: np.ndarray, scale: float) -> float:
    """Fraction of ``truth`` inside the p10-p90 band of ``mean + scale * draws``."""
    return _covered(mean, *band_offsets(draws), truth, scale)


def band_offsets(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p10 and p90 of residual ``draws`` (K, N) over the samples. For any scale s > 0 the band
    of ``mean + s * draws`` is ``mean + s * offset``: percentiles commute with a shift and a
    positive scale, so a search over s sorts the samples once."""
    low, high = np.percentile(draws, [10, 90], axis=0)
    return low, high


def _covered(
    mean: np.ndarray, low: np.ndarray, high: np.ndarray, truth: np.ndarray, scale: float
) -> float:
    return float(np.mean((truth >= mean + scale * low) & (truth <= mean + scale * high)))


def fit_spread(
    mean: np.ndarray, draws: np.ndarray, truth: np.ndarray, target_coverage: float = BAND_TARGET
) -> float:
    """The spread scale whose p10-p90 band covers ``target_coverage`` of ``truth``."""
    offsets = band_offsets(draws)
    return smallest_scale(lambda s: _covered(mean, *offsets, truth, s), target_coverage)


MIN_SPREAD_VALUES = 200
"""A distance bucket with fewer hidden values takes the factor fitted on all of them."""


def fit_spread_by_distance(
    mean: np.ndarray,
    draws: np.ndarray,
    truth: np.ndarray,
    distance: np.ndarray,
    target_coverage: float = BAND_TARGET,
) -> tuple[float, np.ndarray]:
    """The spread scale fitted on all values, and one per bucket of ``distance`` (days to the
    nearest clear observation, :data:`core.model.blend.DISTANCE_EDGES_DAYS`) fitted on that
    bucket's values alone (:data:`MIN_SPREAD_VALUES` at least; else the overall one)."""
    overall = fit_spread(mean, draws, truth, target_coverage)
    bucket = distance_bucket(distance)
    scales = np.full(len(DISTANCE_EDGES_DAYS) + 1, overall)
    for k in range(scales.size):
        sel = bucket == k
        if sel.sum() >= MIN_SPREAD_VALUES:
            scales[k] = fit_spread(mean[sel], draws[:, sel], truth[sel], target_coverage)
    return overall, scales


ERROR_BAND_SHARE = 0.8
"""Share of hidden values the error band's half width holds (the p10-p90 band's nominal 80 %)."""


def fit_error_band(
    mean: np.ndarray,
    truth: np.ndarray,
    band: np.ndarray,
    distance: np.ndarray,
    n_bands: int,
    share: float = ERROR_BAND_SHARE,
) -> np.ndarray:
    """(n_bands, buckets) half widths of a band around the estimate from its own errors: per
    band and bucket of ``distance`` (days to the nearest clear observation,
    :data:`core.model.blend.DISTANCE_EDGES_DAYS`), the ``share`` quantile of |truth - mean|
    over the hidden values in that cell (split conformal prediction). A cell with under
    :data:`MIN_SPREAD_VALUES` values takes its band's quantile over all distances, a band with
    under that many the quantile over every value; a band without values (one the cube lacks)
    is NaN.

    Inputs are 1-D over hidden values (``band`` the band index of each), in any one unit; the
    widths are in that unit."""
    error = np.abs(np.asarray(truth, np.float64) - np.asarray(mean, np.float64))
    ok = np.isfinite(error)
    error, band, bucket = error[ok], np.asarray(band)[ok], distance_bucket(np.asarray(distance)[ok])
    overall = float(np.quantile(error, share)) if error.size else math.nan
    half = np.full((n_bands, len(DISTANCE_EDGES_DAYS) + 1), overall)
    for b in range(n_bands):
        in_band = band == b
        if not in_band.any():
            half[b] = math.nan
        if in_band.sum() < MIN_SPREAD_VALUES:
            continue
        half[b] = np.quantile(error[in_band], share)
        for k in range(half.shape[1]):
            cell = in_band & (bucket == k)
            if cell.sum() >= MIN_SPREAD_VALUES:
                half[b, k] = np.quantile(error[cell], share)
    return half


def fit_pixel_ndvi_factors(
    true: np.ndarray,
    estimate: np.ndarray,
    below: np.ndarray,
    above: np.ndarray,
    distance: np.ndarray,
    target_coverage: float = BAND_TARGET,
) -> np.ndarray:
    """(buckets,) factors on the per-pixel NDVI band's distances from the estimate (``below``
    to p10, ``above`` to p90, :func:`core.reconstruct.samples_band_on`), one per bucket of
    ``distance`` (days to the nearest clear observation), each the smallest that makes the band
    hold ``target_coverage`` of that bucket's hidden pixels' ``true`` NDVI; a bucket with under
    :data:`MIN_SPREAD_VALUES` pixels takes the factor fitted on all of them. Inputs are 1-D over
    the hidden pixels with an NDVI (:func:`episode_pixel_ndvi`)."""
    true, est, below, above = (np.asarray(a, np.float64) for a in (true, estimate, below, above))
    bucket = distance_bucket(np.asarray(distance))

    def factor(where: np.ndarray) -> float:
        t, e, b, a = true[where], est[where], below[where], above[where]
        return smallest_scale(
            lambda c: float(np.mean((t >= e - c * b) & (t <= e + c * a))), target_coverage
        )

    everywhere = np.ones(true.size, bool)
    overall = factor(everywhere) if true.size else 1.0
    out = np.full(len(DISTANCE_EDGES_DAYS) + 1, overall)
    for k in range(out.size):
        cell = bucket == k
        if cell.sum() >= MIN_SPREAD_VALUES:
            out[k] = factor(cell)
    return out


def _episode_ndvi_maps(
    episodes: Sequence[Episode],
    mean: np.ndarray,
    truth: np.ndarray,
    samples: np.ndarray | None = None,
) -> Iterator[tuple[Episode, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Per episode: the NDVI maps of ``truth`` and ``mean`` (T, H, W) and, with ``samples``
    (K, M), of each sample (K, T, H, W), from the episodes' 1-D value arrays (NaN where a
    value was not hidden)."""
    arrays = (truth, mean) if samples is None else (truth, mean, samples)
    for ep, maps in _episode_ndvi(episodes, *arrays):
        yield ep, maps[0], maps[1], None if samples is None else maps[2]


def _episode_ndvi(
    episodes: Sequence[Episode], *arrays: np.ndarray
) -> Iterator[tuple[Episode, list[np.ndarray]]]:
    """Per episode: the NDVI maps ((..., T, H, W), NaN where red or NIR was not hidden) of each
    of ``arrays``, 1-D value arrays of the episodes or (K, M) stacks of them."""
    offset = 0
    for ep in episodes:
        target = ep.target
        n = int(target.sum())
        part = slice(offset, offset + n)
        offset += n
        maps = []
        for values in arrays:
            out = np.full(values.shape[:-1] + target.shape, np.nan, np.float32)
            out[..., target] = values[..., part]
            maps.append(ndvi(out, band_axis=out.ndim - 3))
        yield ep, maps


def field_ndvi_scores(
    episodes: Sequence[Episode], estimates: Sequence[np.ndarray], truth: np.ndarray
) -> NdviScores | None:
    """The NDVI errors of ``estimates`` (model, Whittaker, linear: 1-D value arrays of
    ``episodes`` as ``truth``, NaN where one has no value) on the pixels every one of them gives
    an NDVI, per pixel and on each hidden frame's mean over them (frames with
    :data:`MIN_FRAME_PIXELS` such pixels); None where no pixel has one (no red or NIR)."""
    errors: list[list[np.ndarray]] = [[] for _ in estimates]
    frame_errors: list[list[float]] = [[] for _ in estimates]
    for _ep, (true_ndvi, *est_ndvi) in _episode_ndvi(episodes, truth, *estimates):
        ok = np.isfinite(true_ndvi)
        for est in est_ndvi:
            ok &= np.isfinite(est)
        for i, est in enumerate(est_ndvi):
            errors[i].append(np.abs(est[ok] - true_ndvi[ok]))
        for frame in range(true_ndvi.shape[0]):
            at = ok[frame]
            if at.sum() < MIN_FRAME_PIXELS:
                continue
            truth_mean = float(true_ndvi[frame][at].mean())
            for i, est in enumerate(est_ndvi):
                frame_errors[i].append(abs(float(est[frame][at].mean()) - truth_mean))
    pixels = int(sum(e.size for e in errors[0])) if errors[0] else 0
    if pixels == 0:
        return None
    frames = len(frame_errors[0])
    per_pixel = tuple(float(np.concatenate(e).mean()) for e in errors)
    per_frame = (
        tuple(float(np.mean(e)) for e in frame_errors) if frames >= MIN_NDVI_FRAMES else None
    )
    return NdviScores(pixel=per_pixel, pixels=pixels, frame_mean=per_frame, frames=frames)


def episode_pixel_ndvi(
    episodes: Sequence[Episode],
    mean: np.ndarray,
    truth: np.ndarray,
    draws: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per hidden pixel with an NDVI (red and a NIR band hidden and clear) of ``episodes``: its
    true NDVI (``"true"``), the estimate's (``"estimate"``), its days to the nearest clear
    observation (``"distance"``, episodes made with distances; else absent) and, with
    ``draws`` (K, M), the NDVI of each sample ``mean + draws`` (``"samples"``, (K, P)).

    ``mean``, ``truth`` and ``draws`` are the episodes' 1-D value arrays (module docstring)."""
    parts: dict[str, list[np.ndarray]] = {"true": [], "estimate": [], "distance": [], "samples": []}
    with_samples = draws is not None and draws.shape[0] > 0
    samples = mean[None] + draws if with_samples else None
    for ep, true_ndvi, est_ndvi, sample_ndvi in _episode_ndvi_maps(episodes, mean, truth, samples):
        ok = np.isfinite(true_ndvi) & np.isfinite(est_ndvi)
        if sample_ndvi is not None:
            ok &= np.isfinite(sample_ndvi).all(axis=0)
            parts["samples"].append(sample_ndvi[:, ok])
        parts["true"].append(true_ndvi[ok])
        parts["estimate"].append(est_ndvi[ok])
        if ep.distance is not None:
            parts["distance"].append(np.asarray(ep.distance)[ok])
    out = {
        key: np.concatenate(values, axis=-1)
        for key, values in parts.items()
        if values and len(values) == len(episodes)
    }
    for key in ("true", "estimate"):
        out.setdefault(key, np.zeros(0, np.float32))
    return out


MIN_FIELD_NDVI_FRAMES = 20
"""Hidden frames with NDVI that a field needs before its curve's band is fitted."""
MIN_FRAME_PIXELS = 16
"""Hidden pixels with NDVI a frame of an episode needs to count as one of them."""


def episode_field_ndvi(
    episodes: Sequence[Episode],
    mean: np.ndarray,
    draws: np.ndarray,
    truth: np.ndarray,
    scale: float | np.ndarray,
    ndvi_half: np.ndarray | None = None,
    ndvi_factors: np.ndarray | None = None,
) -> np.ndarray:
    """What an NDVI curve shows, on every frame of ``episodes`` with hidden pixels: (F, 5) rows
    of the true mean NDVI over the frame's hidden pixels, the estimate's, the means over the
    same pixels of the per-pixel NDVI p10 and p90: of the samples ``mean + scale * draws``
    moved onto the estimate (:func:`core.reconstruct.samples_band_on`; its distances times
    the ``ndvi_factors`` of each pixel's distance bucket, :func:`fit_pixel_ndvi_factors`,
    where given: episodes made with distances), or
    with ``ndvi_half`` (half widths per distance bucket, :func:`fit_error_band`; episodes made
    with distances) the estimate's NDVI -+ its pixel's half width, as the product makes them;
    and the frame's distance to clear data: the median over those pixels of their days to the
    nearest clear observation (NaN for episodes made without distances).

    ``mean``, ``draws`` (K, M) and ``truth`` are the episodes' arrays (see the module
    docstring; model units: NDVI does not see the scale), ``scale`` a number or one per value.
    A frame needs :data:`MIN_FRAME_PIXELS` hidden pixels with an NDVI (red and a NIR band)."""
    rows: list[tuple[float, float, float, float, float]] = []
    if draws.shape[0] < 2:  # no band without samples
        return np.zeros((0, 5))
    samples = mean[None] + np.asarray(scale, np.float32) * draws
    for ep, true_ndvi, est_ndvi, sample_ndvi in _episode_ndvi_maps(episodes, mean, truth, samples):
        for frame in range(true_ndvi.shape[0]):
            ok = np.isfinite(true_ndvi[frame]) & np.isfinite(est_ndvi[frame])
            ok &= np.isfinite(sample_ndvi[:, frame]).all(axis=0)
            if ok.sum() < MIN_FRAME_PIXELS:
                continue
            if ndvi_half is None:  # the samples' band on the estimate, as the output
                edges = np.percentile(sample_ndvi[:, frame][:, ok], [10, 50, 90], axis=0)
                factor = 1.0
                if ndvi_factors is not None:
                    factor = np.asarray(ndvi_factors)[distance_bucket(ep.distance[frame][ok])]
                low, high = samples_band_on(est_ndvi[frame][ok], *edges, -1.0, 1.0, factor)
            else:
                half = np.asarray(ndvi_half)[distance_bucket(ep.distance[frame][ok])]
                low, high = band_around(est_ndvi[frame][ok], half, -1.0, 1.0)  # as the output
            days = math.nan if ep.distance is None else float(np.median(ep.distance[frame][ok]))
            rows.append(
                (
                    float(true_ndvi[frame][ok].mean()),
                    float(est_ndvi[frame][ok].mean()),
                    float(low.mean()),
                    float(high.mean()),
                    days,
                )
            )
    return np.asarray(rows, np.float64).reshape(-1, 5)


def fit_field_ndvi_scale(rows: np.ndarray, target_coverage: float = BAND_TARGET) -> float | None:
    """The factor c on the distances from a frame's mean NDVI to its band's edges (the means of
    the per-pixel p10 and p90) that makes the band hold ``target_coverage`` of the frames' true
    mean NDVI (:func:`episode_field_ndvi` rows); None with under :data:`MIN_FIELD_NDVI_FRAMES`.

    The means of per-pixel percentiles are the band of a field whose pixels all err together;
    they do not, so the field mean's own band is narrower (c < 1) unless the errors are
    shared across the field."""
    if rows.shape[0] < MIN_FIELD_NDVI_FRAMES:
        return None
    return _curve_factor(rows, target_coverage)


def _curve_factor(rows: np.ndarray, target_coverage: float) -> float:
    """The smallest factor c on the distances to the band's edges that holds ``target_coverage``
    of the ``rows``' true means (:func:`fit_field_ndvi_scale`)."""
    true, est, low, high = rows[:, :4].T
    below, above = np.maximum(est - low, 0.0), np.maximum(high - est, 0.0)

    def covered(c: float) -> float:
        return float(np.mean((true >= est - c * below) & (true <= est + c * above)))

    return smallest_scale(covered, target_coverage)


BUCKET_DAYS = (4.0, 14.0, 30.0)
"""Where a distance bucket without frames places its factor on the days axis (the buckets are
<= 8, 8-20 and > 20 days)."""


def fit_field_ndvi_scale_by_distance(
    rows: np.ndarray, target_coverage: float = BAND_TARGET
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The curve band's factor c (:func:`fit_field_ndvi_scale`) per bucket of a frame's days to
    clear data (the fifth column of :func:`episode_field_ndvi`'s rows, inf for a frame whose
    pixels are never seen clear; :data:`core.model.blend.DISTANCE_EDGES_DAYS`: <= 8, 8-20,
    > 20 days), each fitted on that bucket's frames alone; where each stands on the days axis:
    the median finite days of the bucket's frames (:data:`BUCKET_DAYS` for a bucket without
    any); and the bucket's frame counts. A day's factor is read off the line through those
    points (:func:`core.curve.band_scale`), so that the band's factor grows smoothly with the
    distance. None where the field-wide factor is (too few frames) or the rows carry no
    distances.

    The pixels' NDVI band, from the samples, is about as wide next to clear data as a month away
    (README, "The uncertainty band"), while a field mean's error grows with the distance; so one
    factor over-covers near data and under-covers far from it. A bucket with under
    :data:`MIN_BUCKET_NDVI_FRAMES` frames takes the field-wide factor. A factor is never below
    a nearer bucket's: errors do not shrink farther from data, and a bucket fitted on a dozen
    frames can come out narrow by chance."""
    overall = fit_field_ndvi_scale(rows, target_coverage)
    if overall is None or rows.shape[1] < 5 or not np.isfinite(rows[:, 4]).any():
        return None
    days = rows[:, 4]
    bucket = distance_bucket(days)  # inf (never seen clear): the farthest
    scales = np.full(len(DISTANCE_EDGES_DAYS) + 1, overall)
    where = np.array(BUCKET_DAYS, np.float64)
    frames = np.zeros(scales.size, np.int64)
    for k in range(scales.size):
        in_bucket = (bucket == k) & ~np.isnan(days)
        frames[k] = in_bucket.sum()
        if (in_bucket & np.isfinite(days)).any():
            where[k] = float(np.median(days[in_bucket & np.isfinite(days)]))
        if frames[k] >= MIN_BUCKET_NDVI_FRAMES:
            scales[k] = _curve_factor(rows[in_bucket], target_coverage)
    return np.maximum.accumulate(scales), where, frames
