"""From cube arrays to model inputs (numpy; no torch here).

The model never sees a hidden or cloudy pixel's reflectance: every function here takes
observations where missing values are NaN (see ``core.reconstruct.observations``).

Per S2 frame and pixel the model gets (channel order of :func:`s2_channels`):

* the observed reflectance (0 where not clear) x 10 bands, and the clear flag;
* a *leave-one-out* linear interpolation in time x 10 bands: built from the other frames'
  clear observations only, so at a clear training frame it shows how the frame departs from
  the trend (with ordinary interpolation the model only ever sees the frame itself there);
* which bands the cube has x 10;
* days to the previous and next clear observation (log-scaled), day of year (sin, cos; half a
  year on south of the Tropic of Capricorn, :func:`season_day_of_year`);
* with ``ModelConfig.smooth_features``: a *leave-one-out* Gaussian-kernel smoother in time
  x 10 bands (bandwidth :data:`SMOOTH_BANDWIDTH_DAYS`): an average of every other clear
  observation nearby, so a long gap between two noisy frames is not bridged by those two
  alone (what the Whittaker smoother does better than linear interpolation), and the kernel
  weight it rests on (how much clear data is near that date);
* with ``ModelConfig.whittaker_features``: the Whittaker smoother of :mod:`core.baselines`
  (GCV, the ``whittaker`` baseline exactly) x 10 bands, fitted to each pixel's observations and
  read at the frame's date. Across a long gap its curve carries the slopes at the gap's ends,
  which linear interpolation and the kernel average do not.

Per S1 frame: VV, VH and VV - VH in dB minus their per-pixel mean over the series (so GRD
sigma0 and RTC gamma0, which differ mostly by a per-pixel factor, look alike), a data flag,
the orbit direction and day of year.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from core.timeline import calendar_day, day_of_year, to_days

REFL_SCALE = 5.0
"""Reflectance is multiplied by this inside the model (0.2 -> 1.0)."""
S1_SCALE_DB = 5.0
"""S1 anomalies in dB are divided by this."""
GAP_CAP_DAYS = 365.0
S1_MARGIN_DAYS = 12.0
"""S1 frames this many days beyond a window's first/last S2 frame still belong to it."""
N_BANDS = 10
S2_CHANNELS = 3 * N_BANDS + 5
"""S2 channels without the smoother features."""
S2_SEASON_CHANNELS = slice(S2_CHANNELS - 2, S2_CHANNELS)
"""The day of year's sine and cosine among the S2 channels (both 0 where it is withheld)."""
S2_SMOOTH_CHANNELS = N_BANDS + 1
"""Channels the smoother features add."""
S2_WHITTAKER_CHANNELS = N_BANDS
"""Channels the Whittaker features add."""
GAP_PREV_CHANNEL = 3 * N_BANDS + 1
"""Index of the S2 channel holding the (log-scaled) days to the previous clear observation; the
next channel holds the days to the next one (see :func:`gap_days`)."""
S1_CHANNELS = 7
S1_SEASON_CHANNELS = slice(S1_CHANNELS - 2, S1_CHANNELS)
"""The day of year's sine and cosine among the S1 channels (both 0 where it is withheld)."""
SMOOTH_BANDWIDTH_DAYS = 20.0
"""Standard deviation of the smoother's Gaussian kernel in time."""
SMOOTH_REACH = 3.0
"""Frames beyond this many bandwidths are left out of the smoother."""


def s2_channel_count(smooth_features: bool, whittaker_features: bool = False) -> int:
    """Number of S2 input channels of a model with or without the smoother features."""
    return (
        S2_CHANNELS
        + (S2_SMOOTH_CHANNELS if smooth_features else 0)
        + (S2_WHITTAKER_CHANNELS if whittaker_features else 0)
    )


