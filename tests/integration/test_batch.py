"""``python -m core batch`` on a local Dask cluster against the local STAC API and COG server.

Three fields (the west, middle and east thirds of be-flanders-a, published like Planetary
Computer) go through fetch -> reconstruct -> outputs on two workers (threads of this process:
LocalCluster(processes=True) cannot start its nanny under pytest on some machines). Checked:
the outputs hold the right numbers, a re-run skips every field without a single request, a
field without scenes fails with its message while the others finish, a field with partial
outputs is redone, and model reconstructions are routed to the GPU worker, which loads the
model once.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from pyproj import Transformer
from shapely.geometry import box

from core import batch, distributed
from core.batch import MARKER_FILE, SUMMARY_COLUMNS, BatchRequest, list_fields, run_batch
from core.cache import fetch_cached
from core.cli import main
from core.config import REPO_ROOT, Settings
from core.curve import CURVE_COLUMNS, curve_csv, ndvi_curve
from core.distributed import Cluster
from core.fetch import PERIOD_MARGIN_DAYS, searched_period
from core.field import field_from_file
from core.grid import field_mask, grid_for_field, grid_from_cube
from core.model import inference
from core.model.checkpoint import Checkpoint, save_checkpoint
from core.model.config import ModelConfig
from core.model.network import FieldFlowNet
from core.reconstruct import ReconstructOptions
from tests.support.site import PublishedSite
from tests.support.waiting import until

NAMES = ("West strip", "Middle strip", "East strip")
IDS = ("W-01", "M-02", "E-03")


@pytest.fixture(scope="module")
def site(published_site) -> PublishedSite:
    # 10 dates: each strip has 4-5 acquisitions with clear pixels, what the model's per-field
    # fits need (core.model.config.MIN_CLEAR_ACQUISITIONS); 8 gave the west strip 2.
    return published_site("be-flanders-a", max_dates=10)


def period(site: PublishedSite) -> tuple[str, str]:
    days = site.s2_times().astype("datetime64[D]")
    return str(days.min()), str(days.max())


def strips(site: PublishedSite) -> list[shapely.Polygon]:
    """Three lon/lat strips side by side, 40 m inside the published cube."""
    x, y = site.cube["x"].values, site.cube["y"].values
    left, right, bottom, top = x[0] + 35, x[-1] - 35, y[-1] + 35, y[0] - 35
    edges = np.linspace(left, right, 4)
    to_lonlat = Transformer.from_crs(site.crs, "EPSG:4326", always_xy=True)
    return [
        shapely.transform(
            box(a, bottom, b, top).segmentize(50.0), to_lonlat.transform, interleaved=False
        )
        for a, b in itertools.pairwise(edges)
    ]


def write_fields(path: Path, geometries: list, names: list[str], ids: list[str]) -> Path:
    frame = gpd.GeoDataFrame(
        {"name": names, "parcel_id": ids}, geometry=geometries, crs="EPSG:4326"
    )
    frame.to_file(path, driver="GPKG", layer="fields")
    return path


def read_summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open() as handle:
        return list(csv.DictReader(handle))


def batch_args(
    fields: Path,
    out: Path | str,
    site: PublishedSite,
    *,
    local_mode: str = "threads",
    scheduler: str = "local",
) -> list[str]:
    """``batch`` of the fields with linear, on a local cluster of 2 workers (``local_mode``),
    or on ``scheduler``'s cluster (no local options then: they would be said to do nothing)."""
    start, end = period(site)
    args = [
        "batch",
        "--fields",
        str(fields),
        "--start",
        start,
        "--end",
        end,
        "--out",
        str(out),
        "--id-column",
        "parcel_id",
        "--method",
        "linear",
        "--every-days",
        "7",
        "--scheduler",
        scheduler,
    ]
    if scheduler == "local":
        args += ["--workers", "2", "--local-mode", local_mode]
    return args


@pytest.fixture(scope="module")
def first_run(site, tmp_path_factory):
    """The three strips batched once; returns (fields file, results folder, cache, stdout)."""
    folder = tmp_path_factory.mktemp("batch")
    fields = write_fields(folder / "fields.gpkg", strips(site), list(NAMES), list(IDS))
    out, cache = folder / "results", folder / "cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STAC_API_URL", site.stac_url)
        patch.setenv("FIELDFLOW_CACHE_DIR", str(cache))
        patch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
        site.reset()
        code, printed = run_cli(batch_args(fields, out, site))
    assert code == 0, printed
    return fields, out, cache, printed


