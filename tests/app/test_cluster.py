"""With DASK_SCHEDULER_ADDRESS set, Run reconstructs on that Dask cluster (a real one here)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from distributed import LocalCluster

from tests.app.test_page import OpenPage, button, no_exceptions, press_run, state, texts
from tests.support.dask_processes import DaskProcesses
from tests.support.waiting import until


@pytest.fixture
def scheduler():
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        yield cluster


def test_run_reconstructs_on_the_cluster_named_by_the_environment(
    open_page: OpenPage, scheduler: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", scheduler.scheduler_address)
    page = open_page()
    button(page, "Demo field").click().run()
    # Routing is what is tested here; untuned, the Run stays well inside the page's time-out on
    # a busy machine (tuning itself: tests/unit/test_model_inference.py and the demo Run of
    # tests/app/test_page.py, which keeps the default).
    page.number_input(key="adapt_steps").set_value(0).run()
    press_run(page)
    no_exceptions(page)
    assert not page.error, texts(page, "error")
    assert state(page).result is not None
    assert state(page).result.request.options.adapt_steps == 0
    finished = {
        str(key)
        for key, _start, finish, *_ in scheduler.scheduler.transition_log
        if finish == "memory"
    }
    assert sum(key.startswith("fieldflow-reconstruct-") for key in finished) >= 2, finished


def test_an_unreachable_scheduler_is_a_clear_message(
    open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:9")
    page = open_page()
    button(page, "Demo field").click().run()
    press_run(page)
    no_exceptions(page)
    assert any("Dask scheduler" in t for t in texts(page, "error")), texts(page, "error")
    assert state(page).result is None


def test_a_model_for_the_region_is_trained_on_the_cluster(
    open_page: OpenPage,
    scheduler: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path,
) -> None:
    """With a cluster, the region button's training runs on one of its workers, as Runs do
    (the models folder is the same folder for both here, as docker-compose.yml mounts it)."""
    from app import services
    from core.model.checkpoint import load_checkpoint

    models = tmp_path / "models"
    monkeypatch.setenv("FIELDFLOW_MODELS_DIR", str(models))
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", scheduler.scheduler_address)
    page = open_page()
    button(page, "Demo field").click().run()
    page.selectbox(key="method").set_value("linear").run()
    press_run(page)
    no_exceptions(page)
    assert any(
        f"It trains on a worker of the Dask cluster at {scheduler.scheduler_address}" in t
        for t in texts(page, "markdown")
    )
    page.text_input(key="tune_name").set_value("on-the-cluster")
    page.number_input(key="tune_steps").set_value(3)
    button(page, "Train a model for this region").click().run()
    assert services.jobs().job(state(page).tuning).wait(300)
    page.run()
    no_exceptions(page)
    (said,) = [t for t in texts(page, "success") if t.startswith("Saved the model")]
    assert " on the cluster's worker " in said, said
    assert load_checkpoint(models / "on-the-cluster.pt").record["steps"] == 3
    finished = {
        str(key)
        for key, _start, finish, *_ in scheduler.scheduler.transition_log
        if finish == "memory"
    }
    assert any(key.startswith("fieldflow-tuning-") for key in finished), finished


@pytest.fixture
def processes(tmp_path):
    """A scheduler and one worker started as separate processes, as on a cluster of one's own."""
    with DaskProcesses(tmp_path / "dask") as cluster:
        cluster.worker("w1")
        cluster.wait_for_workers(1)
        yield cluster


def _run_with(page, method: str) -> None:
    page.selectbox(key="method").set_value(method).run()
    press_run(page)
    no_exceptions(page)


