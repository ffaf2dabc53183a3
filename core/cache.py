"""A disk cache of fetched cubes, so asking twice for the same field and period costs nothing.

An entry is two files in the cache folder, named by the SHA-256 of the request
(:class:`CacheKey`: field outline, period, collections, grid, cloud limit, STAC URL, format
version):

* ``<hash>.nc``: the cube, written atomically by :func:`core.cube.write_cube`;
* ``<hash>.json``: the request, the fetch summary, and the cube file's size and SHA-256,
  written atomically *after* the cube. Its presence marks a complete entry.

A hit needs both files, a matching request, size and checksum, and a readable cube; anything
else (a killed writer, a truncated or corrupt file, a foreign file) is deleted and counts as a
miss, so a broken entry is refetched and never returned. A writer killed mid-write leaves at
most a ``.tmp-*`` file, which :meth:`CubeCache.remove_stale_temporaries` clears.

Results with Sentinel-1 refused or failed are not cached (a key or a network may come back),
and an entry whose period reaches into the last days before it was fetched expires after a day
(new acquisitions may have been published since).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import planetary_computer

from core.config import Settings
from core.cube import read_cube, write_cube
from core.errors import CubeError, OutputError
from core.fetch import (
    PERIOD_MARGIN_DAYS,
    FetchResult,
    ProgressCallback,
    fetch_cube,
    parse_period,
)
from core.grid import Grid, grid_for_field
from core.stac import S1_COLLECTION, S2_COLLECTION, Signer, StacClient
from core.storage import atomic_output, check_output_folder, remove_stale_temporaries

if TYPE_CHECKING:
    from core.field import Field

CACHE_FORMAT_VERSION = 1
"""Bump when the cube content for the same request changes (loader or format changes)."""
RECENT_DAYS = 7
"""A period ending within this many days of its fetch is "open": new scenes may still appear."""
OPEN_PERIOD_MAX_AGE = dt.timedelta(days=1)
"""How long an entry for an open period is served."""
CACHEABLE_S1_STATUS = frozenset({"loaded", "skipped", "none"})


@dataclass(frozen=True)
class CacheKey:
    """Everything that determines a fetched cube's content."""

    field_key: str
    """:attr:`core.field.Field.key` (the outline, not its name)."""
    start: str
    """First day, ISO ``YYYY-MM-DD``."""
    end: str
    """Last day, ISO ``YYYY-MM-DD``."""
    collections: tuple[str, ...]
    """STAC collections asked for, e.g. ``("sentinel-2-l2a", "sentinel-1-rtc")``."""
    crs: str
    """Grid CRS."""
    bounds: tuple[float, float, float, float]
    """Grid bounds ``(left, bottom, right, top)`` in the grid CRS."""
    resolution_m: float
    """Grid pixel size."""
    max_cloud_cover: float | None
    """Scene cloud limit in percent, or None."""
    stac_api_url: str
    """Where the scenes come from."""
    margin_days: int = 0
    """Days fetched on either side of the period (:data:`core.fetch.PERIOD_MARGIN_DAYS`)."""
    version: int = CACHE_FORMAT_VERSION
    """Cache format version."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists)."""
        data = asdict(self)
        data["collections"] = list(self.collections)
        data["bounds"] = [float(b) for b in self.bounds]
        return data

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`to_dict`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(
    field: Field,
    start: str | dt.date,
    end: str | dt.date,
    *,
    grid: Grid,
    settings: Settings,
    include_s1: bool = True,
    max_cloud_cover: float | None = None,
    margin_days: int = PERIOD_MARGIN_DAYS,
) -> CacheKey:
    """The :class:`CacheKey` of a fetch request (dates are validated and normalised)."""
    first, last = parse_period(start, end)
    collections = (S2_COLLECTION, S1_COLLECTION) if include_s1 else (S2_COLLECTION,)
    return CacheKey(
        field_key=str(field.key),
        start=first.isoformat(),
        end=last.isoformat(),
        collections=collections,
        crs=grid.crs,
        bounds=tuple(float(b) for b in grid.bounds),
        resolution_m=float(grid.resolution_m),
        max_cloud_cover=None if max_cloud_cover is None else float(max_cloud_cover),
        stac_api_url=settings.stac_api_url,
        margin_days=int(max(margin_days, 0)),
    )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _grid_from_summary(data: dict[str, Any]) -> Grid:
    return Grid(
        crs=str(data["crs"]),
        resolution_m=float(data["resolution_m"]),
        x0=float(data["x0"]),
        y0=float(data["y0"]),
        width=int(data["width"]),
        height=int(data["height"]),
    )


