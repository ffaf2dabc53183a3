"""A Dask cluster of real, separately started processes: ``dask scheduler`` and ``dask worker``.

What a user runs on a cluster of machines, on one machine: each process has its own
environment and working folder, so what a worker cannot import, see or reach differs from the
client's as it would on another machine. Every process started is stopped on exit.

    with DaskProcesses(tmp_path) as cluster:
        cluster.worker("w1")                       # FieldFlow importable, cwd = tmp_path/w1
        cluster.worker("bare", fieldflow=False)    # cannot import FieldFlow's code
        cluster.wait_for_workers(2)
        ... python -m core batch --scheduler cluster.address ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from core.config import REPO_ROOT


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(fieldflow: bool = True, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with FieldFlow's folder on PYTHONPATH or kept off it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = [p for p in paths if Path(p).resolve() != REPO_ROOT.resolve()]
    if fieldflow:
        paths.insert(0, str(REPO_ROOT))
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


class DaskProcesses:
    """A scheduler process and the worker processes started on it (see the module docstring)."""

    def __init__(self, folder: Path, *, scheduler_fieldflow: bool = True) -> None:
        self.folder = Path(folder)
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler_fieldflow = scheduler_fieldflow
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Self:
        self.start_scheduler()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
        cwd = self.folder / name
        cwd.mkdir(parents=True, exist_ok=True)
        log = (self.folder / f"{name}.log").open("w")
        return subprocess.Popen(
            [*args],
            cwd=cwd,  # not the project's folder: Python would import FieldFlow from there
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for the test's own command misses it
        )

    def start_scheduler(self) -> None:
        """Start (or restart, on the same port) the scheduler."""
        self.scheduler = self._start(
            "scheduler",
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dashboard-address",
                ":0",
                "--no-show",
            ],
            environment(self.scheduler_fieldflow),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"the scheduler exited: {self.log('scheduler')}")
            time.sleep(0.2)
        raise RuntimeError("the scheduler did not listen within 60 s")

    def worker(
        self,
        name: str,
        *,
        fieldflow: bool = True,
        resources: str | None = None,
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> subprocess.Popen:
        """Start ``dask worker`` named ``name`` (one thread, with a nanny) in ``folder/name``.

        Args:
            fieldflow: FieldFlow's folder on its PYTHONPATH.
            resources: e.g. ``"GPU=1"``.
            env: more environment variables.
            prefix: a command to run it under (e.g. ``unshare -m ...``).
        """
        args = [
            *prefix,
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            self.address,
            "--nthreads",
            "1",
            "--name",
            name,
        ]
        if resources:
            args += ["--resources", resources]
        process = self._start(name, args, environment(fieldflow, env))
        self.workers[name] = process
        return process

    def wait_for_workers(self, n: int, timeout_s: float = 90.0) -> None:
        """Until ``n`` workers are registered with the scheduler."""
        from distributed import Client

        with Client(self.address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout_s)

    def kill(self, name: str) -> None:
        """SIGKILL a worker's whole process group (its nanny and its worker process): gone
        for good, as a machine that went down."""
        process = self.workers.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler."""
        assert self.scheduler is not None
        os.killpg(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait(timeout=30)
        self.scheduler = None

    def log(self, name: str) -> str:
        """What a process has printed so far."""
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def stop(self) -> None:
        """Stop every process started (workers first), SIGKILL what does not stop in 20 s."""
        processes = [*self.workers.values(), *([self.scheduler] if self.scheduler else [])]
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.workers.clear()
        self.scheduler = None
