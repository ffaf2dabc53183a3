"""``python -m core bench``: time and peak memory of the methods vs field size and dates.

    python -m core bench [--methods linear,whittaker] [--sizes 32,64,128,256] \\
        [--dates 30,70,150] [--repeats 3] [--queries 20] [--no-trace] [--device auto] \\
        [--source CUBE] [--json out.json]

Each configuration runs in a fresh subprocess (see :mod:`core.bench`). The table, headed by a
description of the machine, goes to stdout; one line per configuration to stderr as it finishes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from core.bench import (
    DEFAULT_SOURCE,
    BenchResult,
    bench,
    format_bench_table,
    machine_description,
    results_to_dict,
)
from core.cli.reconstruct import check_model_up_front, chosen_checkpoint
from core.config import Settings, checkpoint_option
from core.errors import InputError
from core.evaluate import BASELINES
from core.reconstruct import ReconstructOptions, check_options
from core.storage import atomic_output, check_output_path

MAX_SIZE_PX = 512
"""Largest side benchmarked: the largest field accepted (FIELDFLOW_MAX_AREA_HA, 2,500 ha) is
about 500 px a side at 10 m."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of integers"
        ) from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must list positive integers")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``bench`` command."""
    parser.add_argument("--methods", default="linear,whittaker", help="comma-separated methods")
    parser.add_argument(
        "--sizes",
        type=_int_list,
        default=[32, 64, 128, 256],
        metavar="PX,PX",
        help="square field sides in pixels (default 32,64,128,256)",
    )
    parser.add_argument(
        "--dates",
        type=_int_list,
        default=[30, 70, 150],
        metavar="N,N",
        help="S2 dates in the input series (default 30,70,150)",
    )
    parser.add_argument(
        "--queries", type=int, default=20, help="query dates reconstructed per call (default 20)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; median reported")
    parser.add_argument("--samples", type=int, default=1, help="samples per reconstruction")
    parser.add_argument(
        "--steps", type=int, default=None, help="ODE steps of the model (default: its own)"
    )
    parser.add_argument(
        "--no-trace",
        action="store_true",
        help="skip the extra untimed call under tracemalloc (faster)",
    )
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="model only"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="FILE|NAME",
        help="model checkpoint: a file, or the name of one in the models folder "
        "(default: FIELDFLOW_CHECKPOINT, else the shipped one)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        metavar="CUBE",
        help=f"real cube to tile (default: {DEFAULT_SOURCE} of the shared data)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="give up a configuration after S seconds (default 600)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="write the results as JSON to FILE"
    )


def _report(result: BenchResult) -> None:
    c = result.case
    what = result.error or f"{result.seconds:.3f} s, {result.peak_rss_mib:.0f} MiB"
    print(f"{c.method} {c.size_px} px {c.n_dates} dates: {what}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the benchmark, print the table, write the JSON. Returns 0 (1 if a case failed)."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise InputError("No methods given: pass e.g. --methods linear,whittaker.")
    source = args.source or settings.cubes_dir / DEFAULT_SOURCE
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise InputError(f"--timeout must be a positive number of seconds, not {args.timeout}.")
    for flag, value in (("--queries", args.queries), ("--repeats", args.repeats)):
        if value < 1:
            raise InputError(f"{flag} must be 1 or more, not {value}.")
    if max(args.sizes) > MAX_SIZE_PX:
        raise InputError(
            f"--sizes {max(args.sizes)} px is larger than the largest field FieldFlow takes "
            f"(about {MAX_SIZE_PX} px a side, 2,500 ha at 10 m); bench sizes up to that."
        )
    check_options("model", ReconstructOptions(samples=args.samples, steps=args.steps))
    if any(m not in BASELINES for m in methods):
        check_model_up_front(args.device, chosen_checkpoint(args, settings))
    if args.json is not None:
        check_output_path(
            args.json,
            option="--json",
            inputs=[source],
            model=chosen_checkpoint(args, settings),
            writes="JSON",
        )
    machine = machine_description(probe_torch=any(m not in BASELINES for m in methods))
    results = bench(
        methods,
        args.sizes,
        args.dates,
        source,
        n_queries=args.queries,
        repeats=args.repeats,
        device=args.device,
        samples=args.samples,
        steps=args.steps,
        trace=not args.no_trace,
        timeout_s=args.timeout,
        checkpoint=checkpoint_option(chosen_checkpoint(args, settings)),
        progress=_report,
    )
    print(format_bench_table(results, machine))
    if args.json is not None:
        with atomic_output(args.json) as tmp:
            data = results_to_dict(results, machine)
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 1 if any(r.error for r in results) else 0
