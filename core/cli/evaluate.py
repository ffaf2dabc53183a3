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
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import xarray as xr

from core.cli.reconstruct import (
    add_model_arguments,
    add_screen_arguments,
    check_model_up_front,
    chosen_checkpoint,
    options_from_args,
)
from core.config import Settings
from core.cube import read_cube
from core.errors import CubeError, InputError
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
    add_screen_arguments(parser)
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
        "(core.screening; with --screen-haze-nearby, nor the pixels around it; the draws are "
        "the same)",
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
    """The cube files to evaluate, in the order given (a folder's files sorted by name).

    Raises:
        InputError: a ``--cube`` that is a folder, a ``--cubes-dir`` that is a file or missing,
            a folder without ``.nc`` files.
    """
    for path in cubes:
        if path.is_dir():
            raise InputError(
                f"--cube {path} is a folder: give a cube file (.nc), or evaluate every cube in "
                f"it with --cubes-dir {path}."
            )
    paths = list(cubes)
    if cubes_dir is not None or not paths:
        folder = cubes_dir if cubes_dir is not None else settings.cubes_dir
        if cubes_dir is not None and folder.is_file():
            raise InputError(
                f"--cubes-dir {folder} is a file, not a folder: give the folder that holds "
                f"the cubes, or pass a single cube file with --cube {folder}."
            )
        if not folder.is_dir():
            where = (
                "Check the path, or pass --cube FILE."
                if cubes_dir is not None
                else "It is where the shared cubes are (FIELDFLOW_DATA_DIR/cubes): set "
                "FIELDFLOW_DATA_DIR, or pass --cube FILE or --cubes-dir DIR."
            )
            raise InputError(f"Cube folder not found: {folder}. {where}")
        found = sorted(folder.glob("*.nc"))
        if not found:
            raise InputError(f"No .nc cubes in {folder}.")
        paths += found
    paths = list(dict.fromkeys(paths))
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(path.stem, []).append(path)
    if twins := {name: same for name, same in by_name.items() if len(same) > 1}:
        name, same = next(iter(twins.items()))
        raise InputError(
            f"Two cubes named '{name}' ({', '.join(str(p) for p in same)}): a cube's rows, its "
            "draws and the pooling go by its file name, so they would be mixed up. Give each "
            "cube a name of its own (rename or link one), then run again."
        )
    return paths


LISTED_BAD_CUBES = 5
"""Unusable cube files named one by one in the message; the rest are counted."""


def _cube_problem(path: Path, exc: CubeError) -> str:
    """What is wrong with ``path``, naming the file (read_cube's structural messages do not)."""
    reason = str(exc)
    return reason if str(path) in reason else f"{path}: {reason}"


def check_cubes(
    paths: list[Path],
    folder: Path | None,
    otherwise: str = "or give the cubes to evaluate one by one with --cube FILE",
) -> None:
    """Read every cube once before any is evaluated, so a bad file stops the run before hours
    of work rather than after, and every bad file is named at once.

    Args:
        paths: the cube files (:func:`cube_paths`).
        folder: the ``--cubes-dir`` folder (or the shared one) the files were listed from, or
            None when every file was given with ``--cube``.
        otherwise: the other way out, after "move those files out of it, " (the command's).

    Raises:
        CubeError: names each unusable file and why; for files listed from a folder, says that
            it should hold only cubes.
    """
    bad: list[tuple[Path, str]] = []
    for path in paths:
        try:
            with _quiet_cube_notes():  # said once, when the cube is read to be evaluated
                read_cube(path)
        except CubeError as exc:
            bad.append((path, _cube_problem(path, exc)))
    if not bad:
        return
    shown = [problem for _, problem in bad[:LISTED_BAD_CUBES]]
    more = len(bad) - len(shown)
    listing = " ".join(shown) + (f" {more} more cannot be used either." if more > 0 else "")
    if len(bad) > 1:
        listing = f"{len(bad)} of the {len(paths)} cube files cannot be used. {listing}"
    from_folder = [p for p, _ in bad if folder is not None and p.parent == folder]
    if from_folder:
        these = "that file" if len(from_folder) == 1 else "those files"
        listing += (
            f" The folder {folder} should hold only cubes: move {these} out of it, {otherwise}."
        )
    raise CubeError(listing)


@contextlib.contextmanager
def _quiet_cube_notes() -> Iterator[None]:
    """Hold back core.cube's per-file notes (e.g. one polarization) while a cube is only
    checked."""
    logger = logging.getLogger("core.cube")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_each(paths: list[Path]) -> Iterator[tuple[str, xr.Dataset]]:
    for path in paths:
        try:
            cube = read_cube(path)
        except CubeError as exc:  # changed since check_cubes read it
            raise CubeError(_cube_problem(path, exc)) from exc
        yield path.stem, cube


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
    if "model" in methods:
        check_model_up_front(options.device, chosen_checkpoint(args, settings))
    paths = cube_paths(args.cube, args.cubes_dir, settings)
    if args.json is not None:
        check_output_path(
            args.json,
            option="--json",
            inputs=paths,
            model=chosen_checkpoint(args, settings),
            writes="JSON",
        )
    listed_from = args.cubes_dir or (None if args.cube else settings.cubes_dir)
    check_cubes(paths, listed_from)
    seen = _parse_seen(args.seen)
    for method, names in seen.items():
        if method not in methods:
            raise InputError(
                f"--seen names '{method}', which is not among --methods "
                f"({', '.join(methods)}): give --seen METHOD=CUBE,... for a method evaluated."
            )
        if not names and args.exclude_seen:
            print(
                f"note: --seen {method}= lists no cubes, so {method} is scored on every cube, "
                "including any it was trained on.",
                file=sys.stderr,
            )
    evaluation = evaluate(
        _read_each(paths),
        methods,
        protocol,
        options,
        seen_sites=seen,
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
        if args.screen_haze_nearby:  # and the clear pixels around that haze
            data["screen_haze_nearby"] = True
        if args.screen_scenes:
            data["screen_scenes"] = True
        if "model" in methods:  # what the model's figures depend on besides the protocol
            data["model_options"] = {
                "checkpoint": str(chosen_checkpoint(args, settings)),
                "steps": args.steps,
                "adapt_steps": args.adapt_steps,
                "calibrate_field": args.calibrate_field,
                "band_by_distance": args.band_by_distance,
                "error_band": args.error_band,
                "ndvi_error_band": args.ndvi_error_band,
                "fit_ndvi_band": args.fit_ndvi_band,
                "fit_curve_band": args.fit_curve_band,
                "curve_band_by_distance": args.curve_band_by_distance,
                "blend_field": args.blend_field,
                "smooth_days": args.smooth_days,
                "device": args.device,
            }
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
