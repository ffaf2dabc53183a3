"""Baselines: linear interpolation and the Whittaker smoother on hand-made series."""

from __future__ import annotations

import numpy as np
import pytest

from core.baselines import (
    GCV_GAMMA,
    GCV_LAMBDAS,
    interpolate_linear,
    smooth_whittaker,
    whittaker_lambdas,
)
from core.errors import InputError

NAN = np.nan


def _stack(*series: list[float]) -> np.ndarray:
    """Series (each T values) -> (T, 1, 1, N): one band, one row, N pixels."""
    return np.array(series, dtype=np.float64).T[:, None, None, :]


def _dense_whittaker(days: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Reference: solve (W + lam D'D) z = W y on the daily grid directly; also the trace of the
    hat matrix at the observed days."""
    grid = np.arange(days.min(), days.max() + 1)
    n = grid.size
    d2 = np.diff(np.eye(n), 2, axis=0)
    weights = np.isin(grid, days).astype(float)
    target = np.zeros(n)
    target[np.searchsorted(grid, days)] = y
    system = np.diag(weights) + lam * d2.T @ d2
    hat = np.linalg.solve(system, np.diag(weights))
    observed = np.searchsorted(grid, days)
    return hat @ target, float(np.trace(hat[np.ix_(observed, observed)]))


# --- linear -----------------------------------------------------------------------------------


def test_linear_midpoints_nearest_outside_span_and_never_observed() -> None:
    days = np.array([0.0, 10.0, 20.0, 30.0])
    values = _stack(
        [0.1, NAN, 0.3, NAN],  # observed at 0 and 20
        [NAN, NAN, NAN, NAN],  # never observed
        [NAN, 0.5, NAN, 0.7],  # observed at 10 and 30
    )
    query = np.array([-5.0, 0.0, 5.0, 10.0, 20.0, 25.0, 30.0, 35.0])
    out = interpolate_linear(values, days, query)[:, 0, 0, :]
    np.testing.assert_allclose(out[:, 0], [0.1, 0.1, 0.15, 0.2, 0.3, 0.3, 0.3, 0.3], rtol=1e-6)
    assert np.isnan(out[:, 1]).all()
    np.testing.assert_allclose(out[:, 2], [0.5, 0.5, 0.5, 0.5, 0.6, 0.65, 0.7, 0.7], rtol=1e-6)


def test_linear_uses_fractional_days_and_keeps_band_nan() -> None:
    days = np.array([0.5, 2.5])
    values = np.full((2, 2, 1, 1), NAN)
    values[:, 0, 0, 0] = [0.2, 0.6]  # band 1 is absent: all NaN
    out = interpolate_linear(values, days, np.array([1.0, 2.0]))
    np.testing.assert_allclose(out[:, 0, 0, 0], [0.3, 0.5], rtol=1e-6)
    assert np.isnan(out[:, 1]).all()
    assert out.shape == (2, 2, 1, 1) and out.dtype == np.float32


def test_linear_rejects_unsorted_days() -> None:
    with pytest.raises(InputError, match="strictly increasing"):
        interpolate_linear(np.zeros((2, 1, 1, 1)), np.array([3.0, 1.0]), np.array([2.0]))


# --- Whittaker --------------------------------------------------------------------------------


def test_whittaker_matches_direct_solve_of_the_daily_system() -> None:
    rng = np.random.default_rng(3)
    days = np.array([0, 2, 3, 9, 15, 16, 30, 31, 44, 50], dtype=float)
    y = rng.normal(0.3, 0.05, days.size)
    for lam in (0.5, 30.0, 5e4):
        expected, _ = _dense_whittaker(days, y, lam)
        out = smooth_whittaker(_stack(y), days, np.arange(51.0), lam=lam)[:, 0, 0, 0]
        np.testing.assert_allclose(out, expected, atol=1e-6, err_msg=f"lam={lam}")


def test_whittaker_recovers_a_straight_line_at_any_lambda() -> None:
    days = np.array([0, 3, 10, 11, 25, 40, 41, 60], dtype=float)
    line = 0.2 + 0.01 * days
    query = np.arange(61.0)
    for lam in (1.0, 1e6, None):
        out = smooth_whittaker(_stack(line), days, query, lam=lam)[:, 0, 0, 0]
        np.testing.assert_allclose(out, 0.2 + 0.01 * query, atol=1e-5, err_msg=f"lam={lam}")


def test_whittaker_small_lambda_follows_a_quadratic_large_lambda_flattens_it() -> None:
    days = np.arange(0.0, 61.0, 4.0)
    quadratic = 0.001 * (days - 30.0) ** 2
    query = np.arange(61.0)
    truth = 0.001 * (query - 30.0) ** 2
    small = smooth_whittaker(_stack(quadratic), days, query, lam=1.0)[:, 0, 0, 0]
    large = smooth_whittaker(_stack(quadratic), days, query, lam=1e9)[:, 0, 0, 0]
    assert np.abs(small - truth).max() < 0.01  # the curve spans 0 to 0.9
    # lam -> infinity: the least-squares straight line through the observations.
    slope, intercept = np.polyfit(days, quadratic, 1)
    np.testing.assert_allclose(large, intercept + slope * query, atol=1e-3)
    assert np.abs(large - truth).max() > 0.2


def test_whittaker_with_lambda_zero_interpolates_the_observations() -> None:
    rng = np.random.default_rng(0)
    days = np.array([0, 5, 6, 12, 20, 33], dtype=float)
    y = rng.uniform(0.0, 0.5, days.size)
    exact = smooth_whittaker(_stack(y), days, days, lam=0.0)[:, 0, 0, 0]
    np.testing.assert_allclose(exact, y, atol=1e-6)
    nearly = smooth_whittaker(_stack(y), days, days, lam=1e-4)[:, 0, 0, 0]
    np.testing.assert_allclose(nearly, y, atol=1e-3)
    smooth = smooth_whittaker(_stack(y), days, days, lam=1e3)[:, 0, 0, 0]
    assert np.abs(smooth - y).max() > 0.05


def test_whittaker_averages_same_day_observations_and_reads_fractional_days() -> None:
    days = np.array([0.2, 5.2, 5.7, 10.4])
    y = np.array([0.1, 0.2, 0.4, 0.5])  # day 5 averages to 0.3: a straight line 0.1 + 0.04 d
    out = smooth_whittaker(_stack(y), days, np.array([0.0, 5.0, 7.5, 10.0]), lam=10.0)
    np.testing.assert_allclose(out[:, 0, 0, 0], [0.1, 0.3, 0.4, 0.5], atol=1e-6)


def test_whittaker_holds_end_values_outside_a_series_span() -> None:
    days = np.arange(0.0, 50.0, 5.0)
    late = np.where(days >= 20, 0.1 + 0.01 * (days - 20), NAN)  # observed from day 20 on
    out = smooth_whittaker(_stack(late), days, np.array([0.0, 10.0, 20.0, 60.0]), lam=100.0)
    np.testing.assert_allclose(out[:, 0, 0, 0], [0.1, 0.1, 0.1, 0.35], atol=1e-6)


def test_whittaker_falls_back_to_linear_below_three_days_and_keeps_nan() -> None:
    days = np.array([0.0, 10.0, 20.0, 30.0])
    values = _stack(
        [0.1, NAN, 0.3, NAN],  # two observed days: linear
        [NAN, NAN, NAN, NAN],  # never observed: NaN
        [0.2, NAN, NAN, NAN],  # one observed day: held constant
    )
    query = np.array([0.0, 5.0, 25.0])
    out = smooth_whittaker(values, days, query)[:, 0, 0, :]
    np.testing.assert_allclose(out[:, 0], [0.1, 0.15, 0.3], rtol=1e-6)
    assert np.isnan(out[:, 1]).all()
    np.testing.assert_allclose(out[:, 2], [0.2, 0.2, 0.2], rtol=1e-6)
    assert np.isnan(whittaker_lambdas(values, days)).all()


def test_whittaker_pixels_are_independent_of_their_neighbours() -> None:
    """Series grouped by valid pattern must get the same answer as each one smoothed alone."""
    rng = np.random.default_rng(7)
    days = np.sort(rng.choice(np.arange(100.0), 30, replace=False))
    values = rng.normal(0.3, 0.05, (30, 2, 2, 3))
    values[rng.random(values.shape) < 0.4] = NAN
    values[:, :, 0, 1] = values[:, :, 0, 0]  # two pixels with one pattern and the same data
    query = np.arange(100.0)
    together = smooth_whittaker(values, days, query)
    for b in range(2):
        for r in range(2):
            for c in range(3):
                alone = smooth_whittaker(values[:, b : b + 1, r : r + 1, c : c + 1], days, query)
                np.testing.assert_allclose(together[:, b, r, c], alone[:, 0, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(together[:, :, 0, 1], together[:, :, 0, 0])


def test_gcv_choice_minimises_the_modified_gcv_score_of_the_dense_system() -> None:
    rng = np.random.default_rng(11)
    days = np.sort(rng.choice(np.arange(120.0), 25, replace=False))
    y = 0.3 + 0.2 * np.sin(days / 20.0) + rng.normal(0, 0.03, days.size)
    scores = []
    for lam in GCV_LAMBDAS:
        fitted, trace = _dense_whittaker(days, y, lam)
        rss = np.sum((fitted[(days - days[0]).astype(int)] - y) ** 2)
        scores.append(days.size * rss / (days.size - GCV_GAMMA * trace) ** 2)
    chosen = whittaker_lambdas(_stack(y), days)[0, 0, 0]
    assert chosen == pytest.approx(GCV_LAMBDAS[int(np.argmin(scores))])


def test_gcv_picks_larger_lambda_for_noisier_series() -> None:
    rng = np.random.default_rng(5)
    days = np.arange(0.0, 240.0, 4.0)
    signal = 0.4 + 0.3 * np.sin(days / 30.0)
    clean = signal[:, None] + rng.normal(0, 0.002, (days.size, 20))
    noisy = signal[:, None] + rng.normal(0, 0.08, (days.size, 20))
    lam_clean = whittaker_lambdas(clean[:, None, None, :], days)
    lam_noisy = whittaker_lambdas(noisy[:, None, None, :], days)
    assert np.median(np.log10(lam_noisy)) >= np.median(np.log10(lam_clean)) + 1.0


def test_whittaker_rejects_negative_lambda() -> None:
    with pytest.raises(InputError, match="lambda"):
        smooth_whittaker(np.zeros((3, 1, 1, 1)), np.arange(3.0), np.arange(3.0), lam=-1.0)


def test_whittaker_in_worker_processes_equals_one_process(flanders_cube, monkeypatch) -> None:
    import core.baselines
    from core.baselines import WORKERS_ENV, whittaker_lambdas, whittaker_workers
    from core.timeline import to_days

    cube = flanders_cube.isel(y=slice(0, 24), x=slice(0, 24), time_s2=slice(0, 40))
    values = np.where(cube["valid"].values[:, None] == 1, cube["s2"].values, np.nan)
    days = to_days(cube["time_s2"].values)
    query = np.linspace(days[0] - 3, days[-1] + 3, 25)
    monkeypatch.setenv(WORKERS_ENV, "1")
    serial = smooth_whittaker(values, days, query)
    serial_lambdas = whittaker_lambdas(values, days)
    monkeypatch.setattr(core.baselines, "PARALLEL_MIN_SERIES", 1000)  # 5,760 series here
    monkeypatch.setenv(WORKERS_ENV, "2")
    assert whittaker_workers(values[0].size) == 2
    parallel = smooth_whittaker(values, days, query)
    np.testing.assert_allclose(parallel, serial, rtol=1e-6, atol=1e-7, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(parallel), np.isnan(serial))
    np.testing.assert_array_equal(whittaker_lambdas(values, days), serial_lambdas)


def test_whittaker_worker_count_comes_from_the_size_and_the_environment(monkeypatch) -> None:
    import multiprocessing

    from core.baselines import PARALLEL_MIN_SERIES, WORKERS_ENV, whittaker_workers

    monkeypatch.setenv(WORKERS_ENV, "3")
    assert whittaker_workers(PARALLEL_MIN_SERIES - 1) == 1  # small: not worth the processes
    assert whittaker_workers(PARALLEL_MIN_SERIES) == 3
    monkeypatch.setenv(WORKERS_ENV, "0")
    assert whittaker_workers(PARALLEL_MIN_SERIES) == 1
    monkeypatch.setenv(WORKERS_ENV, "many")
    with pytest.raises(InputError, match="whole number"):
        whittaker_workers(PARALLEL_MIN_SERIES)
    monkeypatch.delenv(WORKERS_ENV)
    assert whittaker_workers(PARALLEL_MIN_SERIES) >= 1
    # A daemonic process (a Dask worker) may not start children: it smooths in itself.
    monkeypatch.setenv(WORKERS_ENV, "3")
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert whittaker_workers(PARALLEL_MIN_SERIES) == 1


def test_whittaker_workers_are_kept_and_a_dead_one_is_survived(flanders_cube, monkeypatch) -> None:
    import os
    import signal

    import core.baselines
    from core.baselines import WORKERS_ENV
    from core.timeline import to_days

    cube = flanders_cube.isel(y=slice(0, 24), x=slice(0, 24), time_s2=slice(0, 40))
    values = np.where(cube["valid"].values[:, None] == 1, cube["s2"].values, np.nan)
    days = to_days(cube["time_s2"].values)
    query = np.linspace(days[0], days[-1], 9)
    monkeypatch.setattr(core.baselines, "PARALLEL_MIN_SERIES", 1000)  # 5,760 series here
    monkeypatch.setenv(WORKERS_ENV, "2")
    first = smooth_whittaker(values, days, query)
    pool = core.baselines._pools[2]
    workers = set(pool._processes)
    assert len(workers) == 2
    # A second call (a season's next chunk of days) uses the same processes: none started.
    np.testing.assert_array_equal(smooth_whittaker(values, days, query), first)
    assert core.baselines._pools[2] is pool and set(pool._processes) == workers
    for pid in workers:  # e.g. killed for memory
        os.kill(pid, signal.SIGKILL)
    # The call that finds them dead still answers (in this process), and the next starts anew.
    close = {"rtol": 1e-6, "atol": 1e-7, "equal_nan": True}
    np.testing.assert_allclose(smooth_whittaker(values, days, query), first, **close)
    np.testing.assert_allclose(smooth_whittaker(values, days, query), first, **close)
    assert core.baselines._pools[2] is not pool


def test_whittaker_never_swings_below_what_a_pixel_was_observed_at(flanders_cube) -> None:
    # Review 14: across be-flanders-a's winter gaps the smoother took red to 0 on 29
    # pixel-dates, where NDVI read exactly 1.0.
    from core.baselines import whittaker_floor
    from core.reconstruct import ReconstructOptions, reconstruct
    from core.timeline import regular_dates

    query = regular_dates("2017-09-01", "2018-03-01", 3)
    result = reconstruct(flanders_cube, query, "whittaker", ReconstructOptions())
    observed = flanders_cube["s2"].where(flanders_cube["valid"] == 1).values
    floor = whittaker_floor(observed)[0]  # (B, H, W)
    values = result["s2"].values
    assert (values >= floor[None] - 1e-7)[np.isfinite(values)].all()
    assert np.nanmin(result["s2"].sel(band="B04").values) > 0
    assert np.nanmax(result["ndvi"].values) < 0.99
