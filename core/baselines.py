"""Baseline reconstructions: linear interpolation and the Whittaker smoother, per pixel and band.

Both work on a stack of observations ``(T, B, H, W)`` where NaN means "not observed" (a cloud,
a gap, or a band the source lacks), and answer at any query days. Days are float day numbers
(:func:`core.timeline.to_days`). Both are vectorised: no Python loop runs over pixels.

* :func:`interpolate_linear`: linear in time between each series' valid observations, the
  nearest observation's value outside its observed span.
* :func:`smooth_whittaker`: the Whittaker smoother (Eilers 2003) on a daily grid with
  second-order differences, its smoothing ``lam`` chosen per series by (modified)
  generalised cross-validation (GCV) unless fixed.

How the Whittaker smoother stays fast. Series that share a pattern of valid dates share one
linear operator, and clouds are spatially coherent, so a 64 x 64 x 10-band cube has only about a
thousand distinct patterns among its 40,960 series. Per pattern, the unobserved days are
eliminated exactly: with ``P = D'D`` split into observed (o) and missing (m) days, the daily
solution is ``z_m = A z_o`` with ``A = -P_mm^{-1} P_mo`` (whatever ``lam``) and
``z_o = (I + lam S)^{-1} y`` with the Schur complement ``S = P_oo + P_om A`` (size m x m, m =
number of observed days). One eigendecomposition ``S = U diag(s) U'`` then gives, for every
``lam`` of the grid at once, the fitted values, the residual sum of squares and the trace of the
hat matrix ``sum 1 / (1 + lam s)``, i.e. the exact GCV score of every series of the pattern.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import scipy.linalg
import xarray as xr
from threadpoolctl import threadpool_limits

from core.config import usable_cpus
from core.errors import InputError
from core.reconstruct import Prediction, ReconstructOptions
from core.timeline import to_days

GCV_LAMBDAS: np.ndarray = 10.0 ** np.arange(0.0, 6.01, 0.25)
"""Smoothing values GCV chooses from (daily grid, second differences): 1 to 1e6, 4 per decade.
On a daily grid ``lam`` ~ (smoothing length in days)**4: 1 follows every observation, 1e4
smooths over about 10 days, 1e6 over about 30."""
GCV_GAMMA = 1.4
"""Cost of each effective degree of freedom in the GCV score (Kim & Gu 2004). Plain GCV (1.0)
often undersmooths the short, gappy series of cloudy pixels; 1.4 scored best or tied among 1.0,
1.4 and 2.0 on dates hidden from the shared cubes (see ``benchmarks/baselines_speed.py``)."""
MIN_WHITTAKER_OBSERVATIONS = 3
"""Series with fewer distinct observed days are interpolated linearly instead."""
_COLUMN_CHUNK = 1 << 16
"""Series processed at once by the linear interpolation (bounds its temporary index arrays)."""
WORKERS_ENV = "FIELDFLOW_WHITTAKER_WORKERS"
"""Environment variable: worker processes of the Whittaker smoother on large inputs (default:
the CPUs this process may use; 1 keeps it in the calling process)."""
_pools: dict[int, ProcessPoolExecutor] = {}
"""The smoother's worker processes, per number of workers, kept for the life of this process
(see :func:`_worker_pool`)."""
_pools_lock = threading.Lock()
PARALLEL_MIN_SERIES = 250_000
"""Series (pixels x bands) from which the Whittaker smoother runs in worker processes: below,
shipping the patterns to them, and starting them on a process's first such call (a second or
two), costs more than it saves (a 128 px, 10-band cube is 164 k series and smooths in about
7 s on one core)."""
_CHUNKS_PER_WORKER = 4
"""Bundles of cloud patterns per worker, so that an uneven bundle does not leave the others
idle."""


def interpolate_linear(
    values: np.ndarray, obs_days: np.ndarray, query_days: np.ndarray
) -> np.ndarray:
    """Interpolate each pixel and band linearly in time between its valid observations.

    Outside a series' observed span the nearest observation's value is held; a series with no
    observation at all stays NaN.

    Args:
        values: observations (T, B, H, W) (any trailing shape), NaN where not observed.
        obs_days: observation times (T,) in days, strictly increasing.
        query_days: query times (Q,) in days, any order.

    Returns:
        float32 (Q, B, H, W).
    """
    values, obs_days, query_days = _checked(values, obs_days, query_days)
    series = values.reshape(values.shape[0], -1)
    out = _linear_columns(series, obs_days, query_days)
    return out.reshape(query_days.size, *values.shape[1:])


def smooth_whittaker(
    values: np.ndarray,
    obs_days: np.ndarray,
    query_days: np.ndarray,
    *,
    lam: float | None = None,
    gcv_gamma: float = GCV_GAMMA,
) -> np.ndarray:
    """Whittaker-smooth each pixel and band on a daily grid and read it at the query days.

    Each observation belongs to the grid day ``floor(obs_day)``; observations of one series on
    the same day are averaged. Every observed day has weight 1. The grid of a series spans its
    own first to last observed day; outside that span the nearest end value is held, and a
    fractional query day is interpolated linearly between grid days. Series with fewer than
    :data:`MIN_WHITTAKER_OBSERVATIONS` observed days fall back to :func:`interpolate_linear`;
    series with none stay NaN.

    Args:
        values: observations (T, B, H, W) (any trailing shape), NaN where not observed.
        obs_days: observation times (T,) in days, strictly increasing.
        query_days: query times (Q,) in days.
        lam: smoothing (>= 0; 0 interpolates the observations). None chooses it per series by
            GCV from :data:`GCV_LAMBDAS`.
        gcv_gamma: cost of a degree of freedom in the GCV score (1.0: plain GCV).

    Returns:
        float32 (Q, B, H, W).
    """
    smoothed, _ = _whittaker(values, obs_days, query_days, lam, gcv_gamma)
    return smoothed


def whittaker_lambdas(
    values: np.ndarray, obs_days: np.ndarray, *, gcv_gamma: float = GCV_GAMMA
) -> np.ndarray:
    """The smoothing GCV chooses for each pixel and band (what :func:`smooth_whittaker` uses).

    Args:
        values: observations (T, B, H, W), NaN where not observed.
        obs_days: observation times (T,) in days, strictly increasing.
        gcv_gamma: cost of a degree of freedom in the GCV score (1.0: plain GCV).

    Returns:
        float64 (B, H, W); NaN where a series has too few observed days for the smoother.
    """
    first_day = np.asarray(obs_days, dtype=np.float64)[:1]
    _, lambdas = _whittaker(values, obs_days, first_day, None, gcv_gamma)
    return lambdas


def linear_method(
    observed: xr.Dataset, dates: np.ndarray, options: ReconstructOptions
) -> Prediction:
    """The ``linear`` method of :mod:`core.reconstruct` (deterministic)."""
    values, obs_days, query_days = _method_inputs(observed, dates)
    return Prediction(mean=interpolate_linear(values, obs_days, query_days))


def whittaker_method(
    observed: xr.Dataset, dates: np.ndarray, options: ReconstructOptions
) -> Prediction:
    """The ``whittaker`` method of :mod:`core.reconstruct`; ``options.whittaker_lambda`` fixes
    the smoothing, None chooses it per series by GCV."""
    values, obs_days, query_days = _method_inputs(observed, dates)
    smoothed = smooth_whittaker(values, obs_days, query_days, lam=options.whittaker_lambda)
    return Prediction(mean=np.maximum(smoothed, whittaker_floor(values)))


def whittaker_floor(values: np.ndarray) -> np.ndarray:
    """(1, B, H, W) float32: the lowest each series was observed, and never below 0.

    Across a long gap the smoother can swing below every value the pixel ever showed, down to
    0 for red, where NDVI reads exactly 1.0: 29 reconstructed pixel-dates of be-flanders-a's
    winter did (review 14); reflectance cannot be negative and a swing below all observations
    is the smoother's, not the ground's. Linear interpolation never leaves the range of its
    two observations."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a series never observed: no floor
        lowest = np.nanmin(np.asarray(values, dtype=np.float32), axis=0, keepdims=True)
    return np.maximum(np.nan_to_num(lowest, nan=0.0), np.float32(0.0))


