"""Cached wrappers around the core calls the page makes.

* :func:`settings`: ``Settings.from_env()`` once per process.
* :func:`start_run` and :func:`watch_run`: the whole computation of a Run
  (:func:`core.season.compute_season`), run as a job of its own (:mod:`core.jobs`) that the
  page's script only looks at (so the script ends at once and the page stays live), and
  cached per request key (field outline, period, method and options, data source) for every
  session, with the panel that says how it was made: a second Run with the same inputs shows
  both at once. The result is read-only and kept as one object
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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.batch import (
    NOT_DONE,
    UPLOAD_STAGE,
    BatchRequest,
    UploadBatch,
    run_upload_batch,
    upload_batch_so_far,
    upload_folder,
)
from core.config import Settings, checkpoint_version
from core.demo import DemoPreset, demo_preset, stac_reachable
from core.distributed import SCHEDULER_ENV, Cluster, check_cluster, connect, scheduler_address
from core.distributed import reconstructor as cluster_reconstructor
from core.errors import ClusterError, FieldFlowError, InputError
from core.fetch import PERIOD_MARGIN_DAYS
from core.jobs import Job, JobBoard, Progress, Report, seconds_left, stage_spans
from core.memory import MIB, MemoryBudget
from core.model.catalog import ModelChoice, describe_model, model_files
from core.model.checkpoint import load_checkpoint
from core.model.tuning import STAGES as TUNING_STAGES
from core.model.tuning import RegionTuning, TunedModel, check_cube, tune_for_region
from core.progress import duration_text, time_left_text
from core.reconstruct import Reconstructor
from core.reconstruct import reconstruct as core_reconstruct
from core.season import (
    DayView,
    PlannedStage,
    SeasonRequest,
    SeasonResult,
    compute_season,
    load_model,
    run_plan,
    stages_to_come,
)
from core.season import (
    day_view as core_day_view,
)

PROGRESS_PANEL_PX = 290
"""Height of a running Run's panel: its headline, bar and up to :data:`SHOWN_STAGES` stage
lines, what is to come and the time so far, on a laptop-wide page."""
PROGRESS_KEY_PREFIX = "progress_"
"""A job's progress panel has a key that starts so (the page reads each new stage out)."""
TUNING_PREFIX = "tune:"
"""Job keys of fine-tunings begin so (Runs' are request keys)."""
BATCH_PREFIX = "batch:"
"""Job keys of batches of an uploaded fields file begin so."""
SHOWN_STAGES = 4
"""Stage lines a running Run's panel shows; earlier ones are summed in one."""
SEASON_CACHE_ENTRIES = 16
"""Most results kept in memory, shared by the sessions that asked for the same Run; what they
hold together is bounded by :attr:`Settings.result_cache_mb` (each holds its cube and every
picture: about 10 MB for the demo field, over 1 GB for a 500 px field)."""


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    """Process-wide settings from the environment."""
    return Settings.from_env()


@st.cache_resource(show_spinner="Loading the reconstruction model…")
def model(device: str, checkpoint: Path, version: str | None) -> object:
    """The model of ``checkpoint``, loaded once per process, device and ``version`` of the file
    (a checkpoint retrained in place is loaded anew)."""
    return load_model(device, checkpoint)


@st.cache_data(show_spinner=False, max_entries=64)
def _described_model(path: str, origin: str, version: str | None) -> ModelChoice:
    """A checkpoint's description, read once per ``version`` of the file."""
    return describe_model(Path(path), origin)


def model_choices(settings: Settings) -> list[ModelChoice]:
    """The models on offer (core.model.catalog), listed anew at every rerun so that a model
    saved into the models folder while the app runs is offered at once; each file is read once
    per version."""
    return [
        _described_model(str(path), origin, checkpoint_version(path))
        for path, origin in model_files(settings)
    ]


@st.cache_resource(show_spinner="Connecting to the Dask cluster…")
def _cluster(address: str) -> Cluster:
    """The client of the cluster at ``address`` (``DASK_SCHEDULER_ADDRESS``), once per process
    while it stays connected, checked once: workers and scheduler that cannot run FieldFlow's
    code are refused in words (core.distributed.check_cluster; review 19: "no workers, start
    one" for a worker that had started and failed to import the code)."""
    made = connect(environ={SCHEDULER_ENV: address})  # its messages name the variable
    try:
        check_cluster(made, made.info())
    except BaseException:
        made.close()
        raise
    return made