@dataclass(frozen=True)
class Frames:
    """One spatial window of a series, at its own dates: what the network consumes.

    S2 frames are the observed acquisitions plus the query dates that fall on no acquisition
    day (those carry no observation at all).
    """

    s2: np.ndarray
    """Clear reflectance (T, 10, H, W), NaN where not observed or band absent."""
    days: np.ndarray
    """S2 frame times (T,) in days since 1970 (fractional)."""
    doy: np.ndarray
    """Day of year of each S2 frame (T,)."""
    band_present: np.ndarray
    """(10,) bool: bands the cube holds."""
    s1: np.ndarray
    """S1 anomalies (T1, 3, H, W) (VV, VH, VV-VH; dB minus per-pixel mean), NaN = no data."""
    s1_days: np.ndarray
    """S1 frame times (T1,) in days since 1970."""
    s1_doy: np.ndarray
    """Day of year of each S1 frame (T1,)."""
    s1_ascending: np.ndarray
    """(T1,) bool: ascending orbit."""

    @property
    def clear(self) -> np.ndarray:
        """(T, H, W) bool: some band observed."""
        return np.isfinite(self.s2).any(axis=1)


def s1_anomalies(s1_db: np.ndarray) -> np.ndarray:
    """VV, VH (dB, (T1, 2, H, W)) -> (T1, 3, H, W) anomalies: each minus its per-pixel mean."""
    s1_db = np.asarray(s1_db, dtype=np.float32)
    stack = np.concatenate([s1_db, s1_db[:, :1] - s1_db[:, 1:2]], axis=1)
    if stack.shape[0] == 0:
        return stack
    with _quiet():
        mean = np.nanmean(stack, axis=0, keepdims=True)
    return (stack - np.nan_to_num(mean)).astype(np.float32)


