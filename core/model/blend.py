"""Per-field blend of the model's best estimate with the Whittaker smoother.

A model trained on a handful of sites corrects interpolation well where it has seen similar
fields and less well elsewhere; on some fields the Whittaker smoother is the better guess,
mostly far from any clear observation. Which one to trust is measured on the user's own cube:
its clear observations are hidden in self-supervised episodes (the ones per-field calibration
uses), both reconstruct them, and for each band and each bucket of distance to the nearest
clear observation the blend weight ``w`` of the smoother that minimises the MAE is kept. At
inference every value moves by ``w * (whittaker - model)``; the samples move with their mean.

Nothing else is fitted: the weights use only the cube's own clear observations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.model.features import N_BANDS, bracketing_indices

DISTANCE_EDGES_DAYS = (8.0, 20.0)
"""Buckets of days to the nearest clear observation of a pixel: <= 8, 8-20, > 20."""
SPAN_EDGES_DAYS = (20.0, 40.0)
"""Buckets of the span of a pixel's gap, days from its clear observation before to the one
after: <= 20 (a frame or a few missing), 20-40, > 40 (a long gap; or clear data on one side
only)."""
MEASURES = {"distance": DISTANCE_EDGES_DAYS, "span": SPAN_EDGES_DAYS}
"""What a blend's weights are bucketed by, and the buckets' edges."""
BLEND_MEASURE = "distance"
"""The measure a field's blend is fitted with (:func:`core.model.inference.field_checkpoint`)."""
BLEND_GRID = np.round(np.linspace(0.0, 1.0, 11), 2)
"""Weights of the smoother that are tried."""
MIN_VALUES = 200
"""A (band, bucket) with fewer hidden values takes its band's weight; a band with fewer, 0."""


@dataclass(frozen=True)
class FieldBlend:
    """Weights of the Whittaker smoother per band and bucket of :attr:`measure` (0: the model
    alone)."""

    weights: np.ndarray
    """(N_BANDS, number of buckets of ``measure``) in [0, 1]."""
    fitted: np.ndarray | None = None
    """(N_BANDS,) bool: the bands that had values enough to fit (None: all)."""
    measure: str = "distance"
    """What the buckets are of (:data:`MEASURES`): a pixel's days to its nearest clear
    observation, or the span of its gap."""
    measured: np.ndarray | None = None
    """(number of buckets,) bool: the buckets where some band had :data:`MIN_VALUES` hidden
    values and so a weight of its own; elsewhere every band took its field-wide weight (None:
    not known)."""

    @property
    def edges(self) -> tuple[float, ...]:
        """The buckets' edges in days."""
        return MEASURES[self.measure]

    def delta(self, mean: np.ndarray, smoother: np.ndarray, key: np.ndarray) -> np.ndarray:
        """What the blend adds to ``mean`` (Q, B, H, W): ``w * (smoother - mean)``, 0 where the
        smoother has no value. ``key`` (Q, H, W): each pixel's :attr:`measure` in days
        (:func:`blend_inputs`)."""
        w = np.moveaxis(self.weights[:, bucket_of(key, self.edges)], 0, 1)  # (Q, B, H, W)
        return _shift(w, mean, smoother)

    def delta_values(
        self, mean: np.ndarray, smoother: np.ndarray, band: np.ndarray, key: np.ndarray
    ) -> np.ndarray:
        """:meth:`delta` of single values (1-D arrays, ``band`` the band index of each)."""
        return _shift(self.weights[band, bucket_of(key, self.edges)], mean, smoother)

    def attrs(self) -> dict[str, object]:
        """The weights as NetCDF attributes: all of them (bands x buckets, flattened band by
        band), what they are bucketed by and the edges, and per bucket their mean over the
        bands that were fitted (a band without values keeps 0 and is left out)."""
        fitted = np.ones(N_BANDS, bool) if self.fitted is None else self.fitted
        mean = self.weights[fitted].mean(axis=0) if fitted.any() else np.zeros(len(self.weights[0]))
        return {
            "blend_measure": self.measure,
            f"blend_{self.measure}_edges_days": np.asarray(self.edges),
            "blend_weights": np.round(self.weights, 2).ravel(),
            "blend_mean_weights": np.round(mean, 3),
            **(
                {"blend_measured_buckets": self.measured.astype(np.int8)}
                if self.measured is not None
                else {}
            ),
        }


