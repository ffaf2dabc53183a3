"""Cube format: round trips against the real shared cubes, validation, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from core.cube import S2_BANDS, build_cube, read_cube, valid_from_scl, write_cube
from core.errors import CubeError


@pytest.mark.parametrize(
    "name", ["be-flanders-a_2017-2018.nc", "es-field_2019.nc", "pt-santarem_2021.nc"]
)
def test_round_trip_reproduces_shared_cube_exactly(cubes_dir, tmp_path, name) -> None:
    original = read_cube(cubes_dir / name)
    write_cube(original, tmp_path / name)
    again = read_cube(tmp_path / name)
    assert set(again.data_vars) == set(original.data_vars)
    for var in original.data_vars:
        np.testing.assert_array_equal(again[var].values, original[var].values, err_msg=var)
    np.testing.assert_array_equal(again["time_s2"].values, original["time_s2"].values)
    assert again.attrs["crs"] == original.attrs["crs"]


def test_read_matches_plain_xarray_decoding(cubes_dir) -> None:
    path = cubes_dir / "tz-arusha_2019-2021.nc"
    cube = read_cube(path)
    with xr.open_dataset(path) as raw:
        np.testing.assert_allclose(cube["s2"].values, raw["s2"].values, atol=1e-7)
        np.testing.assert_allclose(cube["s1"].values, raw["s1"].values, atol=1e-5)


def test_valid_from_scl_counts_only_clear_classes_with_data() -> None:
    scl = np.array([[[4, 5, 6, 8, 9, 3, 0, 4]]], dtype=np.uint8)  # (T=1, H=1, W=8)
    s2 = np.full((1, 10, 1, 8), 0.1, dtype=np.float32)
    s2[0, :, 0, 7] = np.nan  # SCL says vegetation, but no reflectance: not valid
    assert valid_from_scl(scl, s2).tolist() == [[[1, 1, 1, 0, 0, 0, 0, 0]]]


def _tiny_cube(**kwargs) -> xr.Dataset:
    t = np.array(["2021-05-01", "2021-05-06"], dtype="datetime64[ns]")
    s2 = np.full((2, 10, 2, 3), 0.2, dtype=np.float32)
    scl = np.array([[[4, 4, 9], [4, 8, 4]], [[4, 4, 4], [4, 4, 4]]], dtype=np.uint8)
    args = dict(
        s2=s2,
        time_s2=t,
        y=[5.0, -5.0],
        x=[5.0, 15.0, 25.0],
        attrs={"crs": "EPSG:32631", "resolution_m": 10.0},
        scl=scl,
    )
    args.update(kwargs)
    return build_cube(**args)


def test_build_cube_derives_valid_from_scl() -> None:
    cube = _tiny_cube()
    assert cube["valid"].values[0].tolist() == [[1, 1, 0], [1, 0, 1]]
    assert tuple(cube["band"].values) == S2_BANDS


def test_validate_rejects_unsorted_times() -> None:
    t = np.array(["2021-05-06", "2021-05-01"], dtype="datetime64[ns]")
    with pytest.raises(CubeError, match="strictly increasing"):
        _tiny_cube(time_s2=t)


def test_read_cube_missing_and_garbage_files(tmp_path) -> None:
    with pytest.raises(CubeError, match="not found"):
        read_cube(tmp_path / "nope.nc")
    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"this is not netcdf")
    with pytest.raises(CubeError, match="Cannot read"):
        read_cube(garbage)


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch) -> None:
    target = tmp_path / "cube.nc"
    write_cube(_tiny_cube(), target)
    before = target.read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were stopped mid-write

    monkeypatch.setattr(xr.Dataset, "to_netcdf", explode)
    with pytest.raises(KeyboardInterrupt):
        write_cube(_tiny_cube(), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cube.nc"]


def test_s1_layers_and_frames_are_put_in_order_and_infinities_made_missing(flanders_cube) -> None:
    from core.cube import validate_cube

    cube = flanders_cube.isel(y=slice(0, 4), x=slice(0, 4), time_s1=slice(0, 6))
    vv, vh = cube["s1"].sel(polarization="VV").values, cube["s1"].sel(polarization="VH").values
    # Written elsewhere: VH first, frames newest first, one layer only: read as (VV, VH), in time.
    swapped = validate_cube(cube.isel(polarization=[1, 0], time_s1=slice(None, None, -1)))
    assert [str(p) for p in swapped["polarization"].values] == ["VV", "VH"]
    np.testing.assert_array_equal(swapped["time_s1"].values, cube["time_s1"].values)
    np.testing.assert_array_equal(swapped["s1"].sel(polarization="VV").values, vv)
    only_vh = validate_cube(cube.isel(polarization=[1]))
    assert np.isnan(only_vh["s1"].sel(polarization="VV").values).all()
    np.testing.assert_array_equal(only_vh["s1"].sel(polarization="VH").values, vh)
    with pytest.raises(CubeError, match=r"polarizations are \('HH', 'HV'\)"):
        validate_cube(cube.assign_coords(polarization=["HH", "HV"]))
    # -inf dB (log10 of a zero backscatter) and an infinite reflectance are missing values.
    broken = cube.copy(deep=True)
    broken["s1"].values[0, 0, 0, 0] = -np.inf
    broken["s2"].values[0, 0, 0, 0] = np.inf
    fixed = validate_cube(broken)
    assert np.isnan(fixed["s1"].values[0, 0, 0, 0]) and np.isnan(fixed["s2"].values[0, 0, 0, 0])
    assert np.isinf(broken["s2"].values[0, 0, 0, 0])  # the caller's cube is not changed


def test_digital_numbers_instead_of_reflectance_are_refused(cubes_dir) -> None:
    from core.cube import validate_cube

    cube = read_cube(cubes_dir / "es-field_2019.nc")
    as_dn = cube.copy()
    as_dn["s2"] = cube["s2"] * 10000 + 1000  # L2A DN of processing baseline 04.00
    with pytest.raises(CubeError, match="looks like digital numbers, not reflectance"):
        validate_cube(as_dn)
    validate_cube(cube)  # reflectance, clouds and all, passes


@pytest.mark.parametrize("code", [255, 2, np.nan])
def test_valid_flags_other_than_zero_and_one_are_refused(code) -> None:
    from core.cube import validate_cube

    valid = np.ones((1, 2, 2), np.float32)
    valid[0, 0, 0] = code  # e.g. a nodata code kept from another product: was read as clear
    cube = build_cube(
        np.full((1, 10, 2, 2), 0.2, np.float32),
        np.array(["2020-01-01"], "datetime64[ns]"),
        np.array([5.0, -5.0]),
        np.array([0.0, 10.0]),
        {"crs": "EPSG:32631", "resolution_m": 10.0},
        valid=np.ones((1, 2, 2), np.uint8),
    )
    cube["valid"] = (("time_s2", "y", "x"), valid)
    with pytest.raises(CubeError, match=r"Cube variable 'valid' holds .*it must be 1 for a clear"):
        validate_cube(cube)


def test_a_cube_with_some_bands_in_another_order_is_read_as_the_ten(cubes_dir) -> None:
    from core.cube import validate_cube

    cube = read_cube(cubes_dir / "es-field_2019.nc")  # B04 and B08 only
    written = cube.sel(band=["B08", "B04"])  # as one's own script might write it
    read = validate_cube(written)
    assert tuple(str(b) for b in read["band"].values) == S2_BANDS
    xr.testing.assert_identical(read["s2"], cube["s2"])  # the others all NaN, as stored
    with_b01 = cube.sel(band=["B02", "B04", "B08"]).assign_coords(band=["B01", "B04", "B08"])
    np.testing.assert_array_equal(validate_cube(with_b01)["s2"].values, cube["s2"].values)
    for bad in (["B04", "B04"], ["red", "nir"], ["B01", "B09"]):
        wrong = cube.isel(band=[3, 6]).assign_coords(band=bad)
        with pytest.raises(CubeError, match="expected Sentinel-2 band names, each once"):
            validate_cube(wrong)


def test_dates_crs_and_pixels_of_a_cube_written_elsewhere(cubes_dir) -> None:
    from core.cube import validate_cube

    cube = read_cube(cubes_dir / "es-field_2019.nc")
    days = [str(t)[:10] for t in cube["time_s2"].values]
    as_text = validate_cube(cube.assign_coords(time_s2=days))  # ISO strings are dates
    np.testing.assert_array_equal(as_text["time_s2"].values, np.array(days, dtype="datetime64[ns]"))
    refused = {
        "holds int64 values, not dates": cube.assign_coords(time_s2=np.arange(len(days))),
        "Cube lacks the 'crs' attribute": cube.assign_attrs(crs=None),
        "not one pyproj knows": cube.assign_attrs(crs="EPSG:99999999"),
        r"no pixels \(57 x 0\)": cube.isel(x=slice(0, 0)),
    }
    for message, wrong in refused.items():
        with pytest.raises(CubeError, match=message):
            validate_cube(wrong)