class CubeCache:
    """Cubes on disk under ``folder``, one entry per :class:`CacheKey`."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def paths(self, key: CacheKey) -> tuple[Path, Path]:
        """``(cube .nc, sidecar .json)`` paths of an entry."""
        stem = self.folder / key.digest
        return stem.with_suffix(".nc"), stem.with_suffix(".json")

    def get(self, key: CacheKey, *, now: dt.datetime | None = None) -> FetchResult | None:
        """The cached result for ``key``, or None. A broken or expired entry is deleted."""
        cube_path, meta_path = self.paths(key)
        if not meta_path.is_file():
            # A cube without its sidecar: its writer died before finishing, or is still
            # hashing it (seconds for a large field; review 13 saw a live writer's cube
            # deleted here, and the writer fail): only one untouched for an hour is dead.
            if cube_path.exists() and time.time() - _mtime(cube_path) > IN_USE_S:
                self._discard_if_possible(key)
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("request") != key.to_dict():
                raise CubeError("the sidecar describes another request")
            if self._expired(key, meta, now or dt.datetime.now(dt.UTC)):
                raise CubeError("the entry covers a recent period and is older than a day")
            if cube_path.stat().st_size != int(meta["cube_bytes"]):
                raise CubeError("the cube file has the wrong size")
            if _sha256_of(cube_path) != meta["cube_sha256"]:
                raise CubeError("the cube file's checksum does not match")
            cube = read_cube(cube_path)
            with contextlib.suppress(OSError):  # its last use, for pruning (a read-only cache
                os.utime(meta_path)  # is served all the same)
            summary = meta["summary"]
            return FetchResult(
                cube=cube,
                grid=_grid_from_summary(summary["grid"]),
                scenes_found={str(k): int(v) for k, v in summary["scenes_found"].items()},
                frames_loaded={str(k): int(v) for k, v in summary["frames_loaded"].items()},
                s1_status=str(summary["s1_status"]),
                s1_message=str(summary["s1_message"]),
                incomplete_scenes=tuple(str(s) for s in summary.get("incomplete_scenes", ())),
                from_cache=True,
                elapsed_s=0.0,
            )
        except (OSError, ValueError, KeyError, TypeError, CubeError):
            self._discard_if_possible(key)
            return None

    def _discard_if_possible(self, key: CacheKey) -> None:
        """:meth:`discard`, where the folder lets it: a read-only cache keeps a broken entry,
        which then counts as a miss (the fetch that follows says the folder is read-only)."""
        with contextlib.suppress(OSError):
            self.discard(key)

    @staticmethod
    def _expired(key: CacheKey, meta: dict[str, Any], now: dt.datetime) -> bool:
        fetched = dt.datetime.fromisoformat(str(meta["fetched_at"]))
        period_end = dt.date.fromisoformat(key.end) + dt.timedelta(days=key.margin_days)
        is_open = period_end >= fetched.date() - dt.timedelta(days=RECENT_DAYS)
        return is_open and now - fetched > OPEN_PERIOD_MAX_AGE

    def put(self, key: CacheKey, result: FetchResult, *, now: dt.datetime | None = None) -> Path:
        """Store a result (cube first, sidecar last, each atomically); return the cube path."""
        cube_path, meta_path = self.paths(key)
        write_cube(result.cube, cube_path)
        try:
            meta = {
                "version": CACHE_FORMAT_VERSION,
                "request": key.to_dict(),
                "summary": result.summary(),
                "cube_file": cube_path.name,
                "cube_bytes": cube_path.stat().st_size,
                "cube_sha256": _sha256_of(cube_path),
                "fetched_at": (now or dt.datetime.now(dt.UTC)).isoformat(),
            }
        except FileNotFoundError:  # removed meanwhile (the folder pruned or emptied by hand):
            return cube_path  # not cached, and the fetch goes on with the cube it holds
        try:
            with atomic_output(meta_path) as tmp:
                tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        except BaseException:  # no sidecar (a full disk, a stop): the cube goes too, so that
            with contextlib.suppress(OSError):  # "nothing partial was kept" holds and its
                cube_path.unlink()  # space is free at once (review 13)
            raise
        return cube_path

    def discard(self, key: CacheKey) -> None:
        """Delete an entry's files (sidecar first, so no reader trusts a half-deleted entry)."""
        cube_path, meta_path = self.paths(key)
        for path in (meta_path, cube_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def remove_stale_temporaries(self, older_than_s: float = 3600.0) -> int:
        """Delete ``.tmp-*`` files left by killed writers and untouched for ``older_than_s``
        seconds (a live writer keeps touching its file); returns how many."""
        if not self.folder.is_dir():
            return 0
        return remove_stale_temporaries(self.folder, older_than_s)


def fetch_cached(
    field: Field,
    start: str | dt.date,
    end: str | dt.date,
    *,
    settings: Settings,
    cache: CubeCache | None = None,
    use_cache: bool = True,
    client: StacClient | None = None,
    signer: Signer | None = planetary_computer.sign_inplace,
    progress: ProgressCallback | None = None,
    include_s1: bool = True,
    max_cloud_cover: float | None = None,
    threads: int = 8,
    margin_days: int = PERIOD_MARGIN_DAYS,
) -> FetchResult:
    """:func:`core.fetch.fetch_cube` through the disk cache.

    A hit is served from disk without any network request. On a miss the cube is fetched,
    stored (when cacheable) and returned as read back from disk, so a first and a repeated
    request give bit-identical cubes (disk stores reflectance to 1e-4 and dB to 0.01).

    Args:
        cache: the cache; ``CubeCache(settings.cache_dir)`` by default.
        use_cache: False bypasses the cache (no read, no write).
        Other arguments: as for :func:`~core.fetch.fetch_cube`.
    """
    grid = grid_for_field(field)
    fetch_kwargs: dict[str, Any] = {
        "settings": settings,
        "client": client,
        "signer": signer,
        "progress": progress,
        "include_s1": include_s1,
        "max_cloud_cover": max_cloud_cover,
        "grid": grid,
        "threads": threads,
        "margin_days": margin_days,
    }
    if not use_cache:
        return fetch_cube(field, start, end, **fetch_kwargs)
    cache = cache or CubeCache(settings.cache_dir)
    key = cache_key(
        field,
        start,
        end,
        grid=grid,
        settings=settings,
        include_s1=include_s1,
        max_cloud_cover=max_cloud_cover,
        margin_days=margin_days,
    )
    hit = cache.get(key)  # a read-only cache (a mount shared by a team) serves what it holds
    if hit is not None:
        return hit
    try:  # before any request: a cache that cannot take the cube threw the download away
        check_output_folder(cache.folder, option="The cache folder (FIELDFLOW_CACHE_DIR)")
    except OutputError as exc:
        raise OutputError(
            f"{exc} Set FIELDFLOW_CACHE_DIR to a folder you can write to (on the command line, "
            "--no-cache fetches without it)."
        ) from exc
    cache.remove_stale_temporaries()  # leftovers of writers killed over an hour ago
    result = fetch_cube(field, start, end, **fetch_kwargs)
    if result.s1_status not in CACHEABLE_S1_STATUS or result.skipped_scenes:
        return result  # the server may have what it lacked next time
    cache.put(key, result)
    if settings.cache_max_gb > 0:  # the least recently used go past the cap (not this one)
        prune_cache(cache.folder, max_bytes=settings.cache_max_gb * 1e9)
    stored = cache.get(key)
    if stored is None:
        return result
    return replace(stored, from_cache=False, elapsed_s=result.elapsed_s)


# --- keeping the folder's size in check ------------------------------------------------------

BATCHES_FOLDER = "batches"
"""Subfolder of the cache folder where the app's batches of an upload keep their outputs
(:func:`core.batch.upload_folder`)."""
IN_USE_S = 3600.0
"""What was used (read, written, resumed) more recently than this is never pruned: a Run may
still be reading a cube, a batch still writing its folder (a field of a large farm can take
minutes). The folder may exceed its cap meanwhile."""


@dataclass(frozen=True)
class CacheItem:
    """One thing in the cache folder that pruning removes whole."""

    kind: str
    """``"cube"`` (a fetched cube and its sidecar), ``"batch"`` (an upload's batch outputs) or
    ``"broken"`` (a cube file without its sidecar: its writer died)."""
    paths: tuple[Path, ...]
    size: int
    """Bytes on disk."""
    last_used: float
    """When it was last written or read (seconds since the epoch): a cube's sidecar is touched
    at every hit; a batch folder's newest file or the folder itself."""
    label: str
    """What it is, in words (a cube's period and field)."""


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune_cache` removed and kept."""

    removed: tuple[CacheItem, ...]
    kept: tuple[CacheItem, ...]

    @property
    def freed(self) -> int:
        return sum(item.size for item in self.removed)

    @property
    def kept_size(self) -> int:
        return sum(item.size for item in self.kept)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _cube_item(meta_path: Path) -> CacheItem:
    cube_path = meta_path.with_suffix(".nc")
    label = meta_path.stem[:12]
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        request = json.loads(meta_path.read_text(encoding="utf-8"))["request"]
        label = f"{request['start']} to {request['end']}, field {str(request['field_key'])[:8]}"
    paths = (meta_path, cube_path) if cube_path.exists() else (meta_path,)
    size = sum(_size(p) for p in paths)
    return CacheItem("cube", paths, size, _mtime(meta_path), label)


def _size(path: Path) -> int:
    """A file's size, 0 once it is gone: a writer in another process renames its temporary
    files away while the folder is listed (review 13: the listing, and so the prune after
    each fetch, failed with FileNotFoundError while the app batched)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _batch_item(folder: Path) -> CacheItem:
    # os.walk passes over what vanishes while it walks (rglob raised for it)
    files = [Path(top) / name for top, _dirs, names in os.walk(folder) for name in names]
    size = sum(_size(p) for p in files)
    used = max([_mtime(folder), *(_mtime(p) for p in files)])
    return CacheItem("batch", (folder,), size, used, f"batch {folder.name[:12]}")


def cache_items(folder: str | os.PathLike[str]) -> list[CacheItem]:
    """Everything :func:`prune_cache` may remove from the cache ``folder``, least recently
    used first (``.tmp-*`` leftovers of killed writers are not listed: see
    :meth:`CubeCache.remove_stale_temporaries`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    items = [_cube_item(p) for p in folder.glob("*.json") if not p.name.startswith(".")]
    for cube_path in folder.glob("*.nc"):
        if not cube_path.name.startswith(".") and not cube_path.with_suffix(".json").exists():
            size = cube_path.stat().st_size
            items.append(CacheItem("broken", (cube_path,), size, _mtime(cube_path), "no sidecar"))
    batches = folder / BATCHES_FOLDER
    if batches.is_dir():
        items += [_batch_item(p) for p in batches.iterdir() if p.is_dir()]
    return sorted(items, key=lambda item: item.last_used)


def prune_cache(
    folder: str | os.PathLike[str],
    *,
    max_bytes: float | None = None,
    older_than_s: float | None = None,
    now: float | None = None,
) -> PruneReport:
    """Remove from the cache ``folder`` what was not used for ``older_than_s`` seconds and any
    cube left without its sidecar, then the least recently used until what is left takes
    ``max_bytes`` or less (None: no such limit).
    Nothing used within :data:`IN_USE_S` is removed, whatever the limits; a cube goes sidecar
    first (a reader never trusts a half-removed entry), a batch folder whole."""
    import shutil

    now = time.time() if now is None else now
    items = cache_items(folder)
    total = sum(item.size for item in items)
    removed: list[CacheItem] = []
    kept: list[CacheItem] = []
    for item in items:  # least recently used first
        idle = now - item.last_used
        stale = item.kind == "broken" or (older_than_s is not None and idle > older_than_s)
        over = max_bytes is not None and total > max_bytes
        if idle <= IN_USE_S or not (stale or over):
            kept.append(item)
            continue
        for path in item.paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        removed.append(item)
        total -= item.size
    return PruneReport(tuple(removed), tuple(kept))
