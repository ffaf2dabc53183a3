"""Running FieldFlow work on a Dask cluster: connecting, GPU-aware submission, local clusters.

A :class:`Cluster` wraps a ``distributed.Client`` (and the local cluster it may own) so that
Streamlit's ``st.cache_resource`` can hold it: it refuses a bare ``Client``, which looks
awaitable. Build one with:

* :func:`connect`: a running scheduler, from an explicit address or ``DASK_SCHEDULER_ADDRESS``,
  with a short time-out and a :class:`ClusterError` that says what to do when it is unreachable;
* :func:`local_cluster`: workers on this machine, in processes or in threads of this process.

**GPU routing.** GPU workers are started with ``dask worker ADDRESS --resources "GPU=1"`` and
advertise that resource to the scheduler. :func:`reconstruct_resources` asks for ``{"GPU": 1}``
when the method runs on a GPU (:data:`GPU_METHODS`: the model) *and* some worker advertises a
GPU; the scheduler then runs that task only on such a worker, one task per GPU unit at a time.
The baselines (``linear``, ``whittaker``) never ask: they are numpy code and would only queue
behind the model on the GPU workers. Without GPU workers nothing is asked and any worker runs
the task (the model then runs on that worker's CPU, ``device="auto"``).

**The model is loaded once per worker process**: a reconstruction task carries the cube, the
dates and :class:`~core.reconstruct.ReconstructOptions` (a checkpoint *path*), never the model;
the worker loads it through :func:`core.model.inference.cached_checkpoint`, an ``lru_cache``
that lives as long as the worker process. The options pin the file's version (a Run pins it at
its start, :func:`core.reconstruct.pinned`): a worker that holds that version uses it; one that
does not, when the file has been replaced since, stops the Run with a message rather than make
its chunks with other weights than the rest.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import queue
import signal
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import usable_cpus
from core.errors import CheckpointChanged, ClusterError, InputError
from core.progress import beat, check, copied_to, listening
from core.reconstruct import ReconstructOptions, Reconstructor, reconstruct

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr
    from distributed import Client, Future

LOG = logging.getLogger(__name__)

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
"""Environment variable naming the scheduler, e.g. ``tcp://scheduler:8786``."""
GPU_RESOURCE = "GPU"
"""Resource name GPU workers advertise (``dask worker ... --resources "GPU=1"``)."""
GPU_METHODS = frozenset({"model"})
"""Reconstruction methods worth sending to a GPU worker."""
CONNECT_TIMEOUT_S = 5.0
"""Default time allowed to reach a scheduler."""
CHECK_EVERY_S = 0.5
"""How often a wait for a cluster's result lets a cancelled Run stop (core.progress.check)."""
RESULT_TIMEOUT_S = 900.0
"""Default time :func:`submit_reconstruction` waits for its result, once a worker has taken
it (the time it waits its turn is not counted)."""
PROGRESS_TOPIC = "fieldflow-progress"
"""The Dask event topic a worker's reconstruction tells its progress on (:func:`told_to_client`),
as ``(task key, stage, done, total)``; one topic for all (the scheduler keeps a log per topic)."""
PROGRESS_EVERY_S = 0.5
"""Least time between two progress events of one stage sent by a worker."""
QUEUE_LOOK_S = 5.0
"""How often :func:`submit_reconstruction` asks whether a worker has taken its task."""
QUEUED_STAGE = (
    "reconstructing on the Dask cluster: waiting for a free worker (its workers are busy, with "
    "other Runs or a model being trained for a region)"
)
"""The stage a Run reports while its reconstruction waits its turn on the cluster (it begins
as the Run's reconstructing stage does, core.season.RECONSTRUCTING_PREFIX: the stages still to
come are those after it). Before review 19 such a Run sat at "0 of 46" without a word for as
long as a region's training held the only worker, and the wait counted against its limit."""
WORKER_SETTINGS_FILE = Path(__file__).with_name("dask.yaml")
"""Dask configuration for worker processes (:func:`worker_settings`); the Docker image puts it in
``/etc/dask/``."""
WORKER_ANSWER_S = 10.0
"""How long :meth:`Cluster.ask_workers` waits for the workers' answers."""
HELD_CUBES = 4
"""Cubes a :class:`Cluster` keeps on their workers between calls (the most recently used; see
:meth:`Cluster.cube_on`)."""


def scheduler_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The scheduler address in ``DASK_SCHEDULER_ADDRESS`` (stripped), or None when unset."""
    env = os.environ if environ is None else environ
    address = env.get(SCHEDULER_ENV, "").strip()
    return address or None


ADDRESS_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")
"""Transports a Dask scheduler address may name (``inproc`` only within one process)."""


def check_scheduler_address(
    address: str, *, name: str = "The Dask scheduler address", or_else: str = ""
) -> str:
    """``address`` (stripped) if it has the form of a Dask scheduler address, else an error.

    Accepted, as :func:`distributed.comm.addressing.parse_address` reads them:
    ``tcp://HOST:PORT``, ``tls://HOST:PORT`` (also ``ws``, ``wss``, ``ucx``), ``HOST:PORT``
    (tcp), and ``inproc://...`` of a cluster in this process. Checked before ``Client`` is made:
    a malformed address otherwise fails inside it and leaves a half-made client whose clean-up
    prints a ``TimeoutError`` 10 s later.

    Args:
        address: what was given.
        name: where it was given, for the message (``--scheduler``, ``DASK_SCHEDULER_ADDRESS``).
        or_else: other choices the caller offers, appended to the forms (``", or 'local' ..."``).

    Raises:
        InputError: says what was given and the form it must take.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    text = str(address).strip()
    problem = ""
    try:
        scheme, location = parse_address(text, strict=False)
        if scheme not in ADDRESS_SCHEMES:
            problem = f"'{scheme}://' is no Dask transport"
        elif scheme != "inproc":
            host, port = parse_host_port(location)
            if not host or any(c.isspace() for c in host):
                problem = "it names no host"
            elif not 0 < int(port) < 65536:
                problem = f"the port {port} is not one from 1 to 65535"
        elif not location:
            problem = "it names no cluster"
    except ValueError as exc:  # no port, a port that is no number, a bad IPv6 address
        if "missing port" in str(exc):
            problem = "it has no :PORT"
        elif "invalid literal" in str(exc):
            problem = "its port is no number"
        else:
            problem = "it cannot be read as HOST:PORT"
    if problem:
        raise InputError(
            f"{name} is {text!r}, which is not a Dask scheduler address ({problem}): give it as "
            "tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786, the address 'dask scheduler' prints), "
            f"tls://HOST:PORT or HOST:PORT{or_else}."
        )
    return text


