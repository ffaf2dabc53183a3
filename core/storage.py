"""Atomic file output: a reader never sees a half-written file.

Every file the product writes (cubes, cache entries, CSVs, GeoTIFFs, checkpoints) goes through
:func:`atomic_output`: the data is written to a temporary file in the destination folder and
renamed over the destination only once complete. A process killed mid-write leaves at most a
``.tmp-*`` file behind, which :func:`remove_stale_temporaries` can clear; the destination is either
the old file or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from core.errors import OutputError

TEMP_PREFIX = ".tmp-"

# Errors of the destination, not of the data: told to the user as an OutputError.
_OUTPUT_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.ENAMETOOLONG,
        errno.EEXIST,
    }
)


def check_output_path(
    path: str | os.PathLike[str],
    *,
    option: str = "--out",
    inputs: Iterable[str | os.PathLike[str]] = (),
    model: str | os.PathLike[str] | None = None,
) -> Path:
    """Check, before any long computation, that a file can be written at ``path``.

    Refuses an empty path, an existing folder or special file (a device such as /dev/stdout, a
    pipe: the atomic rename would replace it), a path under a file, one of ``inputs`` (the
    output would overwrite what is being read), the ``model`` checkpoint the command uses
    (whether or not its method reads it: a result written there would destroy the model), and
    a folder that cannot be written. Missing folders are fine: :func:`atomic_output` creates
    them. Returns the path.

    Raises:
        OutputError: what is wrong with the path and what to give instead.
    """
    if not str(path).strip():
        raise OutputError(f"{option} is empty: give the path of the file to write.")
    target = Path(path)
    _check_target(target, option)
    resolved = target.resolve()
    if model is not None and Path(model).resolve() == resolved:
        raise OutputError(
            f"{option} {target} is the model checkpoint this command uses: writing it would "
            "replace the model. Choose another output file."
        )
    for source in inputs:
        if Path(source).resolve() == resolved:
            raise OutputError(
                f"{option} {target} is also the input: writing it would replace the file being "
                "read. Choose another output file."
            )
    _check_folder(target.parent, target, option)
    return target


def check_output_folder(path: str | os.PathLike[str], *, option: str = "--out") -> Path:
    """Like :func:`check_output_path`, for a folder that results are written into: it may
    exist (as a folder) or not yet (it is created when written to).

    Raises:
        OutputError: what is wrong with the path and what to give instead.
    """
    if not str(path).strip():
        raise OutputError(f"{option} is empty: give the folder to write the results in.")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(
            f"{option} {folder} is a file, not a folder: give a folder for the results "
            "(it is created if missing)."
        )
    _check_folder(folder, folder, option)
    return folder


def _check_folder(folder: Path, target: Path, option: str) -> None:
    """OutputError unless files can be created in ``folder`` (or, when missing, in the nearest
    folder above it, where :func:`atomic_output` would create it). Tried, not guessed from
    permission bits: root ignores those, and a read-only mount does not show in them."""
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(
            f"{option} {target}: {folder} is a file, so nothing can be created under it. "
            "Choose a path in a folder."
        )
    try:
        probe_fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    except OSError as exc:
        raise OutputError(
            f"{option} {target}: cannot write in the folder {folder} ({exc.strerror}). "
            "Choose a folder you can write to."
        ) from exc
    os.close(probe_fd)
    os.unlink(probe)


SPECIAL_ROOTS = (Path("/dev"), Path("/proc"), Path("/sys"))
"""Where a path names a device or a process's stream (``/dev/stdout`` links to
``/proc/self/fd/1``, which may even look like a regular file when the output is redirected)."""


def _check_target(target: Path, option: str) -> None:
    """OutputError when ``target`` exists and is not a regular file, or names a device or a
    process's stream, whether or not through a link."""
    for candidate in (target.absolute(), target.resolve()):
        if any(candidate.is_relative_to(root) for root in SPECIAL_ROOTS):
            raise OutputError(
                f"{option} {target} is a device or a process's stream, not a file; FieldFlow "
                "writes whole files and renames them into place. Give a file path, then read "
                "or copy that file."
            )
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:  # e.g. a path under a file: ENOTDIR
        if exc.errno == errno.ENOTDIR:
            return  # told by the caller's folder check
        raise OutputError(f"{option} {target}: {exc.strerror}.") from exc
    if stat.S_ISDIR(mode):
        raise OutputError(
            f"{option} {target} is a folder: give a file name inside it, "
            f"e.g. {target / ('result' + _suffix_hint(option))}."
        )
    if not stat.S_ISREG(mode):
        raise OutputError(
            f"{option} {target} is not a regular file (a device, pipe or socket); FieldFlow "
            "writes whole files and renames them into place. Give a file path, then read "
            "or copy that file."
        )


def _suffix_hint(option: str) -> str:
    return ".json" if option == "--json" else ".out"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The caller writes the whole file to the yielded path. If the block raises, the temporary
    file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    _check_target(target, "output")
    if target.is_symlink():  # replace the file it points to, and keep the link
        target = target.resolve()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{target.name}.", suffix=target.suffix, dir=target.parent
        )
    except OSError as exc:
        raise _output_error(target, exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give what open() would
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS:
            raise _output_error(target, exc) from exc
        raise


def _output_error(target: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"Could not write {target}: {exc.strerror or exc}. Nothing partial was kept; free "
        "some space or choose a folder you can write to, then run again."
    )


def remove_stale_temporaries(folder: str | os.PathLike[str], older_than_s: float = 3600.0) -> int:
    """Delete temporaries left in ``folder`` by killed writers; return how many were removed.

    Only files not modified for ``older_than_s`` seconds are removed, so a writer that is still
    busy in another process keeps its file.
    """
    removed = 0
    cutoff = time.time() - older_than_s
    for leftover in Path(folder).glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            if leftover.stat().st_mtime <= cutoff:
                leftover.unlink()
                removed += 1
    return removed


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
