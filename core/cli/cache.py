"""``python -m core cache``: what the cache folder holds, and pruning it by age or size."""

from __future__ import annotations

import argparse
import datetime as dt
import time

from core.cache import CacheItem, CubeCache, cache_items, prune_cache
from core.config import Settings
from core.errors import InputError

USES_MODEL = False
"""Never loads a model: a wrong ``FIELDFLOW_CHECKPOINT`` does not stop it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prune",
        action="store_true",
        help="remove what --older-than-days and --max-gb say (without them: down to "
        "FIELDFLOW_CACHE_MAX_GB, as every fetch does); nothing used within the hour is removed",
    )
    parser.add_argument(
        "--max-gb", type=float, help="with --prune: the least recently used go past this size"
    )
    parser.add_argument(
        "--older-than-days", type=float, help="with --prune: what was not used for this long goes"
    )
    parser.add_argument("--list", action="store_true", help="one line per cube and batch")


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def _when(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _summary(items: list[CacheItem] | tuple[CacheItem, ...]) -> str:
    cubes = [i for i in items if i.kind != "batch"]
    batches = [i for i in items if i.kind == "batch"]
    return (
        f"{len(cubes)} fetched cube(s), {_size(sum(i.size for i in cubes))}; "
        f"{len(batches)} batch output folder(s), {_size(sum(i.size for i in batches))}"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the cache folder's content; with ``--prune``, remove and say what went."""
    limits = (args.max_gb, args.older_than_days)
    if not args.prune and any(v is not None for v in limits):
        raise InputError("--max-gb and --older-than-days say what --prune removes: add --prune.")
    for name, value in (("--max-gb", args.max_gb), ("--older-than-days", args.older_than_days)):
        if value is not None and not value >= 0:
            raise InputError(f"{name} must be 0 or more, not {value:g}.")
    folder = settings.cache_dir
    cap = f"{settings.cache_max_gb:g} GB" if settings.cache_max_gb > 0 else "none"
    print(f"Cache folder: {folder} (FIELDFLOW_CACHE_DIR; size cap after each fetch: {cap})")
    if folder.exists() and not folder.is_dir():  # review 16: "does not exist yet"
        raise InputError(
            f"The cache folder (FIELDFLOW_CACHE_DIR) {folder} is a file, not a folder: set "
            "FIELDFLOW_CACHE_DIR to a folder (it is made at the first fetch)."
        )
    if not folder.is_dir():
        print("It does not exist yet: nothing has been fetched.")
        return 0
    items = cache_items(folder)
    print(f"Holds {_summary(items)}.")
    if args.list:
        for item in reversed(items):
            print(f"  {_when(item.last_used)}  {_size(item.size):>9s}  {item.kind:6s} {item.label}")
    if not args.prune:
        return 0
    max_gb = args.max_gb
    if max_gb is None and args.older_than_days is None and settings.cache_max_gb > 0:
        max_gb = settings.cache_max_gb
    if max_gb is None and args.older_than_days is None:
        raise InputError(
            "Nothing to prune to: FIELDFLOW_CACHE_MAX_GB is 0 (no cap); give --max-gb or "
            "--older-than-days."
        )
    temporaries = CubeCache(folder).remove_stale_temporaries()
    report = prune_cache(
        folder,
        max_bytes=None if max_gb is None else max_gb * 1e9,
        older_than_s=None if args.older_than_days is None else args.older_than_days * 86400,
        now=time.time(),
    )
    left = f" and {temporaries} leftover temporary file(s)" if temporaries else ""
    print(f"Removed {_summary(report.removed)}{left}: {_size(report.freed)} freed.")
    print(f"Kept {_summary(report.kept)}.")
    return 0