USABLE_STATES = frozenset({"running", "paused"})
"""States of a worker that runs tasks, or will again (``paused``: over its memory limit for a
while). A worker that joined but failed to start (it could not import FieldFlow's code, say)
stays registered as ``closing`` until its heartbeat times out, minutes later (review 17)."""


def usable_workers(scheduler_info: Mapping[str, Any]) -> dict[str, Any]:
    """The workers of ``scheduler_info`` (:func:`scheduler_details`) that run tasks, by address."""
    workers = scheduler_info.get("workers") or {}
    return {
        address: worker
        for address, worker in workers.items()
        if str(worker.get("status", "running")) in USABLE_STATES
    }


def gpu_capacity(scheduler_info: Mapping[str, Any]) -> float:
    """Total ``GPU`` resource units the usable workers in ``scheduler_info`` advertise."""
    return float(
        sum(
            float((worker.get("resources") or {}).get(GPU_RESOURCE, 0.0))
            for worker in usable_workers(scheduler_info).values()
        )
    )


def reconstruct_resources(
    scheduler_info: Mapping[str, Any], method: str
) -> dict[str, float] | None:
    """The ``resources=`` a reconstruction task should ask for (see the module docstring).

    Args:
        scheduler_info: ``client.scheduler_info()``; only ``workers[*].resources`` is read.
        method: the reconstruction method name.

    Returns:
        ``{"GPU": 1.0}`` for a GPU method on a cluster with GPU workers, else None (any worker).
    """
    if method in GPU_METHODS and gpu_capacity(scheduler_info) >= 1.0:
        return {GPU_RESOURCE: 1.0}
    return None


@dataclass(frozen=True)
class ClusterInfo:
    """What a cluster offers, for a line of output or the app's sidebar."""

    address: str
    """Scheduler address."""
    workers: int
    """Connected workers."""
    threads: int
    """Worker threads in all."""
    gpus: float
    """``GPU`` resource units advertised in all (0: no GPU workers)."""
    trimming_workers: int = 0
    """Workers that allocate as Dask's ``MALLOC_TRIM_THRESHOLD_`` makes them (started without
    :data:`WORKER_SETTINGS_FILE`'s settings, and :func:`restore_allocation` could not undo it,
    e.g. off glibc): the model runs about 1.6 x slower on them."""
    not_started: tuple[str, ...] = ()
    """``"ADDRESS (STATE)"`` of workers registered with the scheduler that run no task (they
    failed to start, or are closing); not counted above."""
    without_code: tuple[str, ...] = ()
    """Addresses of usable workers that cannot run FieldFlow's code (it cannot be imported
    there); :attr:`code_error` says why."""
    code_error: str = ""
    """What such a worker answered, e.g. ``"ModuleNotFoundError: No module named 'core'"``."""
    silent: tuple[str, ...] = ()
    """Addresses of usable workers that did not answer within :data:`WORKER_ANSWER_S`."""

    def describe(self) -> str:
        """E.g. ``"tcp://scheduler:8786: 3 workers, 6 threads, 1 GPU"``, and a warning when some
        workers run without FieldFlow's settings, or are registered but not started."""
        gpus = f", {self.gpus:g} GPU" if self.gpus else ", no GPU workers"
        line = f"{self.address}: {self.workers} workers, {self.threads} threads{gpus}"
        if self.not_started:
            line += (
                f" ({len(self.not_started)} more registered but not running: "
                f"{', '.join(self.not_started[:3])}{', ...' if len(self.not_started) > 3 else ''};"
                " their logs say why)"
            )
        if self.silent:
            line += (
                f" ({len(self.silent)} did not answer within {WORKER_ANSWER_S:g} s: "
                f"{', '.join(self.silent[:3])}{', ...' if len(self.silent) > 3 else ''})"
            )
        if self.trimming_workers:
            line += (
                f" ({self.trimming_workers} allocate memory as Dask's MALLOC_TRIM_THRESHOLD_ "
                "makes them, which makes the model about 1.6 x slower there: put "
                "core/dask.yaml in /etc/dask/ on the machines that start the workers, and "
                "restart them)"
            )
        return line


MMAP_THRESHOLD_BYTES = 32 * 2**20
"""Where glibc's adaptive mmap threshold stops climbing on 64-bit systems
(``DEFAULT_MMAP_THRESHOLD_MAX``): :func:`restore_allocation` sets it there."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocation_restored = False


def _glibc() -> Any:
    """The C library as ``ctypes`` sees it, or None off glibc (musl, macOS)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc's own calls, absent elsewhere)
    except (OSError, AttributeError):
        return None
    return libc


