"""The field's NDVI curve and its CSV, on small windows of the real shared cubes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import core.curve
from core.cube import S2_BANDS, read_cube
from core.curve import (
    CURVE_COLUMNS,
    band_days,
    curve_csv,
    narrow_band,
    ndvi_curve,
    write_curve_csv,
)
from core.errors import InputError
from core.reconstruct import ReconstructOptions, reconstruct
from core.timeline import calendar_day

RED, NIR = S2_BANDS.index("B04"), S2_BANDS.index("B08")


@pytest.fixture(scope="module")
def flanders(flanders_cube) -> xr.Dataset:
    return flanders_cube.isel(y=slice(30, 40), x=slice(10, 20))


def _acquisition_days(cube: xr.Dataset) -> list[np.datetime64]:
    return list(calendar_day(cube["time_s2"].values))


def test_curve_has_the_columns_and_one_row_per_day(flanders) -> None:
    curve = ndvi_curve(flanders, "2018-03-01", "2018-04-30")
    assert tuple(curve.columns) == CURVE_COLUMNS
    assert len(curve) == 61
    np.testing.assert_array_equal(
        curve["date"].values,
        np.arange("2018-03-01", "2018-05-01", dtype="datetime64[D]").astype("datetime64[ns]"),
    )
    assert np.isfinite(curve["ndvi"]).all()
    assert curve["ndvi_p10"].isna().all() and curve["ndvi_p90"].isna().all()
    assert curve.attrs["field_pixels"] == 100


def test_observed_rows_are_the_mean_of_clear_field_pixels(flanders) -> None:
    curve = ndvi_curve(flanders, "2018-03-01", "2018-06-30").set_index("date")
    s2, valid = flanders["s2"].values, flanders["valid"].values.astype(bool)
    acquired = _acquisition_days(flanders)
    checked = 0
    for t, day in enumerate(acquired):
        if not np.datetime64("2018-03-01") <= day <= np.datetime64("2018-06-30"):
            continue
        row = curve.loc[pd.Timestamp(day)]
        red, nir = s2[t, RED][valid[t]], s2[t, NIR][valid[t]]
        assert row["clear_fraction"] == pytest.approx(valid[t].sum() / 100)
        if valid[t].mean() >= 0.5:
            expected = np.mean((nir - red) / (nir + red))
            assert row["observed_ndvi"] == pytest.approx(expected, abs=1e-6)
            checked += 1
        else:  # none seen clear, or too little to trust (the clouds' edges read low)
            assert np.isnan(row["observed_ndvi"])
        expected_source = "observed" if valid[t].mean() >= 0.5 else "reconstructed"
        assert row["source"] == expected_source
    assert checked >= 3
    not_acquired = curve[~curve.index.isin(pd.DatetimeIndex(acquired))]
    assert not_acquired["observed_ndvi"].isna().all()
    assert not_acquired["clear_fraction"].isna().all()
    assert (not_acquired["source"] == "reconstructed").all()


def _a_whole_clear_acquisition(flanders: xr.Dataset) -> int:
    seen = flanders["valid"].values.reshape(flanders.sizes["time_s2"], -1).mean(axis=1)
    return int(np.flatnonzero(seen == 1.0)[2])


def test_a_day_seen_by_two_acquisitions_counts_what_either_saw_clear(flanders) -> None:
    """Two acquisitions of one day (two tiles, or two passes), each clear on another half of
    the field: the day is seen whole (review 28: no test had such a day, and "clear in every
    acquisition of the day" passed); its observed NDVI is the mean over both halves."""
    t = _a_whole_clear_acquisition(flanders)
    first = flanders.isel(time_s2=[t]).copy(deep=True)
    second = first.copy(deep=True)
    second["time_s2"] = first["time_s2"].values + np.timedelta64(1, "h")
    second["s2"].values[:, RED] *= 1.2  # the second pass reads redder: another NDVI
    first["valid"].values[:, :, :5] = 0
    second["valid"].values[:, :, 5:] = 0
    others = flanders.isel(time_s2=[i for i in range(flanders.sizes["time_s2"]) if i != t])
    two = xr.concat([others, first, second], dim="time_s2", data_vars="minimal")
    two = two.sortby("time_s2")
    day = str(first["time_s2"].values[0].astype("datetime64[D]"))
    row = ndvi_curve(two, day, day).iloc[0]
    assert row["clear_fraction"] == 1.0
    assert row["source"] == "observed"
    halves = []
    for cube, side in ((first, slice(5, None)), (second, slice(None, 5))):
        red, nir = cube["s2"].values[0, RED][:, side], cube["s2"].values[0, NIR][:, side]
        halves.append((nir - red) / (nir + red))
    assert row["observed_ndvi"] == pytest.approx(np.mean(np.concatenate(halves)), abs=1e-6)


def test_a_day_seen_exactly_half_clear_is_observed(flanders) -> None:
    """At least half the field clear is an observation (OBSERVED_MIN_CLEAR_FRACTION), the
    half itself included (review 28: "more than half" passed)."""
    t = _a_whole_clear_acquisition(flanders)
    cube = flanders.copy(deep=True)
    cube["valid"].values[t, :, :5] = 0  # 50 of the 100 field pixels
    day = str(cube["time_s2"].values[t].astype("datetime64[D]"))
    row = ndvi_curve(cube, day, day).iloc[0]
    assert row["clear_fraction"] == 0.5
    assert row["source"] == "observed" and np.isfinite(row["observed_ndvi"])
    cube["valid"].values[t, 0, 5] = 0  # 49
    row = ndvi_curve(cube, day, day).iloc[0]
    assert row["source"] == "reconstructed" and np.isnan(row["observed_ndvi"])


def _clear_on_third_and_part_of_ninth(
    flanders: xr.Dataset,
) -> tuple[xr.Dataset, list[np.datetime64], np.ndarray]:
    """Twelve acquisitions of which the field is seen whole and clear on the third, 30 of its
    100 pixels on the ninth and nothing else: the cube, its days and its ``valid`` mask."""
    cube = flanders.isel(time_s2=slice(0, 12)).copy(deep=True)
    valid = np.zeros(cube["valid"].shape, np.uint8)
    valid[2] = 1
    valid[8, :3] = 1
    cube["valid"].values[:] = valid
    return cube, _acquisition_days(cube), valid


def test_days_to_clear_is_the_fields_median_distance_to_clear_data(flanders) -> None:
    cube, acquired, valid = _clear_on_third_and_part_of_ninth(flanders)
    start, end = acquired[0], acquired[-1]
    curve = ndvi_curve(cube, start, end).set_index("date")
    days = (pd.DatetimeIndex(curve.index).values.astype("datetime64[D]") - acquired[2]).astype(int)
    # The median pixel (70 of 100 clear only on the third acquisition) counts from that one.
    np.testing.assert_array_equal(curve["days_to_clear"].to_numpy(dtype=float), np.abs(days))
    assert curve.loc[pd.Timestamp(acquired[2]), "days_to_clear"] == 0
    # A field mostly never seen clear (40 of 100 pixels, once) has no figure.
    only = np.zeros_like(valid)
    only[2, :4] = 1
    cube["valid"].values[:] = only
    assert ndvi_curve(cube, start, end)["days_to_clear"].isna().all()


def test_band_days_measure_the_pixels_not_seen_clear_that_day(flanders) -> None:
    cube, acquired, valid = _clear_on_third_and_part_of_ninth(flanders)
    mask = np.ones((10, 10), bool)
    one_day = np.timedelta64(1, "D")
    dates = np.array(
        [acquired[2], acquired[2] + one_day, acquired[8], acquired[8] + 2 * one_day],
        "datetime64[ns]",
    )
    got = band_days(cube, dates, mask)
    # Seen whole: 0. A day later: 1. The ninth acquisition's day: its 70 pixels not seen clear
    # are as far as the third acquisition, whatever its 30 clear ones; two days on, the median
    # pixel (70 of 100) still counts from the third.
    from_third = int((acquired[8] - acquired[2]).astype(int))
    np.testing.assert_array_equal(got, [0.0, 1.0, from_third, from_third + 2])
    # Part of the field never seen clear: its pixels are infinitely far.
    never = valid.copy()
    never[:, :, 5:] = 0
    cube["valid"].values[:] = never
    assert np.isinf(band_days(cube, dates[:1], mask)).all()  # the half never seen is the median
    assert band_days(cube, dates[:1], np.arange(100).reshape(10, 10) % 10 < 5)[0] == 0.0


def test_ndvi_is_the_field_mean_of_the_reconstruction(flanders) -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 3:9] = True
    curve = ndvi_curve(flanders, "2018-04-01", "2018-04-20", method="whittaker", field_mask=mask)
    dates = curve["date"].values
    frames = reconstruct(flanders, dates, "whittaker")["ndvi"].values
    np.testing.assert_allclose(curve["ndvi"], frames[:, mask].mean(axis=1), rtol=1e-6)
    assert curve.attrs["field_pixels"] == 18