def _shift(w: np.ndarray, mean: np.ndarray, smoother: np.ndarray) -> np.ndarray:
    gap = np.where(np.isfinite(smoother), smoother - mean, 0.0)
    return (w * gap).astype(np.float32)


def distance_bucket(distance: np.ndarray) -> np.ndarray:
    """Bucket index of each distance in days (see :data:`DISTANCE_EDGES_DAYS`)."""
    return bucket_of(distance, DISTANCE_EDGES_DAYS)


def bucket_of(days: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Bucket index of each value in days: 0 up to ``edges[0]`` inclusive, and so on."""
    return np.searchsorted(np.asarray(edges), days, side="left")


def nearest_clear_days(clear: np.ndarray, days: np.ndarray, query_days: np.ndarray) -> np.ndarray:
    """Days from each query to the nearest clear observation of each pixel.

    Args:
        clear: (T, H, W) bool, a pixel's clear observations.
        days: (T,) their times in days, increasing.
        query_days: (Q,) query times in days.

    Returns:
        (Q, H, W) float32; inf where a pixel has no clear observation.
    """
    before, after, at = _clear_around(clear, days, query_days)
    return np.minimum(at - before, after - at).astype(np.float32)


def clear_span_days(clear: np.ndarray, days: np.ndarray, query_days: np.ndarray) -> np.ndarray:
    """The span of the gap each query falls in, per pixel: days from the last clear observation
    at or before it to the first at or after it (0 at a clear observation).

    Args: as :func:`nearest_clear_days`.

    Returns:
        (Q, H, W) float32; inf where a pixel has no clear observation on one side or both.
    """
    before, after, _ = _clear_around(clear, days, query_days)
    return (after - before).astype(np.float32)


def _clear_around(
    clear: np.ndarray, days: np.ndarray, query_days: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query and pixel, the day of the last clear observation at or before the query and
    of the first at or after it ((Q, H, W) float64; -inf / inf where there is none), and the
    query days shaped to broadcast against them."""
    days = np.asarray(days, np.float64)
    query_days = np.asarray(query_days, np.float64)
    n = days.size
    shape = (query_days.size, *clear.shape[1:])
    before = np.full(shape, -np.inf)
    after = np.full(shape, np.inf)
    at = query_days.reshape((-1,) + (1,) * (clear.ndim - 1))
    if n == 0:
        return before, after, at
    prev, nxt = bracketing_indices(clear, exclusive=False)
    at_or_before = np.searchsorted(days, query_days, side="right") - 1
    at_or_after = np.searchsorted(days, query_days, side="left")
    for q, (b, a) in enumerate(zip(at_or_before, at_or_after, strict=True)):
        if b >= 0:
            p = prev[b]
            before[q] = np.where(p >= 0, days[np.clip(p, 0, n - 1)], -np.inf)
        if a < n:
            x = nxt[a]
            after[q] = np.where(x < n, days[np.clip(x, 0, n - 1)], np.inf)
    return before, after, at


def days_to_clear(values: np.ndarray, days: np.ndarray, query_days: np.ndarray) -> np.ndarray:
    """:func:`nearest_clear_days` of observations ``values`` (T, B, H, W, NaN where not
    observed): a pixel is clear at a date where any band holds a value."""
    return nearest_clear_days(np.isfinite(values).any(axis=1), days, query_days)


def blend_key(
    values: np.ndarray, days: np.ndarray, query_days: np.ndarray, measure: str
) -> np.ndarray:
    """Each pixel's ``measure`` (:data:`MEASURES`) at the query days (Q, H, W), from
    observations ``values`` (T, B, H, W, NaN where not observed; a pixel is clear at a date
    where any band holds a value)."""
    clear = np.isfinite(values).any(axis=1)
    if measure == "span":
        return clear_span_days(clear, days, query_days)
    return nearest_clear_days(clear, days, query_days)


def blend_inputs(
    values: np.ndarray,
    days: np.ndarray,
    query_days: np.ndarray,
    lam: float | None = None,
    measure: str = "distance",
) -> tuple[np.ndarray, np.ndarray]:
    """What a blend needs at the query days: the Whittaker smoother of ``values`` (T, B, H, W,
    NaN where not observed; as the ``whittaker`` method, GCV unless ``lam`` is given, and never
    below the lowest the pixel was observed, nor below 0: :func:`core.baselines.whittaker_floor`)
    and each pixel's ``measure`` (Q, H, W; :func:`blend_key`)."""
    from core.baselines import smooth_whittaker, whittaker_floor

    smoother = np.maximum(
        smooth_whittaker(values, days, query_days, lam=lam), whittaker_floor(values)
    )
    return smoother, blend_key(values, days, query_days, measure)


def fit_blend(
    model: np.ndarray,
    smoother: np.ndarray,
    truth: np.ndarray,
    band: np.ndarray,
    key: np.ndarray,
    measure: str = "distance",
) -> FieldBlend:
    """The weights that minimise the MAE of the blend on hidden values (all 1-D, one entry per
    hidden clear value: model mean, smoother (NaN: none), truth, band index, and the value's
    ``measure`` in days: its distance to clear data or its gap's span, see :data:`MEASURES`).
    """
    usable = np.isfinite(smoother) & np.isfinite(truth) & np.isfinite(model)
    bucket = bucket_of(key, MEASURES[measure])
    n_buckets = len(MEASURES[measure]) + 1
    weights = np.zeros((N_BANDS, n_buckets))
    fitted = np.zeros(N_BANDS, bool)
    measured = np.zeros(n_buckets, bool)
    for b in range(N_BANDS):
        in_band = usable & (band == b)
        if in_band.sum() < MIN_VALUES:
            continue
        fitted[b] = True
        band_weight = _best_weight(model[in_band], smoother[in_band], truth[in_band])
        for k in range(n_buckets):
            sel = in_band & (bucket == k)
            own = sel.sum() >= MIN_VALUES
            measured[k] |= own
            weights[b, k] = (
                _best_weight(model[sel], smoother[sel], truth[sel]) if own else band_weight
            )
    return FieldBlend(weights=weights, fitted=fitted, measure=measure, measured=measured)


def _best_weight(model: np.ndarray, smoother: np.ndarray, truth: np.ndarray) -> float:
    """The grid weight with the lowest MAE; ties go to the smaller weight (the model)."""
    errors = [np.mean(np.abs(model + w * (smoother - model) - truth)) for w in BLEND_GRID]
    return float(BLEND_GRID[int(np.argmin(errors))])


NDVI_METHODS = ("model", "whittaker", "linear")
"""The methods :class:`NdviScores` holds figures of, in their order."""
MIN_NDVI_FRAMES = 10
"""Hidden frames a field's mean-NDVI error needs (fewer would say little)."""


@dataclass(frozen=True)
class NdviScores:
    """How the methods did in NDVI, the index the curve shows, on a field's hidden clear pixels
    (the values :class:`FieldScores` scores, where a pixel's red and NIR were both hidden):
    mean absolute NDVI errors of the model (its cross-fitted blend), Whittaker and linear
    (:data:`NDVI_METHODS`' order), per pixel and on each hidden frame's mean."""

    pixel: tuple[float, ...]
    """MAE of each hidden pixel's NDVI."""
    pixels: int
    """Hidden pixels scored (those every method gives an NDVI)."""
    frame_mean: tuple[float, ...] | None
    """MAE of each hidden frame's mean NDVI over its hidden pixels, the error of a point of
    the field's curve; None with under :data:`MIN_NDVI_FRAMES` frames."""
    frames: int
    """Hidden frames of an episode with enough pixels to take their mean."""

    def attrs(self) -> dict[str, object]:
        attrs: dict[str, object] = {
            "model_field_ndvi_mae": np.round(self.pixel, 4),
            "model_field_ndvi_pixels": int(self.pixels),
            "model_field_ndvi_frames": int(self.frames),
        }
        if self.frame_mean is not None:
            attrs["model_field_mean_ndvi_mae"] = np.round(self.frame_mean, 4)
        return attrs


@dataclass(frozen=True)
class FieldScores:
    """How the methods did on a field's own clear pixels, hidden in turn (the episodes its blend
    and band are fitted on): mean absolute reflectance error of each, on the same values."""

    model: float
    """The model's estimate as a Run makes it: the network tuned to the field, blended with the
    smoother by weights fitted on the *other* half of the episodes (so not flattered by them)."""
    network: float
    """The network's own estimate, before the blend."""
    whittaker: float
    linear: float
    values: int
    """Hidden clear values scored (those every method has a value for)."""
    episodes: int
    before_tuning: bool = False
    """The network scored is the one before its tuning to the field (which learns from the same
    pixels, so that its error there would flatter it)."""
    by_distance: np.ndarray | None = None
    """(buckets, 4): values scored, then the model's, Whittaker's and linear MAE, per bucket of
    days from the hidden value to the nearest visible clear observation
    (:data:`DISTANCE_EDGES_DAYS`: a frame or two missing, a cloudy spell, a long gap); NaN MAEs
    where a bucket has no values. None where the values' distances were not given."""

    ndvi: NdviScores | None = None
    """The same methods' NDVI errors on the hidden pixels (None: none had red and NIR)."""
    ratio_range: tuple[float, float] | None = None
    """p10 and p90 of the model's error over the better baseline's when the episodes are
    resampled (:func:`episode_ratio_range`): how far the figure rests on which episodes were
    drawn. None with under two episodes."""

    def attrs(self) -> dict[str, object]:
        attrs: dict[str, object] = {
            "model_field_mae": np.round([self.model, self.network, self.whittaker, self.linear], 5),
            "model_field_mae_values": int(self.values),
            "model_field_mae_episodes": int(self.episodes),
            "model_field_mae_before_tuning": int(self.before_tuning),
        }
        if self.by_distance is not None:  # flat: attributes hold 1-D arrays only
            attrs["model_field_mae_by_distance"] = np.round(self.by_distance, 5).ravel()
        if self.ndvi is not None:
            attrs.update(self.ndvi.attrs())
        if self.ratio_range is not None:
            attrs["model_field_mae_ratio_range"] = np.round(self.ratio_range, 4)
        return attrs


def better_baseline_of(model: float, whittaker: float, linear: float) -> tuple[str, float]:
    """The baseline that erred less ("whittaker" or "linear"; linear on a tie) and the model's
    error over its error (NaN where it erred nothing): how :class:`FieldScores` are read."""
    method, better = ("whittaker", whittaker) if whittaker < linear else ("linear", linear)
    return method, (model / better if better > 0 else float("nan"))


def field_ratio(attrs: Mapping[str, Any]) -> tuple[str, float] | None:
    """:func:`better_baseline_of` for a model reconstruction's recorded field scores
    (``model_field_mae``); None where the Run did not measure them."""
    if "model_field_mae" not in attrs:
        return None
    model, _network, whittaker, linear = (float(v) for v in attrs["model_field_mae"])
    return better_baseline_of(model, whittaker, linear)


def cross_fitted_blend(
    network: np.ndarray,
    smoother: np.ndarray,
    truth: np.ndarray,
    band: np.ndarray,
    key: np.ndarray,
    episode: np.ndarray,
    measure: str = "distance",
) -> np.ndarray | None:
    """The network's estimate of each hidden value blended with the smoother by weights fitted
    on the *other* half of the episodes (odd episodes fit the even ones' weights and the other
    way round), so that no value is scored by weights fitted on it; NaN where a method or the
    truth has no value. 1-D arrays as :func:`fit_blend` takes them, ``episode`` the episode
    each value comes from. None where one half has no value every method has."""
    usable = _usable(network, smoother, truth)
    half = episode % 2 == 1
    blended = np.full(network.shape, np.nan, np.float64)
    for scored in (half, ~half):
        fit_on = usable & ~scored
        at = usable & scored
        if not fit_on.any() or not at.any():
            return None
        blend = fit_blend(
            network[fit_on], smoother[fit_on], truth[fit_on], band[fit_on], key[fit_on], measure
        )
        blended[at] = network[at] + blend.delta_values(network[at], smoother[at], band[at], key[at])
    return blended


def _usable(*arrays: np.ndarray) -> np.ndarray:
    usable = np.ones(arrays[0].shape, bool)
    for values in arrays:
        usable &= np.isfinite(values)
    return usable


def field_scores(
    network: np.ndarray,
    smoother: np.ndarray,
    linear: np.ndarray,
    truth: np.ndarray,
    band: np.ndarray,
    key: np.ndarray,
    episode: np.ndarray,
    measure: str = "distance",
    scale: float = 1.0,
    tuned: bool = False,
    blended: np.ndarray | None = None,
) -> FieldScores | None:
    """Score the model, the network alone and both baselines on the same hidden values (1-D,
    one entry per value, as :func:`fit_blend` takes them; ``linear``: linear interpolation
    of the visible values; ``episode``: the episode each value comes from). The model's blend
    is cross-fitted (:func:`cross_fitted_blend`; pass ``blended`` where it was made already).
    Errors divided by ``scale`` (the arrays' units per reflectance unit). None where
    one half has no values every method has. ``tuned``: ``network`` is the network before a
    tuning the Run's model had (recorded as ``before_tuning``)."""
    if blended is None:
        blended = cross_fitted_blend(network, smoother, truth, band, key, episode, measure)
    if blended is None:
        return None
    usable = _usable(blended, smoother, linear, truth)
    half = episode % 2 == 1
    if not (usable & half).any() or not (usable & ~half).any():
        return None

    def mae(values: np.ndarray, where: np.ndarray = usable) -> float:
        if not where.any():
            return float("nan")
        return float(np.mean(np.abs(values[where] - truth[where])) / scale)

    by_distance = None
    if measure == "distance":
        bucket = distance_bucket(key)
        rows = []
        for b in range(len(DISTANCE_EDGES_DAYS) + 1):
            at = usable & (bucket == b)
            rows.append([at.sum(), mae(blended, at), mae(smoother, at), mae(linear, at)])
        by_distance = np.asarray(rows, np.float64)
    return FieldScores(
        model=mae(blended),
        network=mae(network),
        whittaker=mae(smoother),
        linear=mae(linear),
        values=int(usable.sum()),
        episodes=int(np.unique(episode).size),
        before_tuning=tuned,
        by_distance=by_distance,
        ratio_range=episode_ratio_range(
            [np.abs(m[usable] - truth[usable]) for m in (blended, smoother, linear)],
            episode[usable],
        ),
    )


RESAMPLINGS = 500
"""Resamplings of a field's episodes behind :attr:`FieldScores.ratio_range`."""


def episode_ratio_range(
    errors: list[np.ndarray], episode: np.ndarray, seed: int = 0
) -> tuple[float, float] | None:
    """p10 and p90 of the model's summed error over the better baseline's, with the episodes
    resampled with replacement (:data:`RESAMPLINGS` times, seeded): ``errors`` are the absolute
    errors of the model, Whittaker and linear on the same values, ``episode`` each value's
    episode. Episodes, not values, are resampled: a value's error goes with its episode's
    (its hidden window, its weather). Measured on the shared cubes (2026-12-07), five seeds of
    24 episodes gave be-flanders-a's ratio 0.78-0.87 and ranges 0.06-0.09 wide, hu-alfold's
    0.94-0.98 and 0.03-0.06 wide: a little narrower than the seeds' own spread, so a lower
    bound on how much a Run's figure rests on its draw. None with under two episodes."""
    ids, index = np.unique(episode, return_inverse=True)
    if ids.size < 2:
        return None
    sums = np.stack([np.bincount(index, e, ids.size) for e in errors])  # (3, episodes)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, ids.size, (RESAMPLINGS, ids.size))
    totals = sums[:, picks].sum(axis=2)  # (3, RESAMPLINGS)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = totals[0] / np.minimum(totals[1], totals[2])
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return None
    low, high = np.percentile(ratios, [10, 90])
    return float(low), float(high)