def restore_allocation() -> bool:
    """In a process started with ``MALLOC_TRIM_THRESHOLD_`` (Dask's worker processes, unless
    core/dask.yaml removed it), give glibc back the allocation the variable took away.

    The variable turns off glibc's adaptive mmap threshold, so every buffer over 128 kB is
    mapped afresh and faulted in page by page; the model runs about 1.6 x slower. The adaptive
    rule would raise the mmap threshold to the largest buffer freed (up to
    :data:`MMAP_THRESHOLD_BYTES`) and the trim threshold to twice that. glibc cannot switch the
    rule back on once off, so this sets both thresholds where it ends up (``mallopt``). Nothing is
    done without the variable (the adaptive rule is still on there) or off glibc.

    Returns:
        True when the process's allocation is glibc's own (now or already), False when the
        variable is set and could not be undone (not glibc).
    """
    global _allocation_restored
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or _allocation_restored:
        return True
    libc = _glibc()
    ok = (
        libc is not None
        and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
        and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES))
    )
    _allocation_restored = ok
    return ok


def release_free_memory() -> None:
    """Give the memory this process has freed back to the system (glibc's ``malloc_trim``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


TRIM_AFTER_IDLE_S = 3.0
"""How long a worker waits, with no model task running, before :func:`release_free_memory`."""
_idle = threading.Lock()
_running_tasks = 0
_trim_timer: threading.Timer | None = None
idle_trims = 0
"""Trims :func:`model_task` made in this process (for benchmarks and tests)."""


@contextlib.contextmanager
def model_task() -> Iterator[None]:
    """Around a model task on a worker: once no model task has run for
    :data:`TRIM_AFTER_IDLE_S` seconds, the memory freed is given back to the system.

    With glibc's own allocation (:func:`restore_allocation`, core/dask.yaml) a process keeps
    what the model freed for its next buffers: a worker held about 1.8 GB after a tuned 64 px
    Run instead of 0.6 GB. Trimming after every task would make the next one fault all its
    pages in again (a Run's chunks follow each other within a second: 5-8 s more a Run,
    measured), so the trim waits for the worker to fall idle.
    """
    global _running_tasks, _trim_timer
    with _idle:
        _running_tasks += 1
        if _trim_timer is not None:
            _trim_timer.cancel()
            _trim_timer = None
    try:
        yield
    finally:
        with _idle:
            _running_tasks -= 1
            if _running_tasks == 0:
                _trim_timer = threading.Timer(TRIM_AFTER_IDLE_S, _trim_if_idle)
                _trim_timer.daemon = True
                _trim_timer.start()


def _trim_if_idle() -> None:
    global idle_trims
    with _idle:
        if _running_tasks:
            return
        idle_trims += 1
    release_free_memory()


def _malloc_trimming() -> bool:
    """On a worker: does its process still allocate as Dask's ``MALLOC_TRIM_THRESHOLD_`` makes
    it (started with the variable, and :func:`restore_allocation` could not undo it)?"""
    return "MALLOC_TRIM_THRESHOLD_" in os.environ and not _allocation_restored


def _worker_report() -> dict[str, Any]:
    """On a worker, for :meth:`Cluster.info`: how it allocates memory. That it answers at all
    says it can import FieldFlow's code (this function is sent by name)."""
    return {"trimming": _malloc_trimming()}


def prepare_workers(client: Client) -> None:
    """Have every worker of ``client``'s cluster, present and future, run
    :func:`restore_allocation` as it starts (a worker plugin). Never raises: if the plugin
    cannot be registered, that is logged and the work still runs, more slowly."""
    from core.worker_plugin import AllocationPlugin

    plugin = AllocationPlugin()
    register = getattr(client, "_register_worker_plugin", None)  # distributed 2026.8
    try:
        if register is None:
            client.register_plugin(plugin)
        else:  # the public call waits for every worker, without a limit: a worker that does
            # not answer (stopped, swapping) held a connection for minutes (review 17)
            client.sync(
                register, plugin, plugin.name, plugin.idempotent, callback_timeout=WORKER_ANSWER_S
            )
    except Exception as exc:  # the work still runs, more slowly; a worker that cannot
        # import FieldFlow (the usual cause) is said by Cluster.info's callers, in words
        LOG.info("Could not set up the Dask workers' memory allocation: %s", exc)


def scheduler_details(client: Client, address: str = "") -> dict[str, Any]:
    """The scheduler's identity with every worker, asked for now.

    Not ``client.scheduler_info(n_workers=-1)``: it stores the answer on the client and returns
    the stored one, which the client's own periodic refresh (every 2 s, workers left out)
    may have replaced in between; under load the app then read "no workers" from a cluster
    that had two (seen in the test suite, 2026-12-03).

    Raises:
        ClusterError: the client has lost its scheduler (``address``, for the message): it
            closes itself once it could not reconnect within its time, and was then asked
            anyway, an AttributeError on every Run of the app until a restart (review 19).
    """
    if not connected(client):
        raise ClusterError(lost_scheduler(address))
    return dict(client.sync(client.scheduler.identity, n_workers=-1))


def connected(client: Client) -> bool:
    """Whether ``client`` is connected to its scheduler now (not reconnecting, not closed)."""
    return client.status == "running" and client.scheduler is not None


def lost_scheduler(address: str = "") -> str:
    """The message for a client that lost its scheduler (at ``address``)."""
    at = f" at {address}" if address else ""
    return (
        f"Lost the connection to the Dask scheduler{at}. Start it again (or check the network "
        "to it), then run again; work already done is kept."
    )


def worker_details(cluster: Cluster, purpose: str = "") -> dict[str, Any]:
    """:func:`scheduler_details` of a cluster that has workers.

    Raises:
        ClusterError: it has none (``purpose``, e.g. " to train on", says for what), or has lost
            its scheduler. Workers registered but not running are named, with the likely cause
            (a worker that cannot import FieldFlow's code fails as it starts; review 19: "no
            workers, start one" sent its operator to start the same one again).
    """
    details = scheduler_details(cluster.client, cluster.address)
    if not usable_workers(details):
        stuck = sorted(
            f"{a} ({w.get('status', 'unknown')})" for a, w in (details.get("workers") or {}).items()
        )
        if stuck:
            raise ClusterError(
                f"The Dask scheduler at {cluster.address} has no worker running{purpose}: "
                f"{len(stuck)} registered but not running ({_first_three(stuck)}). A worker that "
                "cannot import FieldFlow's code stops as it starts (its log says why). "
                + CODE_ADVICE.format(address=cluster.address)
            )
        raise ClusterError(
            f"The Dask scheduler at {cluster.address} has no workers{purpose}; start one with "
            f"'dask worker {cluster.address}'."
        )
    return details


