"""A field's season in one call, on the real Flanders cube read offline (the demo's path)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import xarray as xr
from PIL import Image

from core import season as season_module
from core.admission import WAITING_FOR_RUNS, RunGate
from core.config import Settings, checkpoint_version
from core.cube import SCL_NAMES, write_cube
from core.curve import CURVE_COLUMNS
from core.demo import DEMO_CUBE_NAME, demo_field
from core.errors import FieldError, InputError, NoScenesError
from core.export import read_geotiff_bands
from core.field import Field
from core.jobs import JobCancelled
from core.reconstruct import ReconstructOptions
from core.season import (
    DEFAULT_ADAPT_STEPS,
    SeasonRequest,
    SeasonResult,
    compute_season,
    crop_to_field,
    day_view,
    default_adapt_steps,
    frame_geotiff_for_day,
    run_plan,
    season_file_mb,
    season_frames,
    season_netcdf,
    stages_to_come,
    whittaker_reference,
)
from core.timeline import calendar_day
from tests.support.waiting import until

START, END = dt.date(2018, 5, 1), dt.date(2018, 6, 15)


@pytest.fixture(scope="module")
def request_(cubes_dir: Path) -> SeasonRequest:
    path = cubes_dir / DEMO_CUBE_NAME
    return SeasonRequest(demo_field(path), START, END, cube_path=path)


@pytest.fixture(scope="module")
def season(request_: SeasonRequest) -> tuple[SeasonResult, list[tuple[str, int, int]]]:
    calls: list[tuple[str, int, int]] = []
    result = compute_season(request_, Settings(), progress=lambda *a: calls.append(a))
    return result, calls


def test_timeline_holds_every_acquisition_and_the_regular_grid(season, flanders_cube) -> None:
    result, _ = season
    acquired = calendar_day(flanders_cube["time_s2"].values)
    in_period = {
        dt.date.fromisoformat(str(d))
        for d in acquired
        if np.datetime64(START) <= d <= np.datetime64(END)
    }
    first = min(in_period)
    grid = {first + dt.timedelta(days=5 * k) for k in range(100)}
    grid = {d for d in grid if d <= max(in_period)}
    assert set(result.days) == in_period | grid
    assert result.days == sorted(result.days)
    assert (result.first_day, result.last_day) == (min(in_period), max(in_period))
    for entry, frame in zip(result.timeline, result.frames, strict=True):
        assert entry.day == frame.day
        assert entry.acquired == (entry.day in in_period) == (frame.raw_png is not None)
        assert (entry.clear_fraction is None) == (not entry.acquired)


def test_frames_agree_with_the_daily_curve(season) -> None:
    result, _ = season
    curve = result.curve
    assert list(curve.columns) == list(CURVE_COLUMNS)
    assert len(curve) == (result.last_day - result.first_day).days + 1
    for index in range(0, len(result.frames), 5):
        frame = result.frames[index]
        row = result.curve_row(frame.day)
        assert frame.ndvi == pytest.approx(row["ndvi"], abs=1e-5)
        if frame.clear_fraction is not None:
            assert frame.clear_fraction == pytest.approx(row["clear_fraction"])
    # A clear acquisition is shown mostly as observed; a grid date without one not at all.
    clear = [f for f in result.frames if (f.clear_fraction or 0) > 0.9]
    assert clear and all(f.observed_fraction > 0.9 for f in clear)
    assert all(f.observed_fraction == 0 for f in result.frames if f.raw_png is None)


def test_pictures_have_the_display_size_and_overlays_are_transparent_outside(season) -> None:
    result, _ = season
    frame = next(f for f in result.frames if f.raw_png is not None)
    height, width = result.grid.shape
    for png in (frame.raw_png, frame.rgb_png, frame.ndvi_png):
        image = Image.open(io.BytesIO(png))
        assert image.size == (width * result.scale, height * result.scale)
    overlay = np.asarray(Image.open(io.BytesIO(frame.overlay_rgb_png)))
    assert overlay.shape[2] == 4
    opaque = (overlay[..., 3] == 255).mean()
    assert 0.1 < opaque < result.mask.mean() * 1.2  # only the field shows
    (south, west), (north, east) = result.overlay_bounds
    lon, lat = result.request.field.centroid
    assert west < lon < east and south < lat < north


def test_radar_is_the_nearest_sentinel1_frame(season, flanders_cube) -> None:
    result, _ = season
    s1_days = calendar_day(flanders_cube["time_s1"].values)
    for index in (0, len(result.frames) // 2, len(result.frames) - 1):
        day = np.datetime64(result.frames[index].day)
        radar = result.radar_for(index)
        assert radar is not None
        best = np.abs((s1_days - day).astype(int)).min()
        assert abs((radar.day - result.frames[index].day).days) == best


def test_a_result_counts_the_memory_it_holds(season) -> None:
    result, _ = season
    pictures = sum(
        len(f.rgb_png) + len(f.ndvi_png) + len(f.overlay_ndvi_png) for f in result.frames
    )
    least = result.cube.nbytes + result.mask.nbytes + pictures + len(result.curve) * 8
    # ... plus the raw and uncertainty pictures, the true-colour overlays, radar and tables
    assert least < result.nbytes < least + 20 * 1024 * 1024


def test_progress_reports_stages_with_counts(season) -> None:
    result, calls = season
    stages = [stage for stage, _, _ in calls]
    assert stages[0].startswith("reading the offline cube")
    recon = [c for c in calls if c[0].startswith("reconstructing")]
    n_days = (result.last_day - result.first_day).days + 1
    assert (
        recon[0][0]
        == f"reconstructing {n_days} days and drawing {len(result.days)} frames (linear)"
    )
    assert recon[0][1:] == (0, n_days) and calls[-1][1:] == (n_days, n_days)
    done = [c[1] for c in recon]
    assert done == sorted(done) and len(done) >= 3  # more than one step on this 46-day period


def test_a_model_run_reports_its_stages_in_the_order_they_happen(request_: SeasonRequest) -> None:
    # Reading, the field's series, tuning, the error measurement, then the reconstruction:
    # before, the reconstruction's stage came first ("0 of 241") and sat there through the
    # fits; the page listed it before the tuning it waited for.
    from core.jobs import JobBoard
    from core.model.training import ADAPT_BEAT, MEASURE_BEAT

    options = ReconstructOptions(samples=1, adapt_steps=2, blend_field=True)  # the blend measures
    short = dataclasses.replace(request_, end=dt.date(2018, 5, 20), method="model", options=options)
    job = JobBoard().join("run", lambda p: compute_season(short, Settings(), progress=p), "me")
    assert job.wait(300) and job.error is None, job.error
    stages = list(dict.fromkeys(r.stage for r in job.reports()))
    assert stages[0].startswith("reading the offline cube")
    assert stages[1:4] == [season_module.PREPARING_STAGE, ADAPT_BEAT, MEASURE_BEAT]
    assert stages[4].startswith("reconstructing ") and len(stages) == 5
    recon = [r for r in job.reports() if r.stage == stages[4]]
    assert recon[0].done == 0 and recon[-1].done == recon[-1].total
    # every chunk of it was made with the shipped checkpoint as it was at its start (pinned)
    assert job.result.request.options.checkpoint_version == checkpoint_version(None)


def test_a_model_run_on_a_cluster_reports_its_stages_in_the_order_they_happen(
    request_: SeasonRequest,
) -> None:
    # Review 21: on a cluster the reconstruction's stage was opened first, then shown done
    # ("reconstructing 46 days ... (2.0 s)") above the tuning its worker told.
    from core.distributed import local_cluster
    from core.distributed import reconstructor as cluster_reconstructor
    from core.jobs import JobBoard
    from core.model.training import ADAPT_BEAT

    options = ReconstructOptions(samples=1, adapt_steps=4, blend_field=False)
    short = dataclasses.replace(request_, end=dt.date(2018, 5, 20), method="model", options=options)
    with local_cluster(1, processes=False) as cluster:
        on = cluster_reconstructor(cluster)
        job = JobBoard().join(
            "run", lambda p: compute_season(short, Settings(), progress=p, reconstructor=on), "me"
        )
        assert job.wait(300) and job.error is None, job.error
    stages = list(dict.fromkeys(r.stage for r in job.reports()))
    assert stages[1] == season_module.PREPARING_STAGE, stages
    assert ADAPT_BEAT in stages
    recon = [i for i, stage in enumerate(stages) if stage.startswith("reconstructing ")]
    assert recon and recon[0] > stages.index(ADAPT_BEAT), stages


def test_runs_at_once_take_turns_and_one_stopped_while_waiting_leaves_the_queue(
    request_: SeasonRequest,
) -> None:
    # Two Runs on a server that computes one at a time: the second reads its cube, waits
    # for the first, then makes what it makes alone; a third, stopped while it waits, ends
    # at once and holds nobody up.
    from core.jobs import JobBoard

    gate, settings = RunGate(), Settings(max_runs=1)
    short = dataclasses.replace(request_, end=dt.date(2018, 5, 20))
    alone = compute_season(short, settings, gate=RunGate())
    board = JobBoard()

    def run(progress):
        return compute_season(short, settings, progress=progress, gate=gate)

    with gate.admitted(1, settings.admission):  # the first Run's reconstruction, under way
        second, third = board.join("b", run, "user-2"), board.join("c", run, "user-3")
        until(lambda: gate.waiting() == 2, 60.0)
        assert board.leave("c", "user-3")  # its user changed an input
        assert third.wait(10) and isinstance(third.error, JobCancelled)
        assert gate.waiting() == 1 and not second.done
    assert second.wait(120) and second.error is None, second.error
    stages = list(dict.fromkeys(r.stage for r in second.reports()))
    assert stages[0].startswith("reading the offline cube") and stages[1] == WAITING_FOR_RUNS
    assert stages[2].startswith("reconstructing ") and len(stages) == 3
    pd.testing.assert_frame_equal(second.result.curve, alone.curve)
    assert gate.running() == 0 and gate.waiting() == 0


def test_the_stages_to_come_follow_the_request(request_: SeasonRequest) -> None:
    from core.model.training import ADAPT_BEAT, MEASURE_BEAT

    recon = "reconstructing the period's days and drawing the frames"
    linear = run_plan(request_)
    assert [p.label for p in linear] == [recon]
    assert stages_to_come(linear, "reading the offline cube x.nc") == (recon,)
    assert stages_to_come(linear, "reconstructing 46 days and drawing 9 frames (linear)") == ()
    tuned = ReconstructOptions(samples=8, adapt_steps=50, calibrate_field=True)
    model = run_plan(dataclasses.replace(request_, method="model", options=tuned))
    assert stages_to_come(model, "searching Sentinel-2 scenes") == (
        season_module.PREPARING_STAGE, ADAPT_BEAT, MEASURE_BEAT, recon
    )  # fmt: skip
    assert stages_to_come(model, ADAPT_BEAT) == (MEASURE_BEAT, recon)
    bare = ReconstructOptions(samples=1, blend_field=False)  # nothing fitted on the field
    untuned = run_plan(dataclasses.replace(request_, method="model", options=bare))
    assert [p.label for p in untuned] == [season_module.PREPARING_STAGE, recon]
    # On a cluster its worker makes the fits without a word here: only the reconstruction.
    on_cluster = run_plan(dataclasses.replace(request_, method="model", options=tuned), False)
    assert [p.label for p in on_cluster] == [recon]


def test_whittaker_reference_follows_the_clear_observations(season) -> None:
    result, _ = season
    reference = result.reference
    assert len(reference) == len(result.curve)
    seen = result.curve[result.curve["source"] == "observed"]
    at_seen = reference.set_index("date").loc[seen["date"], "ndvi"].to_numpy()
    assert np.abs(at_seen - seen["observed_ndvi"].to_numpy()).mean() < 0.05
    too_few = result.curve.assign(source="reconstructed")
    assert whittaker_reference(too_few).empty


def test_query_day_off_the_timeline_matches_the_curve(season) -> None:
    result, _ = season
    day = next(
        result.first_day + dt.timedelta(days=k)
        for k in range(60)
        if result.first_day + dt.timedelta(days=k) not in result.days
    )
    view = day_view(result, day)
    assert view.ndvi == pytest.approx(result.curve_row(day)["ndvi"], abs=1e-5)
    assert view.days_to_clear == result.curve_row(day)["days_to_clear"] >= 1  # no acquisition
    assert Image.open(io.BytesIO(view.rgb_png)).size[0] == result.grid.width * result.scale
    with pytest.raises(InputError, match="outside the reconstructed period"):
        day_view(result, END + dt.timedelta(days=30))


def test_geotiff_for_a_day_is_on_the_season_grid(season) -> None:
    result, _ = season
    bands, info = read_geotiff_bands(frame_geotiff_for_day(result, result.days[3]))
    assert bands.shape == (11, *result.grid.shape)
    assert info["crs"] == result.grid.crs
    assert info["tags"]["field_key"] == result.request.field.key
    # What made it (review 23: no cloud limit, no samples, no settings): every setting, the
    # period, the data and the scene cloud limit, as the season's NetCDF holds them.
    recorded = json.loads(info["tags"]["options_json"])
    assert recorded["samples"] == result.request.options.samples and "screen_haze" in recorded
    assert info["tags"]["scene_cloud_limit"] == "none: every scene kept"
    assert info["tags"]["period"] == f"{result.first_day}/{result.last_day}"
    limited = dataclasses.replace(
        result, request=dataclasses.replace(result.request, max_cloud_cover=30.0)
    )
    _, info = read_geotiff_bands(frame_geotiff_for_day(limited, result.days[3]))
    said = "30 %: scenes whose whole-tile cloud cover is above it skipped"
    assert info["tags"]["scene_cloud_limit"] == said
    assert season_frames(limited).attrs["scene_cloud_limit"] == said


def test_the_season_file_holds_every_frame_of_the_slider_as_the_run_made_it(
    season, tmp_path
) -> None:
    result, _ = season
    assert season_module.curve_chunks(result.cube, len(result.curve), 1)[1:]  # several chunks
    data = season_netcdf(result)
    (tmp_path / "season.nc").write_bytes(data)
    with xr.open_dataset(tmp_path / "season.nc", engine="netcdf4") as opened:
        frames = opened.load()
    assert [dt.date.fromisoformat(str(t)[:10]) for t in frames["time"].values] == result.days
    assert frames["s2"].shape == (len(result.days), 10, *result.grid.shape)
    field = frames["field"].values.astype(bool)
    np.testing.assert_array_equal(field, result.mask)
    assert frames["acquired"].values.tolist() == [int(e.acquired) for e in result.timeline]
    for index, frame in enumerate(result.frames):  # the curve's field means, day by day
        assert float(np.nanmean(frames["ndvi"].values[index][field])) == pytest.approx(
            frame.ndvi, abs=1e-5
        )
    assert frames.attrs["crs"] == result.grid.crs and frames.attrs["field_key"]
    assert frames.attrs["period"] == f"{result.first_day}/{result.last_day}"
    # The estimate of what it holds, uncompressed, and the file, compressed, below it.
    per_pixel = sum(v.nbytes for v in frames.data_vars.values() if {"time", "y"} <= set(v.dims))
    assert len(data) < season_file_mb(result) * 1e6 == per_pixel


def test_the_season_file_made_on_a_cluster_holds_the_same_frames(season, tmp_path) -> None:
    from core.distributed import local_cluster, reconstructor

    result, _ = season
    with local_cluster(1, processes=False) as cluster:
        frames = season_frames(result, reconstructor(cluster))
        ran = cluster.client.run_on_scheduler(
            lambda dask_scheduler: [str(k) for k, *_ in dask_scheduler.transition_log]
        )
    assert any(key.startswith("fieldflow-reconstruct-") for key in ran)  # made there
    here = season_frames(result)
    np.testing.assert_array_equal(frames["s2"].values, here["s2"].values)
    np.testing.assert_array_equal(frames["observed"].values, here["observed"].values)


def test_a_season_file_too_large_for_the_page_is_refused_with_the_way_out(
    season, monkeypatch
) -> None:
    result, _ = season
    monkeypatch.setattr(season_module, "SEASON_FILE_MAX_MB", season_file_mb(result) / 2)
    with pytest.raises(InputError, match="python -m core reconstruct"):
        season_netcdf(result)
    assert season_frames(result)["s2"].sizes["time"] == len(result.days)  # the data is fine


def test_request_key_names_what_changes_the_result(request_: SeasonRequest) -> None:
    key = request_.key("http://stac")
    renamed = dataclasses.replace(request_, field=Field(request_.field.geometry, "Other name"))
    assert renamed.key("http://stac") == key
    assert request_.key("http://elsewhere") == key  # offline: the STAC URL plays no part
    live = dataclasses.replace(request_, cube_path=None)
    assert live.key("http://stac") != live.key("http://elsewhere")
    for change in (
        {"end": END + dt.timedelta(days=1)},
        {"method": "whittaker"},
        {"options": ReconstructOptions(samples=4)},
        {"max_cloud_cover": 50.0},
        {"options": ReconstructOptions(samples=8, calibrate_field=True, steps=8)},
        {"include_s1": not request_.include_s1},  # review 29: left out, it passed
        {"every_days": request_.every_days + 1},
        {"field": Field(shapely.affinity.translate(request_.field.geometry, 1e-4), "x")},
    ):
        assert dataclasses.replace(request_, **change).key("http://stac") != key
    # Review 23: settings that name the same computation are the same result, shown again:
    # the device (a GPU's result is the CPU's), the steps a fitted band takes by default, and
    # a band fitted on one sample (none is drawn).
    model = dataclasses.replace(request_, method="model")
    fitted = ReconstructOptions(samples=8, calibrate_field=True)
    for same, other in (
        (fitted, dataclasses.replace(fitted, device="cpu")),
        (fitted, dataclasses.replace(fitted, steps=4)),
        (ReconstructOptions(samples=1), ReconstructOptions(samples=1, calibrate_field=True)),
    ):
        assert dataclasses.replace(model, options=same).key("s") == dataclasses.replace(
            model, options=other
        ).key("s")


def test_offline_cube_period_without_scenes_and_field_outside(request_: SeasonRequest) -> None:
    empty = dataclasses.replace(request_, start=dt.date(2016, 1, 1), end=dt.date(2016, 2, 1))
    with pytest.raises(NoScenesError, match="no Sentinel-2 acquisition between 2016-01-01"):
        compute_season(empty, Settings())
    far = Field(shapely.affinity.translate(request_.field.geometry, xoff=0.5), "Far away")
    with pytest.raises(FieldError, match="outside the cube"):
        compute_season(dataclasses.replace(request_, field=far), Settings())
    with pytest.raises(InputError, match="before it starts"):
        compute_season(dataclasses.replace(request_, start=END, end=START), Settings())


def test_a_field_partly_outside_the_imagery_is_said_and_measured_over_the_rest(
    request_: SeasonRequest,
) -> None:
    # Moved east by about half its width, the demo parcel sticks out of the cube's east edge.
    # Said nowhere before, and its clear shares counted the part outside as never clear (no
    # day was "mostly clear").
    field = request_.field
    west, _, east, _ = field.geometry.bounds
    moved = Field(shapely.affinity.translate(field.geometry, xoff=(east - west) / 2), "Moved")
    short = dataclasses.replace(request_, field=moved, end=dt.date(2018, 5, 31), method="linear")
    result = compute_season(short, Settings())
    note = next((n for n in result.notes if "outside the imagery" in n), None)
    assert note is not None, result.notes
    share = float(re.search(r"About (\d+)%", note)[1]) / 100
    assert 0.2 < share < 0.8
    whole = compute_season(dataclasses.replace(short, field=field), Settings())
    assert not any("outside the imagery" in n for n in whole.notes)
    # Shares are of the covered part: a fully clear day reads as 1, not as the covered share.
    assert max(e.clear_fraction or 0 for e in result.timeline) > 0.95


def test_pixels_never_clear_are_counted_as_blank_in_a_baselines_frames(
    request_: SeasonRequest, flanders_cube, tmp_path: Path
) -> None:
    # Linear interpolation has nothing to draw a pixel never clear from: its frames show a
    # hole there, which the page explains with this share.
    cube, grid = crop_to_field(flanders_cube, request_.field)
    mask = season_module.field_mask(request_.field, grid)
    rows = np.flatnonzero(mask.any(axis=1))
    hidden = np.zeros_like(mask)
    hidden[rows[: rows.size // 3]] = True  # the field's northern third: never clear
    cube = cube.copy(deep=True)
    cube["valid"].values[:, hidden] = 0
    path = write_cube(cube, tmp_path / "never-clear.nc")
    short = dataclasses.replace(request_, end=dt.date(2018, 5, 31), method="linear", cube_path=path)
    result = compute_season(short, Settings())
    expected = (hidden & mask).sum() / mask.sum()
    assert all(f.blank_fraction == pytest.approx(expected, abs=0.01) for f in result.frames)


def test_crop_to_field_clips_the_window_to_the_cube(flanders_cube, request_) -> None:
    cropped, grid = crop_to_field(flanders_cube, request_.field)
    # The parcel touches the cube's east edge: the window stops there.
    assert cropped["x"].values[-1] == flanders_cube["x"].values[-1]
    assert grid.shape == (cropped.sizes["y"], cropped.sizes["x"])
    assert grid.shape[0] < flanders_cube.sizes["y"]


def test_sampled_request_draws_the_uncertainty(request_: SeasonRequest) -> None:
    short = dataclasses.replace(
        request_, end=dt.date(2018, 5, 20), options=ReconstructOptions(samples=2)
    )
    result = compute_season(short, Settings())
    assert result.fits == ()  # a baseline fits nothing on the field
    assert all(frame.uncertainty_png is not None for frame in result.frames)
    assert np.isfinite(result.curve["ndvi_p10"]).all()
    # The baselines are deterministic: their band has zero width.
    assert (result.curve["ndvi_p90"] - result.curve["ndvi_p10"]).abs().max() < 1e-6
    frames = season_frames(result)  # the season file holds the band too, as estimated
    assert {"s2_p10", "s2_p90", "ndvi_p10", "ndvi_p90"} <= set(frames.data_vars)
    per_pixel = sum(v.nbytes for v in frames.data_vars.values() if {"time", "y"} <= set(v.dims))
    assert season_file_mb(result) * 1e6 == per_pixel


def test_curve_is_a_dataframe_with_datetimes(season) -> None:
    result, _ = season
    assert pd.api.types.is_datetime64_any_dtype(result.curve["date"])


@pytest.mark.slow
def test_model_method_with_a_tiny_checkpoint(request_: SeasonRequest, tmp_path: Path) -> None:
    """The model path end to end (about 30 s): a throw-away tiny checkpoint, 4 samples."""
    from core.cli import main

    checkpoint = tmp_path / "tiny.pt"
    assert main(["train", "--tiny", "--out", str(checkpoint), "--threads", "1"]) == 0
    options = ReconstructOptions(samples=4, steps=2, checkpoint=checkpoint)
    short = dataclasses.replace(request_, end=dt.date(2018, 5, 20), method="model", options=options)
    result = compute_season(short, Settings())
    # the Run's chunks all used the checkpoint as it was at its start (pinned), same Run key
    assert result.request.options.checkpoint_version == checkpoint_version(checkpoint)
    assert result.request.key("http://stac") == short.key("http://stac")
    assert any(f.startswith("Field blend") for f in result.fits)  # apart from the notes
    assert all(frame.uncertainty_png is not None for frame in result.frames)
    spread = result.curve["ndvi_p90"] - result.curve["ndvi_p10"]
    assert (spread >= -1e-6).all() and spread.max() > 0.01
    view = day_view(result, dt.date(2018, 5, 13))
    assert view.uncertainty_png is not None and view.ndvi_p10 <= view.ndvi_p90
    # The frames come from the curve's own reconstruction: the map and the chart agree,
    # samples and band included.
    for frame in result.frames:
        row = result.curve_row(frame.day)
        assert (frame.ndvi, frame.ndvi_p10, frame.ndvi_p90) == pytest.approx(
            (row["ndvi"], row["ndvi_p10"], row["ndvi_p90"]), abs=1e-9
        )
    # A GeoTIFF download is that same reconstruction, on the timeline or off it.
    for day in (result.days[2], dt.date(2018, 5, 13)):
        bands, info = read_geotiff_bands(frame_geotiff_for_day(result, day))
        layer = bands[info["names"].index("NDVI")]
        field_ndvi = float(np.nanmean(layer[result.mask].astype(np.float64)))
        assert field_ndvi == pytest.approx(result.curve_row(day)["ndvi"], abs=1e-6)
    # A timeline day's view is its frame's pictures, computed again nowhere.
    frame = result.frames[4]
    again = day_view(result, frame.day)
    assert (again.rgb_png, again.ndvi_png) == (frame.rgb_png, frame.ndvi_png)


def test_a_run_tunes_the_model_to_its_field_by_default(tmp_path: Path) -> None:
    # Measured on ten paired draws of the held-out yardstick (README, "per-field tuning").
    assert default_adapt_steps() == DEFAULT_ADAPT_STEPS > 0  # the shipped checkpoint is here
    assert default_adapt_steps(tmp_path / "none.pt") == 0  # no model, nothing to tune


def test_a_period_too_short_to_tune_runs_untuned_and_says_so(
    request_: SeasonRequest, flanders_cube, tmp_path: Path
) -> None:
    # 1-6 May 2018 in a cube that holds only those days: three acquisitions, one fewer than
    # tuning needs (the demo cube gives any period a month either side, as a fetch does). The
    # default must not turn a short period into an error; the Run goes on untuned, says so,
    # and its days are reconstructed again the same way.
    days = calendar_day(flanders_cube["time_s2"].values)
    keep = (days >= np.datetime64("2018-05-01")) & (days <= np.datetime64("2018-05-06"))
    path = tmp_path / "three-days.nc"
    flanders_cube.isel(time_s2=np.flatnonzero(keep)).to_netcdf(path)
    short = dataclasses.replace(
        request_,
        end=dt.date(2018, 5, 6),
        method="model",
        options=ReconstructOptions(adapt_steps=DEFAULT_ADAPT_STEPS),
        cube_path=path,
    )
    result = compute_season(short, Settings())
    assert result.frames_loaded["s2"] == 3
    assert any("not tuned to this field" in note for note in result.notes)
    assert result.request.options.adapt_steps == 0
    assert result.key == short.key(Settings().stac_api_url)  # the request as asked
    view = day_view(result, dt.date(2018, 5, 2))  # off the timeline: reconstructed again
    assert view.ndvi == pytest.approx(result.curve_row(dt.date(2018, 5, 2))["ndvi"], abs=1e-6)


def test_a_period_with_too_few_clear_acquisitions_runs_untuned_and_says_so(
    request_: SeasonRequest, flanders_cube, tmp_path: Path
) -> None:
    # Many acquisitions, one of them with clear pixels (review 9: tuned on its one clear frame,
    # the network copied it over the season). The clear ones count, and the note says so.
    days = calendar_day(flanders_cube["time_s2"].values)
    may = (days >= np.datetime64("2018-05-01")) & (days <= np.datetime64("2018-05-31"))
    keep = np.flatnonzero(may)
    cube = flanders_cube.isel(time_s2=keep).copy(deep=True)
    clearest = int(cube["valid"].values.sum(axis=(1, 2), dtype=np.int64).argmax())
    cube["valid"].values[np.arange(keep.size) != clearest] = 0
    path = tmp_path / "one-clear.nc"
    cube.to_netcdf(path)
    cloudy = dataclasses.replace(
        request_,
        start=dt.date(2018, 5, 1),
        end=dt.date(2018, 5, 31),
        method="model",
        options=ReconstructOptions(adapt_steps=DEFAULT_ADAPT_STEPS),
        cube_path=path,
    )
    result = compute_season(cloudy, Settings())
    said = [note for note in result.notes if "not tuned to this field" in note]
    assert said and f"with clear pixels and this period has 1 (of {keep.size})" in said[0]
    assert result.request.options.adapt_steps == 0
    assert not any("band is not fitted" in note for note in result.notes)  # K = 1: no band
    banded = dataclasses.replace(
        cloudy,
        options=ReconstructOptions(
            adapt_steps=DEFAULT_ADAPT_STEPS, samples=8, calibrate_field=True, steps=2
        ),
    )
    result = compute_season(banded, Settings())
    (band,) = [note for note in result.notes if "band is not fitted on this field" in note]
    assert "likely too narrow" in band


def test_a_run_on_radar_with_one_polarization_says_the_model_did_not_use_it(
    request_: SeasonRequest, flanders_cube, tmp_path: Path
) -> None:
    # Some regions have single-polarization (VV) Sentinel-1 only: the frames are counted and
    # drawn, but the model takes radar only with VV and VH, and the Run must not imply it did.
    cube = flanders_cube.copy(deep=True)
    cube["s1"].loc[{"polarization": "VH"}] = np.nan
    path = tmp_path / "vv-only.nc"
    cube.to_netcdf(path)
    short = dataclasses.replace(
        request_,
        cube_path=path,
        end=dt.date(2018, 5, 20),
        method="model",
        options=ReconstructOptions(blend_field=False),
    )
    result = compute_season(short, Settings())
    assert result.frames_loaded["s1"] > 0
    (note,) = [n for n in result.notes if "one polarization only (VV)" in n]
    assert "in all " in note and "do not inform the reconstruction" in note
    both = compute_season(dataclasses.replace(short, cube_path=request_.cube_path), Settings())
    assert not [n for n in both.notes if "polarization" in n]


def test_each_acquisitions_mask_is_told_by_scene_class(request_: SeasonRequest) -> None:
    short = dataclasses.replace(request_, end=dt.date(2018, 5, 31), method="linear")
    result = compute_season(short, Settings())
    acquired = [f for f in result.frames if f.raw_png is not None]
    partly = [f for f in acquired if f.clear_fraction < 0.99]
    assert partly, "the period has no acquisition with a mask over the field"
    for frame in acquired:
        told = sum(share for _, share in frame.masked_as)
        # The classes named cover the masked share, but for those under 1 % each.
        assert told <= 1 - frame.clear_fraction + 1e-6
        assert told >= 1 - frame.clear_fraction - 0.01 * len(SCL_NAMES)
    assert any(frame.masked_as for frame in partly)


def test_a_period_beyond_an_offline_cubes_dates_names_the_cube(request_: SeasonRequest) -> None:
    # Sentinel-2 images from 2015; the offline cube only from 2017-08-04. The note had said
    # "the first and last Sentinel-2 acquisitions of the period", as if none existed before.
    early = dataclasses.replace(
        request_, start=dt.date(2017, 1, 1), end=dt.date(2017, 8, 31), method="linear"
    )
    result = compute_season(early, Settings())
    (note,) = [n for n in result.notes if n.startswith("Frames and the curve cover")]
    assert note.startswith(
        f"Frames and the curve cover 2017-08-04 to 2017-08-31: the first Sentinel-2 "
        f"acquisition in the offline cube {DEMO_CUBE_NAME} is from 2017-08-04 (nothing"
    ), note
