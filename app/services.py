"""Cached wrappers around the core calls the page makes.

* :func:`settings`: ``Settings.from_env()`` once per process.
* :func:`season`: the whole computation of a Run (:func:`core.season.compute_season`), run as
  a job of its own (:mod:`core.jobs`) that a rerun does not stop, and cached per request key
  (field outline, period, method and options, data source) for every session; the finished
  Run's panel is replayed on a cache hit, so a second Run with the same inputs shows it at
  once. The result is read-only and kept as one object
  (``st.cache_resource``), not pickled: a large field's result holds its cube (about 1 GB at
  500 px), of which ``st.cache_data`` kept a second, pickled copy and unpickled it on every
  hit. The results kept are bounded by the memory they hold (``FIELDFLOW_RESULT_CACHE_MB``,
  :class:`core.memory.MemoryBudget`; the least recently used go first) and their number. The
  fetch below it also goes through core's disk cache, so even a restarted server does not
  fetch twice.
* :func:`day_view`: one reconstructed day for the "Query date", cached per (result, day).
* :func:`model`: the model is loaded once per process.
* :func:`stac_available`: whether the STAC API answers, checked at most once a minute.
* :func:`reconstructor`: with ``DASK_SCHEDULER_ADDRESS`` set, reconstructions run on that Dask
  cluster (its GPU workers when it has some); the client is made once per process.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.config import Settings
from core.demo import DemoPreset, demo_preset, stac_reachable
from core.distributed import Cluster, connect, scheduler_address
from core.distributed import reconstructor as cluster_reconstructor
from core.errors import ClusterError
from core.jobs import Job, JobBoard, Progress, latest_per_stage
from core.memory import MIB, MemoryBudget
from core.progress import StageClock, time_left_text
from core.reconstruct import Reconstructor
from core.reconstruct import reconstruct as core_reconstruct
from core.season import (
    DayView,
    SeasonRequest,
    SeasonResult,
    compute_season,
    load_model,
)
from core.season import (
    day_view as core_day_view,
)

SEASON_CACHE_ENTRIES = 16
"""Most results kept in memory, shared by the sessions that asked for the same Run; what they
hold together is bounded by :attr:`Settings.result_cache_mb` (each holds its cube and every
picture: about 10 MB for the demo field, over 1 GB for a 500 px field)."""


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    """Process-wide settings from the environment."""
    return Settings.from_env()


@st.cache_resource(show_spinner="Loading the reconstruction model…")
def model(device: str) -> object:
    """The model, loaded once per process and device."""
    return load_model(device)


@st.cache_resource(show_spinner="Connecting to the Dask cluster…")
def cluster(address: str) -> Cluster:
    """The client of the cluster at ``address``, once per process."""
    return connect(address)


def reconstructor() -> Reconstructor:
    """Where Run reconstructs: the cluster at ``DASK_SCHEDULER_ADDRESS``, else this process.

    Raises:
        ClusterError: the scheduler is set but cannot be reached (the page shows the message).
    """
    address = scheduler_address()
    return cluster_reconstructor(cluster(address) if address else None)


def download_reconstructor() -> Reconstructor:
    """Where a download made on click reconstructs: as :func:`reconstructor` (the Run's
    cluster, whose workers hold the network tuned to the field), or in this process if that
    cluster can no longer be reached (the file is the same, made more slowly)."""
    try:
        return reconstructor()
    except ClusterError:
        return core_reconstruct


@st.cache_data(ttl=60, show_spinner=False)
def stac_available(url: str) -> bool:
    """Whether the STAC API at ``url`` answers (re-checked after a minute)."""
    return stac_reachable(url)


@st.cache_data(show_spinner=False)
def demo(cube_path: str) -> DemoPreset:
    """The demo preset (the parcel is polygonised from the cube once per process)."""
    return demo_preset(Path(cube_path))


def season(request: SeasonRequest, config: Settings) -> SeasonResult:
    """Run (or recall) a season computation, drawing its progress where it is called.

    The computation runs as a :class:`core.jobs.Job` of its own: when Streamlit stops this
    script for a rerun (the user touched a widget), the job goes on, and the next call with the
    same request (the rerun's, or another session's) watches the same job from where it is.

    Raises:
        FieldFlowError: with a message for the user; the progress box shows the failure.
    """
    runner = reconstructor()
    if request.method == "model" and scheduler_address() is None:
        model(request.options.device)
    key = request.key(config.stac_api_url)
    budget = result_budget(config.result_cache_mb)

    def compute(progress: Progress) -> SeasonResult:
        return compute_season(request, config, progress=progress, reconstructor=runner)

    if key not in budget.keys:  # not kept yet: watch the job, live
        live = st.empty()
        with live.container():
            job = _watch(jobs().join(key, compute, session_id()))
        if job.error is None:
            live.empty()  # the kept result's own panel below takes its place
    result = _season(key, compute)
    if not result.complete:  # shown, not kept: the next Run tries the missing part again
        _season.clear(key, None)
        return result
    for old_key in budget.use(key, result.nbytes):
        _season.clear(old_key, None)  # the arguments named _ are not in the key
    return result


def leave_run(key: str) -> None:
    """This session no longer waits for the Run of ``key`` (its inputs changed): the job is
    cancelled unless another session waits for it too."""
    jobs().leave(key, session_id())


@st.cache_resource(show_spinner=False)
def jobs() -> JobBoard:
    """The Runs being computed in this process, by request key."""
    return JobBoard()


def session_id() -> str:
    """This browser session's id (the watcher of the jobs it waits for)."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "bare"