PROBE_S = 5.0
"""How long :func:`check_cluster` waits for its probe task before taking the scheduler's
silence as a busy cluster (it would have refused the task at once)."""
CODE_ADVICE = (
    "Start the scheduler and every worker where FieldFlow's code and packages can be imported: "
    "from FieldFlow's Docker image, or with FieldFlow's folder on PYTHONPATH "
    "('PYTHONPATH=/path/to/fieldflow dask worker {address}')."
)


def check_cluster(cluster: Cluster, info: ClusterInfo, checkpoint: Path | None = None) -> None:
    """Refuse, before any work is sent, a cluster that cannot run FieldFlow's tasks, in words.

    Checked: every usable worker answered :meth:`Cluster.info` (it imports FieldFlow's code);
    the scheduler takes a FieldFlow task (it unpickles every task graph, so it needs the code
    too: without it every field failed with "Error during deserialization of the task graph.
    This frequently", review 17); with ``checkpoint`` (a model run; None is not "no model" but
    the caller's choice not to check), every usable worker sees that file at that path.

    Args:
        cluster: the cluster.
        info: its :meth:`Cluster.info`, just taken.
        checkpoint: the model checkpoint the tasks will load, absolute; the shipped one is
            looked for in each worker's own FieldFlow.

    Raises:
        ClusterError: what is wrong, where, and what to do.
    """
    advice = CODE_ADVICE.format(address=info.address)
    if info.without_code:
        raise ClusterError(
            f"{len(info.without_code)} Dask worker(s) of {info.address} cannot run FieldFlow's "
            f"code ({_first_three(info.without_code)}: {info.code_error}). {advice}"
        )
    _probe_scheduler(cluster, advice)
    if checkpoint is None:
        return
    details = scheduler_details(cluster.client, cluster.address)
    workers = list(usable_workers(details))
    answers, _silent = cluster.ask_workers(_has_checkpoint, workers, str(checkpoint))
    lacking = sorted(address for address, has in answers.items() if has is False)
    if lacking:
        raise ClusterError(
            f"The model checkpoint {checkpoint} is not on {len(lacking)} Dask worker(s) "
            f"({_first_three(lacking)}): each worker loads it from that same path on its own "
            "machine. Put it on storage every worker sees at that path, or give --checkpoint such "
            "a path."
        )


