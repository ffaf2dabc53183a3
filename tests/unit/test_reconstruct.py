"""The reconstruction contract on small windows of the real shared cubes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import core.reconstruct
from core.cube import S2_BANDS, read_cube
from core.errors import InputError
from core.reconstruct import Prediction, ReconstructOptions, reconstruct
from core.timeline import calendar_day, to_days


def _window(cube: xr.Dataset, y0: int, x0: int, size: int = 8) -> xr.Dataset:
    return cube.isel(y=slice(y0, y0 + size), x=slice(x0, x0 + size))


@pytest.fixture(scope="module")
def flanders(flanders_cube) -> xr.Dataset:
    return _window(flanders_cube, 20, 20)


@pytest.fixture(scope="module")
def es_field(cubes_dir) -> xr.Dataset:
    return _window(read_cube(cubes_dir / "es-field_2019.nc"), 20, 20)


def _band(name: str) -> int:
    return S2_BANDS.index(name)


@pytest.mark.parametrize("method", ["linear", "whittaker"])
def test_output_has_requested_dates_grid_and_only_present_bands(es_field, method) -> None:
    dates = np.array(["2019-06-10", "2019-05-03", "2019-05-03"], dtype="datetime64[ns]")
    out = reconstruct(es_field, dates, method=method)
    assert out["s2"].dims == ("time", "band", "y", "x")
    assert out["s2"].shape == (2, 10, 8, 8)
    np.testing.assert_array_equal(
        out["time"].values, np.array(["2019-05-03", "2019-06-10"], dtype="datetime64[ns]")
    )
    np.testing.assert_array_equal(out["y"].values, es_field["y"].values)
    assert list(out["band"].values) == list(S2_BANDS)
    s2 = out["s2"].values
    present = [_band("B04"), _band("B08")]  # es-field carries only red and NIR
    assert np.isfinite(s2[:, present]).all()
    absent = [i for i in range(10) if i not in present]
    assert np.isnan(s2[:, absent]).all()
    assert np.isfinite(out["ndvi"].values).all()
    assert out.attrs["method"] == method and out.attrs["crs"] == "EPSG:32630"


def test_twenty_metre_cube_gives_its_bands_and_no_ndvi(cubes_dir) -> None:
    cube = _window(read_cube(cubes_dir / "be-flanders-c_2018-2019.nc"), 0, 0)
    out = reconstruct(cube, np.array(["2019-03-01"], dtype="datetime64[ns]"), "whittaker")
    s2 = out["s2"].values
    for name in S2_BANDS:
        finite = np.isfinite(s2[:, _band(name)]).all()
        assert finite == (name in ("B05", "B06", "B07", "B8A", "B11", "B12")), name
    assert np.isnan(out["ndvi"].values).all()


def test_keep_observed_returns_clear_pixels_unchanged(flanders) -> None:
    t0 = int(np.argmax(flanders["valid"].values.mean(axis=(1, 2))))  # the clearest date
    day = calendar_day(flanders["time_s2"].values[t0 : t0 + 1]).astype("datetime64[ns]")
    clear = flanders["valid"].values[t0].astype(bool)
    assert clear.sum() > 0
    observed_values = flanders["s2"].values[t0][:, clear]

    kept = reconstruct(flanders, day, "whittaker")
    np.testing.assert_array_equal(kept["observed"].values[0], clear.astype(np.uint8))
    np.testing.assert_array_equal(kept["s2"].values[0][:, clear], observed_values)

    smoothed = reconstruct(flanders, day, "whittaker", ReconstructOptions(keep_observed=False))
    assert smoothed["observed"].values.sum() == 0
    assert smoothed.attrs["keep_observed"] == 0
    assert not np.allclose(smoothed["s2"].values[0][:, clear], observed_values, atol=1e-4)


@pytest.mark.parametrize("method", ["linear", "model"])
def test_infinite_inputs_count_as_missing_and_clear_nodata_is_estimated(flanders, method) -> None:
    # A user's cube may hold -inf dB (a zero backscatter through log10) or an infinite
    # reflectance; and a pixel flagged clear may hold no reflectance (a nodata the mask missed).
    cube = flanders.sel(time_s2=slice("2018-04-01", "2018-05-31")).copy(deep=True)
    t = int(np.argmax(cube["valid"].values.mean(axis=(1, 2))))  # a clear date
    cube["s1"].values[:, :, :3, :3] = -np.inf
    cube["s2"].values[t, :, 4, 4] = np.inf
    cube["s2"].values[t, :, 5, 5] = np.nan
    cube["valid"].values[t, 4:6, 4:6] = 1
    day = calendar_day(cube["time_s2"].values[t : t + 1]).astype("datetime64[ns]")
    options = ReconstructOptions(samples=2 if method == "model" else 1)
    out = reconstruct(cube, day, method, options)
    present = [S2_BANDS.index(b) for b in ("B02", "B03", "B04", "B08")]
    values = out["s2"].values[0][present]
    assert np.isfinite(values).all()  # estimated, not inf and not the NaN as 'observed'
    assert out["observed"].values[0, 4, 4] == 0 and out["observed"].values[0, 5, 5] == 0
    clear = cube["valid"].values[t].astype(bool)
    clear[4:6, 4:6] = False
    np.testing.assert_array_equal(out["s2"].values[0][:, clear], cube["s2"].values[t][:, clear])


@pytest.mark.parametrize("method", ["linear", "model"])
def test_pixels_no_acquisition_images_stay_empty_whatever_the_method(flanders, method) -> None:
    # A fetched field past the edge of the imagery: no reflectance there on any date (cloudy
    # or clear). The model had filled such pixels from their neighbours, and the GeoTIFF held
    # them as data. A strip imaged only under cloud is the model's to fill.
    cube = flanders.sel(time_s2=slice("2018-04-01", "2018-05-31")).copy(deep=True)
    cube["s2"].values[:, :, :, 6:] = np.nan  # the two eastern columns: never imaged
    cube["valid"].values[:, :, 6:] = 0
    cube["valid"].values[:, :2, :] = 0  # the two northern rows: imaged, never clear
    days = calendar_day(cube["time_s2"].values[[2, 9]]).astype("datetime64[ns]")
    out = reconstruct(cube, days, method, ReconstructOptions(samples=2))
    present = [S2_BANDS.index(b) for b in ("B02", "B03", "B04", "B08")]
    for name in ("s2", "s2_p10", "s2_p90"):
        assert np.isnan(out[name].values[:, :, :, 6:]).all(), name
        assert np.isfinite(out[name].values[:, present, 2:, :6]).all(), name
    for name in ("ndvi", "ndvi_p10", "ndvi_p90"):
        assert np.isnan(out[name].values[:, :, 6:]).all(), name
    assert not out["observed"].values[:, :, 6:].any()
    filled = np.isfinite(out["s2"].values[:, present, :2, :6]).all()
    assert filled == (method == "model")  # linear has no clear observation there


def test_samples_add_quantile_variables_of_zero_width_for_baselines(es_field) -> None:
    dates = np.array(["2019-05-03"], dtype="datetime64[ns]")
    single = reconstruct(es_field, dates, "linear")
    assert "ndvi_p10" not in single and "s2_p90" not in single
    out = reconstruct(es_field, dates, "linear", ReconstructOptions(samples=3))
    for name in ("s2_p10", "s2_p90", "ndvi_p10", "ndvi_p90"):
        assert name in out, name
    np.testing.assert_allclose(out["ndvi_p10"].values, out["ndvi"].values, atol=1e-6)
    np.testing.assert_allclose(out["ndvi_p90"].values, out["ndvi"].values, atol=1e-6)


@pytest.mark.parametrize("one_missing", [True, False])
def test_sample_quantiles_match_numpy_nanpercentile(es_field, monkeypatch, one_missing) -> None:
    """A generative method's spread: p10/p90 per pixel, NaN-aware like np.nanpercentile (the
    NDVI band moved onto the estimate); with
    one sample missing at one pixel, and with NaN only where a band is absent (a shortcut)."""
    rng = np.random.default_rng(0)
    holder: dict[str, np.ndarray] = {}

    def spread_method(observed, dates, options) -> Prediction:
        shape = (dates.size, 10, observed.sizes["y"], observed.sizes["x"])
        samples = rng.uniform(0.05, 0.5, (options.samples, *shape)).astype(np.float32)
        if one_missing:
            samples[0, :, :, 0, 0] = np.nan  # one sample missing at one pixel
        holder["samples"] = samples
        return Prediction(mean=np.nanmean(samples, axis=0), samples=samples)

    monkeypatch.setattr(core.reconstruct, "resolve_method", lambda name: spread_method)
    dates = np.array(["2019-05-04", "2019-05-05"], dtype="datetime64[ns]")
    out = reconstruct(es_field, dates, "spread", ReconstructOptions(samples=5, keep_observed=False))
    samples = holder["samples"]
    present = [_band("B04"), _band("B08")]
    low, high = np.nanpercentile(samples[:, :, present], [10, 90], axis=0)
    np.testing.assert_allclose(out["s2_p10"].values[:, present], low, rtol=1e-5)
    np.testing.assert_allclose(out["s2_p90"].values[:, present], high, rtol=1e-5)
    assert np.isnan(out["s2_p10"].values[:, _band("B02")]).all()
    # The NDVI band is the samples' NDVI p10-p90 moved so that their median sits at the
    # estimate's NDVI (which is not the NDVI of the samples' median).
    red, nir = samples[:, :, _band("B04")], samples[:, :, _band("B08")]
    p10, median, p90 = np.nanpercentile((nir - red) / (nir + red), [10, 50, 90], axis=0)
    estimate = out["ndvi"].values
    want_low, want_high = estimate - (median - p10), estimate + (p90 - median)
    assert (want_low < -1).any()  # cut at NDVI's range
    np.testing.assert_allclose(out["ndvi_p10"].values, np.maximum(want_low, -1), atol=1e-5)
    np.testing.assert_allclose(out["ndvi_p90"].values, np.minimum(want_high, 1), atol=1e-5)


@pytest.mark.parametrize("method", ["linear", "whittaker"])
def test_a_cloudy_pixel_never_leaks_into_the_output(flanders, method) -> None:
    valid = flanders["valid"].values.astype(bool)
    # A pixel and date that is clear, with clear observations of that pixel before and after.
    candidates = np.argwhere(valid[5:-5])
    t0, row, col = candidates[len(candidates) // 2]
    t0 += 5
    hidden = flanders.copy(deep=True)
    hidden["valid"].values[t0, row, col] = 0
    hidden["s2"].values[t0, :, row, col] = 0.9  # bright, cloud-like
    day = calendar_day(flanders["time_s2"].values[t0 : t0 + 1]).astype("datetime64[ns]")
    out = reconstruct(hidden, day, method)
    assert out["observed"].values[0, row, col] == 0

    if method == "linear":
        series_valid = hidden["valid"].values[:, row, col].astype(bool)
        days = to_days(flanders["time_s2"].values)
        before = np.flatnonzero(series_valid[:t0])[-1]
        after = t0 + 1 + np.flatnonzero(series_valid[t0 + 1 :])[0]
        weight = (to_days(day)[0] - days[before]) / (days[after] - days[before])
        s2 = flanders["s2"].values[:, :, row, col]
        expected = s2[before] + weight * (s2[after] - s2[before])
        np.testing.assert_allclose(out["s2"].values[0, :, row, col], expected, rtol=1e-5)
    assert np.all(out["s2"].values[0, :, row, col] < 0.6)

    hidden["s2"].values[t0, :, row, col] = 0.01  # another hidden value: same output
    again = reconstruct(hidden, day, method)
    np.testing.assert_array_equal(again["s2"].values, out["s2"].values)


def test_dates_outside_the_cube_period_are_refused(es_field) -> None:
    with pytest.raises(InputError, match="outside the cube's period 2019-01-27 to 2019-12-28"):
        reconstruct(es_field, np.array(["2020-02-01"], dtype="datetime64[ns]"))


def test_unknown_method_lists_the_choices(es_field) -> None:
    with pytest.raises(InputError, match="choose one of linear, whittaker"):
        reconstruct(es_field, np.array(["2019-05-01"], dtype="datetime64[ns]"), "cubic")


def test_ndvi_stays_within_minus_one_and_one_when_samples_dip_below_zero() -> None:
    from core.indices import NIR, NIR_NARROW, RED, ndvi

    # Dark pixels whose generated samples scatter around 0: NIR + red can be a hair above 0
    # with one band negative, which made sample NDVI reach hundreds (field p10 -184).
    rng = np.random.default_rng(0)
    s2 = np.full((2000, 10), np.nan, np.float32)
    s2[:, RED] = rng.normal(0.005, 0.01, 2000)
    s2[:, NIR] = rng.normal(0.006, 0.01, 2000)
    values = ndvi(s2, band_axis=1)
    finite = np.isfinite(values)
    assert finite.sum() > 1000 and np.abs(values[finite]).max() <= 1.0
    s2[:3, RED], s2[:3, NIR] = [-0.01, 0.02, np.nan], [0.02, -0.01, 0.3]
    np.testing.assert_allclose(ndvi(s2[:3], band_axis=1), [1.0, -1.0, np.nan])
    s2[3, NIR], s2[3, NIR_NARROW], s2[3, RED] = np.nan, 0.3, 0.1  # B8A stands in for B08
    assert ndvi(s2[3:4], band_axis=1)[0] == pytest.approx(0.5)


@pytest.mark.parametrize("samples", [2, 4, 7])
def test_a_band_fitted_on_the_field_needs_eight_samples(flanders, samples) -> None:
    # With fewer, each value's p10-p90 is so noisy that the fit widens every band (README).
    options = ReconstructOptions(samples=samples, calibrate_field=True)
    dates = flanders["time_s2"].values[:1]
    with pytest.raises(InputError, match=f"at least 8 samples, not {samples}"):
        reconstruct(flanders, dates, "model", options)
    reconstruct(flanders, dates, "linear", options)  # a baseline fits nothing: no matter


def test_a_request_larger_than_free_memory_is_refused_before_allocating() -> None:
    from core.reconstruct import available_memory_bytes, check_memory

    free = available_memory_bytes()
    assert free is not None and free > 2**28  # Linux: MemAvailable is read
    grid = xr.Dataset(coords={"y": np.arange(2000), "x": np.arange(2000)})
    # 4 bytes x 10 bands x 4e6 pixels x (8 + 6) per date: 2.1 GiB a date.
    too_many = int(free // (4 * 10 * 4e6 * 14)) + 1
    with pytest.raises(InputError, match=r"needs at least [\d.]+ GiB of memory; this machine has"):
        check_memory(grid, too_many, 8)
    check_memory(grid.isel(y=slice(0, 64), x=slice(0, 64)), 20, 8)  # a usual field: fine
