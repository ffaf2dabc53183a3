"""A model for a region, made from the app: the chosen model fine-tuned on a field's cube and
saved into the models folder, where the app offers it beside the shipped one.

It is the README's recipe for a region unlike the training sites (``python -m core train --init
MODEL --data CUBES --out MODELS/NAME.pt --steps 600 --batch-size 4``; on be-flanders-c, one
Flanders field of fine-tuning took the app's error 2-3 points nearer the shipped model's),
run as that very command in a process of its own: the app's process keeps its memory and its
threads, and stopping it is the command's SIGTERM, which removes what it was writing.

With a Dask cluster (the app's ``DASK_SCHEDULER_ADDRESS``), that process runs on one of its
workers instead of the app's host (:func:`tune_on_worker`): a GPU worker where one is offered,
as Runs' model work is. The worker reads the base model and writes the new one at the same
paths the app names, as it reads the models a Run names: the models folder must be the same
folder on the app and on every worker (the ``models`` volume of ``docker-compose.yml``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from core.config import REPO_ROOT, Settings
from core.cube import write_cube
from core.errors import ClusterError, FieldFlowError, InputError
from core.export import safe_file_stem
from core.jobs import Progress
from core.model.catalog import CHECKPOINT_SUFFIX, ModelChoice, describe_model
from core.model.training import MIN_CLEAR_FRAMES

if TYPE_CHECKING:
    from core.distributed import Cluster

LOG = logging.getLogger(__name__)

REGION_STEPS = 600
"""Fine-tuning steps by default: the README's measured recommendation (150 steps bought 40-55 %
of the gain, 1200 no more than 600)."""
REGION_BATCH = 4
MAX_STEPS = 5000
NICE = 10
"""The training's scheduling priority (``nice``): a Run on the same server takes the cores first.
At the default priority, a demo field's Run took 157 s instead of 32 s while a model trained
(median of 3; benchmarks/region_button.py --runs 3)."""
MAX_NICE = 19
LOG_EVERY = 5
"""Steps between the command's step lines, which the page's bar follows (about 3 s apart on 2
CPU cores)."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
POLL_S = 0.25
"""How often the waiting loop reports progress (a stopped job stops at its next report)."""
STOP_WAIT_S = 30.0
"""How long a stopped training may take to remove its files before it is killed."""
_STEP = re.compile(r"^step (\d+)/(\d+) ")
HERE = "this server"
PROGRESS_METADATA = "fieldflow-tuning"
"""Where a training on a worker leaves its progress in the scheduler's metadata (under its
task's key), for the app to read (:func:`_tune_on_cluster`)."""

WRITING_STAGE = "writing the field's cube for the training"
TRAINING_STAGE = "fine-tuning the model on the field"
MEASURING_STAGE = "measuring it on its calibration values"
STAGES = (
    (WRITING_STAGE, "write the field's cube"),
    (TRAINING_STAGE, "fine-tune the model"),
    (MEASURING_STAGE, "measure it on its calibration values"),
)
"""The stages a fine-tuning reports, in order, with how to name each before it starts."""


@dataclass(frozen=True)
class RegionTuning:
    """What to fine-tune, on what, into which file."""

    base: Path
    """The checkpoint fine-tuned (the model chosen when it is asked for)."""
    out: Path
    """Where the new model goes (:func:`model_target`)."""
    steps: int = REGION_STEPS
    batch_size: int = REGION_BATCH

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise InputError(f"Give 1 to {MAX_STEPS} fine-tuning steps, not {self.steps}.")
        if self.batch_size < 1:
            raise InputError(f"The batch size must be 1 or more, not {self.batch_size}.")

    def command(self, data: Path) -> list[str]:
        """The ``python -m core train`` command line, on the cubes in ``data``."""
        return [
            sys.executable,
            "-m",
            "core",
            "train",
            "--init",
            str(self.base),
            "--data",
            str(data),
            "--out",
            str(self.out),
            "--steps",
            str(self.steps),
            "--batch-size",
            str(self.batch_size),
            "--log-every",
            str(LOG_EVERY),
        ]