def bracketing_indices(observed: np.ndarray, exclusive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index of the previous and next observed frame for every frame, along axis 0.

    Args:
        observed: bool (T, ...).
        exclusive: if True, frame t itself never counts (leave-one-out).

    Returns:
        ``prev``, ``next``: int arrays (T, ...); -1 / T where there is none.
    """
    n = observed.shape[0]
    # int32: half the memory traffic of the default int64 on these (T, B, H, W) arrays.
    index = np.arange(n, dtype=np.int32).reshape((n,) + (1,) * (observed.ndim - 1))
    prev = np.maximum.accumulate(np.where(observed, index, np.int32(-1)), axis=0)
    nxt = np.flip(
        np.minimum.accumulate(np.flip(np.where(observed, index, np.int32(n)), 0), axis=0), 0
    )
    if exclusive:
        prev = np.concatenate([np.full_like(prev[:1], -1), prev[:-1]], axis=0)
        nxt = np.concatenate([nxt[1:], np.full_like(nxt[:1], n)], axis=0)
    return prev, nxt


def _bracket(
    observed: np.ndarray, days: np.ndarray, exclusive: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """How to interpolate every frame from its neighbours, shapes of ``observed`` (T, ...).

    Returns:
        the frames to take the previous and next value from, their weights (float64), whether
        there is any neighbour, and the days to the previous and next observation (inf where
        there is none). With one neighbour both indices point at it (weights 1 and 0), which
        gives that value exactly.
    """
    prev, nxt = bracketing_indices(observed, exclusive)
    n = observed.shape[0]
    has_prev, has_next = prev >= 0, nxt < n
    prev_c, next_c = np.clip(prev, 0, n - 1), np.clip(nxt, 0, n - 1)
    t = days.reshape((n,) + (1,) * (observed.ndim - 1))
    d_prev = np.where(has_prev, t - days[prev_c], np.inf)
    d_next = np.where(has_next, days[next_c] - t, np.inf)
    span = d_prev + d_next
    with np.errstate(invalid="ignore", divide="ignore"):
        w_next = np.where(np.isfinite(span) & (span > 0), d_prev / span, 0.0)
    w_next = np.where(has_next, np.where(has_prev, w_next, 1.0), 0.0)
    take_prev = np.where(has_prev, prev_c, next_c)
    take_next = np.where(has_next, next_c, prev_c)
    return take_prev, take_next, 1 - w_next, w_next, has_prev | has_next, d_prev, d_next


def interpolate_at_frames(
    values: np.ndarray, days: np.ndarray, exclusive: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel linear interpolation in time at every frame (nearest value beyond the ends).

    Args:
        values: (T, B, H, W), NaN = missing.
        days: (T,) frame times in days.
        exclusive: leave each frame's own value out (leave-one-out interpolation).

    Returns:
        interpolation (T, B, H, W) (NaN where a series has no other value), and the days to
        the previous and next observation (T, B, H, W; read-only), inf where there is none.
    """
    observed = np.isfinite(values)
    if values.shape[1] == 1:
        return _interpolate(values, observed, days, exclusive, None)
    # Nearly always a pixel is observed in every band the cube has or in none: then where its
    # neighbours lie is worked out once per pixel, not once per band (ten times less of that
    # work on a 10-band cube). The few pixels with a band missing on its own (a nodata value
    # in one band) are redone band by band; the numbers are the same either way.
    pixel = observed.any(axis=1, keepdims=True)
    band = observed.any(axis=(0, 2, 3), keepdims=True)
    odd = (observed != (pixel & band)).any(axis=(0, 1))  # (H, W)
    out = _interpolate(values, observed, days, exclusive, (pixel, band))
    if odd.any():
        redo = _interpolate(
            values[:, :, odd][..., None], observed[:, :, odd][..., None], days, exclusive, None
        )
        out = tuple(np.array(whole) for whole in out)  # the distances may be shared views
        for whole, part in zip(out, redo, strict=True):
            whole[:, :, odd] = part[..., 0]
    return out


def _interpolate(
    values: np.ndarray,
    observed: np.ndarray,
    days: np.ndarray,
    exclusive: bool,
    by_pixel: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`interpolate_at_frames`, band by band, or with ``by_pixel`` = (pixel (T, 1, H, W),
    band (1, B, 1, 1)) from one observed pattern per pixel (right where observed equals
    pixel & band)."""
    pattern = observed if by_pixel is None else by_pixel[0]
    take_prev, take_next, w_prev, w_next, some, d_prev, d_next = _bracket(pattern, days, exclusive)
    v_prev = np.take_along_axis(values, np.broadcast_to(take_prev, values.shape), axis=0)
    v_next = np.take_along_axis(values, np.broadcast_to(take_next, values.shape), axis=0)
    out = v_prev * w_prev  # float64, as the weights
    out += v_next * w_next
    out[np.broadcast_to(~some, out.shape)] = np.nan
    shape = values.shape
    d_prev, d_next = (d.astype(np.float32) for d in (d_prev, d_next))
    if by_pixel is not None:  # an absent band has no neighbour anywhere (its values are all NaN)
        d_prev, d_next = (np.where(by_pixel[1], d, np.float32(np.inf)) for d in (d_prev, d_next))
    # With one pattern per pixel the distances are read-only views shared by the bands.
    return out.astype(np.float32), np.broadcast_to(d_prev, shape), np.broadcast_to(d_next, shape)


def kernel_smooth_loo(
    values: np.ndarray, days: np.ndarray, bandwidth: float = SMOOTH_BANDWIDTH_DAYS
) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out Gaussian-kernel average in time of every pixel and band.

    Args:
        values: (T, B, H, W), NaN = missing.
        days: (T,) frame times in days (any order).
        bandwidth: kernel standard deviation in days.

    Returns:
        the smoothed values (T, B, H, W), NaN where no other observation lies within reach,
        and the kernel weight behind each value (T, B, H, W).
    """
    observed = np.isfinite(values)
    n = values.shape[0]
    filled = np.where(observed, values, 0.0).astype(np.float32).reshape(n, -1)
    offset = (np.asarray(days, np.float64)[:, None] - np.asarray(days, np.float64)[None, :]) / (
        bandwidth
    )
    kernel = np.where(np.abs(offset) <= SMOOTH_REACH, np.exp(-0.5 * offset**2), 0.0)
    np.fill_diagonal(kernel, 0.0)  # leave each frame out of its own estimate
    kernel = kernel.astype(np.float32)
    total = (kernel @ filled).reshape(values.shape)
    weight = (kernel @ observed.astype(np.float32).reshape(n, -1)).reshape(values.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = np.where(weight > 1e-3, total / weight, np.nan)
    return smooth.astype(np.float32), weight


def whittaker_at_frames(values: np.ndarray, days: np.ndarray) -> np.ndarray:
    """The ``whittaker`` baseline (GCV per pixel and band) fitted to the observations of
    ``values`` (T, B, H, W; NaN = missing) and read at every frame's day (T, B, H, W; NaN where
    a series has no observation).

    Only frames with some observation enter the fit, so frames with none (dates asked for, a
    hidden frame) change nothing but where the curve is read. Two frames on one day share
    that grid day (the smoother averages them)."""
    from core.baselines import smooth_whittaker

    days = np.asarray(days, dtype=np.float64)
    has = np.isfinite(values).any(axis=tuple(range(1, values.ndim)))
    out = np.full(values.shape, np.nan, dtype=np.float32)
    if not has.any():
        return out
    obs_days = days[has].copy()
    # Strictly increasing for the smoother; a tie keeps its calendar day (the grid is daily).
    for i in range(1, obs_days.size):
        obs_days[i] = max(obs_days[i], obs_days[i - 1] + 1e-6)
    return smooth_whittaker(values[has], obs_days, days)


def _gap_feature(days_to: np.ndarray) -> np.ndarray:
    capped = np.minimum(np.nan_to_num(days_to, nan=GAP_CAP_DAYS, posinf=GAP_CAP_DAYS), GAP_CAP_DAYS)
    return (np.log1p(capped) / np.log1p(GAP_CAP_DAYS)).astype(np.float32)


def gap_days(feature: np.ndarray) -> np.ndarray:
    """Days back from a gap channel's value (the inverse of the log scaling, capped at
    :data:`GAP_CAP_DAYS`)."""
    return np.expm1(np.asarray(feature, np.float64) * np.log1p(GAP_CAP_DAYS))


def fill_missing(interp: np.ndarray, band_present: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Replace NaN in an interpolation (T, B, H, W) by each band's mean over the clear
    observations ``observed`` (T, B, H, W; 0 for absent bands). A pixel with no other clear
    observation gets it. Taken over the observations, not the interpolation, so that it does
    not depend on which dates with no acquisition are asked for."""
    with _quiet():
        band_mean = np.nanmean(observed, axis=(0, 2, 3))
    band_mean = np.where(band_present & np.isfinite(band_mean), band_mean, 0.0)
    return np.where(np.isfinite(interp), interp, band_mean[None, :, None, None]).astype(np.float32)


def season_channels(doy: np.ndarray) -> np.ndarray:
    """(T,) day of year -> (T, 2) float32 sine and cosine; a NaN day (withheld, as
    ``TrainConfig.season_dropout`` does) gives 0 and 0, a point off the unit circle."""
    angle = 2 * np.pi * np.asarray(doy, np.float64) / 365.25
    pair = np.stack([np.sin(angle), np.cos(angle)], axis=1)
    return np.nan_to_num(pair, nan=0.0).astype(np.float32)


def s2_channels(
    frames: Frames,
    smooth_features: bool = False,
    whittaker_features: bool = False,
    whittaker: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Network input of the S2 frames and the interpolation the output corrects.

    ``whittaker``: :func:`whittaker_at_frames` of these frames if already worked out (it is per
    pixel, so a field's, cut to a tile, is the tile's), else it is worked out here.

    Returns:
        channels (T, s2_channel_count(smooth_features, whittaker_features), H, W) float32 and
        ``base``
        (T, 10, H, W): the filled leave-one-out interpolation in model units (reflectance x
        REFL_SCALE).
    """
    s2 = frames.s2
    n, _, height, width = s2.shape
    interp, _, _ = interpolate_at_frames(s2, frames.days, exclusive=True)
    base = fill_missing(interp, frames.band_present, s2) * REFL_SCALE
    clear = frames.clear
    # Gap lengths from the pixel-level clear flags (any band).
    _, gap_prev, gap_next = interpolate_at_frames(
        np.where(clear, 1.0, np.nan)[:, None].astype(np.float32), frames.days, exclusive=True
    )
    obs = np.nan_to_num(s2, nan=0.0) * REFL_SCALE
    present = np.broadcast_to(
        frames.band_present.astype(np.float32)[None, :, None, None], (n, N_BANDS, height, width)
    )
    seasonal = season_channels(frames.doy)
    seasonal = np.broadcast_to(seasonal[:, :, None, None], (n, 2, height, width))
    parts = [
        obs,
        clear[:, None].astype(np.float32),
        base,
        present,
        _gap_feature(gap_prev),
        _gap_feature(gap_next),
        seasonal,
    ]
    if smooth_features:
        smooth, weight = kernel_smooth_loo(s2, frames.days)
        smooth = np.where(np.isfinite(smooth), smooth * REFL_SCALE, base)
        support = np.log1p(weight.max(axis=1, keepdims=True)) / np.log1p(10.0)
        parts += [smooth.astype(np.float32), support.astype(np.float32)]
    if whittaker_features:
        if whittaker is None:
            whittaker = whittaker_at_frames(s2, frames.days)
        curve = np.maximum(whittaker, 0.0) * REFL_SCALE
        parts.append(np.where(np.isfinite(curve), curve, base).astype(np.float32))
    channels = np.concatenate(parts, axis=1)
    return channels.astype(np.float32, copy=False), base.astype(np.float32, copy=False)


def s1_channels(frames: Frames) -> np.ndarray:
    """Network input of the S1 frames: (T1, S1_CHANNELS, H, W) float32."""
    s1 = frames.s1
    n = s1.shape[0]
    height, width = frames.s2.shape[2:]
    if n == 0:
        return np.zeros((0, S1_CHANNELS, height, width), dtype=np.float32)
    has = np.isfinite(s1).all(axis=1, keepdims=True)
    anomalies = np.where(has, np.nan_to_num(s1, nan=0.0), 0.0) / S1_SCALE_DB
    per_frame = np.concatenate(
        [frames.s1_ascending.astype(np.float32)[:, None], season_channels(frames.s1_doy)], axis=1
    )
    per_frame = np.broadcast_to(per_frame[:, :, None, None], (n, 3, height, width))
    return np.concatenate([anomalies, has.astype(np.float32), per_frame], axis=1).astype(np.float32)


def frames_for_query(
    s2: np.ndarray,
    times_s2: np.ndarray,
    query_times: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge acquisitions and query dates into one frame list.

    A query on the calendar day of an acquisition uses that acquisition's frame (cloud
    removal); any other query becomes a frame with no observation (anytime reconstruction).

    Args:
        s2: clear reflectance (T, 10, H, W), NaN where missing.
        times_s2: acquisition times (T,) datetime64.
        query_times: (Q,) datetime64.

    Returns:
        s2 of all frames (N, 10, H, W), frame times (N,) datetime64[ns], and for each query the
        index of its frame (Q,).
    """
    obs_day = calendar_day(times_s2)
    extra = [
        q
        for q in np.asarray(query_times, "datetime64[ns]")
        if not np.any(obs_day == calendar_day(np.array([q]))[0])
    ]
    extra_times = np.array(extra, dtype="datetime64[ns]")
    all_times = np.concatenate([np.asarray(times_s2, "datetime64[ns]"), extra_times])
    order = np.argsort(all_times, kind="stable")
    blank = np.full((len(extra), *s2.shape[1:]), np.nan, dtype=np.float32)
    all_s2 = np.concatenate([s2.astype(np.float32), blank])[order]
    all_times = all_times[order]
    frame_day = calendar_day(all_times)
    is_obs = order < len(times_s2)
    query_index = np.empty(len(query_times), dtype=np.int64)
    for qi, q in enumerate(calendar_day(np.asarray(query_times, "datetime64[ns]"))):
        matches = np.flatnonzero((frame_day == q) & is_obs)
        if matches.size == 0:
            matches = np.flatnonzero(all_times == np.asarray(query_times, "datetime64[ns]")[qi])
        query_index[qi] = matches[0]
    return all_s2, all_times, query_index


SOUTHERN_SEASON_LATITUDE = -23.44
"""South of this latitude (the Tropic of Capricorn) a date's day of year is read half a year on
(:func:`season_day_of_year`)."""
HALF_YEAR_DAYS = 365.25 / 2


def in_southern_seasons(latitude: float | None) -> bool:
    """Whether a place at ``latitude`` (degrees; None: unknown) has the southern temperate
    seasons, half a year from the northern ones."""
    return latitude is not None and latitude < SOUTHERN_SEASON_LATITUDE


def season_day_of_year(times: np.ndarray, latitude: float | None = None) -> np.ndarray:
    """The day of year (1..366, float64) the network reads for each time: the calendar's, and
    half a year on south of the Tropic of Capricorn. Every training site of the shipped model
    lies north of it, so the network learnt the seasons of the north from the day of year: a
    field at 35 degrees S is green in what it takes for winter. Read half a year on, its season
    enters as a northern field's would (README, the model: the seasons south of the tropics).
    The tropics keep the calendar: their seasons follow the rains, and a training site lies
    there (tz-arusha, 3 degrees S)."""
    doy = day_of_year(times)
    if in_southern_seasons(latitude):
        doy = (doy - 1.0 + HALF_YEAR_DAYS) % 365.25 + 1.0
    return doy


def times_to_days_and_doy(
    times: np.ndarray, latitude: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) datetime64 -> (days since 1970, the season's day of year at ``latitude``: see
    :func:`season_day_of_year`), both float64."""
    return to_days(times), season_day_of_year(times, latitude)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's 'mean of empty slice' warnings for all-NaN series (expected here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


@dataclass(frozen=True)
class WindowInputs:
    """Network-ready arrays of one temporal window of one spatial tile."""

    s2: np.ndarray
    """S2 channels (T, S2_CHANNELS, H, W)."""
    base: np.ndarray
    """Filled leave-one-out interpolation (T, 10, H, W), model units."""
    days: np.ndarray
    """(T,) S2 frame days."""
    band_present: np.ndarray
    """(10,) bool."""
    s1: np.ndarray
    """S1 channels (T1, S1_CHANNELS, H, W)."""
    s1_days: np.ndarray
    """(T1,) S1 frame days."""


def series_inputs(
    frames: Frames,
    smooth_features: bool = False,
    whittaker_features: bool = False,
    whittaker: np.ndarray | None = None,
) -> WindowInputs:
    """Channels of a whole series (one spatial tile): the interpolation and gap features use
    every frame of the series, so windows cut from it lose no information. ``whittaker``: see
    :func:`s2_channels`."""
    channels, base = s2_channels(frames, smooth_features, whittaker_features, whittaker)
    return WindowInputs(
        s2=channels,
        base=base,
        days=frames.days,
        band_present=frames.band_present,
        s1=s1_channels(frames),
        s1_days=frames.s1_days,
    )


def window_inputs(series: WindowInputs, start: int, stop: int, margin_days: float) -> WindowInputs:
    """S2 frames [start, stop) of ``series`` and the S1 frames within their span +- margin."""
    return select_frames(series, np.arange(start, stop), margin_days)


def select_frames(series: WindowInputs, frames: np.ndarray, margin_days: float) -> WindowInputs:
    """The S2 frames ``frames`` (sorted indices) of ``series`` and the S1 frames within their
    span +- margin."""
    days = series.days[frames]
    keep = (series.s1_days >= days[0] - margin_days) & (series.s1_days <= days[-1] + margin_days)
    return WindowInputs(
        s2=series.s2[frames],
        base=series.base[frames],
        days=days,
        band_present=series.band_present,
        s1=series.s1[keep],
        s1_days=series.s1_days[keep],
    )
