"""Atomic file output: a reader never sees a half-written file.

Every file the product writes (cubes, cache entries, CSVs, GeoTIFFs, checkpoints) goes through
:func:`atomic_output`: the data is written to a temporary file in the destination folder and
renamed over the destination only once complete. A process killed mid-write leaves at most a
``.tmp-*`` file behind, which :func:`remove_stale_temporaries` can clear; the destination is either
the old file or the new one, never a mixture.

Libraries that write through C code under a lock (netCDF/HDF5 under xarray) hang for good when
Ctrl-C or SIGTERM raises inside them: the lock stays held and the clean-up waits on it. Such
writes (and reads) run under :func:`signals_deferred`, which holds those signals until the library
call has returned and acts on them then.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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

DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Signals :func:`signals_deferred` holds: Ctrl-C, and the polite stop of ``kill`` or Docker."""

_Handler = Callable[[int, object], object] | int
"""A signal handler as :func:`signal.getsignal` gives it: a function, SIG_DFL or SIG_IGN."""

FULL_DISK_MARGIN_BYTES = 1 << 20
"""A write that fails (for any reason, in any words) with less than this left free on its file
system is told as "No space left on device": netCDF/HDF5 say only "HDF error", torch "unexpected
pos", and neither keeps the errno."""


def check_output_path(
    path: str | os.PathLike[str],
    *,
    option: str = "--out",
    inputs: Iterable[str | os.PathLike[str]] = (),
    model: str | os.PathLike[str] | None = None,
    writes: str | None = None,
    made_by: Mapping[str, str] | None = None,
) -> Path:
    """Check, before any long computation, that a file can be written at ``path``.

    Refuses an empty path, an existing folder or special file (a device such as /dev/stdout, a
    pipe: the atomic rename would replace it), a path under a file, one of ``inputs`` (the
    output would overwrite what is being read), the ``model`` checkpoint the command uses
    (whether or not its method reads it: a result written there would destroy the model), and
    a folder that cannot be written. Missing folders are fine: :func:`atomic_output` creates
    them. With ``writes`` (a key of :data:`FORMAT_SUFFIXES`), a name ending in another known
    format's suffix is refused too (``x.csv`` holding NetCDF would mislead whoever opens it);
    ``made_by`` names, per format, the command that writes it, said when the name asks for
    that format. A name with no or an unknown suffix is accepted. Returns the path.

    Raises:
        OutputError: what is wrong with the path and what to give instead.
    """
    if not str(path).strip():
        raise OutputError(f"{option} is empty: give the path of the file to write.")
    target = Path(path)
    example = "result" + (FORMAT_SUFFIXES[writes][0] if writes else _suffix_hint(option))
    if str(path).endswith(("/", os.sep)):  # Path() drops the slash: a file of that name was written
        raise OutputError(
            f"{option} {path} names a folder (it ends in '/'): give a file name inside it, "
            f"e.g. {target / example}."
        )
    _check_target(target, option, example)
    resolved = target.resolve()
    if model is not None and Path(model).resolve() == resolved:
        raise OutputError(
            f"{option} {target} is the model checkpoint this command uses: writing it would "
            "replace the model. Choose another output file."
        )
    if model is not None and Path(model).with_suffix(".json").resolve() == resolved:
        raise OutputError(  # review 18: an evaluation written over the model's own record
            f"{option} {target} is the training record of the model this command uses "
            "(its sites, held-out sites and figures): writing it would replace the record. "
            "Choose another output file."
        )
    for source in inputs:
        if Path(source).resolve() == resolved:
            raise OutputError(
                f"{option} {target} is also the input: writing it would replace the file being "
                "read. Choose another output file."
            )
    if writes is not None:  # after the checks above: they name the worse mistake
        _check_suffix(target, option, writes, made_by or {})
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


FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "NetCDF": (".nc", ".nc4", ".netcdf"),
    "CSV": (".csv",),
    "JSON": (".json",),
    "checkpoint": (".pt", ".pth"),
    "GeoTIFF": (".tif", ".tiff"),
    "GeoJSON": (".geojson",),
    "GeoPackage": (".gpkg",),
    "shapefile": (".shp",),
    "zip": (".zip",),
    "KML": (".kml", ".kmz"),
    "image": (".png", ".jpg", ".jpeg"),
    "spreadsheet": (".xlsx", ".xls", ".ods"),
    "Parquet": (".parquet",),
    "Zarr": (".zarr",),
}
"""The formats a user may expect from a file name, and their suffixes (the first is the one
suggested). Only these are checked: any other suffix, or none, is the user's choice."""


def _check_suffix(target: Path, option: str, writes: str, made_by: Mapping[str, str]) -> None:
    suffix = target.suffix.lower()
    named = next((f for f, suffixes in FORMAT_SUFFIXES.items() if suffix in suffixes), None)
    if named is None or named == writes:
        return
    where = f" ({named} comes from {made_by[named]})" if named in made_by else ""
    raise OutputError(
        f"{option} {target} ends in {suffix}, but this command writes a {writes} file: "
        f"give a name ending in {FORMAT_SUFFIXES[writes][0]}, e.g. "
        f"{target.with_suffix(FORMAT_SUFFIXES[writes][0])}{where}."
    )


