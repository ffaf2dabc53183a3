"""Atomic file output: a reader never sees a half-written file.

Every file the product writes (cubes, cache entries, CSVs, GeoTIFFs, checkpoints) goes through
:func:`atomic_output`: the data is written to a temporary file in the destination folder and
renamed over the destination only once complete. A process killed mid-write leaves at most a
``.tmp-*`` file behind, which :func:`remove_stale_temporaries` can clear; the destination is either
the old file or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The caller writes the whole file to the yielded path. If the block raises, the temporary
    file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{TEMP_PREFIX}{target.name}.", suffix=target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give what open() would
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


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
