"""The yardstick: target selection, hidden pixels, metrics, honest splits, determinism, and the
bench inputs, on hand-made cubes small enough to check by eye."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types

import numpy as np
import pytest
import xarray as xr

from core.bench import BenchCase, make_bench_cube, measure_case, query_dates
from core.cube import S2_BANDS, build_cube, read_cube
from core.errors import InputError
from core.evaluate import (
    POOLED_PIXEL,
    Protocol,
    Scores,
    centre_crop,
    clear_distance,
    clear_fraction,
    crps_ensemble,
    default_seen_sites,
    evaluate,
    evaluation_to_dict,
    format_table,
    hide,
    interval_coverage,
    interval_score,
    plan_tasks,
    pool_scores,
    psnr_db,
    score_values,
    select_targets,
    spectral_angle_deg,
)
from core.reconstruct import ReconstructOptions, observations
from core.timeline import calendar_day, to_days

PRESENT = ("B02", "B04", "B08")
BAND = {name: i for i, name in enumerate(S2_BANDS)}


def _cube(
    valid: np.ndarray,
    *,
    covered: np.ndarray | None = None,
    every_days: int = 5,
    site: str = "test-site",
    s1: bool = False,
) -> xr.Dataset:
    """A cube whose frames t have reflectance 0.1 + 0.01 t (B02), 0.05 + 0.002 t (B04) and
    0.3 + 0.01 t (B08) plus a per-pixel offset of 0.001 (y * W + x); other bands NaN."""
    n_t, height, width = valid.shape
    t = np.arange(n_t, dtype=np.float32)[:, None, None]
    pixel = 0.001 * np.arange(height * width, dtype=np.float32).reshape(1, height, width)
    s2 = np.full((n_t, 10, height, width), np.nan, dtype=np.float32)
    s2[:, BAND["B02"]] = 0.1 + 0.01 * t + pixel
    s2[:, BAND["B04"]] = 0.05 + 0.002 * t + pixel
    s2[:, BAND["B08"]] = 0.3 + 0.01 * t + pixel
    if covered is not None:
        s2[~np.broadcast_to(covered[:, None], s2.shape)] = np.nan
        valid = valid & covered
    scl = np.where(valid, 4, 8).astype(np.uint8)
    times = np.datetime64("2021-03-01T00:00") + np.arange(n_t) * np.timedelta64(every_days, "D")
    extra = {}
    if s1:
        extra = {
            "s1": np.full((3, 2, height, width), -12.0, dtype=np.float32),
            "time_s1": times[[0, n_t // 2, -1]],
        }
    return build_cube(
        s2=s2,
        time_s2=times,
        y=np.arange(height) * -10.0,
        x=np.arange(width) * 10.0,
        attrs={"crs": "EPSG:32631", "resolution_m": 10.0, "site": site},
        valid=valid.astype(np.uint8),
        scl=scl,
        **extra,
    )


def _series_cube(n_t: int = 20, size: int = 6, site: str = "test-site", s1: bool = False):
    """Every 4th frame half cloudy (left half of the pixels), the others clear."""
    valid = np.ones((n_t, size, size), dtype=bool)
    valid[2::4, :, : size // 2] = False
    return _cube(valid, site=site, s1=s1)


# --------------------------------------------------------------------------- targets


def test_targets_need_80_percent_of_covered_pixels_clear() -> None:
    valid = np.ones((6, 4, 4), dtype=bool)  # 16 pixels per frame
    covered = np.ones((6, 4, 4), dtype=bool)
    valid[1].flat[:3] = False  # 13/16 = 81 % clear: a target
    valid[2].flat[:4] = False  # 12/16 = 75 %: not
    covered[3] = False
    covered[3, 0, :] = True
    covered[3, 1, 0] = True  # 5 covered pixels ...
    valid[3, 0, 0] = False  # ... 4 of them clear = 80 %: a target
    covered[4] = False  # no coverage at all: never a target
    cube = _cube(valid, covered=covered)
    np.testing.assert_allclose(clear_fraction(cube)[:4], [1.0, 13 / 16, 12 / 16, 0.8])
    assert np.isnan(clear_fraction(cube)[4])
    assert select_targets(cube, Protocol()).tolist() == [0, 1, 3, 5]


def test_frame_sharing_its_day_with_another_is_not_a_target() -> None:
    cube = _cube(np.ones((4, 2, 2), dtype=bool))
    times = cube["time_s2"].values.copy()
    times[2] = times[1] + np.timedelta64(2, "h")  # two acquisitions on one calendar day
    cube = cube.assign_coords(time_s2=times)
    assert select_targets(cube, Protocol()).tolist() == [0, 3]


# --------------------------------------------------------------------------- tasks


def test_missing_and_cloud_take_disjoint_quarters_of_the_targets() -> None:
    cube = _series_cube(n_t=20)  # 15 targets, 5 half-cloudy frames
    plan = plan_tasks(cube, "a", Protocol())
    assert len(plan.targets) == 15
    missing, cloud = set(plan.missing.frames), set(plan.cloud.frames)
    assert len(missing) == 4 and len(cloud) == 4  # round(0.25 * 15)
    assert not missing & cloud
    assert missing | cloud <= set(plan.targets)
    # the missing frames are hidden wherever they have data, nothing else is
    hidden = plan.missing.hidden
    assert hidden[sorted(missing)].all()
    assert not np.delete(hidden, sorted(missing), axis=0).any()


def test_cloud_task_pastes_the_real_mask_of_a_cloudy_frame() -> None:
    cube = _series_cube(n_t=20)
    plan = plan_tasks(cube, "a", Protocol())
    valid = cube["valid"].values.astype(bool)
    fractions = clear_fraction(cube)
    for frame, source in zip(plan.cloud.frames, plan.cloud.cloud_sources, strict=True):
        assert source != frame
        assert 0.1 <= fractions[source] <= 0.9
        np.testing.assert_array_equal(plan.cloud.hidden[frame], ~valid[source])
    # exactly the left half (3 of 6 columns) of each cloud frame is hidden
    assert plan.cloud.hidden.sum() == len(plan.cloud.frames) * 6 * 3


def test_cloud_task_is_not_applicable_without_cloudy_frames() -> None:
    plan = plan_tasks(_cube(np.ones((12, 3, 3), dtype=bool)), "clear", Protocol())
    assert not plan.cloud.applicable
    assert "no cloudy frame" in plan.cloud.reason
    assert plan.missing.applicable


def test_hidden_pixels_look_like_cloud_and_keep_no_original_value() -> None:
    cube = _series_cube(n_t=20, s1=True)
    protocol = Protocol()
    plan = plan_tasks(cube, "a", protocol)
    hidden = plan.missing.hidden | plan.cloud.hidden
    degraded = hide(cube, hidden, protocol)

    s2 = np.moveaxis(degraded["s2"].values, 1, -1)[hidden]  # (N, 10)
    present = [BAND[b] for b in PRESENT]
    absent = [i for i in range(10) if i not in present]
    assert (s2[:, present] == np.float32(0.8)).all()
    assert np.isnan(s2[:, absent]).all()
    assert (degraded["valid"].values[hidden] == 0).all()
    assert (degraded["scl"].values[hidden] == 9).all()
    original = np.moveaxis(cube["s2"].values, 1, -1)[hidden][:, present]
    assert not np.isin(original, s2).any()
    # everything else is untouched, S1 included
    np.testing.assert_array_equal(degraded["valid"].values[~hidden], cube["valid"].values[~hidden])
    np.testing.assert_array_equal(
        np.moveaxis(degraded["s2"].values, 1, -1)[~hidden],
        np.moveaxis(cube["s2"].values, 1, -1)[~hidden],
    )
    np.testing.assert_array_equal(degraded["s1"].values, cube["s1"].values)
    assert cube["valid"].values[hidden].any()  # the original was not modified in place


def test_bright_hidden_pixels_catch_a_method_that_ignores_the_mask() -> None:
    cube = _series_cube(n_t=20)
    protocol = Protocol()
    plan = plan_tasks(cube, "a", protocol)
    degraded = hide(cube, plan.missing.hidden, protocol)
    frames = list(plan.missing.frames)
    truth = np.moveaxis(cube["s2"].values[frames], 1, -1)[plan.missing.hidden[frames]]
    raw = np.moveaxis(degraded["s2"].values[frames], 1, -1)[plan.missing.hidden[frames]]
    present = np.isin(np.array(S2_BANDS), PRESENT)
    cheat = score_values(truth, raw, present, n_frames=len(frames))
    assert cheat.mae > 0.4  # reading the reflectance under the mask scores terribly
    # ... and the contract never lets a method see it
    masked = observations(degraded)["s2"].values
    assert np.isnan(np.moveaxis(masked, 1, -1)[plan.missing.hidden]).all()


def test_gap_hides_every_acquisition_of_one_45_day_window() -> None:
    cube = _series_cube(n_t=20, s1=True)  # a frame every 5 days: 9 frames per window
    protocol = Protocol()
    gap = plan_tasks(cube, "a", protocol).gap
    assert gap.applicable
    first, last = gap.window
    assert last - first == np.timedelta64(44, "D")
    days = cube["time_s2"].values.astype("datetime64[D]")
    inside = (days >= first) & (days <= last)
    assert inside.sum() == 9
    np.testing.assert_array_equal(gap.hidden.any(axis=(1, 2)), inside)
    assert gap.hidden[inside].all()
    targets = select_targets(cube, protocol)
    assert gap.frames == tuple(int(i) for i in targets if inside[i])
    assert len(gap.frames) >= 2
    assert targets.min() < np.flatnonzero(inside).min()  # a target before the window
    assert targets.max() > np.flatnonzero(inside).max()  # and one after it
    degraded = hide(cube, gap.hidden, protocol)
    np.testing.assert_array_equal(degraded["s1"].values, cube["s1"].values)


def test_gap_is_not_applicable_when_no_window_fits_inside_the_series() -> None:
    cube = _cube(np.ones((8, 2, 2), dtype=bool), every_days=5)  # 36 days in all
    gap = plan_tasks(cube, "short", Protocol()).gap
    assert not gap.applicable
    assert "45-day window" in gap.reason


def test_centre_crop_takes_the_middle() -> None:
    cube = _cube(np.ones((2, 10, 9), dtype=bool))
    crop = centre_crop(cube, 4)
    assert crop["s2"].shape == (2, 10, 4, 4)
    np.testing.assert_array_equal(crop["y"].values, cube["y"].values[3:7])
    np.testing.assert_array_equal(crop["x"].values, cube["x"].values[2:6])
    assert centre_crop(cube, None) is cube


# --------------------------------------------------------------------------- metrics


def test_error_metrics_on_known_vectors() -> None:
    present = np.isin(np.array(S2_BANDS), ("B02", "B04"))
    truth = np.full((2, 10), np.nan)
    pred = np.full((2, 10), np.nan)
    truth[:, [BAND["B02"], BAND["B04"]]] = [[0.2, 0.4], [0.1, 0.3]]
    pred[:, [BAND["B02"], BAND["B04"]]] = [[0.1, 0.2], [0.1, 0.3]]
    s = score_values(truth, pred, present, n_frames=1)
    assert s.mae == pytest.approx((0.1 + 0.2) / 4)
    assert s.rmse == pytest.approx(math.sqrt((0.01 + 0.04) / 4))
    assert s.psnr_db == pytest.approx(10 * math.log10(1 / 0.0125))  # 19.03 dB
    assert s.sam_deg == pytest.approx(0.0, abs=1e-6)  # both spectra are parallel
    assert (s.n_pixels, s.n_values, s.n_unpredicted) == (2, 4, 0)
    assert [(b.band, b.mae) for b in s.bands] == [
        ("B02", pytest.approx(0.05)),
        ("B04", pytest.approx(0.1)),
    ]
    assert s.ndvi_mae is None  # no NIR band
    assert s.coverage is None and s.crps is None


def test_psnr_and_spectral_angle() -> None:
    assert psnr_db(0.01) == pytest.approx(20.0)
    assert psnr_db(1e-4, data_range=1.0) == pytest.approx(40.0)
    angles = spectral_angle_deg(
        np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [0.0, 0.0]]),
        np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 4.0], [1.0, 1.0]]),
    )
    np.testing.assert_allclose(angles[:3], [90.0, 45.0, 0.0], atol=1e-6)
    assert np.isnan(angles[3])


def test_unpredicted_values_are_counted_and_left_out() -> None:
    present = np.isin(np.array(S2_BANDS), PRESENT)
    truth = np.full((3, 10), np.nan)
    truth[:, present] = 0.2
    pred = truth + 0.01
    pred[0, BAND["B02"]] = np.nan
    s = score_values(truth, pred, present, n_frames=1)
    assert s.n_unpredicted == 1 and s.n_values == 9
    assert s.mae == pytest.approx(0.01)
    assert s.psnr_db == pytest.approx(40.0)
    assert s.n_sam == 2  # the pixel with a NaN band has no spectral angle
    assert s.ndvi_mae is not None and s.n_ndvi == 3


def test_crps_of_a_degenerate_ensemble_is_its_absolute_error() -> None:
    truth = np.array([0.1, 0.2, 0.5])
    pred = np.array([0.15, 0.1, 0.5])
    np.testing.assert_allclose(crps_ensemble(np.tile(pred, (8, 1)), truth), np.abs(pred - truth))


def test_crps_matches_the_pairwise_formula() -> None:
    # samples {0, 1}, truth 0: mean |x - y| = 0.5, sum |xi - xj| / (2 K²) = 2 / 8
    assert crps_ensemble(np.array([[0.0], [1.0]]), np.array([0.0]))[0] == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 7)), rng.normal(size=7)
    brute = np.abs(x - y).mean(axis=0) - np.abs(x[:, None] - x[None]).sum(axis=(0, 1)) / 50
    np.testing.assert_allclose(crps_ensemble(x, y), brute)


def test_interval_coverage_and_scores_with_samples() -> None:
    truth = np.array([0.1, 0.2, 0.3, 0.4])
    low, high = np.array([0.0, 0.25, 0.3, 0.0]), np.array([0.2, 0.3, 0.3, 0.35])
    assert interval_coverage(low, high, truth) == 0.5
    present = np.isin(np.array(S2_BANDS), ("B04",))
    t = np.full((4, 10), np.nan)
    t[:, BAND["B04"]] = truth
    pred = t.copy()
    samples = np.stack([t - 0.1, t + 0.1])  # p10/p90 far enough apart to cover every value
    s = score_values(t, pred, present, n_frames=2, low=t - 0.05, high=t + 0.05, samples=samples)
    assert s.coverage == 1.0
    assert s.crps == pytest.approx(0.1 - 0.2 / 4)
    assert s.band_width == pytest.approx(0.1)
    assert s.interval_score == pytest.approx(0.1)  # nothing missed: the width alone


def test_the_per_pixel_ndvi_band_is_scored_where_ndvi_is_known() -> None:
    present = np.isin(np.array(S2_BANDS), ("B04", "B08"))
    t = np.full((4, 10), np.nan)
    t[:, BAND["B04"]], t[:, BAND["B08"]] = 0.1, 0.3  # NDVI 0.5 everywhere
    pred = t.copy()
    pred[3, BAND["B08"]] = np.nan  # no NDVI predicted: not scored
    low = np.array([0.4, 0.55, 0.3, 0.0])
    high = np.array([0.6, 0.65, 0.45, 1.0])
    s = score_values(t, pred, present, n_frames=1, ndvi_low=low, ndvi_high=high)
    assert s.ndvi_coverage == pytest.approx(1 / 3)
    assert s.ndvi_band_width == pytest.approx((0.2 + 0.1 + 0.15) / 3)
    # widths + 10 x misses: 0.2; 0.1 + 10 x 0.05; 0.15 + 10 x 0.05
    assert s.ndvi_interval_score == pytest.approx((0.2 + 0.6 + 0.65) / 3)
    assert s.ndvi_band_misses_estimate == pytest.approx(2 / 3)  # the estimate is 0.5 too
    pred[1, BAND["B08"]] = 0.35  # estimate NDVI 0.556: inside its band, the truth still not
    s = score_values(t, pred, present, n_frames=1, ndvi_low=low, ndvi_high=high)
    assert s.ndvi_coverage == pytest.approx(1 / 3)
    assert s.ndvi_band_misses_estimate == pytest.approx(1 / 3)
    assert score_values(t, pred, present, n_frames=1).ndvi_coverage is None


def test_interval_score_charges_misses_by_their_distance() -> None:
    low, high = np.array([0.0, 0.0, 0.0]), np.array([0.2, 0.2, 0.2])
    truth = np.array([0.1, 0.25, -0.1])  # inside, 0.05 above, 0.1 below
    np.testing.assert_allclose(interval_score(low, high, truth), [0.2, 0.7, 1.2])
    # The true p10-p90 of a distribution scores better than a narrower or a wider band.
    rng = np.random.default_rng(0)
    y = rng.normal(size=200_000)
    z = 1.2815515655446004
    exact = interval_score(np.full_like(y, -z), np.full_like(y, z), y).mean()
    for factor in (0.7, 1.4):
        assert (
            interval_score(np.full_like(y, -z * factor), np.full_like(y, z * factor), y).mean()
            > exact
        )


def test_pooling_weights_by_values_or_by_cube() -> None:
    def scores(mae: float, n: int) -> Scores:
        return Scores(1, n, n, mae, mae, psnr_db(mae**2), None, 0, None, 0, None, None, 0)

    a, b = scores(0.01, 300), scores(0.04, 100)
    pixel = pool_scores([a, b], "pixel")
    assert pixel.mae == pytest.approx((0.01 * 300 + 0.04 * 100) / 400)
    assert pixel.rmse == pytest.approx(math.sqrt((0.0001 * 300 + 0.0016 * 100) / 400))
    assert pixel.n_values == 400
    assert pool_scores([a, b], "cube").mae == pytest.approx(0.025)


# --------------------------------------------------------------------------- whole runs


def _two_cubes():
    yield "cube-a", _series_cube(n_t=20, site="site-a")
    yield "cube-b", _series_cube(n_t=24, site="site-b")


def test_evaluate_scores_every_task_and_method_with_ratios() -> None:
    result = evaluate(_two_cubes(), ["linear", "whittaker"], Protocol(max_size=4))
    assert len(result.rows) == 2 * 3 * 2
    assert all(row.status == "ok" for row in result.rows)
    for row in result.rows:
        assert row.scores.n_frames >= 1
        assert 0 <= row.scores.mae < 0.2
        assert row.ratio >= 1.0 - 1e-12
    for cube in ("cube-a", "cube-b"):
        for task in ("missing", "cloud", "gap"):
            ratios = [r.ratio for r in result.rows if r.cube == cube and r.task == task]
            assert min(ratios) == pytest.approx(1.0)
    pooled = [r for r in result.pooled if r.cube == POOLED_PIXEL]
    assert len(pooled) == 6 and all(r.n_cubes == 2 for r in pooled)
    assert result.cubes[0].shape == (20, 4, 4) and result.cubes[0].original_shape == (6, 6)
    table = format_table(result)
    assert "cube-a" in table and POOLED_PIXEL in table


def test_only_pixels_clear_in_the_original_are_scored() -> None:
    """The yardstick scores a hidden pixel only where the original saw it clear (review 28:
    scoring every hidden pixel, clouds charged as truth, passed every test). Here each frame
    holds two cloudy pixels reading an absurd 5.0: every task's pixel count is its hidden pixels
    that were clear, and the figures do not move when the clouds read 0.5 instead."""
    n_t, size = 24, 6
    valid = np.ones((n_t, size, size), dtype=bool)
    t = np.arange(n_t)
    valid[t, t % size, (2 * t + 1) % size] = False
    valid[t, (t + 3) % size, (5 * t) % size] = False
    valid[2::4, :, : size // 2] = False  # frames to lend the cloud task their masks

    def cube_with_clouds(reading: float) -> xr.Dataset:
        cube = _cube(valid)
        cloudy = np.broadcast_to(~valid[:, None], cube["s2"].shape) & np.isfinite(cube["s2"].values)
        cube["s2"].values[cloudy] = reading
        return cube

    protocol = Protocol(max_size=None)
    cube = cube_with_clouds(5.0)
    plan = plan_tasks(cube, "cube", protocol)
    expected, hidden = {}, 0
    for task in plan.sets():
        if task.hidden is not None:
            frames = list(task.frames)
            expected[task.task] = int((task.hidden & valid)[frames].sum())
            hidden += int(task.hidden[frames].sum())
    assert set(expected) == {"missing", "cloud", "gap"}
    assert sum(expected.values()) < hidden  # clouds were among the hidden pixels
    figures = []
    for reading in (5.0, 0.5):
        result = evaluate([("cube", cube_with_clouds(reading))], ["linear"], protocol)
        rows = {row.task: row.scores for row in result.rows}
        assert {task: rows[task].n_pixels for task in expected} == expected
        figures.append({task: (rows[task].mae, rows[task].rmse) for task in expected})
        assert all(rows[task].mae < 0.05 for task in expected)  # 5.0 in any would be 0.1+
    assert figures[0] == figures[1]


def test_linear_is_exact_on_a_linear_series() -> None:
    """The hand-made reflectance is linear in time and acquired at midnight (the evaluation
    queries calendar days), so linear interpolation recovers every hidden pixel exactly, except
    where a hidden frame ends the series and it holds the last clear value instead."""
    result = evaluate(_two_cubes(), ["linear"], Protocol())
    ends = {
        name: {str(d) for d in cube["time_s2"].values[[0, -1]].astype("datetime64[D]")}
        for name, cube in _two_cubes()
    }
    interior = 0
    for row, report in zip(result.rows, [c for c in result.cubes for _ in range(3)], strict=True):
        frames = set(report.tasks[row.task]["frames"])
        if frames & ends[row.cube]:
            assert row.scores.mae > 0.001
        else:
            assert row.scores.mae == pytest.approx(0.0, abs=1e-6)
            interior += 1
    assert interior >= 4


def test_seen_cubes_are_skipped_and_recorded() -> None:
    seen = {"whittaker": {"site-b"}}  # matched through the cube's site attribute
    result = evaluate(_two_cubes(), ["linear", "whittaker"], Protocol(max_size=4), seen_sites=seen)
    skipped = [r for r in result.rows if r.status.startswith("skipped")]
    assert {(r.cube, r.method) for r in skipped} == {("cube-b", "whittaker")}
    assert len(skipped) == 3 and all(r.scores is None for r in skipped)
    assert result.skipped == {"linear": [], "whittaker": ["cube-b"]}
    assert result.seen == {"linear": [], "whittaker": ["site-b"]}
    assert all(r.n_cubes == 1 for r in result.pooled if r.method == "whittaker")
    # the whittaker ratio compares it with linear on the cube it was scored on only
    data = evaluation_to_dict(result)
    assert data["skipped_cubes"]["whittaker"] == ["cube-b"]

    kept = evaluate(
        _two_cubes(), ["whittaker"], Protocol(max_size=4), seen_sites=seen, exclude_seen=False
    )
    assert all(r.status == "ok" for r in kept.rows)
    assert kept.seen == {"whittaker": ["site-b"]}


def test_a_cube_fetched_inside_a_training_cube_is_seen_whatever_its_name(cubes_dir) -> None:
    # es-field's cube under the name a user's fetch would give it: the shipped model was trained
    # there, which its record's footprints say; a held-out cube is scored.
    mine = read_cube(cubes_dir / "es-field_2019.nc").assign_attrs(site="my field")
    held_out = read_cube(cubes_dir / "hu-alfold_2021.nc")
    cubes = [("mine", mine), ("hu", held_out)]
    protocol = Protocol(max_size=8)
    seen = {"model": ["be-flanders-a"]}  # given by hand: the record's footprints are not read
    result = evaluate(
        cubes[:1], ["linear", "model"], protocol, ReconstructOptions(samples=1), seen_sites=seen
    )
    assert result.skipped == {"linear": [], "model": []}
    result = evaluate(cubes, ["linear", "model"], protocol, ReconstructOptions(samples=1))
    assert result.skipped == {"linear": [], "model": ["mine"]}
    assert {r.status for r in result.rows if r.cube == "hu"} == {"ok"}


def test_a_learned_method_needs_its_training_record(monkeypatch) -> None:
    seen = default_seen_sites(ReconstructOptions())
    assert seen("linear") == frozenset() and seen("whittaker") == frozenset()
    monkeypatch.setitem(sys.modules, "core.model.checkpoint", types.ModuleType("stub"))
    with pytest.raises(InputError, match="--no-exclude-seen"):
        seen("model")
    stub = types.ModuleType("stub")
    stub.training_sites = lambda path: ["be-flanders-a", "tz-arusha"]
    monkeypatch.setitem(sys.modules, "core.model.checkpoint", stub)
    assert seen("model") == {"be-flanders-a", "tz-arusha"}


def _figures(result) -> str:
    data = evaluation_to_dict(result)
    for key in ("seconds", "software"):
        data.pop(key)
    for row in data["rows"] + data["pooled"]:
        row.pop("seconds")
    return json.dumps(data, sort_keys=True)


def test_same_seed_gives_identical_figures_and_another_seed_other_draws() -> None:
    def run(seed: int):
        return evaluate(_two_cubes(), ["linear", "whittaker"], Protocol(seed=seed, max_size=4))

    first, again = run(0), run(0)
    assert _figures(first) == _figures(again)
    other = run(1)
    assert [c.tasks for c in other.cubes] != [c.tasks for c in first.cubes]


def test_dense_queries_score_the_same_targets(monkeypatch) -> None:
    # The app's daily curve queries every day; --query-every-days evaluates that path. A
    # per-pixel method's answer on a target day cannot depend on the other query days.
    import core.evaluate as evaluation

    asked: list[int] = []
    real = evaluation.reconstruct
    monkeypatch.setattr(
        evaluation, "reconstruct", lambda c, q, *a: asked.append(len(q)) or real(c, q, *a)
    )
    sparse = evaluate(_two_cubes(), ["linear"], Protocol(max_size=4))
    n_sparse = len(asked)
    daily = evaluate(_two_cubes(), ["linear"], Protocol(max_size=4, query_every_days=1))
    spans = set()
    for _, cube in _two_cubes():
        days = calendar_day(cube["time_s2"].values)
        spans.add(int((days[-1] - days[0]).astype(int)) + 1)
    assert set(asked[n_sparse:]) == spans  # every day of each cube's period was asked for
    assert max(asked[:n_sparse]) < min(spans)

    def scores(result) -> list:
        return [(r.cube, r.task, r.scores) for r in (*result.rows, *result.pooled)]

    assert scores(daily) == scores(sparse)
    assert evaluation_to_dict(daily)["protocol"]["query_every_days"] == 1
    assert [c.tasks for c in daily.cubes] == [c.tasks for c in sparse.cubes]
    with pytest.raises(InputError, match="query-every-days"):
        Protocol(query_every_days=0)


def test_in_chunks_reconstructs_the_daily_query_in_a_runs_calls(monkeypatch) -> None:
    # --in-chunks scores what a Run shows: the daily query split into the calls of the app's
    # curve (core.curve.curve_chunks), the parts joined back along time. A per-pixel method
    # answers each day alone, so every figure (the band's included) is the one-call figure.
    import core.curve as curve
    import core.evaluate as evaluation

    monkeypatch.setattr(curve, "CHUNK_MOST_DATES", 7)
    asked: list[int] = []
    real = evaluation.reconstruct
    monkeypatch.setattr(
        evaluation, "reconstruct", lambda c, q, *a: asked.append(len(q)) or real(c, q, *a)
    )
    options = ReconstructOptions(samples=2)
    one_call = evaluate(
        _two_cubes(), ["linear", "whittaker"], Protocol(max_size=4, query_every_days=1), options
    )
    n_one = len(asked)
    chunked = evaluate(
        _two_cubes(),
        ["linear", "whittaker"],
        Protocol(max_size=4, query_every_days=1, in_chunks=True),
        options,
    )
    calls = asked[n_one:]
    assert max(calls) == 7 and len(calls) > 2 * n_one  # several calls where there was one
    assert sum(calls) == sum(asked[:n_one])  # each day asked for once

    def scores(result) -> list:
        return [(r.cube, r.task, r.method, r.scores) for r in (*result.rows, *result.pooled)]

    assert scores(chunked) == scores(one_call)
    assert evaluation_to_dict(chunked)["protocol"]["in_chunks"] is True


def test_dropped_hidden_frames_are_queried_as_dates_with_no_acquisition(monkeypatch) -> None:
    # --drop-hidden-frames takes the frames a task hides entirely out of the cube, so that the
    # model meets them as the app's anytime queries (no acquisition that day). The baselines
    # skip missing values, so they score exactly as with the frames kept.
    import core.evaluate as evaluation

    seen: list[int] = []
    real = evaluation.reconstruct
    monkeypatch.setattr(
        evaluation,
        "reconstruct",
        lambda c, q, *a: seen.append(c.sizes["time_s2"]) or real(c, q, *a),
    )
    kept = evaluate(_two_cubes(), ["linear", "whittaker"], Protocol(max_size=4))
    n_kept = len(seen)
    dropped = evaluate(
        _two_cubes(), ["linear", "whittaker"], Protocol(max_size=4, drop_hidden_frames=True)
    )
    assert len(seen) == 2 * n_kept
    # Per cube: missing + cloud, then the gap, each for both methods (4 calls).
    for i, cube in enumerate(dropped.cubes):
        before, after = seen[4 * i], seen[n_kept + 4 * i]
        n_missing = len(cube.tasks["missing"]["frames"])
        assert before - n_missing <= after < before  # the missing frames went (ends excepted)
        assert seen[n_kept + 4 * i + 2] < seen[4 * i + 2]  # and the gap's

    def scores(result) -> list:
        return [(r.cube, r.task, r.method, r.scores) for r in (*result.rows, *result.pooled)]

    assert scores(dropped) == scores(kept)
    assert evaluation_to_dict(dropped)["protocol"]["drop_hidden_frames"] is True


def test_drop_hidden_frames_keeps_the_ends_and_partly_hidden_frames() -> None:
    from core.evaluate import drop_hidden_frames

    cube = _series_cube(n_t=8, size=4)
    hidden = np.zeros((8, 4, 4), dtype=bool)
    hidden[[0, 3, 7]] = True  # whole frames, two of them the ends
    hidden[5, :2] = True  # part of a frame
    out = drop_hidden_frames(cube, cube, hidden)
    assert out.sizes["time_s2"] == 7
    np.testing.assert_array_equal(
        out["time_s2"].values, cube["time_s2"].values[[0, 1, 2, 4, 5, 6, 7]]
    )


def test_bad_input_is_refused_with_a_message() -> None:
    with pytest.raises(InputError, match="No methods"):
        evaluate(_two_cubes(), [])
    with pytest.raises(InputError, match="Unknown reconstruction method"):
        evaluate(_two_cubes(), ["nonsense"])
    with pytest.raises(InputError, match="No cubes"):
        evaluate(iter(()), ["linear"])
    with pytest.raises(InputError, match="max-size"):
        Protocol(max_size=-1)


# --------------------------------------------------------------------------- bench inputs


def test_bench_cube_is_mirror_tiled_and_stretched_in_time(flanders_cube) -> None:
    cube = make_bench_cube(flanders_cube, 100, 150)  # source: 118 dates, 64 x 64
    assert cube["s2"].shape == (150, 10, 100, 100)
    times = cube["time_s2"].values
    assert (np.diff(times) > np.timedelta64(0)).all()
    np.testing.assert_array_equal(times[:118], flanders_cube["time_s2"].values)
    # mirror: column 64 repeats column 63, column 65 repeats column 62 (first 118 dates)
    s2 = cube["s2"].values
    np.testing.assert_array_equal(s2[:118, :, :64, 64], flanders_cube["s2"].values[:, :, :, 63])
    np.testing.assert_array_equal(s2[:118, :, :64, 65], flanders_cube["s2"].values[:, :, :, 62])
    # the first tile keeps its clear mask; the next one's is rolled by one date
    valid, source = cube["valid"].values, flanders_cube["valid"].values
    np.testing.assert_array_equal(valid[:118, :64, :64], source)
    assert not np.array_equal(valid[:118, :64, 64:], source[:, :, ::-1][:, :, :36])
    assert cube["time_s1"].values[-1] <= times[-1]
    assert cube["time_s1"].values[-1] > flanders_cube["time_s1"].values[-1]

    short = make_bench_cube(flanders_cube, 32, 30)
    assert short["s2"].shape == (30, 10, 32, 32)
    assert (
        short["time_s2"].values[[0, -1]].tolist()
        == flanders_cube["time_s2"].values[[0, -1]].tolist()
    )
    assert query_dates(short, 20).size == 20


def test_measure_case_reports_time_and_memory(cubes_dir) -> None:
    case = BenchCase("linear", 16, 10, str(cubes_dir / "be-flanders-a_2017-2018.nc"), repeats=2)
    result = measure_case(case)
    assert result.error is None
    assert len(result.seconds_all) == 2 and result.seconds > 0
    assert result.input_mib == pytest.approx(10 * 10 * 16 * 16 * 4 / 1024**2)
    assert result.traced_peak_mib > 0 and result.peak_rss_mib >= 0


def test_a_bench_case_runs_the_checkpoint_it_names(cubes_dir, tmp_path) -> None:
    import torch

    from core.bench import bench
    from core.model.checkpoint import Checkpoint, save_checkpoint
    from core.model.config import ModelConfig
    from core.model.network import FieldFlowNet

    source = str(cubes_dir / "be-flanders-a_2017-2018.nc")
    config = ModelConfig(width=16, depth=1, heads=2, flow_hidden=32, flow_layers=1)
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_checkpoint(Checkpoint(model=FieldFlowNet(config), record={"seen_sites": ["x"]}), path)
    case = BenchCase("model", 16, 10, source, repeats=1, trace=False, checkpoint=str(path))
    assert measure_case(case).error is None
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"broken\.pt"):  # this file, not the shipped one
        measure_case(dataclasses.replace(case, checkpoint=str(broken)))
    with pytest.raises(InputError, match="checkpoint not found"):
        bench(["model"], [16], [10], source, checkpoint=tmp_path / "missing.pt")


def test_coverage_is_broken_down_by_days_to_the_nearest_clear_observation() -> None:
    present = np.isin(np.array(S2_BANDS), ("B04", "B08"))
    n = 6
    t = np.full((n, 10), np.nan)
    t[:, present] = 0.2
    low, high = t - 0.01, t + 0.01
    high[4:, BAND["B08"]] = 0.1  # far pixels: their NIR misses the band
    distance = np.array([1.0, 8.0, 9.0, 20.0, 21.0, 300.0])  # <= 8, 8-20, > 20 (edges inside)
    s = score_values(t, t, present, n_frames=1, low=low, high=high, distance=distance)
    assert s.n_by_distance == (4, 4, 4)
    assert s.coverage_by_distance == (1.0, 1.0, 0.5)
    assert s.coverage == pytest.approx(10 / 12)
    without = score_values(t, t, present, n_frames=1, low=low, high=high)
    assert without.coverage_by_distance == () and without.n_by_distance == ()
    # Pooled: pixel-weighted by each bucket's values, or the plain mean of the cubes'.
    far_only = score_values(
        t[4:], t[4:], present, n_frames=1, low=low[4:], high=high[4:], distance=distance[4:]
    )
    assert far_only.coverage_by_distance == (None, None, 0.5)
    both = pool_scores([s, far_only], "pixel")
    assert both.n_by_distance == (4, 4, 8)
    assert both.coverage_by_distance == (1.0, 1.0, 0.5)


def test_clear_distance_counts_only_what_a_method_sees() -> None:
    cube = _cube(np.ones((12, 4, 4), dtype=bool))
    days = to_days(calendar_day(cube["time_s2"].values).astype("datetime64[ns]"))
    hidden = np.zeros(cube["valid"].shape, bool)
    hidden[3:6] = True  # three frames hidden: the middle one is two acquisitions from clear data
    distance = clear_distance(hide(cube, hidden, Protocol()))
    times = to_days(cube["time_s2"].values)
    assert distance.shape == cube["valid"].shape
    assert np.allclose(distance[4], min(days[4] - times[2], times[6] - days[4]))
    assert distance[4].min() > 1
    assert (distance[[3, 5]] < distance[4]).all()
    assert (distance[8] < 1).all()  # a clear frame: its own acquisition, hours after midnight


def test_field_ndvi_scores_are_per_frame_means_and_the_curves_band() -> None:
    from core.evaluate import field_ndvi_scores
    from core.indices import ndvi
    from core.reconstruct import FIELD_NDVI_SCALE_ATTR, FIELD_NDVI_SCALE_BY_DISTANCE_ATTR

    cube = _cube(np.ones((4, 3, 3), dtype=bool))
    true_ndvi = ndvi(cube["s2"].values, band_axis=1)
    scored = np.zeros((4, 3, 3), bool)
    scored[1] = True  # a whole frame ...
    scored[2, 0] = True  # ... and a row of another
    pred = true_ndvi + 0.05
    pred[2] = true_ndvi[2] - 0.01
    result = xr.Dataset(
        {
            "ndvi": (("time", "y", "x"), pred),
            "ndvi_p10": (("time", "y", "x"), pred - 0.04),
            "ndvi_p90": (("time", "y", "x"), pred + 0.04),
        }
    )
    got = field_ndvi_scores(cube, result, [1, 2], [1, 2], scored)
    assert got["n_field_ndvi"] == 2
    assert got["field_ndvi_mae"] == pytest.approx((0.05 + 0.01) / 2, abs=1e-6)
    # A scored pixel the method left without NDVI is left out of both means (review 28).
    gap = result.copy(deep=True)
    gap["ndvi"].values[1, 0, 0] = np.nan
    with_gap = field_ndvi_scores(cube, gap, [1, 2], [1, 2], scored)
    assert with_gap["n_field_ndvi"] == 2
    assert with_gap["field_ndvi_mae"] == pytest.approx((0.05 + 0.01) / 2, abs=1e-6)
    assert got["field_ndvi_coverage"] == 0.5  # 0.05 off is outside +-0.04, 0.01 inside
    assert got["field_ndvi_band"] == pytest.approx(0.08, abs=1e-6)
    # widths 0.08, plus 10 x the one miss's 0.01: (0.18 + 0.08) / 2
    assert got["field_ndvi_interval_score"] == pytest.approx(0.13, abs=1e-6)
    result.attrs[FIELD_NDVI_SCALE_ATTR] = 0.2  # the curve's band, narrowed to +-0.008
    narrowed = field_ndvi_scores(cube, result, [1, 2], [1, 2], scored)
    assert narrowed["field_ndvi_coverage"] == 0.0
    assert narrowed["field_ndvi_band"] == pytest.approx(0.016, abs=1e-6)
    # (0.016 + 10 x 0.042) and (0.016 + 10 x 0.002)
    assert narrowed["field_ndvi_interval_score"] == pytest.approx((0.436 + 0.036) / 2, abs=1e-6)
    # A factor per distance to clear data: each frame takes its own bucket's (8-20 days and
    # <= 8 days here), the field's one factor where the frames' distances are not given.
    result.attrs[FIELD_NDVI_SCALE_BY_DISTANCE_ATTR] = np.array([0.5, 2.0, 3.0])
    by_day = field_ndvi_scores(cube, result, [1, 2], [1, 2], scored, np.array([12.0, 3.0]))
    assert by_day["field_ndvi_band"] == pytest.approx((0.16 + 0.04) / 2, abs=1e-6)
    assert by_day["field_ndvi_coverage"] == 1.0  # 0.05 inside +-0.08, 0.01 inside +-0.02
    assert field_ndvi_scores(cube, result, [1, 2], [1, 2], scored) == narrowed
    without_red = cube.copy(deep=True)
    without_red["s2"][:, BAND["B04"]] = np.nan
    assert field_ndvi_scores(without_red, result, [1, 2], [1, 2], scored) == {}


def test_a_checkpoint_replaced_during_an_evaluation_stops_it(tmp_path) -> None:
    """Every cube of an evaluation is scored with one model: a checkpoint retrained onto the
    same path after the first cube (and not held by the process any more, as a fresh worker
    would not) stops the evaluation with a message instead of scoring the rest with it."""
    import os

    import torch

    from core.model import inference
    from core.model.checkpoint import Checkpoint, save_checkpoint
    from core.model.config import ModelConfig
    from core.model.network import FieldFlowNet

    config = ModelConfig(width=16, depth=1, heads=2, flow_hidden=32, flow_layers=1)
    path = tmp_path / "tiny.pt"

    def save(seed: int) -> None:
        torch.manual_seed(seed)
        save_checkpoint(Checkpoint(model=FieldFlowNet(config), record={"seen_sites": ["x"]}), path)
        stat = os.stat(path)  # a coarse clock must not hide the second write
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seed * 10**9))

    scored: list[str] = []

    def replace_after_the_first(line: str) -> None:
        scored.append(line)
        save(1)
        inference.loaded_checkpoint.cache_clear()

    save(0)
    options = ReconstructOptions(checkpoint=path, device="cpu", blend_field=False)
    with pytest.raises(InputError, match="was replaced or removed while this computation"):
        evaluate(
            _two_cubes(),
            ["linear", "model"],
            Protocol(max_size=4),
            options=options,
            progress=replace_after_the_first,
        )
    assert len(scored) == 1  # the first cube was scored, with the first model only


def test_the_screened_truth_leaves_out_what_the_inputs_screen_calls_haze(cubes_dir) -> None:
    """--screened-truth scores the same draws on fewer pixels: without the haze the screen
    finds, and without its surroundings too where the inputs' screen takes them
    (haze_nearby_rule.txt); a truth that kept them would score the very haze taken out."""
    from core.cube import read_cube
    from core.evaluate import evaluate_cube
    from core.reconstruct import ReconstructOptions

    cube = read_cube(cubes_dir / "be-flanders-a_2017-2018.nc")

    def scored(screened_truth: bool, nearby: bool = False) -> dict[str, tuple[int, int]]:
        protocol = Protocol(seed=0, screened_truth=screened_truth)
        options = ReconstructOptions(screen_haze=True, screen_haze_nearby=nearby)
        _, rows = evaluate_cube("flanders", cube, ["linear"], protocol, options)
        return {r.task: (r.scores.n_frames, r.scores.n_pixels) for r in rows if r.scores}

    every, spikes, around = scored(False), scored(True), scored(True, nearby=True)
    assert every.keys() == spikes.keys() == around.keys() and len(every) == 3
    for task in every:
        assert every[task][0] == spikes[task][0] == around[task][0]  # the same frames drawn
        assert every[task][1] >= spikes[task][1] >= around[task][1], task
    # a task's frames may hold no haze (this draw's cloud removal holds none of its
    # surroundings), the draws together do
    total = [sum(n for _, n in got.values()) for got in (every, spikes, around)]
    assert total[0] > total[1] > total[2], total