def _first_three(names: Sequence[str]) -> str:
    """``names`` for a message: the first three, then "..." when there are more."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _has_checkpoint(path: str) -> bool:
    """On a worker: is ``path`` a file there?"""
    return Path(path).is_file()


def _probe_scheduler(cluster: Cluster, advice: str) -> None:
    """Send the scheduler a FieldFlow task; a refusal is a :class:`ClusterError`."""
    from distributed import TimeoutError as DaskTimeoutError

    probe = cluster.client.submit(
        _worker_report, key=f"fieldflow-probe-{uuid.uuid4().hex[:12]}", pure=False
    )
    try:
        probe.result(timeout=PROBE_S)
    except (TimeoutError, DaskTimeoutError):
        pass  # taken, and waiting for a free worker: the scheduler could read it
    except Exception as exc:
        raise ClusterError(
            f"The Dask scheduler at {cluster.address} cannot take FieldFlow's tasks "
            f"({paragraph(exc)}). {advice}"
        ) from None
    finally:
        probe.cancel()
        probe.release()


def paragraph(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: message"`` of an exception, its first paragraph joined into one line (a
    library's message wrapped over lines lost all but its first: "This frequently", review
    17), cut at ``limit`` characters."""
    lines = []
    for line in str(exc).strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    text = " ".join(lines)
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Cluster:
    """A Dask client, and the local cluster it owns if any; close it when done.

    Holding the client in a plain object lets ``st.cache_resource`` cache it (the app keeps one
    per process) and gives the rest of the code one small surface to call.
    """

    def __init__(self, client: Client, *, local: Any = None, note: str = "") -> None:
        self.client = client
        """The ``distributed.Client``."""
        self.local = local
        """The ``LocalCluster`` this object started and closes, or None for a remote one."""
        self.note = note
        """One sentence about how the cluster was made (e.g. a fallback to threads), or ""."""
        self._held: OrderedDict[int, _HeldCube] = OrderedDict()
        self._held_lock = threading.Lock()
        self._address = str(client.scheduler.address)
        self._told: dict[str, queue.SimpleQueue] = {}
        self._subscribed = False

    @property
    def address(self) -> str:
        """Scheduler address (kept: a client that lost its scheduler no longer knows it)."""
        return self._address

    @property
    def connected(self) -> bool:
        """Whether the client is connected to its scheduler now (:func:`connected`)."""
        return connected(self.client)

    def info(self) -> ClusterInfo:
        """Workers, threads and GPUs now connected, and how many run without FieldFlow's Dask
        settings (:data:`WORKER_SETTINGS_FILE`)."""
        details = scheduler_details(self.client, self.address)
        workers = usable_workers(details)
        others = sorted(set(details.get("workers") or {}) - set(workers))
        answers, silent = self.ask_workers(_worker_report, list(workers))
        failed = {a: v for a, v in answers.items() if isinstance(v, BaseException)}
        first_error = next(iter(failed.values()), None)
        return ClusterInfo(
            address=self.address,
            workers=len(workers),
            threads=sum(int(w.get("nthreads", 0)) for w in workers.values()),
            gpus=gpu_capacity(details),
            trimming_workers=sum(
                bool(v.get("trimming")) for v in answers.values() if isinstance(v, dict)
            ),
            not_started=tuple(
                f"{a} ({details['workers'][a].get('status', 'unknown')})" for a in others
            ),
            without_code=tuple(sorted(failed)),
            code_error=paragraph(first_error) if first_error is not None else "",
            silent=tuple(silent),
        )

    def ask_workers(
        self, function: Any, workers: list[str], *args: Any, timeout_s: float | None = None
    ) -> tuple[dict[str, Any], list[str]]:
        """``function(*args)`` on each of ``workers`` (addresses); returns (answers by address,
        the addresses that did not answer in time). An answer is what the function returned,
        or the exception it (or the worker, unable to unpickle it) raised.

        ``client.run`` waits for every worker without a limit: one worker that joined but
        never started kept ``batch`` waiting 8 minutes without a word (review 17). Here all
        are asked at once for ``timeout_s`` (:data:`WORKER_ANSWER_S`); if some did not answer,
        each is asked again alone for a second, so one silent worker does not hide the rest.
        """
        if not workers:
            return {}, []
        limit = WORKER_ANSWER_S if timeout_s is None else timeout_s

        def ask(some: list[str], seconds: float) -> dict[str, Any]:
            return dict(
                self.client.sync(
                    self.client._run,
                    function,
                    *args,
                    workers=some,
                    on_error="return",
                    callback_timeout=seconds,
                )
            )

        try:
            return ask(workers, limit), []
        except (TimeoutError, OSError):
            pass
        answers: dict[str, Any] = {}
        silent = []
        for address in workers:
            try:
                answers.update(ask([address], 1.0))
            except (TimeoutError, OSError):
                silent.append(address)
        return answers, silent

    @contextlib.contextmanager
    def progress_of(self, key: str) -> Iterator[queue.SimpleQueue]:
        """While inside, the progress task ``key`` tells (:func:`told_to_client`) arrives in
        the queue yielded, as ``(stage, done, total)``. One subscription per client, shared by
        the tasks of every caller (a client has one handler per topic)."""
        told: queue.SimpleQueue = queue.SimpleQueue()
        with self._held_lock:
            if not self._subscribed:
                self.client.subscribe_topic(PROGRESS_TOPIC, self._heard)
                self._subscribed = True
            self._told[key] = told
        try:
            yield told
        finally:
            with self._held_lock:
                self._told.pop(key, None)

    def _heard(self, event: tuple[float, Any]) -> None:
        """The client's handler of :data:`PROGRESS_TOPIC` events (in its event loop)."""
        try:
            key, what, done, total = event[1]
        except (TypeError, ValueError):
            return
        told = self._told.get(key)
        if told is not None:
            told.put((str(what), int(done), int(total)))

    def resources_for(self, method: str) -> dict[str, float] | None:
        """:func:`reconstruct_resources` for the workers connected now."""
        return reconstruct_resources(scheduler_details(self.client, self.address), method)

    def cube_on(self, cube: xr.Dataset, worker: str) -> Future:
        """``cube`` as data on ``worker``: sent (scattered) the first time, the same future after.

        A Run reconstructs one cube in several calls (chunks of days, then the frames); sending
        it once saves each later call the pickling and transfer (a 512 px field-season is about
        0.7 GB). The cube *object* is the key: reconstruction never modifies a cube in place,
        and neither may its callers. It is sent again if the worker differs (workers came or
        went) or lost it. The :data:`HELD_CUBES` most recently used cubes stay on the workers;
        an older one, or one no longer referenced here, is released (a future is freed on the
        workers once no caller holds it).
        """
        key = id(cube)
        with self._held_lock:
            held = self._held.get(key)
            if (
                held is not None
                and held.cube() is cube
                and held.worker == worker
                and held.future.status == "finished"
            ):
                self._held.move_to_end(key)
                return held.future
        future = self.client.scatter(cube, hash=False, workers=[worker])
        entry = _HeldCube(weakref.ref(cube), worker, future)
        with self._held_lock:
            self._held[key] = entry
            self._held.move_to_end(key)
            while len(self._held) > HELD_CUBES:
                self._held.popitem(last=False)
        weakref.finalize(cube, _forget_cube, weakref.ref(self), key, future.key)
        return future

    def held_cubes(self) -> int:
        """Cubes kept on the workers now (see :meth:`cube_on`)."""
        with self._held_lock:
            return len(self._held)

    def close(self) -> None:
        """Close the client, and the local cluster if this object started it."""
        with self._held_lock:
            self._held.clear()
        self.client.close()
        if self.local is not None:
            self.local.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_exc: object) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            # Stopped by Ctrl-C: the worker processes of this cluster stop at once (their
            # files are written whole or not at all); closed politely mid-task, each logged
            # its cancelled tasks and a traceback after the command's one line (review 13).
            with quiet_dask_logs():
                self._kill_local_workers()
                self.close()
            return
        self.close()

    def _kill_local_workers(self) -> None:
        """SIGKILL the worker processes of the local cluster this object started, if any."""
        nannies = getattr(self.local, "workers", {}) if self.local is not None else {}
        for nanny in list(nannies.values()):
            process = getattr(getattr(nanny, "process", None), "process", None)
            pid = getattr(process, "pid", None)
            if isinstance(pid, int) and pid != os.getpid():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class _HeldCube:
    """A cube :meth:`Cluster.cube_on` sent, the worker it went to and its future."""

    cube: weakref.ref
    worker: str
    future: Future


def _forget_cube(cluster: weakref.ref, key: int, future_key: str) -> None:
    """Drop a collected cube's entry (if still its own) so its data leaves the workers. Holds
    no reference to the entry itself, which would keep an evicted cube's data alive."""
    owner = cluster()
    if owner is None:
        return
    with owner._held_lock:
        held = owner._held.get(key)
        if held is not None and held.future.key == future_key:
            del owner._held[key]


