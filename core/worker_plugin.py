"""The Dask worker plugin :func:`core.distributed.prepare_workers` registers (a module of its own:
it imports ``distributed`` at once, which :mod:`core.distributed` does only when asked)."""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class AllocationPlugin(WorkerPlugin):
    """Runs :func:`core.distributed.restore_allocation` in each worker process as it joins."""

    name = "fieldflow-allocation"
    idempotent = True

    def setup(self, worker: Any) -> None:
        from core.distributed import restore_allocation

        restore_allocation()
