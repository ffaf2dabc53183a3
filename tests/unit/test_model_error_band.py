"""The reflectance band from the field's own errors (split conformal): the fit per band and
distance bucket, and what it does to a reconstruction (the estimate and the samples never
move; each pixel's band is its cell's half width; kept observations have none; hidden pixels
never reach it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.model.blend import distance_bucket, nearest_clear_days
from core.model.calibration import MIN_SPREAD_VALUES, fit_error_band
from core.model.inference import cached_checkpoint, clear_field_cache, field_checkpoint
from core.reconstruct import ReconstructOptions, observations, reconstruct
from core.season import fit_notes
from core.timeline import to_days
from tests.unit.test_model_inference import _checkpoint, _crop, hidden_bright_and_dark


def test_each_band_and_distance_gets_the_80th_percentile_of_its_errors() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    distance = np.tile(np.repeat([3.0, 12.0, 40.0], n), 2)
    band = np.repeat([0, 2], 3 * n)
    sd = np.tile(np.repeat([0.5, 1.0, 2.0], n), 2) * np.repeat([1.0, 3.0], 3 * n)
    truth = rng.normal(0.0, sd)
    mean = np.zeros_like(truth)
    half = fit_error_band(mean, truth, band, distance, n_bands=4)
    assert half.shape == (4, 3)
    # |N(0, s)| holds 80 % within 1.2816 s.
    want = 1.2816 * np.array([[0.5, 1.0, 2.0], [1.5, 3.0, 6.0]])
    np.testing.assert_allclose(half[[0, 2]], want, rtol=0.06)
    assert np.isnan(half[[1, 3]]).all()  # bands without values (absent from the cube)
    for b, k in ((0, 0), (2, 2)):
        cell = (band == b) & (distance_bucket(distance) == k)
        assert np.mean(np.abs(truth[cell]) <= half[b, k]) == pytest.approx(0.8, abs=0.005)
    # A cell with too few values takes its band's figure, a band with too few the field's.
    few = np.concatenate([np.arange(2 * n), 2 * n + np.arange(MIN_SPREAD_VALUES - 1)])
    few = np.concatenate([few, 3 * n + np.arange(MIN_SPREAD_VALUES - 1)])
    half = fit_error_band(mean[few], truth[few], band[few], distance[few], n_bands=4)
    in_band0 = few[band[few] == 0]
    assert half[0, 2] == pytest.approx(np.quantile(np.abs(truth[in_band0]), 0.8))
    assert half[0, 0] != half[0, 2]
    np.testing.assert_allclose(half[2], np.quantile(np.abs(truth[few]), 0.8))


def _options(path: str, **kwargs) -> ReconstructOptions:
    settings = dict(samples=8, calibrate_field=True, blend_field=True) | kwargs
    return ReconstructOptions(checkpoint=path, device="cpu", **settings)


def _cube_and_queries(flanders_cube):
    """A 16 px crop, its two clearest acquisitions (cloud removal, kept clear pixels) and two
    dates between acquisitions (anytime queries)."""
    cube = _crop(flanders_cube, size=16)
    times = cube["time_s2"].values
    clearest = np.sort(np.argsort(cube["valid"].values.mean(axis=(1, 2)))[-2:])
    return cube, np.concatenate([times[clearest], times[[9, 14]] + np.timedelta64(3, "D")])


def test_each_pixels_band_is_its_cells_half_width_around_the_estimate(
    flanders_cube, tmp_path
) -> None:
    cube, query = _cube_and_queries(flanders_cube)
    times = cube["time_s2"].values
    path = _checkpoint(tmp_path, perturb=True)
    clear_field_cache()
    options = _options(path, keep_samples=True)
    out = reconstruct(cube, query, "model", options)
    samples_band = reconstruct(cube, query, "model", dataclasses.replace(options, error_band=False))
    for name in ("s2", "s2_samples", "ndvi", "ndvi_p10", "ndvi_p90"):  # only the band moves
        np.testing.assert_array_equal(out[name].values, samples_band[name].values)
    assert not np.array_equal(out["s2_p90"].values, samples_band["s2_p90"].values)

    base = cached_checkpoint(path, "cpu")
    field = field_checkpoint(base, observations(cube), options, 4, "cpu")
    assert field.error_band.shape == (10, 3)
    present = np.isfinite(cube["s2"].values).any(axis=(0, 2, 3))
    assert np.isfinite(field.error_band[present]).all() and (field.error_band[present] > 0).all()
    clear = cube["valid"].values.astype(bool)
    distance = nearest_clear_days(clear, to_days(times), to_days(out["time"].values))
    want = np.moveaxis(field.error_band[:, distance_bucket(distance)], 0, 1)  # (Q, B, H, W)
    mean, low, high = (out[n].values for n in ("s2", "s2_p10", "s2_p90"))
    kept = out["observed"].values.astype(bool)[:, None] & present[None, :, None, None]
    free = ~kept & present[None, :, None, None]
    np.testing.assert_allclose((high - mean)[free], want[free], rtol=1e-5, atol=1e-6)
    floor = np.maximum(mean - want, np.minimum(mean, 0.0))  # never below 0 reflectance
    np.testing.assert_allclose(low[free], floor[free], rtol=1e-5, atol=1e-6)
    assert kept.any() and (low[kept] == mean[kept]).all() and (high[kept] == mean[kept]).all()
    assert np.isnan(high[:, ~present]).all()
    np.testing.assert_allclose(
        out.attrs["model_error_band_half_width"], field.error_band.ravel(), atol=1e-5
    )
    assert "model_error_band_half_width" not in samples_band.attrs
    notes = fit_notes(out.attrs)
    (note,) = [n for n in notes if n.startswith("Reflectance band")]
    b08 = field.error_band[list(out["band"].values).index("B08")]
    assert "own errors" in note and f"B08: +-{b08[0]:.3f} within 8 days" in note
    assert any(n.startswith("Samples' spread (the NDVI band and map)") for n in notes)
    assert not any(n.startswith("Reflectance band") for n in fit_notes(samples_band.attrs))


def test_the_ndvi_error_band_is_opt_in_and_follows_the_distance_to_clear_data(
    flanders_cube, tmp_path
) -> None:
    cube, query = _cube_and_queries(flanders_cube)
    times = cube["time_s2"].values
    path = _checkpoint(tmp_path, perturb=True)
    clear_field_cache()
    default = reconstruct(cube, query, "model", _options(path))
    options = _options(path, ndvi_error_band=True)
    out = reconstruct(cube, query, "model", options)
    for name in ("s2", "s2_p10", "s2_p90", "ndvi"):  # the NDVI band alone moves
        np.testing.assert_array_equal(out[name].values, default[name].values)
    assert "model_ndvi_error_band_half_width" not in default.attrs
    field = field_checkpoint(cached_checkpoint(path, "cpu"), observations(cube), options, 4, "cpu")
    assert field.ndvi_error_band.shape == (3,) and (field.ndvi_error_band > 0).all()
    distance = nearest_clear_days(
        cube["valid"].values.astype(bool), to_days(times), to_days(out["time"].values)
    )
    want = field.ndvi_error_band[distance_bucket(distance)]
    est, low, high = (out[n].values for n in ("ndvi", "ndvi_p10", "ndvi_p90"))
    kept = out["observed"].values.astype(bool)
    free = ~kept & np.isfinite(est) & (est + want < 1) & (est - want > -1)
    assert free.any()
    np.testing.assert_allclose((high - est)[free], want[free], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose((est - low)[free], want[free], rtol=1e-5, atol=1e-6)
    assert ((low >= -1) & (high <= 1))[np.isfinite(est)].all()
    assert (low[kept] == est[kept]).all() and (high[kept] == est[kept]).all()
    np.testing.assert_allclose(
        out.attrs["model_ndvi_error_band_half_width"], field.ndvi_error_band, atol=1e-5
    )
    assert any(
        n.startswith("NDVI band and map from this field's own") for n in fit_notes(out.attrs)
    )


def test_hidden_pixel_values_never_reach_the_error_band(flanders_cube, tmp_path) -> None:
    path = _checkpoint(tmp_path, perturb=True)
    bright, dark = hidden_bright_and_dark(flanders_cube)
    query = bright["time_s2"].values[[6, 7]]
    clear_field_cache()
    a = reconstruct(bright, query, "model", _options(path, ndvi_error_band=True))
    clear_field_cache()
    b = reconstruct(dark, query, "model", _options(path, ndvi_error_band=True))
    for name in ("s2", "s2_p10", "s2_p90", "ndvi_p10", "ndvi_p90"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    np.testing.assert_array_equal(
        a.attrs["model_error_band_half_width"], b.attrs["model_error_band_half_width"]
    )


def test_without_field_calibration_or_samples_there_is_no_error_band(
    flanders_cube, tmp_path
) -> None:
    cube = _crop(flanders_cube, size=16)
    query = cube["time_s2"].values[[9]] + np.timedelta64(3, "D")
    path = _checkpoint(tmp_path, perturb=True)
    clear_field_cache()
    plain = _options(path, calibrate_field=False)
    a = reconstruct(cube, query, "model", plain)
    b = reconstruct(cube, query, "model", dataclasses.replace(plain, error_band=False))
    for name in ("s2", "s2_p10", "s2_p90"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert "model_error_band_half_width" not in a.attrs
    single = reconstruct(cube, query, "model", _options(path, samples=1))
    assert "s2_p10" not in single and "model_error_band_half_width" not in single.attrs


def test_episode_pixel_ndvi_pairs_each_hidden_pixels_true_and_estimated_ndvi(cubes_dir) -> None:
    from core.model.calibration import episode_pixel_ndvi
    from core.model.config import TrainConfig
    from core.model.features import REFL_SCALE
    from core.model.training import load_series, target_distances, validation_episodes

    series = load_series(cubes_dir / "es-field_2019.nc")  # B04 and B08 only
    episodes = validation_episodes([series], 4, TrainConfig(), seed=0, with_distance=True)
    truth = np.concatenate([ep.truth[ep.target] * REFL_SCALE for ep in episodes])
    pixels = episode_pixel_ndvi(episodes, truth, truth, np.zeros((2, truth.size)))
    # Every hidden pixel has both bands here: one NDVI per two values.
    assert pixels["true"].size == truth.size // 2 > 0
    np.testing.assert_allclose(pixels["estimate"], pixels["true"])
    np.testing.assert_allclose(
        pixels["samples"], np.broadcast_to(pixels["true"], (2, truth.size // 2))
    )
    assert pixels["distance"].size == pixels["true"].size
    assert set(np.unique(target_distances(episodes))) >= set(np.unique(pixels["distance"]))
    biased = episode_pixel_ndvi(episodes, truth * 1.1, truth)  # NDVI is scale-free
    np.testing.assert_allclose(biased["estimate"], pixels["true"], atol=1e-5)


def test_a_pixel_never_seen_clear_gets_a_value_and_the_farthest_buckets_band(
    flanders_cube, tmp_path
) -> None:
    cube = _crop(flanders_cube, size=16).copy(deep=True)
    cube["valid"].values[:, 3, 4] = 0  # cloudy on every date
    query = cube["time_s2"].values[[9]] + np.timedelta64(3, "D")
    path = _checkpoint(tmp_path, perturb=True)
    clear_field_cache()
    out = reconstruct(cube, query, "model", _options(path))
    linear = reconstruct(cube, query, "linear")
    present = np.isfinite(cube["s2"].values).any(axis=(0, 2, 3))
    assert np.isnan(linear["s2"].values[0][present, 3, 4]).all()  # pixel by pixel: nothing
    assert np.isfinite(out["s2"].values[0][present, 3, 4]).all()  # from its neighbours
    field = field_checkpoint(
        cached_checkpoint(path, "cpu"), observations(cube), _options(path), 4, "cpu"
    )
    half = (out["s2_p90"] - out["s2"]).values[0][present, 3, 4]
    np.testing.assert_allclose(half, field.error_band[present, -1], rtol=1e-5)