def connect(
    address: str | None = None,
    *,
    timeout_s: float = CONNECT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
    warn: bool = True,
) -> Cluster:
    """Connect to a running scheduler.

    Args:
        address: e.g. ``tcp://scheduler:8786``; by default ``DASK_SCHEDULER_ADDRESS``.
        timeout_s: how long to try before giving up.
        environ: where to read ``DASK_SCHEDULER_ADDRESS`` (default ``os.environ``).
        warn: log a warning for workers that are slow (Dask's allocation), cannot run
            FieldFlow's code, or are not running (the app's server log); off for a caller that
            refuses such a cluster itself (:func:`check_cluster`).

    Raises:
        InputError: no address given and ``DASK_SCHEDULER_ADDRESS`` unset, or the address has
            no scheduler address's form (:func:`check_scheduler_address`).
        ClusterError: the scheduler does not answer within ``timeout_s``.
    """
    from distributed import Client

    target = (address or "").strip() or scheduler_address(environ)
    if target is None:
        raise InputError(
            f"No Dask scheduler given: pass its address (tcp://host:8786) or set {SCHEDULER_ENV}."
        )
    named = bool((address or "").strip())  # given, not read from the environment
    given = "The Dask scheduler address" if named else SCHEDULER_ENV
    target = check_scheduler_address(  # review 21: the way out of the variable, said
        target,
        name=given,
        or_else="" if named else f"; or unset {given} to work on this machine",
    )
    try:
        client = Client(target, timeout=f"{timeout_s}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        local = (  # where the address came from (review 16: "unset" a variable not set)
            "give no scheduler (on the command line, --scheduler local)"
            if named
            else f"unset {SCHEDULER_ENV}"
        )
        raise ClusterError(
            f"Cannot reach the Dask scheduler at {target} within {timeout_s:g} s ({exc}). Start "
            f"it ('dask scheduler', then 'dask worker {target}'), fix the address, or {local} "
            "to work on this machine."
        ) from None
    prepare_workers(client)
    cluster = Cluster(client)
    if not warn:
        return cluster
    with contextlib.suppress(Exception):  # a warning only: never stop a connection for it
        info = cluster.info()
        if info.trimming_workers or info.not_started or info.silent:
            LOG.warning("Dask cluster %s", info.describe())
        if info.without_code:
            LOG.warning(
                "Dask workers %s cannot run FieldFlow's code (%s). %s",
                ", ".join(info.without_code),
                info.code_error,
                CODE_ADVICE.format(address=info.address),
            )
    return cluster