def cluster(address: str) -> Cluster:
    """:func:`_cluster`, connected anew when the kept client has lost its scheduler.

    A client that loses its scheduler tries to reconnect for a few seconds, then closes
    itself for good; kept, it failed every later Run of every session with an AttributeError
    until the app was restarted, the scheduler back or not (review 19).

    Raises:
        ClusterError: the scheduler cannot be reached, or cannot run FieldFlow's code.
    """
    held = _cluster(address)
    if not held.connected:
        _cluster.clear()  # one scheduler per process: DASK_SCHEDULER_ADDRESS
        _connected().pop(address, None)
        held.close()
        held = _cluster(address)
    _connected()[address] = held
    return held


@st.cache_resource(show_spinner=False)
def _connected() -> dict[str, Cluster]:
    """The clusters :func:`cluster` has handed out, by address: for a caller that must not
    connect (a page drawn while the scheduler is down would wait for each connection's
    time-out)."""
    return {}


def reconstructor() -> Reconstructor:
    """Where Run reconstructs: the cluster at ``DASK_SCHEDULER_ADDRESS``, else this process.

    Raises:
        ClusterError: the scheduler is set but cannot be reached (the page shows the message).
    """
    address = scheduler_address()
    return cluster_reconstructor(cluster(address) if address else None)


def download_reconstructor() -> Reconstructor:
    """Where a download made on click reconstructs, taken when the page is drawn: the Run's
    cluster (whose workers hold the network tuned to the field) while its client is connected,
    else this process (the same estimate, made more slowly, with the model tuned to the field
    again; a sampled band from other random draws). Never a new connection on a
    redraw: a lost scheduler would hold every redraw for the connection's time-out."""
    address = scheduler_address()
    held = _connected().get(address) if address else None  # kept since the Run, if any
    return cluster_reconstructor(held) if held and held.connected else core_reconstruct


def cluster_lost() -> bool:
    """Whether the app computes on a Dask cluster (``DASK_SCHEDULER_ADDRESS``) whose client is
    not connected now: files made on click are then made in this process
    (:func:`download_reconstructor`). Never connects."""
    address = scheduler_address()
    if not address:
        return False
    held = _connected().get(address)
    return held is None or not held.connected


T = TypeVar("T")


def made_for_download(make: Callable[[Reconstructor], T], runner: Reconstructor) -> T:
    """``make(runner)``, or ``make`` in this process where ``runner``'s cluster is lost while it
    works. Before review 19 such a click gave no file and no message (the error went to the
    server's log only), for as long as the app ran; a day asked for in "Query date" waited 5 s
    for a connection and said "Cannot reach the Dask scheduler", even a day whose frame the
    page held (review 21)."""
    try:
        return make(runner)
    except ClusterError:
        if runner is core_reconstruct:
            raise
        return make(core_reconstruct)


@st.cache_data(ttl=60, show_spinner=False)
def stac_available(url: str) -> bool:
    """Whether the STAC API at ``url`` answers (re-checked after a minute)."""
    return stac_reachable(url)


@st.cache_data(show_spinner=False)
def demo(cube_path: str) -> DemoPreset:
    """The demo preset (the parcel is polygonised from the cube once per process)."""
    return demo_preset(Path(cube_path))


@dataclass(frozen=True)
class RunPanel:
    """What the page says of a Run once it has ended: a headline and the stages it went
    through."""

    headline: str
    stages: tuple[str, ...]
    stopped: bool = False
    """The Run was stopped before its end (its headline says while doing what)."""


@dataclass(frozen=True)
class Finished:
    """A Run's result and the panel that tells how it was made."""

    result: SeasonResult
    panel: RunPanel


class RunStopped(Exception):
    """A Run's computation failed: ``cause`` says why (a FieldFlowError has the user's
    message), ``panel`` where it stopped."""

    def __init__(self, cause: BaseException, panel: RunPanel) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.panel = panel


