"""``python -m core batch``: fetch and reconstruct every field of a file on a Dask cluster.

    python -m core batch --fields fields.gpkg --start 2023-03-01 --end 2023-10-31 \\
        --out results/ [--id-column NAME] [--scheduler tcp://host:8786 | --workers 4] \\
        [--method linear] [--samples K] [--every-days 5] [--curve-every-days 1]

Each field's outputs go to ``<out>/<field_id>/`` and a table of all fields to
``<out>/summary.csv`` (see :mod:`core.batch`). A re-run skips the fields whose outputs are
complete. One line is printed per field as it finishes.

Where it runs: ``--scheduler ADDRESS`` (or ``DASK_SCHEDULER_ADDRESS``) uses that cluster: its
scheduler and workers must be able to import FieldFlow's code (its Docker image, or its folder
on ``PYTHONPATH``), and its workers must see ``--out`` (and a ``--checkpoint``) under the same
absolute paths: this is checked before any field is sent, and a field whose outputs this
machine cannot see is failed, not "ok". Otherwise a local cluster
of ``--workers`` single-threaded workers starts, as processes by default (this works from a
plain command line; where worker processes cannot start, it falls back to threads and says so)
or as threads of this process with ``--local-mode threads``. ``--scheduler local`` ignores
``DASK_SCHEDULER_ADDRESS``.

Exit status: 0 when every field is ok or skipped, 1 when some field failed (the summary says
which and why), 2 for a bad command (unreadable fields file, bad dates, scheduler unreachable
or lost, a cluster that cannot run FieldFlow's code, another batch writing the same ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core.cli.reconstruct import (
    add_method_arguments,
    check_model_up_front,
    chosen_checkpoint,
    chosen_method,
    options_from_args,
    unused_model_options,
)
from core.config import Settings
from core.errors import InputError

if TYPE_CHECKING:
    from core.batch import BatchRequest, FieldRow

DEFAULT_WORKERS = 2
LOCAL = "local"
BATCH_LOCK_FILE = ".batch.lock"
"""Held in ``--out`` while a batch writes there: a second batch into it is refused."""


def _absolute(path: Path) -> Path:
    return Path(path).expanduser().absolute()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``batch`` command."""
    parser.add_argument(
        "--fields",
        required=True,
        type=Path,
        metavar="FILE",
        help="fields file: GeoPackage, GeoJSON, zipped shapefile, KML...; one field per feature",
    )
    parser.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="last day, YYYY-MM-DD")
    parser.add_argument("--out", required=True, type=Path, help="results folder")
    parser.add_argument(
        "--id-column",
        default=None,
        metavar="NAME",
        help="attribute naming each field's output folder (default: a name-like attribute, "
        "else feature-<index>)",
    )
    parser.add_argument("--layer", default=None, help="read only this layer of the file")
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="Dask scheduler, e.g. tcp://host:8786 (default: $DASK_SCHEDULER_ADDRESS, else a "
        "local cluster; 'local' forces a local cluster)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"workers of the local cluster (default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--local-mode",
        choices=("processes", "threads"),
        default=None,
        help="local workers as processes (default) or as threads of this process",
    )
    parser.add_argument(
        "--every-days",
        type=int,
        default=None,
        metavar="N",
        help="frames at every acquisition and every N days (default 5)",
    )
    parser.add_argument(
        "--curve-every-days",
        type=int,
        default=1,
        metavar="N",
        help="days of the NDVI curve (default 1: daily)",
    )
    parser.add_argument("--no-s1", action="store_true", help="Sentinel-2 only")
    parser.add_argument(
        "--max-cloud",
        type=float,
        default=None,
        metavar="PERCENT",
        help="skip S2 scenes with more cloud cover than this (0-100)",
    )
    add_method_arguments(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the batch, print a line per field and a total; 1 if some field failed."""
    from core.batch import (
        DEFAULT_EVERY_DAYS,
        FAILED,
        SUMMARY_FILE,
        BatchRequest,
        list_fields,
        run_batch,
        write_joined_curves,
        write_summary,
    )
    from core.distributed import (
        SCHEDULER_ENV,
        check_cluster,
        check_local_workers,
        check_scheduler_address,
        connect,
        local_cluster,
        quiet_dask_logs,
        scheduler_address,
    )
    from core.reconstruct import check_options, resolve_method
    from core.storage import check_output_folder, claimed

    started = time.monotonic()
    address = args.scheduler or scheduler_address()
    if address and address != LOCAL:  # refused now, not after the fields are read
        address = check_scheduler_address(
            address,
            name="--scheduler" if args.scheduler else SCHEDULER_ENV,
            or_else=f", or '{LOCAL}' for a local cluster on this machine",
        )
    remote = bool(address and address != LOCAL)
    workers = DEFAULT_WORKERS if args.workers is None else args.workers
    if not remote:  # a local cluster: its size checked up front
        check_local_workers(workers)
    check_output_folder(args.out)
    method = chosen_method(args, settings)
    resolve_method(method)  # InputError naming the choices
    if args.max_cloud is not None and not 0 <= args.max_cloud <= 100:
        raise InputError(f"--max-cloud is a percentage from 0 to 100, not {args.max_cloud:g}.")
    options = options_from_args(args, settings, method=method)
    check_options(method, options)  # once, not as every field's error
    if note := unused_model_options(args, method):  # before the fields, as reconstruct says it
        print(note, file=sys.stderr, flush=True)  # after its one (review 20)
    request = BatchRequest(
        start=args.start,
        end=args.end,
        method=method,
        options=options,
        every_days=DEFAULT_EVERY_DAYS if args.every_days is None else args.every_days,
        curve_every_days=args.curve_every_days,
        include_s1=not args.no_s1,
        max_cloud_cover=args.max_cloud,
    )
    fields = list_fields(
        args.fields, id_column=args.id_column, layer=args.layer, max_area_ha=settings.max_area_ha
    )

    if not remote and method == "model":  # on this machine: refused now, not after every
        if not chosen_checkpoint(args, settings).is_file():  # field's fetch
            raise InputError(
                f"No model checkpoint at {chosen_checkpoint(args, settings)}; give "
                "--checkpoint, train one ('python -m core train') or use --method linear."
            )
        check_model_up_front(options.device, chosen_checkpoint(args, settings))

    def on_row(row: FieldRow, done: int, total: int) -> None:
        print(f"[{done}/{total}] {row.line()}", flush=True)

    def on_note(text: str) -> None:
        print(f"note: {text}", file=sys.stderr, flush=True)

    busy = (
        f"Another batch is writing to {args.out} now; wait until it has ended, or choose "
        "another --out (two at once would each replace the other's fields; review 17)."
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(claimed(Path(args.out) / BATCH_LOCK_FILE, busy))
        if remote:  # its problems are refused below, in words
            # A scheduler lost is said in one line (run_batch raises it); its client logged it
            # as a 20-line traceback as well, up to its close (review 17). The client's other
            # errors reach the rows.
            stack.enter_context(quiet_dask_logs("distributed.client"))
            cluster = stack.enter_context(connect(address, warn=False))
        else:
            cluster = stack.enter_context(
                local_cluster(workers, processes=args.local_mode != "threads")
            )
        info = cluster.info()
        if remote:  # refused in words now, not as every field's failure (review 17)
            checkpoint = request.options.checkpoint if method == "model" else None
            check_cluster(cluster, info, _absolute(checkpoint) if checkpoint else None)
        print(
            f"Batch of {len(fields)} field(s) from {args.fields}, {request.start} to "
            f"{request.end}, method {method}, on {info.describe()}",
            flush=True,
        )
        if cluster.note:
            on_note(cluster.note)
        if remote and (args.workers is not None or args.local_mode is not None):
            local_options = (("--workers", args.workers), ("--local-mode", args.local_mode))
            given = " and ".join(option for option, value in local_options if value is not None)
            on_note(
                f"{given} only shape a local cluster, and change nothing on the cluster at "
                f"{info.address}: it has the workers it was started with ({info.workers} now)."
            )
        rows = run_batch(
            fields,
            request,
            args.out,
            cluster=cluster,
            settings=settings,
            on_row=on_row,
            on_note=on_note,
        )
        # the tables, before another batch may take the folder
        summary = write_summary(rows, Path(args.out) / SUMMARY_FILE)
        write_joined_curves(rows, args.out)
    if trimmed := _curves_inside_the_period(rows, Path(args.out), request):
        print(
            f"note: {len(trimmed)} field(s)' curves cover less than the period asked for "
            f"({request.start} to {request.end}): {', '.join(trimmed[:5])}"
            f"{', ...' if len(trimmed) > 5 else ''}. A curve runs from the field's first to its "
            "last Sentinel-2 acquisition, those of the month fetched either side of the period "
            "included: nothing is reconstructed outside them."
        )
    counts = {status: sum(r.status == status for r in rows) for status in ("ok", "skipped")}
    failed = sum(r.status == FAILED for r in rows)
    print(
        f"Done in {time.monotonic() - started:.1f} s: {counts['ok']} ok, {counts['skipped']} "
        f"skipped, {failed} failed. Summary: {summary}"
    )
    return 1 if failed else 0


def _curves_inside_the_period(rows: list[FieldRow], out: Path, request: BatchRequest) -> list[str]:
    """``"<field id> (<first> to <last>)"`` for each written curve that starts after the
    period's first day or ends before its last (batch trimmed them without a word; review 5)."""
    import csv

    from core.batch import CURVE_FILE

    said = []
    for row in rows:
        path = out / row.field_id / CURVE_FILE
        if row.status not in ("ok", "skipped") or not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as handle:
            days = [line["date"] for line in csv.DictReader(handle) if line.get("date")]
        if days and (days[0] > request.start or days[-1] < request.end):
            said.append(f"{row.field_id} ({days[0]} to {days[-1]})")
    return said
