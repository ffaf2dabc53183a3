"""``python -m core evaluate``: score reconstruction methods on real cubes (the yardstick).

    python -m core evaluate --cube A.nc [--cube B.nc ...] [--cubes-dir DIR] \\
        --methods linear,whittaker[,model] [--samples K] [--seed 0] [--max-size 128] \\
        [--no-exclude-seen] [--seen model=CUBE,CUBE] --json out.json

Without ``--cube`` or ``--cubes-dir`` it evaluates every cube of the shared data folder
(``FIELDFLOW_DATA_DIR``/cubes). The protocol is in :mod:`core.evaluate`. The table goes to
stdout, one progress line per cube to stderr, the JSON (every figure, the protocol, seed,
software versions and the cubes each method saw) is written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import xarray as xr

from core.cli.reconstruct import add_model_arguments, chosen_checkpoint, options_from_args
from core.config import Settings
from core.cube import read_cube
from core.errors import InputError
from core.evaluate import Protocol, evaluate, evaluation_to_dict, format_table
from core.reconstruct import check_options
from core.storage import atomic_output, check_output_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``evaluate`` command."""
    parser.add_argument(
        "--cube",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="cube file to evaluate on (repeat for several)",
    )
    parser.add_argument(
        "--cubes-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="evaluate on every .nc cube in DIR (default without --cube: the shared cubes)",
    )
    parser.add_argument(
        "--methods",
        default="linear,whittaker",
        help="comma-separated methods (default linear,whittaker); the ratio column needs "
        "linear and/or whittaker among them",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=1,
        metavar="K",
        help="samples per reconstruction (K > 1 adds coverage and CRPS)",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--whittaker-lambda",
        type=float,
        default=None,
        help="fixed Whittaker smoothing, for the whittaker method and the model's field blend "
        "(default: chosen per pixel by GCV, as the yardstick's figures are)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument(
        "--max-size",
        type=int,
        default=Protocol.max_size,
        metavar="PX",
        help=f"cut larger cubes to their centre PX x PX (default {Protocol.max_size}; 0: none)",
    )
    parser.add_argument(
        "--query-every-days",
        type=int,
        default=None,
        metavar="N",
        help="also query every N days of the period, as the app's daily curve does (1: daily); "
        "only the targets are scored",
    )
    parser.add_argument(
        "--drop-hidden-frames",
        action="store_true",
        help="remove the frames a task hides entirely (missing frames, the gap's frames) from "
        "the cube and query their dates as dates with no acquisition, as the app's anytime "
        "queries are (default: keep them as fully cloudy acquisitions)",
    )
    parser.add_argument(
        "--in-chunks",
        action="store_true",
        help="reconstruct the query days in the calls an app Run makes for its daily curve "
        "(at most 40 days each) instead of in one call; use with --query-every-days 1",
    )
    parser.add_argument(
        "--screened-truth",
        action="store_true",
        help="score only the hidden pixels that are not themselves haze the scene mask missed "
        "(core.screening; the draws are the same)",
    )
    parser.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip a method on cubes it was trained or tuned on (default: skip)",
    )
    parser.add_argument(
        "--seen",
        action="append",
        default=[],
        metavar="METHOD=CUBE,CUBE",
        help="cubes METHOD saw in training (names, file names or sites); overrides the record",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="write every figure as JSON to FILE"
    )


def _parse_seen(items: list[str]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for item in items:
        method, sep, cubes = item.partition("=")
        if not sep or not method.strip():
            raise InputError(f"--seen '{item}' is not METHOD=CUBE[,CUBE...].")
        names = {c.strip() for c in cubes.split(",") if c.strip()}
        seen.setdefault(method.strip(), set()).update(names)
    return seen


def cube_paths(cubes: list[Path], cubes_dir: Path | None, settings: Settings) -> list[Path]:
    """The cube files to evaluate, in the order given (a folder's files sorted by name)."""
    paths = list(cubes)
    if cubes_dir is not None or not paths:
        folder = cubes_dir if cubes_dir is not None else settings.cubes_dir
        if not folder.is_dir():
            raise InputError(f"Cube folder not found: {folder}. Pass --cube FILE or --cubes-dir.")
        found = sorted(folder.glob("*.nc"))
        if not found:
            raise InputError(f"No .nc cubes in {folder}.")
        paths += found
    return list(dict.fromkeys(paths))


def _read_each(paths: list[Path]) -> Iterator[tuple[str, xr.Dataset]]:
    for path in paths:
        yield path.stem, read_cube(path)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Evaluate, print the table, write the JSON. Returns 0; errors raise FieldFlowError."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.max_size < 0:
        raise InputError(f"--max-size must be 0 (no crop) or pixels, not {args.max_size}.")
    if args.samples < 1:
        raise InputError(f"--samples must be at least 1, not {args.samples}.")
    protocol = Protocol(
        seed=args.seed,
        max_size=args.max_size or None,
        query_every_days=args.query_every_days,
        in_chunks=args.in_chunks,
        drop_hidden_frames=args.drop_hidden_frames,
        screened_truth=args.screened_truth,
    )
    options = options_from_args(args, settings)
    for method in methods:
        check_options(method, options)
    paths = cube_paths(args.cube, args.cubes_dir, settings)
    if args.json is not None:
        check_output_path(
            args.json, option="--json", inputs=paths, model=chosen_checkpoint(args, settings)
        )
    evaluation = evaluate(
        _read_each(paths),
        methods,
        protocol,
        options,
        seen_sites=_parse_seen(args.seen),
        exclude_seen=args.exclude_seen,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_table(evaluation))
    if args.json is not None:
        data = evaluation_to_dict(evaluation)
        data["cube_files"] = [str(p) for p in paths]
        if args.whittaker_lambda is not None:  # the smoother's figures (and the blend's) too
            data["whittaker_lambda"] = args.whittaker_lambda
        if args.screen_haze:  # every method's inputs were screened (the truth was not)
            data["screen_haze"] = True
        if "model" in methods:  # what the model's figures depend on besides the protocol
            data["model_options"] = {
                "checkpoint": str(chosen_checkpoint(args, settings)),
                "steps": args.steps,
                "adapt_steps": args.adapt_steps,
                "calibrate_field": args.calibrate_field,
                "band_by_distance": args.band_by_distance,
                "error_band": args.error_band,
                "ndvi_error_band": args.ndvi_error_band,
                "fit_curve_band": args.fit_curve_band,
                "blend_field": args.blend_field,
                "smooth_days": args.smooth_days,
                "device": args.device,
            }
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
