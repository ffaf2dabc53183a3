"""``python -m core fetch``: fetch a field's S2/S1 cube from the STAC API into a NetCDF file.

    python -m core fetch --geojson field.geojson --start 2023-03-01 --end 2023-10-31 \\
        --out cube.nc [--no-s1] [--max-cloud 80] [--no-cache]

The field file may be any format :func:`core.field.field_from_file` reads. Progress goes to
stderr (a tqdm bar on a terminal), a summary to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from core.config import Settings
from core.errors import InputError

if TYPE_CHECKING:
    import xarray as xr

USES_MODEL = False
"""Never loads a model: a wrong ``FIELDFLOW_CHECKPOINT`` does not stop it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``fetch`` command."""
    parser.add_argument(
        "--geojson",
        "--field",
        dest="field_path",
        required=True,
        metavar="FILE",
        help="field outline: GeoJSON, KML/KMZ, GeoPackage, zipped or plain shapefile",
    )
    add_feature_arguments(parser)
    parser.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="last day, YYYY-MM-DD")
    parser.add_argument("--out", required=True, type=Path, help="cube file to write (.nc)")
    parser.add_argument("--no-s1", action="store_true", help="Sentinel-2 only")
    parser.add_argument(
        "--max-cloud",
        type=float,
        default=None,
        metavar="PERCENT",
        help="skip S2 scenes with more cloud cover than this (0-100)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the cube cache (FIELDFLOW_CACHE_DIR)",
    )
    parser.add_argument(
        "--margin-days",
        type=int,
        default=None,
        metavar="DAYS",
        help="days also fetched on either side of the period, so that its first and last days "
        "are reconstructed from data on both sides (default 30; 0: the period only)",
    )


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    """``--index`` / ``--name`` / ``--layer``: which feature of a field file holding several
    (``fetch``, ``ndvi``)."""
    which = parser.add_mutually_exclusive_group()  # both given: argparse says which to drop
    which.add_argument(
        "--index",
        type=int,
        default=None,
        help="which feature of the file (0-based), if it holds several",
    )
    which.add_argument("--name", default=None, help="which feature of the file, by its name")
    parser.add_argument(
        "--layer",
        default=None,
        help="read only this layer of the file (a GeoPackage table, a KML folder, a shapefile "
        "in a zip); by default every layer with polygons",
    )


MAX_MARGIN_DAYS = 365
"""Most days fetched on either side of the period."""


def _margin_line(cube: xr.Dataset, start: dt.date, end: dt.date, margin: int) -> str:
    """How many of the cube's S2 frames lie in the margin, and why they are there."""
    from core.fetch import searched_period
    from core.timeline import calendar_day

    days = calendar_day(cube["time_s2"].values)
    first, last = np.datetime64(start, "D"), np.datetime64(end, "D")
    outside = int(((days < first) | (days > last)).sum())
    before, after = searched_period(start, end, margin)
    return (
        f"Margin: {before} to {after} also fetched ({outside} S2 frame(s) outside the period), "
        "so that the period's ends are reconstructed from data on both sides; every command "
        "keeps its outputs within the period you give it (--margin-days 0: the period only)."
    )


class _TqdmProgress:
    """A progress callback showing one tqdm bar per stage on stderr (only on a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._stage: str | None = None
        self._bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(
                total=total, desc=stage, file=self._stream, disable=None, leave=False, unit="task"
            )
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._stage = None


def clear_table(times: np.ndarray, fractions: np.ndarray, *, columns: int = 4) -> list[str]:
    """Rows of ``YYYY-MM-DD  nn%`` cells, ``columns`` per row."""
    cells = [
        f"{np.datetime64(t, 'D')!s} {round(100 * f):3d}%"
        for t, f in zip(times, fractions, strict=True)
    ]
    return ["   ".join(cells[i : i + columns]) for i in range(0, len(cells), columns)]


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch, write the cube, print a summary. Returns 0; errors raise FieldFlowError."""
    from core.cache import fetch_cached
    from core.cube import write_cube
    from core.fetch import PERIOD_MARGIN_DAYS, clear_fraction, parse_period
    from core.field import OPTION_CHOICE, field_from_file
    from core.grid import field_mask
    from core.reconstruct import OUTSIDE_NOTED, imaged_part
    from core.storage import check_output_path

    check_output_path(args.out, inputs=[args.field_path], writes="NetCDF")
    if args.max_cloud is not None and not 0 <= args.max_cloud <= 100:
        raise InputError(f"--max-cloud is a percentage from 0 to 100, not {args.max_cloud:g}.")
    start, end = parse_period(args.start, args.end)
    margin = PERIOD_MARGIN_DAYS if args.margin_days is None else args.margin_days
    if not 0 <= margin <= MAX_MARGIN_DAYS:
        raise InputError(
            f"--margin-days is the days fetched on either side of the period, from 0 to "
            f"{MAX_MARGIN_DAYS}, not {margin}."
        )
    field = field_from_file(
        args.field_path,
        index=args.index,
        name=args.name,
        layer=args.layer,
        max_area_ha=settings.max_area_ha,
        choice=OPTION_CHOICE,
    )
    progress = _TqdmProgress(sys.stderr)
    try:
        result = fetch_cached(
            field,
            start,
            end,
            settings=settings,
            use_cache=not args.no_cache,
            progress=progress,
            include_s1=not args.no_s1,
            max_cloud_cover=args.max_cloud,
            margin_days=margin,
        )
    finally:
        progress.close()
    out = write_cube(result.cube, args.out)

    grid = result.grid
    cube = result.cube
    mask, unseen = imaged_part(field_mask(field, grid), cube)
    fractions = clear_fraction(cube, mask)
    scenes = ", ".join(f"{name} {count}" for name, count in result.scenes_found.items())
    origin = (
        "the cache" if result.from_cache else f"{settings.stac_api_url} in {result.elapsed_s:.1f} s"
    )
    lines = [
        f"Field: {field.name} ({field.area_ha:.2f} ha); grid {grid.width} x {grid.height} px at "
        f"{grid.resolution_m:g} m in {grid.crs}",
        f"Period: {start} to {end}; from {origin}",
        *([_margin_line(cube, start, end, margin)] if margin else []),
        f"Scenes found: {scenes}",
        f"Frames loaded (same solar day merged): S2 {result.frames_loaded.get('s2', 0)}, "
        f"S1 {result.frames_loaded.get('s1', 0)}",
        result.s1_message,
        *(
            [
                f"note: about {unseen:.0%} of the field is imaged by no Sentinel-2 acquisition "
                "of the period (a swath or tile edge, or the edge of the data): the clear shares "
                "below are of the rest."
            ]
            if unseen > OUTSIDE_NOTED
            else []
        ),
        *([f"note: {result.skipped_note}"] if result.skipped_note else []),
        f"Clear fraction of the field per S2 frame (mean {100 * fractions.mean():.0f}%):",
        *("  " + row for row in clear_table(cube["time_s2"].values, fractions)),
        f"Wrote {out}",
    ]
    print("\n".join(lines))
    return 0