def test_a_lost_scheduler_is_said_and_the_next_run_reconnects_once_it_is_back(
    open_page: OpenPage, processes: DaskProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review 19: the app kept the client that had closed itself after losing its scheduler;
    # every later Run of every session failed with "AttributeError ('NoneType' object has no
    # attribute 'identity')" until the app was restarted, the scheduler back or not.
    from app import services
    from core.reconstruct import reconstruct

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", processes.address)
    page = open_page()
    button(page, "Demo field").click().run()
    _run_with(page, "linear")
    assert not page.error, texts(page, "error")
    assert state(page).result is not None
    held = services.cluster(processes.address)
    assert not services.cluster_lost()

    processes.kill_scheduler()
    until(lambda: not held.connected, timeout_s=60)  # its reconnection window has passed
    assert services.cluster_lost()  # a model Run's downloads then say they are made here
    started = time.monotonic()  # the page drawn meanwhile makes its downloads here, at once
    assert services.download_reconstructor() is reconstruct
    assert time.monotonic() - started < 1.0
    # Review 21: "Query date" waited 5 s for a connection and said "Cannot reach the Dask
    # scheduler", even for a day whose frame the page held. A timeline day is shown at once,
    # another is made here.
    result = state(page).result
    for day in (result.days[1], result.first_day + dt.timedelta(days=1)):
        started = time.monotonic()
        page.date_input(key="query_date").set_value(day).run()
        no_exceptions(page)
        assert not page.error, texts(page, "error")
        assert page.metric[0].label == f"Field NDVI on {day.isoformat()}"
        assert page.metric[0].value == f"{result.curve_row(day)['ndvi']:.3f}"
        if day in result.days:
            assert time.monotonic() - started < 4.0  # the page's redraw, no connection
    assert result.first_day + dt.timedelta(days=1) not in result.days
    _run_with(page, "whittaker")  # while it is down: said in words, naming the variable
    errors = texts(page, "error")
    assert any(
        f"Cannot reach the Dask scheduler at {processes.address}" in t
        and "unset DASK_SCHEDULER_ADDRESS" in t
        for t in errors
    ), errors

    processes.start_scheduler()  # back, on the same address, with a worker
    processes.worker("w2")
    processes.wait_for_workers(1)
    _run_with(page, "whittaker")
    assert not page.error, texts(page, "error")
    assert state(page).result is not None
    assert state(page).result.request.method == "whittaker"
    assert services.cluster(processes.address).connected


def test_a_worker_that_cannot_import_fieldflow_is_named_not_called_missing(
    open_page: OpenPage, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review 19: "has no workers; start one with 'dask worker ...'" for a worker that had
    # started and stopped as it failed to import FieldFlow's code: the advice repeated it.
    with DaskProcesses(tmp_path / "dask") as cluster:
        cluster.worker("bare", fieldflow=False)
        cluster.wait_for_workers(1)  # it fails once the app registers FieldFlow's plugin
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.address)
        page = open_page()
        button(page, "Demo field").click().run()
        _run_with(page, "linear")
    errors = texts(page, "error")
    assert any("PYTHONPATH" in t and "FieldFlow" in t for t in errors), errors
    assert not any("has no workers; start one" in t for t in errors), errors
    assert state(page).result is None


def test_a_download_whose_cluster_is_lost_is_made_in_this_process(flanders_cube) -> None:
    # Review 19: a frame's GeoTIFF or the season's NetCDF, made on click on the Run's cluster,
    # gave no file and no message once the cluster was gone (its error reached the server's
    # log only). It is made here instead, the same file.
    from app import services
    from core.distributed import local_cluster
    from core.distributed import reconstructor as cluster_reconstructor
    from core.reconstruct import reconstruct

    cube = flanders_cube.isel(y=slice(0, 16), x=slice(0, 16), time_s2=slice(0, 12))
    dates = cube["time_s2"].values[[3, 4]]

    def make(on) -> bytes:
        return on(cube, dates, "linear")["s2"].values.tobytes()

    with local_cluster(1, processes=False) as lost:
        runner = cluster_reconstructor(lost)
    assert not lost.connected
    assert services.made_for_download(make, runner) == make(reconstruct)