def start_run(request: SeasonRequest, config: Settings) -> Finished | None:
    """Start (or join) the Run of ``request``: its result at once when it is kept, else None
    and the Run computes as a :class:`core.jobs.Job` of its own, to be followed with
    :func:`watch_run`. A Run that failed unwatched before is started again (the user may be
    asking anew because the network is back).

    Raises:
        RunStopped: a kept result's collection failed (not expected).
        ClusterError: the Dask scheduler is set but cannot be reached.
    """
    runner = reconstructor()
    if request.method == "model" and scheduler_address() is None:
        checkpoint = request.options.checkpoint or config.checkpoint
        model(request.options.device, checkpoint, checkpoint_version(checkpoint))
    key = request.key(config.stac_api_url)
    compute = _computation(request, config, runner)
    if key in result_budget(config.result_cache_mb).keys:
        finished = _keep(key, compute, config)  # its time is an earlier Run's
        again = replace(finished.panel, headline=_headline(finished.result, again=True))
        return as_asked(replace(finished, panel=again), request)
    jobs().join(key, compute, session_id())
    return None


def watch_run(request: SeasonRequest, config: Settings) -> Finished | None:
    """Draw the progress of ``request``'s Run here (a headline per stage, a bar with the time
    left); its result once it has ended, None while it runs. Call it again to follow it: the
    page does so from a fragment that reruns on a timer, so the page's script is not held while
    the Run computes and the map and inputs stay live.

    Raises:
        RunStopped: the Run failed; its cause and the stage it stopped in.
    """
    key = request.key(config.stac_api_url)
    runner = reconstructor()
    compute = _computation(request, config, runner)
    if key in result_budget(config.result_cache_mb).keys:
        # Kept already: another session waiting for the same Run collected it first. Joining
        # would find no job and compute the whole Run again (review 12).
        return as_asked(_keep(key, compute, config), request)
    job = jobs().join(key, compute, session_id(), retry_failed=False)
    if not job.done:
        _draw_progress(job, run_plan(request, in_process=runner is core_reconstruct))
        return None
    return as_asked(_keep(key, compute, config), request)


def as_asked(finished: Finished, request: SeasonRequest) -> Finished:
    """``finished`` as this session asked for it. Sessions asking for the same outline, period
    and settings share one Run and its kept result (the request key leaves the field's name
    out), whose request is the first asker's: each session sees, and names its downloads
    after, its own field's name, not another user's (review 12)."""
    if finished.result.request.field.name == request.field.name:  # the rest is in the key
        return finished
    return replace(finished, result=replace(finished.result, request=request))


def _computation(
    request: SeasonRequest, config: Settings, runner: Reconstructor
) -> Callable[[Progress], SeasonResult]:
    def compute(progress: Progress) -> SeasonResult:
        return compute_season(request, config, progress=progress, reconstructor=runner)

    return compute


def _keep(key: str, compute: Callable[[Progress], SeasonResult], config: Settings) -> Finished:
    """The ended Run of ``key``, kept for every session while the memory budget allows."""
    finished = _season(key, compute)
    if not finished.result.complete:  # shown, not kept: the next Run tries the missing part
        _season.clear(key, None)
        return finished
    budget = result_budget(config.result_cache_mb)
    for old_key in budget.use(key, finished.result.nbytes):
        _season.clear(old_key, None)  # the arguments named _ are not in the key
    return finished


def leave_run(key: str) -> None:
    """This session no longer waits for the Run of ``key`` (its inputs changed): the job is
    cancelled unless another session waits for it too."""
    jobs().leave(key, session_id())


def start_tuning(tuning: RegionTuning, result: SeasonResult, site: str) -> str:
    """Start fine-tuning ``tuning.base`` on ``result``'s cube (core.model.tuning) as a job of
    its own; its key, to follow with :func:`watch_tuning`.

    Raises:
        InputError: a model is being trained on this server already (by any session), or the
            Run's cube is too short or too small to train on (core.model.tuning.check_cube).
        ClusterError: ``DASK_SCHEDULER_ADDRESS`` is set (the training then runs on a worker
            of that cluster, as Runs do) but the scheduler cannot be reached.
    """
    key = f"{TUNING_PREFIX}{tuning.out}"
    training = [k for k in jobs().running() if k.startswith(TUNING_PREFIX)]
    if training:  # each takes every core: two would each take twice as long, Runs longer still
        other = Path(training[0].removeprefix(TUNING_PREFIX)).stem
        raise InputError(
            f"The model {other!r} is being trained on this server; start this one when it has "
            "ended (it takes every core while it lasts)."
        )
    cube = result.cube
    check_cube(cube, load_checkpoint(tuning.base).model.config.patch)
    address = scheduler_address()
    on = cluster(address) if address else None  # where Runs go, the training goes too

    def compute(progress: Progress) -> TunedModel:
        return tune_for_region(tuning, cube, progress, site=site, cluster=on)

    jobs().join(key, compute, session_id())
    return key