@dataclass(frozen=True)
class TunedModel:
    """A model made by :func:`tune_for_region`."""

    choice: ModelChoice
    """The new checkpoint, described as the app's model list describes it."""
    warnings: tuple[str, ...]
    """What the training warned of (a model erring more than interpolation, a narrow band)."""
    seconds: float
    where: str = HERE
    """Where it was trained: :data:`HERE`, or a worker of the cluster (:func:`tune_on_worker`)."""


def model_target(name: str, settings: Settings) -> Path:
    """The file a new model called ``name`` goes to in the models folder.

    Raises:
        InputError: the name is not a plain file name, or a model is already called so (a
            model is never overwritten from the app: Runs may be using it).
    """
    stem = name.strip().removesuffix(CHECKPOINT_SUFFIX)
    if not NAME_PATTERN.fullmatch(stem):
        raise InputError(
            f"{name.strip()!r} cannot name a model: use up to 64 letters, digits, '-', '_' or "
            "'.', starting with a letter or digit (e.g. flanders-2024)."
        )
    target = settings.models_dir / f"{stem}{CHECKPOINT_SUFFIX}"
    if target.exists():
        raise InputError(
            f"A model called {stem!r} is already in the models folder ({target}); choose "
            "another name (or remove that file first)."
        )
    return target


def suggested_name(field_name: str, year: int, settings: Settings) -> str:
    """A free name for a model made on the field called ``field_name`` in ``year``: e.g.
    ``north-parcel-2024`` for "North parcel", then ``north-parcel-2024-2`` where that one is
    taken."""
    stem = f"{safe_file_stem(field_name).lower().replace('_', '-')}-{year}"[:58]
    name, number = stem, 1
    while (settings.models_dir / f"{name}{CHECKPOINT_SUFFIX}").exists():
        number += 1
        name = f"{stem}-{number}"
    return name


def check_cube(cube: xr.Dataset, patch: int) -> None:
    """Refuse, in the page's words, a Run's cube the training would refuse in its own (as the
    command line's ``train`` words it) only after its process had started.

    Raises:
        InputError: fewer than :data:`MIN_CLEAR_FRAMES` acquisitions with a clear pixel, or a
            field narrower than one ``patch`` of the network: what
            core.model.training.trainable_series refuses.
    """
    valid = cube["valid"].values.astype(bool) & np.isfinite(cube["s2"].values).any(axis=1)
    clear_dates = int(valid.any(axis=(1, 2)).sum())
    if clear_dates < MIN_CLEAR_FRAMES:
        raise InputError(
            f"This Run has {clear_dates} Sentinel-2 acquisition(s) with clear pixels; a model "
            f"needs at least {MIN_CLEAR_FRAMES} to learn from (it hides some and learns from the "
            "rest). Run a longer period of this field, a whole season at best, and try again."
        )
    height, width = valid.shape[1:]
    if min(height, width) < patch:
        resolution = float(cube.attrs.get("resolution_m", 10) or 10)
        raise InputError(
            f"The field's grid is {height} x {width} px; a model learns from patches of "
            f"{patch} x {patch} px, so it needs a field at least {patch * resolution:.0f} m "
            "across. Draw a larger field of the region and Run it first."
        )