@st.cache_resource(show_spinner=False)
def result_budget(limit_mb: float) -> MemoryBudget:
    """The books of the results :func:`season` keeps, once per process."""
    return MemoryBudget(limit_mb * MIB, max_entries=SEASON_CACHE_ENTRIES)


POLL_S = 0.25
"""How often the page looks at a running job. Each look draws (the same bar): Streamlit
only notices a widget change, and stops the script for its rerun, when something is drawn."""


def _watch(job: Job[SeasonResult]) -> Job[SeasonResult]:
    """Draw ``job``'s progress until it ends: a headline per stage, a bar with the time left.
    Joined midway, the stages so far are listed and the bar starts where the job is."""
    panel = st.container(border=True)
    headline = panel.empty()
    bar = panel.empty()
    steps = panel.container()
    clock = StageClock()
    stage, text, fraction, seen = "", "", 0.0, 0
    first = True
    while True:
        finished = job.wait(POLL_S)
        new = job.reports(seen)
        seen += len(new)
        # A backlog (joined midway) counts from its last report per stage: its reports came
        # over minutes, and read at once they would make the pace look instant.
        for report in latest_per_stage(new) if first else new:
            if report.stage != stage:
                stage = report.stage
                headline.markdown(f"**{stage[:1].upper()}{stage[1:]}…**")
                steps.caption(f"• {stage}")
            fraction = min(1.0, report.done / report.total) if report.total else 0.0
            left = time_left_text(clock.seconds_left(stage, report.done, report.total))
            text = f"{stage}: {report.done} of {report.total}" + (f" ({left})" if left else "")
        first = False
        if finished:
            break
        bar.progress(fraction, text=text or "starting…")
    if job.error is not None:
        headline.markdown(f"**Stopped while {stage or 'starting'}.**")
        bar.empty()
    return job


@st.cache_resource(show_spinner=False)  # bounded by result_budget
def _season(key: str, _compute: Callable[[Progress], SeasonResult]) -> SeasonResult:
    # What is drawn here is recorded and replayed on a cache hit: the finished Run's panel.
    board = jobs()
    # The job just watched (done), unless the kept result was dropped meanwhile.
    job = board.join(key, _compute, session_id(), retry_failed=False)
    job.wait(None)
    board.collect(key, job)
    result = job.outcome()  # a failure is raised, and nothing is kept
    panel = st.container(border=True)
    frames = result.frames_loaded
    panel.markdown(
        f"**Computed in {result.elapsed_s:.1f} s**: {len(result.timeline)} dates from "
        f"{frames.get('s2', 0)} Sentinel-2 and {frames.get('s1', 0)} Sentinel-1 frames "
        f"({result.source})."
    )
    for stage in dict.fromkeys(report.stage for report in job.reports()):
        panel.caption(f"• {stage}")
    return result


@st.cache_data(max_entries=64, show_spinner="Reconstructing that day…")
def day_view(result_key: str, day: dt.date, _result: SeasonResult) -> DayView:
    """One day of a result, reconstructed on demand (cached per result and day)."""
    del result_key
    return core_day_view(_result, day, reconstructor())
