"""``python -m core reconstruct`` and ``python -m core ndvi`` on a real shared cube."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr
from shapely.geometry import Polygon, box, mapping

from core.cli import COMMANDS, main
from core.config import REPO_ROOT
from core.cube import read_cube
from core.curve import curve_csv, ndvi_curve
from core.reconstruct import reconstruct
from core.storage import TEMP_PREFIX

ES_FIELD = "es-field_2019.nc"


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def es_path(cubes_dir) -> Path:
    return cubes_dir / ES_FIELD


@pytest.fixture(scope="module")
def es_cube(es_path) -> xr.Dataset:
    return read_cube(es_path)


def _field_file(cube: xr.Dataset, path: Path, *, shift_m: float = 0.0) -> Path:
    """A GeoJSON (EPSG:4326) field whose outline holds the centres of pixels [20:30, 20:30]."""
    x, y = cube["x"].values, cube["y"].values
    outline = box(x[20] - 4 + shift_m, y[29] - 4, x[29] + 4 + shift_m, y[20] + 4)
    to_lonlat = pyproj.Transformer.from_crs(cube.attrs["crs"], "EPSG:4326", always_xy=True)
    lonlat = Polygon([to_lonlat.transform(*xy) for xy in outline.exterior.coords])
    feature = {"type": "Feature", "geometry": mapping(lonlat), "properties": {"name": "test"}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def test_reconstruct_writes_the_requested_dates(es_path, es_cube, tmp_path) -> None:
    out = tmp_path / "rec.nc"
    done = _cli(
        "reconstruct", "--cube", es_path, "--dates", "2019-06-10,2019-05-03",
        "--method", "linear", "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Reconstructed 2 date(s) of 57x56 pixels with linear")
    dates = np.array(["2019-05-03", "2019-06-10"], dtype="datetime64[ns]")
    expected = reconstruct(es_cube, dates, "linear")
    with xr.open_dataset(out) as written:
        np.testing.assert_array_equal(written["time"].values, dates)
        np.testing.assert_array_equal(written["s2"].values, expected["s2"].values)
        np.testing.assert_array_equal(written["observed"].values, expected["observed"].values)
    # A GIS opens the frames where they are (GDAL read them at (0, 0) with no CRS; review 5).
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GDAL's notes on the NetCDF's other variables
        with rasterio.open(f"netcdf:{out}:ndvi") as frames:
            assert frames.crs == rasterio.crs.CRS.from_user_input(es_cube.attrs["crs"])
            assert frames.shape == (es_cube.sizes["y"], es_cube.sizes["x"])
            x0, y0 = float(es_cube["x"].values[0]), float(es_cube["y"].values[0])
            assert frames.transform.almost_equals(
                rasterio.Affine(10.0, 0.0, x0 - 5.0, 0.0, -10.0, y0 + 5.0)
            )
        # ... and reads what it holds: units, names, the band order GDAL cannot show from a
        # string coordinate, the flag's meaning, every setting (review 6).
        with rasterio.open(f"netcdf:{out}:s2") as s2:
            tags = s2.tags(1)
            assert tags["units"] == "1" and "surface reflectance" in tags["long_name"]
            assert tags["band_names"].split() == list(es_cube["band"].values)
    with xr.open_dataset(out) as written:
        assert written["x"].attrs["units"] == "m"  # a UTM cube
        assert written["observed"].attrs["flag_meanings"] == "reconstructed observed_clear"
        assert json.loads(written.attrs["options_json"])["seed"] == 0
        # CF's name, and coordinates without a fill value (review 24).
        assert written.attrs["Conventions"] == "CF-1.8"
        assert all("_FillValue" not in written[c].encoding for c in ("x", "y"))


def test_reconstruct_regular_dates_with_samples_and_no_kept_observations(es_path, tmp_path) -> None:
    out = tmp_path / "rec.nc"
    done = _cli(
        "reconstruct", "--cube", es_path, "--start", "2019-05-01", "--end", "2019-05-29",
        "--every-days", "7", "--method", "whittaker", "--whittaker-lambda", "100",
        "--samples", "2", "--no-keep-observed", "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with xr.open_dataset(out) as written:
        assert [str(d)[:10] for d in written["time"].values] == [
            "2019-05-01", "2019-05-08", "2019-05-15", "2019-05-22", "2019-05-29",
        ]  # fmt: skip
        # A baseline's --samples is ignored: no zero-width band (review 6)
        assert not {"s2_p10", "s2_p90", "ndvi_p10", "ndvi_p90"} & set(written.data_vars)
        assert int(written["observed"].sum()) == 0
        assert written.attrs["method"] == "whittaker" and written.attrs["samples"] == 1


def _linear_curve_of_outline(
    path: Path, cube: xr.Dataset, field: Path, period: tuple[str, str], rows: slice, cols: slice
) -> str:
    """``ndvi --geojson`` with linear interpolation over ``period``; asserts that it took the
    pixels ``rows`` x ``cols`` and wrote their curve; returns the CSV text."""
    out = field.parent / "curve.csv"
    done = _cli(
        "ndvi", "--cube", path, "--geojson", field, "--start", period[0], "--end", period[1],
        "--method", "linear", "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr  # a field wholly inside the cube
    mask = np.zeros(cube["valid"].shape[1:], dtype=bool)
    mask[rows, cols] = True
    assert f"for {int(mask.sum())} field pixels" in done.stdout
    nir = "B08" if np.isfinite(cube["s2"].sel(band="B08").values).any() else "B8A"
    assert f"(NDVI of B04 and {nir})" in done.stdout  # which NIR band the cube gave (review 6)
    text = out.read_text()
    assert text == curve_csv(ndvi_curve(cube, *period, field_mask=mask))
    return text


def test_ndvi_writes_the_field_curve(es_path, es_cube, tmp_path) -> None:
    field = _field_file(es_cube, tmp_path / "field.geojson")
    period = ("2019-05-01", "2019-05-31")
    text = _linear_curve_of_outline(es_path, es_cube, field, period, slice(20, 30), slice(20, 30))
    lines = text.splitlines()
    assert lines[0] == (
        "date,ndvi,ndvi_p10,ndvi_p90,observed_ndvi,clear_fraction,source,days_to_clear,band"
    )
    assert len(lines) == 32 and lines[1].startswith("2019-05-01,")


def test_ndvi_says_which_days_lie_outside_the_cube(es_path, tmp_path, capsys) -> None:
    # es-field's first acquisition is 2019-01-27: 26 of the 36 days asked for are before it.
    out_csv = str(tmp_path / "c.csv")
    status = main(["ndvi", "--cube", str(es_path), "--start", "2019-01-01", "--end",
                   "2019-02-05", "--method", "linear", "--out", out_csv])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith("Wrote 10 day(s) of NDVI")
    assert "note: 26 of the 36 day(s) asked for lie outside the cube's Sentinel-2 " in out
    assert "(2019-01-27 to 2019-12-28)" in out


def test_reconstruct_leaves_out_the_days_of_a_period_outside_the_cube_and_says_so(
    es_path, tmp_path, capsys
) -> None:
    # As ndvi does (review 9: reconstruct refused a period running a few days past the cube).
    # Dates named one by one are still refused (test_bad_input_is_refused_with_an_actionable_line).
    out = tmp_path / "r.nc"
    status = main(["reconstruct", "--cube", str(es_path), "--start", "2019-01-20", "--end",
                   "2019-02-05", "--method", "linear", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0 and printed.startswith("Reconstructed 10 date(s)")
    assert "note: 7 of the 17 day(s) asked for lie outside the cube's Sentinel-2 " in printed
    with xr.open_dataset(out) as result:
        assert str(result["time"].values[0])[:10] == "2019-01-27"


def test_ndvi_takes_a_field_outline_on_a_lonlat_cube(cubes_dir, tmp_path) -> None:
    # hu-alfold's grid is EPSG:4326 (about 20 m pixels in degrees); an outline drawn on it
    # selects the pixels whose centres it holds, as on a UTM cube.
    path = cubes_dir / "hu-alfold_2021.nc"
    cube = read_cube(path)
    x, y = cube["x"].values, cube["y"].values
    dx, dy = float(x[1] - x[0]), float(y[0] - y[1])
    outline = box(x[40] - dx / 3, y[69] - dy / 3, x[59] + dx / 3, y[60] + dy / 3)
    field = tmp_path / "field.geojson"
    field.write_text(json.dumps({"type": "Feature", "properties": {"name": "hu"},
                                 "geometry": mapping(outline)}))  # fmt: skip
    period = ("2021-05-01", "2021-05-20")
    _linear_curve_of_outline(path, cube, field, period, slice(60, 70), slice(40, 60))
    # Its frames' coordinates are degrees, and a CF reader is told so (review 6: "m").
    out = tmp_path / "frames.nc"
    argv = ["reconstruct", "--cube", str(path), "--dates", "2021-05-10", "--method", "linear"]
    assert main([*argv, "--out", str(out)]) == 0
    with xr.open_dataset(out) as written:
        assert written["x"].attrs["units"] == "degrees_east"
        assert written["y"].attrs["standard_name"] == "latitude"


def test_ndvi_takes_one_field_of_a_file_holding_several(es_path, es_cube, tmp_path) -> None:
    """``--name`` and ``--index`` pick the feature, as for ``fetch``; without them the error
    names those options (not the keyword arguments of core.field)."""
    inside = json.loads(_field_file(es_cube, tmp_path / "in.geojson").read_text())["features"][0]
    far = json.loads(_field_file(es_cube, tmp_path / "far.geojson", shift_m=5_000.0).read_text())
    far = far["features"][0] | {"properties": {"name": "far"}}
    several = tmp_path / "fields.geojson"
    several.write_text(json.dumps({"type": "FeatureCollection", "features": [far, inside]}))
    period = ("2019-05-01", "2019-05-10")
    mask = np.zeros(es_cube["valid"].shape[1:], dtype=bool)
    mask[20:30, 20:30] = True
    expected = curve_csv(ndvi_curve(es_cube, *period, field_mask=mask))
    for choice in (["--name", "TEST"], ["--index", "1"]):
        out = tmp_path / f"curve{choice[0]}.csv"
        status = main(["ndvi", "--cube", str(es_path), "--geojson", str(several), *choice,
                       "--start", period[0], "--end", period[1], "--method", "linear",
                       "--out", str(out)])  # fmt: skip
        assert status == 0
        assert out.read_text() == expected
    done = _cli("ndvi", "--cube", es_path, "--geojson", several, "--start", period[0],
                "--end", period[1], "--method", "linear", "--out", tmp_path / "c.csv")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: The file 'fields.geojson' holds 2 polygons; choose one with --index N or "
        "--name NAME: 0 'far' (1.0 ha), 1 'test' (1.0 ha)."
    ]
    done = _cli("ndvi", "--cube", es_path, "--index", "1", "--start", period[0],
                "--end", period[1], "--method", "linear", "--out", tmp_path / "c.csv")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: --index picks one feature of the --geojson file")
    # A GeoPackage with a layer each: --layer reads one (batch had it; fetch and ndvi had not).
    import geopandas as gpd
    from shapely.geometry import shape

    gpkg = tmp_path / "farm.gpkg"
    for layer, feature in (("far", far), ("near", inside)):
        gpd.GeoDataFrame(
            {"name": [layer]}, geometry=[shape(feature["geometry"])], crs="EPSG:4326"
        ).to_file(gpkg, driver="GPKG", layer=layer)
    out = tmp_path / "layer.csv"
    status = main(["ndvi", "--cube", str(es_path), "--geojson", str(gpkg), "--layer", "near",
                   "--start", period[0], "--end", period[1], "--method", "linear",
                   "--out", str(out)])  # fmt: skip
    assert status == 0 and out.read_text() == expected


def test_missing_cube_is_one_error_line_and_status_2(tmp_path) -> None:
    done = _cli("ndvi", "--cube", tmp_path / "none.nc", "--start", "2019-05-01",
                "--end", "2019-05-02", "--out", tmp_path / "c.csv")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: Cube file not found")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "c.csv").exists()


@pytest.mark.parametrize("command", ["reconstruct", "ndvi"])
def test_model_options_given_to_another_method_are_said_to_be_ignored(
    es_path, tmp_path, capsys, command
) -> None:
    period = ["--start", "2019-05-01", "--end", "2019-05-03"]
    when = ["--dates", "2019-05-03"] if command == "reconstruct" else period
    argv = [command, "--cube", str(es_path), *when, "--method", "linear"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--steps", "4", "--no-blend-field"]) == 0
    err = capsys.readouterr().err
    assert "note: --steps, --no-blend-field are options of the model; the linear method" in err
    # --samples too: one value a pixel, so its p10 and p90 columns would equal it (review 5)
    assert main([*argv, "--out", str(tmp_path / "s"), "--samples", "8"]) == 0
    assert "note: --samples is an option of the model; the linear method" in (
        capsys.readouterr().err
    )
    # ... and truly ignored: no zero-width band written as if there were no uncertainty
    # (review 6: "ignored", yet p10 = p90 = the value in every row).
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert "options of the model" not in capsys.readouterr().err
    if command == "ndvi":
        assert (tmp_path / "s").read_text() == (tmp_path / "b").read_text()
    else:
        with xr.open_dataset(tmp_path / "s") as with_k, xr.open_dataset(tmp_path / "b") as plain:
            assert set(with_k.data_vars) == set(plain.data_vars)
            assert "s2_p10" not in with_k.data_vars
    # The screens are every method's: not said to be ignored (they were, wrongly, until
    # 2026-12-05, though linear reconstructed from the screened cube).
    assert main([*argv, "--out", str(tmp_path / "c"), "--screen-haze", "--screen-scenes"]) == 0
    assert "options of the model" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["reconstruct", "ndvi"])
def test_the_pixels_around_screened_haze_are_screened_only_when_asked_with_the_haze(
    cubes_dir, tmp_path, capsys, command
) -> None:
    """--screen-haze-nearby (off: haze_nearby_rule.txt failed) adds the clear pixels around
    the haze --screen-haze finds; alone it would change nothing, and is refused in words."""
    flanders = cubes_dir / "be-flanders-a_2017-2018.nc"
    period = ["--start", "2018-07-10", "--end", "2018-07-16"]
    when = ["--dates", "2018-07-13"] if command == "reconstruct" else period
    argv = [command, "--cube", str(flanders), *when, "--method", "linear"]
    assert main([*argv, "--out", str(tmp_path / "x"), "--screen-haze-nearby"]) == 2
    said = capsys.readouterr().err
    assert "--screen-haze-nearby takes the clear pixels around the haze --screen-haze" in said
    assert "give --screen-haze too" in said and not (tmp_path / "x").exists()
    assert main([*argv, "--out", str(tmp_path / "a"), "--screen-haze"]) == 0
    spikes = capsys.readouterr().out  # what the screen took is said with the result
    assert "Screened out " in spikes and "So are the" not in spikes
    assert main([*argv, "--out", str(tmp_path / "b"), "--screen-haze", "--screen-haze-nearby"]) == 0
    both = capsys.readouterr().out
    assert "Screened out " in both and "clear ones around them" in both
    assert (tmp_path / "a").read_bytes() != (tmp_path / "b").read_bytes()


def test_a_folder_given_as_the_cube_is_called_a_folder(tmp_path, capsys) -> None:
    argv = ["reconstruct", "--cube", str(tmp_path), "--dates", "2019-05-01", "--method", "linear"]
    assert main([*argv, "--out", str(tmp_path / "r.nc")]) == 2
    assert f"error: {tmp_path} is a folder, not a cube file" in capsys.readouterr().err


HUGE = str(10**23)
"""A number past 64 bits, as typed."""
HUGE_DAYS = str(10**8)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reconstruct", "--dates", "2019-02-30"], "'2019-02-30' does not exist in the calendar"),
        (["reconstruct", "--dates", "may"], "Cannot read the date 'may': write it as YYYY-MM-DD"),
        (["reconstruct", "--dates", "2020-03-01"], "outside the cube's period"),
        (["reconstruct", "--dates", "2019-05-01", "--method", "cubic"], "Unknown reconstruction"),
        (["reconstruct", "--dates", "2019-05-01", "--start", "2019-05-01"], "not both"),
        (["reconstruct", "--start", "2019-05-01"], "No query dates"),
        (["reconstruct", "--dates", "2019-05-01", "--samples", "0"], "at least 1"),
        (
            ["reconstruct", "--dates", "2019-05-01", "--method", "model", "--smooth-days", "-1"],
            "--smooth-days must be between 0 and 30",
        ),
        (
            [
                "reconstruct",
                "--dates",
                "2019-05-01",
                "--method",
                "model",
                "--smooth-days",
                HUGE_DAYS,
            ],
            "--smooth-days must be between 0 and 30",
        ),
        (["reconstruct", "--dates", "2019-05-01", "--steps", "0"], "--steps must be between 1"),
        (
            ["reconstruct", "--dates", "2019-05-01", "--steps", HUGE],
            "--steps must be between",
        ),
        (
            ["reconstruct", "--dates", "2019-05-01", "--seed", HUGE],
            "--seed must be between 0",
        ),
        (
            ["reconstruct", "--dates", "2019-05-01", "--adapt-steps", HUGE],
            "between 0 and 5000",
        ),
        (["reconstruct", "--start", "0001-01-01", "--end", "0001-01-02"], "outside the years"),
        (["ndvi", "--start", "2019-06-01", "--end", "9999-12-31"], "outside the years"),
        (["reconstruct", "--dates", "2019-05-01", "--samples", "100000"], "at most 256"),
        (
            ["reconstruct", "--dates", "2019-05-01", "--whittaker-lambda", "-5"],
            "--whittaker-lambda must be a positive number",
        ),
        (  # zero smooths nothing: the raw observations (review 29: accepted unseen)
            ["reconstruct", "--dates", "2019-05-01", "--whittaker-lambda", "0"],
            "--whittaker-lambda must be a positive number",
        ),
        (["ndvi", "--start", "2019-05-01", "--end", "2019-04-01"], "ends (2019-04-01) before"),
        (["ndvi", "--start", "2021-01-01", "--end", "2021-02-01"], "does not overlap"),
    ],
)
def test_bad_input_is_refused_with_an_actionable_line(
    es_path, tmp_path, capsys, args, message
) -> None:
    command, *rest = args
    out = str(tmp_path / "out")
    status = main([command, "--cube", str(es_path), "--out", out, "--method", "linear", *rest])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["reconstruct", "ndvi"])
def test_an_unusable_output_is_refused_before_any_work(es_path, tmp_path, capsys, command) -> None:
    # A folder as --out: told at once (the cube named does not even exist, so no work began),
    # not as a traceback after the whole computation.
    args = ["--start", "2019-05-01", "--end", "2019-05-10", "--method", "linear"]
    status = main([command, "--cube", str(tmp_path / "none.nc"), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --out {tmp_path} is a folder: give a file name inside it")


@pytest.mark.parametrize(
    ("command", "name", "message"),
    [
        ("reconstruct", "frames.csv", "writes a NetCDF file: give a name ending in .nc"),
        ("ndvi", "curve.nc", "writes a CSV file: give a name ending in .csv"),
    ],
)
def test_an_output_named_for_another_format_is_refused(
    es_path, tmp_path, capsys, command, name, message
) -> None:
    args = ["--start", "2019-05-01", "--end", "2019-05-10", "--method", "linear"]
    status = main([command, "--cube", str(es_path), "--out", str(tmp_path / name), *args])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert message in err and "python -m core" in err
    assert not (tmp_path / name).exists()


def test_the_input_cube_is_never_overwritten(es_path, tmp_path, capsys) -> None:
    cube = tmp_path / "cube.nc"
    cube.write_bytes(es_path.read_bytes())
    status = main(["reconstruct", "--cube", str(cube), "--dates", "2019-05-03",
                   "--method", "linear", "--out", str(cube)])  # fmt: skip
    assert status == 2
    assert "is also the input: writing it would replace the file being read" in (
        capsys.readouterr().err
    )
    assert cube.read_bytes() == es_path.read_bytes()


@pytest.mark.parametrize("command", ["reconstruct", "ndvi", "evaluate"])
def test_the_model_checkpoint_is_never_overwritten(es_path, tmp_path, capsys, command) -> None:
    model = tmp_path / "mine.pt"
    model.write_bytes(b"a checkpoint's bytes")
    where = ["--json"] if command == "evaluate" else ["--out"]
    period = ["--start", "2019-05-01", "--end", "2019-05-10"]
    args = {
        "reconstruct": ["--cube", str(es_path), "--dates", "2019-05-03", "--method", "linear"],
        "ndvi": ["--cube", str(es_path), *period, "--method", "linear"],
        "evaluate": ["--cube", str(es_path), "--methods", "linear"],
    }[command]
    status = main([command, *args, "--checkpoint", str(model), *where, str(model)])
    assert status == 2
    assert "is the model checkpoint this command uses" in capsys.readouterr().err
    assert model.read_bytes() == b"a checkpoint's bytes"


def test_sigterm_stops_with_one_line_and_leaves_no_partial_file(es_path, tmp_path) -> None:
    out = tmp_path / "results" / "rec.nc"
    process = subprocess.Popen(
        [sys.executable, "-m", "core", "reconstruct", "--cube", str(es_path), "--start",
         "2019-04-01", "--end", "2019-09-30", "--method", "model", "--samples", "64",
         "--out", str(out)],
        cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(8)  # past the imports: the model is working
        assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGTERM)
        err = process.communicate(timeout=60)[1]
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert err.strip().splitlines() == ["error: stopped (SIGTERM); nothing partial was kept."]
    assert not out.exists()
    assert not list(tmp_path.rglob(f"{TEMP_PREFIX}*"))


def test_a_wrong_setting_in_the_environment_is_one_error_line(
    es_path, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("FIELDFLOW_RETRIES", "two")
    out = str(tmp_path / "c.csv")
    status = main(["ndvi", "--cube", str(es_path), "--start", "2019-05-01", "--end",
                   "2019-06-01", "--method", "linear", "--out", out])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: FIELDFLOW_RETRIES is 'two': it must be a number, 0 or more.")
    assert not (tmp_path / "c.csv").exists()


def test_ndvi_refuses_cube_without_red_band(cubes_dir, tmp_path, capsys) -> None:
    status = main(
        ["ndvi", "--cube", str(cubes_dir / "be-flanders-c_2018-2019.nc"), "--method", "linear",
         "--start", "2019-01-01", "--end", "2019-01-02", "--out", str(tmp_path / "c.csv")]
    )  # fmt: skip
    assert status == 2
    assert "NDVI cannot be computed" in capsys.readouterr().err


def test_ndvi_refuses_a_field_outside_the_cube(es_path, es_cube, tmp_path, capsys) -> None:
    field = _field_file(es_cube, tmp_path / "far.geojson", shift_m=5_000.0)
    status = main(
        ["ndvi", "--cube", str(es_path), "--geojson", str(field), "--method", "linear",
         "--start", "2019-05-01", "--end", "2019-05-02", "--out", str(tmp_path / "c.csv")]
    )  # fmt: skip
    assert status == 2
    assert "does not overlap the cube" in capsys.readouterr().err


def test_ndvi_warns_when_part_of_the_field_lies_outside_the_cube(
    es_path, es_cube, tmp_path, capsys
) -> None:
    """The curve is still written (over the pixels inside), and a warning line says which share
    of the field is missing from it and how to have all of it."""
    x, y = es_cube["x"].values, es_cube["y"].values
    east_edge = float(x[-1]) + 5.0  # 10 m pixels: the outer edge is half a pixel past the centre
    # 200 m x 100 m, of which the eastern 60 m lie beyond the cube: 30 %, 0.6 of 2 ha.
    outline = box(east_edge - 140.0, float(y[40]), east_edge + 60.0, float(y[40]) + 100.0)
    to_lonlat = pyproj.Transformer.from_crs(es_cube.attrs["crs"], "EPSG:4326", always_xy=True)
    lonlat = Polygon([to_lonlat.transform(*xy) for xy in outline.exterior.coords])
    field = tmp_path / "edge.geojson"
    field.write_text(json.dumps({"type": "Feature", "properties": {"name": "edge"},
                                 "geometry": mapping(lonlat)}))  # fmt: skip
    out = tmp_path / "c.csv"
    status = main(
        ["ndvi", "--cube", str(es_path), "--geojson", str(field), "--method", "linear",
         "--start", "2019-05-01", "--end", "2019-05-10", "--out", str(out)]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0 and out.exists()
    # 14 columns x 10 rows inside the cube, of which the cube's last columns are imaged by no
    # acquisition (es-field's own nodata edge): the curve is of the 121 imaged, and says so.
    assert "for 121 field pixels" in captured.out
    assert "note: about 14% of the field's pixels in the cube are imaged by no" in captured.out
    assert captured.err.splitlines() == [
        f"warning: about 30% of the field 'edge' (0.60 of 2.00 ha) lies outside the cube "
        f"{es_path}: the NDVI curve covers only the part inside. Fetch a cube for this field "
        f"(python -m core fetch --geojson {field} ...) to have all of it."
    ]


def test_ndvi_with_the_model_says_what_it_fitted_on_the_field(es_path, es_cube, tmp_path) -> None:
    field = _field_file(es_cube, tmp_path / "field.geojson")
    out = tmp_path / "curve.csv"
    done = _cli(
        "ndvi", "--cube", es_path, "--geojson", field, "--start", "2019-05-01",
        "--end", "2019-05-31", "--every-days", "10", "--method", "model", "--samples", "8",
        "--steps", "2", "--calibrate-field", "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    note, *lines = done.stdout.splitlines()
    assert note.startswith("note: the field and 2 pixels around it, 14 x 14 of the cube's")
    assert lines[0].startswith("Wrote 4 day(s) of NDVI")
    # The page's verdict first: es-field is a site the shipped model was trained on.
    assert lines[1].startswith("Measured on this field's own clear pixels, hidden in turn")
    assert "The model was trained on this place's own data (es-field)" in lines[1]
    assert lines[2].startswith("Field blend: measured on this field's own clear pixels")
    assert lines[3].startswith("Accuracy measured on this field: its own clear pixels")
    assert lines[4].startswith("Samples' spread (the NDVI band and map) fitted on this field:")
    assert lines[5].startswith("Reflectance band (p10-p90) from this field's own errors")
    assert lines[6].startswith("NDVI curve band fitted on this field's hidden frames, by their")
    assert "hidden frames within 8 days" in lines[6]  # a factor per distance, and its frames
    curve = out.read_text().splitlines()[1:]
    widths = [float(r.split(",")[3]) - float(r.split(",")[2]) for r in curve]
    assert min(widths) >= 0 and max(widths) > 0.01  # narrowed, and still a band


def test_a_users_own_checkpoint_is_used_and_named_in_the_output(
    es_path, tmp_path, capsys, monkeypatch
) -> None:
    """--checkpoint, else FIELDFLOW_CHECKPOINT, else the shipped model; the output says which
    model made it (file, weights' digest, training sites)."""
    from core.model.checkpoint import load_checkpoint

    own = tmp_path / "own"
    own.mkdir()
    (own / "pt-santarem_2021.nc").symlink_to(es_path.parent / "pt-santarem_2021.nc")
    mine = tmp_path / "mine.pt"
    train = ["train", "--tiny", "--data", str(own), "--out", str(mine), "--threads", "1"]
    assert main([*train, "--validation-episodes", "4"]) == 0
    digest = load_checkpoint(mine).weights_sha256
    ask = ["reconstruct", "--cube", str(es_path), "--dates", "2019-05-03", "--method", "model"]
    ask += ["--no-blend-field"]

    def made_by(*extra: str) -> dict:
        out = tmp_path / f"rec{len(list(tmp_path.glob('rec*')))}.nc"
        assert main([*ask, "--out", str(out), *extra]) == 0, capsys.readouterr().err
        with xr.open_dataset(out) as written:
            return dict(written.attrs)

    by_option = made_by("--checkpoint", str(mine))
    assert by_option["model_checkpoint"] == str(mine)
    assert by_option["model_weights_sha256"] == digest
    assert by_option["model_trained_sites"] == "pt-santarem"
    monkeypatch.setenv("FIELDFLOW_CHECKPOINT", str(mine))
    assert made_by()["model_weights_sha256"] == digest
    shipped = load_checkpoint(None)
    by_both = made_by("--checkpoint", str(shipped.source))  # the option wins over the variable
    assert by_both["model_weights_sha256"] == shipped.weights_sha256
    assert by_both["model_trained_sites"] == ",".join(shipped.seen_sites)
    # A variable naming no file is one line that names it, before any work.
    monkeypatch.setenv("FIELDFLOW_CHECKPOINT", str(tmp_path / "gone.pt"))
    capsys.readouterr()
    assert main([*ask, "--out", str(tmp_path / "x.nc")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: FIELDFLOW_CHECKPOINT is ") and "gone.pt" in err
    monkeypatch.delenv("FIELDFLOW_CHECKPOINT")
    assert (
        main([*ask, "--out", str(tmp_path / "x.nc"), "--checkpoint", str(tmp_path / "no.pt")]) == 2
    )
    assert "No model checkpoint at" in capsys.readouterr().err


def test_ndvi_says_when_a_baselines_curve_stands_on_part_of_the_field(
    es_cube, tmp_path, capsys
) -> None:
    """A field whose first four rows (40 of its 100 pixels) are never seen clear: linear
    leaves them empty, so its curve is the mean of the other 60, which the command now says
    (review 6); the model fills them, and nothing is said."""
    from core.cube import write_cube

    cube = es_cube.copy(deep=True)
    cube["valid"].values[:, 20:24, :] = 0
    path = write_cube(cube, tmp_path / "partly.nc")
    field = _field_file(cube, tmp_path / "field.geojson")
    argv = ["ndvi", "--cube", str(path), "--geojson", str(field)]
    argv += ["--start", "2019-05-01", "--end", "2019-05-10", "--out", str(tmp_path / "c.csv")]
    assert main([*argv, "--method", "linear"]) == 0
    out = capsys.readouterr().out
    assert "note: only 60 of the field's 100 pixels (60%) are seen clear in any" in out
    assert "the curve is the mean of those pixels alone" in out
    assert main([*argv, "--method", "whittaker"]) == 0
    assert "of the field's 100 pixels (60%)" in capsys.readouterr().out
    full = write_cube(es_cube, tmp_path / "whole.nc")
    whole = [a if a != str(path) else str(full) for a in argv]
    assert main([*whole, "--method", "linear"]) == 0
    assert "seen clear in any" not in capsys.readouterr().out


def test_reconstruct_refuses_a_period_with_no_day_in_the_cube_naming_the_period(
    es_path, tmp_path, capsys
) -> None:
    # Review 14: "Date(s) 2018-01-01, 2018-01-02, 2018-01-03 lie outside ..." (3 of 59 days,
    # no count, no word of the period); es-field runs 2019-01-27 to 2019-12-28.
    def refused(*period: str) -> str:
        args = ["reconstruct", "--cube", str(es_path), "--method", "linear", *period]
        assert main([*args, "--out", str(tmp_path / "r.nc")]) == 2
        return capsys.readouterr().err

    said = refused("--start", "2018-11-01", "--end", "2018-12-31")
    assert said.startswith(
        "error: No day of the period 2018-11-01 to 2018-12-31 lies within the cube's period "
        "2019-01-27 to 2019-12-28; pick a period inside it"
    ), said
    said = refused("--start", "2019-01-01", "--end", "2019-02-20", "--every-days", "60")
    assert said.startswith("error: No day of the period 2019-01-01 to 2019-02-20 lies"), said
    assert "its days every 60 from 2019-01-01 all fall outside it. Use a smaller" in said
    assert not (tmp_path / "r.nc").exists()


def test_reconstruct_says_when_the_cubes_ndvi_layers_are_empty(cubes_dir, tmp_path, capsys) -> None:
    # Review 14: be-flanders-c has no red (B04): the ndvi layers were all NaN without a word.
    out = tmp_path / "r.nc"
    status = main(
        ["reconstruct", "--cube", str(cubes_dir / "be-flanders-c_2018-2019.nc"), "--method",
         "linear", "--dates", "2019-01-02", "--out", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0
    assert "note: the cube has no red band (B04), so the frames' ndvi layers are empty." in printed
    with xr.open_dataset(out) as result:
        assert np.isnan(result["ndvi"].values).all()
    main(["reconstruct", "--cube", str(es_path_of(cubes_dir)), "--method", "linear", "--dates",
          "2019-05-02", "--out", str(tmp_path / "es.nc")])  # fmt: skip
    assert "ndvi layers are empty" not in capsys.readouterr().out


def es_path_of(cubes_dir: Path) -> Path:
    return cubes_dir / ES_FIELD


def test_ndvi_measures_a_fields_figures_on_its_own_window_of_a_larger_cube(
    es_path, es_cube, tmp_path
) -> None:
    # Review 14: the field's fits and "measured on this field" figures came from the whole
    # cube, so every field of a file had the same ones, and a field never seen clear was told
    # its "own clear pixels" were scored.
    def figures(field: Path, cube: Path = es_path) -> list[str]:
        done = _cli(
            "ndvi", "--cube", cube, "--geojson", field, "--start", "2019-05-01", "--end",
            "2019-05-31", "--every-days", "10", "--method", "model", "--out",
            tmp_path / "c.csv",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    def values(lines: list[str]) -> int:
        said = next(line for line in lines if line.startswith("Accuracy measured"))
        return int(said.split(" episodes, ")[1].split(" values")[0].replace(",", ""))

    west = figures(_field_file(es_cube, tmp_path / "west.geojson"))
    east = figures(_field_file(es_cube, tmp_path / "east.geojson", shift_m=150.0))
    assert west[0].startswith("note: the field and 2 pixels around it, 14 x 14 of the cube's")
    assert values(west) != values(east)  # each field's own window
    # never clear itself: measured on the clear pixels around it (a triangle: half its window
    # is other ground), and said so
    from core.cube import write_cube
    from core.field import Field
    from core.grid import field_mask

    x, y = es_cube["x"].values, es_cube["y"].values
    to_lonlat = pyproj.Transformer.from_crs(es_cube.attrs["crs"], "EPSG:4326", always_xy=True)
    corners = [(x[12], y[12]), (x[42], y[12]), (x[12], y[42]), (x[12], y[12])]
    triangle = Polygon([to_lonlat.transform(*xy) for xy in corners])
    field_path = tmp_path / "triangle.geojson"
    field_path.write_text(json.dumps({"type": "Feature", "geometry": mapping(triangle)}))
    cloudy = es_cube.copy(deep=True)
    cloudy["valid"].values[:, field_mask(Field(triangle, "t"), es_cube)] = 0
    cloudy_path = tmp_path / "cloudy.nc"
    write_cube(cloudy, cloudy_path)
    lines = figures(field_path, cloudy_path)
    said = "\n".join(lines)
    assert "this field's own clear pixels" not in said and "its own clear pixels" not in said
    assert (
        "Measured on the clear pixels around this field (not one of its own is ever clear)" in said
    )
    assert "Accuracy measured around this field: the clear pixels around it" in said


@pytest.mark.parametrize(
    ("extra", "note"),
    [
        (["--calibrate-field"], "note: --calibrate-field fits the p10-p90 band to the field, and "
         "with one sample (--samples 1, the default here) there is no band: give --samples 8"),
        (["--band-by-distance", "--no-error-band"], "note: --band-by-distance, --no-error-band "
         "shape the band fitted with --calibrate-field (and --samples 8 or more); without it "
         "they change nothing."),
        (["--method", "linear", "--whittaker-lambda", "5"], "note: --whittaker-lambda sets the "
         "Whittaker smoother's (and the model's blend's) smoothing; linear interpolation "
         "ignores it."),
    ],
)  # fmt: skip
def test_options_that_change_nothing_here_are_named(es_path, tmp_path, capsys, extra, note):
    # Review 16: each ran without a word, its output as without it.
    args = ["reconstruct", "--cube", str(es_path), "--dates", "2019-05-02", "--steps", "2"]
    assert main([*args, *extra, "--out", str(tmp_path / "r.nc")]) == 0
    assert note in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["reconstruct", "--method", "", "--dates", "2019-05-02"], {},
         "error: --method is empty (an unset variable in a script?)"),
        (["reconstruct", "--start", "", "--end", "2019-05-09"], {},
         "error: --start is empty (an unset variable in a script?): give YYYY-MM-DD."),
        (["ndvi", "--layer", "fields", "--start", "2019-05-01", "--end", "2019-05-09"], {},
         "error: --layer picks a layer of the --geojson file, but no --geojson was given"),
    ],
)  # fmt: skip
def test_empty_or_orphan_options_are_refused(es_path, tmp_path, capsys, argv, env, said):
    out = tmp_path / ("c.csv" if argv[0] == "ndvi" else "r.nc")
    assert main([*argv, "--cube", str(es_path), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(said)
    assert not out.exists()


def test_a_wrong_checkpoint_setting_does_not_stop_a_baseline(es_path, tmp_path, monkeypatch):
    # Review 16: linear and Whittaker never load a model, yet a wrong FIELDFLOW_CHECKPOINT or
    # --checkpoint refused them; the model is still refused.
    monkeypatch.setenv("FIELDFLOW_CHECKPOINT", str(tmp_path / "nowhere.pt"))
    args = ["--cube", es_path, "--dates", "2019-05-02", "--out", tmp_path / "r.nc"]
    for method in ("linear", "whittaker"):
        done = _cli_env("reconstruct", *args, "--method", method)
        assert done.returncode == 0, done.stderr
    done = _cli_env("reconstruct", *args, "--method", "model")
    assert done.returncode == 2 and "FIELDFLOW_CHECKPOINT is" in done.stderr
    monkeypatch.delenv("FIELDFLOW_CHECKPOINT")
    csv_out = tmp_path / "c.csv"
    done = _cli_env("ndvi", "--cube", es_path, "--start", "2019-05-01", "--end", "2019-05-03",
                    "--out", csv_out, "--method", "linear", "--checkpoint", "nowhere")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "note: --checkpoint is an option of the model; the linear method ignores it." in (
        done.stderr
    )


def _cli_env(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m core ARGS`` in a child that inherits this process's environment."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "core", *map(str, args)], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip


def test_output_piped_into_a_reader_that_leaves_early_ends_quietly(cubes_dir, tmp_path) -> None:
    # Review 22: `ndvi ... | head -1` printed its first line, then a BrokenPipeError traceback.
    # Now it ends as a command killed by SIGPIPE does, its CSV written, and says nothing more.
    out = tmp_path / "curve.csv"
    args = ["ndvi", "--cube", str(cubes_dir / "hu-alfold_2021.nc"), "--out", str(out)]
    args += ["--start", "2021-05-01", "--end", "2021-06-01", "--method", "whittaker"]
    args += ["--screen-haze"]  # a second line to print, after the first
    command = [sys.executable, "-m", "core", *args]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        first = process.stdout.readline()  # as `head -1` reads ...
        process.stdout.close()  # ... and leaves
        err = process.stderr.read()
        status = process.wait(timeout=300)
    assert first.startswith("Wrote 32 day(s) of NDVI")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    # (0 where its last lines reached the pipe before the reader left: the usual case is not)
    assert status in (0, 128 + signal.SIGPIPE)
    assert out.read_text().startswith("date,ndvi")


def test_ndvi_on_a_cube_wider_than_the_period_says_why_the_smoother_differs_from_the_app(
    cubes_dir, tmp_path, capsys
) -> None:
    # Review 22: on a season cube `ndvi --method whittaker` for six weeks differed from the
    # app's and batch's CSV for the same period (they fetch the period and its margin) by up
    # to 0.052 NDVI, without a word; linear agrees.
    cube = str(cubes_dir / "hu-alfold_2021.nc")  # 2021-03-12 to 2021-08-04
    said = {}
    for method, start, end in (
        ("whittaker", "2021-05-01", "2021-06-01"),
        ("linear", "2021-05-01", "2021-06-01"),
        ("whittaker", "2021-04-01", "2021-07-10"),  # its acquisitions within 30 days either side
    ):
        args = ["ndvi", "--cube", cube, "--start", start, "--end", end, "--method", method]
        assert main([*args, "--out", str(tmp_path / f"{method}{start}.csv")]) == 0
        said[method, start] = capsys.readouterr().out
    note = "note: the cube's acquisitions run from 2021-03-12 to 2021-08-04, beyond the period"
    assert note in said["whittaker", "2021-05-01"]
    assert "the Whittaker smoother uses all of them" in said["whittaker", "2021-05-01"]
    assert note not in said["linear", "2021-05-01"]
    assert note not in said["whittaker", "2021-04-01"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_prints_its_help(command: str, capsys) -> None:
    """argparse formats help text with %: a stray one (a share written as "2%") made
    `--help` a traceback, caught on 2026-12-07 before it shipped."""
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    said = capsys.readouterr().out
    assert said.startswith(f"usage: python -m core {command}")
    if command in ("reconstruct", "ndvi", "batch", "evaluate"):
        assert "--screen-haze" in said