def watch_tuning(key: str) -> TunedModel | None:
    """Draw the fine-tuning's progress here; the new model once it has ended (None while it
    runs).

    Raises:
        FieldFlowError: the training refused the cube or failed (its message), or there is no
            such job any more.
    """
    return _watch(
        key,
        tuple(PlannedStage(stage, label) for stage, label in TUNING_STAGES),
        what="The training",
        gone="The training is no longer running (was the app restarted?); nothing was saved. "
        "Start it again.",
    )


def stop_tuning(key: str) -> bool:
    """Stop this session's fine-tuning (the process removes what it was writing); whether it
    was running."""
    return jobs().leave(key, session_id())


def start_batch(
    data: bytes, name: str, request: BatchRequest, config: Settings, only: frozenset[int]
) -> str:
    """Start the fields of an uploaded file at ``only``'s feature positions through the batch
    (core.batch.run_upload_batch) as a job of its own; its key, to follow with
    :func:`watch_batch`. The same file and settings asked again join the running job, or
    resume where an earlier one stopped."""
    key = f"{BATCH_PREFIX}{upload_folder(config.cache_dir, data, request).name}"

    def compute(progress: Progress) -> UploadBatch:
        return run_upload_batch(data, name, request, settings=config, progress=progress, only=only)

    jobs().join(key, compute, session_id())
    return key


def watch_batch(
    key: str, data: bytes, name: str, request: BatchRequest, config: Settings, only: frozenset[int]
) -> UploadBatch | None:
    """Draw the batch's progress here; its outcome once it has ended (None while it runs),
    named after this session's upload (``name``).

    Sessions that batch the same file with the same settings share one job (its key is the
    file and the request), made with the first one's file name: each sees its own. Whichever
    page sees the end first collects the job; the others read what it finished back from its
    folder (review 12: they saw the first user's file name, and the others were told the
    batch was gone, "was the app restarted?").

    Raises:
        FieldFlowError: the file could not be read (its message).
    """
    job = jobs().job(key)
    if job is None:  # collected by another session's page, or the app restarted
        done = upload_batch_so_far(data, name, request, settings=config, only=only)
        return replace(done, stopped=done.count(NOT_DONE) > 0)
    if not job.done:
        _draw_progress(job, (PlannedStage(UPLOAD_STAGE, UPLOAD_STAGE),), what="The batch")
        return None
    jobs().collect(key, job)
    return replace(job.outcome(), name=name)


def _watch(key: str, plan: tuple[PlannedStage, ...], *, what: str, gone: str) -> Any:
    """A job of this page's own (a training, a batch): its progress drawn here while it runs
    (None), its outcome once it has ended (raised, if it failed).

    Raises:
        FieldFlowError: ``gone``, when there is no such job any more.
    """
    job = jobs().job(key)
    if job is None:
        raise FieldFlowError(gone)
    if not job.done:
        _draw_progress(job, plan, what=what)
        return None
    jobs().collect(key, job)
    return job.outcome()


def stop_batch(
    key: str, data: bytes, name: str, request: BatchRequest, config: Settings, only: frozenset[int]
) -> UploadBatch:
    """Stop this session's batch; what it had finished (the fields done so far stay done)."""
    jobs().leave(key, session_id())
    return upload_batch_so_far(data, name, request, settings=config, only=only)


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
    """The books of the results :func:`start_run` and :func:`watch_run` keep, once per process."""
    return MemoryBudget(limit_mb * MIB, max_entries=SEASON_CACHE_ENTRIES)


