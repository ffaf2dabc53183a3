"""The per-field blend with the Whittaker smoother: distances, the fit, the order of the values it
is fitted on, and what it does to a reconstruction (mean and samples move together, hidden
pixels never reach it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

from core.baselines import smooth_whittaker, whittaker_floor
from core.batch import model_measures
from core.cube import S2_BANDS
from core.model import blend as blend_module
from core.model.blend import (
    BLEND_GRID,
    MIN_NDVI_FRAMES,
    MIN_VALUES,
    FieldBlend,
    bucket_of,
    clear_span_days,
    distance_bucket,
    episode_ratio_range,
    field_scores,
    fit_blend,
    nearest_clear_days,
)
from core.model.calibration import MIN_FRAME_PIXELS, field_ndvi_scores
from core.model.config import MIN_CLEAR_ACQUISITIONS, TrainConfig
from core.model.features import REFL_SCALE
from core.model.inference import (
    cached_checkpoint,
    clear_field_cache,
    default_steps,
    field_attrs,
    field_checkpoint,
)
from core.model.network import FieldFlowNet
from core.model.training import (
    blend_targets,
    episode_predictions,
    load_series,
    target_episodes,
    validation_episodes,
)
from core.reconstruct import ReconstructOptions, observations, reconstruct, write_reconstruction
from core.season import TRAINED_ON_TAIL, accuracy_headline, better_baseline, fit_notes
from core.timeline import to_days
from tests.unit.test_model_inference import TINY, _checkpoint, _crop, hidden_bright_and_dark


def random_series(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """30 dates of 5 x 6 pixels, clear 30 % of the time, pixel (0, 0) never; 43 query dates, the
    first three at acquisitions 0, 7 and 29."""
    rng = np.random.default_rng(seed)
    days = np.sort(rng.choice(400, 30, replace=False)).astype(float) + 0.4
    clear = rng.random((30, 5, 6)) < 0.3
    clear[:, 0, 0] = False  # a pixel never seen
    query = np.concatenate([days[[0, 7, 29]], rng.uniform(-20, 420, 40)])
    return days, clear, query


def test_nearest_clear_days_matches_a_brute_force_search() -> None:
    days, clear, query = random_series(0)
    got = nearest_clear_days(clear, days, query)
    gaps = np.abs(query[:, None] - days[None])  # (Q, T)
    want = np.where(clear[None], gaps[:, :, None, None], np.inf).min(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isinf(got[:, 0, 0]).all()


def test_clear_span_days_matches_a_brute_force_search() -> None:
    days, clear, query = random_series(3)
    got = clear_span_days(clear, days, query)
    for q, at in enumerate(query):
        for y, x in np.ndindex(5, 6):
            seen = days[clear[:, y, x]]
            before, after = seen[seen <= at], seen[seen >= at]
            want = after.min() - before.max() if before.size and after.size else np.inf
            assert got[q, y, x] == pytest.approx(want, rel=1e-6), (q, y, x)
    assert np.isinf(got[:, 0, 0]).all()
    # a clear observation spans 0 days; the buckets' edges belong to the lower bucket
    assert (got[:3][clear[[0, 7, 29]]] == 0).all()
    assert (
        bucket_of(np.array([0.0, 20.0, 20.5, 40.0, 41.0, np.inf]), (20.0, 40.0))
        == [0, 0, 1, 1, 2, 2]
    ).all()


def test_fit_blend_picks_the_better_estimate_per_band_and_distance() -> None:
    rng = np.random.default_rng(1)
    n = 6000
    truth = rng.uniform(0, 1, n)
    band = rng.integers(0, 3, n)  # bands 3-9 have no values: weight 0
    distance = rng.choice([2.0, 12.0, 40.0], n)
    near = distance <= 8
    noise = rng.laplace(0, 0.05, n)
    # Near a clear observation the model is exact; far from one, the smoother is.
    model = np.where(near, truth, truth + noise)
    smoother = np.where(near, truth + noise, np.where(distance > 20, truth, truth - noise))
    blend = fit_blend(model, smoother, truth, band, distance)
    for b in range(3):
        assert blend.weights[b, 0] == 0.0
        assert blend.weights[b, 1] == pytest.approx(0.5)  # errors cancel half-way
        assert blend.weights[b, 2] == 1.0
    assert (blend.weights[3:] == 0).all()
    # A bucket with too few values takes its band's weight over all buckets.
    few = (band == 0) & (distance > 20)
    keep = ~few | (np.cumsum(few) <= MIN_VALUES // 2)
    sparse = fit_blend(model[keep], smoother[keep], truth[keep], band[keep], distance[keep])
    sel = keep & (band == 0)
    errors = [
        np.abs(model[sel] + w * (smoother[sel] - model[sel]) - truth[sel]).mean()
        for w in BLEND_GRID
    ]
    assert sparse.weights[0, 2] == BLEND_GRID[int(np.argmin(errors))]
    assert sparse.weights[1, 2] == 1.0
    assert blend.measured.tolist() == [True, True, True] == sparse.measured.tolist()


def test_a_distance_with_nothing_hidden_is_not_said_to_be_measured() -> None:
    # A short period: every hidden value lies within 8 days of clear data. The weights further
    # away are the field-wide ones, and the note said "measured" of them (review 4).
    rng = np.random.default_rng(2)
    n = 3000
    truth = rng.uniform(0, 1, n)
    band = rng.integers(0, 3, n)
    model = truth + rng.laplace(0, 0.05, n)
    smoother = truth + rng.laplace(0, 0.05, n)
    blend = fit_blend(model, smoother, truth, band, np.full(n, 3.0))
    assert blend.measured.tolist() == [True, False, False]
    attrs = {**blend.attrs(), "model_blend_field": 1}
    (said,) = [n for n in fit_notes(attrs) if n.startswith("Field blend")]
    assert said.endswith(
        "Nothing was hidden at 8-20 days or further away (too few clear pixels that far from "
        "other clear data): there the weight is the field-wide one, not measured."
    )
    everywhere = fit_blend(model, smoother, truth, band, rng.choice([2.0, 12.0, 40.0], n))
    (said,) = [n for n in fit_notes(everywhere.attrs()) if n.startswith("Field blend")]
    assert "Nothing was hidden" not in said


def test_a_blend_by_span_fits_and_applies_by_the_gaps_span() -> None:
    rng = np.random.default_rng(4)
    n = 4000
    truth = rng.uniform(0, 1, n)
    band = np.zeros(n, int)
    span = rng.choice([10.0, 30.0, 60.0], n)
    noise = rng.laplace(0, 0.05, n)
    model = np.where(span > 40, truth + noise, truth)  # the smoother wins in long gaps only
    smoother = np.where(span > 40, truth, truth + noise)
    blend = fit_blend(model, smoother, truth, band, span, "span")
    assert blend.measure == "span" and blend.edges == (20.0, 40.0)
    np.testing.assert_array_equal(blend.weights[0], [0.0, 0.0, 1.0])
    assert blend.attrs()["blend_measure"] == "span"
    np.testing.assert_array_equal(blend.attrs()["blend_span_edges_days"], [20.0, 40.0])
    moved = blend.delta_values(model, smoother, band, span)
    np.testing.assert_allclose((model + moved)[span > 40], truth[span > 40], atol=1e-6)
    assert not moved[span <= 40].any()
    notes = fit_notes(blend.attrs())
    assert "leans 0 % on the Whittaker smoother in gaps of up to 20 days" in notes[0]
    assert "100 % in longer gaps" in notes[0]  # the mean over the bands fitted: band 0 alone


def test_a_field_blend_by_span_reaches_the_reconstruction(
    flanders_cube, tmp_path, monkeypatch
) -> None:
    cube = _crop(flanders_cube, size=16)
    query = cube["time_s2"].values[[9]] + np.timedelta64(3, "D")
    path = _checkpoint(tmp_path, perturb=True)
    options = ReconstructOptions(checkpoint=path, device="cpu", samples=2, smooth_days=0)
    clear_field_cache()
    by_distance = reconstruct(cube, query, "model", options)
    monkeypatch.setattr(blend_module, "BLEND_MEASURE", "span")
    by_span = reconstruct(cube, query, "model", options)  # not the cached distance fit
    assert by_distance.attrs["blend_measure"] == "distance"
    assert by_span.attrs["blend_measure"] == "span" and "blend_span_edges_days" in by_span.attrs
    base = cached_checkpoint(path, "cpu")
    field = field_checkpoint(base, observations(cube), options, default_steps(base, options), "cpu")
    np.testing.assert_allclose(by_span.attrs["blend_weights"], field.blend.weights.ravel())
    clear_field_cache()


def test_blend_moves_values_toward_the_smoother_by_their_weight() -> None:
    weights = np.zeros((10, 3))
    weights[2, 2] = 1.0
    weights[7, 1] = 0.3
    blend = FieldBlend(weights)
    mean = np.full((2, 10, 1, 3), 0.2, np.float32)
    smoother = np.full_like(mean, 0.4)
    smoother[0, 2, 0, 0] = np.nan  # no smoother there: no change
    distance = np.array([[[30.0, 10.0, 1.0]], [[30.0, 10.0, 1.0]]], np.float32)
    delta = blend.delta(mean, smoother, distance)
    assert delta[1, 2, 0, 0] == pytest.approx(0.2) and delta[0, 2, 0, 0] == 0
    assert delta[:, 7, 0, 1] == pytest.approx(0.06)
    assert np.count_nonzero(delta) == 3
    assert (distance_bucket(np.array([8.0, 8.01, 20.0, 20.5, np.inf])) == [0, 1, 1, 2, 2]).all()


def test_field_scores_cross_fit_the_blend_and_score_every_method_on_the_same_values() -> None:
    rng = np.random.default_rng(3)
    n = 8000
    truth = rng.uniform(0, 1, n)
    band = rng.integers(0, 4, n)
    distance = rng.choice([2.0, 12.0, 40.0], n)
    episode = rng.integers(0, 24, n)
    noise = rng.laplace(0, 0.05, n)
    network = truth + noise
    linear = truth + 2 * noise
    smoother = np.where(distance > 20, truth, truth - noise)  # exact far from clear data
    smoother[:50] = np.nan  # a value the smoother has none for is left out of every score
    scores = field_scores(network, smoother, linear, truth, band, distance, episode, scale=2.0)
    used = np.isfinite(smoother)
    assert scores.values == used.sum() and scores.episodes == 24
    for got, method in ((scores.network, network), (scores.whittaker, smoother)):
        assert got == pytest.approx(np.abs(method - truth)[used].mean() / 2.0)
    assert scores.linear == pytest.approx(np.abs(linear - truth)[used].mean() / 2.0)
    # The blend takes the smoother far away and half of each near (errors cancel half-way).
    assert scores.model < 0.5 * min(scores.network, scores.whittaker)
    # By days to clear data (<= 8, 8-20, > 20): each method's error on that bucket's values.
    for row, days in zip(scores.by_distance, (2.0, 12.0, 40.0), strict=True):
        at = used & (distance == days)
        assert row[0] == at.sum()
        assert row[2] == pytest.approx(np.abs(smoother - truth)[at].mean() / 2.0)
        assert row[3] == pytest.approx(np.abs(linear - truth)[at].mean() / 2.0)
    assert scores.by_distance[2, 2] == 0  # the smoother is exact far from clear data
    assert scores.attrs()["model_field_mae_by_distance"].shape == (12,)
    # and how much the figure rests on the episodes drawn (the test above)
    low, high = scores.ratio_range
    assert low < scores.model / min(scores.whittaker, scores.linear) < high
    np.testing.assert_allclose(
        scores.attrs()["model_field_mae_ratio_range"], (low, high), atol=1e-4
    )
    # Cross-fitted: a blend fitted on every value would know each value's own error. Here the
    # smoother is exact on the odd episodes only, which the even ones cannot learn from.
    odd = episode % 2 == 1
    tricky = np.where(odd, truth, truth + 0.3)
    crossed = field_scores(network, tricky, linear, truth, band, distance, episode)
    in_sample = fit_blend(network, tricky, truth, band, distance)
    flattered = network + in_sample.delta_values(network, tricky, band, distance)
    assert crossed.model > np.abs(flattered - truth).mean() + 0.01
    # One episode: nothing to fit the blend on for scoring it.
    one = np.zeros(n, np.intp)
    assert field_scores(network, smoother, linear, truth, band, distance, one) is None


def test_the_field_figures_range_resamples_whole_episodes() -> None:
    # be-flanders-a's figure read 0.78-0.87 over five seeds of its 24 episodes (2026-12-07):
    # a Run's one draw says how much its figure rests on which pixels were hidden.
    rng = np.random.default_rng(0)
    episode = np.repeat(np.arange(24), 100)
    base = rng.uniform(0.01, 0.05, episode.size)
    # Every episode the same ratio (0.9 of the smoother's, linear worse): no spread at all.
    same = episode_ratio_range([0.9 * base, base, 2 * base], episode)
    assert same == pytest.approx((0.9, 0.9))
    # Half the episodes the model does far better, half worse: the range holds both sides,
    # and the ratio on all of them lies inside it.
    good = episode % 2 == 0
    model = np.where(good, 0.5 * base, 1.3 * base)
    low, high = episode_ratio_range([model, base, 2 * base], episode)
    ratio = model.sum() / base.sum()
    assert low < ratio < high and low < 0.9 and high > 0.9 - 0.001
    # Values are resampled with their episodes, not one by one: spreading each episode's
    # values over one pixel-sized episode each would narrow the range.
    one_each = np.arange(episode.size)
    narrow = episode_ratio_range([model, base, 2 * base], one_each)
    assert narrow[1] - narrow[0] < 0.5 * (high - low)
    assert episode_ratio_range([model, base, 2 * base], np.zeros_like(episode)) is None
    # The same seed, the same range: a Run's note does not change from one Run to the next.
    assert episode_ratio_range([model, base, 2 * base], episode) == (low, high)


def test_blend_targets_line_up_with_the_models_predictions(cubes_dir) -> None:
    series = load_series(cubes_dir / "es-field_2019.nc")
    config = TrainConfig(crop=16, min_frames=6, max_frames=8)
    episodes = validation_episodes([series], 4, config, 0, TINY.smooth_features, with_smoother=True)
    assert len(episodes) == 4
    _, linear, _, truth = episode_predictions(FieldFlowNet(TINY), episodes, samples=1, steps=1)
    smoother, band, distance = blend_targets(episodes)
    assert smoother.shape == band.shape == distance.shape == truth.shape
    want = np.concatenate([ep.truth[ep.target] for ep in episodes]) * REFL_SCALE
    np.testing.assert_allclose(truth, want, rtol=1e-6)  # same values, same order
    # A hidden value is no clear observation: none of them is at distance 0 from one.
    assert (distance > 0).all()
    # The field's scores take linear interpolation of the visible values from the same values:
    # the network's input base; and each value's episode.
    want = np.concatenate([ep.inputs.base[ep.target] for ep in episodes])
    np.testing.assert_array_equal(linear, want)
    episode = target_episodes(episodes)
    assert list(np.bincount(episode)) == [int(ep.target.sum()) for ep in episodes]


def test_field_ndvi_scores_score_each_method_on_the_same_hidden_pixels(cubes_dir) -> None:
    # Review 30 (M5): the field's accuracy was given in reflectance alone, while the curve
    # shows NDVI. On real episodes, the NDVI errors per pixel and per hidden date's mean are
    # those computed here by hand from the hidden red and NIR values.
    series = load_series(cubes_dir / "es-field_2019.nc")
    config = TrainConfig(crop=16, min_frames=6, max_frames=8)
    episodes = validation_episodes([series], 6, config, 0, TINY.smooth_features)
    truth = np.concatenate([ep.truth[ep.target] for ep in episodes])
    rng = np.random.default_rng(5)
    model = truth * rng.uniform(0.9, 1.1, truth.size)
    whittaker = truth * rng.uniform(0.8, 1.2, truth.size)
    linear = truth + 0.01
    linear[: truth.size // 7] = np.nan  # a pixel without linear's value counts for no method
    scores = field_ndvi_scores(episodes, (model, whittaker, linear), truth)
    red, nir = S2_BANDS.index("B04"), S2_BANDS.index("B08")
    pixel_errors: list[list[np.ndarray]] = [[], [], []]
    frame_errors: list[list[float]] = [[], [], []]
    offset = 0
    for ep in episodes:
        n = int(ep.target.sum())
        maps = []
        for values in (truth, model, whittaker, linear):
            full = np.full(ep.target.shape, np.nan)
            full[ep.target] = values[offset : offset + n]
            maps.append((full[:, nir] - full[:, red]) / (full[:, nir] + full[:, red]))
        offset += n
        ok = np.isfinite(np.stack(maps)).all(axis=0)
        for i, est in enumerate(maps[1:]):
            pixel_errors[i].append(np.abs(est[ok] - maps[0][ok]))
            for frame in range(ok.shape[0]):
                if ok[frame].sum() >= MIN_FRAME_PIXELS:
                    error = est[frame][ok[frame]].mean() - maps[0][frame][ok[frame]].mean()
                    frame_errors[i].append(abs(error))
    assert scores.pixels == sum(e.size for e in pixel_errors[0]) > 1000
    assert scores.frames == len(frame_errors[0]) >= MIN_NDVI_FRAMES
    for i in range(3):
        assert scores.pixel[i] == pytest.approx(np.concatenate(pixel_errors[i]).mean(), rel=1e-4)
        assert scores.frame_mean[i] == pytest.approx(np.mean(frame_errors[i]), rel=1e-4)
    assert scores.pixel[0] < scores.pixel[1]  # the model's noise is half the smoother's
    # Linear's constant offset shifts every NDVI toward 0, by about the same on a date's mean.
    assert scores.frame_mean[2] == pytest.approx(scores.pixel[2], rel=0.2)
    attrs = scores.attrs()
    assert attrs["model_field_ndvi_pixels"] == scores.pixels
    np.testing.assert_allclose(attrs["model_field_mean_ndvi_mae"], scores.frame_mean, atol=1e-4)
    # Too few hidden dates: no date means; no red or NIR (a 20 m cube): no NDVI at all.
    last = slice(truth.size - int(episodes[-1].target.sum()), None)
    few = field_ndvi_scores(
        episodes[-1:], (model[last], whittaker[last], linear[last]), truth[last]
    )
    assert few.frames < MIN_NDVI_FRAMES and few.frame_mean is None
    assert "model_field_mean_ndvi_mae" not in few.attrs()
    no_red = truth.copy()
    bands = np.concatenate([np.nonzero(ep.target)[1] for ep in episodes])
    no_red[bands == red] = np.nan
    assert field_ndvi_scores(episodes, (model, whittaker, linear), no_red) is None


def test_reconstruction_moves_mean_and_samples_by_the_fitted_weights(
    flanders_cube, tmp_path
) -> None:
    cube = _crop(flanders_cube, size=16)
    times = cube["time_s2"].values
    query = np.concatenate([times[[5]], times[[9]] + np.timedelta64(3, "D")])
    path = _checkpoint(tmp_path, perturb=True)
    plain_options = ReconstructOptions(  # the network's own estimate at each date
        checkpoint=path, device="cpu", samples=4, seed=2, blend_field=False, smooth_days=0
    )
    blend_options = dataclasses.replace(plain_options, blend_field=True)
    clear_field_cache()
    plain = reconstruct(cube, query, "model", plain_options)
    blended = reconstruct(cube, query, "model", blend_options)
    base = cached_checkpoint(path, "cpu")
    steps = default_steps(base, blend_options)
    field = field_checkpoint(base, observations(cube), blend_options, steps, "cpu")
    assert field.blend is not None and field.blend.weights.max() > 0
    assert field.model is base.model and field.spread_scale == base.spread_scale
    observed = cube["s2"].where(cube["valid"] == 1).values
    smoother = np.maximum(  # never below the lowest each pixel was seen at, nor 0
        smooth_whittaker(observed, to_days(times), to_days(query)), whittaker_floor(observed)
    )
    distance = nearest_clear_days(cube["valid"].values == 1, to_days(times), to_days(query))
    want = plain["s2"].values + field.blend.delta(plain["s2"].values, smoother, distance)
    kept = blended["observed"].values.astype(bool)[:, None] | ~np.isfinite(want)
    np.testing.assert_allclose(blended["s2"].values[~kept], want[~kept], atol=2e-6)
    assert np.abs(blended["s2"].values - plain["s2"].values)[~kept].max() > 1e-3
    # The samples moved with their mean (where the band's floor at 0 reflectance cuts neither).
    moved = ~kept & (plain["s2_p10"].values > 0) & (blended["s2_p10"].values > 0)
    assert moved.sum() > 1000  # about half of the 5,120 values today
    for bound in ("s2_p10", "s2_p90"):
        np.testing.assert_allclose(
            (blended[bound] - blended["s2"]).values[moved],
            (plain[bound] - plain["s2"]).values[moved],
            atol=2e-6,
        )


def test_hidden_pixel_values_never_reach_the_blend(flanders_cube, tmp_path) -> None:
    path = _checkpoint(tmp_path, perturb=True)
    bright, dark = hidden_bright_and_dark(flanders_cube)
    query = bright["time_s2"].values[[6, 7]]
    options = ReconstructOptions(
        checkpoint=path, device="cpu", samples=8, blend_field=True, calibrate_field=True
    )
    clear_field_cache()
    a = reconstruct(bright, query, "model", options)
    clear_field_cache()
    b = reconstruct(dark, query, "model", options)
    for name in ("s2", "s2_p10", "s2_p90"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_a_series_too_short_to_fit_keeps_the_model_alone(flanders_cube, tmp_path) -> None:
    path = _checkpoint(tmp_path, perturb=True)
    base = cached_checkpoint(path, "cpu")
    short = _crop(flanders_cube, frames=slice(0, 3))
    options = ReconstructOptions(checkpoint=path, device="cpu", blend_field=True)
    clear_field_cache()
    assert field_checkpoint(base, short, options, 2, "cpu").blend is None


def test_a_field_with_too_few_clear_acquisitions_is_neither_fitted_on_nor_tuned(
    flanders_cube, tmp_path
) -> None:
    # Review 9: a cloudy spring with one clear acquisition among many. Every episode hid that
    # frame, so the band "fitted on the field" held the truth on 0 of 10 clear days and the
    # tuned network copied the frame over the season. The acquisitions with clear pixels count,
    # not all of them.
    path = _checkpoint(tmp_path, perturb=True)
    base = cached_checkpoint(path, "cpu")
    cube = _crop(flanders_cube, size=16)
    valid = cube["valid"].values
    clearest = np.argsort(-valid.sum(axis=(1, 2), dtype=np.int64), kind="stable")
    options = ReconstructOptions(checkpoint=path, device="cpu", samples=8, calibrate_field=True)
    fitted = {}
    for kept in (1, MIN_CLEAR_ACQUISITIONS - 1, MIN_CLEAR_ACQUISITIONS):
        few = valid.copy()
        few[clearest[kept:]] = 0
        cloudy = cube.assign(valid=cube["valid"].copy(data=few))
        clear_field_cache()
        field = field_checkpoint(base, observations(cloudy), options, 2, "cpu")
        fitted[kept] = (field.blend is not None, field.band_fitted, field.field_ndvi_scale)
        # Tuning asked for: done from four on; below, skipped, and the output says so.
        tuned = dataclasses.replace(options, adapt_steps=2)
        field = field_checkpoint(base, observations(cloudy), tuned, 2, "cpu")
        assert (field.model is not base.model) == (kept >= MIN_CLEAR_ACQUISITIONS)
        said = fit_notes(field_attrs(base, field, tuned))
        skipped = [n for n in said if n.startswith("Not tuned to this field")]
        assert len(skipped) == int(kept < MIN_CLEAR_ACQUISITIONS)
    assert fitted[1] == fitted[MIN_CLEAR_ACQUISITIONS - 1] == (False, False, None)
    assert fitted[MIN_CLEAR_ACQUISITIONS][:2] == (True, True)


def test_the_output_records_the_fits_and_the_season_says_them(flanders_cube, tmp_path) -> None:
    cube = _crop(flanders_cube, size=16)
    query = cube["time_s2"].values[[9]] + np.timedelta64(3, "D")
    path = _checkpoint(tmp_path, perturb=True)
    options = ReconstructOptions(checkpoint=path, device="cpu", samples=8, calibrate_field=True)
    clear_field_cache()
    out = reconstruct(cube, query, "model", options)
    base = cached_checkpoint(path, "cpu")
    field = field_checkpoint(base, observations(cube), options, default_steps(base, options), "cpu")
    np.testing.assert_allclose(out.attrs["blend_weights"], field.blend.weights.ravel())
    assert out.attrs["model_spread_scale"] == pytest.approx(field.spread_scale)
    written = write_reconstruction(out, tmp_path / "out.nc")
    with xr.open_dataset(written) as again:
        np.testing.assert_allclose(
            again.attrs["blend_mean_weights"], out.attrs["blend_mean_weights"]
        )
        notes = fit_notes(dict(again.attrs))
    # the blend, the field's scores, the samples' width, the error band, the curve's band and
    # the model that made it
    assert len(notes) == 6
    near = round(100 * float(out.attrs["blend_mean_weights"][0]))
    assert notes[0].startswith("Field blend:") and f"leans {near} %" in notes[0]
    model, _, whittaker, linear = (float(v) for v in again.attrs["model_field_mae"])
    assert notes[1].startswith("Accuracy measured on this field: its own clear pixels")
    assert f"{model:.4f} by the model" in notes[1]
    assert f"{whittaker:.4f} by the Whittaker" in notes[1]
    assert f"{linear:.4f} by linear interpolation" in notes[1]
    factor = field.spread_scale / out.attrs["model_checkpoint_spread_scale"]
    assert f"{factor:.2f} x the width" in notes[2]
    near = float(again.attrs["model_field_ndvi_band_scale_by_distance"][0])
    assert notes[3].startswith("Reflectance band (p10-p90) from this field's own errors")
    assert notes[4].startswith("NDVI curve band") and f"scaled by {near:.2f}" in notes[4]
    digest = cached_checkpoint(path, "cpu").weights_sha256
    assert notes[5].startswith(f"Model: your checkpoint {path}, weights {digest[:12]}")
    # Too short a series to fit the blend says so; the baselines say nothing.
    short = _crop(flanders_cube, frames=slice(0, 3))
    alone = reconstruct(short, short["time_s2"].values[[1]], "model", options)
    assert "blend_weights" not in alone.attrs
    assert fit_notes(alone.attrs)[:2] == [
        "Field blend: too few clear acquisitions to measure it; the model's estimate alone.",
        "Uncertainty band: too few clear acquisitions to fit it on this field; the width "
        "fitted on the model's training sites, likely too narrow far from clear data.",
    ]  # nothing fitted, nothing claimed
    assert fit_notes(reconstruct(cube, query, "linear").attrs) == []


def test_a_tuned_runs_field_scores_are_of_the_network_before_its_tuning(
    flanders_cube, tmp_path
) -> None:
    # Tuning learns from the field's own clear pixels, the very ones its scores hide: scored
    # after it, the model's figure would flatter it (2-5 points on the shared cubes).
    cube = _crop(flanders_cube, size=16)
    query = cube["time_s2"].values[[9]]
    path = _checkpoint(tmp_path, perturb=True)
    plain = ReconstructOptions(checkpoint=path, device="cpu", samples=8, calibrate_field=True)
    clear_field_cache()
    untuned = reconstruct(cube, query, "model", plain).attrs
    tuned = reconstruct(cube, query, "model", dataclasses.replace(plain, adapt_steps=3)).attrs
    assert untuned["model_field_mae_before_tuning"] == 0
    assert tuned["model_field_mae_before_tuning"] == 1
    assert tuned["model_adapt_steps"] == 3
    # The same episodes, the same network: the same figures, whatever the tuning did.
    np.testing.assert_allclose(tuned["model_field_mae"], untuned["model_field_mae"])
    # and in NDVI, on the same hidden pixels (flanders has red and NIR)
    assert (
        untuned["model_field_ndvi_pixels"] > 0
        and np.isfinite(untuned["model_field_ndvi_mae"]).all()
    )
    np.testing.assert_allclose(tuned["model_field_ndvi_mae"], untuned["model_field_ndvi_mae"])
    assert " In NDVI, the index the curve shows, it erred " in accuracy_headline(untuned)
    assert "before its tuning to this field" in fit_notes(tuned)[1]
    assert "as this Run makes it" in fit_notes(untuned)[1]
    # The checkpoint was trained on "nowhere", not on this cube's site: nothing flatters it.
    assert untuned["model_trained_on_site"] == 0
    assert not accuracy_headline(untuned).endswith(TRAINED_ON_TAIL)


def test_the_headline_gives_the_ndvi_errors_and_where_the_curve_does_better_elsewhere() -> None:
    # Review 30 (M5): an agronomist reads the NDVI curve, not reflectance. hu-alfold's own
    # figures (benchmarks/field_scores.txt): 4 % better in reflectance, worse on the curve.
    attrs = {
        "model_field_mae": np.array([0.01893, 0.01888, 0.02112, 0.01968]),
        "model_field_mae_values": 403004,
        "model_field_mae_episodes": 24,
        "model_field_ndvi_mae": np.array([0.0691, 0.0912, 0.0654]),
        "model_field_ndvi_pixels": 100751,
        "model_field_ndvi_frames": 122,
        "model_field_mean_ndvi_mae": np.array([0.0334, 0.0348, 0.0307]),
    }
    assert accuracy_headline(attrs) == (
        "Measured on this field's own clear pixels, hidden in turn, the model erred 4 % less "
        "than linear interpolation in reflectance, the better simpler method. In NDVI, the "
        "index the curve shows, it erred 9 % more than linear interpolation on a hidden date's "
        "mean (0.033 against 0.031) and 6 % more per pixel (0.069 against 0.065): for the "
        "curve, linear interpolation did better on this field (Settings, Reconstruction method)."
    )
    assert better_baseline(attrs) == "linear"  # the page offers to run it
    # A tuned Run's figures are of its network before the tuning, which learns from these
    # pixels: on hu-alfold 9 % worse on the curve's points before it, 11 % better after it,
    # scored where it was tuned. Neither is the Run's model: figures, a hint, no verdict.
    tuned = {**attrs, "model_field_mae_before_tuning": 1}
    assert accuracy_headline(tuned).endswith(
        "In NDVI, the index the curve shows, its network before its tuning to this field erred "
        "9 % more than linear interpolation on a hidden date's mean (0.033 against 0.031) and "
        "6 % more per pixel (0.069 against 0.065); what the tuning changes cannot be measured "
        "on these pixels, which it learns from: compare the curve with linear interpolation's "
        "(Settings, Reconstruction method)."
    )
    assert better_baseline(tuned) is None
    fine = {**tuned, "model_field_mean_ndvi_mae": np.array([0.0300, 0.0348, 0.0307])}
    assert accuracy_headline(fine).endswith("which it learns from.")
    assert model_measures(attrs)["model_ndvi_vs_baseline"] == pytest.approx(1.088, abs=1e-3)
    (note,) = [n for n in fit_notes(attrs) if n.startswith("Accuracy measured")]
    assert note.endswith(
        " In NDVI, on the 100,751 hidden pixels with red and near infrared: 0.069 by the model, "
        "0.091 by the Whittaker smoother and 0.065 by linear interpolation per pixel; on the "
        "mean NDVI of a hidden date's hidden pixels (122 dates), as a point of the curve is the "
        "field's mean, 0.033, 0.035 and 0.031."
    )
    # Better on the curve, worse per pixel, each against its own better baseline: no advice.
    curve = {**attrs, "model_field_mean_ndvi_mae": np.array([0.0300, 0.0327, 0.0348])}
    line = accuracy_headline(curve)
    assert line.endswith(
        "it erred 8 % less than the Whittaker smoother on a hidden date's mean (0.030 against "
        "0.033) and 6 % more than linear interpolation per pixel (0.069 against 0.065)."
    )
    assert better_baseline(curve) is None
    # Too few hidden dates to score their means: the pixels alone, and no advice from them.
    pixels = {k: v for k, v in attrs.items() if k != "model_field_mean_ndvi_mae"}
    pixels["model_field_ndvi_frames"] = 7
    assert accuracy_headline(pixels).endswith(
        "it erred 6 % more than linear interpolation per pixel (0.069 against 0.065)."
    )
    assert better_baseline(pixels) is None and "model_ndvi_vs_baseline" not in model_measures(
        pixels
    )
    (note,) = [n for n in fit_notes(pixels) if n.startswith("Accuracy measured")]
    assert note.endswith("per pixel; 7 hidden dates were too few to score their means.")
    # How much the figure rests on which pixels were hidden (episodes resampled), where the
    # Run recorded it: words on the page, figures in the note.
    ranged = {**attrs, "model_field_mae_ratio_range": np.array([0.945, 0.98])}
    assert accuracy_headline(ranged).startswith(
        "Measured on this field's own clear pixels, hidden in turn, the model erred 4 % less "
        "than linear interpolation in reflectance, the better simpler method (between 2 and 6 % "
        "less, depending on which clear pixels are hidden). In NDVI"
    )
    (note,) = [n for n in fit_notes(ranged) if n.startswith("Accuracy measured")]
    assert "the better baseline's ranged from 0.945 to 0.980 (p10-p90)" in note
    straddling = {**attrs, "model_field_mae_ratio_range": np.array([0.97, 1.03])}
    assert "(between 3 % less and 3 % more, depending on" in accuracy_headline(straddling)
    # Worse in reflectance already: the line says to choose that method; no second advice.
    worse = {**attrs, "model_field_mae": np.array([0.0360, 0.0350, 0.0330, 0.0340])}
    assert accuracy_headline(worse).count("Settings, Reconstruction method") == 1
    assert better_baseline(worse) == "whittaker"
    # No NDVI figures (a cube without red or NIR): the reflectance line as before.
    plain = {k: v for k, v in attrs.items() if "ndvi" not in k}
    assert accuracy_headline(plain).endswith(
        "than linear interpolation, the better simpler method."
    )


@pytest.mark.parametrize(
    ("maes", "says"),
    [
        ([0.0413, 0.0427, 0.0458, 0.0451], "erred 8 % less than linear interpolation"),
        ([0.0323, 0.0330, 0.0327, 0.0328], "about as much as the Whittaker smoother"),
        ([0.0360, 0.0350, 0.0330, 0.0340], "erred 9 % more than the Whittaker smoother"),
    ],
)
def test_the_pages_headline_says_how_the_model_did_against_the_better_baseline(maes, says) -> None:
    attrs = {"model_field_mae": np.array(maes), "model_field_mae_values": 1000}
    line = accuracy_headline(attrs)
    assert line.startswith("Measured on this field's own clear pixels") and says in line
    (note,) = [n for n in fit_notes(attrs) if n.startswith("Accuracy measured")]
    assert f"{maes[0]:.4f} by the model as this Run makes it" in note
    assert accuracy_headline({}) is None
    assert not line.endswith(TRAINED_ON_TAIL)
    trained = accuracy_headline({**attrs, "model_trained_on_site": 1})
    assert trained == line + " The model was trained on this place's own data" + TRAINED_ON_TAIL
    # A field fetched partly inside a training cube says how much of it, and which.
    partly = {**attrs, "model_trained_on_site": 1, "model_trained_share": 0.4}
    assert accuracy_headline({**partly, "model_training_site": "es-field"}) == (
        line
        + " 40 % of this field lies inside data the model was trained on (es-field)"
        + TRAINED_ON_TAIL
    )
    # Better on the whole, but worse than a baseline on values far from clear data: said.
    rows = [[9000, 0.030, 0.034, 0.033], [5000, 0.040, 0.043, 0.044], [3000, 0.060, 0.050, 0.07]]
    spells = {**attrs, "model_field_mae_by_distance": np.ravel(rows)}
    far = (
        " More than 20 days from clear data, though, it erred 20 % more than the Whittaker "
        "smoother: over long cloudy spells, compare the curve with that method's (Settings, "
        "Reconstruction method)."
    )
    # (where it erred more on the whole, the line already says to choose the other method)
    assert accuracy_headline(spells) == line + ("" if "% more" in says else far)
    (note,) = [n for n in fit_notes(spells) if n.startswith("Accuracy measured")]
    assert note.endswith(
        " By days to the nearest clear observation: up to 8 days (9,000 values), 0.0300 against "
        "0.0330 (linear interpolation): 9 % less; 8-20 days (5,000 values), 0.0400 against "
        "0.0430 (the Whittaker smoother): 7 % less; over 20 days (3,000 values), 0.0600 against "
        "0.0500 (the Whittaker smoother): 20 % more."
    )
    # Too few values that far to speak of in the headline; a far bucket as good: nothing said.
    few = np.ravel([rows[0], rows[1], [500, 0.060, 0.050, 0.07]])
    assert accuracy_headline({**attrs, "model_field_mae_by_distance": few}) == line
    fine = np.ravel([rows[0], rows[1], [3000, 0.049, 0.050, 0.07]])
    assert accuracy_headline({**attrs, "model_field_mae_by_distance": fine}) == line
    # Elsewhere the folded note says how far the nearest training cube lies.
    far = {**attrs, "model_nearest_training_km": 1436.2, "model_nearest_training_site": "x"}
    (note,) = [n for n in fit_notes(far) if n.startswith("Accuracy measured")]
    assert note.endswith(" The nearest cube the model was trained on (x) lies about 1,436 km away.")
    (note,) = [n for n in fit_notes({**far, **partly}) if n.startswith("Accuracy measured")]
    assert "nearest cube" not in note
