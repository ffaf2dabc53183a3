"""The band fitted by distance to clear data: the fit per bucket, and what it does to a
reconstruction (the mean never moves; each pixel's band takes its bucket's factor; hidden
pixels never reach it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.model.blend import distance_bucket, nearest_clear_days
from core.model.calibration import (
    BUCKET_DAYS,
    MIN_FIELD_NDVI_FRAMES,
    MIN_SPREAD_VALUES,
    coverage,
    episode_field_ndvi,
    fit_field_ndvi_scale,
    fit_field_ndvi_scale_by_distance,
    fit_spread,
    fit_spread_by_distance,
    smallest_scale,
)
from core.model.config import MIN_BUCKET_NDVI_FRAMES
from core.model.features import REFL_SCALE
from core.model.inference import (
    cached_checkpoint,
    clear_field_cache,
    default_steps,
    field_checkpoint,
)
from core.reconstruct import ReconstructOptions, observations, reconstruct, screened
from core.season import fit_notes
from core.timeline import calendar_day, to_days
from tests.unit.test_model_inference import _checkpoint, _crop, hidden_bright_and_dark


def test_each_distance_bucket_gets_the_factor_that_covers_80_percent_of_it() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    distance = np.repeat([3.0, 12.0, 40.0], n)
    truth = rng.normal(0.0, np.repeat([0.5, 1.0, 2.0], n))  # errors grow with the distance
    mean = np.zeros_like(truth)
    draws = rng.normal(size=(16, truth.size))  # ... the samples' spread does not
    overall, scales = fit_spread_by_distance(mean, draws, truth, distance)
    assert overall == pytest.approx(fit_spread(mean, draws, truth))
    assert scales[0] < scales[1] < scales[2]
    assert scales[2] / scales[0] == pytest.approx(4.0, rel=0.15)
    for k in range(3):
        sel = distance_bucket(distance) == k
        assert coverage(mean[sel], draws[:, sel], truth[sel], scales[k]) == pytest.approx(
            0.8, abs=0.01
        )
    # A bucket with too few values to fit takes the overall factor.
    few = np.concatenate([np.arange(2 * n), 2 * n + np.arange(MIN_SPREAD_VALUES - 1)])
    overall, scales = fit_spread_by_distance(mean[few], draws[:, few], truth[few], distance[few])
    assert scales[2] == overall and scales[0] != overall


def _options(path: str, **kwargs) -> ReconstructOptions:
    """Calibrated on the field, the band read off the samples (these tests are about them)."""
    settings = dict(error_band=False, blend_field=False) | kwargs
    return ReconstructOptions(
        checkpoint=path, device="cpu", samples=8, calibrate_field=True, **settings
    )


def test_each_pixels_band_takes_its_distance_buckets_factor(flanders_cube, tmp_path) -> None:
    cube = _crop(flanders_cube, size=16)
    times = cube["time_s2"].values
    # An acquisition (cloud removal) and dates between acquisitions (anytime queries).
    query = np.concatenate([times[[5]], times[[9, 14]] + np.timedelta64(3, "D")])
    path = _checkpoint(tmp_path, perturb=True)
    clear_field_cache()
    plain = reconstruct(cube, query, "model", _options(path))
    by_distance = reconstruct(cube, query, "model", _options(path, band_by_distance=True))
    np.testing.assert_array_equal(by_distance["s2"].values, plain["s2"].values)
    base = cached_checkpoint(path, "cpu")
    steps = default_steps(base, _options(path))
    single = field_checkpoint(base, observations(cube), _options(path), steps, "cpu")
    field = field_checkpoint(
        base, observations(cube), _options(path, band_by_distance=True), steps, "cpu"
    )
    assert field.spread_scale == single.spread_scale  # the overall factor is the same fit
    assert field.spread_by_distance.shape == (3,)
    assert np.ptp(field.spread_by_distance) > 0.01
    clear = cube["valid"].values.astype(bool)
    distance = nearest_clear_days(clear, to_days(times), to_days(query))
    want = field.spread_by_distance[distance_bucket(distance)] / field.spread_scale
    for bound in ("s2_p10", "s2_p90"):
        half = (by_distance[bound] - by_distance["s2"]).values
        plain_half = (plain[bound] - plain["s2"]).values
        ok = np.abs(plain_half) > 1e-4
        ok &= (plain["s2_p10"].values > 0) & (by_distance["s2_p10"].values > 0)  # not floored
        assert ok.sum() > 1000  # of 7,680
        ratio = np.broadcast_to(want[:, None], half.shape)
        np.testing.assert_allclose(half[ok], plain_half[ok] * ratio[ok], rtol=1e-3, atol=1e-6)
    attrs = by_distance.attrs
    np.testing.assert_allclose(attrs["model_spread_by_distance"], field.spread_by_distance, 1e-3)
    (note,) = [n for n in fit_notes(attrs) if n.startswith("Uncertainty band")]
    assert "by distance to clear data" in note and "further away" in note
    assert "model_spread_by_distance" not in plain.attrs


def test_hidden_pixel_values_never_reach_the_band_by_distance(flanders_cube, tmp_path) -> None:
    path = _checkpoint(tmp_path, perturb=True)
    bright, dark = hidden_bright_and_dark(flanders_cube)
    query = bright["time_s2"].values[[6, 7]]
    options = dataclasses.replace(_options(path, band_by_distance=True), blend_field=True)
    clear_field_cache()
    a = reconstruct(bright, query, "model", options)
    clear_field_cache()
    b = reconstruct(dark, query, "model", options)
    for name in ("s2", "s2_p10", "s2_p90"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    np.testing.assert_array_equal(
        a.attrs["model_spread_by_distance"], b.attrs["model_spread_by_distance"]
    )
    assert a.attrs["model_field_ndvi_band_scale"] == b.attrs["model_field_ndvi_band_scale"]


def test_without_field_calibration_the_option_changes_nothing(flanders_cube, tmp_path) -> None:
    cube = _crop(flanders_cube, size=16)
    query = cube["time_s2"].values[[9]] + np.timedelta64(3, "D")
    path = _checkpoint(tmp_path, perturb=True)
    clear_field_cache()
    plain = dataclasses.replace(_options(path), calibrate_field=False)
    a = reconstruct(cube, query, "model", plain)
    b = reconstruct(cube, query, "model", dataclasses.replace(plain, band_by_distance=True))
    for name in ("s2", "s2_p10", "s2_p90"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_a_band_fitted_on_the_field_samples_with_fewer_steps_by_default(
    flanders_cube, tmp_path
) -> None:
    from core.model.inference import CALIBRATED_STEPS

    cube = _crop(flanders_cube, size=16)
    query = cube["time_s2"].values[[9]] + np.timedelta64(3, "D")
    path = _checkpoint(tmp_path, perturb=True)
    base = cached_checkpoint(path, "cpu")
    calibrated = _options(path)
    assert base.config.default_steps > CALIBRATED_STEPS
    assert default_steps(base, calibrated) == CALIBRATED_STEPS
    plain = dataclasses.replace(calibrated, calibrate_field=False)
    assert default_steps(base, plain) == base.config.default_steps  # its factor's steps
    one = dataclasses.replace(calibrated, samples=1)  # nothing to fit: the checkpoint's
    assert default_steps(base, one) == base.config.default_steps
    clear_field_cache()
    default = reconstruct(cube, query, "model", calibrated)
    assert default.attrs["model_steps"] == CALIBRATED_STEPS
    named = reconstruct(
        cube, query, "model", dataclasses.replace(calibrated, steps=CALIBRATED_STEPS)
    )
    for name in ("s2", "s2_p10", "s2_p90"):  # the same request as naming the steps
        np.testing.assert_array_equal(default[name].values, named[name].values)
    eight = reconstruct(cube, query, "model", dataclasses.replace(calibrated, steps=8))
    assert eight.attrs["model_steps"] == 8
    np.testing.assert_array_equal(eight["s2"].values, default["s2"].values)  # estimate: same
    assert reconstruct(cube, query, "model", plain).attrs["model_steps"] == 8


# --------------------------------------------------------------------------- the curve's band


def test_the_field_ndvi_factor_makes_the_band_hold_80_percent_of_frames() -> None:
    rng = np.random.default_rng(3)
    n = 400
    est = rng.uniform(0.2, 0.8, n)
    true = est + rng.normal(0.0, 0.02, n)  # the field means err by 0.02 ...
    rows = np.stack([true, est, est - 0.06, est + 0.06], axis=1)  # ... the pixels' band is 3 x
    scale = fit_field_ndvi_scale(rows)
    assert scale == pytest.approx(1.2816 * 0.02 / 0.06, rel=0.12)
    inside = np.abs(true - est) <= scale * 0.06
    assert inside.mean() == pytest.approx(0.8, abs=0.01)
    assert fit_field_ndvi_scale(rows[: MIN_FIELD_NDVI_FRAMES - 1]) is None  # too few frames


def test_the_curve_band_gets_a_factor_per_distance_to_clear_data() -> None:
    rng = np.random.default_rng(4)
    n = 400
    days = np.repeat([3.0, 12.0, 40.0], n)
    est = rng.uniform(0.2, 0.8, days.size)
    true = est + rng.normal(0.0, np.repeat([0.01, 0.02, 0.04], n))  # errors grow with distance
    rows = np.stack([true, est, est - 0.06, est + 0.06, days], axis=1)  # the band does not
    factors, where, frames = fit_field_ndvi_scale_by_distance(rows)
    assert factors.shape == (3,)
    np.testing.assert_array_equal(where, [3.0, 12.0, 40.0])  # the buckets' frames' median days
    np.testing.assert_array_equal(frames, [n, n, n])
    assert factors[0] < factors[1] < factors[2]
    assert factors[2] / factors[0] == pytest.approx(4.0, rel=0.2)
    bucket = distance_bucket(days)
    for k in range(3):
        inside = np.abs(true - est)[bucket == k] <= factors[k] * 0.06
        assert inside.mean() == pytest.approx(0.8, abs=0.01)
    # A bucket with too few frames takes the field's one factor (or a nearer bucket's, if wider).
    few = rows[: 2 * n + MIN_BUCKET_NDVI_FRAMES - 1]
    got, _, frames = fit_field_ndvi_scale_by_distance(few)
    assert got[2] == pytest.approx(max(fit_field_ndvi_scale(few), got[1]))
    assert got[1] == pytest.approx(factors[1])
    assert frames[2] == MIN_BUCKET_NDVI_FRAMES - 1
    _, where, _ = fit_field_ndvi_scale_by_distance(rows[: 2 * n])  # no frame over 20 days
    np.testing.assert_array_equal(where, [3.0, 12.0, BUCKET_DAYS[2]])
    # Frames never seen clear (inf days) are the farthest: they count in the far bucket's fit,
    # which stands at its finite frames' median days (or the bucket's own, with none).
    never = rows.copy()
    never[2 * n :, 4] = np.inf
    got, where, frames = fit_field_ndvi_scale_by_distance(never)
    assert frames[2] == n and got[2] == pytest.approx(factors[2])
    assert where[2] == BUCKET_DAYS[2]
    # Farther is never narrower: frames a month away that happened to err less than those a
    # week away take the week's factor.
    flipped = rows.copy()
    flipped[:, 0] = est + rng.normal(0.0, np.repeat([0.04, 0.02, 0.01], n))
    got, _, _ = fit_field_ndvi_scale_by_distance(flipped)
    assert got[0] == got[1] == got[2] == pytest.approx(fit_field_ndvi_scale(flipped[:n]))
    # No distances (episodes made without them) or too few frames: no factors.
    no_days = rows.copy()
    no_days[:, 4] = np.nan
    assert fit_field_ndvi_scale_by_distance(no_days) is None
    assert fit_field_ndvi_scale_by_distance(rows[:, :4]) is None
    assert fit_field_ndvi_scale_by_distance(rows[: MIN_FIELD_NDVI_FRAMES - 1]) is None


def test_the_curve_band_note_names_each_factor_its_days_and_its_frames() -> None:
    from core.reconstruct import (
        FIELD_NDVI_SCALE_ATTR,
        FIELD_NDVI_SCALE_BY_DISTANCE_ATTR,
        FIELD_NDVI_SCALE_DAYS_ATTR,
        FIELD_NDVI_SCALE_FRAMES_ATTR,
    )

    attrs = {
        FIELD_NDVI_SCALE_ATTR: 0.81,
        FIELD_NDVI_SCALE_BY_DISTANCE_ATTR: np.array([0.66, 0.81, 3.04]),
        FIELD_NDVI_SCALE_DAYS_ATTR: np.array([2.0, 10.0, 22.0]),
        FIELD_NDVI_SCALE_FRAMES_ATTR: np.array([40, MIN_BUCKET_NDVI_FRAMES - 1, 12]),
    }
    (note,) = [n for n in fit_notes(attrs) if n.startswith("NDVI curve band")]
    assert "0.66 at 2 days (40 hidden frames within 8 days)" in note
    assert f"0.81 ({MIN_BUCKET_NDVI_FRAMES - 1} hidden frames at 8-20 days: too few" in note
    assert "3.04 at 22 days (12 hidden frames further away)" in note
    assert "errs less" not in note  # a factor over 1 says the mean errs more than that
    # One factor: the note says which way the field mean errs against its pixels' band.
    (one,) = [n for n in fit_notes({FIELD_NDVI_SCALE_ATTR: 0.4}) if n.startswith("NDVI curve")]
    assert "errs less than its pixels' band says" in one and "0.40 x" in one
    (one,) = [n for n in fit_notes({FIELD_NDVI_SCALE_ATTR: 1.3}) if n.startswith("NDVI curve")]
    assert "errs more than its pixels' band says" in one


def test_episode_field_ndvi_is_the_hidden_pixels_means_of_each_frame(cubes_dir) -> None:
    from core.indices import ndvi
    from core.model.config import TrainConfig
    from core.model.training import load_series, validation_episodes

    series = load_series(cubes_dir / "es-field_2019.nc")
    config = TrainConfig(crop=16, min_frames=6, max_frames=8)
    episodes = validation_episodes([series], 3, config, 0)
    truth = np.concatenate([ep.truth[ep.target] for ep in episodes]) * REFL_SCALE
    mean = truth * 1.1  # an estimate 10 % too bright everywhere: NDVI unchanged
    rng = np.random.default_rng(0)
    draws = rng.normal(0.0, 0.01, (4, truth.size)).astype(np.float32)
    rows = episode_field_ndvi(episodes, mean, draws, truth, 2.0)
    n_frames = sum(
        int((ndvi(np.where(ep.target, ep.truth, np.nan), band_axis=1) > -2).any(axis=(1, 2)).sum())
        for ep in episodes
    )
    assert 0 < rows.shape[0] <= n_frames
    np.testing.assert_allclose(rows[:, 1], rows[:, 0], atol=1e-5)  # NDVI ignores brightness
    assert (rows[:, 2] < rows[:, 1]).all() and (rows[:, 3] > rows[:, 1]).all()
    first = episodes[0]
    frame = int(np.flatnonzero(np.isfinite(first.truth).any(axis=(1, 2, 3)))[0])
    want = np.nanmean(ndvi(first.truth[frame], band_axis=0))
    assert rows[0, 0] == pytest.approx(want, abs=1e-5)
    wider = episode_field_ndvi(episodes, mean, draws, truth, 4.0)
    np.testing.assert_allclose(wider[:, 3] - wider[:, 1], 2 * (rows[:, 3] - rows[:, 1]), rtol=0.05)
    assert np.isnan(rows[:, 4]).all()  # episodes made without distances
    # With distances: the median over the frame's hidden pixels of their days to clear data.
    episodes = validation_episodes([series], 3, config, 0, with_distance=True)
    rows = episode_field_ndvi(episodes, mean, draws, truth, 2.0)
    first = episodes[0]
    hidden = np.isfinite(ndvi(np.where(first.target, first.truth, np.nan), band_axis=1))
    frame = int(np.flatnonzero(hidden.any(axis=(1, 2)))[0])
    assert rows[0, 4] == pytest.approx(np.median(first.distance[frame][hidden[frame]]))
    assert (rows[:, 4] > 0).all()  # hidden pixels are never seen clear that day


def test_the_curve_and_the_frames_narrow_the_field_band_by_the_fitted_factor(
    flanders_cube, tmp_path
) -> None:
    from core.curve import band_days, field_ndvi_band, ndvi_curve
    from core.reconstruct import (
        FIELD_NDVI_SCALE_ATTR,
        FIELD_NDVI_SCALE_BY_DISTANCE_ATTR,
        FIELD_NDVI_SCALE_DAYS_ATTR,
    )

    cube = _crop(flanders_cube, size=16, frames=slice(0, 40))
    path = _checkpoint(tmp_path, perturb=True)
    options = _options(path)
    clear_field_cache()
    times = cube["time_s2"].values
    query = (calendar_day(times[[20]]) + np.timedelta64(2, "D")).astype("datetime64[ns]")
    out = reconstruct(cube, query, "model", options)
    base = cached_checkpoint(path, "cpu")
    steps = default_steps(base, options)
    seen = observations(screened(cube, options)[0])  # as reconstruct sees it (the red floor)
    field = field_checkpoint(base, seen, options, steps, "cpu")
    assert field.field_ndvi_scale is not None and field.field_ndvi_scale > 0
    scale = out.attrs[FIELD_NDVI_SCALE_ATTR]
    assert scale == pytest.approx(field.field_ndvi_scale)
    mask = np.ones((16, 16), bool)
    mean, low, high = field_ndvi_band(out, mask)
    raw_low = np.nanmean(out["ndvi_p10"].values[:, mask], axis=1)
    raw_high = np.nanmean(out["ndvi_p90"].values[:, mask], axis=1)
    np.testing.assert_allclose(mean - low, scale * (mean - raw_low), rtol=1e-5)
    np.testing.assert_allclose(high - mean, scale * (raw_high - mean), rtol=1e-5)
    # The curve takes the factor of the day's distance to clear data.
    factors = out.attrs[FIELD_NDVI_SCALE_BY_DISTANCE_ATTR]
    np.testing.assert_allclose(factors, field.field_ndvi_scale_by_distance, atol=1e-4)
    where = out.attrs[FIELD_NDVI_SCALE_DAYS_ATTR]
    np.testing.assert_allclose(where, field.field_ndvi_scale_days, atol=0.01)
    days = band_days(cube, query, mask)
    factor = np.interp(days, where, factors)
    mean, low, high = field_ndvi_band(out, mask, days)
    np.testing.assert_allclose(mean - low, factor * (mean - raw_low), rtol=1e-5)
    np.testing.assert_allclose(high - mean, factor * (raw_high - mean), rtol=1e-5)
    day = calendar_day(query)[0]
    curve = ndvi_curve(cube, day, day, method="model", options=options, field_mask=mask)
    np.testing.assert_allclose(curve[["ndvi_p10", "ndvi_p90"]].values[0], [low[0], high[0]], 1e-5)
    assert curve.attrs["ndvi_band_scale"] == pytest.approx(scale)
    assert curve.attrs["ndvi_band_scale_by_distance"] == pytest.approx(list(factors))
    assert curve.attrs["ndvi_band_scale_days"] == pytest.approx(list(where))
    # The CSV and the notes say which band it is (review 24: neither did).
    assert list(curve["band"]) == ["fitted"]
    assert not any("band not fitted" in n for n in fit_notes(out.attrs))
    # Without the band fitted on the field, the field means of the per-pixel percentiles.
    unfitted = dataclasses.replace(options, calibrate_field=False)
    plain = reconstruct(cube, query, "model", unfitted)
    assert FIELD_NDVI_SCALE_ATTR not in plain.attrs
    _, low, _ = field_ndvi_band(plain, mask)
    np.testing.assert_allclose(low, np.nanmean(plain["ndvi_p10"].values[:, mask], axis=1), 1e-6)
    curve = ndvi_curve(cube, day, day, method="model", options=unfitted, field_mask=mask)
    assert list(curve["band"]) == ["unfitted"]
    said = [n for n in fit_notes(plain.attrs) if n.startswith("NDVI curve band not fitted")]
    assert len(said) == 1 and "(that is the fit of the uncertainty band" in said[0]
    # One sample: no band, and nothing said of one.
    single = reconstruct(cube, query, "model", dataclasses.replace(unfitted, samples=1))
    assert not any("band not fitted" in n for n in fit_notes(single.attrs))
    curve = ndvi_curve(
        cube,
        day,
        day,
        method="model",
        options=dataclasses.replace(unfitted, samples=1),
        field_mask=mask,
    )
    assert list(curve["band"]) == [""]


def test_the_curve_band_fit_can_be_switched_off(flanders_cube, tmp_path) -> None:
    from core.curve import band_days, field_ndvi_band
    from core.reconstruct import FIELD_NDVI_SCALE_ATTR, FIELD_NDVI_SCALE_BY_DISTANCE_ATTR

    cube = _crop(flanders_cube, size=16, frames=slice(0, 40))
    query = cube["time_s2"].values[[20]] + np.timedelta64(2, "D")
    path = _checkpoint(tmp_path, perturb=True)
    clear_field_cache()
    on = reconstruct(cube, query, "model", _options(path))
    off = reconstruct(cube, query, "model", _options(path, fit_curve_band=False))
    assert FIELD_NDVI_SCALE_ATTR in on.attrs and FIELD_NDVI_SCALE_ATTR not in off.attrs
    assert FIELD_NDVI_SCALE_BY_DISTANCE_ATTR not in off.attrs
    for name in ("s2", "s2_p10", "s2_p90"):  # nothing else moves
        np.testing.assert_array_equal(on[name].values, off[name].values)
    # One factor for every day: the field's, the same as with the factors by distance.
    one = reconstruct(cube, query, "model", _options(path, curve_band_by_distance=False))
    assert FIELD_NDVI_SCALE_BY_DISTANCE_ATTR in on.attrs
    assert FIELD_NDVI_SCALE_BY_DISTANCE_ATTR not in one.attrs
    assert one.attrs[FIELD_NDVI_SCALE_ATTR] == on.attrs[FIELD_NDVI_SCALE_ATTR]
    mask = np.ones((16, 16), bool)
    days = band_days(cube, query, mask)
    np.testing.assert_array_equal(field_ndvi_band(one, mask, days)[1], field_ndvi_band(on, mask)[1])


def test_smallest_scale_finds_where_a_growing_coverage_reaches_its_target() -> None:
    assert smallest_scale(lambda s: min(1.0, s / 10.0)) == pytest.approx(8.0, rel=1e-6)
    assert smallest_scale(lambda s: min(1.0, s / 10.0), 0.5) == pytest.approx(5.0, rel=1e-6)
    assert smallest_scale(lambda s: 1.0) == pytest.approx(0.01, rel=1e-6)  # always covered


def test_samples_band_on_moves_the_samples_median_onto_the_estimate() -> None:
    from core.reconstruct import samples_band_on

    low, median, high = (
        np.array([0.2, -0.9, 0.5]),
        np.array([0.3, -0.5, 0.6]),
        np.array([0.6, -0.4, 0.65]),
    )
    centre = np.array([0.45, -0.8, 0.98])
    lo, hi = samples_band_on(centre, low, median, high, -1.0, 1.0)
    # The distances from the median to the edges kept, around the estimate ...
    np.testing.assert_allclose(lo[:2], [0.35, -1.0])  # ... cut at NDVI's range (-0.8 - 0.4)
    np.testing.assert_allclose(hi, [0.75, -0.7, 1.0])  # 0.98 + 0.05 cut at 1
    assert ((lo <= centre) & (centre <= hi)).all()
    # An estimate outside the range is still held (never cut past it); NaN stays NaN.
    lo, hi = samples_band_on(np.array([-0.02, np.nan]), *(np.zeros(2),) * 3, 0.0, np.inf)
    assert lo[0] == -0.02 and hi[0] == -0.02 and np.isnan(lo[1]) and np.isnan(hi[1])


def test_the_per_pixel_bands_hold_their_estimate(flanders_cube) -> None:
    """The samples' NDVI band, moved onto the estimate: it holds it on every pixel and date
    (the samples' own p10-p90 left it out on 2-3 % of them), as wide as the samples' is; the
    reflectance band from the samples never goes below 0 where the estimate does not."""
    from core.indices import ndvi

    cube = _crop(flanders_cube, size=24)
    times = cube["time_s2"].values
    query = np.concatenate([times[[5, 9]], times[[9, 14]] + np.timedelta64(3, "D")])
    options = ReconstructOptions(device="cpu", samples=8, keep_samples=True)
    out = reconstruct(cube, query, "model", options)
    est, low, high = (out[name].values for name in ("ndvi", "ndvi_p10", "ndvi_p90"))
    shown = np.isfinite(est)
    assert shown.sum() > 1000
    assert ((low <= est) & (est <= high))[shown].all()
    sample_ndvi = ndvi(out["s2_samples"].values, band_axis=2)
    p10, p90 = np.percentile(sample_ndvi, [10, 90], axis=0)
    within = shown & (low > -1) & (high < 1)  # not cut at NDVI's range
    np.testing.assert_allclose((high - low)[within], (p90 - p10)[within], atol=1e-5)
    assert not np.allclose(low[within], p10[within])  # moved, not the samples' own
    s2, s2_low = out["s2"].values, out["s2_p10"].values
    seen = np.isfinite(s2)
    assert (s2_low[seen] >= np.minimum(s2[seen], 0.0)).all()


def test_pixel_ndvi_factors_hold_80_percent_of_each_distance_bucket() -> None:
    from core.model.calibration import fit_pixel_ndvi_factors

    rng = np.random.default_rng(0)
    n = 3000
    distance = np.repeat([2.0, 12.0, 40.0], n)  # one bucket each: <= 8, 8-20, > 20 days
    noise = rng.normal(0.0, np.repeat([0.02, 0.05, 0.1], n))
    estimate = rng.uniform(0.2, 0.8, 3 * n)
    true = estimate + noise
    below = above = np.full(3 * n, 0.05)  # the samples' band: +-0.05 everywhere
    factors = fit_pixel_ndvi_factors(true, estimate, below, above, distance)
    want = [np.quantile(np.abs(noise[k * n : (k + 1) * n]), 0.8) / 0.05 for k in range(3)]
    np.testing.assert_allclose(factors, want, rtol=0.01)  # narrower near data, wider far
    for k in range(3):
        part = slice(k * n, (k + 1) * n)
        held = np.abs(noise[part]) <= factors[k] * 0.05
        assert held.mean() == pytest.approx(0.8, abs=0.005)
    # A bucket with under 200 pixels takes the factor fitted on all of them.
    few = np.concatenate([np.arange(2 * n), np.arange(2 * n, 2 * n + 50)])
    factors = fit_pixel_ndvi_factors(
        true[few], estimate[few], below[few], above[few], distance[few]
    )
    overall = fit_pixel_ndvi_factors(
        true[few], estimate[few], below[few], above[few], np.zeros(few.size)
    )[0]
    assert factors[2] == pytest.approx(overall)


def test_the_fitted_ndvi_band_scales_each_pixels_band_by_its_buckets_factor(
    flanders_cube, tmp_path
) -> None:
    """With the band fitted on the field, each pixel's NDVI band is the moved samples' band
    with its distances times the factor of the pixel's distance bucket; the estimate, the
    samples and the reflectance band do not move, and hidden pixels never reach the factors."""
    from core.indices import ndvi
    from core.reconstruct import NDVI_BAND_FACTORS_ATTR, samples_band_on

    cube = _crop(flanders_cube, size=16)
    times = cube["time_s2"].values
    query = np.concatenate([times[[5]], times[[9, 14]] + np.timedelta64(3, "D")])
    path = _checkpoint(tmp_path, perturb=True)
    clear_field_cache()
    options = dataclasses.replace(_options(path), keep_samples=True, fit_ndvi_band=True)
    fitted = reconstruct(cube, query, "model", options)
    plain = reconstruct(cube, query, "model", dataclasses.replace(options, fit_ndvi_band=False))
    for name in ("s2", "s2_samples", "s2_p10", "s2_p90"):
        np.testing.assert_array_equal(fitted[name].values, plain[name].values)
    factors = np.asarray(fitted.attrs[NDVI_BAND_FACTORS_ATTR])
    assert factors.shape == (3,) and NDVI_BAND_FACTORS_ATTR not in plain.attrs
    seen = observations(screened(cube, options)[0])["s2"].values  # as the model measures days
    distance = nearest_clear_days(np.isfinite(seen).any(axis=1), to_days(times), to_days(query))
    edges = np.percentile(ndvi(fitted["s2_samples"].values, band_axis=2), [10, 50, 90], axis=0)
    factor = factors[distance_bucket(distance)].astype(np.float32)
    want = samples_band_on(fitted["ndvi"].values, *edges, -1.0, 1.0, factor)
    shown = np.isfinite(fitted["ndvi"].values) & np.isfinite(want[0])
    assert shown.sum() > 500
    for got, expected in zip(("ndvi_p10", "ndvi_p90"), want, strict=True):
        np.testing.assert_allclose(fitted[got].values[shown], expected[shown], atol=1e-4)
    est = fitted["ndvi"].values
    assert ((fitted["ndvi_p10"].values <= est) & (est <= fitted["ndvi_p90"].values))[shown].all()
    (note,) = [n for n in fit_notes(fitted.attrs) if n.startswith("NDVI band and map fitted")]
    assert f"x {factors[0]:.2f} within 8 days" in note and f"x {factors[2]:.2f} further" in note
    # Hidden pixels' values never reach the factors.
    bright, dark = hidden_bright_and_dark(flanders_cube)
    clear_field_cache()
    hidden = _options(path, fit_ndvi_band=True)
    a = reconstruct(bright, bright["time_s2"].values[[6, 7]], "model", hidden)
    clear_field_cache()
    b = reconstruct(dark, dark["time_s2"].values[[6, 7]], "model", hidden)
    np.testing.assert_array_equal(a.attrs[NDVI_BAND_FACTORS_ATTR], b.attrs[NDVI_BAND_FACTORS_ATTR])
    np.testing.assert_array_equal(a["ndvi_p10"].values, b["ndvi_p10"].values)