def worker_settings(path: Path = WORKER_SETTINGS_FILE) -> dict[str, Any]:
    """The Dask settings of :data:`WORKER_SETTINGS_FILE` as dotted keys, for ``dask.config.set``
    (which would replace a whole section given as a nested dict)."""
    import yaml

    def flat(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
        for key, value in tree.items():
            if isinstance(value, Mapping):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(flat(yaml.safe_load(path.read_text(encoding="utf-8")) or {}))


@contextlib.contextmanager
def quiet_dask_logs(name: str = "distributed") -> Iterator[None]:
    """Dask's loggers (those under ``name``) say nothing below CRITICAL while inside."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Worker processes started inside ignore SIGINT: they share the terminal's process group,
    so Ctrl-C reached each of them too, and each printed its own KeyboardInterrupt traceback
    (review 13); the command that owns them stops them. A process started with SIGINT ignored
    keeps it so (Python installs its handler only where SIGINT is not ignored). Only the main
    thread may change a signal's handler; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


MAX_WORKERS_PER_CPU = 4
"""Most local workers per usable core: beyond, they only wait on each other (and 100,000 of
them kept Dask starting nannies for minutes without a word; review 16)."""


def check_local_workers(workers: int, option: str = "--workers") -> None:
    """InputError when a local cluster of ``workers`` is more than this machine can run."""
    most = MAX_WORKERS_PER_CPU * usable_cpus()
    if workers > most:
        raise InputError(
            f"{option} {workers} is more workers than this machine can run: at most {most} "
            f"({MAX_WORKERS_PER_CPU} per usable core, {usable_cpus()} here). For more, start a "
            "Dask cluster across machines and give its address (--scheduler)."
        )


def local_cluster(workers: int, *, processes: bool = True, threads_per_worker: int = 1) -> Cluster:
    """Start ``workers`` workers on this machine.

    With ``processes=True`` each worker is a process of its own (GIL-free, its own model copy),
    started with :func:`worker_settings` (glibc's own memory allocation, not Dask's default);
    if that cannot start (its nanny fails under some launchers, e.g. ``streamlit run``), the
    workers run as threads of this process instead and :attr:`Cluster.note` says so.

    Raises:
        InputError: ``workers`` or ``threads_per_worker`` below 1.
    """
    import dask
    from distributed import Client, LocalCluster

    if workers < 1 or threads_per_worker < 1:
        raise InputError(
            f"A local cluster needs at least 1 worker and 1 thread, not {workers} and "
            f"{threads_per_worker}."
        )
    check_local_workers(workers)
    note = ""
    kwargs: dict[str, Any] = {
        "n_workers": workers,
        "threads_per_worker": threads_per_worker,
        "dashboard_address": None,
    }
    try:
        ignoring = _workers_ignore_ctrl_c() if processes else contextlib.nullcontext()
        with dask.config.set(worker_settings()), ignoring:  # read as the nannies are made
            local = LocalCluster(processes=processes, **kwargs)
    except Exception as exc:  # a nanny that cannot start raises various types
        if not processes:
            raise
        note = (
            f"Worker processes could not start ({type(exc).__name__}: {exc}); running "
            f"{workers} workers as threads of this process instead."
        )
        local = LocalCluster(processes=False, **kwargs)
    client = Client(local, set_as_default=False)
    prepare_workers(client)
    return Cluster(client, local=local, note=note)


def field_worker(
    scheduler_info: Mapping[str, Any],
    cube: xr.Dataset,
    resources: Mapping[str, float] | None = None,
) -> str:
    """The worker every reconstruction of ``cube`` is sent to (see :func:`submit_reconstruction`).

    A hash of the cube's coordinates (dates, bands, grid; cheap, unlike its data) picks one of
    the workers that can run the task (those with ``resources`` when some are asked for), so
    the same cube always goes to the same worker while the cluster keeps its workers, and
    different fields spread over them. This only routes work: the worker's own caches still
    check what they hold.

    Raises:
        ClusterError: no worker offers ``resources``.
    """
    from dask.base import tokenize

    workers = usable_workers(scheduler_info)
    able = sorted(
        address
        for address, worker in workers.items()
        if all(
            float((worker.get("resources") or {}).get(name, 0.0)) >= amount
            for name, amount in (resources or {}).items()
        )
    )
    if not able:
        raise ClusterError(
            f"No worker of the cluster offers {dict(resources or {})}; start one with "
            "'dask worker ADDRESS --resources \"GPU=1\"'."
        )
    coords = {name: cube[name].values for name in sorted(map(str, cube.coords))}
    return able[int(tokenize(coords)[:12], 16) % len(able)]


def other_model_on_worker(cluster: Cluster, options: ReconstructOptions | None) -> str | None:
    """The message for a worker whose checkpoint is not the version a Run pinned while this
    process's file still is: the worker holds another model at that path, and running again
    changes nothing (review 21: the worker's message led with "replaced or removed while this
    computation was using it" and ended "Run it again"). None where this file changed too."""
    from core.config import checkpoint_version

    if options is None or options.checkpoint_version is None:
        return None
    path = Path(options.checkpoint) if options.checkpoint else None
    if checkpoint_version(path) != options.checkpoint_version:
        return None
    shown = options.checkpoint or "shipped in assets/"
    return (
        f"A worker of the Dask cluster at {cluster.address} holds another model at the path of "
        f"the model checkpoint {shown} than this app does (a worker with another install of "
        "FieldFlow, or another copy of the models folder), so the model cannot run there. Give "
        "every worker the app's models (the same FieldFlow install, and the app's models folder "
        "shared at the same path), then run again; until then linear and Whittaker run."
    )


def submit_reconstruction(
    cluster: Cluster,
    cube: xr.Dataset,
    dates: np.ndarray,
    method: str,
    options: ReconstructOptions | None = None,
    *,
    timeout_s: float = RESULT_TIMEOUT_S,
) -> xr.Dataset:
    """:func:`core.reconstruct.reconstruct` on the cluster; wait for and return its result.

    The task asks for a GPU when :func:`reconstruct_resources` says so. Every call with the same
    cube goes to the same worker (:func:`field_worker`; another only if that one leaves): the
    model's per-field tuning, blend and band are fitted once per worker process and kept there
    (:func:`core.model.inference.field_checkpoint`), so a Run's chunks, sent one after another,
    fit them once instead of once on each worker they land on; and the cube is sent to that
    worker once, not once per call (:meth:`Cluster.cube_on`).
    Errors the task raises (e.g. :class:`~core.errors.InputError`) come back as themselves.

    Raises:
        ClusterError: no workers, or no result within ``timeout_s``, or the worker was lost.
    """
    from distributed import KilledWorker
    from distributed import TimeoutError as DaskTimeoutError
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    client = cluster.client
    details = worker_details(cluster)
    resources = reconstruct_resources(details, method)
    worker = field_worker(details, cube, resources)
    cube_future = cluster.cube_on(cube, worker)
    key = f"fieldflow-reconstruct-{uuid.uuid4().hex[:12]}"
    with cluster.progress_of(key) as told:  # the worker's own stages, told as they pass
        future = client.submit(
            reconstruct_on_worker,
            cube_future,
            dates,
            method,
            options or ReconstructOptions(),
            resources=resources,
            workers=[worker],
            allow_other_workers=True,
            key=key,
        )
        try:
            return _result(cluster, future, told, timeout_s)
        except (TimeoutError, DaskTimeoutError):
            raise ClusterError(
                f"The cluster returned no reconstruction within {timeout_s:g} s"
                + (" (it waits for a free GPU worker)" if resources else "")
                + "; try again later or with fewer dates."
            ) from None
        except CheckpointChanged:
            other = other_model_on_worker(cluster, options)
            if other is None:  # replaced here too: the worker's message says so
                raise
            raise InputError(other) from None
        except (FutureCancelledError, KilledWorker, CommClosedError) as exc:
            if not cluster.connected:  # was "(... cancelled for reason: scheduler-connection-lost)"
                raise ClusterError(lost_scheduler(cluster.address)) from None
            raise ClusterError(  # was "(... cancelled for reason: already forgotten.)" (review 19)
                f"A worker of the Dask cluster at {cluster.address} was lost during the "
                f"reconstruction ({paragraph(exc, 120)}): it stopped or was restarted. Run again: "
                "another worker, or the same once restarted, takes it."
            ) from None
        finally:
            future.release()


def _result(cluster: Cluster, future: Future, told: queue.SimpleQueue, timeout_s: float) -> Any:
    """``future``'s result, awaited in short waits: a Run cancelled meanwhile stops here
    (core.progress.check), the worker's own stages (``told``) are passed on as they come, and
    a wait for a free worker is said and not counted against ``timeout_s``.

    Raises:
        TimeoutError: no result within ``timeout_s`` of a worker's time.
    """
    from distributed import TimeoutError as DaskTimeoutError

    deadline = time.monotonic() + timeout_s
    looked, queued = time.monotonic(), False
    while True:
        wait_s = min(CHECK_EVERY_S, max(0.0, deadline - time.monotonic()))
        try:
            return future.result(timeout=wait_s)
        except (TimeoutError, DaskTimeoutError):
            if time.monotonic() >= deadline:
                raise TimeoutError from None
        while not told.empty():  # e.g. tuning the model to the field, on the worker
            beat(*told.get_nowait())
            queued = False
        now = time.monotonic()
        if now - looked >= QUEUE_LOOK_S:  # waiting its turn? said, and not counted
            taken = "done" if future.done() else _taken_by(cluster, future.key)
            if taken is None:
                deadline += now - looked
                if not queued:
                    beat(QUEUED_STAGE, 0, 1)
            elif queued:
                beat(f"reconstructing on the Dask cluster's worker {taken}", 0, 1)
            queued, looked = taken is None, now
        try:
            check()
        except BaseException:  # no longer wanted: the worker's task stops at its next step
            future.cancel()
            raise


def _taken_by(cluster: Cluster, key: str) -> str | None:
    """The worker executing task ``key`` now; None while it waits its turn, at the scheduler
    or in a worker's queue (the scheduler hands a worker more tasks than it has threads, so
    "processing" there is not "executing"). Where it cannot be told, "unknown": never a wait."""
    try:
        processing = cluster.client.processing()
    except Exception:
        return "unknown"
    worker = next((w for w, keys in processing.items() if key in keys), None)
    if worker is None:
        return None
    answers, _silent = cluster.ask_workers(_executing, [worker], key, timeout_s=2.0)
    return None if answers.get(worker) is False else worker


def _executing(key: str, dask_worker: Any = None) -> bool:
    """On a worker: whether task ``key`` runs there now (Dask passes ``dask_worker``)."""
    state = getattr(dask_worker, "state", None)
    running = [*getattr(state, "executing", ()), *getattr(state, "long_running", ())]
    return any(task.key == key for task in running)


def reconstruct_on_worker(
    cube: xr.Dataset, dates: np.ndarray, method: str, options: ReconstructOptions
) -> xr.Dataset:
    """:func:`core.reconstruct.reconstruct` as a task of :func:`submit_reconstruction`.

    A worker's nanny starts its process with ``OMP_NUM_THREADS=1`` (Dask's default, meant for
    many small numpy tasks at once), so PyTorch would use one core however many threads the
    worker was given. A Run sends its chunks one after another, so for the model this task
    lets PyTorch use as many threads as the worker has (never fewer than it already uses),
    and puts the count back afterwards, for the worker's other tasks (a batch's fields run
    side by side, one thread each).
    """
    with stop_when_cancelled(), told_to_client():
        if method not in GPU_METHODS:
            return reconstruct(cube, dates, method, options)
        with model_task(), worker_torch_threads():
            return reconstruct(cube, dates, method, options)


@contextlib.contextmanager
def told_to_client() -> Iterator[None]:
    """Inside a Dask task: its named progress beats (tuning the model to the field, measuring
    its error there) are sent to the client as :data:`PROGRESS_TOPIC` events, at most one per
    :data:`PROGRESS_EVERY_S` a stage (and its last step), where the Run's page shows them
    (review 19: a Run on a cluster sat at "0 of N" for the 35-45 s of its tuning). Outside a
    task, nothing changes."""
    from distributed import get_worker

    try:
        worker = get_worker()
        key = worker.get_current_task()
    except ValueError:
        yield
        return
    last: dict[str, float] = {}

    def send(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last.get(what, -math.inf) < PROGRESS_EVERY_S:
            return
        last[what] = now
        with contextlib.suppress(Exception):  # progress only: never stop the work for it
            worker.log_event(PROGRESS_TOPIC, (key, what, done, total))

    with copied_to(send):
        yield


class TaskCancelled(Exception):
    """Raised inside a Dask task whose result nobody waits for any more (its future was
    cancelled or released), at its next :func:`core.progress.beat`."""


RUNNING_STATES = frozenset({"executing", "long-running"})
"""A worker's states of a task still wanted and running; any other (``cancelled`` once its
client cancelled it) means nobody waits for its result."""


@contextlib.contextmanager
def stop_when_cancelled() -> Iterator[None]:
    """Inside a Dask task: the work's progress beats (the model's tiles, tuning steps, error
    measurement) raise :class:`TaskCancelled` once the task's own future has been cancelled,
    so a Run the user left frees the worker within a step instead of at the end of its chunk.
    Reads the worker's own state of the task (no call to the scheduler); outside a task,
    nothing changes."""
    from distributed import get_worker

    try:
        worker = get_worker()
        key = worker.get_current_task()
    except ValueError:  # not in a task: nothing to watch
        yield
        return

    def listener(what: str, done: int, total: int) -> None:
        task = worker.state.tasks.get(key)
        if task is None or task.state not in RUNNING_STATES:
            raise TaskCancelled(f"{key}: cancelled")

    with listening(listener):
        yield


@contextlib.contextmanager
def worker_torch_threads() -> Iterator[int]:
    """Inside a Dask task: PyTorch's threads raised to the worker's thread count (never
    lowered) for the block, and put back after it. Yields the count in use."""
    import torch
    from distributed import get_worker

    before = torch.get_num_threads()
    wanted = max(before, int(get_worker().state.nthreads))
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)


def reconstructor(cluster: Cluster | None) -> Reconstructor:
    """:func:`core.reconstruct.reconstruct` itself without a cluster; with one, a function of the
    same signature that runs it there (:func:`submit_reconstruction`). For callers such as the
    app, which use a cluster only when ``DASK_SCHEDULER_ADDRESS`` is set."""
    if cluster is None:
        return reconstruct
    return functools.partial(submit_reconstruction, cluster)