def run_cli(args: list[str]) -> tuple[int, str]:
    """``python -m core ARGS`` in this process; (exit status, stdout)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(args)
    return code, buffer.getvalue()


def test_outputs_hold_the_curve_and_frames_of_each_field(site, first_run) -> None:
    fields, out, cache, printed = first_run
    start, end = period(site)
    lines = [line for line in printed.splitlines() if line.startswith("[")]
    assert len(lines) == 3 and all(": ok in " in line for line in lines)
    assert "Done in" in printed and "3 ok, 0 skipped, 0 failed" in printed
    assert "cover less than the period" not in printed  # the period is the acquisitions' own

    summary = read_summary(out)
    assert list(summary[0]) == list(SUMMARY_COLUMNS)
    assert [r["field_id"] for r in summary] == list(IDS)  # input order, not completion order
    assert [r["name"] for r in summary] == list(NAMES)
    assert {r["status"] for r in summary} == {"ok"}
    # linear measures nothing of a model
    assert {(r["model_vs_baseline"], r["model_trained_here"]) for r in summary} == {("", "")}
    assert {r["scenes_s2"] for r in summary} == {str(len(site.s2_items))}
    s1_days = [item["properties"]["datetime"][:10] for item in site.s1_items]
    # Searched over the period and its margin either side (core.fetch.PERIOD_MARGIN_DAYS)
    before, after = (
        d.isoformat()
        for d in searched_period(
            dt.date.fromisoformat(start), dt.date.fromisoformat(end), PERIOD_MARGIN_DAYS
        )
    )
    assert {r["scenes_s1"] for r in summary} == {str(sum(before <= d <= after for d in s1_days))}

    settings = Settings(stac_api_url=site.stac_url, cache_dir=cache)
    site_grid = grid_from_cube(site.cube)
    for index, (field_id, row) in enumerate(zip(IDS, summary, strict=True)):
        folder = out / field_id
        assert sorted(p.name for p in folder.iterdir()) == ["done.json", "frames.tif", "ndvi.csv"]
        field = field_from_file(fields, index=index)
        cube = fetch_cached(field, start, end, settings=settings).cube  # from the cache
        mask = field_mask(field, cube)
        # The CSV is exactly the field's daily curve of the fetched cube.
        expected = ndvi_curve(cube, start, end, method="linear", field_mask=mask)
        text = (folder / "ndvi.csv").read_text()
        assert text == curve_csv(expected)
        # ... and the joined table holds it under the field's id and name.
        with (out / "all_fields_ndvi.csv").open() as handle:
            joined = [r for r in csv.DictReader(handle) if r["field_id"] == field_id]
        assert {r["name"] for r in joined} == {NAMES[index]}
        assert [r["date"] for r in joined] == [r["date"] for r in csv.DictReader(io.StringIO(text))]
        table = list(csv.DictReader(text.splitlines()))
        assert list(table[0]) == list(CURVE_COLUMNS)
        days = np.datetime64(end) - np.datetime64(start)
        assert len(table) == days.astype(int) + 1
        peak = max(table, key=lambda r: float(r["ndvi"]))
        assert row["ndvi_peak_date"] == peak["date"]
        assert float(row["ndvi_peak"]) == pytest.approx(float(peak["ndvi"]), abs=1e-4)

        # The COG: every acquisition day plus every 7 days, on the field's grid.
        grid = grid_for_field(field)
        acquired = np.unique(site.s2_times().astype("datetime64[D]"))
        with rasterio.open(folder / "frames.tif") as src:
            dates = src.tags()["DATES"].split(",")
            assert set(map(str, acquired)) <= set(dates)
            assert int(row["frames"]) == len(dates) and src.count == 11 * len(dates)
            assert src.crs.to_string() == "EPSG:32631"
            assert src.transform == grid.transform
            assert (src.height, src.width) == grid.shape
            # Kept clear observations are the published reflectance: B04 of the clearest day.
            row0, col0 = grid.offset_in(site_grid)
            window = {"y": slice(row0, row0 + grid.height), "x": slice(col0, col0 + grid.width)}
            valid = site.cube["valid"].isel(**window).values.astype(bool)
            best = int(valid.sum(axis=(1, 2)).argmax())
            day = str(site.s2_times()[best].astype("datetime64[D]"))
            b04 = src.read(11 * dates.index(day) + 3)
            assert src.descriptions[11 * dates.index(day) + 2] == f"{day} B04"
            # Each day's OBSERVED_FRACTION is the CSV's clear_fraction: the field's pixels.
            assert src.tags()["OBSERVED_FRACTION_OF"] == "field"
            clear_days = {r["date"]: r["clear_fraction"] for r in table if r["clear_fraction"]}
            assert len(clear_days) > 3
            for date, fraction in clear_days.items():
                tagged = src.tags(11 * dates.index(date) + 1)["OBSERVED_FRACTION"]
                assert float(tagged) == pytest.approx(float(fraction), abs=1e-4), date
        clear = valid[best]
        published = site.cube["s2"].isel(time_s2=best, **window).sel(band="B04").values
        assert clear.sum() > 100
        np.testing.assert_allclose(b04[clear], published[clear], atol=1.5e-4)


def test_a_rerun_skips_every_field_without_a_request(site, first_run, tmp_path, monkeypatch):
    fields, out, _cache, _ = first_run
    rerun = tmp_path / "results"
    shutil.copytree(out, rerun)
    before = read_summary(rerun)
    # A killed writer's hidden leftover (review 13: they survived every re-run) goes once
    # over an hour old; a fresh one may be a live writer's and stays.
    stale, fresh = rerun / IDS[0] / ".tmp-frames.tif.abc.tif", rerun / IDS[1] / ".tmp-ndvi.csv.x"
    for leftover in (stale, fresh):
        leftover.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    monkeypatch.setenv("STAC_API_URL", site.stac_url)
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "empty-cache"))  # a fetch would ask
    site.reset()
    code, printed = run_cli(batch_args(fields, rerun, site))
    assert code == 0
    assert site.stac_server.requests == [] and site.cog_server.requests == []
    assert printed.count("skipped, complete from an earlier run") == 3
    after = read_summary(rerun)
    assert [r["status"] for r in after] == ["skipped"] * 3
    assert not stale.exists() and fresh.exists()
    for old, new in zip(before, after, strict=True):  # the earlier run's figures are kept
        assert {k: v for k, v in new.items() if k not in ("status", "seconds")} == {
            k: v for k, v in old.items() if k not in ("status", "seconds")
        }


def test_a_field_renamed_in_the_file_is_resumed_under_its_new_name(
    site, first_run, tmp_path, monkeypatch
):
    # Review 15: the skipped row, and so summary.csv and all_fields_ndvi.csv, kept the name
    # stored with the earlier outputs.
    _fields, out, cache, _ = first_run
    rerun = tmp_path / "results"
    shutil.copytree(out, rerun)
    names = ["Grass (was maize)", *NAMES[1:]]
    renamed = write_fields(tmp_path / "renamed.gpkg", strips(site), names, list(IDS))
    monkeypatch.setenv("STAC_API_URL", site.stac_url)
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(cache))
    code, printed = run_cli(batch_args(renamed, rerun, site))
    assert code == 0 and printed.count("skipped, complete from an earlier run") == 3
    assert [r["name"] for r in read_summary(rerun)] == names
    with (rerun / "all_fields_ndvi.csv").open() as handle:
        assert {r["name"] for r in csv.DictReader(handle) if r["field_id"] == IDS[0]} == {names[0]}


def test_a_rerun_with_another_request_takes_the_old_tables_away_before_any_field(
    site, first_run, tmp_path
) -> None:
    # Review 13: a run with another request stopped half-way left summary.csv saying "ok"
    # (and all_fields_ndvi.csv holding the old curves) for fields whose files it had replaced.
    # Now the tables go before any field is made again, and come back when the run ends.
    fields, out, cache, _ = first_run
    results = tmp_path / "results"
    shutil.copytree(out, results)
    tables = [results / batch.SUMMARY_FILE, results / batch.ALL_CURVES_FILE]
    assert all(t.is_file() for t in tables)
    start, end = period(site)
    other = BatchRequest(start=start, end=end, method="linear", every_days=3)  # not 7
    settings = Settings(stac_api_url=site.stac_url, cache_dir=cache)
    seen: list[list[bool]] = []

    def on_row(_row, _done: int, _total: int) -> None:  # as each field ends
        seen.append([t.exists() for t in tables])

    with distributed.local_cluster(1, processes=False) as cluster:
        rows = run_batch(
            list_fields(fields), other, results, cluster=cluster, settings=settings, on_row=on_row
        )
    assert [r.status for r in rows] == ["ok"] * 3
    assert seen == [[False, False]] * 3  # a stop at any of these moments leaves no stale table


def test_a_failed_rerun_of_another_request_keeps_the_earlier_outputs_and_gives_them_back(
    site, first_run, tmp_path, monkeypatch
) -> None:
    # Until 2026-12-06 a field that failed deleted its folder's outputs of another request
    # (review 15 had them out of the joined table): a season's results lost to a server down
    # or a period the imagery does not cover. They are now kept aside, out of the tables,
    # and a run of their own request takes them back without fetching.
    fields, out, cache, _ = first_run
    results = tmp_path / "results"
    shutil.copytree(out, results)
    start, end = period(site)
    year_before = [str(np.datetime64(day) - np.timedelta64(365, "D")) for day in (start, end)]
    args = batch_args(fields, results, site)
    args[args.index("--start") + 1], args[args.index("--end") + 1] = year_before
    monkeypatch.setenv("STAC_API_URL", site.stac_url)
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(cache))
    site.reset()
    code, printed = run_cli(args)
    assert code == 1, printed
    rows = read_summary(results)
    assert [r["status"] for r in rows] == ["failed"] * 3
    for field_id, row in zip(IDS, rows, strict=True):
        folder = results / field_id
        assert row["error"].startswith("No Sentinel-2 scenes cover the field between")
        assert row["error"].endswith(
            f"The outputs of an earlier run in its folder, for another request, are kept in "
            f"{folder / 'earlier'} (its done.json says which); a run of that request takes "
            "them back."
        )
        assert sorted(p.name for p in folder.iterdir()) == ["earlier"]
        for name in ("done.json", "frames.tif", "ndvi.csv"):
            assert (folder / "earlier" / name).read_bytes() == (out / field_id / name).read_bytes()
    with (results / "all_fields_ndvi.csv").open() as handle:
        assert list(csv.DictReader(handle)) == []  # the kept curves are not this request's

    # The first request again: nothing fetched, every field skipped with its own outputs.
    site.reset()
    code, printed = run_cli(batch_args(fields, results, site))
    assert code == 0, printed
    assert printed.count("skipped, complete from an earlier run") == 3
    assert site.stac_server.requests == [] and site.cog_server.requests == []
    for field_id in IDS:
        folder = results / field_id
        assert sorted(p.name for p in folder.iterdir()) == ["done.json", "frames.tif", "ndvi.csv"]
        for name in ("done.json", "frames.tif", "ndvi.csv"):
            assert (folder / name).read_bytes() == (out / field_id / name).read_bytes()
    joined = "all_fields_ndvi.csv"
    assert (results / joined).read_text() == (out / joined).read_text()


def test_a_field_without_scenes_fails_and_partial_outputs_are_redone(
    site, first_run, tmp_path, monkeypatch
) -> None:
    _fields, out, cache, _ = first_run
    results = tmp_path / "results"
    shutil.copytree(out, results)
    # The middle strip's run "died" after writing its frames: no marker, a truncated COG.
    (results / "M-02" / MARKER_FILE).unlink()
    frames = results / "M-02" / "frames.tif"
    frames.write_bytes(frames.read_bytes()[:1000])
    far = box(36.70, -3.40, 36.703, -3.397)  # near Arusha: nothing published there
    geometries = [*strips(site), far]
    more = write_fields(tmp_path / "more.gpkg", geometries, [*NAMES, "Far field"], [*IDS, "F-04"])
    monkeypatch.setenv("STAC_API_URL", site.stac_url)
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(cache))
    site.reset()
    code, printed = run_cli(batch_args(more, results, site))
    assert code == 1  # some field failed
    summary = {r["field_id"]: r for r in read_summary(results)}
    assert [summary[i]["status"] for i in (*IDS, "F-04")] == ["skipped", "ok", "skipped", "failed"]
    start, end = period(site)
    assert summary["F-04"]["error"] == (
        f"No Sentinel-2 scenes cover the field between {start} and {end}. Try a wider "
        "period; if the field should have images, check that its outline is where you meant "
        "(GeoJSON coordinates are longitude, latitude)."
    )
    assert "F-04: failed after" in printed
    assert (results / "M-02" / MARKER_FILE).is_file()
    with rasterio.open(frames) as src:
        assert src.count == 11 * int(summary["M-02"]["frames"])
    assert frames.read_bytes() == (out / "M-02" / "frames.tif").read_bytes()
    # The middle strip came from the cube cache; only the far field searched (and found none).
    assert len(site.stac_server.searches()) == 1 and site.cog_server.requests == []


def test_model_reconstructions_go_to_the_gpu_worker_which_loads_the_model_once(
    site, first_run, tmp_path, monkeypatch
) -> None:
    from distributed import Client, Scheduler, SpecCluster, Worker, get_worker

    fields, _out, cache, _ = first_run
    torch.manual_seed(0)
    config = ModelConfig(
        width=16, depth=1, heads=2, flow_hidden=32, flow_layers=1, tile=32, tile_overlap=8
    )
    checkpoint = save_checkpoint(Checkpoint(model=FieldFlowNet(config)), tmp_path / "tiny.pt")

    where: dict[str, list[str]] = {"fetch": [], "reconstruct": [], "load": []}
    real_fetch, real_reconstruct, real_load = (
        batch.fetch_cached,
        batch.reconstruct,
        inference.load_checkpoint,
    )

    def spy(kind, real):
        def wrapped(*args, **kwargs):
            where[kind].append(get_worker().name)
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(batch, "fetch_cached", spy("fetch", real_fetch))
    monkeypatch.setattr(batch, "reconstruct", spy("reconstruct", real_reconstruct))
    monkeypatch.setattr(inference, "load_checkpoint", spy("load", real_load))
    inference.loaded_checkpoint.cache_clear()
    monkeypatch.setattr(distributed, "TRIM_AFTER_IDLE_S", 0.2)
    trims = distributed.idle_trims

    workers = {
        "cpu": {"cls": Worker, "options": {"nthreads": 1}},
        "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    spec = SpecCluster(workers=workers, scheduler=scheduler)
    settings = Settings(stac_api_url=site.stac_url, cache_dir=cache)
    start, end = period(site)
    request = BatchRequest(
        start=start,
        end=end,
        method="model",
        options=ReconstructOptions(checkpoint=checkpoint, device="cpu"),
        every_days=7,
        curve_every_days=7,
    )
    with Cluster(Client(spec, set_as_default=False), local=spec) as cluster:
        assert cluster.info().gpus == 1.0 and cluster.resources_for("model") == {"GPU": 1.0}
        rows = run_batch(
            list_fields(fields), request, tmp_path / "out", cluster=cluster, settings=settings
        )
    inference.loaded_checkpoint.cache_clear()
    assert [r.status for r in rows] == ["ok"] * 3, [r.error for r in rows]
    assert len(where["fetch"]) == 3
    assert where["reconstruct"] == ["gpu"] * 3
    assert where["load"] == ["gpu"]  # once for the three fields (and the curves)
    # Each field's row says how the model did on the field's own hidden clear pixels, as the
    # Run measured it, and that it was not trained there (this checkpoint was trained nowhere).
    for row in rows:
        assert row.model_trained_here == 0 and row.record()["model_trained_here"] == "0"
        assert row.model_vs_baseline is not None and 0.3 < row.model_vs_baseline < 5
        written = float(row.record()["model_vs_baseline"])
        assert written == pytest.approx(row.model_vs_baseline, abs=1e-3)
        # and it survives in the marker a re-run reads
        marker = json.loads((tmp_path / "out" / row.field_id / MARKER_FILE).read_text())
        assert marker["row"]["model_vs_baseline"] == row.model_vs_baseline
        # and in NDVI on the curve's points (the cube has red and NIR)
        assert row.model_ndvi_vs_baseline is not None and 0.3 < row.model_ndvi_vs_baseline < 5
        assert marker["row"]["model_ndvi_vs_baseline"] == row.model_ndvi_vs_baseline
    # the worker (in this process) gave the model's freed memory back once idle
    deadline = time.monotonic() + 10
    while distributed.idle_trims == trims and time.monotonic() < deadline:
        time.sleep(0.05)
    assert distributed.idle_trims > trims
    marker = json.loads((tmp_path / "out" / rows[0].field_id / MARKER_FILE).read_text())
    assert marker["request"]["method"] == "model"
    assert marker["request"]["options"]["checkpoint"] == str(checkpoint)


@pytest.mark.slow
def test_the_command_line_runs_on_worker_processes_by_default(site, first_run, tmp_path):
    """A plain ``python -m core batch`` starts a LocalCluster of processes (cube cache hits)."""
    fields, _out, cache, _ = first_run
    env = {
        **os.environ,
        "STAC_API_URL": site.stac_url,
        "FIELDFLOW_CACHE_DIR": str(cache),
    }
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            *batch_args(fields, tmp_path / "out", site, local_mode="processes"),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "on tcp://127.0.0.1:" in done.stdout  # worker processes talk over TCP
    assert "note:" not in done.stderr  # no fallback to threads was needed
    assert done.stdout.count(": ok in ") == 3


@pytest.mark.slow
def test_ctrl_c_on_a_batch_of_worker_processes_is_one_line(site, first_run, tmp_path) -> None:
    """Ctrl-C reaches the terminal's whole process group: the worker processes each printed
    their own KeyboardInterrupt traceback before the command's line (review 13, 4 stops of 9).
    They ignore it now; the command stops them."""
    fields, _out, _cache, _ = first_run
    env = {**os.environ, "STAC_API_URL": site.stac_url, "FIELDFLOW_CACHE_DIR": str(tmp_path)}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    site.cog_server.faults.delay_next(200, 0.2, prefix="/sentinel2-l2/")  # fetches under way
    args = batch_args(fields, tmp_path / "out", site, local_mode="processes")
    command = subprocess.Popen(
        [sys.executable, "-m", "core", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's job
    )
    try:
        assert command.stdout is not None
        assert command.stdout.readline().startswith("Batch of 3 field(s)")  # workers up
        until(lambda: len(site.cog_server.requests) > 5, 60.0)  # reading imagery
        os.killpg(command.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        _, errors = command.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command.pid, signal.SIGKILL)
    site.cog_server.faults.clear()
    assert command.returncode == 130, errors
    assert errors.strip().splitlines() == ["error: interrupted; nothing partial was kept."]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_a_separately_started_cluster_runs_the_model_on_its_gpu_worker(site, first_run, tmp_path):
    """The compose topology without Docker: ``dask scheduler``, a CPU ``dask worker`` and one
    started with ``--resources GPU=1``; ``python -m core batch --scheduler`` sends the model's
    reconstructions to the GPU worker, which loads the checkpoint once for the three fields."""
    from distributed import Client

    def model_loads() -> dict[str, int]:
        """On a worker: how often it loaded a checkpoint, and how often it reused it (a local
        function, so it travels by value: the workers cannot import this test module)."""
        from core.model.inference import loaded_checkpoint

        info = loaded_checkpoint.cache_info()
        return {"loads": info.misses, "reuses": info.hits}

    fields, _out, cache, _ = first_run
    torch.manual_seed(0)
    config = ModelConfig(
        width=16, depth=1, heads=2, flow_hidden=32, flow_layers=1, tile=32, tile_overlap=8
    )
    checkpoint = save_checkpoint(Checkpoint(model=FieldFlowNet(config)), tmp_path / "tiny.pt")
    env = {**os.environ, "STAC_API_URL": site.stac_url, "FIELDFLOW_CACHE_DIR": str(cache)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1"]
        for name, extra in (("cpu", []), ("gpu", ["--resources", "GPU=1"])):
            started.append(
                subprocess.Popen(
                    [*worker, "--name", name, *extra],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            args = batch_args(fields, tmp_path / "out", site)
            args[args.index("--scheduler") + 1] = address
            args[args.index("--method") + 1] = "model"
            args += ["--checkpoint", str(checkpoint), "--device", "cpu"]
            done = subprocess.run(
                [sys.executable, "-m", "core", *args],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"on {address}: 2 workers, 2 threads, 1 GPU" in done.stdout
            assert done.stdout.count(": ok in ") == 3
            names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
            loads = {names[a]: n for a, n in client.run(model_loads).items()}
        assert loads["cpu"] == {"loads": 0, "reuses": 0}
        assert loads["gpu"]["loads"] == 1 and loads["gpu"]["reuses"] >= 2
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            process.wait(timeout=30)


def test_a_malformed_scheduler_address_is_one_error_line_at_once(tmp_path) -> None:
    """Refused before the fields file is even read (it does not exist here), with no client
    left behind to print a TimeoutError from its clean-up 10 s later."""
    args = ["batch", "--fields", str(tmp_path / "none.geojson"), "--start", "2023-05-01"]
    args += ["--end", "2023-05-10", "--out", str(tmp_path / "out"), "--method", "linear"]
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "core", *args, "--scheduler", "notanaddress"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --scheduler is 'notanaddress', which is not a Dask scheduler address (it has no "
        ":PORT): give it as tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786, the address 'dask "
        "scheduler' prints), tls://HOST:PORT or HOST:PORT, or 'local' for a local cluster on "
        "this machine."
    ]


def test_an_upload_batch_stopped_midway_keeps_the_fields_done_and_resumes(site, tmp_path) -> None:
    """The page's "Process all fields" (core.batch.run_upload_batch): a stop raised by its
    progress after the first field ends the batch; what it finished is read back (the rest
    "not done", left out of the ZIP), and the same file asked again does only the rest."""
    import zipfile

    from core.batch import (
        LISTING_STAGE,
        NOT_DONE,
        OK,
        SKIPPED,
        UPLOAD_STAGE,
        run_upload_batch,
        upload_batch_so_far,
        upload_folder,
    )
    from core.jobs import JobCancelled

    data = write_fields(tmp_path / "farm.gpkg", strips(site), list(NAMES), list(IDS)).read_bytes()
    start, end = period(site)
    request = BatchRequest(start=start, end=end, method="linear", every_days=7)
    settings = Settings(stac_api_url=site.stac_url, cache_dir=tmp_path / "cache")
    told: list[tuple[str, int, int]] = []

    def stop_after_one(stage: str, done: int, total: int) -> None:
        told.append((stage, done, total))
        if stage == UPLOAD_STAGE and done == 1:
            raise JobCancelled()

    site.reset()
    with pytest.raises(JobCancelled):
        run_upload_batch(data, "farm.gpkg", request, settings=settings, progress=stop_after_one)
    listing = [(LISTING_STAGE, n, 3) for n in range(4)]
    assert told == [*listing, (UPLOAD_STAGE, 0, 3), (UPLOAD_STAGE, 1, 3)]
    results = upload_folder(settings.cache_dir, data, request) / "results"
    finished = {p.parent.name for p in results.glob(f"*/{MARKER_FILE}")}
    assert len(finished) >= 1  # the one reported; the other thread's may have ended too

    so_far = upload_batch_so_far(data, "farm.gpkg", request, settings=settings)
    assert so_far.stopped and [r.name for r in so_far.rows] == list(NAMES)
    assert {r.field_id for r in so_far.rows if r.status == SKIPPED} == finished
    assert so_far.count(NOT_DONE) == 3 - len(finished)
    with zipfile.ZipFile(io.BytesIO(so_far.archive)) as archive:
        folders = {name.split("/")[0] for name in archive.namelist() if "/" in name}
    assert folders == finished

    told.clear()
    done = run_upload_batch(
        data, "farm.gpkg", request, settings=settings, progress=lambda *t: told.append(t)
    )
    assert told[-1] == (UPLOAD_STAGE, 3, 3)
    assert [row.name for row in done.rows] == list(NAMES)  # folders named by the names
    statuses = {row.field_id: row.status for row in done.rows}
    assert all(statuses[f] == SKIPPED for f in finished)
    assert all(status == OK for f, status in statuses.items() if f not in finished)
    assert done.done == 3 and not done.stopped


def test_an_upload_batch_reports_fields_only_not_their_inner_steps(site, tmp_path) -> None:
    """Fields run two at a time: their own steps (the model's tuning to each field) must not
    reach the job's bar, which jumped between fields (browser review), nor can a stop raised
    there make every worker log a failed task. Only the features checked and the count of
    fields done are told."""
    from core.batch import LISTING_STAGE, UPLOAD_STAGE, run_upload_batch
    from core.progress import listening

    data = write_fields(tmp_path / "farm.gpkg", strips(site), list(NAMES), list(IDS)).read_bytes()
    start, end = period(site)
    shipped = REPO_ROOT / "assets" / "model.pt"
    options = ReconstructOptions(samples=1, adapt_steps=3, checkpoint=shipped)
    request = BatchRequest(start=start, end=end, method="model", options=options, every_days=7)
    settings = Settings(stac_api_url=site.stac_url, cache_dir=tmp_path / "cache")
    told: list[tuple[str, int, int]] = []
    with listening(lambda *beat: told.append(beat)):  # as a job of the app listens
        done = run_upload_batch(
            data,
            "farm.gpkg",
            request,
            settings=settings,
            progress=lambda *t: told.append(t),
            only={0, 1},
        )
    assert [r.status for r in done.rows] == ["ok", "ok"] and done.left_out == (NAMES[2],)
    listing = [(LISTING_STAGE, n, 3) for n in range(4)]  # every feature is checked
    assert told == [*listing, *((UPLOAD_STAGE, n, 2) for n in range(3))]


def test_a_model_batch_that_cannot_run_here_is_refused_before_any_fetch(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # --device cuda on a machine without a GPU, or a damaged checkpoint, failed every field
    # after downloading every field's scenes (review 5, F10). The STAC API here is a closed
    # port: a fetch would fail with another message.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("STAC_API_URL", f"http://127.0.0.1:{port}/api/stac/v1")
    monkeypatch.setenv("FIELDFLOW_RETRIES", "0")
    fields = tmp_path / "fields.geojson"
    plot = box(3.020, 51.050, 3.023, 51.052)
    fields.write_text(
        json.dumps(
            {"type": "Feature", "properties": {"name": "a"}, "geometry": plot.__geo_interface__}
        )
    )
    common = ["batch", "--fields", str(fields), "--start", "2018-05-01", "--end", "2018-06-15",
              "--workers", "1"]  # fmt: skip
    broken = tmp_path / "broken.pt"
    broken.write_bytes((REPO_ROOT / "assets" / "model.pt").read_bytes()[:1000])
    assert main([*common, "--out", str(tmp_path / "b1"), "--checkpoint", str(broken)]) == 2
    assert "Cannot read the model checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "b1" / "summary.csv").exists()
    if not torch.cuda.is_available():
        assert main([*common, "--out", str(tmp_path / "b2"), "--device", "cuda"]) == 2
        assert "no CUDA GPU is visible here" in capsys.readouterr().err


def test_curves_shorter_than_the_period_are_said(site, tmp_path: Path, monkeypatch) -> None:
    # A period starting before the first acquisition: each curve starts at that acquisition,
    # and the batch said nothing of it where ndvi says it (review 5, F13).
    fields = write_fields(tmp_path / "f.gpkg", strips(site)[:1], ["West"], ["W1"])
    start, end = period(site)
    earlier = str(np.datetime64(start, "D") - np.timedelta64(3, "D"))
    monkeypatch.setenv("STAC_API_URL", site.stac_url)
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    site.reset()
    args = batch_args(fields, tmp_path / "out", site)
    args[args.index(start)] = earlier
    code, printed = run_cli(args)
    assert code == 0, printed
    assert (
        f"note: 1 field(s)' curves cover less than the period asked for ({earlier} to {end}): "
        f"W1 ({start} to {end})."
    ) in printed


def test_model_options_given_to_a_baseline_batch_are_said_to_change_nothing(
    site, tmp_path: Path, monkeypatch, capsys
) -> None:
    # Review 20: reconstruct and ndvi named them in a note, batch ran without a word (its
    # README said "as its note says").
    fields = write_fields(tmp_path / "f.gpkg", strips(site)[:1], ["West"], ["W1"])
    monkeypatch.setenv("STAC_API_URL", site.stac_url)
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    site.reset()
    args = [*batch_args(fields, tmp_path / "out", site), "--samples", "8", "--adapt-steps", "5"]
    code, printed = run_cli(args)
    assert code == 0, printed
    err = capsys.readouterr().err
    assert (
        "note: --samples, --adapt-steps are options of the model; the linear method ignores them."
    ) in err, err
    done = json.loads((tmp_path / "out" / "W1" / "done.json").read_text())
    assert done["request"]["options"]["samples"] == 1


def test_two_upload_batches_at_once_run_one_after_the_other_and_leave_dask_as_it_was(
    site, tmp_path
) -> None:
    """Two users' "Process all" at once in the app's process: each batch runs a Dask client
    there, which sets Dask's global configuration around its calls; interleaved, the two left
    ``scheduler="dask.distributed"`` set with no client behind it, and every later Dask
    computation in the process failed ("no Client active": seen in this project's tests). The
    second now waits for the first (saying so on its bar)."""
    import threading

    import dask

    from core.batch import run_upload_batch

    start, end = period(site)
    request = BatchRequest(start=start, end=end, method="linear", every_days=7)
    settings = Settings(stac_api_url=site.stac_url, cache_dir=tmp_path / "cache")
    files = [
        write_fields(tmp_path / f"farm{i}.gpkg", strips(site)[i:], list(NAMES[i:]), list(IDS[i:]))
        for i in (0, 1)
    ]
    before = dask.config.get("scheduler", None)
    outcomes: dict[int, object] = {}

    def batch(i: int) -> None:
        outcomes[i] = run_upload_batch(
            files[i].read_bytes(), files[i].name, request, settings=settings,
            progress=lambda *_: None,
        )  # fmt: skip

    threads = [threading.Thread(target=batch, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert set(outcomes) == {0, 1}
    assert all(row.status == "ok" for i in (0, 1) for row in outcomes[i].rows[: 2 - i])
    assert dask.config.get("scheduler", None) == before
    # Dask computations in the process still work.
    assert int(dask.array.ones(4, chunks=2).sum().compute()) == 4
