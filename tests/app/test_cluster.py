"""With DASK_SCHEDULER_ADDRESS set, Run reconstructs on that Dask cluster (a real one here)."""

from __future__ import annotations

import pytest
from distributed import LocalCluster

from tests.app.test_page import OpenPage, button, no_exceptions, press_run, state, texts


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
