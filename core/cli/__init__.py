"""``python -m core <command>``: thin command-line entry points over the core functions.

Each command lives in its own module ``core.cli.<name>`` with two functions:
``add_arguments(parser)`` and ``run(args, settings) -> int``; a module that never loads a model
sets ``USES_MODEL = False`` (a wrong ``FIELDFLOW_CHECKPOINT`` then does not stop it). Modules
are imported only when their command runs, so ``python -m core ndvi`` never imports torch.

Errors a user can fix (:class:`core.errors.FieldFlowError`) print as one ``error:`` line and
exit with status 2; they never show a traceback. Ctrl-C and SIGTERM stop a command with one line
too, after the files being written are removed (status 130 and 143).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import NoReturn

from core.config import Settings
from core.errors import FieldFlowError

COMMANDS: dict[str, str] = {
    "fetch": "Fetch an S1/S2 cube for a field from a STAC API (Planetary Computer by default).",
    "reconstruct": "Reconstruct cloud-free S2 frames of a cube at any dates.",
    "ndvi": "Write the field's daily NDVI curve (with uncertainty) as CSV.",
    "evaluate": "Score reconstruction methods on real cubes with hidden clear pixels.",
    "bench": "Time and peak memory of the reconstruction methods vs field size.",
    "train": "Train the reconstruction model on real cubes.",
    "batch": "Fetch and reconstruct many fields on a Dask cluster.",
    "models": "List the models on offer (shipped, FIELDFLOW_CHECKPOINT, the models folder).",
    "cache": "What the cache folder holds; prune it by age or size.",
}


def _available_commands() -> dict[str, str]:
    return {
        name: help_text
        for name, help_text in COMMANDS.items()
        if importlib.util.find_spec(f"core.cli.{name}") is not None
    }


def build_parser(commands: dict[str, str]) -> argparse.ArgumentParser:
    """Parser with one sub-command per available command module."""
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="FieldFlow: cloud-free Sentinel-2 time series for fields.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in commands.items():
        module = importlib.import_module(f"core.cli.{name}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    commands = _available_commands()
    # Only import the module of the command asked for (keeps `ndvi` free of torch).
    wanted = next((a for a in args_list if not a.startswith("-")), None)
    selected = {wanted: commands[wanted]} if wanted in commands else commands
    try:
        with _terminate_as_interrupt():
            parser = build_parser(selected)
            args = parser.parse_args(args_list)
            module = importlib.import_module(f"core.cli.{args.command}")
            # linear and Whittaker never load a model: a wrong FIELDFLOW_CHECKPOINT must not
            # stop them (review 16)
            baseline = getattr(args, "method", None) in ("linear", "whittaker")
            uses_model = getattr(module, "USES_MODEL", True) and not baseline
            return int(module.run(args, Settings.from_env(check_checkpoint=uses_model)) or 0)
    except FieldFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing partial was kept.", file=sys.stderr)
        return 130
    except Terminated:
        print("error: stopped (SIGTERM); nothing partial was kept.", file=sys.stderr)
        return 143
    except BrokenPipeError:
        # The reader of the output went away (`| head -1`): end quietly, as a command killed
        # by SIGPIPE does (review 22: a traceback). One from elsewhere (a socket) is raised.
        if not _output_gone():
            raise
        return 128 + signal.SIGPIPE


def _output_gone() -> bool:
    """Whether standard output's reader has gone; if so it is pointed at the null device,
    so that Python's own flush at exit says nothing either."""
    try:
        sys.stdout.flush()
        gone = _reader_closed(sys.stdout.fileno())  # a failed write drops what it held
    except BrokenPipeError:
        gone = True
    except (OSError, ValueError):  # closed, or no file (replaced by a test's buffer)
        return False
    if gone:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return gone


def _reader_closed(fd: int) -> bool:
    """Whether ``fd`` is a pipe whose reading end is closed (poll says POLLERR)."""
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def finish(status: int) -> NoReturn:
    """Exit with ``status``. Python's shutdown after a command can take seconds (worker
    threads, Dask, torch): a Ctrl-C or SIGTERM then ended the process by the signal, without a
    word, though the command had ended and said so (review 13: 6 of 50 stops of ``fetch``).
    From here on such a signal ends it at once, with the command's status and one line."""

    def stop(signum: int, frame: object) -> None:
        said = "its work is complete" if status == 0 else f"it had ended with status {status}"
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            print(f"note: stopped while exiting; the command had ended, {said}.", file=sys.stderr)
            sys.stderr.flush()
        os._exit(status)

    _output_gone()  # the last lines, still buffered, to a reader gone meanwhile: quietly
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored by who started it
                signal.signal(signum, stop)
    sys.exit(status)


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so every file being written is removed."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while the block runs (by default
    it kills the process on the spot, leaving temporaries of half-written files behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