def tune_for_region(
    tuning: RegionTuning,
    cube: xr.Dataset,
    progress: Progress,
    *,
    site: str | None = None,
    cluster: Cluster | None = None,
) -> TunedModel:
    """Fine-tune ``tuning.base`` on ``cube`` into ``tuning.out``; ``progress(stage, done,
    total)`` hears the steps (and stops the training by raising, as a cancelled job's does).
    ``site`` names the cube in the new model's record (default: the cube's own ``site``).
    With ``cluster``, the training runs on one of its workers (:func:`tune_on_worker`).

    Raises:
        FieldFlowError: the training refused the cube or stopped (its ``error:`` line), was
            killed (a signal: what may have caused it), or failed unexpectedly (its last line;
            the whole output is logged).
        ClusterError: the cluster has no worker, lost the training's worker, or saved the
            model where this process does not see it (the models folder is not shared).
    """
    started = time.monotonic()
    named = cube.assign_attrs(site=site or str(cube.attrs.get("site", "") or "field"))
    if cluster is None:
        where = HERE
        lines, status = _train_here(tuning, named, progress)
    else:
        lines, status, where = _tune_on_cluster(tuning, named, progress, cluster)
    failure = next((line for line in reversed(lines) if line.startswith("error: ")), None)
    if failure is not None:  # the command refused or stopped, and said why
        raise FieldFlowError(f"The fine-tuning stopped: {failure.removeprefix('error: ')}")
    if status == 0 and not tuning.out.is_file() and cluster is not None:
        raise ClusterError(
            f"The fine-tuning ended on {where} but {tuning.out} is not in this app's models "
            "folder: the worker saved it in a folder of its own. Mount the same models folder "
            "(FIELDFLOW_MODELS_DIR) on the app and on every worker (docker-compose.yml's "
            "'models' volume), then train again."
        )
    if status != 0 or not tuning.out.is_file():
        LOG.error("fine-tuning %s ended with status %s:\n%s", tuning.out, status, "\n".join(lines))
        raise FieldFlowError(_unexpected_end(status, lines))
    warned = "warning: "
    warnings = tuple(line.removeprefix(warned) for line in lines if line.startswith(warned))
    return TunedModel(
        describe_model(tuning.out, "folder"), warnings, time.monotonic() - started, where
    )