def _method_inputs(
    observed: xr.Dataset, dates: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = observed["s2"].values
    return values, to_days(observed["time_s2"].values), to_days(np.asarray(dates))


def _checked(
    values: np.ndarray, obs_days: np.ndarray, query_days: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.asarray(values)
    obs_days = np.asarray(obs_days, dtype=np.float64)
    query_days = np.atleast_1d(np.asarray(query_days, dtype=np.float64))
    if values.ndim < 1 or obs_days.ndim != 1 or values.shape[0] != obs_days.size:
        raise InputError(
            f"Observations of shape {values.shape} do not match {obs_days.size} observation "
            "days; the first axis must be time."
        )
    if obs_days.size == 0:
        raise InputError("No observation dates: the time series is empty.")
    if np.any(np.diff(obs_days) <= 0) or not np.all(np.isfinite(obs_days)):
        raise InputError("Observation days must be finite and strictly increasing.")
    if query_days.ndim != 1 or not np.all(np.isfinite(query_days)):
        raise InputError("Query days must be a 1-D array of finite day numbers.")
    return values, obs_days, query_days


def _linear_columns(series: np.ndarray, obs_days: np.ndarray, query_days: np.ndarray) -> np.ndarray:
    """Linear interpolation of (T, N) series at (Q,) days -> float32 (Q, N)."""
    n_times, n_series = series.shape
    out = np.empty((query_days.size, n_series), dtype=np.float32)
    # Index of the last acquisition at or before each query day (-1: before the first one).
    last_before = np.searchsorted(obs_days, query_days, side="right") - 1
    times = np.arange(n_times, dtype=np.int32)[:, None]
    for lo in range(0, n_series, _COLUMN_CHUNK):
        block = np.asarray(series[:, lo : lo + _COLUMN_CHUNK], dtype=np.float64)
        finite = np.isfinite(block)
        # prev[t]: latest valid index <= t (-1 if none); next_[t]: earliest valid index >= t.
        prev = np.maximum.accumulate(np.where(finite, times, -1), axis=0)
        next_ = np.minimum.accumulate(np.where(finite, times, n_times)[::-1], axis=0)[::-1]
        cols = np.arange(block.shape[1])
        for qi, (day, k) in enumerate(zip(query_days, last_before, strict=True)):
            before = prev[k] if k >= 0 else np.full(block.shape[1], -1)
            after = next_[k + 1] if k + 1 < n_times else np.full(block.shape[1], n_times)
            has_before, has_after = before >= 0, after < n_times
            i0 = np.clip(before, 0, n_times - 1)
            i1 = np.clip(after, 0, n_times - 1)
            v0, v1 = block[i0, cols], block[i1, cols]
            both = has_before & has_after
            gap = np.where(both, obs_days[i1] - obs_days[i0], 1.0)
            weight = np.where(both, (day - obs_days[i0]) / gap, 0.0)
            # Only one side: hold it; neither side: the series is all NaN, so v1 is NaN.
            value = np.where(both, v0 + weight * (v1 - v0), np.where(has_before, v0, v1))
            out[qi, lo : lo + block.shape[1]] = value
    return out


def _whittaker(
    values: np.ndarray,
    obs_days: np.ndarray,
    query_days: np.ndarray,
    lam: float | None,
    gcv_gamma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed values (Q, ...) float32 and the lambda used per series (...) float64."""
    # Hundreds of tiny LAPACK calls: BLAS threads only add contention (10x slower when the
    # machine is busy), so each process runs single-threaded; on large inputs the patterns
    # are shared out among worker processes (threads would hold the GIL; measured).
    values, obs_days, query_days = _checked(values, obs_days, query_days)
    if lam is not None and not (np.isfinite(lam) and lam >= 0):
        raise InputError(f"The Whittaker smoothing lambda must be a number >= 0, not {lam}.")
    if not gcv_gamma > 0:
        raise InputError(f"The GCV degree-of-freedom cost must be positive, not {gcv_gamma}.")
    lambdas = np.array([float(lam)]) if lam is not None else GCV_LAMBDAS
    series = values.reshape(values.shape[0], -1)
    out = np.full((query_days.size, series.shape[1]), np.nan, dtype=np.float32)
    chosen = np.full(series.shape[1], np.nan)
    groups = _pattern_groups(np.isfinite(series))

    def tasks() -> Iterator[tuple[np.ndarray, np.ndarray]]:  # one group's values at a time
        return ((rows, series[np.ix_(rows, cols)]) for rows, cols in groups)

    workers = whittaker_workers(series.shape[1])
    results = None
    if workers > 1:
        try:
            results = _smooth_in_processes(
                list(tasks()), obs_days, query_days, lambdas, gcv_gamma, workers
            )
        except (OSError, BrokenProcessPool):  # no processes to be had here: do it in this one
            results = None
    if results is None:
        results = _smooth_groups(tasks(), obs_days, query_days, lambdas, gcv_gamma)
    for (_, cols), (smoothed, best) in zip(groups, results, strict=True):
        out[:, cols] = smoothed
        chosen[cols] = best
    return (
        out.reshape(query_days.size, *values.shape[1:]),
        chosen.reshape(values.shape[1:]),
    )


def whittaker_workers(n_series: int) -> int:
    """Worker processes the Whittaker smoother uses for ``n_series`` series: 1 below
    :data:`PARALLEL_MIN_SERIES`, in a daemonic process (a Dask worker, which may not start
    children) or with ``FIELDFLOW_WHITTAKER_WORKERS=1``; else that variable or the CPUs this
    process may use."""
    if n_series < PARALLEL_MIN_SERIES or multiprocessing.current_process().daemon:
        return 1
    text = os.environ.get(WORKERS_ENV, "").strip()
    if text:
        try:
            wanted = int(text)
        except ValueError:
            raise InputError(
                f"{WORKERS_ENV} must be a whole number of processes, not {text!r}."
            ) from None
        return max(1, wanted)
    return usable_cpus()


def _pattern_groups(finite: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The series (columns of ``finite``, (T, N)) grouped by their pattern of valid frames:
    (rows observed, columns) per pattern with at least one observation."""
    # One byte string per series (its valid frames, bit-packed), grouped: far faster than
    # np.unique(..., axis=0), which compares the bytes one column at a time.
    packed = np.ascontiguousarray(np.packbits(finite, axis=0).T)
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    patterns, group_of = np.unique(keys, return_inverse=True)
    group_of = group_of.ravel()
    order = np.argsort(group_of, kind="stable")
    starts = np.searchsorted(group_of[order], np.arange(len(patterns) + 1))
    groups = []
    for g in range(len(patterns)):
        cols = order[starts[g] : starts[g + 1]]
        rows = np.flatnonzero(finite[:, cols[0]])
        if rows.size:
            groups.append((rows, cols))
    return groups


def _smooth_groups(
    tasks: Iterable[tuple[np.ndarray, np.ndarray]],
    obs_days: np.ndarray,
    query_days: np.ndarray,
    lambdas: np.ndarray,
    gcv_gamma: float,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per pattern (its observed rows, and its series' values there (rows, n)), one at a
    time: the series smoothed at the query days (Q, n) float32 and the lambda each chose."""
    grid_day = np.floor(obs_days).astype(np.int64)
    with threadpool_limits(limits=1, user_api="blas"):
        for rows, observed in tasks:
            days, day_of_row = np.unique(grid_day[rows], return_inverse=True)
            observed = np.asarray(observed, dtype=np.float64)
            if days.size < MIN_WHITTAKER_OBSERVATIONS:
                smoothed = _linear_columns(observed, obs_days[rows], query_days)
                yield smoothed.astype(np.float32), np.full(observed.shape[1], np.nan)
                continue
            # Average same-day observations: (m, n_cols) values on the observed grid days.
            if days.size < rows.size:
                counts = np.bincount(day_of_row, minlength=days.size)
                merged = np.zeros((days.size, observed.shape[1]))
                np.add.at(merged, day_of_row, observed)
                observed = merged / counts[:, None]
            operator = _PatternOperator(days)
            fitted, best = operator.fit(observed, lambdas, gcv_gamma)
            yield (operator.read(query_days) @ fitted).astype(np.float32), lambdas[best]


def _smooth_in_processes(
    tasks: list[tuple[np.ndarray, np.ndarray]],
    obs_days: np.ndarray,
    query_days: np.ndarray,
    lambdas: np.ndarray,
    gcv_gamma: float,
    workers: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_smooth_groups` with the patterns dealt out to ``workers`` processes, balanced
    by their cost (an eigendecomposition of the observed days, plus the series)."""
    cost = np.array([rows.size**3 + rows.size * values.shape[1] for rows, values in tasks], float)
    bundles: list[list[int]] = [[] for _ in range(workers * _CHUNKS_PER_WORKER)]
    load = np.zeros(len(bundles))
    for index in np.argsort(-cost, kind="stable"):  # the largest first, onto the lightest
        lightest = int(np.argmin(load))
        bundles[lightest].append(int(index))
        load[lightest] += cost[index]
    bundles = [b for b in bundles if b]
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(tasks)
    pool = _worker_pool(workers)
    try:
        jobs = [
            pool.submit(
                _smooth_bundle, [tasks[i] for i in bundle], obs_days, query_days, lambdas, gcv_gamma
            )
            for bundle in bundles
        ]
        for bundle, job in zip(bundles, jobs, strict=True):
            for index, result in zip(bundle, job.result(), strict=True):
                results[index] = result
    except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh next time
        with _pools_lock:
            if _pools.get(workers) is pool:
                del _pools[workers]
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return results  # type: ignore[return-value]


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """The smoother's pool of ``workers`` spawned processes, started on first use and kept: a
    season's daily curve smooths the field once per chunk of days, and starting two workers
    (each importing numpy and scipy) took 1.5-2 s every time. Idle workers hold about 100 MB
    each; they end with this process."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            context = multiprocessing.get_context("spawn")  # never fork a process running torch
            pool = _pools[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        return pool


def _smooth_bundle(
    tasks: list[tuple[np.ndarray, np.ndarray]],
    obs_days: np.ndarray,
    query_days: np.ndarray,
    lambdas: np.ndarray,
    gcv_gamma: float,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_smooth_groups` of a worker's patterns, all of them."""
    return list(_smooth_groups(tasks, obs_days, query_days, lambdas, gcv_gamma))


class _PatternOperator:
    """The Whittaker smoother of every series observed on the same grid days (see module doc)."""

    def __init__(self, days: np.ndarray) -> None:
        self.first_day = int(days[0])
        n_grid = int(days[-1] - days[0]) + 1
        observed = (days - days[0]).astype(np.int64)
        is_missing = np.ones(n_grid, dtype=bool)
        is_missing[observed] = False
        missing = np.flatnonzero(is_missing)
        table = _second_difference_penalty(n_grid)
        p_oo = _penalty(table, observed[:, None], observed[None, :])
        # extend[i] is the row mapping observed values to grid day i: identity rows on the
        # observed days, A on the missing ones (interpolation through the penalty).
        extend = np.zeros((n_grid, observed.size))
        extend[observed, np.arange(observed.size)] = 1.0
        if missing.size:
            p_mo = _penalty(table, missing[:, None], observed[None, :])
            a = -scipy.linalg.solveh_banded(_banded_upper(table, missing), p_mo, check_finite=False)
            extend[missing] = a
            schur = p_oo + p_mo.T @ a
        else:
            schur = p_oo
        eigenvalues, self.eigenvectors = np.linalg.eigh((schur + schur.T) / 2)
        self.eigenvalues = np.clip(eigenvalues, 0.0, None)
        self.extend = extend

    def fit(
        self, y: np.ndarray, lambdas: np.ndarray, gamma: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Smooth (m, N) observed values; return fitted (m, N) and the chosen lambda index (N,).

        With one lambda it is used as is; with several, each series takes the one of least
        modified GCV score ``m * RSS / (m - gamma * trace(H))**2``; lambdas whose
        denominator is not positive are out (if all are, the largest is taken).
        """
        coeffs = self.eigenvectors.T @ y
        shrink = 1.0 / (1.0 + lambdas[:, None] * self.eigenvalues[None, :])  # (L, m)
        if lambdas.size == 1:
            best = np.zeros(y.shape[1], dtype=np.int64)
        else:
            m = y.shape[0]
            slack = m - gamma * shrink.sum(axis=1)  # (L,)
            usable = np.flatnonzero(slack > 0)
            if usable.size == 0:
                best = np.full(y.shape[1], lambdas.size - 1, dtype=np.int64)
            else:
                rss = ((1.0 - shrink[usable]) ** 2) @ (coeffs**2)  # (L', N)
                score = m * rss / slack[usable, None] ** 2
                best = usable[np.argmin(score, axis=0)]
        fitted = self.eigenvectors @ (shrink[best].T * coeffs)
        return fitted, best

    def read(self, query_days: np.ndarray) -> np.ndarray:
        """(Q, m) map from fitted observed values to query days: linear between grid days,
        the end values held outside the span."""
        n_grid = self.extend.shape[0]
        position = np.clip(query_days - self.first_day, 0.0, n_grid - 1.0)
        i0 = np.floor(position).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_grid - 1)
        weight = (position - i0)[:, None]
        return (1.0 - weight) * self.extend[i0] + weight * self.extend[i1]


def _second_difference_penalty(n: int) -> np.ndarray:
    """Diagonals 0, +1, +2 of ``D'D`` for the (n - 2) x n second-difference matrix D, as a
    (3, n) table: ``D'D[a, a + k] = table[k, a]`` (zero-padded at the end)."""
    table = np.zeros((3, n))
    table[0, : n - 2] += 1.0
    table[0, 1 : n - 1] += 4.0
    table[0, 2:] += 1.0
    table[1, : n - 2] -= 2.0
    table[1, 1 : n - 1] -= 2.0
    table[2, : n - 2] = 1.0
    return table


def _penalty(table: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``D'D[rows, cols]`` for broadcastable grid-index arrays."""
    offset = np.abs(rows - cols)
    entries = table[np.minimum(offset, 2), np.minimum(rows, cols)]
    return np.where(offset <= 2, entries, 0.0)


def _banded_upper(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``D'D[index][:, index]`` in upper banded storage (3, n) for solveh_banded.

    Dropping rows and columns of a matrix of bandwidth 2 keeps the bandwidth at most 2.
    """
    banded = np.zeros((3, index.size))
    for k in range(min(3, index.size)):
        banded[2 - k, k:] = _penalty(table, index[: index.size - k], index[k:])
    return banded
