"""A call run in a process of its own, within a time and a memory limit.

What an uploaded file costs to read is for its reader (GDAL, GEOS) to decide, and it ran where
it was called: in the app's process, which serves every user. A file that made a reader crash
would have ended the server for all of them; one that made it loop would have held a core for
ever, beyond Stop. :func:`run_apart` runs such a call in a fresh interpreter instead
(``python -m core.apart``, the call and its outcome pickled over its standard input and
output), gives it up past a time or a memory limit, and turns a crash into an error the caller
can word; the server goes on.

A fresh interpreter, not a fork: the app's process runs many threads, and a fork of it (or a
``multiprocessing`` child, which re-imports the app's main module) is not safe or not cheap.
It costs about a second of imports per call.
"""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from core.errors import FieldFlowError

T = TypeVar("T")

_ROOT = str(Path(__file__).resolve().parent.parent)
"""The folder holding the ``core`` package, put on the child's path."""


class ApartError(FieldFlowError):
    """The call was given up: it took too long, needed too much memory, or its process died.

    ``reason`` is ``"time"``, ``"memory"`` or ``"crash"``; ``detail`` says more (the signal,
    the exception) for the caller's message, which words it for its user."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (ApartError, (self.reason, self.detail))


def run_apart(
    fn: Callable[..., T],
    *args: Any,
    timeout_s: float,
    memory_mb: float,
    **kwargs: Any,
) -> T:
    """``fn(*args, **kwargs)`` in a process of its own, given up after ``timeout_s`` seconds
    (its start included) or past ``memory_mb`` MB more than the process maps once ``fn``'s
    module is imported. ``fn`` must be importable by name (a module's function), its
    arguments and its result picklable.

    Raises:
        FieldFlowError: the one ``fn`` raised, as it raised it.
        ApartError: ``fn`` took too long (``reason`` "time"), needed too much memory
            ("memory"), or its process died or raised anything else ("crash").
    """
    call = pickle.dumps((memory_mb, fn, args, kwargs))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "core.apart"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,  # and this process's working folder: a relative path means the same there
    )
    try:
        out, err = process.communicate(call, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ApartError("time", f"{timeout_s:g} s") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    try:
        kind, value = pickle.loads(out)
    except Exception:  # nothing, or half an outcome: the process died
        code = process.returncode
        said = err.decode("utf-8", "replace").strip().splitlines()
        detail = f"signal {-code}" if code < 0 else f"exit status {code}"
        raise ApartError("crash", f"{detail}{': ' + said[-1] if said else ''}") from None
    if kind == "error":
        raise value
    return value


def _virtual_bytes() -> int:
    """This process's virtual size now (0 where /proc does not say)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _serve() -> None:
    """In the child: read the call, run it under its memory limit, write its outcome."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to standard error, not into the outcome
    memory_mb, fn, args, kwargs = pickle.loads(sys.stdin.buffer.read())
    try:
        if memory_mb > 0:  # on top of what the interpreter and fn's libraries already map
            limit = _virtual_bytes() + int(memory_mb * 2**20)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        outcome: tuple[str, Any] = ("ok", fn(*args, **kwargs))
    except FieldFlowError as exc:
        outcome = ("error", exc)
    except MemoryError:
        outcome = ("error", ApartError("memory"))
    except Exception as exc:  # a reader's own failure: worded by the caller
        outcome = ("error", ApartError("crash", f"{type(exc).__name__}: {exc}"))
    try:
        data = pickle.dumps(outcome)
    except Exception as exc:  # an outcome that cannot be pickled
        data = pickle.dumps(("error", ApartError("crash", f"{type(exc).__name__}: {exc}")))
    out.write(data)
    out.close()


if __name__ == "__main__":  # run as core.apart, not as __main__: its errors pickle by that name
    from core.apart import _serve as serve

    serve()