def _check_target(target: Path, option: str, example: str) -> None:
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
            f"{option} {target} is a folder: give a file name inside it, e.g. {target / example}."
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
def atomic_output(path: str | os.PathLike[str], *, defer_signals: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The caller writes the whole file to the yielded path. If the block raises, the temporary
    file is removed and ``path`` is left untouched. A failure on a full disk (an ``OSError``
    with its errno, or any error from a library while the file system has no space left)
    becomes an :class:`OutputError`.

    With ``defer_signals``, the block runs under :func:`signals_deferred` (for library writes
    that must not be interrupted inside): a Ctrl-C or SIGTERM that arrives meanwhile lets the
    write finish, then the temporary file is removed and the signal acts (``KeyboardInterrupt``
    from Python's default handler); ``path`` is left untouched.
    """
    target = Path(path)
    _check_target(target, "output", "result" + (target.suffix or ".out"))
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
    remove = _remover(tmp)
    deferral = signals_deferred(before_exit=remove) if defer_signals else contextlib.nullcontext()
    try:
        with deferral:
            yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        # any library's failure (GDAL's CPLE_AppDefinedError "TIFFAppendToStrip" too) with the
        # disk full is told as the disk being full
        full = isinstance(exc, Exception) and _no_space_left(target.parent)
        gone = isinstance(exc, Exception) and not target.parent.is_dir()
        remove()
        if gone:  # removed while being written (review 13: a traceback, or "Permission denied")
            raise OutputError(
                f"Could not write {target}: its folder {target.parent} was removed while the "
                "file was being written. Nothing partial was kept; run again (the folder is "
                "made anew)."
            ) from exc
        if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS:
            raise _output_error(target, exc) from exc
        if full:
            raise _output_error(target, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from exc
        if isinstance(exc, Exception) and _WRITE_FAILED.search(str(exc)):
            # GDAL removes its own temporary files before it raises, so the disk it filled may
            # look roomy again; its words say only that the write failed
            raise _output_error(
                target,
                OSError(errno.EIO, f"the write failed ({_one_line(exc)}): the disk may be full"),
            ) from exc
        raise


_WRITE_FAILED = re.compile(r"write error|no space left|disk full", re.IGNORECASE)
"""A library's words for a write the file system refused (libtiff: "TIFFAppendToStrip:Write
error at scanline 0")."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160]


def _remover(path: Path) -> Callable[[], None]:
    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    return remove


def _no_space_left(folder: Path) -> bool:
    """True when the file system of ``folder`` has (almost) no space left for this user."""
    try:
        usage = os.statvfs(folder)
    except OSError:
        return False
    return usage.f_bavail * usage.f_frsize < FULL_DISK_MARGIN_BYTES


def make_folder(folder: str | os.PathLike[str]) -> Path:
    """``folder`` and those above it, created where missing.

    Raises:
        OutputError: it cannot be created (a read-only disk, no permission, a file in the
            way), said in words (review 13: a batch row read "OSError: [Errno 30] Read-only
            file system: '...'").
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS and not isinstance(exc, FileExistsError):
            raise
        in_the_way = isinstance(exc, FileExistsError) or exc.errno == errno.ENOTDIR
        reason = "a file is in the way" if in_the_way else exc.strerror
        raise OutputError(
            f"Could not create the folder {path} ({(reason or str(exc)).lower()}). Choose a "
            "folder you can write to, then run again."
        ) from exc
    return path


def _output_error(target: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"Could not write {target}: {exc.strerror or exc}. Nothing partial was kept; free "
        "some space or choose a folder you can write to, then run again."
    )


@contextlib.contextmanager
def signals_deferred(before_exit: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs; once it has ended, act on the first that
    came, as its handler would have (Python's default for SIGINT raises ``KeyboardInterrupt``).

    For calls into libraries that take locks in Python around C code (xarray over
    netCDF4/HDF5): an exception raised inside them by a signal handler can leave a lock held, so
    that their own clean-up waits on it for ever, or be swallowed by the C extension, so that
    Ctrl-C is ignored. The block is not shortened: a signal waits for the call to return.

    Only the main thread receives signals and may set handlers: elsewhere (Streamlit's script
    threads, Dask workers) the block just runs. A signal whose handler ends the process (no
    Python handler) calls ``before_exit`` first, so that nothing partial is left behind.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    previous: dict[int, _Handler] = {}
    try:
        try:
            for signum in DEFERRED_SIGNALS:
                handler = signal.getsignal(signum)
                if handler is not None:  # None: set outside Python, could not be put back
                    previous[signum] = signal.signal(signum, hold)
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        if caught:  # also when the block failed: the user's stop comes first
            _act_on(caught[0], previous[caught[0]], before_exit)


def _act_on(signum: int, handler: _Handler, before_exit: Callable[[], None]) -> None:
    """Do what ``handler`` (the one in place before deferring) does for ``signum``."""
    if handler == signal.SIG_IGN:
        return
    if callable(handler):
        handler(signum, None)  # e.g. raises KeyboardInterrupt, or the CLI's Terminated
        return
    before_exit()  # SIG_DFL: the process ends here
    signal.raise_signal(signum)


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


@contextlib.contextmanager
def claimed(lock_path: Path, busy: str, *, where: str = "--out") -> Iterator[None]:
    """Hold ``lock_path`` for this process while inside: an exclusive lock on that hidden
    file (removed when the block ends), released when the block ends or the process dies,
    however (a killed holder leaves the empty file, which the next one takes). For one
    writer at a time of a training's checkpoint, or of a batch's folder.

    Args:
        lock_path: the lock file (its folder is made if need be).
        busy: the message when another process holds it.
        where: the option naming the folder, for the message when it cannot be written.

    Raises:
        InputError: another process holds it now (``busy``).
        OutputError: the lock file cannot be made.
    """
    from core.errors import InputError

    try:
        import fcntl
    except ImportError:  # not on a POSIX system: no lock
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the whole block
    except OSError as exc:
        raise OutputError(
            f"Cannot write in {lock_path.parent} ({exc.strerror}): choose a {where} you can "
            "write to."
        ) from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_ino != os.stat(lock_path).st_ino:
                raise BlockingIOError  # a lock file removed by its holder as this one opened it
        except (BlockingIOError, FileNotFoundError):
            raise InputError(busy) from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)  # while held: nothing is left in the folder