def test_samples_fill_p10_p90_and_chunks_change_nothing(flanders, monkeypatch) -> None:
    options = ReconstructOptions(samples=2)
    whole = ndvi_curve(flanders, "2018-04-01", "2018-04-10", options=options)
    assert np.isfinite(whole["ndvi_p10"]).all() and np.isfinite(whole["ndvi_p90"]).all()
    np.testing.assert_allclose(whole["ndvi_p10"], whole["ndvi"], atol=1e-6)  # linear: no spread
    monkeypatch.setattr(core.curve, "CHUNK_BYTES", 1)  # one date per chunk
    chunked = ndvi_curve(flanders, "2018-04-01", "2018-04-10", options=options)
    pd.testing.assert_frame_equal(chunked, whole)


@pytest.mark.parametrize("n_dates", [1, 39, 40, 41, 176, 365])
def test_a_runs_chunks_of_days_are_as_even_as_the_most_per_chunk_allows(flanders, n_dates) -> None:
    # Each chunk has fixed work; a short last chunk (40, 40, 40, 40, 16) cost 0.6 of a full
    # one for 0.4 of its days, and the time left, read off the days done, fell short there.
    chunks = core.curve.curve_chunks(flanders, n_dates, 8)
    sizes = [c.stop - c.start for c in chunks]
    assert [c.start for c in chunks[1:]] == [c.stop for c in chunks[:-1]]
    assert chunks[0].start == 0 and chunks[-1].stop == n_dates
    assert max(sizes) <= core.curve.CHUNK_MOST_DATES
    assert len(chunks) == -(-n_dates // core.curve.CHUNK_MOST_DATES)  # no more calls than before
    assert max(sizes) - min(sizes) <= 1


def test_period_is_clipped_to_the_cube_and_must_overlap(flanders) -> None:
    curve = ndvi_curve(flanders, "2017-07-01", "2017-08-10", every_days=1)
    assert curve["date"].iloc[0] == pd.Timestamp("2017-08-04")  # the cube's first acquisition
    assert len(curve) == 7
    with pytest.raises(InputError, match="does not overlap the cube's period 2017-08-04"):
        ndvi_curve(flanders, "2019-01-01", "2019-02-01")


def test_cube_without_red_or_nir_is_refused(cubes_dir) -> None:
    cube = read_cube(cubes_dir / "be-flanders-c_2018-2019.nc").isel(y=slice(0, 4), x=slice(0, 4))
    with pytest.raises(InputError, match="NDVI cannot be computed"):
        ndvi_curve(cube, "2019-01-01", "2019-01-31")
    empty = cube.copy(deep=True)
    empty["s2"][:] = np.nan  # nodata everywhere: not a missing-band problem
    with pytest.raises(InputError, match="no Sentinel-2 reflectance at all"):
        ndvi_curve(empty, "2019-01-01", "2019-01-31")


def test_a_field_never_seen_clear(flanders) -> None:
    # The centre 4 x 4 pixels are cloudy in every acquisition; their neighbours are not.
    cube = flanders.sel(time_s2=slice("2018-04-01", "2018-05-31")).copy(deep=True)
    cube["valid"][:, 3:7, 3:7] = 0
    mask = np.zeros((10, 10), bool)
    mask[3:7, 3:7] = True
    # A pixel-by-pixel baseline has nothing to go on: said, not an all-NaN curve.
    for method in ("linear", "whittaker"):
        with pytest.raises(InputError, match=f"'{method}' fills each pixel from its own"):
            ndvi_curve(cube, "2018-04-01", "2018-05-31", method=method, field_mask=mask)
    # The model borrows from the clear pixels around the field, and the curve says how much
    # of the field itself it saw (none).
    curve = ndvi_curve(
        cube, "2018-04-10", "2018-04-20", method="model", options=ReconstructOptions(samples=1),
        field_mask=mask,
    )  # fmt: skip
    assert np.isfinite(curve["ndvi"]).all()
    assert curve.attrs["field_clear_observations"] == 0
    whole = ndvi_curve(cube, "2018-04-10", "2018-04-20")
    assert whole.attrs["field_clear_observations"] == int(cube["valid"].values.sum())


def test_a_cube_without_one_clear_pixel_is_refused_by_every_method(flanders) -> None:
    cube = flanders.sel(time_s2=slice("2018-04-01", "2018-05-31")).copy(deep=True)
    cube["valid"][:] = 0
    for method in ("linear", "whittaker", "model"):
        with pytest.raises(InputError, match="clear Sentinel-2 pixel: all 20 acquisitions from"):
            ndvi_curve(cube, "2018-04-01", "2018-05-31", method=method)
        with pytest.raises(InputError, match="nothing to reconstruct from"):
            reconstruct(cube, cube["time_s2"].values[:2], method)
    with pytest.raises(InputError, match=r"its one acquisition \(2018-04-04\) is cloud"):
        reconstruct(cube.isel(time_s2=[1]), cube["time_s2"].values[1:2], "linear")


def test_the_curve_band_is_scaled_but_stays_within_ndvi_range() -> None:
    mean = np.array([0.5, 0.9, -0.95, 0.2])
    low = np.array([0.4, 0.7, -0.99, 0.3])  # the last edge lies on the wrong side of its mean
    high = np.array([0.55, 0.95, -0.9, 0.25])
    lo, hi = narrow_band(mean, low, high, 0.5)
    np.testing.assert_allclose(lo, [0.45, 0.8, -0.97, 0.2])
    np.testing.assert_allclose(hi, [0.525, 0.925, -0.925, 0.225])
    # A wide factor (a band fitted on few samples) is cut at -1 and 1, never past the mean.
    lo, hi = narrow_band(mean, low, high, 40.0)
    np.testing.assert_allclose(lo, [-1.0, -1.0, -1.0, 0.2])
    np.testing.assert_allclose(hi, [1.0, 1.0, 1.0, 1.0])
    lo, hi = narrow_band(np.array([1.2]), np.array([1.1]), np.array([1.3]), 3.0)
    assert lo[0] <= 1.2 <= hi[0] and hi[0] == pytest.approx(1.2)
    # A factor per value (the curve's band by distance to clear data).
    lo, hi = narrow_band(mean[:2], low[:2], high[:2], np.array([0.5, 2.0]))
    np.testing.assert_allclose(lo, [0.45, 0.5])
    np.testing.assert_allclose(hi, [0.525, 1.0])


def test_the_curve_band_factor_grows_in_a_line_with_the_days_from_data() -> None:
    from core.curve import band_scale
    from core.reconstruct import (
        FIELD_NDVI_SCALE_ATTR,
        FIELD_NDVI_SCALE_BY_DISTANCE_ATTR,
        FIELD_NDVI_SCALE_DAYS_ATTR,
    )

    attrs = {
        FIELD_NDVI_SCALE_ATTR: 0.4,
        FIELD_NDVI_SCALE_BY_DISTANCE_ATTR: np.array([0.2, 0.4, 1.0]),
        FIELD_NDVI_SCALE_DAYS_ATTR: np.array([5.0, 15.0, 35.0]),
    }
    days = np.array([0.0, 5.0, 10.0, 15.0, 25.0, 35.0, 90.0, np.inf, np.nan])
    np.testing.assert_allclose(
        band_scale(attrs, days), [0.2, 0.2, 0.3, 0.4, 0.7, 1.0, 1.0, 1.0, 1.0]
    )
    assert band_scale(attrs, None) == pytest.approx(0.4)  # no days: the field's one factor
    del attrs[FIELD_NDVI_SCALE_DAYS_ATTR]  # factors without their days: each bucket's
    np.testing.assert_allclose(band_scale(attrs, np.array([8.0, 9.0, 21.0])), [0.2, 0.4, 1.0])
    assert band_scale({}, days) is None


def test_field_mask_must_fit_the_grid_and_cover_a_pixel(flanders) -> None:
    with pytest.raises(InputError, match="shape"):
        ndvi_curve(flanders, "2018-04-01", "2018-04-02", field_mask=np.ones((3, 3), bool))
    with pytest.raises(InputError, match="covers no pixel"):
        ndvi_curve(flanders, "2018-04-01", "2018-04-02", field_mask=np.zeros((10, 10), bool))


def test_default_mask_skips_pixels_without_data(cubes_dir) -> None:
    cube = read_cube(cubes_dir / "es-field_2019.nc")  # pixels outside the field are NaN
    with_data = np.isfinite(cube["s2"].values).any(axis=(0, 1))
    assert 0 < with_data.sum() < with_data.size
    curve = ndvi_curve(cube, "2019-01-27", "2019-01-27")
    assert curve.attrs["field_pixels"] == with_data.sum()
    assert curve["clear_fraction"].iloc[0] > 0.5


def test_csv_has_iso_dates_four_decimals_and_empty_cells(tmp_path) -> None:
    curve = pd.DataFrame(
        {
            "date": pd.to_datetime(["2019-05-03", "2019-05-04"]),
            "ndvi": [0.123456, 0.5],
            "ndvi_p10": [np.nan, np.nan],
            "ndvi_p90": [np.nan, np.nan],
            "observed_ndvi": [0.12, np.nan],
            "clear_fraction": [1.0, np.nan],
            "source": ["observed", "reconstructed"],
            "days_to_clear": pd.array([0, pd.NA], dtype="Int64"),
            "band": ["", ""],
        }
    )
    path = write_curve_csv(curve, tmp_path / "out" / "curve.csv")
    assert path.read_text().splitlines() == [
        "date,ndvi,ndvi_p10,ndvi_p90,observed_ndvi,clear_fraction,source,days_to_clear,band",
        "2019-05-03,0.1235,,,0.1200,1.0000,observed,0,",
        "2019-05-04,0.5000,,,,,reconstructed,,",
    ]
    assert curve_csv(curve) == path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["curve.csv"]  # no temporary left
    with pytest.raises(InputError, match="source"):
        curve_csv(curve.drop(columns="source"))


def test_the_model_moves_the_progress_within_a_chunk_of_days(cubes_dir) -> None:
    # A large field's chunk of days takes a minute or more on a CPU: the model's tiles report
    # as parts of it (core.progress.part), so the bar moves (and a cancelled Run stops) inside.
    cube = read_cube(cubes_dir / "hu-alfold_2021.nc")  # 128 px: nine 64-px tiles
    first = calendar_day(cube["time_s2"].values)[10]
    heard: list[tuple[int, int]] = []
    options = ReconstructOptions(samples=1, blend_field=False)
    ndvi_curve(cube, first, first + np.timedelta64(3, "D"), method="model", options=options,
               progress=lambda done, total: heard.append((done, total)))  # fmt: skip
    assert [total for _, total in heard] == [4] * len(heard)
    done = [d for d, _ in heard]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 4
    assert {1, 2, 3} <= set(done)  # inside the one chunk of four days


def test_a_field_window_is_its_bounding_box_and_margin_unless_nothing_there_is_clear(
    flanders_cube,
) -> None:
    from core.curve import field_window

    cube = flanders_cube.isel(time_s2=slice(0, 30), y=slice(0, 40), x=slice(0, 40))
    height, width = cube.sizes["y"], cube.sizes["x"]
    mask = np.zeros((height, width), bool)
    mask[10:14, 20:23] = True
    window, inside = field_window(cube, mask)
    assert (window.sizes["y"], window.sizes["x"]) == (8, 7)
    np.testing.assert_array_equal(window["x"].values, cube["x"].values[18:25])
    assert inside.sum() == 12 and inside[2:6, 2:5].all()
    # at the cube's edge the margin stops there; a field over all of it is the cube
    mask[:] = False
    mask[0:3, 0:2] = True
    assert field_window(cube, mask)[0].sizes["y"] == 5
    assert field_window(cube, np.ones((height, width), bool))[0] is cube
    # a window with nothing clear in it: the whole cube, for the model to borrow from
    cloudy = cube.copy(deep=True)
    cloudy["valid"].values[:, :5, :4] = 0
    window, inside = field_window(cloudy, mask)
    assert window is cloudy and inside is mask