def _draw_progress(job: Job, plan: tuple[PlannedStage, ...], what: str = "The Run") -> None:
    """The job's progress as it stands: the current stage as the headline, a bar with its
    share done and the time left in it, the stages so far with the time each took, the
    stages of ``plan`` still to come, and the job's time so far (``what``: its name)."""
    reports = job.reports()
    # A fixed height: the panel sits above the map, and a panel that grew line by line moved
    # the map under a user drawing on it during the Run.
    # Keyed, so that the page's script reads each new stage out (app.widgets.screen).
    key = PROGRESS_KEY_PREFIX + re.sub(r"\W+", "_", what.lower()).strip("_")
    panel = st.container(border=True, height=PROGRESS_PANEL_PX, key=key)
    if not reports:
        panel.markdown("**Starting…**")
        panel.progress(0.0, text="starting…")
        return
    now = time.monotonic()
    last = reports[-1]
    panel.markdown(f"**{last.stage[:1].upper()}{last.stage[1:]}…**")
    fraction = min(1.0, last.done / last.total) if last.total > 0 else 0.0
    left = time_left_text(seconds_left(reports, now))
    count = f"{last.done} of {last.total}" if last.total > 1 else "under way"
    panel.progress(fraction, text=count + (f" · this stage: {left}" if left else ""))
    lines = list(_stage_lines(reports, now))
    if len(lines) > SHOWN_STAGES:  # the earliest done ones in one line
        spans = stage_spans(reports, now)[: len(lines) - SHOWN_STAGES + 1]
        took = duration_text(sum(span.seconds for span in spans))
        lines = [f"✓ {len(spans)} earlier stages ({took})", *lines[len(spans) :]]
    to_come = stages_to_come(plan, last.stage)
    if to_come:
        lines.append("Then: " + "; ".join(to_come) + ".")
    lines.append(f"{what} so far: {duration_text(now - job.started_at)}.")
    panel.caption("  \n".join(lines))


_MARK = {"running": "▸", "done": "✓", "stopped": "✗"}
_AFTER = {"running": " so far", "done": "", "stopped": ", stopped there"}


def _stage_lines(reports: list[Report], now: float, run: str = "running") -> tuple[str, ...]:
    """A line per stage, with the time spent in it: ✓ for one done; the last one ▸ while the
    Run is ``"running"``, ✓ once it is ``"done"``, ✗ when it ``"stopped"`` there (``now``:
    when the job ended, for an ended one)."""
    return tuple(
        f"{_MARK[run] if span.current else '✓'} {span.stage} "
        f"({duration_text(span.seconds)}{_AFTER[run] if span.current else ''})"
        for span in stage_spans(reports, now)
    )


@st.cache_resource(show_spinner=False)  # bounded by result_budget
def _season(key: str, _compute: Callable[[Progress], SeasonResult]) -> Finished:
    board = jobs()
    # The job just watched (done), unless the kept result was dropped meanwhile.
    job = board.join(key, _compute, session_id(), retry_failed=False)
    job.wait(None)
    board.collect(key, job)
    reports = job.reports()
    ended = job.finished_at if job.finished_at is not None else time.monotonic()
    if job.error is not None:  # raised, and nothing is kept
        stage = reports[-1].stage if reports else "starting"
        stages = _stage_lines(reports, ended, "stopped")
        raise RunStopped(job.error, RunPanel(f"Stopped while {stage}.", stages, stopped=True))
    result = job.outcome()
    return Finished(result, RunPanel(_headline(result), _stage_lines(reports, ended, "done")))


def _headline(result: SeasonResult, *, again: bool = False) -> str:
    """What an ended Run made, and how long it took (``again``: shown from memory, made by an
    earlier Run)."""
    frames = result.frames_loaded
    took = (
        f"Shown again, nothing recomputed (computed earlier in {result.elapsed_s:.1f} s)"
        if again
        else f"Computed in {result.elapsed_s:.1f} s"
    )
    dates, s2, s1 = len(result.timeline), frames.get("s2", 0), frames.get("s1", 0)
    # review 30: "87 dates" was nowhere explained, and its Sentinel-2 count (with the margins)
    # differed from the summary's (the period's) without saying so
    return (
        f"{took}: {dates} date{'' if dates == 1 else 's'} on the slider (the period's "
        f"acquisitions and a date every {result.request.every_days} days), reconstructed from "
        f"{s2} Sentinel-2 and {s1} Sentinel-1 frame{'' if s1 == 1 else 's'} of the period and "
        f"the {PERIOD_MARGIN_DAYS} days either side ({result.source})."
    )


@st.cache_resource(show_spinner=False)
def gpu_here() -> bool:
    """Whether a Run asked to use cuda could: a CUDA GPU in this process, or a Dask cluster
    (whose workers may have one)."""
    from core.model.inference import cuda_visible

    return scheduler_address() is not None or cuda_visible()


@st.cache_data(max_entries=64, show_spinner="Reconstructing that day…")
def day_view(result_key: str, day: dt.date, _result: SeasonResult) -> DayView:
    """One day of a result, reconstructed on demand (cached per result and day)."""
    del result_key  # where downloads are made: the Run's cluster while connected, else here
    return made_for_download(
        lambda runner: core_day_view(_result, day, runner), download_reconstructor()
    )