def _train_here(
    tuning: RegionTuning, cube: xr.Dataset, progress: Progress
) -> tuple[list[str], int]:
    """The training command on ``cube`` in a process of this machine: its output lines and exit
    status (:func:`_run_reporting`); the cube's file is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fieldflow-tuning-") as folder:
        progress(WRITING_STAGE, 0, 1)
        write_cube(cube, Path(folder) / f"{safe_file_stem(str(cube.attrs['site']))}.nc")
        return _run_reporting(tuning.command(Path(folder)), tuning.steps, progress)


def tune_on_worker(tuning: RegionTuning, cube: xr.Dataset) -> tuple[list[str], int, str]:
    """:func:`_train_here` as a Dask task (:func:`_tune_on_cluster`): its output lines, exit
    status and where it ran ("the cluster's worker NAME (GPU)"). Its progress goes to the
    scheduler's metadata under :data:`PROGRESS_METADATA` and the task's key; once the task is
    cancelled (the user stopped the training), its next report ends the command with SIGTERM,
    which removes what it was writing."""
    from distributed import get_client, get_worker

    from core.distributed import GPU_RESOURCE, RUNNING_STATES, TaskCancelled

    worker = get_worker()
    key = worker.get_current_task()
    client = get_client()
    said: list[tuple[str, int, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        task = worker.state.tasks.get(key)
        if task is None or task.state not in RUNNING_STATES:
            raise TaskCancelled(f"{key}: cancelled")
        if not said or said[-1] != (stage, done, total):
            said.append((stage, done, total))
            client.set_metadata([PROGRESS_METADATA, str(key)], [stage, done, total])

    where = f"the cluster's worker {worker.name}"
    if float(worker.state.total_resources.get(GPU_RESOURCE, 0.0)) >= 1.0:
        where += " (GPU)"
    lines, status = _train_here(tuning, cube, progress)
    return lines, status, where


def _tune_on_cluster(
    tuning: RegionTuning, cube: xr.Dataset, progress: Progress, cluster: Cluster
) -> tuple[list[str], int, str]:
    """Run :func:`tune_on_worker` on ``cluster`` (a GPU worker where one is offered, the
    others' Runs then waiting for that GPU while it trains), relaying its progress; a report
    that raises (the user stopped it) cancels the task, which stops the command there."""
    from distributed import KilledWorker
    from distributed import TimeoutError as DaskTimeoutError
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    from core.distributed import paragraph, reconstruct_resources, worker_details

    client = cluster.client
    # a GPU worker where one is offered, as the model's reconstructions ask for
    resources = reconstruct_resources(worker_details(cluster, " to train on"), "model")
    key = f"fieldflow-tuning-{uuid.uuid4().hex[:12]}"
    progress(WRITING_STAGE, 0, 1)
    future = client.submit(tune_on_worker, tuning, cube, key=key, resources=resources, pure=False)
    stage, done, total = WRITING_STAGE, 0, 1  # until the worker has started it
    try:
        while True:
            try:
                return future.result(timeout=POLL_S)
            except (TimeoutError, DaskTimeoutError):
                pass
            latest = client.get_metadata([PROGRESS_METADATA, key], default=None)
            if latest is not None:
                stage, done, total = str(latest[0]), int(latest[1]), int(latest[2])
            progress(stage, done, total)
    except (FutureCancelledError, KilledWorker, CommClosedError) as exc:
        if not cluster.connected:  # review 21: it blamed the worker's memory, in Dask's words
            raise ClusterError(
                f"Lost the connection to the Dask scheduler at {cluster.address} during the "
                "fine-tuning; nothing was saved. Start the scheduler again (or check the "
                "network to it), then make the model again."
            ) from None
        raise ClusterError(
            f"The cluster lost the fine-tuning ({type(exc).__name__}: {paragraph(exc, 120)}); "
            "nothing was saved. Its worker may have run out of memory: try it from a Run of a "
            "smaller field or a shorter period, or on a worker with more memory."
        ) from None
    except BaseException:  # stopped: the worker's next report ends the command
        future.cancel()
        raise
    finally:
        with contextlib.suppress(Exception):
            client.set_metadata([PROGRESS_METADATA, key], None)
        future.release()


def _unexpected_end(status: int, lines: list[str]) -> str:
    """What to tell the user when the training process ended without saying why (a signal, a
    bug's traceback); its whole output goes to the server's log."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return (
            f"The fine-tuning was killed ({name}) before it saved anything. The system may "
            "have run out of memory (a large field's cube is read whole): try it from a Run "
            "of a smaller field or a shorter period, or on a machine with more memory."
        )
    last = lines[-1] if lines else "no output"
    return (
        f"The fine-tuning failed unexpectedly ({last}); nothing was saved. The server's log "
        "holds its whole output."
    )


def _lower_priority(pid: int) -> None:
    """Lower the training's priority by :data:`NICE` below this process's (Linux: its main
    thread, before torch starts the threads that inherit it), so that the server's Runs take
    the cores first; where that cannot be set, it runs as it is."""
    with contextlib.suppress(AttributeError, OSError):  # no setpriority (Windows), or refused
        own = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, pid, min(MAX_NICE, own + NICE))


def _run_reporting(command: list[str], steps: int, progress: Progress) -> tuple[list[str], int]:
    """Run ``command``, reporting its ``step k/N`` lines as they come (and the time after the
    last step as measuring); its output lines and exit status (negative: the signal that
    ended it). A report that raises (a stopped job) stops the
    process with SIGTERM, then SIGKILL after :data:`STOP_WAIT_S`, and is raised again."""
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    _lower_priority(process.pid)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stdout or ():
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=read, name="fieldflow-tuning-output", daemon=True)
    reader.start()
    said: list[str] = []
    stage, done, total = TRAINING_STAGE, 0, steps
    try:
        ended = False
        while not ended:
            progress(stage, done, total)
            with contextlib.suppress(queue.Empty):
                while True:
                    line = lines.get(timeout=POLL_S)
                    if line is None:
                        ended = True
                        break
                    said.append(line)
                    step = _STEP.match(line)
                    if step is not None:
                        done, total = int(step[1]), int(step[2])
                        if done >= total:
                            stage, done, total = MEASURING_STAGE, 0, 1
        process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    finally:
        reader.join(timeout=5)
    return said, process.returncode
